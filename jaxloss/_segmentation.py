"""Segmentation (overlap) losses on probabilities: Dice, Tversky, Jaccard, generalized Dice.

Inputs are probabilities, not logits: apply ``jax.nn.softmax(logits, axis=class_axis)``
(one label per pixel) or ``jax.nn.sigmoid(logits)`` (independent masks) first. Each
loss sums over the spatial ``axis`` (required: there is no safe default layout) and
returns one loss per remaining index (per example and class); ``where`` and
``weights`` apply to those, while ``pixel_where`` (broadcastable to the inputs) removes
pixels from the sums, e.g. the void label of a data set. Dice and Jaccard are
Tversky indices (α = β = ½ and α = β = 1), so the three share one body, in which an
empty class (no target, no prediction) has loss 0 with a finite gradient for every
``smooth`` ≥ 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C

ArrayLike = C.ArrayLike


def _axes(axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints) as sorted non-negative axes of an ndim array."""
    if axis is None:
        raise TypeError(
            f"`{name}` is required: the spatial axes to sum over, e.g. `axis=(1, 2)` for "
            "[batch, height, width, classes] probabilities."
        )
    items = (axis,) if isinstance(axis, (int, np.integer)) else axis
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"`{name}` must be an int or a tuple of ints, got {axis!r}.") from None
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int or a tuple of ints, got {axis!r}.")
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"`{name}` {axis!r} is out of range for `probs` with {ndim} dims.")
        out.append(a % ndim)
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"`{name}` must name distinct axes, at least one; got {axis!r}.")
    return tuple(sorted(out))


def _class_axis(class_axis, axis, ndim: int) -> int:
    """``class_axis`` as a non-negative axis, checked not to be a spatial axis."""
    (cax,) = _axes(class_axis, ndim, "class_axis")
    if cax in _axes(axis, ndim):
        raise ValueError(f"`class_axis` {class_axis} must not be one of the spatial `axis` {axis}.")
    return cax


def _check_unit_interval(name: str, x: jax.Array) -> None:
    """Concrete probabilities or targets outside [0, 1] raise: they are likely logits."""
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x, np.float64)
    if np.any((v < 0) | (v > 1)):
        raise ValueError(
            f"`{name}` must lie in [0, 1] (probabilities); got values in "
            f"[{np.nanmin(v):.4g}, {np.nanmax(v):.4g}]. Apply `jax.nn.softmax(logits, "
            "axis=class_axis)` or `jax.nn.sigmoid(logits)` first."
        )


def _check_nonnegative(name: str, value) -> None:
    if value is None:
        raise TypeError(f"`{name}` is required, got None.")
    if C._is_concrete_number(value) and not (0 <= value < math.inf):
        raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}.")


def _pixel_mask(pixel_where, shape) -> jax.Array | None:
    """``pixel_where`` checked: a boolean mask that broadcasts to ``probs``' shape."""
    if pixel_where is None:
        return None
    m = jnp.asarray(pixel_where)
    if m.dtype != jnp.bool_:
        raise TypeError(
            f"`pixel_where` must be a boolean mask (True = the pixel counts), got dtype "
            f"{m.dtype}. For a void label use e.g. `pixel_where=(ids != 255)[..., None]`."
        )
    C.check_fits("probs", shape, pixel_where=m)
    return m


def _inputs(probs, targets, axis, where, weights, reduction, pixel_where=None, extra_axes=()):
    """(probs, targets, spatial axes, where, weights): the shared validation.

    The loss shape is ``probs``' shape without the spatial axes (and ``extra_axes``);
    ``targets`` and ``pixel_where`` broadcast to ``probs``. Dropped entries (of ``where``
    or ``pixel_where``) are zeroed in both inputs before the sums, which removes them from
    every sum (TP, FP, FN, Σp, Σt), and gives them exactly zero gradient.
    """
    p = C.as_float("probs", probs)
    t = C.as_float("targets", targets, allow_int=True)
    axes = _axes(axis, p.ndim)
    C.check_fits("probs", p.shape, targets=t)
    pixels = _pixel_mask(pixel_where, p.shape)
    reduced = tuple(sorted(set(axes) | set(extra_axes)))
    loss_shape = tuple(d for i, d in enumerate(p.shape) if i not in reduced)
    where, weights = C.prepare(loss_shape, where, weights, reduction)
    dtype = C.compute_dtype(p, t)
    p = p.astype(dtype)
    t = jnp.broadcast_to(t.astype(dtype), p.shape)
    full = pixels
    if where is not None:
        rows = jnp.expand_dims(jnp.broadcast_to(where, loss_shape), reduced)
        full = rows if full is None else rows & full
    if full is not None:
        p, t = C.keep(full, p, 0.0), C.keep(full, t, 0.0)
    _check_unit_interval("probs", p)  # after masking: dropped entries are not checked
    _check_unit_interval("targets", t)
    return p, t, axes, where, weights


def _ratio_loss(num: jax.Array, den: jax.Array) -> jax.Array:
    """1 − num/den, and 0 where den = 0 (an empty class with smooth = 0), double where."""
    empty = den == 0
    return jnp.where(empty, 0.0, 1.0 - num / jnp.where(empty, 1.0, den))


def _tversky(p, t, axes, alpha, beta, smooth):
    """1 − (TP + s) / (TP + α·FP + β·FN + s) summed over ``axes``."""
    tp = jnp.sum(p * t, axis=axes)
    fp = jnp.sum(p * (1.0 - t), axis=axes)
    fn = jnp.sum((1.0 - p) * t, axis=axes)
    return _ratio_loss(tp + smooth, tp + alpha * fp + beta * fn + smooth)


def _class_weights(class_weights, loss_shape):
    if class_weights is None:
        return None
    cw = jnp.asarray(class_weights)
    if not jnp.issubdtype(cw.dtype, jnp.number) or jnp.iscomplexobj(cw):
        raise TypeError(f"`class_weights` must be a real array, got dtype {cw.dtype}.")
    if not loss_shape or cw.shape != (loss_shape[-1],):
        raise ValueError(
            f"`class_weights` must have shape (C,) with C = {loss_shape[-1] if loss_shape else '?'}"
            f", the last axis of the per-class loss of shape {loss_shape}; got {cw.shape}."
        )
    if not isinstance(cw, jax.core.Tracer) and bool(np.any(np.asarray(cw) < 0)):
        raise ValueError("`class_weights` must be non-negative; got a negative entry.")
    return cw


def tversky_loss(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    axis: int | Sequence[int],
    smooth: float = 1.0,
    pixel_where: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Tversky loss: Dice with separate weights on false positives and false negatives.

        ℓ = 1 − (TP + s) / (TP + α·FP + β·FN + s)
        TP = Σ p·t,   FP = Σ p·(1 − t),   FN = Σ (1 − p)·t      (sums over ``axis``)

    α weighs false positives and β false negatives, as in Salehi et al. (2017), optax
    and Keras; α = β = ½ is the Dice loss, α = β = 1 the Jaccard (IoU) loss, and
    β > α favours recall (small structures). Equal to ``optax.losses.dice_loss(probs,
    targets, alpha=α, beta=β, smooth=s, apply_softmax=False, reduction="none")`` for
    [batch, ..., classes] inputs and ``axis`` the spatial axes. Keras ``Tversky`` is the
    case s = 0 with 10⁻⁷ added to the denominator only. An empty class (no target, no
    prediction) has loss 0 and a finite gradient, also for s = 0.

    Args:
      probs: p, probabilities in [0, 1] of any shape, e.g. [B, H, W, C] after a softmax
        over classes or [B, H, W] after a sigmoid. Concrete values outside [0, 1] raise.
      targets: t, targets in [0, 1] (one-hot, binary masks, or soft), broadcastable to
        ``probs``' shape; integers and booleans are cast.
      alpha: α ≥ 0, the weight of false positives.
      beta: β ≥ 0, the weight of false negatives.
      axis: required, int or tuple of ints: the spatial axes summed over.
      smooth: s ≥ 0, added to numerator and denominator.
      pixel_where: optional boolean mask broadcastable to ``probs``' shape (e.g.
        [B, H, W, 1]); False removes a pixel from every sum (TP, FP, FN), as if the
        image did not contain it, and gives its inputs exactly zero gradient. For the
        "void" label of segmentation data sets (255 in Pascal VOC and Cityscapes):
        ``targets=jax.nn.one_hot(ids, C)``, ``pixel_where=(ids != 255)[..., None]``.
        An (example, class) with no pixel left is an empty class (loss 0).
      where: optional boolean mask broadcastable to the loss (``probs``' shape without
        ``axis``, e.g. [B, C]); True keeps an (example, class) in the reduction.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per example and class), ``"sum"`` or ``"mean"``.

    Returns:
      ``probs``' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> probs = jax.nn.sigmoid(jnp.array([[4.0, 4.0, -4.0, -4.0]]))  # [batch, pixels]
      >>> jaxloss.tversky_loss(probs, jnp.array([[1, 0, 0, 0]]), alpha=0.7, beta=0.3,
      ...                      axis=1, smooth=0.0)
      Array([0.42234486], dtype=float32)

    References:
      Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation using
      3D fully convolutional deep networks", MLMI 2017.
    """
    _check_nonnegative("alpha", alpha)
    _check_nonnegative("beta", beta)
    _check_nonnegative("smooth", smooth)
    p, t, axes, where, weights = _inputs(
        probs, targets, axis, where, weights, reduction, pixel_where
    )
    loss = _tversky(p, t, axes, alpha, beta, smooth)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def dice_loss(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    axis: int | Sequence[int],
    smooth: float = 1.0,
    class_weights: ArrayLike | None = None,
    pixel_where: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Soft Dice loss, 1 − the Dice coefficient (F1 score) of probabilities and targets.

        ℓ = 1 − (2·Σ p·t + s) / (Σ p + Σ t + s)        (sums over ``axis``)

    One loss per example and class (every axis not in ``axis``). The smoothing term s
    is added once to numerator and denominator (Milletari et al.; MONAI's
    ``smooth_nr = smooth_dr``). ``optax.losses.dice_loss`` adds its s to TP and to
    ½(P + T), so its ``smooth=s`` is ``smooth=2s`` here; with that it equals optax's
    ``apply_softmax=False, reduction="none"`` output, class weights included, and
    ``optax.losses.binary_dice_loss(apply_sigmoid=False)`` is the mean over classes.
    Keras ``Dice`` is 1 − 2Σpt / (Σp + Σt + 10⁻⁷): s = 0 up to that 10⁻⁷. An empty class
    (no target, no prediction) has loss 0 with a finite gradient, also for s = 0.

    Args:
      probs: p, probabilities in [0, 1], e.g. [B, H, W, C] after a softmax over classes.
      targets: t, targets in [0, 1] broadcastable to ``probs``' shape (one-hot, masks).
      axis: required, int or tuple of ints: the spatial axes summed over.
      smooth: s ≥ 0.
      class_weights: optional non-negative weights of shape [C], C the size of the
        loss's last axis (the class axis); they multiply ``weights``, so ``"mean"`` is
        Σ ω·ℓ / Σ ω (optax's mean divides by C instead).
      pixel_where, where, weights, reduction: as in `tversky_loss`.

    Returns:
      As in `tversky_loss`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> logits = jnp.array([[[3.0, -3.0], [-3.0, 3.0], [3.0, -3.0]]])  # [B, pixels, C]
      >>> probs = jax.nn.softmax(logits, axis=-1)
      >>> targets = jax.nn.one_hot(jnp.array([[0, 1, 1]]), 2)
      >>> jaxloss.dice_loss(probs, targets, axis=1)
      Array([[0.2507732 , 0.25046337]], dtype=float32)

    References:
      Milletari, Navab & Ahmadi, "V-Net: fully convolutional neural networks for
      volumetric medical image segmentation", 3DV 2016.
    """
    _check_nonnegative("smooth", smooth)
    p, t, axes, where, weights = _inputs(
        probs, targets, axis, where, weights, reduction, pixel_where
    )
    loss = _tversky(p, t, axes, 0.5, 0.5, 0.5 * smooth)  # (2I + s)/(P + T + s), halved
    cw = _class_weights(class_weights, loss.shape)
    if cw is not None:
        weights = cw if weights is None else weights * cw
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def jaccard_loss(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    axis: int | Sequence[int],
    smooth: float = 1.0,
    pixel_where: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Soft Jaccard (IoU) loss, 1 − intersection over union of probabilities and targets.

        ℓ = 1 − (Σ p·t + s) / (Σ p + Σ t − Σ p·t + s)        (sums over ``axis``)

    The Tversky loss with α = β = 1. An empty class has loss 0 with a finite gradient.

    Args:
      probs, targets, axis, smooth, pixel_where, where, weights, reduction: as in
        `tversky_loss`.

    Returns:
      As in `tversky_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> probs = jnp.array([[0.9, 0.8, 0.1, 0.0]])
      >>> jaxloss.jaccard_loss(probs, jnp.array([[1, 1, 0, 0]]), axis=1, smooth=0.0)
      Array([0.19047624], dtype=float32)

    References:
      Rahman & Wang, "Optimizing intersection-over-union in deep neural networks for
      image segmentation", ISVC 2016.
    """
    _check_nonnegative("smooth", smooth)
    p, t, axes, where, weights = _inputs(
        probs, targets, axis, where, weights, reduction, pixel_where
    )
    loss = _tversky(p, t, axes, 1.0, 1.0, smooth)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def generalized_dice_loss(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    axis: int | Sequence[int],
    class_axis: int = -1,
    smooth: float = 1e-5,
    pixel_where: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Generalized Dice loss (Sudre et al., 2017): Dice pooled over classes weighted by 1/T².

        ℓ = 1 − (2·Σ_c w_c·Σ p·t + s) / (Σ_c w_c·(Σ p + Σ t) + s),   w_c ∝ 1 / (Σ t_c)²

    One loss per example (``probs``' shape without ``axis`` and ``class_axis``). Each
    class's weight is the inverse square of its target volume in that example, so rare
    classes count as much as frequent ones. The weights are computed from the targets
    and held constant (no gradient flows through them, as in the paper); a class absent
    from the targets gets the largest weight of the present ones (as MONAI does), so
    false positives on it are still penalized; the weights are scaled to sum to C,
    which leaves the ratio unchanged for s = 0. An example with no target and no
    prediction in any class has loss 0.

    `multiclass_generalized_dice_loss` (optax's function of that name) is a different
    function: it computes one weight per class over the whole batch and averages the
    weighted per-class Dice losses, rather than pooling the classes inside one ratio per
    example; the two agree for one example with one class and s = 0.

    Args:
      probs: p, probabilities in [0, 1] with a class axis, e.g. [B, H, W, C].
      targets: t, targets in [0, 1] broadcastable to ``probs``' shape (one-hot).
      axis: required, int or tuple of ints: the spatial axes summed over.
      class_axis: the class axis of ``probs`` (default the last), not in ``axis``.
      smooth: s ≥ 0 (default 10⁻⁵, as MONAI), relative to the weighted sums, which
        are of the order of C / (Σ t).
      pixel_where: optional boolean mask broadcastable to ``probs``' shape; False
        removes a pixel from every sum, the class volumes Σ t included (see
        `tversky_loss`).
      where: optional boolean mask broadcastable to the per-example loss.
      weights: optional non-negative weights broadcastable to the per-example loss.
      reduction: ``"none"`` (per example), ``"sum"`` or ``"mean"``.

    Returns:
      ``probs``' shape without ``axis`` and ``class_axis`` for ``"none"``, else a
      scalar; float32, or float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> targets = jnp.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
      >>> probs = jnp.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
      >>> jaxloss.generalized_dice_loss(probs, targets, axis=1, smooth=0.0)
      Array([0.625], dtype=float32)

    References:
      Sudre et al., "Generalised Dice overlap as a deep learning loss function for
      highly unbalanced segmentations", DLMIA 2017.
    """
    _check_nonnegative("smooth", smooth)
    cax = _class_axis(class_axis, axis, jnp.ndim(probs))
    p, t, axes, where, weights = _inputs(
        probs, targets, axis, where, weights, reduction, pixel_where, extra_axes=(cax,)
    )
    inter = jnp.sum(p * t, axis=axes)
    total = jnp.sum(p + t, axis=axes)
    vol = jax.lax.stop_gradient(jnp.sum(t, axis=axes))
    # The class axis of the per-(example, class) sums, after the spatial axes are gone.
    c = cax - sum(a < cax for a in axes)
    present = vol > 0
    w = jnp.where(present, 1.0 / jnp.square(jnp.where(present, vol, 1.0)), 0.0)
    w_max = jnp.max(w, axis=c, keepdims=True)
    w = jnp.where(present, w, jnp.where(w_max > 0, w_max, 1.0))
    w = w * (w.shape[c] / jnp.sum(w, axis=c, keepdims=True))
    num = 2.0 * jnp.sum(w * inter, axis=c) + smooth
    den = jnp.sum(w * total, axis=c) + smooth
    return C.reduce(_ratio_loss(num, den), where=where, weights=weights, reduction=reduction)


def multiclass_generalized_dice_loss(
    probs: ArrayLike,
    targets: ArrayLike,
    *,
    axis: int | Sequence[int],
    class_axis: int = -1,
    smooth: float = 1.0,
    pixel_where: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """optax's generalized Dice loss: per-class Dice losses weighted by 1/F² over the batch.

        ℓ_bc = ω_c · (1 − (2·Σ p·t + s) / (Σ p + Σ t + s))        (sums over ``axis``)
        ω_c = C · v_c / Σ_k v_k,   v_c = 1 / (F_c² + 10⁻⁷),   F_c = Σ t_c over the batch

    The function of ``optax.losses.multiclass_generalized_dice_loss``: each class's
    weight comes from its target volume F_c summed over *every* axis but ``class_axis``
    (all examples and pixels of the array, after ``where`` and ``pixel_where``), so rare
    classes count more; the weights sum to C, and ``reduction="mean"`` (the mean over
    examples and classes) is optax's scalar with its ``smooth=s`` as ``smooth=2s`` here
    (the smoothing convention of `dice_loss`). A class absent from the whole batch gets
    the weight of v_c = 10⁷ and dominates, as in optax. The weights depend on the
    targets only and are not held constant (as in optax). Under ``vmap`` they are
    computed per mapped slice. ``where=False`` on an (example, class) removes it from
    the class volumes too, which changes the other entries' weights.

    `generalized_dice_loss` is Sudre et al.'s per-example score instead: the classes of
    one example pooled inside a single ratio, with weights 1/(Σ t)² from that example
    alone and held constant. optax's ``ignore_background=True`` is the mean of this
    loss's ``"none"`` output without class 0 (its weights still count class 0).

    Args:
      probs: p, probabilities in [0, 1] with a class axis, e.g. [B, H, W, C].
      targets: t, targets in [0, 1] broadcastable to ``probs``' shape (one-hot).
      axis: required, int or tuple of ints: the spatial axes summed over.
      class_axis: the class axis of ``probs`` (default the last), not in ``axis``.
      smooth: s ≥ 0, added to numerator and denominator of 2Σpt / (Σp + Σt).
      pixel_where: optional boolean mask broadcastable to ``probs``' shape; False
        removes a pixel from every sum, the class volumes included (see `tversky_loss`).
      where: optional boolean mask broadcastable to the loss (``probs``' shape without
        ``axis``); False removes an (example, class) from the class volumes and the
        reduction.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per example and class), ``"sum"`` or ``"mean"``.

    Returns:
      ``probs``' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> targets = jnp.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
      >>> probs = jnp.array([[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]])
      >>> jaxloss.multiclass_generalized_dice_loss(probs, targets, axis=1, smooth=0.0)
      Array([[0.03571428, 0.7499999 ]], dtype=float32)

    References:
      ``optax.losses.multiclass_generalized_dice_loss``; Sudre et al., "Generalised
      Dice overlap as a deep learning loss function for highly unbalanced
      segmentations", DLMIA 2017.
    """
    _check_nonnegative("smooth", smooth)
    cax = _class_axis(class_axis, axis, jnp.ndim(probs))
    p, t, axes, where, weights = _inputs(
        probs, targets, axis, where, weights, reduction, pixel_where
    )
    loss = _tversky(p, t, axes, 0.5, 0.5, 0.5 * smooth)  # (2I + s)/(P + T + s), halved
    others = tuple(i for i in range(t.ndim) if i != cax)
    v = 1.0 / (jnp.square(jnp.sum(t, axis=others)) + 1e-7)  # optax's 10⁻⁷
    omega = v * (v.shape[0] / jnp.sum(v))
    c = cax - sum(a < cax for a in axes)  # the class axis of the loss
    loss = loss * omega.reshape((-1,) + (1,) * (loss.ndim - c - 1))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)
