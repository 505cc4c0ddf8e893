"""Classification losses, each a cross-entropy: the negative log-likelihood of the label.

Softmax (categorical) losses share one body (``_categorical``) for integer class ids and
probability labels, so the two agree on one-hot labels by construction; the sigmoid
(binary) losses share one primitive, ``_numerics.binary_logit_nll``.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C

ArrayLike = C.ArrayLike


# --------------------------------------------------------------------------------------
# Input handling shared by the losses with a class axis
# --------------------------------------------------------------------------------------


def _class_axis(axis, x: jax.Array, name: str) -> int:
    """``axis`` as a non-negative index into ``x``'s dims, checked at trace time."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"`axis` must be an int (the class axis), got {axis!r}.")
    axis = operator.index(axis)
    if x.ndim == 0:
        raise ValueError(f"`{name}` must have a class axis; got a scalar.")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis` {axis} is out of range for `{name}` of shape {x.shape}.")
    return axis % x.ndim


def _batch_shape(x: jax.Array, axis: int) -> tuple[int, ...]:
    return x.shape[:axis] + x.shape[axis + 1 :]


def _labels(labels: ArrayLike, x: jax.Array, axis: int, name: str) -> tuple[jax.Array, bool]:
    """``(labels, is_integer)``: class ids of the batch shape, or probabilities of x's shape."""
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    labels = jnp.asarray(labels)
    batch = _batch_shape(x, axis)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if _broadcasts_to(labels.shape, batch):
            return jnp.broadcast_to(labels, batch), True
        raise ValueError(
            f"Integer `labels` of shape {labels.shape} (class ids) must broadcast to the shape "
            f"of `{name}` without its class axis {axis}, {batch}. For probability labels "
            "pass a floating array of the logits' shape."
        )
    if jnp.issubdtype(labels.dtype, jnp.floating):
        if _broadcasts_to(labels.shape, x.shape):
            return labels, False
        raise ValueError(
            f"Probability `labels` of shape {labels.shape} must broadcast to the shape of "
            f"`{name}` {x.shape}. For class ids pass an integer array of shape {batch}."
        )
    raise TypeError(
        "`labels` must be integer class ids or floating-point probabilities, got an array "
        f"of dtype {labels.dtype}."
    )


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _class_weights(class_weights: ArrayLike | None, n_classes: int) -> jax.Array | None:
    if class_weights is None:
        return None
    cw = jnp.asarray(class_weights)
    if not jnp.issubdtype(cw.dtype, jnp.number) or jnp.iscomplexobj(cw):
        raise TypeError(f"`class_weights` must be a real array, got dtype {cw.dtype}.")
    if cw.shape != (n_classes,):
        raise ValueError(
            f"`class_weights` must have shape ({n_classes},), one weight per class, got {cw.shape}."
        )
    if not isinstance(cw, jax.core.Tracer) and bool(np.any(np.asarray(cw) < 0)):
        raise ValueError("`class_weights` must be non-negative; got a negative entry.")
    return cw


def _is_zero(value) -> bool:
    """Whether a hyperparameter is the Python number 0 (so its term can be skipped)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _combine(where: jax.Array | None, extra: jax.Array | None) -> jax.Array | None:
    if where is None or extra is None:
        return extra if where is None else where
    return where & extra


def _uniform_over_finite(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(mask of classes with a finite logit, their count): the support label smoothing uses."""
    finite = x != -jnp.inf  # NaN counts as finite here, so NaN logits stay visible
    return finite, jnp.sum(finite, axis=axis, keepdims=True).astype(x.dtype)


def _categorical(
    name: str,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    normalize: bool,
    axis: int,
    label_smoothing: float | jax.Array,
    class_weights: ArrayLike | None,
    ignore_index: int | None,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    reduction: str,
) -> jax.Array:
    """Σ_c t_c (lse − x_c), the cross-entropy of target t against softmax(x).

    With ``normalize=False`` ``x`` already holds log-probabilities and lse is taken as 0
    (`nll_loss`). Integer labels gather one entry per example; they never build a one-hot.
    """
    x = C.as_float(name, x)
    axis = _class_axis(axis, x, name)
    labels, integer = _labels(labels, x, axis, name)
    batch = _batch_shape(x, axis)
    if ignore_index is not None and not integer:
        raise ValueError(
            "`ignore_index` applies to integer labels (class ids) only; with probability "
            "labels use `where=` to drop examples."
        )
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    where, weights = C.prepare(batch, where, weights, reduction)
    cw = _class_weights(class_weights, x.shape[axis])
    dtype = C.compute_dtype(x) if integer else C.compute_dtype(x, labels)
    x = x.astype(dtype)

    keep = where
    if ignore_index is not None:
        valid = labels != ignore_index
        keep = _combine(where, valid)
        labels = jnp.where(valid, labels, 0)  # a safe index; the example is dropped anyway
    if keep is not None:
        row = jnp.expand_dims(keep, axis)
        x = C.keep(row, x, 0.0)
        if not integer:
            labels = C.keep(row, labels, 0.0)
    if not integer:
        labels = labels.astype(dtype)

    lse = jax.nn.logsumexp(x, axis=axis, keepdims=True) if normalize else 0.0
    smooth = not _is_zero(label_smoothing)
    if integer:
        index = jnp.expand_dims(labels, axis)
        # "fill" gives NaN for a label outside [0, C) (negative ones included), so a bad
        # label can never produce a silent finite loss.
        picked = jnp.take_along_axis(
            x, index, axis=axis, mode="fill", fill_value=jnp.nan, wrap_negative_indices=False
        )
        loss = lse - picked
        if smooth:
            finite, count = _uniform_over_finite(x, axis)
            mean = jnp.sum(jnp.where(finite, x, 0.0), axis=axis, keepdims=True) / count
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - mean)
        loss = jnp.squeeze(loss, axis)
    else:
        target = labels
        if smooth:
            finite, count = _uniform_over_finite(x, axis)
            target = (1.0 - label_smoothing) * target + label_smoothing * (finite / count)
        # −log p_c is +inf on a class with logit −inf; where the target puts no mass there
        # its term is 0 (0·log 0 = 0), replaced before the product so the gradient is 0.
        neg_log_p = lse - x
        neg_log_p = jnp.where((target == 0) & (x == -jnp.inf), 0.0, neg_log_p)
        loss = jnp.sum(target * neg_log_p, axis=axis)

    if cw is not None:
        cw = cw.astype(dtype)
        if integer:
            omega = jnp.take(cw, labels, mode="fill", fill_value=jnp.nan)
        else:
            shape = (-1,) + (1,) * (x.ndim - axis - 1)
            omega = jnp.sum(labels * cw.reshape(shape), axis=axis)
        weights = omega if weights is None else weights * omega
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction)


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Softmax cross-entropy: the negative log-likelihood of the labels under softmax(logits).

        ℓ = Σ_c t_c · (logsumexp(z) − z_c)        t = target distribution over classes
        ℓ = logsumexp(z) − z_y                    for an integer label y (t one-hot)

    ``labels`` may be integer class ids (shape of ``logits`` without ``axis``) or
    floating probability vectors (the shape of ``logits``); the dtype decides, and a
    one-hot vector gives exactly the result of its class id. Integer labels gather one
    logit per example (no one-hot array is built).

    A class whose logit is −inf (masked out) is handled as impossible: while the target
    puts no mass on it, the loss and its gradient are finite and equal to those with the
    −inf replaced by any very negative finite number. (``optax.losses.softmax_cross_entropy``
    returns NaN there for probability labels, as 0·(−inf).) An integer label outside
    [0, C) that is not ``ignore_index`` gives NaN, never a silent finite loss.

    Args:
      logits: z, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``logits``' shape without ``axis``, or
        floating target probabilities broadcastable to ``logits``' shape.
      axis: the class axis of ``logits`` (default the last).
      label_smoothing: ε ∈ [0, 1], the weight of the uniform distribution mixed into the
        target: t = (1 − ε)·y + ε/K, for both label kinds. K counts the classes with a
        finite logit (a −inf logit marks a class as impossible, and it gets no target
        mass); with no −inf logits K = C, the usual definition.
      class_weights: optional non-negative weights of shape [C]. Each example is weighted
        by its label's weight ω = class_weights[y] (for probability labels
        ω = Σ_c class_weights_c·y_c, the same for one-hot labels), and ``"mean"`` divides
        by Σ ω over the kept examples (PyTorch's convention).
      ignore_index: optional class id (integer labels only, e.g. −100) whose examples
        are dropped: loss 0, no gradient, and left out of sums and means, exactly as
        ``where=False``. Combines with ``where`` and ``weights``.
      where: optional boolean mask broadcastable to the per-example loss (the logits'
        shape without ``axis``); True keeps an example. A dropped example's whole row of
        logits gets exactly zero gradient, even when it holds NaN or inf.
      weights: optional non-negative per-example weights, broadcastable like ``where``.
      reduction: ``"none"`` (per example), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The logits' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.array([[2.0, 0.0, -jnp.inf], [0.0, 0.0, 0.0]])
      >>> jaxloss.softmax_cross_entropy(logits, jnp.array([0, 2]))
      Array([0.12692809, 1.0986123 ], dtype=float32)
      >>> jaxloss.softmax_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
      Array([0.12692809, 1.0986123 ], dtype=float32)
      >>> jaxloss.softmax_cross_entropy(logits, jnp.array([0, -100]), ignore_index=-100,
      ...                               reduction="mean")
      Array(0.12692809, dtype=float32)

    References:
      Label smoothing: Szegedy et al., "Rethinking the Inception architecture for
      computer vision", CVPR 2016, §7.
    """
    return _categorical(
        "logits",
        logits,
        labels,
        normalize=True,
        axis=axis,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        weights=weights,
        reduction=reduction,
    )


def nll_loss(
    log_probs: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Negative log-likelihood of the labels for inputs that are already log-probabilities.

        ℓ = −Σ_c t_c · log p_c          (ℓ = −log p_y for an integer label y)

    `softmax_cross_entropy` is this applied to log_softmax(logits), with every option
    meaning the same; use it when you have logits (it never forms log_softmax). No
    normalization is applied or checked here. A log-probability of −inf is finite in the
    loss wherever the target puts no mass on it.

    Args:
      log_probs: log p, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``log_probs``' shape without ``axis``,
        or floating target probabilities broadcastable to ``log_probs``' shape.
      axis, label_smoothing, class_weights, ignore_index, where, weights, reduction: as in
        `softmax_cross_entropy` (read "log-probability" for "logit").

    Returns:
      As in `softmax_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> log_probs = jnp.log(jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
      >>> jaxloss.nll_loss(log_probs, jnp.array([1, 2]))
      Array([0.6931472, 0.6931472], dtype=float32)
    """
    return _categorical(
        "log_probs",
        log_probs,
        labels,
        normalize=False,
        axis=axis,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        weights=weights,
        reduction=reduction,
    )


def z_loss(
    logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """The z-loss: the squared log-partition function of the logits.

        ℓ = (log Σ_c exp z_c)²

    An auxiliary term, added with a small coefficient (e.g. 1e-4) to a softmax
    cross-entropy, that keeps the normalizer log Z near 0 so the logits cannot drift
    (softmax is invariant to a shift of every logit; this term is not). Classes with a
    −inf logit do not contribute.

    Args:
      logits: z, floating array with a class axis.
      axis: the class axis (default the last).
      where: optional boolean mask broadcastable to the logits' shape without ``axis``.
      weights: optional non-negative weights, broadcastable like ``where``.
      reduction: ``"none"`` (per example), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The logits' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.z_loss(jnp.array([[0.0, 0.0], [3.0, -jnp.inf]]))
      Array([0.480453, 9.      ], dtype=float32)

    References:
      Chowdhery et al., "PaLM: scaling language modeling with pathways" (2022), §5;
      Zoph et al., "ST-MoE: designing stable and transferable sparse expert models"
      (2022), §3.3.
    """
    x = C.as_float("logits", logits)
    axis = _class_axis(axis, x, "logits")
    where, weights = C.prepare(_batch_shape(x, axis), where, weights, reduction)
    x = x.astype(C.compute_dtype(x))
    if where is not None:
        x = C.keep(jnp.expand_dims(where, axis), x, 0.0)
    lse = jax.nn.logsumexp(x, axis=axis)
    return C.reduce(jnp.square(lse), where=where, weights=weights, reduction=reduction)
