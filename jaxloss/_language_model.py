"""Language-model post-training losses on materialized logits or log-probabilities.

Token log-probabilities, distillation divergences between a student and a teacher, the
clipped policy-gradient surrogate of PPO/GRPO and its variants, the per-token KL
estimators and group-relative advantages. Logits have the vocabulary along ``axis``
(default the last); per-token quantities have the logits' shape without that axis, and
sequences lie along the last axis of a per-token array ([B, T] for B sequences of T
tokens). A masked-out token (``where`` False) has its inputs replaced before any exp or
log, so NaN or inf in it never reaches the value or the gradient.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from jaxloss import _conventions as C
from jaxloss import _numerics as N
from jaxloss._classification import _batch_shape, _broadcasts_to, _class_axis, _pick
from jaxloss._information import _kl_from_logits

ArrayLike = C.ArrayLike

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum_normalized")
ESTIMATORS = ("k1", "k2", "k3")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_temperature(temperature) -> None:
    C.check_positive("temperature", temperature)


def _token_labels(labels: ArrayLike, batch: tuple[int, ...], name: str) -> jax.Array:
    if labels is None:
        raise TypeError("`labels` is required, got None.")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`labels` must be an integer array of token ids, got dtype {labels.dtype}. "
            "Cast class ids with `labels.astype(jnp.int32)`."
        )
    if not _broadcasts_to(labels.shape, batch):
        raise ValueError(
            f"`labels` of shape {labels.shape} must broadcast to the shape of `{name}` "
            f"without its vocabulary axis, {batch}."
        )
    return jnp.broadcast_to(labels, batch)


def _row(where: jax.Array | None, axis: int, batch: tuple[int, ...]) -> jax.Array | None:
    """``where`` broadcast to the per-token shape and expanded along the vocabulary axis."""
    if where is None:
        return None
    return jnp.expand_dims(jnp.broadcast_to(where, batch), axis)


# --------------------------------------------------------------------------------------
# Token and sequence log-probabilities
# --------------------------------------------------------------------------------------


def token_log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    """Log-probability of each token under the temperature-scaled softmax of its logits.

        log p(yₜ) = zₜ[yₜ]/T − log Σᵥ exp(zₜ[v]/T)

    Masked-out tokens (``where`` False) give 0 with zero gradient, even where their
    logits are NaN or inf. A −inf logit is a token with probability 0; a label at such a
    token gives the lowest float (the value a clipped logit gives), not −inf, and a label
    outside [0, V) gives NaN, never a silent finite number.

    Args:
      logits: floating array [..., V, ...] with the vocabulary along ``axis``.
      labels: integer token ids, broadcastable to the logits' shape without ``axis``.
      axis: the vocabulary axis.
      temperature: T > 0; the logits are divided by it before the softmax (as a sampler
        at temperature T does).
      where: optional boolean mask (True = keep) broadcastable to the per-token shape.

    Returns:
      The per-token log-probabilities, of the logits' shape without ``axis``, float32
      (float64 for float64 logits).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
      >>> jnp.exp(jaxloss.token_log_probs(logits, jnp.array([0, 2])))
      Array([0.5, 0.8], dtype=float32)

    References:
      The log-likelihood term of every policy-gradient method (Williams, "Simple
      statistical gradient-following algorithms", Machine Learning 8, 1992).
    """
    _check_temperature(temperature)
    x = C.as_float("logits", logits)
    axis = _class_axis(axis, x, "logits")
    batch = _batch_shape(x, axis)
    labels = _token_labels(labels, batch, "logits")
    where = C.check_where(where, batch)
    x = x.astype(C.compute_dtype(x))
    if where is not None:
        x = C.keep(_row(where, axis, batch), x, 0.0)
        labels = jnp.where(where, labels, 0)
    x = x / temperature
    lse = jax.nn.logsumexp(x, axis=axis)
    out = jnp.maximum(jnp.squeeze(_pick(x, labels, axis), axis) - lse, jnp.finfo(x.dtype).min)
    if where is not None:
        out = jnp.where(where, out, 0.0)
    return out


def sequence_log_probs(
    token_log_probs: ArrayLike,
    *,
    where: ArrayLike | None = None,
    average: bool = False,
    axis: int = -1,
) -> jax.Array:
    """Log-probability of each sequence: the sum (or mean) of its kept token log-probs.

        log p(y) = Σₜ wₜ log p(yₜ),        or  Σₜ wₜ log p(yₜ) / Σₜ wₜ  with ``average``

    where wₜ ∈ {0, 1} is ``where``. The mean of a sequence with no kept token is 0, with
    zero gradient; masked-out tokens get zero gradient even where they hold NaN.

    Args:
      token_log_probs: floating array [..., T, ...] of per-token log-probabilities with
        the sequence along ``axis``.
      where: optional boolean mask (True = keep) broadcastable to ``token_log_probs``.
      average: return the mean over kept tokens instead of the sum (length-normalized
        log-likelihood, as in SimPO).
      axis: the sequence axis.

    Returns:
      Array of ``token_log_probs``' shape without ``axis``, float32 (float64 for float64
      input).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> lp = jnp.array([[-1.0, -2.0, -3.0]])
      >>> keep = jnp.array([[True, True, False]])
      >>> jaxloss.sequence_log_probs(lp, where=keep), jaxloss.sequence_log_probs(
      ...     lp, where=keep, average=True)
      (Array([-3.], dtype=float32), Array([-1.5], dtype=float32))
    """
    x = C.as_float("token_log_probs", token_log_probs)
    axis = _class_axis(axis, x, "token_log_probs")
    where = C.check_where(where, x.shape)
    x = x.astype(C.compute_dtype(x))
    x = C.keep(where, x, 0.0)
    total = jnp.sum(x, axis=axis)
    if not average:
        return total
    if where is None:
        return total / x.shape[axis]
    count = jnp.sum(jnp.broadcast_to(where, x.shape), axis=axis).astype(x.dtype)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


# --------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------


# Coefficients (−1)ⁿ/(n(n − 1)), n = 2 … 17, of φ(1 + u)/u² = Σₙ (−1)ⁿ uⁿ⁻²/(n(n − 1)),
# φ(x) = x log x − x + 1; for |u| < 0.1 the 16 terms reach float64 precision.
_PHI_SERIES = tuple((-1.0) ** n / (n * (n - 1)) for n in range(2, 18))
_PHI_SMALL = 0.1


def _phi(log_r: jax.Array, bound: float) -> jax.Array:
    """φ(r) = r log r − r + 1 ≥ 0 of r = exp(log_r) ∈ [0, e^bound], from its logarithm.

    For r near 1 (|r − 1| < 0.1), where r log r and r − 1 cancel, it is u²·Σₙ (−1)ⁿ
    uⁿ⁻²/(n(n − 1)) with u = expm1(log r); elsewhere r·log r − r + 1, which is 1 at
    r = 0. Each branch sees only inputs it is safe for, so the gradient is finite for
    every log r in [−∞, bound]. A log-ratio above ``bound`` (its largest value) can only
    come from rounding at the lowest float (`N.log_softmax`'s floor for −inf logits) and
    is cut to it; the comparison is strict so that the gradient at the bound passes.
    """
    log_r = jnp.where(log_r > bound, bound, log_r)
    u = jnp.expm1(log_r)
    small = jnp.abs(u) < _PHI_SMALL
    us = jnp.where(small, u, 0.0)
    series = jnp.zeros_like(us)
    for c in reversed(_PHI_SERIES):
        series = series * us + c
    # Far from 1: r·log r, with 0·log 0 = 0 at r = 0 (log r = −∞, or underflowed).
    lf = jnp.where(small, 1.0, log_r)
    r = jnp.exp(lf)
    lf = jnp.where(r == 0, 0.0, lf)
    far = r * lf - r + 1.0
    return jnp.where(small, us * us * series, far)


def _jsd(s_logits: jax.Array, t_logits: jax.Array, beta: float, axis: int) -> jax.Array:
    """β·KL(t‖m) + (1 − β)·KL(s‖m), m = β·t + (1 − β)·s, for 0 < β < 1.

    Per class β(t − m) + (1 − β)(s − m) = 0, so the divergence is the sum of the
    generalized terms β·[t log(t/m) − t + m] + (1 − β)·[s log(s/m) − s + m] =
    m·[β·φ(t/m) + (1 − β)·φ(s/m)], φ(x) = x log x − x + 1, each ≥ 0 and accurate also
    for s ≈ t (`_phi`): the plain sum of t log(t/m) terms would lose every digit to
    cancellation there, where JSD is of order (s − t)². Everything is formed from the
    log-probabilities: the ratios t/m ≤ 1/β and s/m ≤ 1/(1 − β) are bounded, and no
    division by a mixture probability that underflows (logits tens apart in float32)
    reaches the reverse pass, where it would give 0·∞.
    """
    log_s = N.log_softmax(s_logits, axis)
    log_t = N.log_softmax(t_logits, axis)
    log_m = jnp.logaddexp(math.log(beta) + log_t, math.log1p(-beta) + log_s)
    phi_t = _phi(log_t - log_m, -math.log(beta))
    phi_s = _phi(log_s - log_m, -math.log1p(-beta))
    terms = jnp.exp(log_m) * (beta * phi_t + (1.0 - beta) * phi_s)
    return jnp.sum(terms, axis=axis)


def _check_divergence(divergence, temperature, beta) -> None:
    _check_choice("divergence", divergence, DIVERGENCES)
    _check_temperature(temperature)
    C.check_in_range("beta", beta, 0.0, 1.0)
    if divergence == "jsd" and not isinstance(beta, numbers.Real):
        raise TypeError(f"`beta` must be a Python number in [0, 1], got {beta!r}.")


def _resolved_divergence(divergence: str, beta) -> str:
    """The divergence actually computed: "jsd" at β = 0 is "forward_kl", at β = 1 "reverse_kl"."""
    if divergence == "jsd" and beta == 0:
        return "forward_kl"
    if divergence == "jsd" and beta == 1:
        return "reverse_kl"
    return divergence


def _divergence(s: jax.Array, t: jax.Array, divergence: str, beta, axis: int) -> jax.Array:
    """The per-token divergence between softmax(t) (teacher) and softmax(s) (student), of
    logits already divided by the temperature (also `fused_linear_distillation_loss`'s)."""
    divergence = _resolved_divergence(divergence, beta)
    if divergence == "forward_kl":
        return _kl_from_logits(t, s, axis)
    if divergence == "reverse_kl":
        return _kl_from_logits(s, t, axis)
    if divergence == "jsd":
        return _jsd(s, t, beta, axis)
    p_s = jnp.exp(N.log_softmax(s, axis))
    p_t = jnp.exp(N.log_softmax(t, axis))
    return 0.5 * jnp.sum(jnp.abs(p_s - p_t), axis=axis)


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    scale_by_temperature_squared: bool = False,
    axis: int = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Per-token divergence between the teacher's and the student's next-token distributions.

    With s = softmax(student_logits / T) and t = softmax(teacher_logits / T):

        "forward_kl":  KL(t‖s) = Σ t log(t/s)           (Hinton et al.'s soft targets)
        "reverse_kl":  KL(s‖t) = Σ s log(s/t)           (mode-seeking, as in MiniLLM)
        "jsd":         JSD_β = β·KL(t‖m) + (1 − β)·KL(s‖m),  m = β·t + (1 − β)·s
        "tvd":         ½ Σ |s − t|

    The generalized Jensen-Shannon divergence follows GKD (Agarwal et al., 2024) and
    TRL's ``GKDTrainer.generalized_jsd_loss``: ``beta`` weighs the teacher in the mixture
    m. Its value tends to 0 at both ends (m → s at β = 0, m → t at β = 1), and
    JSD_β/β → KL(t‖s) as β → 0, JSD_β/(1 − β) → KL(s‖t) as β → 1; so, as in TRL (and
    Liger-Kernel's JSD), ``beta=0`` *is* "forward_kl" and ``beta=1`` *is* "reverse_kl"
    (not the degenerate 0). ``beta=0.5`` is the usual symmetric JSD, ≤ log 2.

    The teacher gets no gradient (``stop_gradient``): the loss trains the student only.
    With ``scale_by_temperature_squared=True`` the loss is multiplied by T², which keeps
    the size of the soft-target gradients (they scale as 1/T²) independent of T, as
    Hinton et al. (2015) recommend when mixing with a hard-label loss.

    −inf logits (a masked vocabulary) are tokens of probability 0: with −inf at the same
    tokens in both models every divergence is finite with finite gradients. The KLs are
    +inf where the reference distribution has mass that the other puts −inf logits on,
    as the math says. Every divergence stays accurate for nearby distributions (a
    converged student), where the textbook forms cancel: the KLs are
    `kl_divergence_from_logits`'s computation, and JSD is summed from the generalized
    terms β·[t log(t/m) − t + m] + (1 − β)·[s log(s/m) − s + m], each ≥ 0 (a series
    where s ≈ t), equal to it because β(t − m) + (1 − β)(s − m) = 0.

    Args:
      student_logits: floating array [..., V, ...], vocabulary along ``axis``.
      teacher_logits: floating array broadcastable to ``student_logits``' shape.
      temperature: T > 0, applied to both models' logits.
      divergence: one of "forward_kl", "reverse_kl", "jsd", "tvd".
      beta: the teacher's weight β ∈ [0, 1] in the mixture of "jsd" (ignored otherwise).
      scale_by_temperature_squared: multiply by T² (Hinton et al.'s gradient scaling).
      axis: the vocabulary axis.
      where, weights, reduction: as in every loss (``docs/conventions.md``), over the
        per-token shape.

    Returns:
      With ``reduction="none"`` the per-token divergence, of the student logits' shape
      without ``axis``; else a scalar. float32 (float64 for float64 logits).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> s = jnp.log(jnp.array([0.5, 0.5]))
      >>> t = jnp.log(jnp.array([1.0, 0.0]))
      >>> jaxloss.distillation_loss(s, t), jaxloss.distillation_loss(s, t, divergence="tvd")
      (Array(0.6931472, dtype=float32), Array(0.5, dtype=float32))

    References:
      Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
      Agarwal et al., "On-policy distillation of language models: learning from
      self-generated mistakes" (GKD), ICLR 2024; Gu et al., "MiniLLM" (reverse KL), ICLR
      2024.
    """
    _check_divergence(divergence, temperature, beta)
    s = C.as_float("student_logits", student_logits)
    t = C.as_float("teacher_logits", teacher_logits)
    axis = _class_axis(axis, s, "student_logits")
    if not _broadcasts_to(t.shape, s.shape):
        raise ValueError(
            f"`teacher_logits` of shape {t.shape} must broadcast to the shape of "
            f"`student_logits` {s.shape} (the same vocabulary along `axis`)."
        )
    batch = _batch_shape(s, axis)
    where, weights = C.prepare(batch, where, weights, reduction)
    dtype = C.compute_dtype(s, t)
    s = s.astype(dtype)
    t = jax.lax.stop_gradient(jnp.broadcast_to(t, s.shape).astype(dtype))
    row = _row(where, axis, batch)
    s = C.keep(row, s, 0.0) / temperature
    t = C.keep(row, t, 0.0) / temperature
    loss = _divergence(s, t, divergence, beta, axis)
    if scale_by_temperature_squared:
        loss = loss * (temperature * temperature)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Policy-gradient losses (PPO, GRPO and their variants)
# --------------------------------------------------------------------------------------


def _safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 with zero gradient where count = 0."""
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def _advantages(advantages: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-sequence advantages [...] expanded to the per-token shape [..., T]."""
    if advantages.ndim == len(shape) - 1 and _broadcasts_to(advantages.shape, shape[:-1]):
        return jnp.broadcast_to(jnp.expand_dims(advantages, -1), shape)
    if advantages.ndim == len(shape) and _broadcasts_to(advantages.shape, shape):
        return jnp.broadcast_to(advantages, shape)
    raise ValueError(
        f"`advantages` of shape {advantages.shape} must be per sequence, broadcastable to "
        f"{shape[:-1]}, or per token, broadcastable to `log_probs`' shape {shape}."
    )


def _check_policy_options(aggregation, clip_epsilon, clip_epsilon_high, max_length):
    """Validate the options of the clipped surrogate and its aggregation; returns ε_high."""
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    C.check_in_range("clip_epsilon", clip_epsilon, 0.0, math.inf)
    if clip_epsilon_high is None:
        clip_epsilon_high = clip_epsilon
    C.check_in_range("clip_epsilon_high", clip_epsilon_high, 0.0, math.inf)
    if aggregation == "sequence_sum_normalized":
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
            raise TypeError(
                '`max_length` (a positive int) is required with aggregation="sequence_sum_'
                f'normalized", got {max_length!r}.'
            )
        if max_length < 1:
            raise ValueError(f"`max_length` must be a positive int, got {max_length!r}.")
    elif max_length is not None:
        raise ValueError(
            '`max_length` is used only with aggregation="sequence_sum_normalized"; got '
            f"max_length={max_length!r} with aggregation={aggregation!r}."
        )
    return clip_epsilon_high


def _clipped_surrogate(lp, old, adv, clip_low, clip_high):
    """−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A) per token, r = exp(log π − log π_old).

    That is −A·min(r, 1 + ε_high) for A ≥ 0 and −A·max(r, 1 − ε_low) for A < 0: −A·r
    unless r lies strictly beyond the bound on the advantage's side, where it is the
    constant −A·(bound), with derivative 0. So the derivative is the full one-sided
    −A·r at the bound on the other side, where the surrogate is smooth, and, at the kink
    (r = 1 + ε_high with A > 0, r = 1 − ε_low with A < 0), the subgradient −A·r of the
    unclipped side, as TRL's and Liger-Kernel's torch.min/clamp give and as the clip
    fractions count (strict inequalities). The ratio is exponentiated only where it is
    not clipped (double where): log π − log π_old = 100 overflows float32, but there the
    surrogate is the clipped constant (A ≥ 0), with derivative 0, also for A = 0.
    """
    delta = lp - old
    ratio = jnp.exp(delta)  # only compared: may be inf where the ratio is clipped
    up = adv >= 0
    clipped = jnp.where(up, ratio > 1.0 + clip_high, ratio < 1.0 - clip_low)
    r = jnp.exp(jnp.where(clipped, 0.0, delta))
    bound = jnp.where(up, 1.0 + clip_high, 1.0 - clip_low)
    return -adv * jnp.where(clipped, bound, r)


def _aggregation_weights(mask: jax.Array, aggregation: str, max_length) -> jax.Array:
    """Per-token weights c [..., T] with the aggregated loss = Σ c·ℓ, from the 0/1 ``mask``.

    token_mean: m / Σ m; sequence_mean: m / (B·Σ_t m), 0 for a sequence with no kept
    token (which still counts in B); sequence_sum_normalized: m / (B·max_length).
    """
    n_sequences = math.prod(mask.shape[:-1])
    if aggregation == "token_mean":
        return _safe_mean(mask, jnp.sum(mask))
    if aggregation == "sequence_mean":
        return _safe_mean(mask, jnp.sum(mask, axis=-1, keepdims=True)) / n_sequences
    return mask / (n_sequences * max_length)


def policy_gradient_loss(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    *,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    where: ArrayLike | None = None,
    aggregation: str = "token_mean",
    max_length: int | None = None,
    return_metrics: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped policy-gradient surrogate of PPO, aggregated as in DAPO, GRPO or Dr. GRPO.

    Per token, with the ratio rₜ = exp(log π(yₜ) − log π_old(yₜ)) and advantage Aₜ:

        ℓₜ = −min(rₜ·Aₜ, clip(rₜ, 1 − ε_low, 1 + ε_high)·Aₜ)

    then, over the kept tokens (mₜ = ``where``) of B sequences:

        "token_mean"               Σ_{b,t} m·ℓ / Σ_{b,t} m                   (DAPO)
        "sequence_mean"            (1/B) Σ_b [Σ_t m·ℓ / Σ_t m]                (GRPO)
        "sequence_sum_normalized"  Σ_{b,t} m·ℓ / (B · max_length)             (Dr. GRPO)

    A mean over no kept token is 0 with zero gradient; in "sequence_mean" a sequence
    with no kept token contributes 0 and still counts in B (as TRL's GRPO loss).

    ℓₜ is −A·r except strictly beyond the bound on the advantage's side (r > 1 + ε_high
    for A ≥ 0, r < 1 − ε_low for A < 0), where it is constant, with derivative 0. So at
    the other bound, where ℓₜ is smooth, the derivative is the full −A·r; at the kink
    (r = 1 + ε_high with A > 0, r = 1 − ε_low with A < 0) it is the subgradient −A·r
    of the unclipped side, as in TRL and Liger-Kernel. The ratio is never formed where
    it is clipped, so a log-ratio that overflows exp there (100 in float32) gives the
    finite clipped value with gradient 0, also for A = 0. The
    gradient flows to ``log_probs`` only: ``old_log_probs`` and ``advantages`` are
    constants of the update (``stop_gradient``). Masked-out tokens get zero gradient even
    where their inputs are NaN.

    Args:
      log_probs: floating array [..., T]: the current policy's log-probabilities of the
        sampled tokens (e.g. from `token_log_probs`), sequences along the last axis.
      old_log_probs: floating array broadcastable to ``log_probs``: the sampling
        policy's log-probabilities of the same tokens.
      advantages: floating array, per sequence [...] (broadcast along T) or per token
        (broadcastable to ``log_probs``).
      clip_epsilon: ε_low ≥ 0, the lower clip range.
      clip_epsilon_high: ε_high ≥ 0, the upper clip range (DAPO's "clip-higher");
        defaults to ``clip_epsilon``.
      where: optional boolean mask (True = keep) broadcastable to ``log_probs``.
      aggregation: "token_mean", "sequence_mean" or "sequence_sum_normalized".
      max_length: the fixed normalizer of "sequence_sum_normalized" (e.g. the maximum
        completion length); required there, not accepted with the other aggregations.
      return_metrics: also return a dict of diagnostics (no gradient): "clip_fraction_low"
        (tokens with A < 0 and r < 1 − ε_low, whose gradient the clip removes),
        "clip_fraction_high" (A > 0 and r > 1 + ε_high) and "clip_fraction" (their sum),
        each a fraction of the kept tokens.

    Returns:
      The scalar loss, float32 (float64 for float64 inputs); with ``return_metrics`` the
      pair ``(loss, metrics)``.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.2, 0.4]]))
      >>> old = jnp.log(jnp.array([[0.5, 0.25], [0.2, 0.4]]))
      >>> jaxloss.policy_gradient_loss(log_probs, old, jnp.array([1.0, -1.0]))
      Array(-0.05, dtype=float32)

    References:
      Schulman et al., "Proximal policy optimization algorithms" (2017); Shao et al.,
      "DeepSeekMath" (GRPO, 2024); Yu et al., "DAPO" (2025); Liu et al., "Understanding
      R1-Zero-like training: a critical perspective" (Dr. GRPO, 2025).
    """
    clip_epsilon_high = _check_policy_options(
        aggregation, clip_epsilon, clip_epsilon_high, max_length
    )
    lp = C.as_float("log_probs", log_probs)
    old = C.as_float("old_log_probs", old_log_probs)
    adv = C.as_float("advantages", advantages, allow_int=True)
    if lp.ndim == 0:
        raise ValueError("`log_probs` must have a sequence axis (the last); got a scalar.")
    shape = lp.shape
    C._check_broadcastable("old_log_probs", old, shape)
    adv = _advantages(adv, shape)
    where = C.check_where(where, shape)
    dtype = C.compute_dtype(lp, old, adv)
    lp = lp.astype(dtype)
    old = jax.lax.stop_gradient(jnp.broadcast_to(old, shape).astype(dtype))
    adv = jax.lax.stop_gradient(adv.astype(dtype))
    lp, old, adv = C.keep(where, lp, 0.0), C.keep(where, old, 0.0), C.keep(where, adv, 0.0)

    per_token = _clipped_surrogate(lp, old, adv, clip_epsilon, clip_epsilon_high)
    mask = jnp.ones(shape, dtype) if where is None else jnp.broadcast_to(where, shape).astype(dtype)
    per_token = jnp.where(mask > 0, per_token, 0.0)
    loss = jnp.sum(_aggregation_weights(mask, aggregation, max_length) * per_token).astype(dtype)
    if not return_metrics:
        return loss
    ratio = jax.lax.stop_gradient(jnp.exp(lp - old))
    low = (ratio < 1.0 - clip_epsilon) & (adv < 0)
    high = (ratio > 1.0 + clip_epsilon_high) & (adv > 0)
    count = jnp.sum(mask)
    metrics = {
        "clip_fraction_low": _safe_mean(jnp.sum(jnp.where(low, mask, 0.0)), count),
        "clip_fraction_high": _safe_mean(jnp.sum(jnp.where(high, mask, 0.0)), count),
    }
    metrics["clip_fraction"] = metrics["clip_fraction_low"] + metrics["clip_fraction_high"]
    return loss, metrics


# Taylor coefficients 1/n! (n = 2 … 17) of exp(Δ) − 1 − Δ = Σ_{n≥2} Δⁿ/n!, for |Δ| < ½:
# the 16 terms reach float64 precision there (½¹⁶/17! < 1e-17 relative to Δ²/2).
_K3_SERIES = tuple(1.0 / math.factorial(n) for n in range(2, 18))
_K3_SMALL = 0.5


def _k3(delta: jax.Array) -> jax.Array:
    """exp(Δ) − Δ − 1 ≥ 0, with full relative precision also for small |Δ|.

    expm1(Δ) − Δ cancels as Δ → 0 (relative error ≈ 2ε/|Δ|, and exp(Δ) − Δ − 1 rounds
    to a negative number in float32 for |Δ| ≲ 1e-4); below |Δ| = ½ the Taylor series
    Δ² Σ Δⁿ⁻²/n! is used instead (each branch sees only inputs it is safe for).
    """
    small = jnp.abs(delta) < _K3_SMALL
    d = jnp.where(small, delta, 0.0)
    series = jnp.zeros_like(d)
    for c in reversed(_K3_SERIES):
        series = series * d + c
    series = series * d * d
    far = jnp.where(small, 1.0, delta)
    return jnp.where(small, series, jnp.expm1(far) - far)


def _kl_estimate(lp: jax.Array, ref: jax.Array, estimator: str) -> jax.Array:
    """The per-token estimator k1, k2 or k3 of KL(π‖π_ref), Δ = log π_ref − log π."""
    delta = ref - lp
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta * delta
    return _k3(delta)


def kl_penalty(
    log_probs: ArrayLike,
    reference_log_probs: ArrayLike,
    *,
    estimator: str = "k3",
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Per-token estimate of KL(π‖π_ref) from the log-probabilities of sampled tokens.

    With Δ = log π_ref(y) − log π(y) for a token y sampled from π (Schulman, 2020):

        "k1":  −Δ                     unbiased, high variance, can be negative
        "k2":  ½ Δ²                    biased, low variance, ≥ 0
        "k3":  exp(Δ) − Δ − 1          unbiased, low variance, ≥ 0  (GRPO's penalty)

    k3 is computed to full relative precision also for small |Δ| (a Taylor series
    below |Δ| = ½, where exp(Δ) − Δ − 1 would cancel and even round to a negative
    number in float32) and as expm1(Δ) − Δ elsewhere, which is finite for every finite
    Δ < log(largest float) (88.7 in float32; beyond that the true value exceeds the
    float range and is +inf). It is ≥ 0 for every Δ, and its gradient exp(Δ) − 1 in
    Δ is finite there too. Gradients flow to both inputs.

    Args:
      log_probs: floating array [...]: the policy's log-probabilities of the sampled
        tokens.
      reference_log_probs: floating array broadcastable to ``log_probs``: the reference
        policy's log-probabilities of the same tokens.
      estimator: "k1", "k2" or "k3".
      where, weights, reduction: as in every loss (``docs/conventions.md``).

    Returns:
      With ``reduction="none"`` the per-token estimate, of ``log_probs``' shape; else a
      scalar. float32 (float64 for float64 inputs).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> lp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.0, -2.0 + jnp.log(2.0)])
      >>> jaxloss.kl_penalty(lp, ref)  # exp(log 2) − log 2 − 1
      Array([0.        , 0.30685282], dtype=float32)

    References:
      Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html;
      Shao et al., "DeepSeekMath" (GRPO, 2024).
    """
    _check_choice("estimator", estimator, ESTIMATORS)
    lp = C.as_float("log_probs", log_probs)
    ref = C.as_float("reference_log_probs", reference_log_probs)
    C._check_broadcastable("reference_log_probs", ref, lp.shape)
    where, weights = C.prepare(lp.shape, where, weights, reduction)
    dtype = C.compute_dtype(lp, ref)
    lp, ref = lp.astype(dtype), jnp.broadcast_to(ref, lp.shape).astype(dtype)
    lp, ref = C.keep(where, lp, 0.0), C.keep(where, ref, 0.0)
    loss = _kl_estimate(lp, ref, estimator)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def group_relative_advantages(
    rewards: ArrayLike,
    *,
    group_size: int,
    normalize: bool = True,
    eps: float = 1e-4,
) -> jax.Array:
    """GRPO's advantages: each reward relative to the others sampled for the same prompt.

        Âᵢ = (rᵢ − mean(r_g)) / (std(r_g) + eps)      (``normalize=True``)
        Âᵢ = rᵢ − mean(r_g)                           (``normalize=False``, as Dr. GRPO)

    where g is the group of i: consecutive blocks of ``group_size`` samples along the last
    axis (the completions of one prompt, as TRL's ``GRPOTrainer`` lays them out) and std
    is the unbiased standard deviation (ddof = 1, as TRL's ``torch.std``). A group of
    equal rewards has std 0 and advantages 0, with a finite gradient (the zero
    subgradient of the std).

    Args:
      rewards: floating (or integer) array [..., B] with B a multiple of ``group_size``.
      group_size: the number of samples per prompt, a Python int (≥ 2 with
        ``normalize``: one sample has no standard deviation).
      normalize: divide by the group's standard deviation (plus ``eps``).
      eps: ≥ 0, added to the standard deviation.

    Returns:
      Array of ``rewards``' shape, float32 (float64 for float64 rewards).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.group_relative_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]), group_size=2)
      Array([ 0.7070068, -0.7070068,  0.       ,  0.       ], dtype=float32)

    References:
      Shao et al., "DeepSeekMath: pushing the limits of mathematical reasoning in open
      language models" (GRPO), 2024; Liu et al., "Understanding R1-Zero-like training"
      (Dr. GRPO), 2025.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise TypeError(f"`group_size` must be a Python int, got {group_size!r}.")
    smallest = 2 if normalize else 1
    if group_size < smallest:
        raise ValueError(
            f"`group_size` must be ≥ {smallest}{' with normalize=True' if normalize else ''}, "
            f"got {group_size}."
        )
    C.check_in_range("eps", eps, 0.0, math.inf)
    r = C.as_float("rewards", rewards, allow_int=True)
    if r.ndim == 0:
        raise ValueError("`rewards` must have a batch axis (the last); got a scalar.")
    n = r.shape[-1]
    if n % group_size:
        raise ValueError(
            f"The last axis of `rewards` ({n} samples, shape {r.shape}) is not a multiple "
            f"of `group_size` {group_size}: pass every group whole (B = prompts × "
            "group_size)."
        )
    r = r.astype(C.compute_dtype(r))
    groups = r.reshape(r.shape[:-1] + (n // group_size, group_size))
    centered = groups - jnp.mean(groups, axis=-1, keepdims=True)
    if normalize:
        var = jnp.sum(centered * centered, axis=-1, keepdims=True) / (group_size - 1)
        positive = var > 0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
        centered = centered / (std + eps)
    return centered.reshape(r.shape)
