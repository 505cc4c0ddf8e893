"""Preference losses: float64 references from each paper's formula, limits, stress, errors.

The generic checks (jit, vmap, reductions, masks, low precision, default-hyperparameter
references) are in the contract table; here: every hyperparameter combination against
the papers' formulas, the limits that relate the losses to each other, the implicit
rewards, the ORPO log-odds near p = 1, TRL's stress inputs and the errors.
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
from tests.gradcheck import check_grads

RNG = np.random.default_rng(14)
B = 7
PC, PR, RC, RR = (-np.abs(RNG.normal(size=B)) * 4.0 - 0.2 for _ in range(4))
AVG_C, AVG_R = (-np.abs(RNG.normal(size=B)) - 0.05 for _ in range(2))
DESIRABLE = np.array([True, False, True, True, False, False, True])


def softplus(x):
    return np.logaddexp(0.0, x)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


# --- float64 references from the papers --------------------------------------------------


def ref_dpo(pc, pr, rc, rr, beta, loss_type, eps):
    u = (pc - rc) - (pr - rr)  # log π_c/ref_c − log π_r/ref_r
    h = beta * u
    if loss_type == "sigmoid":  # Rafailov et al. eq. 7; Mitchell's cDPO for ε > 0
        return -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h)
    if loss_type == "robust":  # Chowdhury et al. eq. 8
        return (-(1 - eps) * log_sigmoid(h) + eps * log_sigmoid(-h)) / (1 - 2 * eps)
    if loss_type == "hinge":  # SLiC-HF calibration loss with δ = 1/β
        return np.maximum(0.0, 1 - h)
    return (u - 1 / (2 * beta)) ** 2  # IPO, Azar et al. eq. 17, τ = β


@pytest.mark.parametrize(
    "loss_type,eps",
    [("sigmoid", 0.0), ("sigmoid", 0.25), ("sigmoid", 1.0), ("robust", 0.0), ("robust", 0.4)]
    + [("hinge", 0.0), ("ipo", 0.0)],
)
@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_dpo_matches_the_papers(loss_type, eps, beta):
    out = jaxloss.dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert out.dtype == jnp.float64 and out.shape == (B,)
    want = ref_dpo(PC, PR, RC, RR, beta, loss_type, eps)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)


def test_dpo_limits():
    args = tuple(jnp.asarray(a) for a in (PC, PR, RC, RR))
    plain = jaxloss.dpo_loss(*args, beta=0.3)
    h = 0.3 * ((PC - RC) - (PR - RR))
    np.testing.assert_allclose(plain, -log_sigmoid(h), rtol=1e-13)  # ε = 0: plain DPO
    robust = jaxloss.dpo_loss(*args, beta=0.3, loss_type="robust", label_smoothing=0.0)
    np.testing.assert_allclose(robust, plain, rtol=1e-13)
    # ε = 1 is DPO with the labels swapped; at ε = ½ the loss ignores the label.
    swapped = jaxloss.dpo_loss(args[1], args[0], args[3], args[2], beta=0.3)
    np.testing.assert_allclose(
        jaxloss.dpo_loss(*args, beta=0.3, label_smoothing=1.0), swapped, rtol=1e-13
    )
    half = jaxloss.dpo_loss(*args, beta=0.3, label_smoothing=0.5)
    half_swapped = jaxloss.dpo_loss(
        args[1], args[0], args[3], args[2], beta=0.3, label_smoothing=0.5
    )
    np.testing.assert_allclose(half, half_swapped, rtol=1e-13)
    assert not np.allclose(plain, swapped)


def test_robust_dpo_is_unbiased_for_flipped_labels():
    # Chowdhury et al., Lemma 3.1: E over flips with probability ε of the robust loss is
    # the clean DPO loss.
    eps, beta = 0.3, 0.7
    args = tuple(jnp.asarray(a) for a in (PC, PR, RC, RR))
    flipped = (args[1], args[0], args[3], args[2])
    kw = {"beta": beta, "loss_type": "robust", "label_smoothing": eps}
    expected = (1 - eps) * jaxloss.dpo_loss(*args, **kw) + eps * jaxloss.dpo_loss(*flipped, **kw)
    # The mixture cancels terms of size ~|h|: an absolute tolerance at that scale.
    clean = jaxloss.dpo_loss(*args, beta=beta)
    np.testing.assert_allclose(expected, clean, rtol=1e-12, atol=1e-14)


def test_implicit_rewards():
    rc, rr = jaxloss.dpo_implicit_rewards(PC, PR, RC, RR, beta=0.4)
    np.testing.assert_allclose(rc, 0.4 * (PC - RC), rtol=1e-14)
    np.testing.assert_allclose(rr, 0.4 * (PR - RR), rtol=1e-14)
    # The DPO loss is −log σ of their margin.
    np.testing.assert_allclose(
        jaxloss.dpo_loss(PC, PR, RC, RR, beta=0.4), -log_sigmoid(rc - rr), rtol=1e-12
    )
    # A scalar reference broadcasts to the policy's shape.
    rc0, rr0 = jaxloss.dpo_implicit_rewards(PC, PR, 0.0, -1.0, beta=0.4)
    assert rc0.shape == rr0.shape == (B,)
    np.testing.assert_allclose(rr0, 0.4 * (PR + 1.0), rtol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.5])
def test_simpo_matches_the_paper(gamma, eps):
    out = jaxloss.simpo_loss(AVG_C, AVG_R, beta=2.5, gamma=gamma, label_smoothing=eps)
    h = 2.5 * (AVG_C - AVG_R) - gamma  # Meng et al. eq. 6
    np.testing.assert_allclose(out, -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h), rtol=1e-12)


def test_simpo_with_zero_margin_is_reference_free_dpo():
    zeros = np.zeros(B)
    for eps in (0.0, 0.3):
        simpo = jaxloss.simpo_loss(AVG_C, AVG_R, beta=2.0, gamma=0.0, label_smoothing=eps)
        dpo = jaxloss.dpo_loss(AVG_C, AVG_R, zeros, zeros, beta=2.0, label_smoothing=eps)
        np.testing.assert_allclose(simpo, dpo, rtol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_cpo_matches_the_paper_and_reference_free_dpo(eps):
    out = jaxloss.cpo_loss(PC, PR, beta=0.2, label_smoothing=eps)
    h = 0.2 * (PC - PR)  # Xu et al. eq. 3 (the preference term)
    np.testing.assert_allclose(out, -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h), rtol=1e-12)
    zeros = np.zeros(B)
    dpo = jaxloss.dpo_loss(PC, PR, zeros, zeros, beta=0.2, label_smoothing=eps)
    np.testing.assert_allclose(out, dpo, rtol=1e-14)


def test_orpo_matches_the_paper():
    out = jaxloss.orpo_loss(AVG_C, AVG_R, beta=0.25)
    pc, pr = np.exp(AVG_C), np.exp(AVG_R)
    odds_ratio = np.log((pc / (1 - pc)) / (pr / (1 - pr)))  # Hong et al. eq. 7
    np.testing.assert_allclose(out, -0.25 * log_sigmoid(odds_ratio), rtol=1e-12)


def test_orpo_log_odds_near_p_one_and_far_below():
    # log odds(p) = log p − log(1 − p) with 1 − p = −expm1(log p): for log p = −1e-6
    # the float32 1 − exp(log p) would keep one digit; for log p = −1e4, p underflows.
    c = np.array([-1e-6, -1e-3, -0.5, -30.0, -1e4])
    r = np.full_like(c, -2.0)
    odds = lambda lp: lp - np.log(-np.expm1(lp))  # noqa: E731 (float64: accurate)
    want = softplus(-(odds(c) - odds(r)))
    out32 = jaxloss.orpo_loss(c.astype(np.float32), r.astype(np.float32), beta=1.0)
    assert out32.dtype == jnp.float32
    # The float32 rounding of the inputs alone moves log odds by up to ε·|log p|/(1 − p).
    np.testing.assert_allclose(out32, want, rtol=2e-6, atol=1e-30)
    # A log-probability of exactly 0 (a float32 log-softmax that rounded) stays finite.
    zero = jnp.zeros(3, jnp.float32)
    rej = jnp.array([-1.0, -1e-6, 0.0], jnp.float32)
    val, grads = jax.value_and_grad(lambda a, b: jnp.sum(jaxloss.orpo_loss(a, b)), argnums=(0, 1))(
        zero, rej
    )
    assert np.isfinite(val) and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(jaxloss.orpo_loss(zero[:1], rej[2:]), [0.1 * np.log(2.0)])


@pytest.mark.parametrize("z0", [0.0, 0.4])
def test_kto_matches_the_paper(z0):
    out = jaxloss.kto_loss(
        PC,
        RC,
        DESIRABLE,
        beta=0.3,
        reference_point=z0,
        desirable_weight=1.2,
        undesirable_weight=0.7,
    )
    rho = PC - RC  # Ethayarajh et al. eq. 8
    want = np.where(
        DESIRABLE,
        1.2 * (1 - special.expit(0.3 * (rho - z0))),
        0.7 * (1 - special.expit(0.3 * (z0 - rho))),
    )
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_kto_reference_point_array_gets_no_gradient():
    z0 = jnp.full(B, 0.2)
    g = jax.grad(lambda z: jnp.sum(jaxloss.kto_loss(PC, RC, DESIRABLE, reference_point=z)))(z0)
    np.testing.assert_array_equal(g, np.zeros(B))
    # A Python-number reference point does not promote float32 inputs.
    out = jaxloss.kto_loss(
        PC.astype(np.float32), RC.astype(np.float32), DESIRABLE, reference_point=1
    )
    assert out.dtype == jnp.float32


# --- gradients, jit and vmap over the hyperparameters ------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b, c, d: jaxloss.dpo_loss(a, b, c, d, loss_type="robust", label_smoothing=0.2),
        lambda a, b, c, d: jaxloss.dpo_loss(a, b, c, d, beta=0.5, loss_type="ipo"),
        lambda a, b, c, d: jaxloss.dpo_loss(a, b, c, d, beta=2.0, label_smoothing=0.3),
        lambda a, b, c, d: jaxloss.simpo_loss(a - 0.1, b, gamma=1.0, label_smoothing=0.1),
        lambda a, b, c, d: jaxloss.orpo_loss(a * 0.1, b * 0.1),
        lambda a, b, c, d: jaxloss.kto_loss(a, b, jnp.asarray(DESIRABLE), reference_point=0.2),
    ],
    ids=["robust", "ipo", "cdpo", "simpo", "orpo", "kto"],
)
def test_gradients_float64(fn):
    args = tuple(jnp.asarray(a) for a in (PC, PR, RC, RR))
    check_grads(
        lambda *x: jnp.sum(fn(*x) * jnp.arange(1.0, B + 1)), args, order=2, modes=("fwd", "rev")
    )


def test_jit_and_vmap_agree_with_eager():
    args = tuple(jnp.asarray(a, jnp.float32) for a in (PC, PR, RC, RR))
    f = lambda *x: jaxloss.dpo_loss(*x, loss_type="robust", label_smoothing=0.1)  # noqa: E731
    eager = f(*args)
    np.testing.assert_allclose(jax.jit(f)(*args), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(*args), eager, rtol=1e-6)
    k = lambda p, r, d: jaxloss.kto_loss(p, r, d, undesirable_weight=2.0)  # noqa: E731
    d = jnp.asarray(DESIRABLE)
    np.testing.assert_allclose(jax.vmap(k)(args[0], args[2], d), k(args[0], args[2], d), rtol=1e-6)


# --- TRL's stress inputs: finite values and gradients in float32 -------------------------

POLICY_C = np.array([410.0, 0.1, -1e4, 0.0], np.float32)
POLICY_R = np.array([810.5, 0.2, 0.0, -1e4], np.float32)
REF_C = np.array([-610.0, -0.1, 0.0, 0.0], np.float32)
REF_R = np.array([-110.6, -0.5, 0.0, 0.0], np.float32)
STRESS = [
    ("sigmoid", lambda *x: jaxloss.dpo_loss(*x, beta=1.0)),
    ("cdpo", lambda *x: jaxloss.dpo_loss(*x, beta=1.0, label_smoothing=0.2)),
    ("robust", lambda *x: jaxloss.dpo_loss(*x, beta=1.0, loss_type="robust", label_smoothing=0.2)),
    ("hinge", lambda *x: jaxloss.dpo_loss(*x, beta=1.0, loss_type="hinge")),
    ("ipo", lambda *x: jaxloss.dpo_loss(*x, beta=1.0, loss_type="ipo")),
    ("simpo", lambda a, b, c, d: jaxloss.simpo_loss(a, b, label_smoothing=0.1)),
    ("cpo", lambda a, b, c, d: jaxloss.cpo_loss(a, b, beta=1.0)),
    ("orpo", lambda a, b, c, d: jaxloss.orpo_loss(-jnp.abs(a), -jnp.abs(b), beta=1.0)),
    ("kto", lambda a, b, c, d: jaxloss.kto_loss(a, c, jnp.array([True, False] * 2), beta=1.0)),
]


@pytest.mark.parametrize("name,fn", STRESS, ids=[s[0] for s in STRESS])
def test_stress_inputs_finite_in_float32(name, fn):
    args = tuple(jnp.asarray(a) for a in (POLICY_C, POLICY_R, REF_C, REF_R))
    val, grads = jax.value_and_grad(lambda *x: jnp.sum(fn(*x)), argnums=(0, 1, 2, 3))(*args)
    assert val.dtype == jnp.float32 and np.isfinite(val)
    assert all(np.isfinite(g).all() for g in grads), name


def test_stress_values_match_float64():
    args32 = tuple(jnp.asarray(a) for a in (POLICY_C, POLICY_R, REF_C, REF_R))
    args64 = [a.astype(np.float64) for a in (POLICY_C, POLICY_R, REF_C, REF_R)]
    for loss_type, eps in [("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.2)]:
        out = jaxloss.dpo_loss(*args32, beta=1.0, loss_type=loss_type, label_smoothing=eps)
        want = ref_dpo(*args64, 1.0, loss_type, eps)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-30)


# --- errors --------------------------------------------------------------------------------


def test_bad_inputs_raise():
    a = jnp.zeros(3) - 1.0
    with pytest.raises(ValueError, match="loss_type"):
        jaxloss.dpo_loss(a, a, a, a, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        jaxloss.dpo_loss(a, a, a, a, beta=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 0.5\)"):
        jaxloss.dpo_loss(a, a, a, a, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        jaxloss.dpo_loss(a, a, a, a, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing.*must be 0"):
        jaxloss.dpo_loss(a, a, a, a, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        jaxloss.simpo_loss(a, a, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        jaxloss.simpo_loss(a, a, gamma=float("nan"))
    with pytest.raises(ValueError, match="label_smoothing"):
        jaxloss.cpo_loss(a, a, label_smoothing=2.0)
    with pytest.raises(ValueError, match="reference_rejected_logps"):
        jaxloss.dpo_loss(a, a, a, jnp.zeros(4))
    with pytest.raises(ValueError, match="policy_chosen_logps"):  # would enlarge [3] to [3, 3]
        jaxloss.dpo_loss(a, a, a[:, None], a)
    with pytest.raises(ValueError, match="rejected_avg_logps"):
        jaxloss.simpo_loss(a, jnp.zeros(2))
    with pytest.raises(ValueError, match="positive entry"):
        jaxloss.orpo_loss(a, a + 1.5)
    with pytest.raises(TypeError, match="desirable.*boolean"):
        jaxloss.kto_loss(a, a, jnp.array([1, 0, 1]))
    with pytest.raises(ValueError, match="desirable"):
        jaxloss.kto_loss(a, a, jnp.ones((3, 3), bool))
    with pytest.raises(ValueError, match="undesirable_weight"):
        jaxloss.kto_loss(a, a, jnp.ones(3, bool), undesirable_weight=-1.0)
    with pytest.raises(TypeError, match="policy_logps"):
        jaxloss.kto_loss(jnp.zeros(3, jnp.int32), a, jnp.ones(3, bool))


def test_shape_errors_also_under_jit():
    a = jnp.zeros(3) - 1.0
    with pytest.raises(ValueError, match="reference_chosen_logps"):
        jax.jit(jaxloss.dpo_loss)(a, a, jnp.zeros(5), a)
    with pytest.raises(TypeError, match="desirable"):
        jax.jit(jaxloss.kto_loss)(a, a, jnp.zeros(3))


def test_orpo_traced_positive_log_probability_gives_nan():
    out = jax.jit(jaxloss.orpo_loss)(jnp.array([-0.5, 0.5]), jnp.array([-1.0, -1.0]))
    assert np.isfinite(out[0]) and np.isnan(out[1])


# --- identities as properties ------------------------------------------------------------

_finite = st.floats(-50.0, 50.0, allow_nan=False)


@settings(max_examples=25)
@given(st.lists(_finite, min_size=5, max_size=5), _finite, st.sampled_from(["sigmoid", "ipo"]))
def test_dpo_depends_only_on_the_log_ratio_margin(values, shift, loss_type):
    # Shifting a response's policy and reference log-probabilities by the same amount, or
    # both responses' log-ratios by the same amount, leaves every DPO loss unchanged.
    pc, pr, rc, rr, _ = (jnp.asarray(v, jnp.float64) for v in values)
    base = jaxloss.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type)
    same_ratio = jaxloss.dpo_loss(pc + shift, pr, rc + shift, rr, beta=0.5, loss_type=loss_type)
    same_margin = jaxloss.dpo_loss(pc + shift, pr + shift, rc, rr, beta=0.5, loss_type=loss_type)
    np.testing.assert_allclose(same_ratio, base, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(same_margin, base, rtol=1e-9, atol=1e-9)


@settings(max_examples=25)
@given(st.floats(-30.0, 30.0), st.floats(0.01, 5.0), st.floats(0.0, 1.0))
def test_smoothed_losses_are_convex_combinations(margin, beta, eps):
    # −(1 − ε)·log σ(h) − ε·log σ(−h) lies between the two unsmoothed losses.
    c, r = jnp.asarray(margin), jnp.asarray(0.0)
    lo = jaxloss.cpo_loss(c, r, beta=beta)
    hi = jaxloss.cpo_loss(r, c, beta=beta)
    mid = jaxloss.cpo_loss(c, r, beta=beta, label_smoothing=eps)
    np.testing.assert_allclose(mid, (1 - eps) * lo + eps * hi, rtol=1e-12, atol=1e-12)
