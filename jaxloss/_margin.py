"""Margin losses: hinge, perceptron and ranking losses on raw scores.

Binary losses take labels in {−1, +1} (a boolean label means True = +1); multiclass
losses take integer class ids and share the class-axis handling of the softmax losses
(``_classification._class_axis`` / ``_pick``). Every loss has the shape of its scores
(without the class axis); labels may broadcast to it, never enlarge it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _classification as K
from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike

FORMULATIONS = ("crammer_singer", "weston_watkins")


def _check_margin(value, *, nonnegative: bool = True) -> None:
    """Reject a margin given as a Python number that is not finite (or is negative)."""
    if value is None:
        raise TypeError("`margin` is required, got None.")
    low = 0.0 if nonnegative else -math.inf
    if C._is_concrete_number(value) and not (low <= value < math.inf):
        what = "a non-negative finite number" if nonnegative else "a finite number"
        raise ValueError(f"`margin` must be {what}, got {value!r}.")


def _signs(labels: ArrayLike, shape, dtype, where, pred_name: str) -> jax.Array:
    """Labels in {−1, +1} as floats of ``dtype`` (bool: True = +1), checked when concrete.

    A traced label outside {−1, +1} cannot be seen at trace time; it gives NaN, never a
    silent finite loss.
    """
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    y = jnp.asarray(labels)
    C.check_fits(pred_name, shape, labels=y)
    if y.dtype == jnp.bool_:
        return jnp.where(y, 1.0, -1.0).astype(dtype)
    if not jnp.issubdtype(y.dtype, jnp.number) or jnp.iscomplexobj(y):
        raise TypeError(f"`labels` must be −1/+1 numbers or booleans, got dtype {y.dtype}.")
    if not isinstance(y, jax.core.Tracer):
        bad = ~np.isin(np.asarray(y), (-1, 1))
        if where is not None and not isinstance(where, jax.core.Tracer):
            bad = bad & np.broadcast_to(np.asarray(where), bad.shape)
        if bad.any():
            values = np.unique(np.asarray(y)[bad])[:5]
            raise ValueError(
                f"`labels` must be −1 or +1 (or booleans, True = +1); got {values.tolist()}. "
                "For 0/1 labels pass `labels.astype(bool)` or `2 * labels - 1`."
            )
    y = y.astype(dtype)
    return jnp.where(jnp.abs(y) == 1, y, jnp.nan)


def _binary_inputs(scores, labels, where, weights, reduction, name="scores"):
    """(scores, ±1 labels, where, weights) of a binary margin loss, masked rows made safe."""
    s = C.as_float(name, scores)
    where, weights = C.prepare(s.shape, where, weights, reduction)
    dtype = C.compute_dtype(s)
    y = _signs(labels, s.shape, dtype, where, name)
    s = C.keep(where, s.astype(dtype), 0.0)
    y = C.keep(where, y, 1.0)
    return s, y, where, weights


def hinge_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 1.0,
    squared: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Binary hinge loss (the SVM loss) on scores, with labels in {−1, +1}.

        ℓ = max(0, m − y·s)          (squared=True: max(0, m − y·s)²)

    ``optax.losses.hinge_loss`` is the case m = 1 (it takes no other margin). Keras
    ``Hinge`` / ``SquaredHinge`` compute the same terms but average them over the last
    axis (``reduction="mean"`` over that axis here) and silently map 0/1 labels to −1/+1;
    here 0 is an error (pass booleans, False = −1). The gradient at the kink y·s = m is
    the subgradient 0.

    Args:
      scores: s, floating array of any shape (decision values, not probabilities).
      labels: y, −1 or +1 (any numeric dtype) or booleans (True = +1), broadcastable to
        ``scores``' shape. Concrete labels outside {−1, +1} raise ``ValueError``; traced
        ones give NaN.
      margin: m ≥ 0.
      squared: square the hinge (the L2-SVM loss), smooth at the kink.
      where: optional boolean mask broadcastable to ``scores``; True keeps an element.
      weights: optional non-negative weights broadcastable to ``scores``.
      reduction: ``"none"`` (per element), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``scores``' shape for ``"none"``, else a scalar; float32, or float64 for float64
      scores (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.hinge_loss(jnp.array([2.0, 0.5, -1.0]), jnp.array([1, 1, 1]))
      Array([0. , 0.5, 2. ], dtype=float32)
      >>> jaxloss.hinge_loss(jnp.array([2.0, 0.5]), jnp.array([True, False]), squared=True)
      Array([0.  , 2.25], dtype=float32)

    References:
      Cortes & Vapnik, "Support-vector networks", Machine Learning 20 (1995).
    """
    _check_margin(margin)
    s, y, where, weights = _binary_inputs(scores, labels, where, weights, reduction)
    loss = jax.nn.relu(margin - y * s)
    if squared:
        loss = jnp.square(loss)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def perceptron_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Perceptron loss: the hinge with margin 0, with labels in {−1, +1}.

        ℓ = max(0, −y·s)

    Equal to ``optax.losses.perceptron_loss``. Its gradient at y·s = 0 is the
    subgradient 0.

    Args:
      scores: s, floating array of any shape.
      labels: y, −1/+1 or booleans (True = +1), broadcastable to ``scores``' shape.
      where, weights, reduction: as in `hinge_loss`.

    Returns:
      As in `hinge_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.perceptron_loss(jnp.array([2.0, -0.5]), jnp.array([1, 1]))
      Array([0. , 0.5], dtype=float32)

    References:
      Rosenblatt, "The perceptron", Psychological Review 65 (1958).
    """
    s, y, where, weights = _binary_inputs(scores, labels, where, weights, reduction)
    return C.reduce(jax.nn.relu(-y * s), where=where, weights=weights, reduction=reduction)


def soft_margin_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Soft-margin (logistic) loss with labels in {−1, +1}.

        ℓ = log(1 + exp(−y·s))

    Equal to ``torch.nn.functional.soft_margin_loss`` (whose ``"mean"`` is this mean),
    and to `sigmoid_binary_cross_entropy` with 0/1 labels (y + 1)/2; computed the same
    way (`_numerics.binary_logit_nll`), so it never overflows and keeps its exp(−|s|)
    size for confident correct scores.

    Args:
      scores: s, floating array of any shape.
      labels: y, −1/+1 or booleans (True = +1), broadcastable to ``scores``' shape.
      where, weights, reduction: as in `hinge_loss`.

    Returns:
      As in `hinge_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.soft_margin_loss(jnp.array([0.0, 100.0]), jnp.array([1, -1]))
      Array([  0.6931472, 100.       ], dtype=float32)
    """
    s, y, where, weights = _binary_inputs(scores, labels, where, weights, reduction)
    loss = N.binary_logit_nll(s, 0.5 * (y + 1.0))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def hinge_embedding_loss(
    distances: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 1.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Hinge embedding loss on distances x, with labels y in {−1, +1}.

        ℓ = x                    if y = +1
        ℓ = max(0, m − x)        if y = −1

    Similar pairs (y = +1) are pulled together, dissimilar ones (y = −1) pushed beyond
    the margin. Equal to ``torch.nn.functional.hinge_embedding_loss`` (whose ``"mean"``
    is this mean). x is usually a distance between two embeddings (e.g. an L1 distance), but any
    score works. The gradient at the kink x = m of a y = −1 pair is the subgradient 0, as
    in `hinge_loss`.

    Args:
      distances: x, floating array of any shape.
      labels: y, −1 or +1 (any numeric dtype) or booleans (True = +1), broadcastable to
        ``distances``' shape. Concrete labels outside {−1, +1} raise ``ValueError``
        (torch reads any other label as both cases at once); traced ones give NaN.
      margin: m, a finite number (torch's default 1).
      where, weights, reduction: as in `hinge_loss` (broadcast to ``distances``).

    Returns:
      ``distances``' shape for ``"none"``, else a scalar; float32, or float64 for
      float64 input (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.hinge_embedding_loss(jnp.array([0.3, 0.3, 2.0]), jnp.array([1, -1, -1]))
      Array([0.3, 0.7, 0. ], dtype=float32)

    References:
      The loss of ``torch.nn.HingeEmbeddingLoss``; Mobahi, Collobert & Weston, "Deep
      learning from temporal coherence in video", ICML 2009.
    """
    _check_margin(margin, nonnegative=False)
    x, y, where, weights = _binary_inputs(distances, labels, where, weights, reduction, "distances")
    loss = jnp.where(y > 0, x, jax.nn.relu(margin - x))
    loss = jnp.where(jnp.isnan(y), jnp.nan, loss)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def margin_ranking_loss(
    scores_1: ArrayLike,
    scores_2: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Pairwise ranking hinge: y = +1 asks for s₁ > s₂ + m, y = −1 for s₂ > s₁ + m.

        ℓ = max(0, −y·(s₁ − s₂) + m)

    Equal to ``torch.nn.functional.margin_ranking_loss`` (same argument order). The loss
    has the shape of ``scores_1``; ``scores_2`` and ``labels`` broadcast to it (e.g. a
    scalar threshold), never enlarge it.

    Args:
      scores_1: s₁, floating array of any shape.
      scores_2: s₂, floating array broadcastable to ``scores_1``' shape.
      labels: y, −1/+1 or booleans (True = +1), broadcastable to ``scores_1``' shape.
      margin: m, a finite number (may be negative).
      where, weights, reduction: as in `hinge_loss` (broadcast to ``scores_1``).

    Returns:
      ``scores_1``' shape for ``"none"``, else a scalar; float32, or float64 for float64
      scores.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.margin_ranking_loss(jnp.array([1.0, 1.0]), jnp.array([0.5, 0.5]),
      ...                             jnp.array([1, -1]), margin=0.1)
      Array([0. , 0.6], dtype=float32)
    """
    _check_margin(margin, nonnegative=False)
    s1 = C.as_float("scores_1", scores_1)
    s2 = C.as_float("scores_2", scores_2)
    C.check_fits("scores_1", s1.shape, scores_2=s2)
    where, weights = C.prepare(s1.shape, where, weights, reduction)
    dtype = C.compute_dtype(s1, s2)
    y = C.keep(where, _signs(labels, s1.shape, dtype, where, "scores_1"), 1.0)
    diff = C.keep(where, s1.astype(dtype) - s2.astype(dtype), 0.0)
    loss = jax.nn.relu(margin - y * diff)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def _multiclass_inputs(scores, labels, axis, where, weights, reduction):
    """(scores, class ids, axis, where, weights); a dropped example's row is made safe."""
    s = C.as_float("scores", scores)
    axis = K._class_axis(axis, s, "scores")
    batch = K._batch_shape(s, axis)
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`labels` must be integer class ids, got dtype {labels.dtype}. Class ids stored "
            "as floats are ambiguous with scores: cast them, e.g. `labels.astype(jnp.int32)`."
        )
    if not K._broadcasts_to(labels.shape, batch):
        raise ValueError(
            f"`labels` of shape {labels.shape} (class ids) must broadcast to the shape of "
            f"`scores` without its class axis {axis}, {batch}."
        )
    labels = jnp.broadcast_to(labels, batch)
    where, weights = C.prepare(batch, where, weights, reduction)
    s = s.astype(C.compute_dtype(s))
    if where is not None:
        s = C.keep(jnp.expand_dims(where, axis), s, 0.0)
        labels = jnp.where(where, labels, 0)
    return s, labels, axis, where, weights


def multiclass_hinge_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 1.0,
    formulation: str = "crammer_singer",
    power: int = 1,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Multiclass hinge loss on scores s with integer labels y, in two formulations.

        crammer_singer:  ℓ = max(0, max_{j≠y} (m + s_j) − s_y)^power
        weston_watkins:  ℓ = Σ_{j≠y} max(0, m − s_y + s_j)^power / C

    Crammer–Singer (the default) penalizes the best wrong class; it equals
    ``optax.losses.multiclass_hinge_loss`` for m = 1, power = 1. Weston–Watkins sums
    over every wrong class, divided by the number of classes C: it equals
    ``torch.nn.functional.multi_margin_loss(p=power, margin=m, weight=w,
    reduction="none")`` with ``class_weights=w``, which multiply each example's loss by
    w_y (torch's kernel multiplies each term after the power; its documentation writes
    w_y inside the power). With class weights ``"mean"`` divides by Σ w_y over the kept
    examples, as for `softmax_cross_entropy`; torch's ``multi_margin_loss`` divides by
    N: ``jnp.mean`` of the ``"none"`` output is its number. With one class both
    formulations are 0. An integer label outside [0, C) gives NaN.

    Args:
      scores: s, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``scores``' shape without ``axis``.
      margin: m ≥ 0.
      formulation: ``"crammer_singer"`` or ``"weston_watkins"``.
      power: 1 (hinge) or 2 (squared hinge).
      class_weights: optional non-negative weights w of shape [C]: example n's loss is
        multiplied by w[y_n], and ``"mean"`` divides by Σ w[y_n] over kept examples.
      axis: the class axis of ``scores`` (default the last).
      where: optional boolean mask broadcastable to the per-example loss (``scores``'
        shape without ``axis``); a dropped example's row gets exactly zero gradient.
      weights: optional non-negative per-example weights, broadcastable like ``where``.
      reduction: ``"none"`` (per example), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``scores``' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 scores.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> s = jnp.array([[2.0, 1.5, 0.0], [0.0, 3.0, 1.0]])
      >>> jaxloss.multiclass_hinge_loss(s, jnp.array([0, 0]))
      Array([0.5, 4. ], dtype=float32)
      >>> jaxloss.multiclass_hinge_loss(s, jnp.array([0, 0]), formulation="weston_watkins")
      Array([0.16666667, 2.        ], dtype=float32)

    References:
      Crammer & Singer, "On the algorithmic implementation of multiclass kernel-based
      vector machines", JMLR 2 (2001); Weston & Watkins, "Support vector machines for
      multi-class pattern recognition", ESANN 1999.
    """
    _check_margin(margin)
    if formulation not in FORMULATIONS:
        raise ValueError(f"`formulation` must be one of {FORMULATIONS}, got {formulation!r}.")
    if isinstance(power, bool) or power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2, got {power!r}.")
    s, labels, axis, where, weights = _multiclass_inputs(
        scores, labels, axis, where, weights, reduction
    )
    s_y = K._pick(s, labels, axis)  # NaN for an id outside [0, C)
    is_y = jnp.expand_dims(labels, axis) == jax.lax.broadcasted_iota(labels.dtype, s.shape, axis)
    if formulation == "crammer_singer":
        other = jnp.max(jnp.where(is_y, -jnp.inf, s), axis=axis, keepdims=True)
        loss = jax.nn.relu(margin + other - s_y) ** power
        loss = jnp.squeeze(loss, axis)
    else:
        terms = jnp.where(is_y, 0.0, jax.nn.relu(margin - s_y + s) ** power)
        loss = jnp.sum(terms, axis=axis) / s.shape[axis]
    cw = K._class_weights(class_weights, s.shape[axis])
    omega = None
    if cw is not None:
        ids = K._past_the_end(labels, s.shape[axis])  # NaN weight for a bad label
        omega = jnp.take(cw.astype(loss.dtype), ids, mode="fill", fill_value=jnp.nan)
        loss = omega * loss
    return C.reduce(loss, where=where, weights=weights, reduction=reduction, denominator=omega)


def multiclass_perceptron_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Multiclass perceptron loss: how far the label's score is below the best score.

        ℓ = max_j s_j − s_y

    Equal to ``optax.losses.multiclass_perceptron_loss``; it is 0 when the label has the
    highest score. An integer label outside [0, C) gives NaN.

    Args:
      scores: s, floating array with a class axis.
      labels: integer class ids broadcastable to ``scores``' shape without ``axis``.
      axis, where, weights, reduction: as in `multiclass_hinge_loss`.

    Returns:
      As in `multiclass_hinge_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.multiclass_perceptron_loss(jnp.array([[2.0, 1.5, 0.0]]), jnp.array([1]))
      Array([0.5], dtype=float32)

    References:
      Collins, "Discriminative training methods for hidden Markov models", EMNLP 2002.
    """
    s, labels, axis, where, weights = _multiclass_inputs(
        scores, labels, axis, where, weights, reduction
    )
    loss = jnp.max(s, axis=axis) - jnp.squeeze(K._pick(s, labels, axis), axis)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def multilabel_margin_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Multi-label hinge loss: every target class above every non-target class by 1.

        ℓ = Σ_{j ∈ Y} Σ_{i ∉ Y} max(0, 1 − (s_j − s_i)) / C

    The formula of ``torch.nn.functional.multilabel_margin_loss``, with its label format:
    ``labels`` has the scores' shape and lists the target classes Y of each example,
    ended by the first negative entry (torch pads with −1: ``[3, 0, -1, 1]`` means
    Y = {3, 0}; what follows the −1 is ignored). A class listed twice counts twice (as
    in torch). An example with no target class has loss 0. The sum runs over C × C pairs,
    so memory grows as C² per example. The gradient at a kink (s_j − s_i = 1) is the
    subgradient 0.

    Args:
      scores: s, floating array with a class axis of size C.
      labels: integer array of class ids, broadcastable to ``scores``' shape: per
        example, the target classes along ``axis``, then −1 padding. Concrete ids ≥ C
        before the first −1 raise ``ValueError``; traced ones give NaN.
      axis: the class axis of ``scores`` and ``labels`` (default the last).
      where, weights, reduction: as in `multiclass_hinge_loss`.

    Returns:
      As in `multiclass_hinge_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> s = jnp.array([[0.1, 0.2, 0.4, 0.8]])
      >>> jaxloss.multilabel_margin_loss(s, jnp.array([[3, 0, -1, 1]]))
      Array([0.85], dtype=float32)

    References:
      ``torch.nn.MultiLabelMarginLoss``; Crammer & Singer, "A family of additive online
      algorithms for category ranking", JMLR 3 (2003).
    """
    s = C.as_float("scores", scores)
    axis = K._class_axis(axis, s, "scores")
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    y = jnp.asarray(labels)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(
            f"`labels` must be integer class ids padded with -1, got dtype {y.dtype}: cast "
            "them, e.g. `labels.astype(jnp.int32)`. For 0/1 multi-hot targets use "
            "`sigmoid_binary_cross_entropy`."
        )
    C.check_fits("scores", s.shape, labels=y)
    n = s.shape[axis]
    where, weights = C.prepare(K._batch_shape(s, axis), where, weights, reduction)
    y = jnp.moveaxis(jnp.broadcast_to(y, s.shape), axis, -1)
    s = jnp.moveaxis(s.astype(C.compute_dtype(s)), axis, -1)
    listed = jnp.cumprod(y >= 0, axis=-1).astype(bool)  # the entries before the first −1
    bad = listed & (y >= n) if jnp.iinfo(y.dtype).max >= n else jnp.zeros(y.shape, bool)
    if not isinstance(y, jax.core.Tracer) and not isinstance(where, jax.core.Tracer):
        found = np.asarray(bad)
        if where is not None:
            found = found & np.expand_dims(np.broadcast_to(np.asarray(where), found.shape[:-1]), -1)
        if found.any():
            raise ValueError(
                f"`labels` hold class ids {sorted(set(np.asarray(y)[found].tolist()))[:3]} "
                f"outside [0, {n}) before their first -1; list each example's target "
                "classes, then pad with -1."
            )
    if where is not None:
        s = C.keep(where[..., None], s, 0.0)
        listed = listed & where[..., None]
    ids = jnp.where(listed & ~bad, y, 0).astype(jnp.int32)
    # [..., j, i]: whether list entry j is class i
    entry_is = listed[..., :, None] & (ids[..., :, None] == jnp.arange(n))
    is_target = jnp.any(entry_is, axis=-2)
    s_j = jnp.take_along_axis(s, ids, axis=-1)
    terms = jax.nn.relu(1.0 - s_j[..., :, None] + s[..., None, :])
    terms = jnp.where(listed[..., :, None] & ~is_target[..., None, :], terms, 0.0)
    loss = jnp.sum(terms, axis=(-2, -1)) / n
    loss = jnp.where(jnp.any(bad, axis=-1), jnp.nan, loss)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)
