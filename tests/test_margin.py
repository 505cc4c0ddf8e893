"""Margin losses: optax peers, float64 references of the torch and Keras formulas, labels.

The generic checks (float64 references, jit, vmap, gradients, masks, low precision,
extreme inputs) are in the contract table; here: parity with the peers, the label
conventions and the errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss

RNG = np.random.default_rng(12)
SCORES = RNG.normal(size=(8, 6)) * 2.0
SIGNS = RNG.choice(np.array([-1, 1]), size=(8, 6))
MC_SCORES = RNG.normal(size=(8, 5)) * 2.0
MC_LABELS = RNG.integers(0, 5, size=8)


# --- optax peers -----------------------------------------------------------------------


def test_hinge_and_perceptron_equal_optax():
    s, y = jnp.asarray(SCORES), jnp.asarray(SIGNS, jnp.float64)
    np.testing.assert_allclose(
        jaxloss.hinge_loss(s, y), optax.losses.hinge_loss(s, y), rtol=1e-14, atol=0
    )
    np.testing.assert_allclose(
        jaxloss.perceptron_loss(s, y), optax.losses.perceptron_loss(s, y), rtol=1e-14, atol=0
    )


def test_multiclass_losses_equal_optax():
    s, y = jnp.asarray(MC_SCORES), jnp.asarray(MC_LABELS)
    np.testing.assert_allclose(
        jaxloss.multiclass_hinge_loss(s, y),
        optax.losses.multiclass_hinge_loss(s, y),
        rtol=1e-14,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        jaxloss.multiclass_perceptron_loss(s, y),
        optax.losses.multiclass_perceptron_loss(s, y),
        rtol=1e-14,
        atol=1e-14,
    )


# --- Keras and torch: float64 references of the documented formulas --------------------


def _keras_hinge(y_true, y_pred, squared=False):
    """keras.losses.hinge / squared_hinge: 0/1 labels become −1/+1; mean over the last axis."""
    y = np.where(y_true == 0, -1.0, y_true)
    h = np.maximum(1.0 - y * y_pred, 0.0)
    return np.mean(h**2 if squared else h, axis=-1)


@pytest.mark.parametrize("squared", [False, True])
def test_keras_hinge_is_the_mean_over_the_last_axis(squared):
    y01 = (SIGNS > 0).astype(np.int64)
    out = jaxloss.hinge_loss(SCORES, y01.astype(bool), squared=squared)
    np.testing.assert_allclose(jnp.mean(out, -1), _keras_hinge(y01, SCORES, squared), rtol=1e-13)


def _torch_multi_margin(x, y, p=1, margin=1.0, weight=None):
    """torch.nn.functional.multi_margin_loss (reduction="none"), as documented, with
    ``weight`` applied as torch's kernel does: each term max(0, ·)^p times w[y]."""
    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        w = 1.0 if weight is None else weight[y[n]]
        for i in range(x.shape[1]):
            if i != y[n]:
                out[n] += w * max(0.0, margin - x[n, y[n]] + x[n, i]) ** p
    return out / x.shape[1]


@pytest.mark.parametrize("power,margin", [(1, 1.0), (2, 0.5)])
def test_weston_watkins_equals_torch_multi_margin_loss(power, margin):
    out = jaxloss.multiclass_hinge_loss(
        MC_SCORES, MC_LABELS, formulation="weston_watkins", power=power, margin=margin
    )
    np.testing.assert_allclose(out, _torch_multi_margin(MC_SCORES, MC_LABELS, power, margin))


def test_margin_ranking_and_soft_margin_equal_torch_formulas():
    s1, s2 = SCORES, RNG.normal(size=SCORES.shape)
    out = jaxloss.margin_ranking_loss(s1, s2, SIGNS, margin=0.25, reduction="mean")
    np.testing.assert_allclose(out, np.mean(np.maximum(0.0, -SIGNS * (s1 - s2) + 0.25)))
    out = jaxloss.soft_margin_loss(SCORES, SIGNS, reduction="mean")
    np.testing.assert_allclose(out, np.mean(np.log1p(np.exp(-SIGNS * SCORES))), rtol=1e-13)


def test_soft_margin_keeps_tiny_losses_and_never_overflows():
    out = jaxloss.soft_margin_loss(jnp.array([40.0, -1e30, 1e30]), jnp.array([1, 1, -1]))
    np.testing.assert_allclose(out, [np.exp(-40.0), 1e30, 1e30], rtol=1e-14)


# --- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [jaxloss.hinge_loss, jaxloss.perceptron_loss, jaxloss.soft_margin_loss]
)
def test_boolean_labels_mean_true_is_plus_one(fn):
    np.testing.assert_array_equal(fn(SCORES, SIGNS > 0), fn(SCORES, SIGNS))
    np.testing.assert_array_equal(fn(SCORES, SIGNS > 0), fn(SCORES, SIGNS.astype(np.float64)))


@pytest.mark.parametrize("bad", [np.zeros((8, 6), np.int32), np.full((8, 6), 0.5)])
def test_labels_outside_plus_minus_one_raise(bad):
    with pytest.raises(ValueError, match=r"`labels` must be −1 or \+1.*astype\(bool\)"):
        jaxloss.hinge_loss(SCORES, bad)


def test_traced_labels_outside_plus_minus_one_give_nan():
    out = jax.jit(jaxloss.hinge_loss)(jnp.ones(3), jnp.array([1, 0, -1]))
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])


def test_masked_labels_are_not_checked():
    labels = np.array([1, 0, -1])  # the 0 is dropped by `where`
    out = jaxloss.hinge_loss(jnp.ones(3), labels, where=np.array([True, False, True]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 2.0])


def test_labels_may_broadcast_to_the_scores_but_never_enlarge_them():
    out = jaxloss.hinge_loss(SCORES, np.ones(6, np.int32))
    assert out.shape == SCORES.shape
    with pytest.raises(ValueError, match=r"`labels` of shape \(8, 1, 6\).*`scores` \(8, 6\)"):
        jaxloss.hinge_loss(SCORES, np.ones((8, 1, 6), np.int32))
    with pytest.raises(ValueError, match=r"`scores_2` of shape \(8, 1\).*`scores_1` \(8,\)"):
        jaxloss.margin_ranking_loss(SCORES[:, 0], SCORES[:, :1], np.ones(8, np.int32))


def test_multiclass_labels_must_be_integer_class_ids():
    with pytest.raises(TypeError, match=r"integer class ids.*astype\(jnp.int32\)"):
        jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS.astype(np.float32))
    with pytest.raises(ValueError, match=r"must broadcast to the shape of `scores`"):
        jaxloss.multiclass_perceptron_loss(MC_SCORES, MC_LABELS[:, None])


def test_out_of_range_class_ids_give_nan():
    out = jaxloss.multiclass_hinge_loss(MC_SCORES[:2], np.array([5, -1]))
    assert np.isnan(np.asarray(out)).all()
    out = jaxloss.multiclass_perceptron_loss(MC_SCORES[:1], np.array([7]))
    assert np.isnan(np.asarray(out)).all()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"formulation": "ovr"}, ValueError, "`formulation` must be one of"),
        ({"power": 3}, ValueError, "`power` must be 1 or 2"),
        ({"margin": -1.0}, ValueError, "`margin` must be a non-negative"),
        ({"axis": 2}, ValueError, "`axis` 2 is out of range"),
        ({"reduction": "avg"}, ValueError, "`reduction` must be one of"),
    ],
)
def test_multiclass_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, **kwargs)


def test_integer_scores_are_rejected():
    with pytest.raises(TypeError, match="`scores` must be a floating-point array"):
        jaxloss.hinge_loss(np.ones(3, np.int32), np.ones(3, np.int32))


def test_errors_also_under_jit():
    with pytest.raises(ValueError, match="would enlarge the loss beyond the shape of `scores`"):
        jax.jit(jaxloss.perceptron_loss)(jnp.ones(3), jnp.ones((3, 1)))
    with pytest.raises(TypeError, match="integer class ids"):
        jax.jit(jaxloss.multiclass_hinge_loss)(jnp.ones((2, 3)), jnp.ones(2))


# --- structure --------------------------------------------------------------------------


def test_class_axis_equals_moving_the_axis():
    for formulation in ("crammer_singer", "weston_watkins"):
        moved = jaxloss.multiclass_hinge_loss(
            MC_SCORES.T, MC_LABELS, axis=0, formulation=formulation
        )
        last = jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, formulation=formulation)
        np.testing.assert_array_equal(moved, last)


def test_one_class_has_zero_loss():
    one = jnp.ones((3, 1))
    for formulation in ("crammer_singer", "weston_watkins"):
        out = jaxloss.multiclass_hinge_loss(one, jnp.zeros(3, int), formulation=formulation)
        np.testing.assert_array_equal(out, 0.0)


def test_gradient_at_the_kink_is_the_zero_subgradient():
    g = jax.jit(jax.grad(lambda s: jaxloss.hinge_loss(s, jnp.array(1), reduction="sum")))(
        jnp.array(1.0)
    )
    assert g == 0.0
    g = jax.jit(jax.grad(lambda s: jaxloss.perceptron_loss(s, jnp.array(-1), reduction="sum")))(
        jnp.array(0.0)
    )
    assert g == 0.0


def test_perceptron_is_hinge_with_zero_margin():
    np.testing.assert_array_equal(
        jaxloss.perceptron_loss(SCORES, SIGNS), jaxloss.hinge_loss(SCORES, SIGNS, margin=0.0)
    )


# --- hinge_embedding_loss ---------------------------------------------------------------


def _torch_hinge_embedding(x, y, margin=1.0):
    """torch.nn.functional.hinge_embedding_loss (reduction="none"), as documented:
    x if y = 1, max(0, margin − x) if y = −1."""
    return np.where(y == 1, x, np.maximum(0.0, margin - x))


def test_hinge_embedding_loss_equals_torch_formula():
    x = np.abs(SCORES)
    out = jaxloss.hinge_embedding_loss(x, SIGNS, margin=1.5)
    np.testing.assert_allclose(out, _torch_hinge_embedding(x, SIGNS, 1.5), rtol=1e-15)
    np.testing.assert_array_equal(out, jaxloss.hinge_embedding_loss(x, SIGNS > 0, margin=1.5))
    mean = jaxloss.hinge_embedding_loss(x, SIGNS, reduction="mean")
    np.testing.assert_allclose(mean, _torch_hinge_embedding(x, SIGNS).mean(), rtol=1e-14)


def test_hinge_embedding_gradient_at_the_kink_and_labels():
    """The derivative is 1 for y = +1 and −1 below the margin for y = −1; at the kink
    x = m the subgradient 0 (the flat side), as `hinge_loss`."""
    x = jnp.array([0.5, 0.5, 1.0, 2.0])
    y = jnp.array([1, -1, -1, -1])
    g = jax.jit(jax.grad(lambda v: jaxloss.hinge_embedding_loss(v, y, reduction="sum")))(x)
    np.testing.assert_array_equal(g, [1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"`labels` must be −1 or \+1"):
        jaxloss.hinge_embedding_loss(x, jnp.array([1, 0, 1, 1]))
    out = jax.jit(jaxloss.hinge_embedding_loss)(x, jnp.array([1, 0, 1, 1]))
    out = np.asarray(out)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2, 3]]).all()
    with pytest.raises(TypeError, match="`distances` must be a floating-point array"):
        jaxloss.hinge_embedding_loss(np.ones(3, np.int32), np.ones(3, np.int32))


# --- multilabel_margin_loss -------------------------------------------------------------


def torch_multilabel_margin(x, y):
    """torch.nn.functional.multilabel_margin_loss (reduction="none"), as documented:
    Σ_{j in targets} Σ_{i not in targets} max(0, 1 − (x[y[j]] − x[i])) / C, the targets
    being the entries of y before the first −1."""
    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        targets = []
        for v in y[n]:
            if v < 0:
                break
            targets.append(int(v))
        for j in targets:
            for i in range(x.shape[1]):
                if i not in targets:
                    out[n] += max(0.0, 1.0 - (x[n, j] - x[n, i]))
    return out / x.shape[1]


ML_LABELS = np.array(
    [[3, 0, -1, 1, 2], [1, -1, 4, 4, 4], [-1, 0, 1, 2, 3], [0, 1, 2, 3, 4], [2, 2, -1, 0, 0]]
    + [[4, 1, 3, -1, -1]] * 3
)


def test_multilabel_margin_loss_equals_torch_formula():
    x = jnp.array([[0.1, 0.2, 0.4, 0.8]])

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(scores, labels, x, x_labels):
        return (
            jaxloss.multilabel_margin_loss(scores, labels),
            jaxloss.multilabel_margin_loss(x, x_labels),
            jaxloss.multilabel_margin_loss(scores.T, labels.T, axis=0),
        )

    out, example, moved = evaluate(MC_SCORES, ML_LABELS, x, jnp.array([[3, 0, -1, 1]]))
    np.testing.assert_allclose(out, torch_multilabel_margin(MC_SCORES, ML_LABELS), rtol=1e-14)
    # torch's documented example
    np.testing.assert_allclose(example, [0.85])
    np.testing.assert_array_equal(moved, out)


def test_multilabel_margin_loss_labels():
    with pytest.raises(ValueError, match=r"class ids \[5\] outside \[0, 5\) before"):
        jaxloss.multilabel_margin_loss(MC_SCORES[:1], np.array([[0, 5, -1, 0, 0]]))
    # after the first -1 anything goes
    out = jaxloss.multilabel_margin_loss(MC_SCORES[:1], np.array([[0, -1, 7, -3, 9]]))
    np.testing.assert_allclose(out, torch_multilabel_margin(MC_SCORES[:1], np.array([[0, -1]])))
    out = jax.jit(jaxloss.multilabel_margin_loss)(MC_SCORES[:2], jnp.array([[0, 5, -1, 0, 0]] * 2))
    assert np.isnan(np.asarray(out)).all()
    with pytest.raises(TypeError, match="`labels` must be integer class ids padded with -1"):
        jaxloss.multilabel_margin_loss(MC_SCORES, (ML_LABELS >= 0).astype(np.float32))
    # a dropped example is not checked
    keep = np.array([True, False])
    out = jaxloss.multilabel_margin_loss(
        MC_SCORES[:2], np.array([[0, -1, 0, 0, 0], [9, -1, 0, 0, 0]]), where=keep
    )
    assert np.isfinite(np.asarray(out)).all()


def test_multilabel_margin_gradient_at_the_kink_is_zero():
    s = jnp.array([[1.0, 0.0, 0.5]])  # target 0 vs 1: margin exactly met (kink)
    g = jax.jit(
        jax.grad(
            lambda v: jaxloss.multilabel_margin_loss(v, jnp.array([[0, -1, -1]]), reduction="sum")
        )
    )(s)
    # only the pair (0, 2) is active: d/ds_0 = −1/3, d/ds_2 = +1/3
    np.testing.assert_allclose(g, [[-1 / 3, 0.0, 1 / 3]], rtol=1e-15)


# --- class weights of multiclass_hinge_loss (torch's multi_margin_loss weight=) ---------

CW = np.array([0.5, 2.0, 1.0, 0.25, 3.0])


@pytest.mark.parametrize("formulation", ["weston_watkins", "crammer_singer"])
@pytest.mark.parametrize("power", [1, 2])
def test_multiclass_hinge_class_weights(formulation, power):
    """w[y] multiplies each example's loss (torch's `weight=`, applied after the power as
    its kernel does); "mean" divides by Σ w[y] over kept examples, "sum" by nothing."""
    kwargs = {"formulation": formulation, "power": power, "margin": 0.7}
    plain = np.asarray(jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, **kwargs))
    w_y = CW[MC_LABELS]
    out = jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, class_weights=CW, **kwargs)
    np.testing.assert_allclose(out, w_y * plain, rtol=1e-14)
    if formulation == "weston_watkins":
        torch_ref = _torch_multi_margin(MC_SCORES, MC_LABELS, power, 0.7, weight=CW)
        np.testing.assert_allclose(out, torch_ref, rtol=1e-13)
    keep = np.arange(8) % 3 != 0
    w = RNG.random(8) + 0.5
    mean = jaxloss.multiclass_hinge_loss(
        MC_SCORES, MC_LABELS, class_weights=CW, where=keep, weights=w, reduction="mean", **kwargs
    )
    expected = (keep * w * w_y * plain).sum() / (keep * w * w_y).sum()
    np.testing.assert_allclose(mean, expected, rtol=1e-13)
    total = jaxloss.multiclass_hinge_loss(
        MC_SCORES, MC_LABELS, class_weights=CW, reduction="sum", **kwargs
    )
    np.testing.assert_allclose(total, (w_y * plain).sum(), rtol=1e-13)


def test_multiclass_hinge_class_weights_errors_and_bad_labels():
    with pytest.raises(ValueError, match=r"`class_weights` must have shape \(5,\)"):
        jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, class_weights=np.ones(4))
    with pytest.raises(ValueError, match="`class_weights` must be non-negative"):
        jaxloss.multiclass_hinge_loss(MC_SCORES, MC_LABELS, class_weights=-np.ones(5))
    out = jaxloss.multiclass_hinge_loss(
        MC_SCORES[:2], np.array([5, 1]), class_weights=CW, reduction="mean"
    )
    assert np.isnan(out)  # a bad label's NaN weight reaches the mean
    # a dropped example's row gets zero gradient, even with NaN scores
    s = MC_SCORES[:3].copy()
    s[1] = np.nan
    keep = np.array([True, False, True])

    def f(v):
        return jaxloss.multiclass_hinge_loss(
            v, MC_LABELS[:3], class_weights=CW, where=keep, reduction="mean"
        )

    value, g = jax.jit(jax.value_and_grad(f))(s)  # one compilation for both
    assert np.isfinite(value)
    g = np.asarray(g)
    assert np.isfinite(g).all() and (g[1] == 0).all()
