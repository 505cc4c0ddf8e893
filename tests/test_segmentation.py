"""Segmentation losses: optax peers, Keras formulas, empty classes, the generalized Dice.

The generic checks are in the contract table; here: parity with optax (softmax/sigmoid
off) and Keras, the identities between the losses, empty classes and the errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import jaxloss
from tests.compiled import jit_call

RNG = np.random.default_rng(12)
B, H, W, NC = 2, 4, 5, 3
PROBS = special.softmax(RNG.normal(size=(B, H, W, NC)) * 2.0, axis=-1)  # [B, H, W, C]
TARGETS = np.eye(NC)[RNG.integers(0, NC, size=(B, H, W))]
SPATIAL = (1, 2)


# --- optax peers (softmax/sigmoid off, reduction="none") --------------------------------


def test_tversky_equals_optax_dice_loss_with_alpha_beta():
    out = jaxloss.tversky_loss(PROBS, TARGETS, alpha=0.3, beta=0.7, axis=SPATIAL, smooth=0.5)
    expected = optax.losses.dice_loss(
        PROBS, TARGETS, alpha=0.3, beta=0.7, smooth=0.5, apply_softmax=False, reduction="none"
    )
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_dice_equals_optax_dice_loss_with_twice_the_smoothing():
    cw = np.array([0.5, 1.0, 2.0])
    out = jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, smooth=2.0, class_weights=cw)
    expected = optax.losses.dice_loss(
        PROBS, TARGETS, smooth=1.0, class_weights=cw, apply_softmax=False, reduction="none"
    )
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_dice_per_example_equals_optax_binary_dice_loss():
    # optax's binary_dice_loss(apply_sigmoid=False) rejects every non-trivial input (it
    # checks that a single channel sums to 1), so the sigmoid is applied on both sides.
    logits = RNG.normal(size=(B, H, W))
    masks = (RNG.random((B, H, W)) < 0.4).astype(np.float64)
    out = jaxloss.dice_loss(jax.nn.sigmoid(logits), masks, axis=SPATIAL, smooth=2.0)
    expected = optax.losses.binary_dice_loss(logits, masks, smooth=1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_generalized_dice_equals_optax_for_one_example_and_one_class():
    logits = RNG.normal(size=(1, H, W, 1))  # one channel: optax applies a sigmoid
    masks = (RNG.random((1, H, W, 1)) < 0.4).astype(np.float64)
    out = jaxloss.generalized_dice_loss(jax.nn.sigmoid(logits), masks, axis=SPATIAL, smooth=0.0)
    expected = optax.losses.multiclass_generalized_dice_loss(logits, masks, smooth=0.0)
    np.testing.assert_allclose(out, [expected], rtol=1e-12)


# --- Keras: float64 references of the documented formulas -------------------------------


def test_keras_dice_and_tversky_are_smooth_zero_up_to_their_epsilon():
    eps = 1e-7  # keras.backend.epsilon(), added to the denominator only
    p, t = PROBS[0], TARGETS[0]
    inter = (p * t).sum()
    keras_dice = 1 - 2 * inter / (t.sum() + p.sum() + eps)
    fp, fn = (p * (1 - t)).sum(), ((1 - p) * t).sum()
    keras_tversky = 1 - inter / (inter + 0.3 * fp + 0.7 * fn + eps)
    all_axes = (0, 1, 2)
    dice = jaxloss.dice_loss(p, t, axis=all_axes, smooth=0.0)
    tversky = jaxloss.tversky_loss(p, t, alpha=0.3, beta=0.7, axis=all_axes, smooth=0.0)
    np.testing.assert_allclose(dice, keras_dice, rtol=1e-7)
    np.testing.assert_allclose(tversky, keras_tversky, rtol=1e-7)


# --- identities -------------------------------------------------------------------------


def test_dice_and_jaccard_are_tversky_indices():
    dice = jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, smooth=0.8)
    np.testing.assert_allclose(
        dice, jaxloss.tversky_loss(PROBS, TARGETS, axis=SPATIAL, smooth=0.4), rtol=1e-14
    )
    jac = jaxloss.jaccard_loss(PROBS, TARGETS, axis=SPATIAL, smooth=0.8)
    np.testing.assert_allclose(
        jac,
        jaxloss.tversky_loss(PROBS, TARGETS, alpha=1.0, beta=1.0, axis=SPATIAL, smooth=0.8),
        rtol=1e-14,
    )
    # Without smoothing, J = D / (2 − D) for the coefficients D = 1 − dice, J = 1 − jaccard.
    d = 1 - jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, smooth=0.0)
    j = 1 - jaxloss.jaccard_loss(PROBS, TARGETS, axis=SPATIAL, smooth=0.0)
    np.testing.assert_allclose(j, d / (2 - d), rtol=1e-13)


def test_generalized_dice_is_sudres_formula():
    # Every class present: the weights 1/T² need no fallback and their scale cancels.
    t = TARGETS.copy()
    t[:, 0, 0] = np.eye(NC)[[0, 1]]  # make sure each example has every class
    t[:, 0, 1] = np.eye(NC)[[2, 2]]
    t[:, 0, 2] = np.eye(NC)[[1, 0]]
    t[0, 0, 3], t[1, 0, 3] = np.eye(NC)[2], np.eye(NC)[1]
    assert (t.sum((1, 2)) > 0).all()
    w = 1.0 / t.sum((1, 2)) ** 2
    num = 2 * (w * (PROBS * t).sum((1, 2))).sum(-1)
    den = (w * (PROBS + t).sum((1, 2))).sum(-1)
    out = jaxloss.generalized_dice_loss(PROBS, t, axis=SPATIAL, smooth=0.0)
    np.testing.assert_allclose(out, 1 - num / den, rtol=1e-13)


def test_perfect_prediction_has_zero_loss():
    for fn in (jaxloss.dice_loss, jaxloss.tversky_loss, jaxloss.jaccard_loss):
        np.testing.assert_allclose(fn(TARGETS, TARGETS, axis=SPATIAL), 0.0, atol=1e-15)
    np.testing.assert_allclose(
        jaxloss.generalized_dice_loss(TARGETS, TARGETS, axis=SPATIAL), 0.0, atol=1e-15
    )


def test_class_weights_weigh_the_mean():
    cw = np.array([0.5, 1.0, 2.0])
    per_class = np.asarray(jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL))
    out = jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, class_weights=cw, reduction="mean")
    np.testing.assert_allclose(out, (per_class * cw).sum() / (B * cw.sum()), rtol=1e-13)


def test_channels_first_equals_channels_last():
    first = np.moveaxis(PROBS, -1, 1), np.moveaxis(TARGETS, -1, 1)
    np.testing.assert_allclose(
        jaxloss.dice_loss(*first, axis=(2, 3)), jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL)
    )
    np.testing.assert_allclose(
        jaxloss.generalized_dice_loss(*first, axis=(2, 3), class_axis=1),
        jaxloss.generalized_dice_loss(PROBS, TARGETS, axis=SPATIAL),
    )


# --- empty classes ----------------------------------------------------------------------


@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize(
    "fn", [jaxloss.dice_loss, jaxloss.tversky_loss, jaxloss.jaccard_loss], ids=lambda f: f.__name__
)
def test_an_empty_class_has_zero_loss_and_finite_gradient(fn, smooth):
    p = PROBS.copy()
    t = TARGETS.copy()
    p[..., 2] = 0.0  # class 2: no prediction ...
    p[..., 0] += PROBS[..., 2]
    t[..., 0] += t[..., 2]
    t[..., 2] = 0.0  # ... and no target

    out, g = jit_call(_value_and_grad_of_sum, fn, smooth, jnp.asarray(p), t)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    assert (out[:, :2] > 0).all()
    assert np.isfinite(g).all()


def _value_and_grad_of_sum(fn, smooth, p, t):
    """fn's value and the gradient of its sum in p, in one compilation."""

    def loss(p):
        return fn(p, t, axis=SPATIAL, smooth=smooth)

    return loss(p), jax.grad(lambda p: jnp.sum(loss(p)))(p)


@pytest.mark.parametrize("smooth", [0.0, 1e-5])
def test_generalized_dice_empty_classes(smooth):
    empty = np.zeros((1, H, W, NC))
    # A class absent from the targets still penalizes predictions in it.
    t = np.zeros((1, H, W, NC))
    t[..., 0] = 1.0
    p = t.copy()
    p[0, 0, 0] = [0.0, 0.0, 1.0]

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(empty, p, t):
        out = jaxloss.generalized_dice_loss(empty, empty, axis=SPATIAL, smooth=smooth)
        g = jax.grad(lambda p: jnp.sum(jaxloss.generalized_dice_loss(p, empty, axis=SPATIAL)))(
            empty
        )
        return out, g, jaxloss.generalized_dice_loss(p, t, axis=SPATIAL, smooth=smooth)

    out, g, absent = evaluate(jnp.asarray(empty), p, t)
    np.testing.assert_array_equal(out, 0.0)
    assert np.isfinite(g).all()
    assert absent[0] > 0.01


# --- errors -----------------------------------------------------------------------------


def test_axis_is_required():
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'axis'"):
        jaxloss.dice_loss(PROBS, TARGETS)


def test_logits_are_rejected():
    with pytest.raises(ValueError, match=r"`probs` must lie in \[0, 1\].*jax.nn.softmax"):
        jaxloss.dice_loss(np.log(PROBS), TARGETS, axis=SPATIAL)
    with pytest.raises(ValueError, match=r"`targets` must lie in \[0, 1\]"):
        jaxloss.jaccard_loss(PROBS, 2 * TARGETS, axis=SPATIAL)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: jaxloss.dice_loss(PROBS, TARGETS, axis=(1, 1)), ValueError, "distinct axes"),
        (lambda: jaxloss.dice_loss(PROBS, TARGETS, axis=4), ValueError, "out of range"),
        (lambda: jaxloss.dice_loss(PROBS, TARGETS, axis=1.0), TypeError, "int or a tuple"),
        (
            lambda: jaxloss.tversky_loss(PROBS, TARGETS[:, None], axis=SPATIAL),
            ValueError,
            r"`targets` of shape \(2, 1, 4, 5, 3\).*`probs` \(2, 4, 5, 3\)",
        ),
        (
            lambda: jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, class_weights=np.ones(4)),
            ValueError,
            r"`class_weights` must have shape \(C,\) with C = 3",
        ),
        (
            lambda: jaxloss.generalized_dice_loss(PROBS, TARGETS, axis=(1, 3)),
            ValueError,
            "`class_axis` -1 must not be one of the spatial `axis`",
        ),
        (
            lambda: jaxloss.tversky_loss(PROBS, TARGETS, axis=SPATIAL, alpha=-1.0),
            ValueError,
            "`alpha` must be a non-negative",
        ),
        (
            lambda: jaxloss.jaccard_loss(PROBS, TARGETS, axis=SPATIAL, smooth=float("nan")),
            ValueError,
            "`smooth` must be a non-negative",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_shape_errors_also_under_jit():
    f = jax.jit(lambda p, t: jaxloss.dice_loss(p, t, axis=SPATIAL))
    with pytest.raises(ValueError, match="would enlarge the loss beyond the shape of `probs`"):
        f(PROBS[..., :1], TARGETS)


# --- properties -------------------------------------------------------------------------


@settings(max_examples=15)
@given(alpha=st.floats(0.0, 2.0), beta=st.floats(0.0, 2.0), smooth=st.floats(0.0, 10.0))
def test_overlap_losses_lie_in_the_unit_interval(alpha, beta, smooth):
    """TP ≤ TP + α·FP + β·FN for α, β ≥ 0: every overlap loss is in [0, 1]."""
    t = jaxloss.tversky_loss(PROBS, TARGETS, alpha=alpha, beta=beta, axis=SPATIAL, smooth=smooth)
    t = np.asarray(t)
    assert np.all((t >= -1e-15) & (t <= 1.0))
    g = np.asarray(jaxloss.generalized_dice_loss(PROBS, TARGETS, axis=SPATIAL, smooth=smooth))
    assert np.all((g >= -1e-15) & (g <= 1.0))


# --- review 2, item 12: pixels excluded from the overlap sums ---------------------------

VOID = 255
IDS = RNG.integers(0, NC, size=(B, H, W))
IDS[0, :2, :3] = VOID  # "void" pixels, as in Pascal VOC / Cityscapes
IDS[1, 3, :] = VOID
VALID = IDS != VOID


def _dropped_reference(p, t, keep, per_example):
    """``per_example(p_kept [n, C], t_kept [n, C]) -> [C] or scalar``, per example, with
    the excluded pixels removed by boolean indexing (float64 numpy)."""
    return np.stack([per_example(p[b][keep[b]], t[b][keep[b]]) for b in range(len(p))])


def _np_tversky(alpha, beta, smooth):
    def f(p, t):
        tp, fp, fn = (p * t).sum(0), (p * (1 - t)).sum(0), ((1 - p) * t).sum(0)
        return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)

    return f


def _np_dice(smooth):
    return lambda p, t: 1 - (2 * (p * t).sum(0) + smooth) / (p.sum(0) + t.sum(0) + smooth)


def _np_generalized_dice(p, t):  # Sudre et al., every class present, s = 0
    w = 1.0 / t.sum(0) ** 2
    return 1 - 2 * (w * (p * t).sum(0)).sum() / (w * (p + t).sum(0)).sum()


@pytest.mark.parametrize(
    "fn,kwargs,ref",
    [
        (jaxloss.dice_loss, {"smooth": 0.5}, _np_dice(0.5)),
        (jaxloss.tversky_loss, {"alpha": 0.3, "beta": 0.7}, _np_tversky(0.3, 0.7, 1.0)),
        (jaxloss.jaccard_loss, {"smooth": 0.1}, _np_tversky(1.0, 1.0, 0.1)),
        (jaxloss.generalized_dice_loss, {"smooth": 0.0}, _np_generalized_dice),
    ],
    ids=["dice", "tversky", "jaccard", "generalized_dice"],
)
def test_pixel_where_drops_void_pixels_from_every_sum(fn, kwargs, ref):
    """Review 2, item 12: the overlap losses could not exclude pixels (the void label 255
    of segmentation data sets), `where` being per (example, class). `pixel_where`, a mask
    broadcastable to the probabilities, removes pixels from every sum: equal to a float64
    reference that drops them; their inputs (even NaN) get exactly zero gradient."""
    targets = jax.nn.one_hot(IDS, NC)  # a void id is out of range: an all-zero row
    keep = VALID[..., None]
    expected = _dropped_reference(PROBS, np.asarray(targets), VALID, ref)
    out = fn(PROBS, targets, axis=SPATIAL, pixel_where=keep, **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # jit, and NaN in the excluded pixels: same value, zero gradient there
    poisoned = np.where(keep, PROBS, np.nan)

    @jax.jit  # the value, its gradient and the channels-first value, in one compilation
    def evaluate(p, probs_first, targets_first):
        f = lambda p: fn(p, targets, axis=SPATIAL, pixel_where=keep, **kwargs)  # noqa: E731
        first = fn(
            probs_first,
            targets_first,
            axis=(2, 3),
            pixel_where=VALID[:, None],
            **({"class_axis": 1} if fn is jaxloss.generalized_dice_loss else {}),
            **kwargs,
        )
        return f(p), jax.grad(lambda p: jnp.sum(f(p)))(p), first

    value, g, first = evaluate(
        poisoned, np.moveaxis(PROBS, -1, 1), np.moveaxis(np.asarray(targets), -1, 1)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(np.asarray(g)[~VALID], 0.0)
    # channels first: the mask broadcasts along the class axis there too
    np.testing.assert_allclose(first, expected, rtol=1e-12)


def test_pixel_where_is_checked():
    with pytest.raises(TypeError, match=r"`pixel_where` must be a boolean mask"):
        jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, pixel_where=VALID.astype(int)[..., None])
    with pytest.raises(ValueError, match=r"`pixel_where` of shape \(1, 2, 4, 5, 1\).*`probs`"):
        jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, pixel_where=VALID[None, ..., None])
    with pytest.raises(ValueError, match=r"do not broadcast.*`pixel_where` \(2, 4, 5\)"):
        jaxloss.dice_loss(PROBS, TARGETS, axis=SPATIAL, pixel_where=VALID)  # classes last


# --- multiclass_generalized_dice_loss: optax's function ---------------------------------


def test_multiclass_generalized_dice_equals_optax():
    logits = RNG.normal(size=(B, H, W, NC)) * 2.0
    probs = jax.nn.softmax(logits, axis=-1)
    for smooth in (1.0, 0.25):
        ours = jaxloss.multiclass_generalized_dice_loss(
            probs, TARGETS, axis=SPATIAL, smooth=2 * smooth, reduction="mean"
        )
        peer = optax.losses.multiclass_generalized_dice_loss(logits, TARGETS, smooth=smooth)
        np.testing.assert_allclose(ours, peer, rtol=1e-13)
    per = jaxloss.multiclass_generalized_dice_loss(probs, TARGETS, axis=SPATIAL, smooth=2.0)
    peer = optax.losses.multiclass_generalized_dice_loss(logits, TARGETS, ignore_background=True)
    np.testing.assert_allclose(jnp.mean(per[..., 1:]), peer, rtol=1e-13)
    # channels first
    first = jaxloss.multiclass_generalized_dice_loss(
        np.moveaxis(np.asarray(probs), -1, 1),
        np.moveaxis(TARGETS, -1, 1),
        axis=(2, 3),
        class_axis=1,
        smooth=2.0,
    )
    np.testing.assert_allclose(first, per, rtol=1e-14)


@jax.jit
def _ported_optax_cases(key):
    """Every evaluation of the ported optax tests, in one compilation."""
    predictions = jax.random.normal(key, (4, 32, 32, 3))
    class_labels = jax.random.choice(key, 3, (4, 32, 32), p=jnp.array([0.8, 0.15, 0.05]))
    targets = jax.nn.one_hot(class_labels, 3)
    probs = jax.nn.softmax(predictions, axis=-1)
    gdl = jaxloss.multiclass_generalized_dice_loss(
        probs, targets, axis=(1, 2), smooth=2.0, reduction="mean"
    )
    regular = jnp.mean(jaxloss.dice_loss(probs, targets, axis=(1, 2), smooth=2.0))
    predictions = jax.random.normal(key, (2, 16, 16, 4))
    targets = jax.nn.one_hot(jax.random.randint(key, (2, 16, 16), 0, 4), 4)
    per = jaxloss.multiclass_generalized_dice_loss(
        jax.nn.softmax(predictions, axis=-1), targets, axis=(1, 2), smooth=2.0
    )
    return gdl, regular, jnp.mean(per), jnp.mean(per[..., 1:])


def test_optax_multiclass_generalized_dice_tests_ported():
    """optax's own tests of multiclass_generalized_dice_loss (losses/_segmentation_test.py),
    with jaxloss substituted: a finite scalar unlike the plain Dice mean on imbalanced
    classes, and ignore_background changing the value."""
    gdl, regular, with_bg, no_bg = _ported_optax_cases(jax.random.PRNGKey(0))
    assert gdl.shape == () and np.isfinite(gdl)
    assert not np.allclose(gdl, regular)
    assert not np.allclose(with_bg, no_bg)
    assert np.isfinite(with_bg) and np.isfinite(no_bg)


def test_multiclass_generalized_dice_weights_and_masks():
    """Class weights from the volume over the whole batch; pixel_where and where remove
    pixels and (example, class) entries from those volumes (float64 reference)."""
    t = np.asarray(jax.nn.one_hot(IDS, NC))
    keep = VALID[..., None]

    def reference(p, t, pixels, entries):
        p = np.where(pixels & entries[:, None, None, :], p, 0.0)
        t = np.where(pixels & entries[:, None, None, :], t, 0.0)
        v = 1.0 / (t.sum((0, 1, 2)) ** 2 + 1e-7)
        w = v * NC / v.sum()
        inter, total = (p * t).sum((1, 2)), (p + t).sum((1, 2))
        return w * (1 - (2 * inter + 0.5) / (total + 0.5))

    entries = np.array([[True, True, False], [True, True, True]])
    out = jaxloss.multiclass_generalized_dice_loss(
        PROBS, t, axis=SPATIAL, smooth=0.5, pixel_where=keep, where=entries
    )
    expected = np.where(entries, reference(PROBS, t, keep, entries), 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="`class_axis` -1 must not be one of the spatial"):
        jaxloss.multiclass_generalized_dice_loss(PROBS, t, axis=(1, 3))
