"""Information theory: surprisal, entropy, cross-entropy and divergences.

Arguments are in the math order ``(p, q)``, ``p`` being the reference distribution, as
in ``scipy.stats.entropy(pk, qk)``: `kl_divergence` ``(p, q)`` is KL(p‖q) = Σ p log(p/q).
Distributions lie along ``axis`` (default the last); the loss has the broadcast shape of
the inputs without that axis, and ``where``/``weights`` broadcast to that per-distribution
shape. A masked-out distribution has its whole row of inputs replaced before any log, so
NaN or inf in it never reaches the gradient.

Every quantity is in nats by default; ``base=2`` gives bits, any positive ``base`` ≠ 1
that unit. Exact zeros follow 0 · log 0 = 0 in the value and the gradient (see
`jaxloss._numerics.xlogy`); where the math is infinite (KL(p‖q) with p > 0 and q = 0) the
result is +inf.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


def _normalize_axis(axis: int, shape: tuple[int, ...]) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(
            f"`axis` must be an int (the axis that holds each distribution), got {axis!r}."
        )
    if not shape:
        raise ValueError(
            "The inputs are scalars, but distributions lie along `axis`: pass arrays with "
            "at least one dimension."
        )
    if not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"`axis` {axis} is out of range for inputs of shape {shape} "
            f"(valid: {-len(shape)} to {len(shape) - 1})."
        )
    return int(axis) % len(shape)


def _distribution_inputs(where, weights, reduction, axis, allow_int=(), **named):
    """Validate and convert inputs whose distributions lie along ``axis``.

    Returns ``(arrays, axis, where, row_where, weights)``: the arrays in the compute dtype
    (in the order given), ``axis`` as a non-negative int, ``where``/``weights`` checked
    against the per-distribution loss shape, and ``row_where``, the mask expanded along
    ``axis`` so that `C.keep` replaces every input of a masked-out distribution.
    """
    arrays = {k: C.as_float(k, v, allow_int=k in allow_int) for k, v in named.items()}
    probabilities = {k: a for k, a in arrays.items() if k in ("probs", "p", "q")}
    dtype = C.compute_dtype(*arrays.values())
    shape = C.loss_shape(None, **arrays)
    axis = _normalize_axis(axis, shape)
    loss_shape = shape[:axis] + shape[axis + 1 :]
    where, weights = C.prepare(loss_shape, where, weights, reduction)
    row_where = None
    if where is not None:
        row_where = jnp.expand_dims(jnp.broadcast_to(where, loss_shape), axis)
    if probabilities:
        _check_probabilities(probabilities, row_where, shape)
    # Broadcast up front: ``axis`` indexes the common shape, not each input's own. A
    # traced negative entry of the reference p, which the check above cannot see, becomes
    # NaN: Σ p log q is finite there (p log p, log q and log(p/q) are NaN by themselves).
    arrays = [
        C.probabilities_or_nan(a) if k == "p" else a
        for k, a in ((k, jnp.broadcast_to(a.astype(dtype), shape)) for k, a in arrays.items())
    ]
    return arrays, axis, where, row_where, weights


def _check_probabilities(probabilities, row_where, shape) -> None:
    """Reject a log-probability passed as a probability (PyTorch's argument habit):
    a concrete negative entry raises, naming the math order (p, q)."""
    if "probs" in probabilities:
        hint = (
            "Pass probabilities in [0, 1]: for log-probabilities use `jnp.exp(log_p)`, "
            "for logits `entropy_from_logits`."
        )
    else:
        hint = (
            "Divergences take probabilities in the math order (p, q), p the reference, "
            "KL(p‖q) = Σ p·log(p/q). PyTorch's `kl_div(input, target)` takes the other "
            "order and log-probabilities, (log q, p): call `kl_divergence(p, jnp.exp(log_q))`, "
            "or `kl_divergence_from_logits` for logits."
        )
    if row_where is not None and not isinstance(row_where, jax.core.Tracer):
        row_where = jnp.broadcast_to(row_where, shape)
    C.check_probabilities(hint, row_where, **probabilities)


def _p_log(p: jax.Array, log_q: jax.Array) -> jax.Array:
    """p · log q for log-space inputs, 0 where p = 0 (even where log q = −inf)."""
    positive = p > 0
    return p * jnp.where(positive, log_q, 0.0)


def surprisal(
    probs: ArrayLike,
    *,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Surprisal (self-information) of outcomes with probabilities ``probs``, per element.

        I(x) = −log p(x)

    +inf where p = 0 (an impossible outcome), with gradient −1/p.

    Args:
      probs: p(x) ∈ [0, 1], floating array of any shape.
      base: logarithm base: ``None`` for nats, ``2`` for bits, any positive number ≠ 1.
      where: optional boolean mask broadcastable to ``probs``; True keeps an element.
      weights: optional non-negative weights broadcastable to ``probs``.
      reduction: ``"none"`` (per element), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The shape of ``probs`` for ``"none"``, else a scalar; float32, or float64 for
      float64 input (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.surprisal(jnp.array([0.5, 0.125, 1.0]), base=2)
      Array([1., 3., 0.], dtype=float32)

    References:
      Shannon, "A mathematical theory of communication", Bell Syst. Tech. J. 27 (1948).
    """
    factor = N.log_base_factor(base)
    (probs,), where, weights = C.float_inputs(where, weights, reduction, probs=probs)
    C.check_probabilities(
        "Pass probabilities in [0, 1]; for log-probabilities `-log_p` is the surprisal.",
        None if where is None else jnp.broadcast_to(where, probs.shape),
        probs=probs,
    )
    probs = C.keep(where, probs, 1.0)
    loss = N.negate(jnp.log(probs)) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def entropy(
    probs: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Shannon entropy of the distributions ``probs`` along ``axis``.

        H(p) = −Σᵢ pᵢ log pᵢ,       0 · log 0 = 0

    Exact zeros give a finite value and gradient: the −∞ one-sided derivative of
    pᵢ log pᵢ at pᵢ = 0 is replaced by 0, elsewhere the gradient is −(log pᵢ + 1).
    ``probs`` is not renormalized.

    Args:
      probs: p, floating array with the distributions along ``axis``.
      axis: the axis that holds each distribution (an int).
      base: logarithm base: ``None`` for nats, ``2`` for bits, any positive number ≠ 1.
      where: optional boolean mask broadcastable to the loss shape (``probs.shape``
        without ``axis``); True keeps a distribution.
      weights: optional non-negative weights broadcastable to the loss shape.
      reduction: ``"none"`` (per distribution), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``probs.shape`` without ``axis`` for ``"none"``, else a scalar; float32, or
      float64 for float64 input (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> p = jnp.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
      >>> jaxloss.entropy(p, base=2)
      Array([1., 2.], dtype=float32)

    References:
      Cover & Thomas, *Elements of Information Theory* (2nd ed., 2006), §2.1.
    """
    factor = N.log_base_factor(base)
    (probs,), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, probs=probs
    )
    probs = C.keep(row_where, probs, 1.0)
    loss = N.negate(jnp.sum(N.xlogy(probs, probs), axis=axis)) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def entropy_from_logits(
    logits: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Entropy of the distributions softmax(``logits``) along ``axis``.

        H = −Σᵢ pᵢ log pᵢ,       log p = log_softmax(logits)

    Computed in log space, so it is exact for logits of any magnitude. A −inf logit is a
    class with probability 0: it contributes 0 to the value and gets gradient 0, the
    same as a finite logit so negative that its probability underflows. Log-probabilities
    are valid logits (log_softmax leaves them unchanged), so pass them here too.

    Args:
      logits: floating array with the classes along ``axis``; −inf allowed (not on every
        class of a kept distribution).
      axis, base, where, weights, reduction: as in `entropy`.

    Returns:
      As in `entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.entropy_from_logits(jnp.array([[0.0, 0.0, -jnp.inf], [1e9, 0.0, 0.0]]))
      Array([0.6931472, 0.       ], dtype=float32)
    """
    factor = N.log_base_factor(base)
    (logits,), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, logits=logits
    )
    logits = C.keep(row_where, logits, 0.0)
    log_p = jax.nn.log_softmax(logits, axis=axis)
    loss = N.negate(jnp.sum(_p_log(jnp.exp(log_p), log_p), axis=axis)) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def cross_entropy(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Cross-entropy H(p, q) of the distribution ``q`` relative to the reference ``p``.

        H(p, q) = −Σᵢ pᵢ log qᵢ = H(p) + KL(p‖q)

    A class with pᵢ = 0 contributes 0, also where qᵢ = 0 (0 · log 0 = 0); its gradient
    is 0 in qᵢ and −log qᵢ in pᵢ, and 0 in both where qᵢ = 0 too. The result is +inf
    where some pᵢ > 0 has qᵢ = 0. For a model's logits use
    ``softmax_cross_entropy`` or `kl_divergence_from_logits`.

    Args:
      p: the reference distribution, floating (or integer, e.g. one-hot) array with the
        distributions along ``axis``.
      q: the model distribution, floating array broadcastable with ``p``.
      axis: the axis that holds each distribution, of the broadcast shape.
      base: logarithm base: ``None`` for nats, ``2`` for bits, any positive number ≠ 1.
      where: optional boolean mask broadcastable to the loss shape (the broadcast shape
        without ``axis``); True keeps a distribution.
      weights: optional non-negative weights broadcastable to the loss shape.
      reduction: ``"none"`` (per distribution), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The broadcast shape of ``p`` and ``q`` without ``axis`` for ``"none"``, else a
      scalar; float32, or float64 for float64 input.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.cross_entropy(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]), base=2)
      Array(1., dtype=float32)
    """
    factor = N.log_base_factor(base)
    (p, q), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, allow_int=("p",), p=p, q=q
    )
    p = C.keep(row_where, p, 1.0)
    q = C.keep(row_where, q, 1.0)
    loss = N.negate(jnp.sum(N.xlogy(p, q), axis=axis)) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


# Below this KL (nats) a row of `kl_divergence_from_logits` is recomputed so that it
# keeps its relative accuracy: the plain form's absolute error is about ε·|lse|, 1e-6 in
# float32 for 32768 classes, i.e. 1e-4 of a KL of 2⁻⁶.
_NEAR_KL = 2.0**-6


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kl_from_logits(p_logits: jax.Array, q_logits: jax.Array, axis: int) -> jax.Array:
    """KL(softmax(p_logits)‖softmax(q_logits)) along ``axis``, accurate also for p ≈ q.

    With s = logits − max per row, log p = s_p − lse(s_p) and likewise q, the plain form
    Σ p (log p − log q) costs what optax's does, and is what a row gets when its KL is at
    least 2⁻⁶ (+inf where q misses p's support). Only when some row falls outside that,
    or gives NaN (a −inf logit where p = 0), is the careful form computed for all rows
    (in ``jit`` a `lax.cond`; under ``vmap`` both forms are computed):

    - a class with p = 0 (a −inf logit, or one whose probability underflows) contributes
      0 in value and gradient, even where log q = −inf, and KL = +inf where p > 0 and
      q's logit is −inf;
    - a row with KL < 2⁻⁶ and every |Δ| ≤ 1 (Δ = s_p − s_q) computes the normalizer
      difference c = lse(s_p) − lse(s_q) as log Σ q·exp Δ = log1p(Σ q·expm1 Δ), whose
      error is ε·|Δ|, and KL = Σ p·Δ − c: subtracting the two logsumexps would leave an
      error of ε·|lse| in a KL of order Δ².

    The two forms agree on every row that the plain form serves, so a row's result does
    not depend on the rest of the batch. The derivatives are written out (see
    `_kl_from_logits_jvp`), so differentiating never carries both forms' intermediates.
    """
    plain = _kl_plain(p_logits, q_logits, axis)
    # `not (plain ≥ 2⁻⁶)` is true for a small KL and for NaN (a −inf logit where p = 0).
    # The careful form is traced from the inputs, not from the plain form's arrays: as
    # operands of the `cond` those would all have to be materialized.
    need = jnp.any(~(plain >= _NEAR_KL))
    return jax.lax.cond(need, lambda: _kl_careful(p_logits, q_logits, axis), lambda: plain)


def _kl_from_logits_jvp(axis, primals, tangents):
    """∂KL/∂p_logits = p·(log p − log q − KL) and ∂KL/∂q_logits = q − p, per class.

    Both are 0 for a class impossible under both inputs (−inf logits: p = q = 0), as
    for a logit so negative that its probability underflows.
    """
    p_logits, q_logits = primals
    dp, dq = tangents
    kl = _kl_from_logits(p_logits, q_logits, axis)
    # As in `_kl_plain`, so that XLA computes them once for both.
    _, log_p = _log_softmax(p_logits, axis)
    _, log_q = _log_softmax(q_logits, axis)
    p = jnp.exp(log_p)
    tangent = jnp.zeros_like(kl)
    if not isinstance(dp, SymbolicZero):
        ratio = log_p - log_q - jnp.expand_dims(kl, axis)
        tangent = tangent + jnp.sum(p * jnp.where(p == 0, 0.0, ratio) * dp, axis=axis)
    if not isinstance(dq, SymbolicZero):
        tangent = tangent + jnp.sum((jnp.exp(log_q) - p) * dq, axis=axis)
    return kl, tangent


_kl_from_logits.defjvp(_kl_from_logits_jvp, symbolic_zeros=True)


def _log_softmax(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(s, log_softmax) with s = x − max(x) per row; −inf stays −inf."""
    s = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return s, s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


def _kl_plain(p_logits: jax.Array, q_logits: jax.Array, axis: int) -> jax.Array:
    """Σ p (log p − log q): optax's program; +inf where q misses p, NaN at a −inf logit
    of p (0·∞), or of q where p underflows to 0."""
    _, log_p = _log_softmax(p_logits, axis)
    _, log_q = _log_softmax(q_logits, axis)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=axis)


def _kl_careful(p_logits: jax.Array, q_logits: jax.Array, axis: int) -> jax.Array:
    s_p, log_p = _log_softmax(p_logits, axis)
    s_q, log_q = _log_softmax(q_logits, axis)
    p = jnp.exp(log_p)
    zero = p == 0
    far = jnp.sum(p * jnp.where(zero, 0.0, log_p - log_q), axis=axis, keepdims=True)
    # Δ with −inf − −inf read as 0; a class impossible under one input only keeps its
    # ±inf, so that its row counts as far, as a clipped logit's would.
    both_impossible = (s_p == -jnp.inf) & (s_q == -jnp.inf)
    delta = jnp.where(both_impossible, 0.0, s_p - s_q)
    near = jnp.all(jnp.abs(delta) <= 1.0, axis=axis, keepdims=True) & (far < _NEAR_KL)
    delta = jnp.where(near, delta, 0.0)
    c = jnp.log1p(jnp.sum(jnp.exp(log_q) * jnp.expm1(delta), axis=axis, keepdims=True))
    near_kl = jnp.sum(p * jnp.where(zero, 0.0, delta), axis=axis, keepdims=True) - c
    return jnp.squeeze(jnp.where(near, near_kl, far), axis)


def kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Kullback-Leibler divergence KL(p‖q) of ``q`` from the reference ``p``.

        KL(p‖q) = Σᵢ pᵢ log(pᵢ / qᵢ) = H(p, q) − H(p) ≥ 0

    A class with pᵢ = 0 contributes 0, also where qᵢ = 0 (0 · log 0 = 0); its gradient
    is 0 in qᵢ and −log qᵢ in pᵢ (the −∞ derivative of pᵢ log pᵢ at 0 is replaced by
    0), and 0 in both where qᵢ = 0 too. KL is +inf where some pᵢ > 0 has qᵢ = 0 (q does
    not cover p's support), as the math says. Accurate also for nearby p and q, where
    Σ p (log p − log q) loses its digits to cancellation: each term is computed as
    pᵢ log1p((pᵢ − qᵢ)/qᵢ), whose error is ε·pᵢ·|pᵢ − qᵢ|/qᵢ.

    Note the argument order: ``optax.losses.kl_divergence(log_predictions, targets)``
    takes (log q, p) and equals ``kl_divergence(targets, jnp.exp(log_predictions))``;
    for log-probabilities use `kl_divergence_from_logits`.

    Args:
      p: the reference distribution, floating (or integer, e.g. one-hot) array with the
        distributions along ``axis``.
      q: the model distribution, floating array broadcastable with ``p``.
      axis, base, where, weights, reduction: as in `cross_entropy`.

    Returns:
      As in `cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> p, q = jnp.array([0.5, 0.5, 0.0]), jnp.array([0.25, 0.25, 0.5])
      >>> jaxloss.kl_divergence(p, q, base=2)
      Array(1., dtype=float32)

    References:
      Kullback & Leibler, "On information and sufficiency", Ann. Math. Statist. 22 (1951).
    """
    factor = N.log_base_factor(base)
    (p, q), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, allow_int=("p",), p=p, q=q
    )
    p = C.keep(row_where, p, 1.0)
    q = C.keep(row_where, q, 1.0)
    loss = jnp.sum(N.relative_entropy_term(p, q), axis=axis) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def kl_divergence_from_logits(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """KL(p‖q) between p = softmax(``p_logits``) and q = softmax(``q_logits``).

        KL(p‖q) = Σᵢ pᵢ (log pᵢ − log qᵢ),       log p = log_softmax(p_logits), same for q

    Computed in log space, for logits of any magnitude, and accurate also for nearby
    distributions: for a distribution with KL < 2⁻⁶ and every |Δᵢ| ≤ 1 (Δ = p_logits −
    q_logits, up to a constant) the normalizer difference is computed as
    log1p(Σ qᵢ expm1 Δᵢ) instead of subtracting two logsumexps, which would cancel.
    Batches where no distribution needs that (nor holds a −inf logit) cost what optax's
    log-softmax form does: under ``jit`` the careful pass runs only when some
    distribution needs it (under ``vmap`` always). The gradients are the closed forms
    p·(log p − log q − KL) in ``p_logits`` and q − p in ``q_logits``.

    A −inf logit is a class with probability 0: where pᵢ = 0 the class contributes 0,
    also where qᵢ = 0 (0 · log 0 = 0), and a −inf logit receives gradient 0, the same
    value and gradient as a finite logit so negative that its probability underflows.
    KL is +inf where pᵢ > 0 and q's logit is −inf.

    Log-probabilities are valid logits, so this is also the KL between distributions
    given as log-probabilities: ``optax.losses.kl_divergence_with_log_targets(log_q,
    log_p)`` (note optax's order) equals ``kl_divergence_from_logits(log_p, log_q)``.

    Args:
      p_logits: logits (or log-probabilities) of the reference distribution, floating
        array with the classes along ``axis``; −inf allowed.
      q_logits: logits of the model distribution, broadcastable with ``p_logits``.
      axis, base, where, weights, reduction: as in `cross_entropy`.

    Returns:
      As in `cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> p_logits = jnp.array([0.0, 0.0, -jnp.inf])
      >>> q_logits = jnp.log(jnp.array([0.25, 0.25, 0.5]))
      >>> jaxloss.kl_divergence_from_logits(p_logits, q_logits, base=2)
      Array(1., dtype=float32)
    """
    factor = N.log_base_factor(base)
    (p_logits, q_logits), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, p_logits=p_logits, q_logits=q_logits
    )
    p_logits = C.keep(row_where, p_logits, 0.0)
    q_logits = C.keep(row_where, q_logits, 0.0)
    loss = _kl_from_logits(p_logits, q_logits, axis) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def _js_terms(p: jax.Array, q: jax.Array) -> jax.Array:
    """Per-class ½[p log(p/m) + q log(q/m)], m = (p + q)/2, accurate also for p ≈ q.

    With s = p + q and δ = (p − q)/s the term is s/4 · g(δ), where
    g(δ) = (1+δ) log(1+δ) + (1−δ) log(1−δ) = log(1 − δ²) + 2δ atanh δ ≈ δ². The direct
    form loses all digits to cancellation as p → q (each log ratio → 0); the atanh form
    does not, but it is −inf + inf at |δ| = 1, so it is used only for |δ| < ½ and the
    direct form (whose ratios 2p/s, 2q/s are then far from 1) elsewhere.
    """
    s = p + q
    near = jnp.abs(p - q) < 0.5 * s  # |δ| < ½, decided without dividing by a tiny s
    pn, qn = jnp.where(near, p, 1.0), jnp.where(near, q, 1.0)
    d = (pn - qn) / (pn + qn)
    near_terms = 0.25 * (pn + qn) * (jnp.log1p(-d * d) + 2.0 * d * jnp.arctanh(d))
    pf, qf = jnp.where(near, 1.0, p), jnp.where(near, 1.0, q)
    sf = pf + qf
    far_terms = 0.5 * (_x_log_2x_over_s(pf, sf) + _x_log_2x_over_s(qf, sf))
    return jnp.where(near, near_terms, far_terms)


def _x_log_2x_over_s(x: jax.Array, s: jax.Array) -> jax.Array:
    """x · log(2x/s) for 0 ≤ x ≤ s; 0 in value and gradient where x = 0.

    Computed as x (log 2 + log x − log s): the ratio 2x/s has the gradient −2x/s², which
    overflows for tiny s.
    """
    zero = x == 0  # not `x > 0`, which would turn a NaN input into 0
    xs, ss = jnp.where(zero, 1.0, x), jnp.where(zero, 1.0, s)
    return jnp.where(zero, 0.0, xs * (N.LOG_2 + jnp.log(xs) - jnp.log(ss)))


def js_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Jensen-Shannon divergence between the distributions ``p`` and ``q``.

        JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m),       m = ½ (p + q)

    Symmetric, 0 ≤ JS ≤ log 2 (1 bit), and finite for any two distributions, including
    disjoint supports. Accurate also when p ≈ q, where the textbook form loses every
    digit to cancellation: it is evaluated per class as ¼ (pᵢ + qᵢ) · g(δᵢ) with
    δᵢ = (pᵢ − qᵢ)/(pᵢ + qᵢ) and g(δ) = log(1 − δ²) + 2δ atanh δ. The gradient in pᵢ
    is ½ log(pᵢ/mᵢ); where pᵢ = 0 the term pᵢ log(pᵢ/mᵢ) = 0 · log 0 contributes 0
    to it (its one-sided derivative is −∞) and only qᵢ log(qᵢ/mᵢ) varies, giving −½
    (or 0 where also qᵢ = 0); likewise in q.

    Args:
      p: first distribution, floating array with the distributions along ``axis``.
      q: second distribution, floating array broadcastable with ``p``.
      axis, base, where, weights, reduction: as in `cross_entropy`.

    Returns:
      As in `cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.js_divergence(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), base=2)
      Array(1., dtype=float32)

    References:
      Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
      37 (1991).
    """
    factor = N.log_base_factor(base)
    (p, q), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, p=p, q=q
    )
    p = C.keep(row_where, p, 1.0)
    q = C.keep(row_where, q, 1.0)
    loss = jnp.sum(_js_terms(p, q), axis=axis) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def gaussian_kl(
    mean_p: ArrayLike,
    scale_p: ArrayLike | None = None,
    mean_q: ArrayLike = 0.0,
    scale_q: ArrayLike | None = None,
    *,
    log_scale_p: ArrayLike | None = None,
    log_scale_q: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """KL(N(μp, σp²) ‖ N(μq, σq²)) in closed form, per element (diagonal normals).

        KL = log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − ½
           = ½ (expm1(u) − u + z²),       u = 2 (log σp − log σq),  z = (μp − μq) / σq

    The second form is the one computed: expm1(u) − u keeps its digits when σp ≈ σq,
    where σp²/σq² − 1 − log(σp²/σq²) would cancel. Each scale is given either as
    ``scale_*`` (σ > 0) or, for a learned scale, as ``log_scale_*`` (log σ, finite
    value and gradient for every finite input); the defaults are μq = 0, σp = σq = 1, so
    the VAE term against the standard-normal prior is ``gaussian_kl(mu,
    log_scale_p=log_sigma)`` (sum it over the latent axis for a diagonal multivariate
    normal: the KL of independent components adds up).

    Args:
      mean_p: μp, floating array of any shape.
      scale_p: σp > 0, broadcastable with ``mean_p``. Default 1.
      mean_q: μq, broadcastable with ``mean_p``. Default 0.
      scale_q: σq > 0, broadcastable with ``mean_p``. Default 1.
      log_scale_p: log σp instead of ``scale_p`` (at most one of the two).
      log_scale_q: log σq instead of ``scale_q`` (at most one of the two).
      where: optional boolean mask broadcastable to the loss; True keeps an element.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per element), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The broadcast shape of all inputs for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.gaussian_kl(jnp.array([0.0, 1.0]), jnp.array([1.0, 1.0]))
      Array([0. , 0.5], dtype=float32)
      >>> jaxloss.gaussian_kl(jnp.array([0.0]), log_scale_p=jnp.array([jnp.log(2.0)]))
      Array([0.8068528], dtype=float32)

    References:
      Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014, Appendix B;
      Cover & Thomas, *Elements of Information Theory* (2nd ed., 2006), §8.
    """
    C.check_exclusive(scale_p=scale_p, log_scale_p=log_scale_p)
    C.check_exclusive(scale_q=scale_q, log_scale_q=log_scale_q)
    C.check_positive("scale_p", scale_p, allow_none=True)
    C.check_positive("scale_q", scale_q, allow_none=True)
    (mean_p, mean_q, scale_p, log_scale_p, scale_q, log_scale_q), where, weights = C.float_inputs(
        where,
        weights,
        reduction,
        allow_int=("mean_q", "scale_p", "log_scale_p", "scale_q", "log_scale_q"),
        symmetric=True,
        mean_p=mean_p,
        mean_q=mean_q,
        scale_p=scale_p,
        log_scale_p=log_scale_p,
        scale_q=scale_q,
        log_scale_q=log_scale_q,
    )
    diff = C.keep(where, mean_p - mean_q, 0.0)
    dtype = diff.dtype
    _, log_sigma_p = N.scale_and_log_scale(
        C.keep(where, scale_p, 1.0), C.keep(where, log_scale_p, 0.0), dtype
    )
    inv_sigma_q, log_sigma_q = N.scale_and_log_scale(
        C.keep(where, scale_q, 1.0), C.keep(where, log_scale_q, 0.0), dtype
    )
    u = 2.0 * (log_sigma_p - log_sigma_q)
    loss = 0.5 * (jnp.expm1(u) - u + jnp.square(diff * inv_sigma_q))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def generalized_kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Generalized KL divergence of the non-negative measure ``q`` from ``p``.

        D(p‖q) = Σᵢ pᵢ log(pᵢ / qᵢ) − pᵢ + qᵢ ≥ 0

    The Bregman divergence of x log x − x, for vectors that need not sum to one (e.g.
    non-negative matrix factorization, Poisson intensities); it is `kl_divergence` when p
    and q both sum to 1. Zeros follow `kl_divergence`: a term with pᵢ = 0 is qᵢ (0 · log
    0 = 0, also for qᵢ = 0, with gradient −log qᵢ − 1 in pᵢ, −1 where qᵢ = 0 too, and 1
    in qᵢ); the divergence is +inf where some pᵢ > 0 has qᵢ = 0. In ``base`` units the
    whole divergence is divided by ln(base).

    ``optax.losses.generalized_kl_divergence(log_predictions, targets)`` takes (log q, p)
    and equals ``generalized_kl_divergence(targets, jnp.exp(log_predictions))``.

    Args:
      p: the reference measure, non-negative floating (or integer) array with the
        vectors along ``axis``.
      q: the model measure, non-negative floating array broadcastable with ``p``.
      axis, base, where, weights, reduction: as in `cross_entropy`.

    Returns:
      As in `cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.generalized_kl_divergence(jnp.array([2.0, 0.0]), jnp.array([1.0, 3.0]))
      Array(3.3862944, dtype=float32)

    References:
      Lee & Seung, "Algorithms for non-negative matrix factorization", NeurIPS 2000
      (the divergence D(A‖B)); Bregman, USSR Comput. Math. Math. Phys. 7 (1967).
    """
    factor = N.log_base_factor(base)
    (p, q), axis, where, row_where, weights = _distribution_inputs(
        where, weights, reduction, axis, allow_int=("p",), p=p, q=q
    )
    p = C.keep(row_where, p, 1.0)
    q = C.keep(row_where, q, 1.0)
    terms = N.relative_entropy_term(p, q) - (p - q)
    loss = jnp.sum(terms, axis=axis) * factor
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)
