"""Regression family: the seed's identities and the bad-input errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special, stats

import jaxloss

RNG = np.random.default_rng(0)
MEAN = jnp.asarray(RNG.normal(size=(4, 7)))
TARGETS = jnp.asarray(RNG.normal(size=(4, 7)))


@given(sigma=st.floats(0.05, 20.0))
def test_seed_identity_gaussian_nll_is_scaled_squared_error(sigma):
    """gaussian_nll = squared_error / (2σ²) + log σ + ½ log 2π, element for element."""
    nll = jaxloss.gaussian_nll(MEAN, TARGETS, scale=sigma)
    se = jaxloss.squared_error(MEAN, TARGETS)
    expected = se / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


@given(sigma=st.floats(0.05, 20.0))
def test_seed_identity_gradients_differ_by_two_sigma_squared(sigma):
    g_nll = jax.grad(lambda m: jaxloss.gaussian_nll(m, TARGETS, scale=sigma, reduction="sum"))(MEAN)
    g_se = jax.grad(lambda m: jaxloss.squared_error(m, TARGETS, reduction="sum"))(MEAN)
    np.testing.assert_allclose(g_nll, g_se / (2 * sigma**2), rtol=1e-12)


def test_seed_identity_summed_over_the_training_set():
    """L(W) = N/2 log 2π + N log σ + Σ (ŷ − y)² / 2σ², the seed's closed form."""
    sigma, n = 1.7, MEAN.size
    total = jaxloss.gaussian_nll(MEAN, TARGETS, scale=sigma, reduction="sum")
    sse = float(np.sum((np.asarray(MEAN) - np.asarray(TARGETS)) ** 2))
    expected = n / 2 * math.log(2 * math.pi) + n * math.log(sigma) + sse / (2 * sigma**2)
    np.testing.assert_allclose(total, expected, rtol=1e-12)


def test_full_false_drops_only_the_constant():
    for fn, const in [
        (jaxloss.gaussian_nll, 0.5 * math.log(2 * math.pi)),
        (jaxloss.laplace_nll, math.log(2.0)),
    ]:
        diff = fn(MEAN, TARGETS, log_scale=0.3) - fn(MEAN, TARGETS, log_scale=0.3, full=False)
        np.testing.assert_allclose(diff, const, rtol=1e-12)


def test_scale_and_log_scale_agree():
    scale = jnp.exp(jnp.asarray(RNG.normal(size=(4, 7))))
    for fn in (jaxloss.gaussian_nll, jaxloss.laplace_nll):
        np.testing.assert_allclose(
            fn(MEAN, TARGETS, scale=scale), fn(MEAN, TARGETS, log_scale=jnp.log(scale)), rtol=1e-12
        )


def test_laplace_nll_is_scaled_absolute_error():
    b = 0.7
    np.testing.assert_allclose(
        jaxloss.laplace_nll(MEAN, TARGETS, scale=b),
        jaxloss.absolute_error(MEAN, TARGETS) / b + math.log(2 * b),
        rtol=1e-12,
    )


def test_student_t_approaches_gaussian_as_df_grows():
    t = jaxloss.student_t_nll(MEAN, TARGETS, df=1e8, scale=1.3)
    g = jaxloss.gaussian_nll(MEAN, TARGETS, scale=1.3)
    np.testing.assert_allclose(t, g, rtol=1e-6)


def test_huber_is_half_squared_error_inside_delta_and_shifted_absolute_error_outside():
    small = jnp.asarray([0.1, -0.4])
    big = jnp.asarray([3.0, -5.0])
    zeros = jnp.zeros(2)
    np.testing.assert_allclose(jaxloss.huber(small, zeros), 0.5 * small**2, rtol=1e-12)
    np.testing.assert_allclose(jaxloss.huber(big, zeros, delta=2.0), 2.0 * (jnp.abs(big) - 1.0))


def test_log_cosh_gradient_is_tanh():
    r = jnp.linspace(-30.0, 30.0, 41)
    g = jax.grad(lambda p: jaxloss.log_cosh(p, jnp.zeros_like(p), reduction="sum"))(r)
    np.testing.assert_allclose(g, jnp.tanh(r), rtol=1e-12)


def test_poisson_nll_integer_and_float_counts_agree_and_match_scipy():
    counts = jnp.asarray([0, 1, 5, 40])
    log_rate = jnp.asarray([0.3, -2.0, 1.5, 3.0])
    ours = jaxloss.poisson_nll(log_rate, counts)
    np.testing.assert_allclose(ours, jaxloss.poisson_nll(log_rate, counts.astype(float)))
    expected = -stats.poisson.logpmf(np.asarray(counts), np.exp(np.asarray(log_rate)))
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True, "stirling"])
def test_poisson_nll_log_input_and_full_options(log_input, full):
    """PyTorch's log_input=False (λ − k log(λ + ε)) and its Stirling term (full=True
    there, "stirling" here: k log k − k + ½ log 2πk for k > 1), against float64 formulas;
    full=True here is the exact log k! (scipy's logpmf)."""
    counts = np.array([0, 1, 2, 5, 40, 3])
    x = np.array([0.3, 0.0, 1.5, 3.0, 2.0, 1e-3])  # a log rate, or a rate (0 included)
    eps = 1e-8 if not log_input else None
    out = jaxloss.poisson_nll(jnp.asarray(x), counts, log_input=log_input, full=full, eps=eps)
    rate = np.exp(x) if log_input else x
    nll = rate - counts * (x if log_input else np.log(x + 1e-8))
    if full is True:
        nll = nll + special.gammaln(counts + 1.0)
    elif full == "stirling":
        k = counts.astype(float)
        big = np.where(k > 1, k, 2.0)
        nll = nll + np.where(k > 1, big * np.log(big) - big + 0.5 * np.log(2 * np.pi * big), 0)
    np.testing.assert_allclose(out, nll, rtol=1e-12)
    # ∂ℓ/∂x: λ − k (log rate) or 1 − k/(λ + ε) (rate); finite at λ = 0.
    g = jax.grad(
        lambda z: jaxloss.poisson_nll(z, counts, log_input=log_input, full=full, eps=eps).sum()
    )(jnp.asarray(x))
    want = rate - counts if log_input else 1 - counts / (x + 1e-8)
    np.testing.assert_allclose(g, want, rtol=1e-12)


def test_poisson_nll_stirling_approximates_log_factorial():
    """The Stirling term is within 1/(12k) of log k! (it omits that series term)."""
    k = np.array([2.0, 10.0, 100.0])
    exact = jaxloss.poisson_nll(jnp.zeros(3), k, full=True)
    approx = jaxloss.poisson_nll(jnp.zeros(3), k, full="stirling")
    np.testing.assert_allclose(exact - approx, 1 / (12 * k), rtol=0.05)


def test_heteroscedastic_gradient_in_log_scale():
    """d/ds [½ r² e^{-2s} + s] = 1 − r² e^{-2s}: zero exactly when σ² = r² (the MLE)."""
    r = jnp.asarray([0.5, 2.0, 3.0])
    s = jnp.log(jnp.abs(r))
    g = jax.grad(lambda s: jaxloss.gaussian_nll(r, jnp.zeros(3), log_scale=s, reduction="sum"))(s)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)


def test_integer_predictions_are_rejected_with_a_clear_message():
    with pytest.raises(TypeError, match=r"`predictions` must be a floating-point array.*int"):
        jaxloss.squared_error(jnp.arange(3), jnp.zeros(3))


# Each bad call and the message that must name what went wrong.
BAD_CALLS = [
    (
        lambda: jaxloss.squared_error(jnp.zeros(3), jnp.zeros(4)),
        ValueError,
        r"do not broadcast: `predictions` \(3,\), `targets` \(4,\)",
    ),
    (
        lambda: jaxloss.absolute_error(jnp.zeros(3), jnp.zeros(3), reduction="avg"),
        ValueError,
        r"`reduction` must be one of \('none', 'sum', 'mean'\), got 'avg'",
    ),
    (
        lambda: jaxloss.huber(jnp.zeros(3), jnp.zeros(3), where=jnp.ones(3)),
        TypeError,
        r"`where` must be a boolean mask.*float",
    ),
    (
        lambda: jaxloss.huber(jnp.zeros(3), jnp.zeros(3), where=jnp.ones(4, bool)),
        ValueError,
        r"`where` of shape \(4,\) does not broadcast to the loss shape \(3,\)",
    ),
    (
        lambda: jaxloss.log_cosh(jnp.zeros(3), jnp.zeros(3), weights=jnp.ones(2)),
        ValueError,
        r"`weights` of shape \(2,\) does not broadcast",
    ),
    (
        lambda: jaxloss.huber(jnp.zeros(3), jnp.zeros(3), delta=0.0),
        ValueError,
        r"`delta` must be a positive finite number, got 0.0",
    ),
    (
        lambda: jaxloss.gaussian_nll(jnp.zeros(3), jnp.zeros(3), scale=-1.0),
        ValueError,
        r"`scale` must be a positive finite number, got -1.0",
    ),
    (
        lambda: jaxloss.gaussian_nll(jnp.zeros(3), jnp.zeros(3), scale=1.0, log_scale=0.0),
        ValueError,
        r"at most one of `scale`, `log_scale`",
    ),
    (
        lambda: jaxloss.student_t_nll(jnp.zeros(3), jnp.zeros(3), df=0),
        ValueError,
        r"`df` must be a positive finite number, got 0",
    ),
    (
        lambda: jaxloss.poisson_nll(jnp.zeros(3, jnp.int32), jnp.zeros(3)),
        TypeError,
        r"`predictions` must be a floating-point array.*int32",
    ),
    (
        lambda: jaxloss.poisson_nll(jnp.zeros(3), jnp.zeros(3), full="exact"),
        ValueError,
        r"`full` must be True .*, False .* or \"stirling\".*got 'exact'",
    ),
    (
        lambda: jaxloss.poisson_nll(jnp.zeros(3), jnp.zeros(3), eps=1e-8),
        ValueError,
        r"`eps` is used only with log_input=False",
    ),
    (
        lambda: jaxloss.poisson_nll(jnp.ones(3), jnp.zeros(3), log_input=False, eps=-1.0),
        ValueError,
        r"`eps` must be in \[0.0, inf\], got -1.0",
    ),
    (
        lambda: jaxloss.poisson_nll(jnp.zeros(3), jnp.zeros(3), log_input=0),
        TypeError,
        r"`log_input` must be a bool, got 0",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_errors_eagerly_and_under_jit(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


def test_negative_concrete_weights_are_rejected():
    # Only concrete weights can be inspected; traced weights are the caller's contract.
    with pytest.raises(ValueError, match=r"`weights` must be non-negative"):
        jaxloss.laplace_nll(jnp.zeros(3), jnp.zeros(3), weights=-jnp.ones(3))


def test_keras_percentage_and_logarithmic_errors_floors_and_kinks():
    """Keras's floors, in value and gradient: MAPE divides by max(|y|, ε) (finite at
    y = 0), with the subgradient 0 at ŷ = y; MSLE floors both sides at ε, so a
    prediction below it has gradient 0, and at ŷ = ε the gradient is the unfloored
    side's 2(log(1 + ŷ) − log(1 + y))/(1 + ŷ)."""
    y = jnp.array([0.0, -4.0, 2.0])
    p = jnp.array([0.5, -2.0, 2.0])
    mape = lambda p: jaxloss.mean_absolute_percentage_error(p, y, eps=0.01)  # noqa: E731
    np.testing.assert_allclose(mape(p), [5000.0, 50.0, 0.0], rtol=1e-12)
    g = jax.grad(lambda p: mape(p).sum())(p)
    np.testing.assert_allclose(g, [10000.0, 25.0, 0.0], rtol=1e-12)

    eps = 0.25
    msle = lambda p: jaxloss.mean_squared_logarithmic_error(p, jnp.array([1.0, -3.0, 1.0]), eps=eps)  # noqa: E731
    p = jnp.array([-5.0, 0.25, 3.0])
    np.testing.assert_allclose(
        msle(p),
        [np.log(1.25 / 2) ** 2, 0.0, np.log(4 / 2) ** 2],
        rtol=1e-12,
    )
    g = jax.grad(lambda p: msle(p).sum())(p)
    np.testing.assert_allclose(g, [0.0, 0.0, 2 * np.log(2) / 4], rtol=1e-12, atol=1e-15)
    # at ŷ = ε against a larger target: the unfloored side's derivative, not 0 or half
    g = jax.grad(lambda p: jaxloss.mean_squared_logarithmic_error(p, 3.0, eps=eps))(0.25)
    np.testing.assert_allclose(g, 2 * np.log(1.25 / 4) / 1.25, rtol=1e-12)
