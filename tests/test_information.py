"""Information-theory family: identities, exact zeros, -inf logits, precision, optax, errors."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

import jaxloss
from jaxloss import _numerics as N
from tests.compiled import jit_call


def _jit(fn):
    """``fn`` compiled once per input shape: eager op-by-op dispatch compiles every
    primitive separately and would dominate this file's run time."""
    static = [n for n in ("axis", "base", "reduction") if n in inspect.signature(fn).parameters]
    return jax.jit(fn, static_argnames=static)


NAMES = (
    "surprisal",
    "entropy",
    "entropy_from_logits",
    "cross_entropy",
    "kl_divergence",
    "kl_divergence_from_logits",
    "js_divergence",
    "gaussian_kl",
)
J = SimpleNamespace(**{name: _jit(getattr(jaxloss, name)) for name in NAMES})
K = 6  # classes in every property test: one shape, so each function compiles once
LOG2 = math.log(2.0)
AXIS_FUNCTIONS = [
    (J.entropy, 1),
    (J.entropy_from_logits, 1),
    (J.cross_entropy, 2),
    (J.kl_divergence, 2),
    (J.kl_divergence_from_logits, 2),
    (J.js_divergence, 2),
]


def _normalize(values, zero):
    x = np.where(zero, 0.0, np.asarray(values, np.float64))
    if x.sum() == 0:
        x[0] = 1.0
    return x / x.sum()


@st.composite
def distributions(draw):
    """(p, q): probability vectors with exact zeros, q = 0 only on some zeros of p."""
    weights = st.lists(st.floats(0.01, 1.0), min_size=K, max_size=K)
    flags = st.lists(st.booleans(), min_size=K, max_size=K)
    p = _normalize(draw(weights), np.array(draw(flags)))
    q_zero = (p == 0) & np.array(draw(flags))
    return p, _normalize(draw(weights), q_zero)


def _softmax(z):
    return np.exp(special.log_softmax(z, axis=-1))


# --------------------------------------------------------------------------------------
# Identities (hypothesis, deterministic profile)
# --------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(distributions())
def test_kl_is_cross_entropy_minus_entropy(pq):
    p, q = map(jnp.asarray, pq)
    kl = J.kl_divergence(p, q)
    np.testing.assert_allclose(kl, J.cross_entropy(p, q) - J.entropy(p), rtol=1e-12, atol=1e-12)
    assert float(kl) >= 0.0


@settings(max_examples=30)
@given(distributions())
def test_divergences_of_a_distribution_from_itself(pq):
    p = jnp.asarray(pq[0])
    np.testing.assert_allclose(J.cross_entropy(p, p), J.entropy(p), rtol=1e-12)
    assert float(J.kl_divergence(p, p)) == 0.0
    assert float(J.js_divergence(p, p)) == 0.0
    assert float(J.kl_divergence_from_logits(jnp.log(p), jnp.log(p))) == 0.0


@settings(max_examples=30)
@given(distributions())
def test_js_is_symmetric_bounded_and_the_entropy_of_the_mixture(pq):
    p, q = map(jnp.asarray, pq)
    js = float(J.js_divergence(p, q))
    assert js == pytest.approx(float(J.js_divergence(q, p)), rel=1e-12, abs=1e-15)
    assert 0.0 <= js <= LOG2 * (1 + 1e-12)
    # JS = H(m) − ½ (H(p) + H(q)), an independent route through `entropy`.
    h = J.entropy
    np.testing.assert_allclose(js, h((p + q) / 2) - (h(p) + h(q)) / 2, atol=1e-12)
    assert float(J.js_divergence(p, q, base=2)) <= 1.0 + 1e-12


@settings(max_examples=20)
@given(distributions(), st.sampled_from([2, 10, 0.5, math.e]))
def test_any_base_is_nats_divided_by_log_base(pq, base):
    p, q = map(jnp.asarray, pq)
    for fn, args in [
        (J.entropy, (p,)),
        (J.cross_entropy, (p, q)),
        (J.kl_divergence, (p, q)),
        (J.js_divergence, (p, q)),
        (J.surprisal, (p,)),
    ]:
        np.testing.assert_allclose(
            fn(*args, base=base), fn(*args) / math.log(base), rtol=1e-12, atol=1e-15
        )


@settings(max_examples=30)
@given(
    st.lists(st.floats(-30.0, 30.0), min_size=K, max_size=K),
    st.lists(st.floats(-30.0, 30.0), min_size=K, max_size=K),
    st.floats(-1e3, 1e3),
)
def test_from_logits_equals_softmax_then_probabilities_and_is_shift_invariant(zp, zq, shift):
    zp, zq = np.asarray(zp), np.asarray(zq)
    p, q = _softmax(zp), _softmax(zq)
    np.testing.assert_allclose(J.entropy_from_logits(zp), special.entr(p).sum(), atol=1e-12)
    kl = J.kl_divergence_from_logits(zp, zq)
    np.testing.assert_allclose(kl, special.rel_entr(p, q).sum(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        J.kl_divergence_from_logits(zp + shift, zq - shift), kl, rtol=1e-9, atol=1e-11
    )
    np.testing.assert_allclose(
        J.entropy_from_logits(zp + shift),
        J.entropy_from_logits(zp),
        rtol=1e-9,
        atol=1e-11,
    )


def test_entropy_in_bits_of_uniform_distributions():
    for k in (1, 2, 8, 1024):
        assert float(J.entropy(jnp.full(k, 1.0 / k), base=2)) == pytest.approx(math.log2(k))


# --------------------------------------------------------------------------------------
# Exact zeros: 0 · log 0 = 0 in the value and the gradient
# --------------------------------------------------------------------------------------

P0 = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0]])
Q0 = np.array([[0.25, 0.25, 0.5, 0.0], [0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])


def test_xlogy_values_and_gradients_at_zero():
    x = jnp.array([0.0, 0.0, 0.0, 2.0, 0.5])
    y = jnp.array([0.0, 3.0, -1.0, 3.0, 0.0])
    np.testing.assert_array_equal(N.xlogy(x, y)[:4], special.xlogy(x, y)[:4])
    assert float(N.xlogy(x, y)[4]) == -np.inf
    gx, gy = jax.grad(lambda a, b: jnp.sum(N.xlogy(a, b)), argnums=(0, 1))(x[:4], y[:4])
    np.testing.assert_allclose(gx, [0.0, np.log(3.0), 0.0, np.log(3.0)])  # 0 at (0, y ≤ 0)
    np.testing.assert_allclose(gy, [0.0, 0.0, 0.0, 2.0 / 3.0])


def test_values_with_exact_zeros_match_scipy():
    p, q = jnp.asarray(P0), jnp.asarray(Q0)
    np.testing.assert_allclose(J.entropy(p), stats.entropy(P0, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(J.kl_divergence(p, q), stats.entropy(P0, Q0, axis=-1))
    m = (P0 + Q0) / 2
    js = 0.5 * (stats.entropy(P0, m, axis=-1) + stats.entropy(Q0, m, axis=-1))
    np.testing.assert_allclose(J.js_divergence(p, q), js, rtol=1e-12)
    # Disjoint supports: JS is exactly its maximum, log 2.
    assert float(J.js_divergence(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))) == LOG2


def _grads(fn, p, q):
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1)))
    return grad(jnp.asarray(p), jnp.asarray(q))


def test_gradients_with_exact_zeros_are_finite_and_the_documented_ones():
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p, log_q = np.log(P0), np.log(Q0)
        # d/dp H = −(log p + 1), with 0 for p = 0 (the −∞ of p log p at 0 is replaced by 0).
        g = jax.jit(jax.grad(lambda a: jnp.sum(J.entropy(a))))(jnp.asarray(P0))
        np.testing.assert_allclose(g, np.where(P0 > 0, -(log_p + 1), 0.0), rtol=1e-12)
        # d/dp KL = log(p/q) + 1 for p > 0; −log q for p = 0 < q; 0 where p = q = 0.
        # d/dq KL = −p/q for q > 0; 0 where p = q = 0.
        gp, gq = _grads(J.kl_divergence, P0, Q0)
        expected_p = np.where(P0 > 0, log_p - log_q + 1, np.where(Q0 > 0, -log_q, 0.0))
        np.testing.assert_allclose(gp, expected_p, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gq, np.where(Q0 > 0, -P0 / Q0, 0.0), rtol=1e-12)
        # d/dp CE = −log q (0 where p = q = 0); d/dq CE = −p/q.
        gp, gq = _grads(J.cross_entropy, P0, Q0)
        np.testing.assert_allclose(gp, np.where(Q0 > 0, -log_q, 0.0), rtol=1e-12)
        np.testing.assert_allclose(gq, np.where(Q0 > 0, -P0 / Q0, 0.0), rtol=1e-12)
        # d/dp JS = ½ log(p/m) for p > 0. For p = 0 < q only q log(q/m) varies: −½ q/(p+q)
        # = −½; 0 where p = q = 0 (likewise in q).
        m = (P0 + Q0) / 2
        gp, gq = _grads(J.js_divergence, P0, Q0)
        expected_p = np.where(P0 > 0, 0.5 * (log_p - np.log(m)), np.where(Q0 > 0, -0.5, 0.0))
        expected_q = np.where(Q0 > 0, 0.5 * (log_q - np.log(m)), np.where(P0 > 0, -0.5, 0.0))
        np.testing.assert_allclose(gp, expected_p, atol=1e-12)
        np.testing.assert_allclose(gq, expected_q, atol=1e-12)


def test_kl_and_cross_entropy_are_inf_where_q_misses_the_support_of_p():
    p, q = jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])
    assert float(J.kl_divergence(p, q)) == np.inf
    assert float(J.cross_entropy(p, q)) == np.inf
    assert float(J.surprisal(jnp.array(0.0))) == np.inf
    zq = jnp.array([0.0, -jnp.inf])
    assert float(J.kl_divergence_from_logits(jnp.zeros(2), zq)) == np.inf


def test_kl_of_extreme_probability_ratios_in_float32():
    # Ratios p/q far below ε (where (p − q)/q rounds to −1) and far above 1/ε, and tiny q
    # whose q² underflows: value and gradients against float64 on the same float32 values.
    p = np.array(
        [[1e-30, 1.0 - 1e-30, 0.0], [0.5, 0.5 - 2e-30, 2e-30], [1e-20, 0.5, 0.5]], np.float32
    )
    q = np.array([[0.5, 0.5, 0.0], [1e-30, 0.5, 0.5], [1e-20, 0.5 - 1e-20, 0.5]], np.float32)
    P, Q = p.astype(np.float64), q.astype(np.float64)
    np.testing.assert_allclose(J.kl_divergence(p, q), special.rel_entr(P, Q).sum(-1), rtol=1e-6)
    gp, gq = _grads(J.kl_divergence, p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_p = np.where(P > 0, np.log(P / Q) + 1, np.where(Q > 0, -np.log(Q), 0.0))
        expected_q = np.where(Q > 0, -P / Q, 0.0)
    np.testing.assert_allclose(gp, expected_p, rtol=1e-6)
    np.testing.assert_allclose(gq, expected_q, rtol=1e-6)


@pytest.mark.parametrize("fn, n_args", AXIS_FUNCTIONS, ids=lambda f: getattr(f, "__name__", ""))
def test_nan_in_a_kept_distribution_gives_nan_in_its_row_only(fn, n_args):
    xs = [np.array(P0), np.array(Q0)][:n_args]
    xs[-1][1, 2] = np.nan
    out = np.asarray(getattr(J, fn.__name__)(*xs))
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


# --------------------------------------------------------------------------------------
# −inf logits behave like very negative finite logits
# --------------------------------------------------------------------------------------

Z_INF = np.array([[2.0, -jnp.inf, 0.5, -1.0], [-jnp.inf, 1e4, -1e4, -jnp.inf]])
ZQ_INF = np.array([[0.0, -jnp.inf, 3.0, 1.0], [-jnp.inf, 0.0, 1e4, 2.0]])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_neg_inf_logits_match_clipping_to_a_very_negative_number(dtype):
    z, zq = jnp.asarray(Z_INF, dtype), jnp.asarray(ZQ_INF, dtype)
    clipped, clipped_q = jnp.maximum(z, -1e30), jnp.maximum(zq, -1e30)

    def value_and_grads(fn, n_args):
        """One compiled function per loss, called at the −inf and at the clipped logits."""
        grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(n_args)))
        return jax.jit(lambda *a: (fn(*a), grad(*a)))

    for fn, a, b in [
        (J.entropy_from_logits, (z,), (clipped,)),
        (J.kl_divergence_from_logits, (z, zq), (clipped, clipped_q)),
    ]:
        both = value_and_grads(fn, len(a))
        v_inf, g_inf = both(*a)
        v_clip, g_clip = both(*b)
        assert np.isfinite(np.asarray(v_inf)).all()
        np.testing.assert_array_equal(v_inf, v_clip)
        for gi, gc in zip(g_inf, g_clip, strict=True):
            assert np.isfinite(np.asarray(gi)).all()
            np.testing.assert_array_equal(gi, gc)
    # and equal to dropping the impossible classes, in float64 against scipy
    if dtype == jnp.float64:
        keep = np.isfinite(Z_INF[0])
        expected = special.entr(_softmax(Z_INF[0][keep])).sum()
        np.testing.assert_allclose(J.entropy_from_logits(z)[0], expected, rtol=1e-12)


# --------------------------------------------------------------------------------------
# Accuracy for nearby distributions (float32), where the textbook forms cancel
# --------------------------------------------------------------------------------------


def _nearby_f32(eps, seed=0):
    """float32 p and a relative perturbation q of it; float64 copies of the same values."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(16, 8)) * 2
    zq = z + eps * rng.normal(size=z.shape)
    p32, q32 = _softmax(z).astype(np.float32), _softmax(zq).astype(np.float32)
    return (z.astype(np.float32), zq.astype(np.float32)), (p32, q32)


@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_divergences_of_nearby_distributions_keep_their_digits_in_float32(eps):
    (zp, zq), (p, q) = _nearby_f32(eps)
    P, Q = p.astype(np.float64), q.astype(np.float64)  # the exact values the f32 code sees
    m = (P + Q) / 2
    js = 0.5 * (special.rel_entr(P, m) + special.rel_entr(Q, m)).sum(-1)
    np.testing.assert_allclose(J.js_divergence(p, q), js, rtol=1e-5)
    # KL(p‖q) of inputs known to float32 rounding is determined to about ε/‖p − q‖; the
    # plain Σ p (log p − log q) is off by ε·|log p|/‖p − q‖², i.e. 30% at eps = 1e-3.
    np.testing.assert_allclose(J.kl_divergence(p, q), special.rel_entr(P, Q).sum(-1), rtol=3e-3)
    ZP, ZQ = zp.astype(np.float64), zq.astype(np.float64)
    kl = special.rel_entr(_softmax(ZP), _softmax(ZQ)).sum(-1)
    np.testing.assert_allclose(J.kl_divergence_from_logits(zp, zq), kl, rtol=1e-2)


def test_kl_from_logits_rows_do_not_depend_on_the_rest_of_the_batch():
    # Rows served by the plain form (KL ≥ 2⁻⁶), rows that need the careful one (a small
    # KL; a −inf logit of q where p = 0) and a row where q misses p (KL = +inf): each
    # row's value and gradient are those it gets alone, in float32 and float64.
    (zp, zq), _ = _nearby_f32(1e-2)
    rng = np.random.default_rng(3)
    far_p, far_q = rng.normal(size=(2, 8)) * 3, rng.normal(size=(2, 8)) * 3
    inf_p = np.array([[0.0, -np.inf, 1.0, 2.0, 0.5, -1.0, 0.0, 3.0]])
    inf_q = np.array([[1.0, -np.inf, 0.0, 2.0, 0.5, -1.0, 0.0, 1.0]])
    miss_q = np.array([[1.0, 0.0, -np.inf, 2.0, 0.5, -1.0, 0.0, 1.0]])
    for dtype in (np.float32, np.float64):
        p = np.concatenate([far_p, zp[:2], inf_p, far_p[:1]]).astype(dtype)
        q = np.concatenate([far_q, zq[:2], inf_q, miss_q]).astype(dtype)
        loss = jax.jit(J.kl_divergence_from_logits)
        grads = jax.jit(jax.grad(lambda a, b: jnp.sum(J.kl_divergence_from_logits(a, b)), (0, 1)))
        batch = np.asarray(loss(p, q))
        assert batch[-1] == np.inf
        finite = slice(0, len(p) - 1)
        g_batch = grads(p[finite], q[finite])
        for i in range(len(p) - 1):
            np.testing.assert_array_equal(batch[i], loss(p[i : i + 1], q[i : i + 1])[0])
            for gb, gr in zip(g_batch, grads(p[i : i + 1], q[i : i + 1]), strict=True):
                np.testing.assert_allclose(gb[i], gr[0], rtol=1e-6, atol=1e-7)
                assert np.isfinite(np.asarray(gb[i])).all()


def test_kl_from_logits_gradients_are_the_closed_forms():
    # ∂KL/∂z_p = p·(log p − log q − KL), ∂KL/∂z_q = q − p, against float64 numpy.
    rng = np.random.default_rng(5)
    zp, zq = rng.normal(size=(2, 3, 6)) * 2
    zp[0, 1] = zq[0, 1] = -np.inf  # impossible under both: gradient 0
    log_p = zp - special.logsumexp(zp, axis=-1, keepdims=True)
    log_q = zq - special.logsumexp(zq, axis=-1, keepdims=True)
    p, q = np.exp(log_p), np.exp(log_q)
    with np.errstate(invalid="ignore"):
        kl = np.nansum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1, keepdims=True)
        want_p = np.where(p > 0, p * (log_p - log_q - kl), 0.0)
    gp, gq = _grads(J.kl_divergence_from_logits, zp, zq)
    np.testing.assert_allclose(gp, want_p, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gq, q - p, rtol=1e-12, atol=1e-15)


def test_gaussian_kl_of_nearby_scales_keeps_its_digits_in_float32():
    log_p = np.float32(0.3)
    log_q = (log_p + np.array([1e-2, 1e-3, -1e-3], np.float32)).astype(np.float32)
    ours = J.gaussian_kl(jnp.float32(0.0), log_scale_p=log_p, log_scale_q=log_q)
    sp, sq = np.exp(np.float64(log_p)), np.exp(log_q.astype(np.float64))
    expected = np.log(sq / sp) + sp**2 / (2 * sq**2) - 0.5
    np.testing.assert_allclose(ours, expected, rtol=1e-3)


# --------------------------------------------------------------------------------------
# axis, broadcasting and masks on whole distributions
# --------------------------------------------------------------------------------------


def _samples(n_args, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 1.0, size=shape) for _ in range(n_args)]


@pytest.mark.parametrize("fn, n_args", AXIS_FUNCTIONS, ids=lambda f: getattr(f, "__name__", ""))
def test_axis_equals_moving_the_axis_last(fn, n_args):
    xs = [x / x.sum(0, keepdims=True) for x in _samples(n_args, (5, 3, 4))]
    for axis in (0, 1, -2):
        moved = [np.moveaxis(x, axis, -1) for x in xs]
        np.testing.assert_allclose(fn(*xs, axis=axis), fn(*moved), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn, n_args", AXIS_FUNCTIONS, ids=lambda f: getattr(f, "__name__", ""))
def test_masked_distributions_along_axis_0_get_zero_gradient_even_when_nan(fn, n_args):
    xs = [x / x.sum(0, keepdims=True) for x in _samples(n_args, (5, 4))]
    keep = np.array([True, False, True, False])
    poisoned = [jnp.asarray(np.where(keep, x, np.nan)) for x in xs]

    def total(*a):
        return fn(*a, axis=0, where=jnp.asarray(keep), reduction="sum")

    expected = fn(*[x[:, keep] for x in xs], axis=0, reduction="sum")
    np.testing.assert_allclose(total(*poisoned), expected, rtol=1e-12)
    for g in jax.jit(jax.grad(total, argnums=tuple(range(n_args))))(*poisoned):
        assert np.isfinite(np.asarray(g)).all()
        assert np.all(np.asarray(g)[:, ~keep] == 0)


def test_inputs_broadcast_and_the_loss_drops_the_axis():
    p = np.array([0.2, 0.3, 0.5])
    q = _softmax(np.random.default_rng(3).normal(size=(4, 3)))
    out = J.kl_divergence(p, q)
    assert out.shape == (4,)
    np.testing.assert_allclose(out, special.rel_entr(p, q).sum(-1), rtol=1e-12)
    w = jnp.arange(4.0)
    np.testing.assert_allclose(
        J.cross_entropy(p, q, weights=w, reduction="sum"),
        np.sum(np.arange(4.0) * -(p * np.log(q)).sum(-1)),
        rtol=1e-12,
    )


def test_integer_one_hot_reference_equals_float_one_hot():
    labels = jnp.array([[0, 1, 0], [1, 0, 0]])
    q = jnp.asarray(_softmax(np.random.default_rng(4).normal(size=(2, 3))))
    for fn in (J.cross_entropy, J.kl_divergence):
        np.testing.assert_array_equal(fn(labels, q), fn(labels.astype(q.dtype), q))


# --------------------------------------------------------------------------------------
# gaussian_kl
# --------------------------------------------------------------------------------------

GAUSS = [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.0, 2.0), (2.0, 3.0, 0.5, 0.7)]


@pytest.mark.parametrize("mp, sp, mq, sq", GAUSS)
def test_gaussian_kl_matches_numerical_integration(mp, sp, mq, sq):
    def integrand(x):
        log_p, log_q = stats.norm.logpdf(x, mp, sp), stats.norm.logpdf(x, mq, sq)
        return np.exp(log_p) * (log_p - log_q)

    expected, _ = integrate.quad(integrand, mp - 40 * sp, mp + 40 * sp, limit=200)
    np.testing.assert_allclose(J.gaussian_kl(mp, sp, mq, sq), expected, rtol=1e-9, atol=1e-12)


def test_gaussian_kl_parameterizations_agree_and_give_the_vae_term():
    rng = np.random.default_rng(5)
    mu, log_sigma = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)) * 0.5
    by_log = J.gaussian_kl(mu, log_scale_p=log_sigma)
    np.testing.assert_allclose(J.gaussian_kl(mu, np.exp(log_sigma), 0.0, 1.0), by_log)
    # Kingma & Welling's −½ (1 + log σ² − μ² − σ²)
    vae = -0.5 * (1 + 2 * log_sigma - mu**2 - np.exp(2 * log_sigma))
    np.testing.assert_allclose(by_log, vae, rtol=1e-12)
    np.testing.assert_allclose(
        J.gaussian_kl(mu, log_scale_p=log_sigma, mean_q=1.0, log_scale_q=0.2),
        J.gaussian_kl(mu, np.exp(log_sigma), 1.0, np.exp(0.2)),
        rtol=1e-12,
    )


@settings(max_examples=30)
@given(st.floats(-5, 5), st.floats(-3, 3), st.floats(-5, 5), st.floats(-3, 3))
def test_gaussian_kl_is_nonnegative_and_zero_only_at_equality(mp, lsp, mq, lsq):
    kl = float(J.gaussian_kl(mp, log_scale_p=lsp, mean_q=mq, log_scale_q=lsq))
    assert kl >= 0.0
    assert float(J.gaussian_kl(mp, log_scale_p=lsp, mean_q=mp, log_scale_q=lsp)) == 0.0


# --------------------------------------------------------------------------------------
# optax.losses: the same numbers where optax is right, and where it is not
# --------------------------------------------------------------------------------------


optax_kl = jax.jit(optax.losses.kl_divergence)
optax_kl_log = jax.jit(optax.losses.kl_divergence_with_log_targets)
optax_gkl = jax.jit(optax.losses.generalized_kl_divergence)


def _random_pq(seed=6, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    return _softmax(rng.normal(size=shape)), _softmax(rng.normal(size=shape))


def test_kl_divergence_matches_optax_with_arguments_mapped():
    # optax.losses.kl_divergence(log_predictions, targets) is KL(targets‖predictions).
    p, q = _random_pq()
    np.testing.assert_allclose(J.kl_divergence(p, q), optax_kl(np.log(q), p), rtol=1e-12)
    # optax.losses.kl_divergence_with_log_targets(log_q, log_p) is KL(p‖q).
    np.testing.assert_allclose(
        J.kl_divergence_from_logits(np.log(p), np.log(q)),
        optax_kl_log(np.log(q), np.log(p)),
        rtol=1e-12,
    )


def test_kl_divergence_matches_optax_generalized_kl_on_normalized_inputs():
    # generalized_kl_divergence (convex_kl_divergence is its deprecated alias) adds
    # Σ (q − p), which is 0 for normalized inputs; J.kl_divergence is the plain KL
    # and does not add it, so the two differ by exactly that sum on unnormalized inputs.
    p, q = _random_pq()
    generalized = optax_gkl(np.log(q), p)
    np.testing.assert_allclose(J.kl_divergence(p, q), generalized, rtol=1e-12, atol=1e-15)
    q2 = 1.5 * q
    np.testing.assert_allclose(
        J.kl_divergence(p, q2),
        optax_gkl(np.log(q2), p) - (q2 - p).sum(-1),
        rtol=1e-12,
    )


def test_where_optax_kl_gives_nan_jaxloss_gives_the_math():
    """A class with p = 0 and q = 0 (e.g. a masked vocabulary entry) is 0 · log 0 = 0."""
    p, q = jnp.array([0.5, 0.5, 0.0]), jnp.array([0.25, 0.75, 0.0])
    expected = special.rel_entr(np.asarray(p), np.asarray(q)).sum()
    assert np.isnan(optax_kl(jnp.log(q), p))
    np.testing.assert_allclose(J.kl_divergence(p, q), expected, rtol=1e-12)
    assert np.isnan(optax_kl_log(jnp.log(q), jnp.log(p)))
    np.testing.assert_allclose(
        J.kl_divergence_from_logits(jnp.log(p), jnp.log(q)), expected, rtol=1e-12
    )
    # The gradient in the targets at an exact zero: NaN in optax, finite here.
    q_pos = jnp.array([0.25, 0.25, 0.5])
    g_optax = jax.jit(jax.grad(lambda t: optax_kl(jnp.log(q_pos), t)))(p)
    g_ours = jax.jit(jax.grad(lambda t: J.kl_divergence(t, q_pos)))(p)
    assert np.isnan(g_optax[2]) and np.isfinite(np.asarray(g_ours)).all()


# --------------------------------------------------------------------------------------
# Bad input: trace-time errors that name the argument
# --------------------------------------------------------------------------------------

P3 = jnp.full((2, 3), 1 / 3)
BAD_CALLS = [
    (lambda: jaxloss.entropy(P3, axis=1.0), TypeError, r"`axis` must be an int.*1\.0"),
    (lambda: jaxloss.entropy(P3, axis=(0, 1)), TypeError, r"`axis` must be an int"),
    (
        lambda: jaxloss.kl_divergence(P3, P3, axis=2),
        ValueError,
        r"`axis` 2 is out of range.*\(2, 3\)",
    ),
    (lambda: jaxloss.entropy(jnp.float32(0.5)), ValueError, r"scalars.*at least one dimension"),
    (lambda: jaxloss.entropy(P3, base=1), ValueError, r"`base` must be positive, finite and not 1"),
    (lambda: jaxloss.js_divergence(P3, P3, base=-2.0), ValueError, r"`base` must be positive"),
    (lambda: jaxloss.surprisal(P3, base="2"), TypeError, r"`base` must be None \(nats\)"),
    (lambda: jaxloss.cross_entropy(P3, P3, base=True), TypeError, r"`base` must be None"),
    (
        lambda: jaxloss.kl_divergence(P3, jnp.ones((2, 4)) / 4),
        ValueError,
        r"do not broadcast: `p` \(2, 3\), `q` \(2, 4\)",
    ),
    (
        lambda: jaxloss.kl_divergence(P3, P3, where=jnp.ones((2, 3), bool)),
        ValueError,
        r"`where` of shape \(2, 3\) does not broadcast to the loss shape \(2,\)",
    ),
    (lambda: jaxloss.entropy(P3, where=jnp.ones(2)), TypeError, r"`where` must be a boolean mask"),
    (
        lambda: jaxloss.js_divergence(P3, P3, weights=jnp.ones(3)),
        ValueError,
        r"`weights` of shape \(3,\) does not broadcast to the loss shape \(2,\)",
    ),
    (lambda: jaxloss.entropy(P3, reduction="avg"), ValueError, r"`reduction` must be one of"),
    (lambda: jaxloss.entropy(jnp.ones((2, 3), int)), TypeError, r"`probs` must be a floating"),
    (
        lambda: jaxloss.kl_divergence(P3, jnp.ones((2, 3), int)),
        TypeError,
        r"`q` must be a floating",
    ),
    (
        lambda: jaxloss.entropy_from_logits(jnp.ones((2, 3), int)),
        TypeError,
        r"`logits` must be a floating",
    ),
    (lambda: jaxloss.gaussian_kl(jnp.zeros(3), -1.0), ValueError, r"`scale_p` must be a positive"),
    (lambda: jaxloss.gaussian_kl(jnp.zeros(3), scale_q=0.0), ValueError, r"`scale_q` must be"),
    (
        lambda: jaxloss.gaussian_kl(jnp.zeros(3), 1.0, log_scale_p=0.0),
        ValueError,
        r"at most one of `scale_p`, `log_scale_p`",
    ),
    (
        lambda: jaxloss.gaussian_kl(jnp.zeros(3), jnp.ones(4)),
        ValueError,
        r"do not broadcast: `mean_p` \(3,\).*`scale_p` \(4,\)",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_errors_eagerly_and_under_jit(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


def test_inputs_of_different_rank_broadcast_along_the_common_axis():
    """A shared target [L, C] against a batch [B, L, C]: axis=-1 is the same axis for both."""
    rng = np.random.default_rng(7)
    p_logits = rng.normal(size=(3, 4))
    q_logits = rng.normal(size=(2, 3, 4))
    ours = jaxloss.kl_divergence_from_logits(p_logits, q_logits)
    p = special.softmax(p_logits, axis=-1)
    q = special.softmax(q_logits, axis=-1)
    np.testing.assert_allclose(ours, np.sum(p * (np.log(p) - np.log(q)), axis=-1), rtol=1e-12)
    np.testing.assert_allclose(
        jaxloss.kl_divergence(p, q), np.sum(p * (np.log(p) - np.log(q)), axis=-1), rtol=1e-12
    )


# --------------------------------------------------------------------------------------
# PyTorch's `kl_div(log q, p)` habit raises where the inputs are concrete
# --------------------------------------------------------------------------------------


def test_log_probabilities_in_a_probability_argument_raise_naming_the_math_order():
    """`kl_divergence(log_q, p)` (torch's `kl_div(input, target)` order)
    returned NaN with no hint. A concrete negative probability raises naming (p, q) and
    torch's order; under jit the documented NaN stays."""
    p = jnp.asarray([[0.2, 0.8], [0.5, 0.5]])
    q = jnp.asarray([[0.4, 0.6], [0.1, 0.9]])
    message = (
        r"`p` holds a negative entry \(-2.303\).*math order \(p, q\).*`kl_div\(input, target\)`"
    )
    with pytest.raises(ValueError, match=message):
        jaxloss.kl_divergence(jnp.log(q), p)
    for fn in (jaxloss.kl_divergence, jaxloss.cross_entropy, jaxloss.js_divergence):
        with pytest.raises(ValueError, match=r"`q` holds a negative entry.*\(p, q\)"):
            fn(p, jnp.log(q))
        assert np.isnan(jax.jit(fn)(p, jnp.log(q))).all()
        assert np.isfinite(fn(p, q)).all()
    with pytest.raises(ValueError, match=r"`probs` holds a negative entry.*entropy_from_logits"):
        jaxloss.entropy(jnp.log(p))
    with pytest.raises(ValueError, match=r"`probs` holds a negative entry"):
        jaxloss.surprisal(jnp.log(p))
    with pytest.raises(ValueError, match=r"`probs` holds.*`sigmoid_binary_cross_entropy`"):
        jaxloss.binary_cross_entropy(jnp.log(p), p)
    # A masked-out distribution may hold anything, negative entries included.
    bad_row = q.at[1].set(-1.0)
    keep = jnp.asarray([True, False])
    np.testing.assert_allclose(
        jaxloss.kl_divergence(p, bad_row, where=keep), jaxloss.kl_divergence(p, q, where=keep)
    )


def test_review2_item7_traced_log_probabilities_as_p_give_nan_not_a_number():
    """Review 2, item 7: under jit a negative entry of `p` (log-probabilities where the
    reference distribution belongs) made `cross_entropy` return a plausible −4.52; every
    probability argument now gives NaN in the value and the gradient of that
    distribution, as the concrete case raises. Other distributions are untouched."""
    p = jnp.asarray([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    q = jnp.asarray([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    bad = p.at[0].set(jnp.log(p[0]))
    for fn in (
        jaxloss.cross_entropy,
        jaxloss.kl_divergence,
        jaxloss.js_divergence,
        jaxloss.generalized_kl_divergence,
    ):
        out = jax.jit(fn)(bad, q)
        assert np.isnan(out[0]) and np.isfinite(out[1]), fn.__name__
        np.testing.assert_allclose(out[1], fn(p, q)[1], rtol=1e-6)
        g = jax.jit(jax.grad(lambda q, p, fn=fn: jnp.sum(fn(p, q))))(q, bad)
        assert np.isnan(g[0]).all() and np.isfinite(g[1]).all(), fn.__name__
    # An exact 0 in p stays valid: the gradient in p there is the one-sided −log q.
    p0 = jnp.asarray([[0.0, 0.4, 0.6]])
    g = jax.jit(jax.grad(lambda p: jnp.sum(jaxloss.cross_entropy(p, q[:1]))))(p0)
    np.testing.assert_allclose(g, -np.log(np.asarray(q[:1])), rtol=1e-6)


# generalized_kl_divergence
# --------------------------------------------------------------------------------------


def test_generalized_kl_matches_optax_and_kl_on_distributions():
    rng = np.random.default_rng(11)
    p, q = rng.uniform(0.1, 3.0, size=(2, 7, K))
    peer = optax.losses.generalized_kl_divergence(np.log(q), p)
    np.testing.assert_allclose(jaxloss.generalized_kl_divergence(p, q), peer, rtol=1e-12)
    ref = (special.rel_entr(p, q) - p + q).sum(-1)
    np.testing.assert_allclose(jaxloss.generalized_kl_divergence(p, q), ref, rtol=1e-12)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        jaxloss.generalized_kl_divergence(p, q, base=2), J.kl_divergence(p, q, base=2), rtol=1e-12
    )


def test_generalized_kl_zeros_follow_zero_log_zero():
    p = jnp.array([2.0, 0.0, 0.0, 1.0])
    q = jnp.array([1.0, 3.0, 0.0, 1.0])
    out = jit_call(jaxloss.generalized_kl_divergence, p, q)
    np.testing.assert_allclose(out, 2 * np.log(2.0) - 2.0 + 1.0 + 3.0, rtol=1e-12)
    g_p, g_q = jax.jit(jax.grad(jaxloss.generalized_kl_divergence, argnums=(0, 1)))(p, q)
    np.testing.assert_allclose(g_p, [np.log(2.0), -np.log(3.0) - 1.0, -1.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(g_q, [-1.0, 1.0, 1.0, 0.0], rtol=1e-12, atol=1e-15)
    assert jaxloss.generalized_kl_divergence(jnp.array([1.0]), jnp.array([0.0])) == jnp.inf


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1))
def test_generalized_kl_is_non_negative_and_zero_at_p_equal_q(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.uniform(0.0, 5.0, size=(2, K)) ** 3
    assert float(jaxloss.generalized_kl_divergence(p, q)) >= 0.0
    assert float(jaxloss.generalized_kl_divergence(p, p)) == 0.0


def test_generalized_kl_bad_input():
    with pytest.raises(ValueError, match=r"Shapes do not broadcast: `p` \(3,\), `q` \(4,\)"):
        jaxloss.generalized_kl_divergence(jnp.ones(3), jnp.ones(4))
    with pytest.raises(TypeError, match=r"`q` must be a floating-point array"):
        jax.jit(jaxloss.generalized_kl_divergence)(jnp.ones(3), jnp.ones(3, int))
