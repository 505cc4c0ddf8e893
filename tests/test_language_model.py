"""Language-model losses: the options the contract table leaves out, limits, identities, errors.

References are float64 numpy from the formulas (the contract table's, reused here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import jaxloss
from tests.compiled import jit_call
from tests.contract_table import (
    _ref_distillation,
    _ref_group_advantages,
    _ref_kl_penalty,
    _ref_policy_gradient,
    _ref_sequence_log_probs,
    _ref_token_log_probs,
)
from tests.gradcheck import check_grads

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(4, 3, 7)) * 2.0
TEACHER = RNG.normal(size=(4, 3, 7)) * 2.0
LABELS = RNG.integers(0, 7, size=(4, 3))
LP = np.log(RNG.uniform(0.05, 0.95, size=(4, 5)))
OLD = LP + RNG.normal(size=LP.shape) * 0.3
ADV = RNG.normal(size=(4,))
KEEP = RNG.random((4, 5)) < 0.7
KEEP[1] = False  # a sequence with no kept token


def f64(x):
    return jnp.asarray(x, jnp.float64)


def _grad(f, *args, argnums=0):
    """The gradient of Σ f, compiled as one function (eagerly, every primitive of the
    backward pass would compile on its own)."""
    return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=argnums))(*args)


# -- token_log_probs / sequence_log_probs ----------------------------------------------


def test_token_log_probs_axis_and_temperature():
    moved = np.moveaxis(LOGITS, -1, 0)
    out = jaxloss.token_log_probs(f64(moved), LABELS, axis=0, temperature=0.7)
    np.testing.assert_allclose(out, _ref_token_log_probs(LOGITS, LABELS, temperature=0.7), 1e-12)


def test_token_log_probs_masked_nan_is_zero_with_zero_gradient():
    where = np.ones((4, 3), bool)
    where[0, 1] = False
    logits = LOGITS.copy()
    logits[0, 1] = np.nan
    out = jaxloss.token_log_probs(f64(logits), LABELS, where=where)
    np.testing.assert_allclose(out, _ref_token_log_probs(LOGITS, LABELS, where=where), 1e-12)
    g = _grad(lambda z: jaxloss.token_log_probs(z, LABELS, where=where), f64(logits))
    assert np.isfinite(g).all() and np.all(g[0, 1] == 0)


def test_token_log_probs_neg_inf_logits_and_bad_ids():
    z = jnp.array([[0.0, -jnp.inf, 1.0], [0.0, 0.0, 0.0]], jnp.float32)
    out = jaxloss.token_log_probs(z, jnp.array([2, 1]))
    np.testing.assert_allclose(out, [1 - np.log1p(np.e), -np.log(3)], 1e-6)
    assert np.isfinite(_grad(lambda z: jaxloss.token_log_probs(z, jnp.array([0, 2])), z)).all()
    # A label at a -inf logit: the lowest float; an id outside [0, V): NaN.
    assert jaxloss.token_log_probs(z, jnp.array([1, 0]))[0] == jnp.finfo(jnp.float32).min
    assert np.isnan(jaxloss.token_log_probs(z, jnp.array([3, 0]))[0])


def test_token_log_probs_bad_inputs():
    with pytest.raises(TypeError, match="integer array of token ids"):
        jaxloss.token_log_probs(LOGITS, LABELS.astype(float))
    with pytest.raises(ValueError, match="must broadcast to the shape of `logits`"):
        jax.jit(jaxloss.token_log_probs)(LOGITS, LABELS[:, :2])
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        jaxloss.token_log_probs(LOGITS, LABELS, temperature=0.0)
    with pytest.raises(TypeError, match="`where` must be a boolean"):
        jaxloss.token_log_probs(LOGITS, LABELS, where=np.ones((4, 3)))


@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_sum_mean_and_empty(average):
    out = jaxloss.sequence_log_probs(f64(LP), where=KEEP, average=average)
    np.testing.assert_allclose(out, _ref_sequence_log_probs(LP, where=KEEP, average=average))
    assert out[1] == 0
    poisoned = np.where(KEEP, LP, np.nan)
    g = _grad(lambda x: jaxloss.sequence_log_probs(x, where=KEEP, average=average), f64(poisoned))
    assert np.all(g[~KEEP] == 0) and np.isfinite(g).all()
    moved = jaxloss.sequence_log_probs(f64(LP.T), where=KEEP.T, average=average, axis=0)
    np.testing.assert_allclose(moved, out, 1e-12)


def test_sequence_log_probs_unmasked_mean():
    out = jaxloss.sequence_log_probs(f64(LP), average=True)
    np.testing.assert_allclose(out, LP.mean(-1), 1e-12)


# -- distillation_loss ------------------------------------------------------------------

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_distillation_each_divergence(divergence):
    kw = {"divergence": divergence, "temperature": 1.7, "beta": 0.3}
    out = jaxloss.distillation_loss(f64(LOGITS), f64(TEACHER), **kw)
    np.testing.assert_allclose(out, _ref_distillation(LOGITS, TEACHER, **kw), 1e-10, 1e-12)
    assert np.all(np.asarray(out) >= 0)
    f = lambda s: jaxloss.distillation_loss(s, f64(TEACHER), **kw)  # noqa: E731
    check_grads(f, (f64(LOGITS),), order=1, modes=("rev",))  # order 2: the contract table
    # Softmax losses are invariant to a per-token shift of either model's logits.
    shifted = jaxloss.distillation_loss(f64(LOGITS + 3.0), f64(TEACHER - LABELS[..., None]), **kw)
    np.testing.assert_allclose(shifted, out, 1e-10, 1e-12)
    # No gradient reaches the teacher.
    g_t = _grad(lambda t: jaxloss.distillation_loss(f64(LOGITS), t, **kw), f64(TEACHER))
    assert np.all(np.asarray(g_t) == 0)


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**31 - 1),
    beta=st.floats(0.01, 0.99),
    temperature=st.floats(0.25, 4.0),
    scale=st.floats(0.01, 20.0),
)
def test_divergence_bounds_property(seed, beta, temperature, scale):
    """0 ≤ JSD_β ≤ h(β) (the entropy of (β, 1 − β)), 0 ≤ TVD ≤ 1, KLs ≥ 0, and Pinsker's
    TVD ≤ √(KL/2), for any logits and temperature."""
    rng = np.random.default_rng(seed)
    s, t = f64(rng.normal(size=(3, 9)) * scale), f64(rng.normal(size=(3, 9)) * scale)
    kw = {"temperature": temperature}
    out = {
        d: np.asarray(jaxloss.distillation_loss(s, t, divergence=d, beta=beta, **kw))
        for d in DIVERGENCES
    }
    h = -beta * np.log(beta) - (1 - beta) * np.log1p(-beta)
    assert np.all(out["jsd"] >= 0) and np.all(out["jsd"] <= h + 1e-12)
    assert np.all(out["tvd"] >= 0) and np.all(out["tvd"] <= 1 + 1e-12)
    assert np.all(out["forward_kl"] >= 0) and np.all(out["reverse_kl"] >= 0)
    assert np.all(out["tvd"] <= np.sqrt(out["forward_kl"] / 2) + 1e-12)


def test_forward_kl_is_kl_divergence_from_logits():
    np.testing.assert_allclose(
        jaxloss.distillation_loss(f64(LOGITS), f64(TEACHER), temperature=2.0),
        jaxloss.kl_divergence_from_logits(f64(TEACHER) / 2, f64(LOGITS) / 2),
        1e-12,
    )


def test_jsd_beta_endpoints_and_limits():
    """β = 0 is forward KL, β = 1 reverse KL (TRL's convention), the limits of JSD_β/β
    and JSD_β/(1 − β); β = ½ is the symmetric JSD, ≤ log 2."""
    s, t = f64(LOGITS), f64(TEACHER)
    fwd = jaxloss.distillation_loss(s, t)
    rev = jaxloss.distillation_loss(s, t, divergence="reverse_kl")
    jsd = lambda b: jaxloss.distillation_loss(s, t, divergence="jsd", beta=b)  # noqa: E731
    np.testing.assert_array_equal(jsd(0), fwd)
    np.testing.assert_array_equal(jsd(1.0), rev)
    np.testing.assert_allclose(jsd(1e-7) / 1e-7, fwd, rtol=1e-5)
    np.testing.assert_allclose(jsd(1 - 1e-7) / 1e-7, rev, rtol=1e-5)
    half = jsd(0.5)
    np.testing.assert_allclose(half, jaxloss.js_divergence(jax.nn.softmax(s), jax.nn.softmax(t)))
    assert np.all(np.asarray(half) <= np.log(2))


def test_jsd_accurate_for_nearby_distributions_float32():
    """JSD is of order (s − t)²; summing t log(t/m) terms would cancel (2e-3 relative
    error here in float32); the generalized terms keep it to the inputs' rounding."""
    rng = np.random.default_rng(1)
    s = (rng.normal(size=(8, 1000)) * 2).astype(np.float32)
    t = (s + rng.normal(size=s.shape) * 1e-2).astype(np.float32)
    ref = _ref_distillation(s.astype(float), t.astype(float), divergence="jsd", beta=0.3)
    out = jaxloss.distillation_loss(s, t, divergence="jsd", beta=0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-4)


def test_temperature_squared_scaling():
    s, t = f64(LOGITS), f64(TEACHER)
    for divergence in DIVERGENCES:
        kw = {"divergence": divergence, "temperature": 3.0}
        plain = jaxloss.distillation_loss(s, t, **kw)
        scaled = jaxloss.distillation_loss(s, t, scale_by_temperature_squared=True, **kw)
        np.testing.assert_allclose(scaled, 9.0 * plain, 1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_distillation_masked_vocabulary_is_finite(divergence):
    """−inf logits at the same tokens in both models: finite value and gradient, equal to
    dropping those tokens."""
    s, t = LOGITS.astype(np.float32), TEACHER.astype(np.float32)
    s[..., :2], t[..., :2] = -np.inf, -np.inf
    kw = {"divergence": divergence, "beta": 0.3}
    out = jaxloss.distillation_loss(s, t, **kw)
    expected = _ref_distillation(LOGITS[..., 2:], TEACHER[..., 2:], **kw)
    np.testing.assert_allclose(out, expected, 2e-5, 2e-5)
    g = _grad(lambda z: jaxloss.distillation_loss(z, t, **kw), jnp.asarray(s))
    assert np.isfinite(g).all() and np.all(g[..., :2] == 0)


def test_distillation_where_weights_reduction():
    where = np.ones((4, 3), bool)
    where[2] = False
    s = LOGITS.copy()
    s[2] = np.nan
    w = RNG.random((4, 3))
    out = jaxloss.distillation_loss(
        f64(s), f64(TEACHER), divergence="jsd", where=where, weights=w, reduction="mean"
    )
    ref = _ref_distillation(LOGITS, TEACHER, divergence="jsd")
    np.testing.assert_allclose(out, np.sum((ref * w)[where]) / np.sum(w[where]), 1e-12)


def test_distillation_bad_inputs():
    with pytest.raises(ValueError, match="`divergence` must be one of"):
        jaxloss.distillation_loss(LOGITS, TEACHER, divergence="kl")
    with pytest.raises(ValueError, match=r"`beta` must be in \[0.0, 1.0\]"):
        jaxloss.distillation_loss(LOGITS, TEACHER, divergence="jsd", beta=1.5)
    with pytest.raises(ValueError, match="`teacher_logits` of shape"):
        jax.jit(jaxloss.distillation_loss)(LOGITS, TEACHER[..., :5])
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        jaxloss.distillation_loss(LOGITS, TEACHER, temperature=-1.0)


# -- policy_gradient_loss -----------------------------------------------------------------

AGGREGATIONS = {
    "token_mean": {},
    "sequence_mean": {},
    "sequence_sum_normalized": {"max_length": 8},
}


@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
def test_policy_gradient_aggregations(aggregation):
    kw = {"aggregation": aggregation, **AGGREGATIONS[aggregation], "clip_epsilon_high": 0.28}
    out = jaxloss.policy_gradient_loss(f64(LP), f64(OLD), f64(ADV), where=KEEP, **kw)
    np.testing.assert_allclose(out, _ref_policy_gradient(LP, OLD, ADV, where=KEEP, **kw), 1e-12)
    f = lambda lp: jaxloss.policy_gradient_loss(lp, f64(OLD), f64(ADV), where=KEEP, **kw)  # noqa: E731
    check_grads(f, (f64(LP),), order=1, modes=("rev",))  # order 2: the contract table
    # Per-token advantages equal to the broadcast per-sequence ones.
    per_token = np.broadcast_to(ADV[:, None], LP.shape)
    same = jaxloss.policy_gradient_loss(f64(LP), f64(OLD), f64(per_token), where=KEEP, **kw)
    np.testing.assert_allclose(same, out, 1e-14)


def test_policy_gradient_on_policy_is_reinforce():
    """At old = current policy, ∇ℓ = −A/N per kept token (token_mean): the score function."""
    g = jit_call(jax.grad(jaxloss.policy_gradient_loss), f64(LP), f64(LP), f64(ADV), where=KEEP)
    expected = np.where(KEEP, -ADV[:, None] / KEEP.sum(), 0.0)
    np.testing.assert_allclose(g, expected, 1e-12)


def test_policy_gradient_constants_and_masked_nan():
    lp = np.where(KEEP, LP, np.nan)
    old = np.where(KEEP, OLD, np.inf)
    g = jit_call(
        jax.grad(jaxloss.policy_gradient_loss, argnums=(0, 1, 2)),
        f64(lp), f64(old), f64(ADV), where=KEEP,
    )  # fmt: skip
    assert np.isfinite(g[0]).all() and np.all(g[0][~KEEP] == 0)
    assert np.all(g[1] == 0) and np.all(g[2] == 0)
    empty = jaxloss.policy_gradient_loss(f64(lp), f64(old), f64(ADV), where=np.zeros_like(KEEP))
    assert empty == 0


def test_policy_gradient_clip_metrics():
    loss, m = jaxloss.policy_gradient_loss(
        f64(LP), f64(OLD), f64(ADV), where=KEEP, clip_epsilon=0.1, return_metrics=True
    )
    r, a = np.exp(LP - OLD), np.broadcast_to(ADV[:, None], LP.shape)
    low = ((r < 0.9) & (a < 0) & KEEP).sum() / KEEP.sum()
    high = ((r > 1.1) & (a > 0) & KEEP).sum() / KEEP.sum()
    np.testing.assert_allclose([m["clip_fraction_low"], m["clip_fraction_high"]], [low, high])
    np.testing.assert_allclose(m["clip_fraction"], low + high)
    assert low + high > 0
    np.testing.assert_allclose(
        loss, _ref_policy_gradient(LP, OLD, ADV, where=KEEP, clip_epsilon=0.1), 1e-12
    )


def test_policy_gradient_bad_inputs():
    with pytest.raises(ValueError, match="`aggregation` must be one of"):
        jaxloss.policy_gradient_loss(LP, OLD, ADV, aggregation="mean")
    with pytest.raises(TypeError, match="`max_length` .* is required"):
        jaxloss.policy_gradient_loss(LP, OLD, ADV, aggregation="sequence_sum_normalized")
    with pytest.raises(ValueError, match="`max_length` is used only"):
        jaxloss.policy_gradient_loss(LP, OLD, ADV, max_length=4)
    with pytest.raises(ValueError, match="`advantages` of shape"):
        jax.jit(jaxloss.policy_gradient_loss)(LP, OLD, ADV[:3])
    with pytest.raises(ValueError, match="`old_log_probs` of shape"):
        jaxloss.policy_gradient_loss(LP, OLD[:, :2], ADV)
    with pytest.raises(ValueError, match="`clip_epsilon` must be in"):
        jaxloss.policy_gradient_loss(LP, OLD, ADV, clip_epsilon=-0.1)


# -- kl_penalty ---------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_estimators(estimator):
    out = jaxloss.kl_penalty(f64(LP), f64(OLD), estimator=estimator)
    np.testing.assert_allclose(out, _ref_kl_penalty(LP, OLD, estimator=estimator), 1e-12)
    f = lambda a, b: jaxloss.kl_penalty(a, b, estimator=estimator)  # noqa: E731
    check_grads(f, (f64(LP), f64(OLD)), order=1, modes=("rev",))  # k3 order 2: the table


def test_k3_small_and_large_delta_float32():
    delta = np.array([-1e-7, -1e-4, 3e-4, 0.3, -0.49, 0.51, -30.0, 50.0, 88.0])
    out = jaxloss.kl_penalty(np.zeros(9, np.float32), delta.astype(np.float32))
    d = delta.astype(np.float32).astype(np.float64)  # the float32 inputs, exactly
    series = d**2 / 2 + d**3 / 6 + d**4 / 24 + d**5 / 120
    expected = np.where(np.abs(d) < 1e-2, series, np.expm1(d) - d)
    np.testing.assert_allclose(out, expected, rtol=3e-6)
    assert np.all(np.asarray(out) > 0)
    g = _grad(lambda r: jaxloss.kl_penalty(jnp.zeros(9), r), jnp.asarray(delta, jnp.float32))
    np.testing.assert_allclose(g, np.expm1(d), rtol=3e-6, atol=1e-12)


def test_k1_and_k3_are_unbiased_for_kl():
    """E_{y∼π}[k] = KL(π‖π_ref) for k1 and k3 (Schulman, 2020), by Monte Carlo."""
    rng = np.random.default_rng(0)
    log_pi = special.log_softmax(rng.normal(size=6))
    log_ref = special.log_softmax(rng.normal(size=6))
    kl = np.sum(np.exp(log_pi) * (log_pi - log_ref))
    y = rng.choice(6, size=200_000, p=np.exp(log_pi))
    for estimator in ("k1", "k3"):
        est = jaxloss.kl_penalty(f64(log_pi[y]), f64(log_ref[y]), estimator=estimator)
        np.testing.assert_allclose(float(jnp.mean(est)), kl, rtol=0.03)


def test_kl_penalty_conventions_and_errors():
    out = jaxloss.kl_penalty(f64(LP), f64(OLD), where=KEEP, reduction="sum")
    np.testing.assert_allclose(out, _ref_kl_penalty(LP, OLD)[KEEP].sum(), 1e-12)
    with pytest.raises(ValueError, match="`estimator` must be one of"):
        jaxloss.kl_penalty(LP, OLD, estimator="k4")
    with pytest.raises(ValueError, match="`reference_log_probs` of shape"):
        jax.jit(jaxloss.kl_penalty)(LP[:, :1], OLD)
    with pytest.raises(TypeError, match="`log_probs` must be a floating-point"):
        jaxloss.kl_penalty(LABELS, OLD)


# -- group_relative_advantages ------------------------------------------------------------


def test_group_relative_advantages_reference_and_trl_convention():
    r = RNG.normal(size=(2, 12))
    for g, normalize in [(3, True), (4, True), (2, False), (1, False)]:
        out = jaxloss.group_relative_advantages(f64(r), group_size=g, normalize=normalize)
        np.testing.assert_allclose(
            out, _ref_group_advantages(r, group_size=g, normalize=normalize), 1e-12
        )
    # ddof = 1: for a pair (0, 1) the std is 1/√2, so the advantages are ±(1/2)/(1/√2 + eps).
    out = jaxloss.group_relative_advantages(jnp.array([0, 1]), group_size=2, eps=0.0)
    np.testing.assert_allclose(out, [-np.sqrt(0.5), np.sqrt(0.5)], 1e-6)


def test_group_relative_advantages_equal_rewards():
    r = f64([1.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    out = jaxloss.group_relative_advantages(r, group_size=3)
    np.testing.assert_array_equal(out[:3], 0.0)
    g = jax.jit(jax.jacobian(lambda x: jaxloss.group_relative_advantages(x, group_size=3)))(r)
    assert np.isfinite(g).all()


def test_group_relative_advantages_bad_inputs():
    with pytest.raises(ValueError, match="not a multiple of `group_size` 4"):
        jaxloss.group_relative_advantages(jnp.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="`group_size` must be ≥ 2 with normalize"):
        jaxloss.group_relative_advantages(jnp.zeros(6), group_size=1)
    with pytest.raises(TypeError, match="`group_size` must be a Python int"):
        jaxloss.group_relative_advantages(jnp.zeros(6), group_size=2.0)
    with pytest.raises(ValueError, match="`rewards` must have a batch axis"):
        jaxloss.group_relative_advantages(jnp.float32(1.0), group_size=2)


# -- Review 2: gradients at float32's extremes ----------------------------------------------

# Rows of [student, teacher] logits: gaps from the reported [0, −45] / [0, −50] up to the
# float32 range, both orders and opposite modes (V = 2), and 2k-vocabulary N(0, 8²) rows.
_GAPS = [45.0, 50.0, 100.0, 1e3, 1e4, 1e10, 1e30, 3e38]
_GAP_S = [[0.0, -45.0], [0.0, -50.0]]
_GAP_T = [[0.0, -50.0], [0.0, -45.0]]
for _g in _GAPS:
    _GAP_S += [[0.0, -_g], [0.0, -_g / 2], [0.0, -_g], [-_g, 0.0]]
    _GAP_T += [[0.0, -_g / 2], [0.0, -_g], [-_g, 0.0], [0.0, -_g]]
_GAP_S, _GAP_T = np.array(_GAP_S), np.array(_GAP_T)
_WIDE_S, _WIDE_T = RNG.normal(0, 8, (3, 2048)), RNG.normal(0, 8, (3, 2048))


def _ref_divergence_grad(zs, zt, divergence, beta):
    """∂D/∂z_s in float64 numpy, in log space: with p = softmax(z_s), q = softmax(z_t) and
    g = ∂D/∂p, ∂D/∂z_s = p·(g − Σ p·g); forward KL(q‖p): p − q; reverse KL(p‖q): g = log(p/q)
    (+1, which the projection removes); JSD_β: g = (1 − β)·log(p/m), m = βq + (1 − β)p;
    TVD: g = ½·sign(p − q) (no ties in these rows)."""
    lp, lq = special.log_softmax(zs, -1), special.log_softmax(zt, -1)
    p, q = np.exp(lp), np.exp(lq)
    if divergence == "forward_kl":
        return p - q
    if divergence == "reverse_kl":
        g = lp - lq
    elif divergence == "jsd":
        g = (1 - beta) * (lp - np.logaddexp(np.log(beta) + lq, np.log1p(-beta) + lp))
    else:
        g = 0.5 * np.sign(p - q)
    return p * (g - np.sum(p * g, -1, keepdims=True))


def _distill_grad(s, t, divergence):
    return jax.grad(
        lambda z: jaxloss.distillation_loss(z, t, divergence=divergence, beta=0.3, reduction="sum")
    )(s)


def _fused_distill_grad(s, t, divergence):
    # hidden @ identity: the logits exactly, so the fused twin sees the same extremes.
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    return jax.grad(
        lambda h: jaxloss.fused_linear_distillation_loss(
            h, eye, t, eye, divergence=divergence, beta=0.3, reduction="sum", chunk_size=8
        )
    )(s)


_DISTILL_GRADS = {
    "distillation_loss": jax.jit(_distill_grad, static_argnums=2),
    "fused_linear_distillation_loss": jax.jit(_fused_distill_grad, static_argnums=2),
}


@pytest.mark.parametrize("twin", list(_DISTILL_GRADS))
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_distillation_gradient_at_float32_extremes(twin, divergence):
    """Review 2, item 1: the gradient of every divergence (both twins) is finite and equal
    to a float64 reference for float32 logits whose gaps reach the float32 range; "jsd"
    gave NaN (a 0·0 divided by an underflowing mixture probability, 0·∞ in reverse)."""
    for zs, zt in [(_GAP_S, _GAP_T), (_WIDE_S, _WIDE_T)]:
        g = _DISTILL_GRADS[twin](
            jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), divergence
        )
        assert np.isfinite(g).all()
        zs32 = zs.astype(np.float32).astype(np.float64)  # the float32 inputs, exactly
        zt32 = zt.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(
            g, _ref_divergence_grad(zs32, zt32, divergence, 0.3), rtol=1e-4, atol=2e-6
        )


def _pg_value_and_grad(lp, old, adv, clip_low, clip_high):
    return jax.value_and_grad(jaxloss.policy_gradient_loss)(
        lp, old, adv, clip_epsilon=clip_low, clip_epsilon_high=clip_high
    )


def _fused_pg_value_and_grad(lp, old, adv, clip_low, clip_high):
    # One token of two classes with logits h·W = [0, 0]: log π = −log 2, and the
    # gradient in W is ∂ℓ/∂(log π)·(onehot(0) − softmax) = ∂ℓ/∂(log π)·[½, −½].
    del lp
    hidden = jnp.ones((1, 1, 1), old.dtype)
    return jax.value_and_grad(
        lambda w: jaxloss.fused_linear_policy_gradient_loss(
            hidden,
            w,
            jnp.zeros((1, 1), jnp.int32),
            old,
            adv,
            clip_epsilon=clip_low,
            clip_epsilon_high=clip_high,
        )
    )(jnp.zeros((1, 2), old.dtype))


_PG_TWINS = {
    "policy_gradient_loss": jax.jit(_pg_value_and_grad, static_argnums=(3, 4)),
    "fused_linear_policy_gradient_loss": jax.jit(_fused_pg_value_and_grad, static_argnums=(3, 4)),
}


def _pg_slope(twin, grad):
    """∂loss/∂(log π) of the single token, from either twin's gradient."""
    grad = np.asarray(grad, np.float64)
    if twin == "policy_gradient_loss":
        return grad.item()
    np.testing.assert_allclose(grad[0, 1], -grad[0, 0], rtol=1e-6)
    return 2 * grad[0, 0]


@pytest.mark.parametrize("twin", list(_PG_TWINS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_policy_gradient_derivative_at_the_clip_bounds(twin, dtype):
    """Review 2, item 2: at r = 1 − ε_low with A > 0 and r = 1 + ε_high with A < 0 the
    surrogate is −r·A on both sides, and the derivative in log π is −r·A, not 0.75 of it
    (a minimum tie's ½ times a clip boundary's ½). At the kinks (r = 1 + ε_high with
    A > 0, r = 1 − ε_low with A < 0) the documented subgradient is the unclipped side's,
    −r·A (TRL's and Liger-Kernel's). r = 1 exactly (log π = log π_old), the bound on
    the tested side put there by ε = 0."""
    lp = np.asarray([[-np.log(2.0)]], dtype)  # the fused twin's log π (logits [0, 0])
    for clip_low, clip_high, a in [
        (0.0, 0.2, 1.5),
        (0.2, 0.0, -1.5),
        (0.2, 0.0, 1.5),
        (0.0, 0.2, -1.5),
    ]:
        value, grad = _PG_TWINS[twin](lp, lp, np.asarray([a], dtype), clip_low, clip_high)
        np.testing.assert_allclose(value, -a, rtol=1e-6)
        np.testing.assert_allclose(_pg_slope(twin, grad), -a, rtol=1e-6)


@pytest.mark.parametrize("twin", list(_PG_TWINS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_policy_gradient_huge_log_ratio(twin, dtype):
    """Review 2, item 3: log π − log π_old = 100 (exp overflows float32): with A ≥ 0 the
    ratio is clipped, the surrogate is the constant −(1 + ε_high)·A, finite, with
    gradient 0; before, A = 1 gave a NaN gradient and A = 0 a NaN value."""
    lp = np.asarray([[-np.log(2.0)]], dtype)
    old = lp - np.asarray(100.0, dtype)
    for a in (1.0, 0.0):
        value, grad = _PG_TWINS[twin](lp, old, np.asarray([a], dtype), 0.2, 0.28)
        np.testing.assert_allclose(value, -1.28 * a, rtol=1e-6)
        assert np.all(np.asarray(grad) == 0)
