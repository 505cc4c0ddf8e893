"""Classification family: identities, label kinds, masking options, optax, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.extend.core import Var
from scipy import special

import jaxloss
from tests.compiled import jit_call
from tests.torch_ce_reference import torch_cross_entropy

RNG = np.random.default_rng(0)
N, K = 8, 5
LOGITS = RNG.normal(size=(N, K)) * 2.0
IDS = RNG.integers(0, K, size=N)
ONE_HOT = np.eye(K)[IDS]
PROBS = RNG.dirichlet(np.ones(K), size=N)
KEEP = np.array([True, False, True, True, False, True, True, True])
W = RNG.random(N) * 2.0
CLASS_W = np.array([0.5, 2.0, 1.0, 0.0, 3.0])


def _grad_of_sum(fn, z, *args, **kwargs):
    return jax.grad(lambda z: jnp.sum(fn(z, *args, **kwargs)))(z)


def jgrad(fn, z, *args, **kwargs):
    """``jax.grad(lambda z: jnp.sum(fn(z, *args, **kwargs)))(z)``, compiled once per ``fn``
    and Python-valued options (``tests/compiled.py``) instead of eagerly."""
    return jit_call(_grad_of_sum, fn, z, *args, **kwargs)


def _ce_ref(logits, target):
    """−Σ t log softmax(z), float64, the whole family's reference."""
    return -(target * special.log_softmax(logits, axis=-1)).sum(-1)


# --------------------------------------------------------------------------------------
# softmax_cross_entropy and nll_loss
# --------------------------------------------------------------------------------------

OPTIONS = [
    {},
    {"label_smoothing": 0.15},
    {"class_weights": CLASS_W},
    {"where": KEEP, "weights": W, "class_weights": CLASS_W, "label_smoothing": 0.3},
]


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smoothing", "class_weights", "all"])
def test_class_ids_equal_one_hot_labels(options, reduction):
    sce = jaxloss.softmax_cross_entropy
    by_id = jit_call(sce, LOGITS, IDS, reduction=reduction, **options)
    by_vector = jit_call(sce, LOGITS, ONE_HOT, reduction=reduction, **options)
    np.testing.assert_allclose(by_id, by_vector, rtol=1e-12, atol=1e-12)
    g_id, g_vec = (jgrad(sce, LOGITS, y, reduction="sum", **options) for y in (IDS, ONE_HOT))
    np.testing.assert_allclose(g_id, g_vec, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("labels", [IDS, PROBS], ids=["ids", "probabilities"])
def test_label_smoothing_mixes_in_the_uniform_distribution(labels):
    eps = 0.25
    target = (1 - eps) * (np.eye(K)[labels] if labels.ndim == 1 else labels) + eps / K
    out = jit_call(jaxloss.softmax_cross_entropy, LOGITS, labels, label_smoothing=eps)
    np.testing.assert_allclose(out, _ce_ref(LOGITS, target), rtol=1e-12)
    # ... which is what optax gets from smoothing the labels first.
    smoothed = jit_call(optax.smooth_labels, np.eye(K)[labels] if labels.ndim == 1 else labels, eps)
    peer = jit_call(optax.losses.softmax_cross_entropy, LOGITS, smoothed)
    np.testing.assert_allclose(out, peer, rtol=1e-12)


def test_label_smoothing_spreads_only_over_classes_with_a_finite_logit():
    logits = LOGITS.copy()
    logits[:, 3] = -np.inf
    ids = np.where(IDS == 3, 0, IDS)
    eps = 0.2
    finite = np.isfinite(logits)
    target = (1 - eps) * np.eye(K)[ids] + eps * finite / finite.sum(-1, keepdims=True)
    log_p = np.where(finite, special.log_softmax(logits, axis=-1), 0.0)
    expected = -(target * log_p).sum(-1)
    for labels in (ids, np.eye(K)[ids]):
        out = jaxloss.softmax_cross_entropy(logits, labels, label_smoothing=eps)
        np.testing.assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("labels", [IDS, ONE_HOT], ids=["ids", "one-hot"])
def test_class_weights_mean_follows_pytorch(labels):
    """mean = Σ_i w_i ω_i ℓ_i / Σ_i w_i ω_i over kept examples, ω_i = class_weights[y_i]."""
    out = jaxloss.softmax_cross_entropy(
        LOGITS, labels, class_weights=CLASS_W, where=KEEP, weights=W, reduction="mean"
    )
    loss = _ce_ref(LOGITS, ONE_HOT)
    omega = CLASS_W[IDS] * W
    expected = (omega * loss)[KEEP].sum() / omega[KEEP].sum()
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    per_example = jaxloss.softmax_cross_entropy(LOGITS, labels, class_weights=CLASS_W)
    np.testing.assert_allclose(per_example, CLASS_W[IDS] * loss, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ignore_index_combines_with_where_and_weights(reduction):
    labels = np.where(np.arange(N) % 3 == 0, -100, IDS)
    out = jaxloss.softmax_cross_entropy(
        LOGITS, labels, ignore_index=-100, where=KEEP, weights=W, reduction=reduction
    )
    kept = KEEP & (labels != -100)
    terms = np.where(kept, W * _ce_ref(LOGITS, np.eye(K)[np.where(kept, labels, 0)]), 0.0)
    expected = {"none": terms, "sum": terms.sum(), "mean": terms.sum() / W[kept].sum()}
    np.testing.assert_allclose(out, expected[reduction], rtol=1e-12, atol=1e-15)
    # An ignored example's row gets exactly zero gradient, even when it holds NaN.
    poisoned = np.where((labels == -100)[:, None], np.nan, LOGITS)
    g = jax.grad(
        lambda z: jaxloss.softmax_cross_entropy(z, labels, ignore_index=-100, reduction="mean")
    )(poisoned)
    assert np.all(np.asarray(g)[labels == -100] == 0)
    assert np.isfinite(np.asarray(g)).all()


def test_ignore_index_equals_dropping_the_examples():
    labels = np.where(np.arange(N) % 3 == 0, 0, IDS)
    out = jaxloss.softmax_cross_entropy(LOGITS, labels, ignore_index=0, reduction="mean")
    kept = labels != 0
    np.testing.assert_allclose(out, _ce_ref(LOGITS, np.eye(K)[labels])[kept].mean(), rtol=1e-12)


@pytest.mark.parametrize("bad", [K, K + 3, -1, -K - 1])
def test_a_label_outside_the_classes_gives_nan_not_a_finite_loss(bad):
    labels = IDS.copy()
    labels[2] = bad
    # Concrete negative ids raise; under jit every bad id gives NaN.
    sce = jax.jit(jaxloss.softmax_cross_entropy, static_argnames=("reduction",))
    nll = jax.jit(jaxloss.nll_loss, static_argnames=("reduction",))
    out = np.asarray(sce(LOGITS, labels))
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
    assert np.isnan(sce(LOGITS, labels, reduction="mean"))
    assert np.isnan(nll(LOGITS, labels, reduction="sum"))
    assert np.isnan(sce(LOGITS, labels, class_weights=CLASS_W)[2])
    # A masked-out example is dropped whatever its label.
    keep = np.arange(N) != 2
    assert np.isfinite(jaxloss.softmax_cross_entropy(LOGITS, labels, where=keep, reduction="mean"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["ids", "probabilities"])
def test_minus_inf_logits_equal_clipping_value_and_gradient(kind, dtype):
    logits = LOGITS.copy()
    logits[:, 3] = -np.inf
    logits[1, 0] = -np.inf
    ids = np.where((IDS == 3) | (np.arange(N) == 1) & (IDS == 0), 2, IDS)
    labels = ids if kind == "ids" else np.where(np.isfinite(logits), PROBS, 0.0)
    clipped = np.maximum(logits, -1e30)

    sce = jaxloss.softmax_cross_entropy
    y = jnp.asarray(labels)
    masked, finite = jnp.asarray(logits, dtype), jnp.asarray(clipped, dtype)
    np.testing.assert_array_equal(
        jit_call(sce, masked, y, reduction="sum"), jit_call(sce, finite, y, reduction="sum")
    )
    g_masked = jgrad(sce, masked, y, reduction="sum")
    g_finite = jgrad(sce, finite, y, reduction="sum")
    assert np.isfinite(np.asarray(g_masked)).all()
    np.testing.assert_allclose(g_masked, g_finite, rtol=1e-6, atol=0)
    if kind == "probabilities":  # gradient in the labels too: −log p, 0 where p = 0
        g_y = jit_call(_grad_in_labels, sce, masked, jnp.asarray(labels, dtype))
        assert np.isfinite(np.asarray(g_y)).all()


def _grad_in_labels(fn, z, y):
    return jax.grad(lambda y: fn(z, y, reduction="sum"))(y)


def test_mass_on_a_minus_inf_class_gets_the_value_of_the_lowest_float():
    """−log p of a class with logit −inf is what clipping it to the lowest float gives."""
    logits = np.array([[0.0, -np.inf]])
    big = np.finfo(np.float64).max  # −log p = 0 − lowest float
    for labels, expected in [
        (np.array([1]), big),
        (np.array([[0.0, 1.0]]), big),
        (np.array([[0.5, 0.5]]), big / 2),
    ]:
        np.testing.assert_array_equal(jaxloss.softmax_cross_entropy(logits, labels), [expected])
        np.testing.assert_array_equal(jaxloss.nll_loss(logits, labels), [expected])


@pytest.mark.parametrize("labels", [IDS.reshape(2, 4), PROBS.reshape(2, 4, K)], ids=["ids", "p"])
@pytest.mark.parametrize("axis", [0, 1, -2])
def test_class_axis_equals_moving_it_last(axis, labels):
    logits = LOGITS.reshape(2, 4, K)
    moved = np.moveaxis(logits, -1, axis)
    if labels.ndim == 3:
        labels_moved = np.moveaxis(labels, -1, axis)
    else:
        labels_moved = labels
    sce = jaxloss.softmax_cross_entropy
    expected = jit_call(sce, logits, labels, label_smoothing=0.1)
    out = jit_call(sce, moved, labels_moved, axis=axis, label_smoothing=0.1)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(
        jit_call(jaxloss.z_loss, moved, axis=axis), jit_call(jaxloss.z_loss, logits), rtol=1e-12
    )


def test_where_broadcasts_to_the_per_example_loss():
    logits = LOGITS.reshape(2, 4, K)
    keep = np.array([[True], [False]])  # drops the whole second sequence
    out = jaxloss.softmax_cross_entropy(logits, IDS.reshape(2, 4), where=keep, reduction="mean")
    np.testing.assert_allclose(out, _ce_ref(LOGITS, ONE_HOT)[:4].mean(), rtol=1e-12)


@given(
    shift=hnp.arrays(np.float64, (N, 1), elements=st.floats(-1e3, 1e3)),
    eps=st.sampled_from([0.0, 0.1]),
)
def test_softmax_losses_are_translation_invariant(shift, eps):
    for labels in (IDS, PROBS):
        base = jaxloss.softmax_cross_entropy(LOGITS, labels, label_smoothing=eps)
        moved = jaxloss.softmax_cross_entropy(LOGITS + shift, labels, label_smoothing=eps)
        np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2, "class_weights": CLASS_W, "where": KEEP, "reduction": "mean"}],
    ids=["plain", "options"],
)
def test_nll_loss_of_log_softmax_is_softmax_cross_entropy(options):
    log_probs = special.log_softmax(LOGITS, axis=-1)
    for labels in (IDS, PROBS):
        np.testing.assert_allclose(
            jaxloss.nll_loss(log_probs, labels, **options),
            jaxloss.softmax_cross_entropy(LOGITS, labels, **options),
            rtol=1e-12,
        )


def test_integer_labels_build_no_one_hot():
    """No [N, C] array in the forward pass depends on the labels: one gather per example."""
    jaxpr = jax.make_jaxpr(lambda z, y: jaxloss.softmax_cross_entropy(z, y, reduction="mean"))(
        jnp.zeros((N, K), jnp.float32), jnp.zeros(N, jnp.int32)
    ).jaxpr
    tainted = {jaxpr.invars[1]}
    for eqn in jaxpr.eqns:
        if any(isinstance(v, Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
            for v in eqn.outvars:
                assert v.aval.shape != (N, K), eqn
    assert len(tainted) > 1


# --------------------------------------------------------------------------------------
# z_loss
# --------------------------------------------------------------------------------------


def test_z_loss_gradient_and_shift():
    lse = special.logsumexp(LOGITS, axis=-1)
    np.testing.assert_allclose(jaxloss.z_loss(LOGITS + 1.5), (lse + 1.5) ** 2, rtol=1e-12)
    g = jax.grad(lambda z: jaxloss.z_loss(z, reduction="sum"))(LOGITS)
    np.testing.assert_allclose(g, 2 * lse[:, None] * special.softmax(LOGITS, -1), rtol=1e-12)


# --------------------------------------------------------------------------------------
# softmax_focal_loss
# --------------------------------------------------------------------------------------


def test_softmax_focal_loss_with_gamma_zero_is_softmax_cross_entropy():
    for labels in (IDS, PROBS):
        np.testing.assert_allclose(
            jaxloss.softmax_focal_loss(LOGITS, labels, gamma=0.0, class_weights=CLASS_W),
            jaxloss.softmax_cross_entropy(LOGITS, labels, class_weights=CLASS_W),
            rtol=1e-12,
        )


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_softmax_focal_loss_class_ids_equal_one_hot(gamma):
    focal = jaxloss.softmax_focal_loss
    by_id = jit_call(focal, LOGITS, IDS, gamma=gamma, where=KEEP, reduction="mean")
    by_vector = jit_call(focal, LOGITS, ONE_HOT, gamma=gamma, where=KEEP, reduction="mean")
    np.testing.assert_allclose(by_id, by_vector, rtol=1e-12)
    g_id, g_vec = (jgrad(focal, LOGITS, y, gamma=gamma, reduction="sum") for y in (IDS, ONE_HOT))
    np.testing.assert_allclose(g_id, g_vec, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_two_class_softmax_focal_loss_is_sigmoid_focal_loss(gamma):
    """softmax([0, z]) = [1 − σ(z), σ(z)]: the two losses coincide on hard labels."""
    z = LOGITS[:, 0]
    y = IDS % 2
    two_class = np.stack([np.zeros_like(z), z], axis=-1)
    np.testing.assert_allclose(
        jit_call(jaxloss.softmax_focal_loss, two_class, y, gamma=gamma),
        jit_call(jaxloss.sigmoid_focal_loss, z, y.astype(float), gamma=gamma),
        rtol=1e-12,
    )


@pytest.mark.parametrize("kind", ["ids", "probabilities"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_losses_have_finite_gradients_at_logits_of_100(gamma, kind):
    z = np.array([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0], [100.0, 100.0, -100.0]])
    ids = np.array([0, 0, 2])
    labels = jnp.asarray(ids if kind == "ids" else np.eye(3)[ids])  # jax.nn.one_hot's values
    g = jgrad(
        jaxloss.softmax_focal_loss,
        jnp.asarray(z, jnp.float32),
        labels,
        gamma=gamma,
        reduction="sum",
    )
    assert np.isfinite(np.asarray(g)).all(), g
    binary = jnp.asarray([100.0, -100.0, 100.0, -100.0, 0.0], jnp.float32)
    y = jnp.asarray([1.0, 1.0, 0.0, 0.0, 1.0], jnp.float32)
    for alpha in (None, 0.25):
        loss = jit_call(jaxloss.sigmoid_focal_loss, binary, y, gamma=gamma, alpha=alpha)
        g = jgrad(jaxloss.sigmoid_focal_loss, binary, y, gamma=gamma, alpha=alpha)
        assert np.isfinite(np.asarray(loss)).all() and np.isfinite(np.asarray(g)).all(), g


@given(shift=hnp.arrays(np.float64, (N, 1), elements=st.floats(-1e3, 1e3)))
def test_softmax_focal_loss_is_translation_invariant(shift):
    for labels in (IDS, PROBS):
        base = jaxloss.softmax_focal_loss(LOGITS, labels, gamma=1.5)
        moved = jaxloss.softmax_focal_loss(LOGITS + shift, labels, gamma=1.5)
        np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------
# Binary losses
# --------------------------------------------------------------------------------------

Z = RNG.normal(size=(6, 4)) * 4
Y_SOFT = RNG.random((6, 4))
Y_HARD = (RNG.random((6, 4)) < 0.5).astype(float)


def _softplus(x):
    return np.logaddexp(0.0, x)


def test_sigmoid_binary_cross_entropy_pos_weight_and_smoothing():
    """PyTorch's BCEWithLogits convention: −[w₊·y·log σ(z) + (1 − y)·log(1 − σ(z))]."""
    pw = np.array([0.5, 1.0, 2.0, 7.0])
    out = jaxloss.sigmoid_binary_cross_entropy(Z, Y_HARD, pos_weight=pw, label_smoothing=0.2)
    y = 0.8 * Y_HARD + 0.1
    expected = pw * y * _softplus(-Z) + (1 - y) * _softplus(Z)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_sigmoid_binary_cross_entropy_gradient_is_accurate_in_float32():
    """dℓ/dz = σ(z) − y with no cancellation, also where σ(z) rounds to 0 or 1."""
    z = np.array([-60.0, -25.0, -8.0, 0.0, 8.0, 25.0, 60.0])
    for y in (0.0, 1.0):
        g = jax.grad(lambda z, y=y: jaxloss.sigmoid_binary_cross_entropy(z, y, reduction="sum"))(
            jnp.asarray(z, jnp.float32)
        )
        expected = (1 - y) * special.expit(z) - y * special.expit(-z)  # σ(z) − y, exactly
        np.testing.assert_allclose(g, expected, rtol=1e-6)
        loss = jaxloss.sigmoid_binary_cross_entropy(jnp.asarray(z, jnp.float32), y)
        np.testing.assert_allclose(loss, y * _softplus(-z) + (1 - y) * _softplus(z), rtol=1e-6)


def test_binary_cross_entropy_on_probabilities_is_sigmoid_bce_on_logits():
    q = special.expit(Z)
    np.testing.assert_allclose(
        jaxloss.binary_cross_entropy(q, Y_SOFT),
        jaxloss.sigmoid_binary_cross_entropy(Z, Y_SOFT),
        rtol=1e-9,
    )


def test_binary_cross_entropy_at_exact_zero_and_one():
    q = jnp.asarray([0.0, 1.0, 0.0, 1.0])
    y = jnp.asarray([0.0, 1.0, 1.0, 0.0])
    loss = jaxloss.binary_cross_entropy(q, y)
    np.testing.assert_array_equal(loss, [0.0, 0.0, np.inf, np.inf])
    # The gradient in q is the limit (q − y) / (q (1 − q)) → ±1 where the math is finite.
    g = jax.grad(lambda q: jaxloss.binary_cross_entropy(q, y[:2], reduction="sum"))(q[:2])
    np.testing.assert_array_equal(g, [1.0, -1.0])


def test_sigmoid_focal_loss_with_gamma_zero_is_weighted_bce():
    alpha = 0.3
    alpha_t = alpha * Y_SOFT + (1 - alpha) * (1 - Y_SOFT)
    np.testing.assert_allclose(
        jaxloss.sigmoid_focal_loss(Z, Y_SOFT, gamma=0.0, alpha=alpha),
        alpha_t * jaxloss.sigmoid_binary_cross_entropy(Z, Y_SOFT),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------------------
# Peer check against optax.losses
# --------------------------------------------------------------------------------------


def test_softmax_cross_entropy_matches_optax_on_random_inputs():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(64, 11)) * 3
    ids = rng.integers(0, 11, size=64)
    probs = rng.dirichlet(np.ones(11), size=64)
    np.testing.assert_allclose(
        jit_call(jaxloss.softmax_cross_entropy, logits, ids),
        jit_call(optax.losses.softmax_cross_entropy_with_integer_labels, logits, ids),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        jit_call(jaxloss.softmax_cross_entropy, logits, probs),
        jit_call(optax.losses.softmax_cross_entropy, logits, probs),
        rtol=1e-12,
    )


@pytest.mark.parametrize("labels", [Y_SOFT, Y_HARD], ids=["soft", "hard"])
def test_binary_losses_match_optax_on_random_inputs(labels):
    np.testing.assert_allclose(
        jaxloss.sigmoid_binary_cross_entropy(Z, labels),
        optax.losses.sigmoid_binary_cross_entropy(Z, labels),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        jaxloss.sigmoid_binary_cross_entropy(Z, labels, label_smoothing=0.1),
        optax.losses.sigmoid_binary_cross_entropy(Z, 0.9 * labels + 0.05),
        rtol=1e-12,
    )
    for alpha in (None, 0.25):
        for gamma in (0.0, 0.5, 2.0):
            np.testing.assert_allclose(
                jaxloss.sigmoid_focal_loss(Z, labels, alpha=alpha, gamma=gamma),
                optax.losses.sigmoid_focal_loss(Z, labels, alpha=alpha, gamma=gamma),
                rtol=1e-10,
                atol=1e-300,
            )


def test_deliberate_difference_optax_bce_is_computed_in_bf16():
    z = jnp.asarray(Z, jnp.bfloat16)
    exact = _softplus(np.asarray(z, np.float64)) - Y_HARD * np.asarray(z, np.float64)
    ours = jaxloss.sigmoid_binary_cross_entropy(z, Y_HARD.astype(jnp.bfloat16))
    peer = optax.losses.sigmoid_binary_cross_entropy(z, Y_HARD.astype(jnp.bfloat16))
    assert ours.dtype == jnp.float32 and peer.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(peer, np.float64) - exact).max() > 1e-3


def test_deliberate_difference_optax_is_nan_with_minus_inf_logits():
    logits = jnp.array([[2.0, 0.0, -jnp.inf]])
    labels = jnp.array([[1.0, 0.0, 0.0]])
    assert np.isnan(optax.losses.softmax_cross_entropy(logits, labels)[0])
    ours = jaxloss.softmax_cross_entropy(logits, labels)[0]
    np.testing.assert_allclose(ours, np.log1p(np.exp(-2.0)), rtol=1e-6)


def test_deliberate_difference_optax_computes_bf16_in_bf16():
    logits = jnp.asarray(RNG.normal(size=(4, 300)) * 4, jnp.bfloat16)
    ids = jnp.asarray(RNG.integers(0, 300, size=4))
    exact = _ce_ref(np.asarray(logits, np.float64), np.eye(300)[ids])
    ours = jaxloss.softmax_cross_entropy(logits, ids)
    peer = optax.losses.softmax_cross_entropy_with_integer_labels(logits, ids)
    assert ours.dtype == jnp.float32 and peer.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours, exact, rtol=1e-6)
    peer_error = np.abs(np.asarray(peer, np.float64) - exact)
    assert peer_error.max() > 1e-3 * np.abs(exact).max()


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

Z0 = jnp.zeros((3, 4))
BAD_CALLS = [
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros(4, jnp.int32)),
        ValueError,
        r"Integer `labels` of shape \(4,\).*without its class axis 1, \(3,\)",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros((3, 5))),
        ValueError,
        r"Probability `labels` of shape \(3, 5\) must broadcast to the shape of `logits` \(3, 4\)",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros(3, bool)),
        TypeError,
        r"`labels` must be integer class ids or floating-point probabilities.*bool",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(jnp.zeros((3, 4), jnp.int32), jnp.zeros(3, int)),
        TypeError,
        r"`logits` must be a floating-point array",
    ),
    (
        lambda: jaxloss.nll_loss(Z0, jnp.zeros(3, jnp.int32), axis=2),
        ValueError,
        r"`axis` 2 is out of range for `log_probs` of shape \(3, 4\)",
    ),
    (
        lambda: jaxloss.z_loss(Z0, axis=1.0),
        TypeError,
        r"`axis` must be an int",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros(3, int), label_smoothing=1.5),
        ValueError,
        r"`label_smoothing` must be in \[0.0, 1.0\], got 1.5",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros(3, int), class_weights=jnp.ones(3)),
        ValueError,
        r"`class_weights` must have shape \(4,\), one weight per class, got \(3,\)",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros((3, 4)), ignore_index=-100),
        ValueError,
        r"`ignore_index` applies to integer labels",
    ),
    (
        lambda: jaxloss.softmax_cross_entropy(Z0, jnp.zeros(3, int), where=jnp.ones((3, 4), bool)),
        ValueError,
        r"`where` of shape \(3, 4\) does not broadcast to the loss shape \(3,\)",
    ),
    (
        lambda: jaxloss.softmax_focal_loss(Z0, jnp.zeros(3, int), gamma=-1.0),
        ValueError,
        r"`gamma` must be a non-negative finite number, got -1.0",
    ),
    (
        lambda: jaxloss.sigmoid_focal_loss(Z0, Z0, alpha=1.5),
        ValueError,
        r"`alpha` must be in \[0.0, 1.0\], got 1.5",
    ),
    (
        lambda: jaxloss.sigmoid_binary_cross_entropy(Z0, Z0, pos_weight=0.0),
        ValueError,
        r"`pos_weight` must be a positive finite number, got 0.0",
    ),
    (
        lambda: jaxloss.binary_cross_entropy(Z0, jnp.zeros((3, 5))),
        ValueError,
        r"do not broadcast: `probs` \(3, 4\), `labels` \(3, 5\)",
    ),
    (
        lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros(3, int), jnp.zeros(3)),
        TypeError,
        r"`logits` must be a floating-point array",
    ),
    (
        lambda: jaxloss.z_loss(jnp.zeros(())),
        ValueError,
        r"`logits` must have a class axis",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_errors_eagerly_and_under_jit(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


def test_negative_concrete_class_weights_are_rejected():
    with pytest.raises(ValueError, match=r"`class_weights` must be non-negative"):
        jaxloss.softmax_cross_entropy(Z0, jnp.zeros(3, int), class_weights=-jnp.ones(4))


# --------------------------------------------------------------------------------------
# PyTorch's documented cross-entropy convention in every combination
# of label kind × label smoothing × class weights × ignore_index × reduction.
# --------------------------------------------------------------------------------------

TORCH_N, TORCH_C = 7, 5
TORCH_LOGITS = np.random.default_rng(10).normal(size=(TORCH_N, TORCH_C)) * 2.0
TORCH_IDS = np.array([0, 3, -100, 1, 4, 4, -100])
TORCH_PROBS = np.random.default_rng(11).dirichlet(np.ones(TORCH_C), size=TORCH_N)
TORCH_W = np.array([0.5, 2.0, 1.0, 0.25, 3.0])


def _torch_cross_entropy(logits, target, weight, ignore_index, eps, reduction):
    """torch.nn.functional.cross_entropy's documented formula (tests/torch_ce_reference.py)."""
    return torch_cross_entropy(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=eps,
        reduction=reduction,
    )


TORCH_COMBOS = [
    (kind, eps, weighted, ignore, reduction)
    for kind in ("ids", "probabilities")
    for eps in (0.0, 0.2)
    for weighted in (False, True)
    for ignore in ((False, True) if kind == "ids" else (False,))
    for reduction in ("none", "sum", "mean")
]


def _torch_case(kind, ignore):
    if kind == "probabilities":
        return TORCH_PROBS, None
    if ignore:
        return TORCH_IDS, -100
    return np.where(TORCH_IDS < 0, 2, TORCH_IDS), None


@pytest.mark.parametrize("kind, eps, weighted, ignore, reduction", TORCH_COMBOS)
def test_softmax_cross_entropy_matches_pytorch_in_every_combination(
    kind, eps, weighted, ignore, reduction
):
    """`softmax_cross_entropy` is torch's `cross_entropy(weight=,
    label_smoothing=, ignore_index=)` per example for both label kinds, and for
    "mean"/"sum" with class ids; probability labels' "mean" follows the documented
    denominator Σ_n Σ_c w_c·t_nc (torch's N without class weights). Before the fix the
    smoothing term was weighted by w[y] instead of w[c]."""
    labels, ignore_index = _torch_case(kind, ignore)
    w = TORCH_W if weighted else None
    options = {"label_smoothing": eps, "class_weights": w, "ignore_index": ignore_index}
    out = jaxloss.softmax_cross_entropy(TORCH_LOGITS, labels, reduction=reduction, **options)
    expected = _torch_cross_entropy(TORCH_LOGITS, labels, w, ignore_index, eps, reduction)
    if kind == "probabilities" and reduction == "mean" and weighted:
        per_example = _torch_cross_entropy(TORCH_LOGITS, labels, w, None, eps, "none")
        expected = per_example.sum() / (labels * w).sum()  # jaxloss's rule, not torch's N
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    # nll_loss on log-probabilities has every option meaning the same.
    log_p = special.log_softmax(TORCH_LOGITS, axis=-1)
    out_nll = jaxloss.nll_loss(log_p, labels, reduction=reduction, **options)
    np.testing.assert_allclose(out_nll, expected, rtol=1e-12, atol=1e-14)
    if eps == 0.0:  # softmax_focal_loss with γ = 0 shares the other options
        focal = jaxloss.softmax_focal_loss(
            TORCH_LOGITS,
            labels,
            gamma=0.0,
            class_weights=w,
            ignore_index=ignore_index,
            reduction=reduction,
        )
        np.testing.assert_allclose(focal, expected, rtol=1e-12, atol=1e-14)


def test_probability_label_mean_one_hot_equals_class_ids_and_differs_from_torch_as_documented():
    """With class weights, one-hot labels' "mean" equals the class
    ids' (torch's Σ w[y_n] denominator), where torch itself divides by N."""
    ids = np.where(TORCH_IDS < 0, 2, TORCH_IDS)
    one_hot = np.eye(TORCH_C)[ids]
    for eps in (0.0, 0.2):
        options = {"label_smoothing": eps, "class_weights": TORCH_W, "reduction": "mean"}
        by_id = jaxloss.softmax_cross_entropy(TORCH_LOGITS, ids, **options)
        by_vector = jaxloss.softmax_cross_entropy(TORCH_LOGITS, one_hot, **options)
        torch_ids = _torch_cross_entropy(TORCH_LOGITS, ids, TORCH_W, None, eps, "mean")
        torch_probs = _torch_cross_entropy(TORCH_LOGITS, one_hot, TORCH_W, None, eps, "mean")
        np.testing.assert_allclose(by_id, torch_ids, rtol=1e-12)
        np.testing.assert_allclose(by_vector, torch_ids, rtol=1e-12)
        assert abs(torch_probs - torch_ids) > 1e-3  # so the two rules really differ here


@pytest.mark.parametrize("kind", ["ids", "probabilities"])
def test_softmax_focal_loss_class_weights_weight_each_class_term(kind):
    """Class weights in `softmax_focal_loss` weight class c's term
    by w[c] (ℓ = −Σ_c w_c t_c (1 − p_c)^γ log p_c), so γ → 0 is torch's cross-entropy;
    "mean" divides by Σ_n Σ_c w_c t_nc as `softmax_cross_entropy` does."""
    gamma = 1.5
    labels = np.where(TORCH_IDS < 0, 2, TORCH_IDS) if kind == "ids" else TORCH_PROBS
    t = np.eye(TORCH_C)[labels] if kind == "ids" else labels
    log_p = special.log_softmax(TORCH_LOGITS, axis=-1)
    per_example = -(TORCH_W * t * (1 - np.exp(log_p)) ** gamma * log_p).sum(-1)
    for reduction, expected in [
        ("none", per_example),
        ("mean", per_example.sum() / (TORCH_W * t).sum()),
    ]:
        out = jaxloss.softmax_focal_loss(
            TORCH_LOGITS, labels, gamma=gamma, class_weights=TORCH_W, reduction=reduction
        )
        np.testing.assert_allclose(out, expected, rtol=1e-12)


# --------------------------------------------------------------------------------------
# Labels that cannot be misread, NaN that is never turned into 0
# --------------------------------------------------------------------------------------

CATEGORICAL = [jaxloss.softmax_cross_entropy, jaxloss.nll_loss, jaxloss.softmax_focal_loss]


@pytest.mark.parametrize("fn", CATEGORICAL)
def test_float_class_ids_are_not_read_as_one_probability_vector(fn):
    """Float class ids with N == C were read as one probability vector."""
    logits = jnp.asarray(LOGITS[:3, :3])
    message = r"Floating `labels` of shape \(3,\) are read as probabilities.*integer dtype"
    with pytest.raises(TypeError, match=message):
        fn(logits, jnp.array([0.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match=message):
        jax.jit(fn)(logits, jnp.array([0.0, 2.0, 1.0]))
    by_id = jit_call(fn, logits, jnp.array([0, 2, 1]))
    one_hot = jnp.asarray(np.eye(3)[[0, 2, 1]])
    np.testing.assert_allclose(by_id, jit_call(fn, logits, one_hot), rtol=1e-12)


@pytest.mark.parametrize("fn", CATEGORICAL)
def test_negative_class_ids_without_ignore_index_raise_when_concrete(fn):
    """PyTorch's −100 padding without `ignore_index` returned NaN with no
    hint. Concrete labels raise naming `ignore_index=-100`; under jit the NaN stays."""
    labels = np.where(np.arange(N) % 3 == 0, -100, IDS)
    with pytest.raises(ValueError, match=r"negative class ids \[-100\].*`ignore_index=-100`"):
        fn(LOGITS, labels, reduction="mean")
    with pytest.raises(
        ValueError, match=r"negative class ids \[-1\] other than `ignore_index=-100`"
    ):
        fn(LOGITS, np.where(labels == -100, -1, labels), ignore_index=-100)
    traced = jax.jit(lambda z, y: fn(z, y, reduction="mean"))(LOGITS, labels)
    assert np.isnan(traced)
    kept = labels >= 0
    np.testing.assert_allclose(
        fn(LOGITS, labels, ignore_index=-100, reduction="mean"),
        fn(LOGITS, np.where(kept, labels, 0), where=kept, reduction="mean"),
        rtol=1e-12,
    )
    # Masked out by `where`, a negative id is not an error (it is dropped).
    np.testing.assert_allclose(
        fn(LOGITS, labels, where=kept, reduction="mean"),
        fn(LOGITS, labels, ignore_index=-100, reduction="mean"),
        rtol=1e-12,
    )


@pytest.mark.parametrize("fn", CATEGORICAL)
def test_mean_is_nan_when_an_out_of_range_label_makes_a_class_weight_nan(fn):
    """The NaN class weight of an out-of-range label
    made the count NaN and the empty-mask guard returned 0; it must poison the mean."""
    labels = IDS.copy()
    labels[2] = K + 4
    for reduction in ("mean", "sum"):
        assert np.isnan(fn(LOGITS, labels, class_weights=CLASS_W, reduction=reduction))
    nan_weight = W.copy()
    nan_weight[5] = np.nan
    assert np.isnan(fn(LOGITS, IDS, weights=nan_weight, reduction="mean"))
    # ... while dropping it, or keeping nothing at all, still gives a finite value / 0.
    keep = np.arange(N) != 2
    assert np.isfinite(fn(LOGITS, labels, class_weights=CLASS_W, where=keep, reduction="mean"))
    nothing = np.zeros(N, bool)
    assert float(fn(LOGITS, labels, class_weights=CLASS_W, where=nothing, reduction="mean")) == 0


@pytest.mark.parametrize("bad", [True, 1.5, np.float64(-100.0)])
def test_ignore_index_must_be_an_int(bad):
    """`ignore_index=True` or `1.5` was accepted."""
    for fn in CATEGORICAL:
        with pytest.raises(TypeError, match=r"`ignore_index` must be an int class id"):
            fn(LOGITS, IDS, ignore_index=bad)
    assert np.isfinite(
        jaxloss.softmax_cross_entropy(LOGITS, IDS, ignore_index=np.int64(-100))
    ).all()


def test_zero_classes_raise():
    """C = 0 classes gave −inf instead of an error."""
    empty = jnp.zeros((3, 0))
    for fn in CATEGORICAL:
        with pytest.raises(ValueError, match=r"`\w+` of shape \(3, 0\) has 0 classes along axis 1"):
            fn(empty, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"has 0 classes"):
        jaxloss.z_loss(empty)


@pytest.mark.parametrize("fn", CATEGORICAL)
def test_large_int64_labels_do_not_wrap_into_another_class(fn):
    """An int64 label ≥ 2³² wrapped in
    the gather (2³² + 1 read class 1); every id outside [0, C) must give NaN."""
    assert jax.config.jax_enable_x64
    logits = jnp.asarray(LOGITS[:4])
    for big in (2**32, 2**32 + 1, 2**31, 2**63 - 1):
        labels = jnp.asarray([0, big, 1, 2], jnp.int64)
        out = np.asarray(jit_call(fn, logits, labels))
        assert np.isnan(out[1]) and np.isfinite(np.delete(out, 1)).all(), big
        weighted = jit_call(fn, logits, labels, class_weights=CLASS_W, reduction="mean")
        assert np.isnan(weighted)
    # Narrow dtypes hold their valid ids: uint8 / int16 labels give the int32 result.
    ids = jnp.asarray(IDS[:4], jnp.int32)
    by_int32 = jit_call(fn, logits, ids)
    for dtype in (jnp.uint8, jnp.int8, jnp.int16, jnp.uint32):
        narrow = jnp.asarray(IDS[:4].astype(dtype))
        np.testing.assert_array_equal(jit_call(fn, logits, narrow), by_int32)
    uint8 = jnp.asarray(IDS[:4].astype(np.uint8))
    np.testing.assert_array_equal(jit_call(fn, logits, uint8, ignore_index=-100), by_int32)


# poly_cross_entropy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [2.0, -1.0, 0.5])
def test_poly_cross_entropy_matches_optax(epsilon):
    peer = optax.losses.poly_loss_cross_entropy(LOGITS, PROBS, epsilon=epsilon)
    ours = jaxloss.poly_cross_entropy(LOGITS, PROBS, epsilon=epsilon)
    np.testing.assert_allclose(ours, peer, rtol=1e-12, atol=1e-12)
    peer = optax.losses.poly_loss_cross_entropy(LOGITS, ONE_HOT, epsilon=epsilon)
    np.testing.assert_allclose(
        jaxloss.poly_cross_entropy(LOGITS, IDS, epsilon=epsilon), peer, rtol=1e-12, atol=1e-12
    )
    # optax has no label smoothing: smoothing the labels first is the same target.
    smoothed = optax.smooth_labels(ONE_HOT, 0.2)
    np.testing.assert_allclose(
        jaxloss.poly_cross_entropy(LOGITS, IDS, epsilon=epsilon, label_smoothing=0.2),
        optax.losses.poly_loss_cross_entropy(LOGITS, smoothed, epsilon=epsilon),
        rtol=1e-12,
        atol=1e-12,
    )


def test_poly_cross_entropy_is_ce_plus_epsilon_one_minus_pt_and_ids_equal_one_hot():
    ce = jaxloss.softmax_cross_entropy(LOGITS, IDS, where=KEEP, weights=W)
    p_t = special.softmax(LOGITS, axis=-1)[np.arange(N), IDS]
    expected = ce + 3.0 * np.where(KEEP, W, 0.0) * (1.0 - p_t)
    for labels in (IDS, ONE_HOT):
        ours = jaxloss.poly_cross_entropy(LOGITS, labels, epsilon=3.0, where=KEEP, weights=W)
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    assert_same = np.testing.assert_allclose
    assert_same(
        jaxloss.poly_cross_entropy(LOGITS, IDS, epsilon=0.0, label_smoothing=0.3),
        jaxloss.softmax_cross_entropy(LOGITS, IDS, label_smoothing=0.3),
        rtol=1e-12,
    )
    g_id, g_vec = (
        jax.grad(lambda z, y=y: jaxloss.poly_cross_entropy(z, y, reduction="sum"))(LOGITS)
        for y in (IDS, ONE_HOT)
    )
    np.testing.assert_allclose(g_id, g_vec, rtol=1e-12, atol=1e-12)


def test_poly_cross_entropy_is_finite_with_minus_inf_logits_and_accurate_for_tiny_pt():
    logits = jnp.array([[0.0, 0.0, -jnp.inf], [0.0, -60.0, -jnp.inf]], jnp.float32)
    out = jit_call(jaxloss.poly_cross_entropy, logits, jnp.array([1, 1]), epsilon=1.0)
    np.testing.assert_allclose(out, [np.log(2.0) + 0.5, 60.0 + 1.0], rtol=1e-6)
    g = jgrad(jaxloss.poly_cross_entropy, logits, jnp.array([1, 1]))
    assert np.isfinite(np.asarray(g)).all()


def test_poly_cross_entropy_bad_input():
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number"):
        jaxloss.poly_cross_entropy(Z0, jnp.zeros(3, int), epsilon=float("nan"))
    with pytest.raises(TypeError, match=r"`labels` must be integer class ids or floating"):
        jaxloss.poly_cross_entropy(Z0, jnp.zeros((3, 4), bool))
    with pytest.raises(ValueError, match=r"Integer `labels` of shape \(4,\)"):
        jax.jit(jaxloss.poly_cross_entropy)(Z0, jnp.zeros(4, int))


def _smoothed_weighted_value_and_grads(z, w, labels):
    return jax.value_and_grad(
        lambda z, w: jaxloss.softmax_cross_entropy(
            z, labels, label_smoothing=0.2, class_weights=w, reduction="sum"
        ),
        argnums=(0, 1),
    )(z, w)


@pytest.mark.parametrize("kind", ["ids", "probabilities"])
def test_class_weighted_smoothing_gradients_in_logits_and_class_weights(kind):
    """The new class-weighted smoothing path is smooth in the
    logits and the class weights (float64 check_grads, order 2, both modes), equals its
    jit, and a −inf logit keeps value and gradient finite."""
    from tests.gradcheck import check_grads

    labels = np.where(TORCH_IDS < 0, 2, TORCH_IDS) if kind == "ids" else TORCH_PROBS

    def f(z, w):
        return jaxloss.softmax_cross_entropy(
            z, labels, label_smoothing=0.2, class_weights=w, reduction="mean"
        )

    check_grads(f, (TORCH_LOGITS, TORCH_W), order=2, modes=("fwd", "rev"))
    np.testing.assert_allclose(jax.jit(f)(TORCH_LOGITS, TORCH_W), f(TORCH_LOGITS, TORCH_W))
    z = TORCH_LOGITS.copy()
    z[:, 3] = -np.inf
    lab = np.where(labels == 3, 0, labels) if kind == "ids" else labels * (np.arange(5) != 3)
    value, grads = jit_call(_smoothed_weighted_value_and_grads, z, TORCH_W, lab)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(grads[0])[:, 3] == 0)


# --------------------------------------------------------------------------------------
# Review 2: log-probabilities as probability labels, one class
# --------------------------------------------------------------------------------------

LOG_PROBS = np.log(PROBS)  # the mistake: log-probabilities where probabilities belong
SOFTMAX_LOSSES = [
    jaxloss.softmax_cross_entropy,
    jaxloss.nll_loss,
    jaxloss.softmax_focal_loss,
    jaxloss.poly_cross_entropy,
    jaxloss.sparsemax_loss,
]


@pytest.mark.parametrize("fn", SOFTMAX_LOSSES, ids=lambda f: f.__name__)
def test_review2_item7_log_probabilities_as_labels_raise_when_concrete(fn):
    """Review 2, item 7: log-probabilities passed as probability labels (negative
    entries) raise a ValueError naming `labels` in every softmax loss, eagerly and under
    jit with concrete labels, as `cross_entropy` and `kl_divergence` do; an example
    dropped by `where` is not inspected."""
    z = jnp.asarray(LOGITS, jnp.float32)
    y = jnp.asarray(LOG_PROBS, jnp.float32)
    message = r"`labels` holds a negative entry \(-\d.*not a probability.*jnp\.exp"
    with pytest.raises(ValueError, match=message):
        fn(z, y)
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda z: fn(z, y))(z)
    y_ok = jnp.asarray(PROBS, jnp.float32).at[1].set(-1.0)  # only in a dropped example
    assert np.isfinite(np.asarray(fn(z, y_ok, where=jnp.asarray(KEEP), reduction="sum")))


@pytest.mark.parametrize("fn", SOFTMAX_LOSSES, ids=lambda f: f.__name__)
def test_review2_item7_traced_negative_labels_give_nan_value_and_gradient(fn):
    """Review 2, item 7: under jit the labels' values are unknown at trace time; an
    example whose label holds a negative entry gets a NaN loss and NaN logit gradient
    (softmax_cross_entropy returned about −23 before), the others keep their values."""
    y = PROBS.copy()
    y[2] = LOG_PROBS[2]
    out = np.asarray(jit_call(fn, LOGITS, y))
    assert np.isnan(out[2])
    np.testing.assert_allclose(
        np.delete(out, 2), np.delete(np.asarray(jit_call(fn, LOGITS, PROBS)), 2)
    )
    g = np.asarray(jgrad(fn, LOGITS, y))
    assert np.isnan(g[2]).all() and np.isfinite(np.delete(g, 2, axis=0)).all()


@pytest.mark.parametrize(
    "fn",
    [jaxloss.softmax_cross_entropy, jaxloss.softmax_focal_loss, jaxloss.poly_cross_entropy],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("kind", ["ids", "probabilities"])
def test_review2_item11_one_class_gives_plus_zero_and_zero_gradient(fn, kind):
    """Review 2, item 11: with one class every softmax loss is exactly +0.0 (not −0.0,
    which poly_cross_entropy returned), with zero gradient, for both label kinds, as
    softmax_cross_entropy on class ids is."""
    z = jnp.array([[1.5], [-0.3], [40.0]])
    labels = jnp.zeros(3, jnp.int32) if kind == "ids" else jnp.ones((3, 1))
    out = np.asarray(fn(z, labels))
    assert (out == 0).all() and not np.signbit(out).any(), out
    total = np.asarray(fn(z, labels, reduction="sum"))
    assert total == 0 and not np.signbit(total)
    g = np.asarray(jax.grad(lambda z: jnp.sum(fn(z, labels)))(z))
    assert (g == 0).all()


# --------------------------------------------------------------------------------------
# smooth_labels
# --------------------------------------------------------------------------------------

smooth_labels = jax.jit(jaxloss.smooth_labels, static_argnames=("axis", "num_classes"))
OPTAX_TS = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize("batched", [False, True], ids=["scalar", "batched"])
def test_smooth_labels_passes_optax_smoothing_tests(batched):
    """optax's SmoothLabelsTest (test_scalar, test_batched), ported case by case: α = 0
    returns the labels, α = 0.1 gives 0.9·y + 0.1/K, α = 1 the uniform vector."""
    ts = OPTAX_TS if batched else OPTAX_TS[0]
    expected = {0.0: ts, 0.1: 0.9 * ts + 0.1 / 3, 1.0: np.ones_like(ts) / 3}
    for alpha, exp in expected.items():
        np.testing.assert_allclose(smooth_labels(ts, alpha), exp, atol=1e-4)
        np.testing.assert_allclose(smooth_labels(ts, alpha), optax.smooth_labels(ts, alpha))


def test_smooth_labels_of_class_ids_equal_those_of_one_hot_and_feed_the_losses():
    for axis in (-1, 0):
        by_id = jaxloss.smooth_labels(IDS.reshape(2, 4), 0.2, num_classes=K, axis=axis)
        one_hot = np.moveaxis(np.eye(K)[IDS.reshape(2, 4)], -1, axis)
        np.testing.assert_allclose(by_id, jaxloss.smooth_labels(one_hot, 0.2, axis=axis))
        np.testing.assert_allclose(by_id, 0.8 * one_hot + 0.2 / K, rtol=1e-6)
    # Smoothing the target first is the losses' label_smoothing (no −inf logits).
    np.testing.assert_allclose(
        jaxloss.softmax_cross_entropy(LOGITS, jaxloss.smooth_labels(IDS, 0.3, num_classes=K)),
        jaxloss.softmax_cross_entropy(LOGITS, IDS, label_smoothing=0.3),
        rtol=1e-6,
    )


def test_smooth_labels_traced_bad_labels_give_nan_and_concrete_ones_raise():
    out = np.asarray(smooth_labels(jnp.array([1, K, -1]), 0.2, num_classes=K))
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()  # not the uniform vector
    out = np.asarray(jax.jit(jaxloss.smooth_labels)(LOG_PROBS[:2], 0.1))
    assert np.isnan(out).all()
    bad = [
        (lambda: jaxloss.smooth_labels(IDS, 0.1), TypeError, r"need `num_classes=`"),
        (
            lambda: jaxloss.smooth_labels(jnp.array([0, -100]), 0.1, num_classes=K),
            ValueError,
            r"class ids outside \[0, num_classes=5\): \[-100\]",
        ),
        (lambda: jaxloss.smooth_labels(jnp.asarray(LOG_PROBS), 0.1), ValueError, r"negative"),
        (
            lambda: jaxloss.smooth_labels(jnp.ones((2, 3)), 0.1, num_classes=4),
            ValueError,
            r"`num_classes=4` does not match the 3 classes",
        ),
        (lambda: jaxloss.smooth_labels(OPTAX_TS, 1.5), ValueError, r"`alpha` must be in"),
        (lambda: jaxloss.smooth_labels(OPTAX_TS, jnp.ones(2)), ValueError, r"`alpha` must be a"),
        (lambda: jaxloss.smooth_labels(IDS, 0.1, num_classes=0), ValueError, r"`num_classes`"),
    ]
    for call, error, message in bad:
        with pytest.raises(error, match=message):
            call()


# --------------------------------------------------------------------------------------
# categorical_generalized_cross_entropy
# --------------------------------------------------------------------------------------

gce = jax.jit(jaxloss.categorical_generalized_cross_entropy, static_argnames=("q", "reduction"))


def _gce_np(logits, target, q):
    """Zhang & Sabuncu (2018), eq. 6, float64: Σ_c t_c (1 − p_c^q)/q."""
    return (target * (1.0 - special.softmax(logits, axis=-1) ** q) / q).sum(-1)


def test_generalized_cross_entropy_limits_are_cross_entropy_and_mae():
    """q → 0 gives −log p_y; q = 1 gives 1 − p_y = ½‖e_y − p‖₁; class ids equal one-hot."""
    p = special.softmax(LOGITS, axis=-1)
    np.testing.assert_allclose(gce(LOGITS, IDS, q=1e-7), _ce_ref(LOGITS, ONE_HOT), rtol=1e-5)
    np.testing.assert_allclose(gce(LOGITS, IDS, q=1.0), 0.5 * np.abs(ONE_HOT - p).sum(-1))
    for q in (0.3, 0.7):
        np.testing.assert_allclose(gce(LOGITS, IDS, q=q), gce(LOGITS, ONE_HOT, q=q), rtol=1e-6)
        np.testing.assert_allclose(gce(LOGITS, PROBS, q=q), _gce_np(LOGITS, PROBS, q), rtol=1e-6)


def test_generalized_cross_entropy_gradient_is_ce_gradient_weighted_by_p_y_to_the_q():
    """Zhang & Sabuncu (2018), eq. 7: ∂ℓ/∂z = −p_y^q·(e_y − p), float64 reference."""
    p = special.softmax(LOGITS, axis=-1)
    p_y = p[np.arange(N), IDS]
    g = jax.grad(lambda z: jnp.sum(gce(z, IDS, q=0.7)))(LOGITS)
    np.testing.assert_allclose(g, -(p_y**0.7)[:, None] * (ONE_HOT - p), rtol=1e-5, atol=1e-7)


def test_generalized_cross_entropy_is_bounded_and_finite_at_extreme_logits():
    z = jnp.array([[0.0, -jnp.inf, 3.0], [1e9, -1e9, 0.0], [-1e4, 1e4, 0.0]], jnp.float32)
    labels = jnp.array([1, 0, 0])  # the label on the −inf class, and two hopeless ones
    out = gce(z, labels, q=0.5)
    np.testing.assert_allclose(out, [2.0, 0.0, 2.0], atol=1e-6)  # 1/q at p_y = 0
    g = jax.grad(lambda z: jnp.sum(gce(z, labels, q=0.5)))(z)
    assert np.isfinite(np.asarray(g)).all()


def test_generalized_cross_entropy_bad_q():
    for q in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"`q` must be in \(0, 1\]"):
            jaxloss.categorical_generalized_cross_entropy(Z0, jnp.zeros(3, int), q=q)


# --------------------------------------------------------------------------------------
# Label smoothing on the focal losses
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cw", [None, CLASS_W], ids=["plain", "class_weights"])
def test_softmax_focal_label_smoothing_means_what_it_means_for_cross_entropy(cw):
    """γ = 0 gives softmax_cross_entropy with the same smoothing (both label kinds, class
    weights, every reduction), class ids equal one-hot, and the smoothed class-id loss is
    (1 − ε)·w_y·f_y + (ε/K)·Σ_c w_c·f_c against a float64 reference."""
    opts = dict(label_smoothing=0.2, class_weights=cw, where=KEEP, weights=W)
    for reduction in ("none", "mean"):
        for labels in (IDS, PROBS):
            np.testing.assert_allclose(
                jaxloss.softmax_focal_loss(LOGITS, labels, gamma=0.0, reduction=reduction, **opts),
                jaxloss.softmax_cross_entropy(LOGITS, labels, reduction=reduction, **opts),
                rtol=1e-6,
            )
        np.testing.assert_allclose(
            jaxloss.softmax_focal_loss(LOGITS, IDS, gamma=2.0, reduction=reduction, **opts),
            jaxloss.softmax_focal_loss(LOGITS, ONE_HOT, gamma=2.0, reduction=reduction, **opts),
            rtol=1e-6,
        )
    w = np.ones(K) if cw is None else cw
    log_p = special.log_softmax(LOGITS, axis=-1)
    f = -((1 - np.exp(log_p)) ** 2) * log_p  # per-class focal terms
    expected = 0.8 * w[IDS] * f[np.arange(N), IDS] + 0.2 / K * (w * f).sum(-1)
    np.testing.assert_allclose(
        jaxloss.softmax_focal_loss(LOGITS, IDS, gamma=2.0, label_smoothing=0.2, class_weights=cw),
        expected,
        rtol=1e-5,
    )


def test_softmax_focal_label_smoothing_spreads_only_over_finite_logits_and_keeps_bad_ids_nan():
    z = jnp.array([[2.0, 0.0, -jnp.inf, 1.0]] * 2)
    focal = jaxloss.softmax_focal_loss
    out = jit_call(focal, z, jnp.array([0, 1]), label_smoothing=0.3)
    t = 0.7 * np.eye(4)[[0, 1]] + 0.1 * np.array([1, 1, 0, 1])
    np.testing.assert_allclose(out, jit_call(focal, z, jnp.asarray(t, jnp.float32)), rtol=1e-6)
    g = jgrad(focal, z, jnp.array([0, 1]), label_smoothing=0.3)
    assert np.isfinite(np.asarray(g)).all() and (np.asarray(g)[:, 2] == 0).all()
    bad = jit_call(focal, z, jnp.array([0, 4]), label_smoothing=0.3)
    assert np.isfinite(bad[0]) and np.isnan(bad[1])  # an id outside [0, C) stays NaN


def test_sigmoid_focal_label_smoothing_smooths_the_labels_first():
    y = (Y_HARD * 0.8 + 0.1).astype(np.float64)  # ε = 0.2: (1 − ε)·y + ε/2
    np.testing.assert_allclose(
        jaxloss.sigmoid_focal_loss(Z, Y_HARD, alpha=0.25, label_smoothing=0.2),
        jaxloss.sigmoid_focal_loss(Z, y, alpha=0.25),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0.0, 1.0\]"):
        jaxloss.sigmoid_focal_loss(Z, Y_HARD, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0.0, 1.0\]"):
        jaxloss.softmax_focal_loss(LOGITS, IDS, label_smoothing=1.1)
