"""Embedding (metric-learning) losses: cosine similarity and distance, triplet loss.

Each loss has the shape of its first input without the feature ``axis``; the other
inputs broadcast to the first's shape, never enlarge it. Norms go through
``_numerics.safe_norm``, so zero vectors and coinciding points give finite values and
finite (or zero) gradients.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C
from jaxloss import _margin as M
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


def _feature_axis(axis, x: jax.Array, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"`axis` must be an int (the feature axis), got {axis!r}.")
    axis = operator.index(axis)
    if x.ndim == 0:
        raise ValueError(f"`{name}` must have a feature axis; got a scalar.")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis` {axis} is out of range for `{name}` of shape {x.shape}.")
    axis = axis % x.ndim
    if x.shape[axis] == 0:
        raise ValueError(
            f"`{name}` has a feature axis of size 0 (axis {axis} of shape {x.shape}): there "
            "are no features to compare. Check `axis` and how the embeddings were sliced."
        )
    return axis


def _check_eps(eps) -> None:
    if C._is_concrete_number(eps) and not (0 <= eps < math.inf):
        raise ValueError(f"`eps` must be a non-negative finite number, got {eps!r}.")


def _vectors(names, arrays, axis, where, weights, reduction):
    """Validate vectors of one shape family: the first's shape rules, ``axis`` is features.

    Returns (arrays in the compute dtype, axis, where, weights); the rows of dropped
    examples are replaced by ones before any norm is taken (double where).
    """
    arrays = [C.as_float(n, a) for n, a in zip(names, arrays, strict=True)]
    first = arrays[0]
    axis = _feature_axis(axis, first, names[0])
    C.check_fits(names[0], first.shape, **dict(zip(names[1:], arrays[1:], strict=True)))
    batch = first.shape[:axis] + first.shape[axis + 1 :]
    where, weights = C.prepare(batch, where, weights, reduction)
    dtype = C.compute_dtype(*arrays)
    # Broadcast before any norm: a feature axis of size 1 repeats its entry D times.
    arrays = [jnp.broadcast_to(a.astype(dtype), first.shape) for a in arrays]
    if where is not None:
        row = jnp.expand_dims(where, axis)
        arrays = [C.keep(row, a, 1.0) for a in arrays]
    return arrays, axis, where, weights


def normalize(x: jax.Array, axis: int, eps: float | jax.Array) -> jax.Array:
    """x / max(‖x‖₂, ε) along ``axis`` (the unit vector; 0 stays 0), finite gradient at 0.

    The building block of `cosine_similarity` for callers that form many dot products
    (a similarity matrix): normalize once, then multiply. ``x`` is used as given (no
    dtype promotion or validation); the Jacobian at x = 0 is I/ε for ε > 0, and 0 for
    ε = 0, where x/‖x‖ has no limit (a double where: 0/0 is never formed). A traced
    negative ε gives NaN.
    """
    den = jnp.maximum(N.safe_norm(x, axis, keepdims=True), eps)
    den = jnp.where(jnp.asarray(eps) < 0, jnp.nan, den)
    zero = den == 0  # only for ε = 0 and x = 0
    return jnp.where(zero, 0.0, x / jnp.where(zero, 1.0, den))


def _cosine(x: jax.Array, y: jax.Array, axis: int, eps) -> jax.Array:
    return jnp.sum(normalize(x, axis, eps) * normalize(y, axis, eps), axis=axis)


def cosine_similarity(
    x: ArrayLike,
    y: ArrayLike,
    *,
    axis: int = -1,
    eps: float = 1e-8,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Cosine similarity of x and y along ``axis``, finite (0) at zero vectors.

        cos(x, y) = ⟨x, y⟩ / (max(‖x‖₂, ε) · max(‖y‖₂, ε))

    The formula of ``torch.nn.functional.cosine_similarity`` (PyTorch ≥ 1.12): each norm
    is floored at ε separately, so a zero vector has similarity 0 with everything and a
    finite gradient (of size 1/ε), never NaN. With ε = 0 a zero vector still has
    similarity 0, and gradient 0 (the cosine has no limit, hence no derivative, there;
    torch gives NaN). ``optax.losses.cosine_similarity`` floors
    each *squared* norm at its ``epsilon``, so it equals this with ε = √epsilon (its
    default epsilon = 0 gives NaN for a zero vector).
    The norms use a scaled, overflow-free computation (`_numerics.safe_norm`).

    Args:
      x: floating array with a feature axis (of size ≥ 1: an empty feature axis raises).
      y: floating array broadcastable to ``x``' shape.
      axis: the feature axis (default the last).
      eps: ε ≥ 0, the floor of each norm (a negative ε given as a Python number raises;
        a traced one gives NaN).
      where: optional boolean mask broadcastable to ``x``' shape without ``axis``.
      weights: optional non-negative weights, broadcastable like ``where``.
      reduction: ``"none"`` (per vector pair), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``x``' shape without ``axis`` for ``"none"``, else a scalar; float32, or float64
      for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
      >>> jaxloss.cosine_similarity(x, jnp.array([1.0, 0.0]))
      Array([1.       , 0.7071067, 0.       ], dtype=float32)

    References:
      The cosine of the angle between two vectors, ⟨x, y⟩ = ‖x‖‖y‖ cos θ.
    """
    _check_eps(eps)
    (x, y), axis, where, weights = _vectors(("x", "y"), (x, y), axis, where, weights, reduction)
    return C.reduce(_cosine(x, y, axis, eps), where=where, weights=weights, reduction=reduction)


def cosine_distance(
    x: ArrayLike,
    y: ArrayLike,
    *,
    axis: int = -1,
    eps: float = 1e-8,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Cosine distance, 1 − `cosine_similarity`, in [0, 2].

        d(x, y) = 1 − ⟨x, y⟩ / (max(‖x‖₂, ε) · max(‖y‖₂, ε))

    Equal to ``optax.losses.cosine_distance(x, y, epsilon=ε²)``; a zero vector is at
    distance 1 from everything (finite gradient).

    Args:
      x, y, axis, eps, where, weights, reduction: as in `cosine_similarity`.

    Returns:
      As in `cosine_similarity`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.cosine_distance(jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([1.0, 0.0]))
      Array([0., 2.], dtype=float32)
    """
    _check_eps(eps)
    (x, y), axis, where, weights = _vectors(("x", "y"), (x, y), axis, where, weights, reduction)
    loss = 1.0 - _cosine(x, y, axis, eps)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def cosine_embedding_loss(
    x_1: ArrayLike,
    x_2: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 0.0,
    axis: int = -1,
    eps: float = 1e-8,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Cosine embedding loss: pull similar pairs together, push dissimilar ones apart.

        ℓ = 1 − cos(x₁, x₂)                 if y = +1
        ℓ = max(0, cos(x₁, x₂) − m)         if y = −1

    The formula of ``torch.nn.functional.cosine_embedding_loss``, with cos as in
    `cosine_similarity` (each norm floored at ε). PyTorch computes the cosine as
    ⟨x₁, x₂⟩ / √((‖x₁‖² + 10⁻¹²)(‖x₂‖² + 10⁻¹²)); the two agree to within 10⁻¹²
    relative for vectors of norm ≳ 10⁻⁴ and both give a zero vector a cosine of 0.

    Args:
      x_1: floating array with a feature axis.
      x_2: floating array broadcastable to ``x_1``' shape.
      labels: y, −1/+1 or booleans (True = +1), broadcastable to ``x_1``' shape without
        ``axis``. Concrete labels outside {−1, +1} raise ``ValueError``.
      margin: m ∈ [−1, 1] (PyTorch suggests 0 to 0.5).
      axis: the feature axis (default the last).
      eps: ε ≥ 0, the floor of each norm.
      where, weights, reduction: as in `cosine_similarity`.

    Returns:
      As in `cosine_similarity`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
      >>> jaxloss.cosine_embedding_loss(x, jnp.array([1.0, 0.0]), jnp.array([1, -1]), margin=0.5)
      Array([0.        , 0.20710677], dtype=float32)
    """
    _check_eps(eps)
    C.check_in_range("margin", margin, -1.0, 1.0)
    (x_1, x_2), axis, where, weights = _vectors(
        ("x_1", "x_2"), (x_1, x_2), axis, where, weights, reduction
    )
    batch = x_1.shape[:axis] + x_1.shape[axis + 1 :]
    y = C.keep(
        where, M._signs(labels, batch, x_1.dtype, where, "x_1 without the feature axis"), 1.0
    )
    cos = _cosine(x_1, x_2, axis, eps)
    loss = jnp.where(y > 0, 1.0 - cos, jax.nn.relu(cos - margin))
    loss = jnp.where(jnp.isnan(y), jnp.nan, loss)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def triplet_margin_loss(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike,
    *,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Triplet margin loss: the anchor nearer its positive than its negative by a margin.

        ℓ = max(0, d(a, p) − d(a, n) + m),      d(u, v) = ‖u − v + ε‖_p

    The definition of ``torch.nn.functional.triplet_margin_loss``, including where ε goes
    (added to the difference, as ``torch.pairwise_distance`` does) and ``swap``: with
    swap=True, d(a, n) is replaced by min(d(a, n), d(p, n)) (Balntas et al., 2016).
    ``optax.losses.triplet_margin_loss`` places ε elsewhere, (Σ|u − v|^p + ε)^(1/p);
    the two are equal for ε = 0 (and differ by O(ε) otherwise). Norms are computed
    with `_numerics.safe_norm`, so coinciding points give a finite value and a finite
    gradient also for ε = 0 (the subgradient 0 of the norm there).

    Args:
      anchors: a, floating array with a feature axis.
      positives: p, floating array broadcastable to ``anchors``' shape.
      negatives: n, floating array broadcastable to ``anchors``' shape.
      margin: m ≥ 0.
      p: the norm degree, a Python number ≥ 1.
      eps: ε ≥ 0, added to each difference before its norm.
      swap: use the distance swap.
      axis: the feature axis (default the last).
      where: optional boolean mask broadcastable to ``anchors``' shape without ``axis``.
      weights: optional non-negative weights, broadcastable like ``where``.
      reduction: ``"none"`` (per triplet), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``anchors``' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> a = jnp.array([[0.0, 0.0]])
      >>> jaxloss.triplet_margin_loss(a, jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 1.0]]),
      ...                             eps=0.0)
      Array([5.], dtype=float32)

    References:
      Schroff et al., "FaceNet: a unified embedding for face recognition and
      clustering", CVPR 2015; Balntas et al., "Learning local feature descriptors with
      triplets and shallow convolutional neural networks", BMVC 2016.
    """
    M._check_margin(margin)
    _check_eps(eps)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (1 <= p < math.inf):
        raise ValueError(f"`p` must be a Python number in [1, inf), got {p!r}.")
    (a, pos, neg), axis, where, weights = _triplets(
        anchors, positives, negatives, swap, axis, where, weights, reduction
    )

    def dist(u, v):
        return N.safe_norm(u - v + eps, axis, p=p)

    loss = _triplet(dist, a, pos, neg, margin, swap)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def _triplets(anchors, positives, negatives, swap, axis, where, weights, reduction):
    """`_vectors` for (anchors, positives, negatives), with ``swap`` checked."""
    if not isinstance(swap, bool):
        raise TypeError(f"`swap` must be a bool, got {swap!r}.")
    names = ("anchors", "positives", "negatives")
    return _vectors(names, (anchors, positives, negatives), axis, where, weights, reduction)


def _triplet(dist, a, pos, neg, margin, swap: bool) -> jax.Array:
    """max(0, d(a, p) − d(a, n) + m), d(a, n) ← min(d(a, n), d(p, n)) with ``swap``."""
    d_neg = dist(a, neg)
    if swap:
        d_neg = jnp.minimum(d_neg, dist(pos, neg))
    return jax.nn.relu(dist(a, pos) - d_neg + margin)


def triplet_margin_with_distance_loss(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike,
    *,
    distance_function: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    margin: float = 1.0,
    swap: bool = False,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Triplet margin loss with any distance function d.

        ℓ = max(0, d(a, p) − d(a, n) + m)

    The definition of ``torch.nn.functional.triplet_margin_with_distance_loss``: d is
    ``distance_function`` (default: torch's ``pairwise_distance``, ‖u − v + 10⁻⁶‖₂ along
    ``axis``, which makes this `triplet_margin_loss` with its defaults), and with
    ``swap=True`` d(a, n) is replaced by min(d(a, n), d(p, n)). Where the two distances
    tie, ``swap``'s min splits the gradient between them (a subgradient).

    ``distance_function(u, v)`` receives two arrays of ``anchors``' shape (the inputs
    broadcast to it, in the compute dtype, with the rows of dropped triplets replaced by
    ones) and must return a non-negative distance per triplet, of ``anchors``' shape
    without ``axis``; any other shape raises. It may be any JAX function, e.g.
    ``lambda u, v: jaxloss.cosine_distance(u, v)``; its gradient is the loss's.

    Args:
      anchors: a, floating array with a feature axis.
      positives: p, floating array broadcastable to ``anchors``' shape.
      negatives: n, floating array broadcastable to ``anchors``' shape.
      distance_function: d(u, v), or None for the Euclidean ``pairwise_distance``.
      margin: m ≥ 0 (torch requires m > 0).
      swap: use the distance swap (Balntas et al., 2016).
      axis: the feature axis (default the last): the loss has ``anchors``' shape
        without it.
      where, weights, reduction: as in `triplet_margin_loss`.

    Returns:
      As in `triplet_margin_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> a, p, n = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]]), jnp.array([[0.0, 1.0]])
      >>> jaxloss.triplet_margin_with_distance_loss(
      ...     a, p, n, distance_function=jaxloss.cosine_distance, margin=1.0)
      Array([0.29289323], dtype=float32)

    References:
      ``torch.nn.TripletMarginWithDistanceLoss``; Schroff et al., "FaceNet", CVPR 2015;
      Balntas et al., "Learning local feature descriptors with triplets and shallow
      convolutional neural networks", BMVC 2016.
    """
    M._check_margin(margin)
    if distance_function is not None and not callable(distance_function):
        raise TypeError(
            f"`distance_function` must be a callable d(u, v) or None, got {distance_function!r}."
        )
    (a, pos, neg), axis, where, weights = _triplets(
        anchors, positives, negatives, swap, axis, where, weights, reduction
    )
    batch = a.shape[:axis] + a.shape[axis + 1 :]
    if distance_function is None:

        def dist(u, v):
            return N.safe_norm(u - v + 1e-6, axis)

    else:

        def dist(u, v):
            d = jnp.asarray(distance_function(u, v))
            if d.shape != batch:
                raise ValueError(
                    f"`distance_function` returned shape {d.shape}; it must return one "
                    f"distance per triplet, of `anchors`' shape without the feature axis "
                    f"{axis}: {batch}."
                )
            return d.astype(a.dtype)

    loss = _triplet(dist, a, pos, neg, margin, swap)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)
