"""Classification losses, each a cross-entropy: the negative log-likelihood of the label.

Softmax (categorical) losses share one body (``_categorical``) for integer class ids and
probability labels, so the two agree on one-hot labels by construction; the sigmoid
(binary) losses share ``_numerics.binary_logit_nll`` (and its weighted form).
"""

from __future__ import annotations

import numbers
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C
from jaxloss import _numerics as N

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
    if x.shape[axis] == 0:
        raise ValueError(
            f"`{name}` of shape {x.shape} has 0 classes along axis {axis % x.ndim}: a distribution "
            "over no class is undefined. Pass at least one class (check the class axis)."
        )
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
        if labels.ndim != x.ndim:
            raise TypeError(
                f"Floating `labels` of shape {labels.shape} are read as probabilities, one "
                f"distribution along the class axis, and must have the {x.ndim} dimensions "
                f"of `{name}` {x.shape}. Class ids need an integer dtype: pass "
                "`labels.astype(jnp.int32)`."
            )
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


def _smooth(target: jax.Array, label_smoothing: float | jax.Array, uniform) -> jax.Array:
    """(1 − ε)·t + ε·u: the target t mixed with the uniform distribution u, the label
    smoothing of every loss here (u = 1/K over the classes, ½ for a binary label)."""
    if _is_zero(label_smoothing):
        return target
    return (1.0 - label_smoothing) * target + label_smoothing * uniform


class _Categorical(NamedTuple):
    """Validated inputs of a loss with a class axis (see ``_categorical_inputs``)."""

    x: jax.Array  # logits or log-probabilities, masked rows replaced by 0
    labels: jax.Array  # int32 class ids (ignored ones 0, out-of-range −1) or probabilities
    integer: bool
    axis: int
    keep: jax.Array | None  # where & (labels != ignore_index)
    weights: jax.Array | None  # the per-example ``weights`` (not the class weights)
    class_weights: jax.Array | None  # [C] in the compute dtype
    label_weight: jax.Array | None  # ω per example: class_weights[y], or Σ_c w_c·t_c


def _class_ids(labels: jax.Array, n_classes: int) -> jax.Array:
    """int32 class ids, −1 for any id outside [0, C).

    The range test runs in the labels' own dtype, before the cast, so that no id can wrap
    into range (an int64 id of 2³² would become 0 in int32, a uint8 bound of 260 would
    become 4); −1 makes every gather below fill NaN.
    """
    valid = labels >= 0
    if jnp.iinfo(labels.dtype).max >= n_classes:
        valid = valid & (labels < n_classes)
    return jnp.where(valid, labels.astype(jnp.int32), -1)


_PROBABILITY_HINT = (
    "Floating `labels` are probabilities: for log-probabilities pass `jnp.exp(log_p)`, "
    "for class ids an integer array."
)


def _distribution_atol(dtype) -> float:
    """How far from 1 the sum of a distribution stored in ``dtype`` may round: generous,
    since what it catches (multi-hot labels, log-probabilities) is off by O(1)."""
    return max(1e-3, 8.0 * float(jnp.finfo(dtype).eps))


def _categorical_inputs(
    name,
    x,
    labels,
    *,
    axis,
    class_weights,
    ignore_index,
    where,
    weights,
    reduction,
    distributions: str | None = None,
) -> _Categorical:
    """Validate and convert the inputs shared by every loss with a class axis.

    Probability labels must be non-negative: a concrete negative entry raises (a
    log-probability passed as a label), a traced one makes its example's loss and
    gradient NaN. With ``distributions`` (the hint to show) each kept label must also
    sum to 1 along the class axis, checked the same way.
    """
    C.check_ignore_index(ignore_index)
    x = C.as_float(name, x)
    axis = _class_axis(axis, x, name)
    labels, integer = _labels(labels, x, axis, name)
    if ignore_index is not None and not integer:
        raise ValueError(
            "`ignore_index` applies to integer labels (class ids) only; with probability "
            "labels use `where=` to drop examples."
        )
    where, weights = C.prepare(_batch_shape(x, axis), where, weights, reduction)
    if integer:
        C.check_class_ids(labels, ignore_index, where)
    else:
        sums = None if distributions is None else axis
        atol = _distribution_atol(labels.dtype)
        if sums is not None:  # a sum along the class axis needs every class present
            labels = jnp.broadcast_to(labels, x.shape)
        row = None if where is None else jnp.expand_dims(where, axis)
        C.check_probabilities(
            _PROBABILITY_HINT if distributions is None else distributions,
            row,
            axis=sums,
            atol=atol,
            labels=labels,
        )
        labels = C.probabilities_or_nan(labels, axis=sums, atol=atol)
    cw = _class_weights(class_weights, x.shape[axis])
    dtype = C.compute_dtype(x) if integer else C.compute_dtype(x, labels)
    x = x.astype(dtype)

    keep = where
    if integer:
        ignored = C.is_ignored(labels, ignore_index)
        labels = _class_ids(labels, x.shape[axis])
        if ignored is not None:
            keep = _combine(where, ~ignored)
            labels = jnp.where(ignored, 0, labels)  # a safe index; the example is dropped
    if keep is not None:
        row = jnp.expand_dims(keep, axis)
        x = C.keep(row, x, 0.0)
        if not integer:
            labels = C.keep(row, labels, 0.0)
    if not integer:
        labels = labels.astype(dtype)

    omega = None
    if cw is not None:
        cw = cw.astype(dtype)
        if integer:
            omega = jnp.take(
                cw, _past_the_end(labels, cw.shape[0]), mode="fill", fill_value=jnp.nan
            )
        else:
            omega = jnp.sum(labels * _along(cw, x.ndim, axis), axis=axis)
    return _Categorical(x, labels, integer, axis, keep, weights, cw, omega)


def _along(v: jax.Array, ndim: int, axis: int) -> jax.Array:
    """A [C] vector shaped to broadcast along ``axis`` of an ``ndim``-dim array."""
    return v.reshape((-1,) + (1,) * (ndim - axis - 1))


def _pick(x: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    """x at each example's class id, keeping ``axis`` with size 1; no one-hot is built.

    "fill" gives NaN for an id outside [0, C) (``_class_ids`` maps every such id to −1),
    so a bad label can never produce a silent finite loss.
    """
    index = jnp.expand_dims(_past_the_end(labels, x.shape[axis]), axis)
    return jnp.take_along_axis(x, index, axis=axis, mode="fill", fill_value=jnp.nan)


def _past_the_end(ids: jax.Array, n_classes: int) -> jax.Array:
    """``ids`` with −1 (``_class_ids``' bad id) moved to C, out of range on the positive side.

    A gather's "fill" mode fills only indices ≥ C; NumPy-style indexing reads −1 as the
    last class (and ``wrap_negative_indices=False`` is not in every supported jax).
    """
    return jnp.where(ids < 0, n_classes, ids)


def _one_hot(ids: jax.Array, n_classes: int, axis: int, dtype) -> jax.Array:
    """Class ids (``_class_ids``' −1 for a bad one) as one-hot vectors along ``axis``,
    NaN for a bad id: a row of zeros would be a plausible (empty) target."""
    ids = jnp.expand_dims(ids, axis)
    axis = axis % ids.ndim
    shape = list(ids.shape)
    shape[axis] = n_classes
    classes = jax.lax.broadcasted_iota(jnp.int32, tuple(shape), axis)
    return jnp.where(ids < 0, jnp.nan, (classes == ids).astype(dtype))


def class_id_cross_entropy(
    lse: jax.Array,
    label_logit: jax.Array,
    *,
    label_smoothing: float | jax.Array = 0.0,
    label_weight: jax.Array | None = None,
    smooth_count: jax.Array | None = None,
    smooth_weight: jax.Array | None = None,
    smooth_logit_sum: jax.Array | None = None,
) -> jax.Array:
    """Per-example cross-entropy of class ids with PyTorch's options, from row statistics.

        ℓ = (1 − ε)·ω_y·min(lse − z_y, big) + (ε/K)·(W·lse − S)

    the per-example (``reduction="none"``) loss of ``torch.nn.functional.cross_entropy(
    weight=w, label_smoothing=ε)``: ω_y = w[y] weights the label's term and each class
    c weights its own smoothing term, (ε/K)·Σ_c w_c·(lse − z_c). The sums run over the
    K classes with a finite logit (K = C when none is −inf), W = Σ_c w_c and
    S = Σ_c w_c·z_c over them (W = K and S = Σ_c z_c without class weights). lse − z_y
    is capped at the largest float (a label on a −inf logit). The matching ``"mean"``
    divides Σ ℓ by Σ ω_y: pass ``label_weight`` as `C.reduce`'s ``denominator``.

    Every softmax cross-entropy with class ids computes its value here, from statistics
    it may gather in any way (in one array, in chunks, or summed over vocabulary shards).

    Args:
      lse: logsumexp of the logits over the classes, [...].
      label_logit: z_y, the logit of each example's label, [...] (NaN for a bad label).
      label_smoothing: ε ∈ [0, 1].
      label_weight: ω_y = class_weights[y], [...]; None for no class weights.
      smooth_count, smooth_weight, smooth_logit_sum: K, W and S, [...]; needed only
        when ε ≠ 0 (``smooth_weight`` may be None without class weights: W = K).

    Returns:
      ℓ, the shape of ``lse``.
    """
    big = jnp.finfo(lse.dtype).max
    loss = jnp.minimum(lse - label_logit, big)
    if label_weight is not None:
        loss = label_weight * loss
    if _is_zero(label_smoothing):
        return loss
    # Internal invariant: the callers pass the statistics whenever ε ≠ 0.
    assert smooth_count is not None and smooth_logit_sum is not None
    weight = smooth_count if smooth_weight is None else smooth_weight
    smooth = (weight * lse - smooth_logit_sum) / smooth_count
    return (1.0 - label_smoothing) * loss + label_smoothing * smooth


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
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    inputs = _categorical_inputs(
        name,
        x,
        labels,
        axis=axis,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        weights=weights,
        reduction=reduction,
    )
    x, labels, axis, cw = inputs.x, inputs.labels, inputs.axis, inputs.class_weights
    smooth = not _is_zero(label_smoothing)
    if inputs.integer:
        # The same operations as optax's integer-label loss (logsumexp, one gather), so
        # the default path costs what it does; −log p is capped at the largest float,
        # the value a −inf logit clipped to the lowest float gives (see N.finite_floor).
        lse = jax.nn.logsumexp(x, axis=axis) if normalize else jnp.zeros((), x.dtype)
        stats = {}
        if smooth:
            finite, count = _uniform_over_finite(x, axis)
            wf = finite if cw is None else jnp.where(finite, _along(cw, x.ndim, axis), 0.0)
            stats = {
                "smooth_count": jnp.squeeze(count, axis),
                "smooth_weight": None if cw is None else jnp.sum(wf, axis=axis),
                "smooth_logit_sum": jnp.sum(wf * jnp.where(finite, x, 0.0), axis=axis),
            }
        loss = class_id_cross_entropy(
            lse,
            jnp.squeeze(_pick(x, labels, axis), axis),
            label_smoothing=label_smoothing,
            label_weight=inputs.label_weight,
            **stats,
        )
    else:
        target = labels
        if smooth:
            finite, count = _uniform_over_finite(x, axis)
            target = _smooth(target, label_smoothing, finite / count)
        if cw is not None:
            target = target * _along(cw, x.ndim, axis)  # PyTorch: −Σ_c w_c·t_c·log p_c
        # optax's formula, −Σ t·log_softmax(z), with −inf at the lowest float.
        log_p = N.log_softmax(x, axis) if normalize else N.finite_floor(x)
        loss = N.negate(jnp.sum(target * log_p, axis=axis))
    return C.reduce(
        loss,
        where=inputs.keep,
        weights=inputs.weights,
        reduction=reduction,
        denominator=inputs.label_weight,
    )


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
    floating probability vectors (the logits' number of dimensions); the dtype decides,
    and a one-hot vector gives the result of its class id (the same formula; the two
    paths round differently, by about 1e-6 in float32). Float labels with fewer
    dimensions than the logits raise (class ids stored as floats would otherwise be read
    as one probability vector). Integer labels gather one logit per example (no one-hot
    array is built).

    With ``class_weights`` w, ``label_smoothing`` ε and ``ignore_index`` this is
    PyTorch's ``cross_entropy(weight=w, label_smoothing=ε, ignore_index=...)`` per
    example, for both label kinds:

        ℓ = (1 − ε)·w_y·(lse − z_y) + (ε/K)·Σ_c w_c·(lse − z_c)     class id y
        ℓ = −Σ_c w_c·t̃_c·log p_c,  t̃ = (1 − ε)·t + ε/K              probabilities t

    and ``"mean"`` = Σ w·ℓ / Σ w·ω over the kept examples, ω = w_y (PyTorch's mean for
    class ids) or, for probability labels, ω = Σ_c w_c·t_c, the expected class weight of
    the unsmoothed label. That makes one-hot labels equal their class ids in every
    reduction; PyTorch instead divides by the number of examples for probability labels
    (the same as here without class weights, where ω = 1).

    A class whose logit is −inf (masked out) is handled exactly as if its logit were the
    lowest finite float: where the target puts no mass on it, the loss and its gradient
    are finite and equal to those with the −inf replaced by any very negative number
    (``optax.losses.softmax_cross_entropy`` returns NaN there, as 0·(−inf)); a target
    with mass m on it gets the finite but enormous loss m·(largest float). An integer
    label outside [0, C) that is not ``ignore_index`` gives NaN, never a silent finite
    loss.

    Args:
      logits: z, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``logits``' shape without ``axis``, or
        floating target probabilities with ``logits``' number of dimensions,
        broadcastable to its shape. Concrete (not traced) negative ids other than
        ``ignore_index`` raise (PyTorch's −100 padding needs ``ignore_index=-100``),
        and so does a concrete negative probability (log-probabilities passed as
        labels); under ``jit`` a negative probability makes its example's loss and
        gradient NaN.
      axis: the class axis of ``logits`` (default the last).
      label_smoothing: ε ∈ [0, 1], the weight of the uniform distribution mixed into the
        target: t = (1 − ε)·y + ε/K, for both label kinds. K counts the classes with a
        finite logit (a −inf logit marks a class as impossible, and it gets no target
        mass); with no −inf logits K = C, the usual definition.
      class_weights: optional non-negative weights w of shape [C]: the label's term is
        weighted by w_y, each class's smoothing (and probability) term by its own w_c,
        and ``"mean"`` divides by Σ ω over the kept examples (see above).
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
      Array([0.126928, 1.098612 ], dtype=float32)
      >>> jaxloss.softmax_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
      Array([0.126928, 1.098612 ], dtype=float32)
      >>> jaxloss.softmax_cross_entropy(logits, jnp.array([0, -100]), ignore_index=-100,
      ...                               reduction="mean")
      Array(0.126928, dtype=float32)

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


# --------------------------------------------------------------------------------------
# Binary (sigmoid) losses
# --------------------------------------------------------------------------------------


def _check_gamma(gamma) -> None:
    if C._is_concrete_number(gamma) and not (np.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"`gamma` must be a non-negative finite number, got {gamma!r}.")


def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Binary cross-entropy on logits: the negative log-likelihood of a Bernoulli label.

        ℓ = −[w₊·y·log σ(z) + (1 − y)·log(1 − σ(z))]
          = w₊·y·softplus(−z) + (1 − y)·softplus(z)

    One independent binary decision per element (multi-label classification when the
    last axis lists the labels). Computed from the logits without forming σ(z), so the
    loss and its gradient σ(z) − y (for w₊ = 1) are accurate and finite for any finite
    logit, ±1e9 included, and the loss of a confident correct prediction keeps its
    exp(−|z|) size instead of rounding to 0.

    Args:
      logits: z, floating array of any shape.
      labels: y ∈ [0, 1] (hard 0/1 labels or soft targets), broadcastable with
        ``logits``; integers and booleans are cast.
      pos_weight: w₊ > 0, the weight of the positive term, broadcastable with
        ``logits`` (e.g. one per class): w₊ > 1 favours recall. Default 1.
      label_smoothing: ε ∈ [0, 1]: the labels become (1 − ε)·y + ε/2.
      where: optional boolean mask broadcastable to the loss; True keeps an element.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per element), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The shape of the predictions for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.sigmoid_binary_cross_entropy(jnp.array([0.0, 20.0, -3.0]),
      ...                                      jnp.array([1.0, 1.0, 0.0]))
      Array([6.9314718e-01, 2.0611537e-09, 4.8587351e-02], dtype=float32)

    References:
      The pos_weight convention of PyTorch's ``BCEWithLogitsLoss``.
    """
    C.check_positive("pos_weight", pos_weight, allow_none=True)
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    (logits, labels, pos_weight), where, weights = C.float_inputs(
        where,
        weights,
        reduction,
        allow_int=("labels", "pos_weight"),
        logits=logits,
        labels=labels,
        pos_weight=pos_weight,
    )
    z = C.keep(where, logits, 0.0)
    y = C.keep(where, labels, 0.0)
    y = _smooth(y, label_smoothing, 0.5)
    if pos_weight is None:
        loss = N.binary_logit_nll(z, y)
    else:
        loss = N.weighted_binary_logit_nll(z, C.keep(where, pos_weight, 1.0) * y, 1.0 - y)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def binary_cross_entropy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Binary cross-entropy on probabilities.

        ℓ = −[y·log q + (1 − y)·log(1 − q)]

    For a model that outputs probabilities q; prefer `sigmoid_binary_cross_entropy` on
    logits, which is exact where q would round to 0 or 1. Following 0·log 0 = 0, the loss
    is finite, with a finite gradient, at q = 0 when y = 0 and at q = 1 when y = 1; where
    the label puts mass on an impossible outcome (y > 0 at q = 0, y < 1 at q = 1) it is
    +inf, the true value (no clipping).

    Args:
      probs: q ∈ [0, 1], floating array of any shape.
      labels: y ∈ [0, 1], broadcastable to the shape of ``probs``; integers and booleans are cast.
      where, weights, reduction: as in `sigmoid_binary_cross_entropy`.

    Returns:
      As in `sigmoid_binary_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.binary_cross_entropy(jnp.array([0.5, 0.9, 1.0]), jnp.array([1.0, 0.0, 1.0]))
      Array([0.6931472, 2.302585 , 0.       ], dtype=float32)
    """
    (q, y), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("labels",), probs=probs, labels=labels
    )
    C.check_probabilities(
        "`binary_cross_entropy` takes probabilities in [0, 1]; for logits use "
        "`sigmoid_binary_cross_entropy`.",
        None if where is None else jnp.broadcast_to(where, q.shape),
        probs=q,
        labels=y,
    )
    q = C.keep(where, q, 0.5)
    y = C.keep(where, y, 0.5)
    # 0·log 0 = 0: the log's argument is replaced where its factor is 0, before the log,
    # so neither the value nor the gradient sees log 0.
    log_q = jnp.log(jnp.where((y == 0) & (q == 0), 1.0, q))
    log_not_q = jnp.log1p(-jnp.where((y == 1) & (q == 1), 0.0, q))
    loss = -(y * log_q) - (1.0 - y) * log_not_q
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Sigmoid focal loss: binary cross-entropy down-weighted on well-classified elements.

        ℓ = α_t · (1 − p_t)^γ · BCE(z, y)
        p_t = y·σ(z) + (1 − y)·(1 − σ(z)),   α_t = α·y + (1 − α)·(1 − y)

    BCE is `sigmoid_binary_cross_entropy`. The factor (1 − p_t)^γ is computed as
    exp(γ·log(1 − p_t)) with log(1 − p_t) = logaddexp(log y − softplus(z),
    log(1 − y) − softplus(−z)), so value and gradient stay finite at any finite logit
    (±100 included) for every γ ≥ 0, also for γ < 1 where (1 − p_t)^γ has an infinite
    slope at p_t = 1.

    Args:
      logits: z, floating array of any shape.
      labels: y ∈ [0, 1], broadcastable to the shape of ``logits``; integers and booleans are cast.
      alpha: optional α ∈ [0, 1], the weight of the positive class (RetinaNet uses
        0.25). Default None: no α weighting.
      gamma: γ ≥ 0, the focusing exponent; γ = 0 gives BCE (times α_t).
      label_smoothing: ε ∈ [0, 1], as in `sigmoid_binary_cross_entropy`: y becomes
        (1 − ε)·y + ε/2 everywhere in the formula (in BCE, p_t and α_t), as in Keras's
        ``BinaryFocalCrossentropy(label_smoothing=ε)``.
      where, weights, reduction: as in `sigmoid_binary_cross_entropy`.

    Returns:
      As in `sigmoid_binary_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.sigmoid_focal_loss(jnp.array([0.0, 3.0]), jnp.array([1.0, 1.0]))
      Array([1.7328680e-01, 1.0928333e-04], dtype=float32)

    References:
      Lin, Goyal, Girshick, He & Dollár, "Focal loss for dense object detection",
      ICCV 2017.
    """
    _check_gamma(gamma)
    if alpha is not None:
        C.check_in_range("alpha", alpha, 0.0, 1.0)
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    (logits, labels, alpha, gamma), where, weights = C.float_inputs(
        where,
        weights,
        reduction,
        allow_int=("labels", "alpha", "gamma"),
        logits=logits,
        labels=labels,
        alpha=alpha,
        gamma=gamma,
    )
    z = C.keep(where, logits, 0.0)
    y = _smooth(C.keep(where, labels, 0.0), label_smoothing, 0.5)
    gamma = C.keep(where, gamma, 0.0)
    alpha = C.keep(where, alpha, 0.5)
    loss = N.binary_logit_nll(z, y)
    # 1 − p_t = y·σ(−z) + (1 − y)·σ(z), in log space; finite gradient in y at 0 and 1.
    log_not_pt = N.log_mixture(y, -jax.nn.softplus(z), -jax.nn.softplus(-z))
    loss = jnp.exp(gamma * log_not_pt) * loss
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Softmax focal loss: softmax cross-entropy down-weighted on well-classified examples.

        ℓ = −Σ_c t_c · (1 − p_c)^γ · log p_c,        p = softmax(z)
        ℓ = −(1 − p_y)^γ · log p_y                   for an integer label y

    γ = 0 gives `softmax_cross_entropy`. log(1 − p_c) is computed without cancellation:
    for the most probable class as logsumexp over the other classes minus logsumexp over
    all, elsewhere (where p_c ≤ ½) as log1p(−p_c); the factor is exp(γ·log(1 − p_c)). So
    the value and gradient stay finite at logits of ±100 for every γ ≥ 0, also γ < 1.
    Class-balancing weights (the α of the paper, one per class) are ``class_weights``.

    Args:
      logits: z, floating array with a class axis of size C ≥ 2.
      labels: integer class ids or probabilities, as in `softmax_cross_entropy`.
      axis: the class axis (default the last).
      gamma: γ ≥ 0, the focusing exponent.
      label_smoothing: ε ∈ [0, 1], as in `softmax_cross_entropy`: the target becomes
        t = (1 − ε)·y + ε/K over the K classes with a finite logit, for both label
        kinds (Keras's ``CategoricalFocalCrossentropy(label_smoothing=ε)``); with class
        ids and class weights, ℓ = (1 − ε)·w_y·f_y + (ε/K)·Σ_c w_c·f_c, f_c the focal
        term of class c.
      class_weights, ignore_index, where, weights, reduction: as in
        `softmax_cross_entropy`.

    Returns:
      As in `softmax_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.softmax_focal_loss(jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
      ...                            jnp.array([0, 1]))
      Array([0.01086933, 0.488272], dtype=float32)

    References:
      Lin, Goyal, Girshick, He & Dollár, "Focal loss for dense object detection",
      ICCV 2017.
    """
    _check_gamma(gamma)
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    x, labels, integer, axis, keep, weights, cw, omega = _categorical_inputs(
        "logits",
        logits,
        labels,
        axis=axis,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        weights=weights,
        reduction=reduction,
    )
    focal = not _is_zero(gamma)
    if focal:
        gamma = jnp.asarray(gamma, x.dtype)
    classes = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis)
    # log p floored at the lowest float (N.finite_floor): finite everywhere, so a
    # logsumexp over any subset of classes is finite too, even one of −inf logits only.
    log_p = N.log_softmax(x, axis)
    smooth = not _is_zero(label_smoothing)
    if smooth:
        # Every class gets target mass: the per-class terms of the probability labels,
        # with the smoothed one-hot target (its mean still divides by ω = w_y).
        finite, count = _uniform_over_finite(x, axis)
        if integer:
            labels = _one_hot(labels, x.shape[axis], axis, x.dtype)
        labels = _smooth(labels, label_smoothing, finite / count)
    if integer and not smooth:
        log_p_y = _pick(log_p, labels, axis)
        loss = N.negate(log_p_y)
        if focal:
            # As for probability labels: log(1 − p_y) from the other classes where p_y ≥ ½,
            # else log1p(−p_y). The logsumexp alone puts a cotangent of γ·ℓ on log p
            # (1e7 at a logit gap of 1e7), which cancels against the normalizer's in the
            # backward pass: the top class's gradient came out 0, and the row's gradient no
            # longer summed to 0.
            top = log_p_y >= -N.LOG_2
            others = jnp.where(classes == jnp.expand_dims(labels, axis), -jnp.inf, log_p)
            log_not_top = jax.nn.logsumexp(others, axis=axis, keepdims=True)
            p_rest = jnp.exp(jnp.where(top, -jnp.inf, log_p_y))
            log_not_p = jnp.where(top, log_not_top, jnp.log1p(-p_rest))
            loss = jnp.exp(gamma * log_not_p) * loss
        loss = jnp.squeeze(loss, axis)
        if omega is not None:
            loss = omega * loss  # PyTorch's class weighting, as in softmax_cross_entropy
    else:
        factor = 1.0
        if focal:
            top = classes == jnp.argmax(log_p, axis=axis, keepdims=True)
            others = jnp.where(top, -jnp.inf, log_p)
            log_not_top = jax.nn.logsumexp(others, axis=axis, keepdims=True)
            p_rest = jnp.exp(others)  # each ≤ ½, so log1p(−p) does not cancel
            log_not_p = jnp.where(top, log_not_top, jnp.log1p(-p_rest))
            factor = jnp.exp(gamma * log_not_p)
        if cw is not None:
            labels = labels * _along(cw, x.ndim, axis)  # −Σ_c w_c·t_c·(1 − p_c)^γ·log p_c
        # t·log p first: a class with a −inf logit has log p at the lowest float, and the
        # factor's cotangent w·log p·t would overflow to −inf for a weight w > 1 before
        # t = 0 could zero it (0·inf = NaN); t·log p is exactly 0 there.
        loss = N.negate(jnp.sum(factor * (labels * log_p), axis=axis))
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction, denominator=omega)


# --------------------------------------------------------------------------------------
# Poly-1
# --------------------------------------------------------------------------------------


def poly_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    epsilon: float = 2.0,
    axis: int = -1,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Poly-1 loss: softmax cross-entropy plus ε times the first polynomial term (1 − p_t).

        ℓ = CE(z, t) + ε · Σ_c t_c (1 − p_c),        p = softmax(z)
        ℓ = −log p_y + ε · (1 − p_y)                  for an integer label y (t one-hot)

    CE is `softmax_cross_entropy` with the same target t (label smoothing included); the
    polynomial term is Σ_c t_c (1 − p_c), which is 1 − p_t for a target that sums to 1
    (``optax.losses.poly_loss_cross_entropy``'s definition). For a class id it is
    computed as −expm1(log p_y), without cancellation when p_y is small. ε = 0 gives
    `softmax_cross_entropy`; the paper recommends ε = 2 for ImageNet classification and
    ε = −1 for detection (any ε ≥ −1 keeps the loss decreasing in p_t).

    Args:
      logits: z, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``logits``' shape without ``axis``, or
        floating target probabilities broadcastable to ``logits``' shape.
      epsilon: ε, the coefficient of (1 − p_t); a float (or a traced scalar).
      axis: the class axis of ``logits`` (default the last).
      label_smoothing: as in `softmax_cross_entropy`; applied to the target of both
        terms.
      where, weights, reduction: as in `softmax_cross_entropy` (per example).

    Returns:
      As in `softmax_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> jaxloss.poly_cross_entropy(logits, jnp.array([0, 1]), epsilon=1.0)
      Array([0.45255888, 1.765279  ], dtype=float32)

    References:
      Leng et al., "PolyLoss: a polynomial expansion perspective of classification loss
      functions", ICLR 2022, §4 (Poly-1).
    """
    if C._is_concrete_number(epsilon) and not np.isfinite(epsilon):
        raise ValueError(f"`epsilon` must be a finite number, got {epsilon!r}.")
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    cat = _categorical_inputs(
        "logits",
        logits,
        labels,
        axis=axis,
        class_weights=None,
        ignore_index=None,
        where=where,
        weights=weights,
        reduction=reduction,
    )
    x, labels, integer, axis, keep, weights = cat[:6]  # the record's first six fields
    # The inputs are validated and their masked rows replaced; the cross-entropy term is
    # the library's one, unreduced, on those safe inputs.
    ce = _categorical(
        "logits",
        x,
        labels,
        normalize=True,
        axis=axis,
        label_smoothing=label_smoothing,
        class_weights=None,
        ignore_index=None,
        where=None,
        weights=None,
        reduction="none",
    )
    smooth = not _is_zero(label_smoothing)
    log_p = N.log_softmax(x, axis)
    if integer:
        poly = -jnp.expm1(jnp.squeeze(_pick(log_p, labels, axis), axis))
        if smooth:
            _, count = _uniform_over_finite(x, axis)
            uniform = 1.0 - 1.0 / jnp.squeeze(count, axis)  # Σ_c (1 − p_c)/K over finite c
            poly = _smooth(poly, label_smoothing, uniform)
    else:
        target = labels
        if smooth:
            finite, count = _uniform_over_finite(x, axis)
            target = _smooth(target, label_smoothing, finite / count)
        poly = jnp.sum(target * -jnp.expm1(log_p), axis=axis)
    loss = ce + jnp.asarray(epsilon, x.dtype) * poly
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Generalized cross-entropy (noise-robust)
# --------------------------------------------------------------------------------------


def categorical_generalized_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    q: float = 0.5,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Generalized cross-entropy (L_q): a noise-robust softmax loss between CE and MAE.

        ℓ = (1 − p_y^q) / q                       for an integer label y, p = softmax(z)
        ℓ = Σ_c t_c · (1 − p_c^q) / q              for probability labels t

    The negative Box–Cox transform of p_y: q → 0 gives the cross-entropy −log p_y, q = 1
    the mean absolute error of the probabilities, 1 − p_y (= ½‖e_y − p‖₁). Bounded by
    1/q, so a mislabelled example cannot dominate the gradient, which is
    −p_y^q·(e_y − p): the cross-entropy's gradient weighted by p_y^q. Computed as
    −expm1(q·log p_y)/q from log_softmax (no 1 − p^q cancellation where p_y ≈ 1); a
    −inf logit is a class of probability 0 (a label on it gets the limit 1/q, finite).

    Args:
      logits: z, floating array with a class axis of size C. For a model that outputs
        probabilities (Keras's ``y_pred``) pass ``jnp.log(probs)``: log-probabilities
        are valid logits.
      labels: integer class ids broadcastable to ``logits``' shape without ``axis``, or
        floating target probabilities broadcastable to ``logits``' shape (the rule of
        `softmax_cross_entropy`).
      q: q ∈ (0, 1], the exponent (Keras's default 0.5; the paper uses 0.7).
      axis: the class axis (default the last).
      where, weights, reduction: as in `softmax_cross_entropy` (per example).

    Returns:
      As in `softmax_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> probs = jnp.array([[0.25, 0.75], [0.5, 0.5]])
      >>> jaxloss.categorical_generalized_cross_entropy(jnp.log(probs), jnp.array([0, 1]))
      Array([1.       , 0.5857864], dtype=float32)

    References:
      Zhang & Sabuncu, "Generalized cross entropy loss for training deep neural
      networks with noisy labels", NeurIPS 2018, eq. 6; the formula of
      ``keras.losses.CategoricalGeneralizedCrossEntropy``, (1 − p^q)/q.
    """
    if C._is_concrete_number(q) and not (0.0 < q <= 1.0):
        raise ValueError(
            f"`q` must be in (0, 1], got {q!r}. Its q → 0 limit is the cross-entropy: use "
            "`softmax_cross_entropy` for it."
        )
    cat = _categorical_inputs(
        "logits",
        logits,
        labels,
        axis=axis,
        class_weights=None,
        ignore_index=None,
        where=where,
        weights=weights,
        reduction=reduction,
    )
    x, labels, integer, axis, keep, weights = cat[:6]  # the record's first six fields
    q = jnp.asarray(q, x.dtype)
    log_p = N.log_softmax(x, axis)
    if integer:
        log_p_y = jnp.squeeze(_pick(log_p, labels, axis), axis)
        loss = N.negate(jnp.expm1(q * log_p_y)) / q
    else:
        # t·(1 − p^q) with t first: where t = 0 the term is exactly 0.
        loss = jnp.sum(labels * N.negate(jnp.expm1(q * log_p)), axis=axis) / q
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Label smoothing as a label transform
# --------------------------------------------------------------------------------------


def smooth_labels(
    labels: ArrayLike,
    alpha: float | ArrayLike,
    *,
    axis: int = -1,
    num_classes: int | None = None,
) -> jax.Array:
    """Label smoothing: the labels mixed with the uniform distribution over K classes.

        t = (1 − α)·y + α/K

    ``optax.smooth_labels`` (for its default ``where=None``), for targets that a loss
    takes as probabilities. The softmax losses here take ``label_smoothing=α`` instead,
    which also works on class ids and spreads α only over classes with a finite logit;
    use this transform for a loss without that option or to inspect the targets.
    ``labels`` may be one-hot or probability vectors (floating, the classes along
    ``axis``), or integer class ids with ``num_classes`` (then the result gains the
    class axis at ``axis``, as ``jax.nn.one_hot`` places it).

    Args:
      labels: floating one-hot or probability labels with the classes along ``axis``,
        or integer class ids in [0, ``num_classes``) of any shape. A concrete negative
        entry (a log-probability, or a negative id) raises; under ``jit`` a negative
        probability gives NaN, and so does an id outside [0, K) (never the uniform
        vector of an all-zero one-hot row).
      alpha: α ∈ [0, 1], the smoothing factor: a Python number or a scalar array.
      axis: the class axis of floating ``labels``, or where the class axis goes in the
        result for class ids (default the last).
      num_classes: K, required for class ids; for floating labels optional, and then
        it must equal ``labels.shape[axis]``.

    Returns:
      The smoothed labels: ``labels``' shape for floating labels, ``labels.shape``
      with a class axis of size K inserted at ``axis`` for class ids. float32, or
      float64 for float64 input (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.smooth_labels(jnp.array([[0.0, 1.0, 0.0, 0.0]]), 0.2)
      Array([[0.05, 0.85, 0.05, 0.05]], dtype=float32)
      >>> jaxloss.smooth_labels(jnp.array([1, 3]), 0.2, num_classes=4)
      Array([[0.05, 0.85, 0.05, 0.05],
             [0.05, 0.05, 0.05, 0.85]], dtype=float32)

    References:
      Szegedy et al., "Rethinking the Inception architecture for computer vision",
      CVPR 2016, §7; Müller, Kornblith & Hinton, "When does label smoothing help?",
      NeurIPS 2019.
    """
    C.check_in_range("alpha", alpha, 0.0, 1.0)
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 1
    ):
        raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes!r}.")
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    y = jnp.asarray(labels)
    a = C.as_float("alpha", alpha, allow_int=True)
    if a.ndim != 0:
        raise ValueError(
            f"`alpha` must be a scalar (one smoothing factor), got an array of shape {a.shape}."
        )
    if jnp.issubdtype(y.dtype, jnp.integer):
        if num_classes is None:
            raise TypeError(
                f"Integer `labels` (class ids, shape {y.shape}) need `num_classes=`: the "
                "number of classes K is not in the ids. For one-hot or probability labels "
                "pass a floating array."
            )
        if not isinstance(y, jax.core.Tracer):
            values = np.asarray(y)
            outside = values[(values < 0) | (values >= num_classes)]
            if outside.size:
                raise ValueError(
                    f"`labels` hold class ids outside [0, num_classes={num_classes}): "
                    f"{sorted({int(v) for v in outside.ravel()[:1000]})[:3]}. Drop padding "
                    "ids before smoothing (the losses' `ignore_index=`/`where=` do that), or "
                    "check `num_classes`."
                )
        dtype = C.compute_dtype(a)
        ids = _class_ids(y, num_classes)
        # An id outside [0, K) one-hot encodes to a row of zeros, which smoothing would
        # turn into the plausible uniform vector: NaN instead.
        bad = jnp.expand_dims(ids < 0, -1)
        target = jnp.where(bad, jnp.nan, jax.nn.one_hot(ids, num_classes, dtype=dtype))
        out = _smooth(target, a.astype(dtype), 1.0 / num_classes)
        return jnp.moveaxis(out, -1, _class_axis(axis, out, "labels"))
    y = C.as_float("labels", y)
    axis = _class_axis(axis, y, "labels")
    n_classes = y.shape[axis]
    if num_classes is not None and num_classes != n_classes:
        raise ValueError(
            f"`num_classes={num_classes}` does not match the {n_classes} classes of `labels` "
            f"{y.shape} along axis {axis}. Leave `num_classes` out for floating labels, or "
            "check the class axis."
        )
    C.check_probabilities(_PROBABILITY_HINT, labels=y)
    dtype = C.compute_dtype(y, a)
    y = C.probabilities_or_nan(y.astype(dtype))
    return _smooth(y, a.astype(dtype), 1.0 / n_classes)
