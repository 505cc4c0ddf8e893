"""optax's open loss bugs, as regression tests on the jaxloss counterparts.

Each test names the optax issue (github.com/google-deepmind/optax/issues/N) and checks
the value, the reverse-mode and the forward-mode derivative (``jax.jvp``/``jax.jacfwd``),
in float32 and bf16 where they apply, against float64 numpy/scipy references.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxloss
from tests.compiled import jit_call

LOWP = [jnp.float32, jnp.bfloat16]
LOWP_IDS = ["f32", "bf16"]


def _gtol(dtype):
    """Gradients come back in the input's dtype: bf16 rounds them to 8 bits."""
    return dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-2)


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(a, np.float64)))) for a in arrays)


def _derivatives(f, x):
    """(value, reverse-mode gradient of the sum, jvp along ones, forward-mode Jacobian).

    Compiled as one program: eager op-by-op dispatch of jacfwd dominates the run time.
    """

    @jax.jit
    def all_of(a):
        value, tangent = jax.jvp(f, (a,), (jnp.ones_like(a),))
        rev = jax.grad(lambda b: jnp.sum(f(b)))(a)
        return value, rev, tangent, jax.jacfwd(f)(a)

    return all_of(x)


# --------------------------------------------------------------------------------------
# optax #1786: KL divergence, NaN gradients at zero targets, NaN values at −inf log-inputs
# --------------------------------------------------------------------------------------

P_ZERO = np.array([[0.0, 0.5, 0.5, 0.0], [0.25, 0.0, 0.25, 0.5]])
Q_POS = np.array([[0.1, 0.4, 0.3, 0.2], [0.3, 0.3, 0.2, 0.2]])


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_optax_1786_kl_divergence_zero_targets(dtype):
    """optax #1786: KL(p‖q) with zeros in the target p: finite value, and finite exact
    gradients in q (−p/q) and p (log(p/q) + 1, the 0·log 0 convention −log q at p = 0),
    in reverse and forward mode."""
    p, q = jnp.asarray(P_ZERO, dtype), jnp.asarray(Q_POS, dtype)
    p64, q64 = np.asarray(p, np.float64), np.asarray(q, np.float64)
    expected = special.rel_entr(p64, q64).sum(-1)
    d_q = -p64 / q64
    d_p = np.where(p64 > 0, np.log(np.where(p64 > 0, p64, 1) / q64) + 1, -np.log(q64))
    tol = dict(rtol=1e-5, atol=1e-6)
    for fn, x, grad_expected in (
        (lambda b: jaxloss.kl_divergence(p, b), q, d_q),
        (lambda a: jaxloss.kl_divergence(a, q), p, d_p),
    ):
        value, rev, tangent, jac = _derivatives(fn, x)
        assert value.dtype == jnp.float32  # bf16 is computed and returned in float32
        np.testing.assert_allclose(value, expected, **tol)
        np.testing.assert_allclose(np.asarray(rev, np.float64), grad_expected, **_gtol(dtype))
        np.testing.assert_allclose(tangent, grad_expected.sum(-1), **_gtol(dtype))
        np.testing.assert_allclose(
            np.asarray(jac, np.float64),
            np.einsum("ij,ik->ijk", np.eye(2), grad_expected),
            **_gtol(dtype),
        )


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_optax_1786_kl_divergence_neg_inf_log_inputs(dtype):
    """optax #1786: KL between log-probabilities with −inf entries (optax's
    kl_divergence_with_log_targets gives NaN): the value is finite and its derivatives
    are the closed forms p·(log p − log q − KL) and q − p, 0 at the −inf entries."""
    log_p = jnp.asarray(np.log(np.where(P_ZERO > 0, P_ZERO, 1.0)), dtype)
    log_p = jnp.where(jnp.asarray(P_ZERO) > 0, log_p, -jnp.inf).astype(dtype)
    log_q = jnp.asarray(np.log(Q_POS), dtype)
    log_q = log_q.at[0, 3].set(-jnp.inf)  # p = 0 there too: 0·log(0/0) = 0
    lp64 = np.asarray(log_p, np.float64)
    lq64 = np.asarray(log_q, np.float64)
    p64, q64 = np.exp(special.log_softmax(lp64, -1)), np.exp(special.log_softmax(lq64, -1))
    kl = special.rel_entr(p64, q64).sum(-1)
    safe = p64 > 0
    d_p = np.where(
        safe,
        p64 * (np.log(np.where(safe, p64, 1)) - np.log(np.where(safe, q64, 1)) - kl[:, None]),
        0.0,
    )
    d_q = q64 - p64
    tol = dict(rtol=1e-5, atol=1e-6)
    for fn, x, grad_expected in (
        (lambda a: jaxloss.kl_divergence_from_logits(a, log_q), log_p, d_p),
        (lambda b: jaxloss.kl_divergence_from_logits(log_p, b), log_q, d_q),
    ):
        value, rev, tangent, jac = _derivatives(fn, x)
        np.testing.assert_allclose(value, kl, **tol)
        np.testing.assert_allclose(np.asarray(rev, np.float64), grad_expected, **_gtol(dtype))
        np.testing.assert_allclose(tangent, grad_expected.sum(-1), **_gtol(dtype))
        assert _finite(jac)


# --------------------------------------------------------------------------------------
# optax #1762: NaN forward-mode tangents of a (weighted) log-softmax at −inf logits
# --------------------------------------------------------------------------------------

LOGITS_NEG_INF = np.array([[1.0, -np.inf, 0.5, -np.inf], [0.0, 2.0, -np.inf, 1.0]])
LABELS = np.array([0, 3])
PROBS = np.array([[0.7, 0.0, 0.3, 0.0], [0.2, 0.5, 0.0, 0.3]])
CW = np.array([1.0, 2.0, 0.5, 1.5])
Q_FINITE = np.array([[0.3, -np.inf, -0.2, -np.inf], [0.1, 0.4, -np.inf, -0.6]])


def _softmax_losses():
    """Every softmax-based loss outside the fused/vocab-parallel module, as f(logits)."""
    lab, prob, cw = jnp.asarray(LABELS), jnp.asarray(PROBS), jnp.asarray(CW)
    w = jnp.array([1.0, 2.0])
    return {
        "softmax_cross_entropy[ids]": lambda z: jaxloss.softmax_cross_entropy(z, lab),
        "softmax_cross_entropy[probs]": lambda z: jaxloss.softmax_cross_entropy(z, prob),
        "softmax_cross_entropy[ids,class_weights,weights]": lambda z: jaxloss.softmax_cross_entropy(
            z, lab, class_weights=cw, weights=w
        ),
        "softmax_cross_entropy[probs,class_weights,mean]": lambda z: jaxloss.softmax_cross_entropy(
            z, prob, class_weights=cw, reduction="mean"
        ),
        "softmax_cross_entropy[ids,label_smoothing]": lambda z: jaxloss.softmax_cross_entropy(
            z, lab, label_smoothing=0.1
        ),
        "softmax_cross_entropy[probs,label_smoothing]": lambda z: jaxloss.softmax_cross_entropy(
            z, prob, label_smoothing=0.1
        ),
        "nll_loss[log_softmax]": lambda z: jaxloss.nll_loss(jax.nn.log_softmax(z), lab),
        "softmax_focal_loss[ids]": lambda z: jaxloss.softmax_focal_loss(z, lab),
        "softmax_focal_loss[probs,gamma=0.5]": lambda z: jaxloss.softmax_focal_loss(
            z, prob, gamma=0.5, class_weights=cw
        ),
        "z_loss": lambda z: jaxloss.z_loss(z),
        "entropy_from_logits": lambda z: jaxloss.entropy_from_logits(z),
        "kl_divergence_from_logits[p]": lambda z: jaxloss.kl_divergence_from_logits(
            z, jnp.asarray(Q_FINITE, z.dtype)
        ),
        "kl_divergence_from_logits[q]": lambda z: jaxloss.kl_divergence_from_logits(
            jnp.asarray(Q_FINITE, z.dtype), z
        ),
    }


SOFTMAX_LOSSES = _softmax_losses()
# Label smoothing spreads its mass over the classes with a finite logit (documented), so
# clipping −inf to a finite number changes the loss; every other function must not see
# the difference.
CLIP_INVARIANT = [k for k in SOFTMAX_LOSSES if "label_smoothing" not in k]


@pytest.mark.parametrize("name", list(SOFTMAX_LOSSES))
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_optax_1762_finite_jvp_at_neg_inf_logits(name, dtype):
    """optax #1762: the value, jvp, jacfwd and grad of every softmax-based loss are finite
    at −inf logits, for tangents that are nonzero on the −inf entries too."""
    f = SOFTMAX_LOSSES[name]
    x = jnp.asarray(LOGITS_NEG_INF, dtype)
    tangent = jnp.asarray(np.linspace(-1.0, 1.5, x.size).reshape(x.shape), dtype)

    @jax.jit  # one program for every derivative the test checks
    def all_of(a, t):
        value, out_tangent = jax.jvp(f, (a,), (t,))
        rev = jax.grad(lambda b: jnp.sum(f(b)))(a)
        return value, out_tangent, jax.jacfwd(f)(a), rev

    value, out_tangent, jac, rev = all_of(x, tangent)
    assert _finite(value, out_tangent, jac, rev)


@pytest.mark.parametrize("name", CLIP_INVARIANT)
def test_optax_1762_neg_inf_logits_equal_clipped_logits_float64(name):
    """optax #1762: in float64, jvp and jacfwd at −inf logits equal those at logits
    clipped to −1e4 (a probability of exactly 0 either way)."""
    f = SOFTMAX_LOSSES[name]
    x = jnp.asarray(LOGITS_NEG_INF)
    clipped = jnp.maximum(x, -1e4)
    tangent = jnp.asarray(np.linspace(-1.0, 1.5, x.size).reshape(x.shape))

    @jax.jit  # compiled once, called at both logits
    def jvp_and_jacfwd(a, t):
        return (*jax.jvp(f, (a,), (t,)), jax.jacfwd(f)(a))

    v_inf, t_inf, jac_inf = jvp_and_jacfwd(x, tangent)
    v_clip, t_clip, jac_clip = jvp_and_jacfwd(clipped, tangent)
    np.testing.assert_allclose(v_inf, v_clip, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t_inf, t_clip, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jac_inf, jac_clip, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------
# optax #1335: integer-label and one-hot cross-entropy differ in gradient under `where`
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_focal_loss"])
def test_optax_1335_integer_and_one_hot_agree_under_where(name, dtype):
    """optax #1335: under `where`, class ids and their one-hot labels give the same value
    and the same reverse- and forward-mode gradients, zero on masked rows (NaN there)."""
    fn = getattr(jaxloss, name)
    rng = np.random.default_rng(1335)
    logits = rng.normal(size=(5, 4)) * 2
    logits[3] = np.nan  # a masked-out row of garbage
    labels = np.array([1, 0, 3, 2, 2])
    keep = jnp.array([True, True, False, False, True])
    one_hot = jax.nn.one_hot(labels, 4, dtype=dtype)
    x = jnp.asarray(logits, dtype)

    def loss(lab, reduction):
        return lambda z: fn(z, lab, where=keep, reduction=reduction)

    for reduction in ("none", "mean"):
        f_id, f_oh = loss(jnp.asarray(labels), reduction), loss(one_hot, reduction)
        v_id, r_id, t_id, j_id = _derivatives(f_id, x)
        v_oh, r_oh, t_oh, j_oh = _derivatives(f_oh, x)
        assert _finite(v_id, r_id, t_id, j_id)
        np.testing.assert_allclose(v_id, v_oh, rtol=1e-6, atol=1e-6)
        for a, b in ((r_id, r_oh), (t_id, t_oh), (j_id, j_oh)):
            np.testing.assert_allclose(
                np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-6
            )
        np.testing.assert_array_equal(np.asarray(r_id[2:4], np.float64), 0.0)
    # And the float64 reference: softmax(z) − e_y on kept rows, for the sum.
    if name == "softmax_cross_entropy":
        r = jax.jit(jax.grad(lambda z: fn(z, jnp.asarray(labels), where=keep, reduction="sum")))(x)
        p = special.softmax(np.asarray(x, np.float64), axis=-1)
        expected = np.where(np.asarray(keep)[:, None], p - np.eye(4)[labels], 0.0)
        np.testing.assert_allclose(np.asarray(r, np.float64), expected, **_gtol(dtype))


# --------------------------------------------------------------------------------------
# optax #1020: bf16 logits quantize the loss value
# --------------------------------------------------------------------------------------


def test_optax_1020_bf16_logits_do_not_quantize_the_loss():
    """optax #1020: bf16 logits give the float32 loss of the (bf16-rounded) logits, not a
    value rounded to bf16's 8 bits, with value and gradients finite in both modes."""
    rng = np.random.default_rng(1020)
    x = jnp.asarray(rng.normal(size=(32, 50)) * 3, jnp.bfloat16)
    labels = rng.integers(0, 50, 32)
    x64 = np.asarray(x, np.float64)
    ref = special.logsumexp(x64, -1) - x64[np.arange(32), labels]
    cases = {
        "softmax_cross_entropy[ids]": (
            lambda z: jaxloss.softmax_cross_entropy(z, jnp.asarray(labels)),
            ref,
        ),
        "softmax_cross_entropy[probs]": (
            lambda z: jaxloss.softmax_cross_entropy(z, jax.nn.one_hot(labels, 50, dtype=z.dtype)),
            ref,
        ),
        "sigmoid_binary_cross_entropy": (
            lambda z: jaxloss.sigmoid_binary_cross_entropy(z[:, 0], jnp.asarray(labels % 2)),
            np.logaddexp(0, x64[:, 0]) - (labels % 2) * x64[:, 0],
        ),
    }
    for name, (f, expected) in cases.items():
        out, rev, tangent, jac = _derivatives(f, x)  # out = f(x), compiled with the rest
        assert out.dtype == jnp.float32, name
        np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6, err_msg=name)
        mean = jit_call(jnp.mean, out)
        # bf16 would round the mean to 8 bits (relative 4e-3); float32 keeps 1e-6.
        np.testing.assert_allclose(mean, expected.mean(), rtol=2e-6, err_msg=name)
        assert _finite(rev, tangent, jac), name


# --------------------------------------------------------------------------------------
# optax #1267 / #1346: focal-loss NaNs at extreme logits
# --------------------------------------------------------------------------------------


def _sigmoid_focal_reference(z, y, gamma, alpha):
    """α_t (1 − p_t)^γ BCE in float64 log space: log(1 − p_t) = logaddexp(log y −
    softplus(z), log(1 − y) − softplus(−z))."""
    with np.errstate(divide="ignore"):
        log_not_pt = np.logaddexp(
            np.log(y) - np.logaddexp(0, z), np.log1p(-y) - np.logaddexp(0, -z)
        )
    bce = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    return (alpha * y + (1 - alpha) * (1 - y)) * np.exp(gamma * log_not_pt) * bce


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_optax_1267_1346_sigmoid_focal_extreme_logits(gamma, dtype):
    """optax #1267 / #1346: sigmoid_focal_loss at logits of ±100, ±1e4 and ±3e38, hard and
    soft labels: value equals the float64 reference; reverse- and forward-mode gradients
    (in logits and labels) are finite."""
    z = np.array([100.0, -100.0, 1e4, -1e4, 3e38, -3e38, 100.0, -1e4, 0.0])
    y = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.25, 0.75, 1.0])
    if dtype == jnp.bfloat16:
        z = np.where(np.abs(z) > 1e38, np.sign(z) * 3e38, z)  # bf16 max is 3.39e38
    zj, yj = jnp.asarray(z, dtype), jnp.asarray(y, dtype)
    z64, y64 = np.asarray(zj, np.float64), np.asarray(yj, np.float64)

    def f(a, b):
        return jaxloss.sigmoid_focal_loss(a, b, gamma=gamma, alpha=0.25)

    @jax.jit  # one program for the value and every derivative the test checks
    def all_of(a, b):
        grads = jax.grad(lambda a, b: jnp.sum(f(a, b)), (0, 1))(a, b)
        tangents = jax.jvp(f, (a, b), (jnp.ones_like(a), jnp.ones_like(b)))[1]
        return f(a, b), grads, tangents, jax.jacfwd(f, (0, 1))(a, b)

    out, grads, tangents, jac = all_of(zj, yj)
    expected = _sigmoid_focal_reference(z64, y64, gamma, 0.25)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-30)
    assert _finite(*grads, tangents, *jac)


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_optax_1267_1346_softmax_focal_extreme_logits(gamma, dtype):
    """optax #1267 / #1346 (softmax form): softmax_focal_loss at logit gaps of 100, 1e4,
    1e30 with ids and probabilities: finite value, grad, jvp and jacfwd; the value
    equals the float64 reference −(1 − p_y)^γ log p_y."""
    x = np.array([[100.0, 0.0, -100.0], [1e4, -1e4, 0.0], [0.0, 1e30, -1e30], [3.0, 3.0, 3.0]])
    labels = np.array([2, 0, 0, 1])
    xj = jnp.asarray(x, dtype)
    x64 = np.asarray(xj, np.float64)
    log_p = special.log_softmax(x64, -1)[np.arange(4), labels]
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.array(
            [np.sum(np.exp(np.delete(r, k) - r[k])) for r, k in zip(x64, labels, strict=True)]
        )
        # 1 − p_y without cancellation (s = (1 − p_y)/p_y); s = inf means p_y = 0.
        not_p = np.where(np.isinf(s), 1.0, s / (1 + s))
    expected = -(not_p**gamma) * log_p
    for lab in (jnp.asarray(labels), jax.nn.one_hot(labels, 3, dtype=dtype)):
        f = lambda z, lab=lab: jaxloss.softmax_focal_loss(z, lab, gamma=gamma)  # noqa: E731
        value, rev, tangent, jac = _derivatives(f, xj)
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        assert _finite(value, rev, tangent, jac)
