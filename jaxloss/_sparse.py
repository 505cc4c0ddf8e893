"""Sparse outputs and Fenchel–Young losses: the sparsemax projection, its loss, and the
Fenchel–Young loss of any regularized max function.

sparsemax(z) is the Euclidean projection of z onto the probability simplex (Martins &
Astudillo, 2016): p = max(z − τ(z), 0), where the threshold τ makes p sum to one. Unlike
softmax it has exact zeros. On its support S = {j : p_j > 0} it is z − τ with
τ = (Σ_{j∈S} z_j − 1)/|S|, so its Jacobian is diag(s) − s sᵀ/|S| (s the indicator of S),
written out as a custom JVP. The loss is the Fenchel–Young loss of the Gini negentropy
Ω(p) = ½‖p‖² on the simplex, whose gradient is sparsemax(z) − y.

Inputs use the class-axis handling of `jaxloss._classification` (the same label rule as
`softmax_cross_entropy`: integer class ids or probability vectors).

`make_fenchel_young_loss` builds the loss of the family from a max function Ω* (Blondel,
Martins & Niculae, 2020): Ω* = logsumexp gives the softmax cross-entropy, the conjugate
of ½‖p‖² on the simplex gives `sparsemax_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxloss import _classification as K
from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


def _threshold(z: jax.Array) -> jax.Array:
    """τ(z) along the last axis (kept, size 1): Σ_j max(z_j − τ, 0) = 1.

    From the sorted values u_1 ≥ u_2 ≥ ...: the support size is the largest k with
    1 + k·u_k > Σ_{j≤k} u_j, and τ = (Σ_{j≤k} u_j − 1)/k (Martins & Astudillo, 2016,
    Algorithm 1). A −inf logit is never in the support. Differentiable (through the sort)
    with derivative Σ_{j∈S} dz_j/|S|, the exact one.
    """
    u = jnp.flip(jnp.sort(z, axis=-1), axis=-1)
    cumulative = jnp.cumsum(u, axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    size = jnp.sum(1.0 + k * u > cumulative, axis=-1, keepdims=True)
    total = jnp.take_along_axis(cumulative, size - 1, axis=-1)
    return (total - 1.0) / size.astype(z.dtype)


def _shifted(z: jax.Array) -> jax.Array:
    """z − max(z) (held constant): sparsemax is shift-invariant and the sort's partial sums
    of non-positive numbers stay small."""
    return z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))


@jax.custom_jvp
def _sparsemax_last(z: jax.Array) -> jax.Array:
    zs = _shifted(z)
    return jnp.maximum(zs - _threshold(zs), 0.0)


@_sparsemax_last.defjvp
def _sparsemax_last_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    p = _sparsemax_last(z)
    support = p > 0
    size = jnp.sum(support, axis=-1, keepdims=True).astype(p.dtype)
    on_support = jnp.where(support, dz, 0.0)  # a −inf logit's tangent never reaches a sum
    mean = jnp.sum(on_support, axis=-1, keepdims=True) / size
    return p, jnp.where(support, on_support - mean, 0.0)


@jax.custom_jvp
def _fenchel_young_last(z: jax.Array, y: jax.Array) -> jax.Array:
    """½‖p − y‖² + Σ_j y_j·max(τ − z_j, 0), p = sparsemax(z), along the last axis.

    This is Ω*(z) + Ω(y) − ⟨z, y⟩ with Ω = ½‖·‖² on the simplex, rewritten (with
    ⟨z, p⟩ = ‖p‖² + τ, for y summing to one) as a sum of two non-negative terms: the loss
    is ≥ 0 by construction and exactly 0 at y = p, with no cancellation between terms
    of size ‖z‖. Computed from z − max(z), since it is shift-invariant.
    """
    zs = _shifted(z)
    tau = _threshold(zs)
    p = jnp.maximum(zs - tau, 0.0)
    gap = jnp.maximum(tau - zs, 0.0)  # +inf at a −inf logit, where y must be 0
    off_support = jnp.where(y == 0, 0.0, y * gap)
    return 0.5 * jnp.sum(jnp.square(p - y), axis=-1) + jnp.sum(off_support, axis=-1)


def _fenchel_young_last_jvp(primals, tangents):
    z, y = primals
    dz, dy = tangents
    out = _fenchel_young_last(z, y)
    tangent = jnp.zeros_like(out)
    if not isinstance(dz, SymbolicZero):
        residual = _sparsemax_last(z) - y
        tangent = tangent + jnp.sum(residual * dz, axis=-1)
    if not isinstance(dy, SymbolicZero):
        zs = _shifted(z)
        # ∂/∂y of the value above: y − (z − τ). On the simplex's tangent space (Σ dy = 0)
        # this is the usual y − z; off it, the value is that of the logits z − τ. A −inf
        # logit counts as the lowest float (N.finite_floor), so a zero tangent there
        # gives 0, not 0·inf.
        coefficient = y - (N.finite_floor(zs) - _threshold(zs))
        tangent = tangent + jnp.sum(coefficient * dy, axis=-1)
    return out, tangent


_fenchel_young_last.defjvp(_fenchel_young_last_jvp, symbolic_zeros=True)


def sparsemax(logits: ArrayLike, *, axis: int = -1) -> jax.Array:
    """Sparsemax: the Euclidean projection of the logits onto the probability simplex.

        sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖² = max(z − τ(z), 0),   Σ_j max(z_j − τ, 0) = 1

    A sparse alternative to softmax: classes whose logit is below the threshold τ get
    exactly 0. On the support S = {j : p_j > 0}, τ = (Σ_{j∈S} z_j − 1)/|S|. The derivative
    is the Jacobian diag(s) − s sᵀ/|S| (s the indicator of S), written out: the gradient
    of a logit outside the support is exactly 0 (at a tie z_j = τ the logit is counted
    outside, one of the subgradients). Invariant to adding a constant to every logit; a
    −inf logit gets probability 0 (at least one logit must be finite).

    Args:
      logits: z, floating array with a class axis.
      axis: the class axis (default the last).

    Returns:
      The shape of ``logits``: non-negative, summing to 1 along ``axis``; float32, or
      float64 for float64 input (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.sparsemax(jnp.array([[1.0, 0.5, -1.0], [0.5, 0.25, 0.25]]))
      Array([[0.75, 0.25, 0.  ],
             [0.5 , 0.25, 0.25]], dtype=float32)

    References:
      Martins & Astudillo, "From softmax to sparsemax: a sparse model of attention and
      multi-label classification", ICML 2016, §2 (Algorithm 1, Proposition 2).
    """
    z = C.as_float("logits", logits)
    axis = K._class_axis(axis, z, "logits")
    z = jnp.moveaxis(z.astype(C.compute_dtype(z)), axis, -1)
    return jnp.moveaxis(_sparsemax_last(z), -1, axis)


# Off the simplex Ω(y) = +inf, and the finite formula ⟨z, p − y⟩ − ½‖p‖² + ½‖y‖² is neither
# shift-invariant nor non-negative there: such labels are rejected, not extended.
_DISTRIBUTION_HINT = (
    "`sparsemax_loss` is the Fenchel–Young loss of ½‖p‖² on the probability simplex, "
    "+inf off it: each probability label must be non-negative and sum to 1 along the "
    "class axis. For multi-hot labels pass `labels / labels.sum(axis, keepdims=True)` "
    "(the multi-label sparsemax loss of Martins & Astudillo, 2016); for log-probabilities "
    "`jnp.exp(log_p)`; for class ids an integer array."
)


def sparsemax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Sparsemax loss: the Fenchel–Young loss whose prediction map is `sparsemax`.

        ℓ(z, y) = Ω*(z) + Ω(y) − ⟨z, y⟩,   Ω(p) = ½‖p‖² on the simplex
                = ⟨z, p − y⟩ − ½‖p‖² + ½‖y‖²,   p = sparsemax(z)
        ∇_z ℓ = sparsemax(z) − y

    For a class id y this is −z_y + ½ Σ_{j∈S}(z_j² − τ²) + ½ (Martins & Astudillo, 2016,
    eq. 16). It is ≥ 0 and exactly 0 when sparsemax(z) = y, which (unlike softmax
    cross-entropy) finite logits can reach. Computed as ½‖p − y‖² + Σ_j y_j·max(τ − z_j, 0),
    two non-negative terms, so it is never negative and does not lose digits to
    cancellation for large logits. The gradient in a probability label is y − (z − τ)
    (y − z up to a constant, the same on the simplex), with a −inf logit counted as the
    lowest finite float there.

    Args:
      logits: z, floating array with a class axis of size C.
      labels: integer class ids broadcastable to ``logits``' shape without ``axis``, or
        floating target distributions broadcastable to ``logits``' shape (the rule of
        `softmax_cross_entropy`). A class id outside [0, C) gives NaN. A probability
        label must lie on the simplex (non-negative, summing to 1 within rounding),
        where the loss is finite: a concrete one that does not (multi-hot labels,
        log-probabilities) raises a ``ValueError``, a traced one gives NaN in that
        example's value and gradient.
      axis: the class axis (default the last).
      where, weights, reduction: as in `softmax_cross_entropy` (per example).

    Returns:
      The logits' shape without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.array([[1.0, 0.5, -1.0], [3.0, 0.0, 0.0]])
      >>> jaxloss.sparsemax_loss(logits, jnp.array([0, 0]))
      Array([0.0625, 0.    ], dtype=float32)

    References:
      Martins & Astudillo, "From softmax to sparsemax: a sparse model of attention and
      multi-label classification", ICML 2016, §3; Blondel, Martins & Niculae, "Learning
      with Fenchel–Young losses", JMLR 21 (2020).
    """
    cat = K._categorical_inputs(
        "logits",
        logits,
        labels,
        axis=axis,
        class_weights=None,
        ignore_index=None,
        where=where,
        weights=weights,
        reduction=reduction,
        distributions=_DISTRIBUTION_HINT,
    )
    x, labels, integer, axis, keep, weights = cat[:6]  # the record's first six fields
    z = jnp.moveaxis(x, axis, -1)
    if integer:
        y = K._one_hot(labels, z.shape[-1], -1, z.dtype)
        if keep is not None:  # a dropped example's bad id must not reach its gradient
            y = C.keep(keep[..., None], y, 0.0)
    else:
        y = jnp.moveaxis(jnp.broadcast_to(labels, x.shape), axis, -1)
    loss = _fenchel_young_last(z, y)
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction)


def make_fenchel_young_loss(
    max_fun: Callable[..., Any],
    *,
    regularizer: Callable[[jax.Array], Any] | None = None,
) -> Callable[..., jax.Array]:
    """The Fenchel–Young loss of a regularized max function, as a loss function.

        ℓ(θ, y) = max_fun(θ) − ⟨θ, y⟩                         (default)
        ℓ(θ, y) = Ω*(θ) + Ω(y) − ⟨θ, y⟩ = L_Ω(θ; y)           (``regularizer=Ω``)

    ``max_fun`` is Ω*, the convex conjugate of a regularizer Ω, applied to each vector
    of scores along the last axis; its gradient ∇Ω*(θ) is the prediction map, and
    ∇_θ ℓ = ∇Ω*(θ) − y. Like ``optax.losses.make_fenchel_young_loss``, the default value
    leaves out Ω(y), which is constant in θ (same gradient in θ; the value may then be
    negative). Pass ``regularizer=Ω`` for the Fenchel–Young loss itself, which is ≥ 0
    and 0 exactly when y = ∇Ω*(θ) (the Fenchel–Young inequality). Instances:
    ``max_fun=jax.nn.logsumexp`` gives `softmax_cross_entropy` for labels that sum to
    1 (with Ω(y) = Σ y log y, the KL divergence); the conjugate of ½‖p‖² on the simplex,
    ⟨θ, p⟩ − ½‖p‖² with p = `sparsemax`(θ), gives `sparsemax_loss` (with Ω = ½‖y‖²).

    The returned loss is ``loss(scores, targets, *args, where=None, weights=None,
    reduction="none", **kwargs)``: ``scores`` θ of shape [..., n], ``targets`` y
    broadcastable to it, one loss per vector (shape [...]), ``where``/``weights``/
    ``reduction`` as for every loss here (a dropped vector's scores are replaced before
    ``max_fun`` sees them, so NaN there gets zero gradient); ``args``/``kwargs`` are
    passed to ``max_fun`` unchanged. A score of −inf counts as the lowest float in
    ⟨θ, y⟩, so a class with y = 0 there contributes 0, not 0·(−inf) = NaN. Inputs are
    computed in at least float32; the result is float32, or float64 for float64 input.

    Args:
      max_fun: Ω*, a function of a 1-D vector of scores (and ``args``/``kwargs``)
        returning a scalar; vectorized over the leading axes with ``jnp.vectorize``.
      regularizer: optional Ω, a function of a 1-D target vector returning a scalar,
        added to the loss as Ω(y).

    Returns:
      The loss function described above.

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> loss = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp)
      >>> scores = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> loss(scores, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))
      Array([0.2395, 1.0986 ], dtype=float32)

    References:
      Blondel, Martins & Niculae, "Learning with Fenchel–Young losses", JMLR 21 (2020),
      Definition 2 and §4.
    """
    if not callable(max_fun):
        raise TypeError(
            f"`max_fun` must be a function of a vector of scores (e.g. "
            f"`jax.nn.logsumexp`), got {type(max_fun).__name__} {max_fun!r}."
        )
    if regularizer is not None and not callable(regularizer):
        raise TypeError(
            "`regularizer` must be a function of a target vector (Ω) or None, got "
            f"{type(regularizer).__name__} {regularizer!r}."
        )

    def fenchel_young_loss(
        scores: ArrayLike,
        targets: ArrayLike,
        *args: Any,
        where: ArrayLike | None = None,
        weights: ArrayLike | None = None,
        reduction: str = "none",
        **kwargs: Any,
    ) -> jax.Array:
        theta = C.as_float("scores", scores)
        K._class_axis(-1, theta, "scores")  # a last axis with at least one entry
        y = C.as_float("targets", targets, allow_int=True)
        C.loss_shape("scores", scores=theta, targets=y)
        dtype = C.compute_dtype(theta, y)
        mask, w = C.prepare(theta.shape[:-1], where, weights, reduction)
        row = None if mask is None else jnp.expand_dims(mask, -1)
        theta = C.keep(row, theta.astype(dtype), 0.0)
        y = C.keep(row, jnp.broadcast_to(y.astype(dtype), theta.shape), 0.0)
        value = jnp.vectorize(lambda s: max_fun(s, *args, **kwargs), signature="(n)->()")
        loss = value(theta).astype(dtype) - jnp.sum(y * N.finite_floor(theta), axis=-1)
        if regularizer is not None:
            loss = loss + jnp.vectorize(regularizer, signature="(n)->()")(y).astype(dtype)
        return C.reduce(loss, where=mask, weights=w, reduction=reduction)

    return fenchel_young_loss
