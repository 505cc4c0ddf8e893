"""Preference-optimization losses on per-sequence log-probabilities.

DPO and its variants, SimPO, ORPO, CPO and KTO: each is a Bradley–Terry (or
Kahneman–Tversky) loss on a margin between log-probabilities of a chosen and a rejected
response. The inputs are per-sequence log-probabilities ([B], one entry per pair or per
example), summed or length-averaged over the response tokens as each loss defines; the
losses are per pair by default, with the usual ``where=``, ``weights=`` and
``reduction=``.

Every −log σ(z) is a softplus(−z) computed by ``_numerics.binary_logit_nll`` (the label
smoothed forms are its soft-label case), so values and gradients stay finite for
log-ratio gaps of any finite size in float32.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Hashable
from typing import TypeGuard, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxloss import _conventions as C
from jaxloss import _engine as E
from jaxloss import _numerics as N
from jaxloss._classification import _class_ids
from jaxloss._fused_language_model import TokenLogProbs, fused_linear_token_log_probs
from jaxloss._language_model import sequence_log_probs

ArrayLike = C.ArrayLike

DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_finite(name: str, value) -> None:
    if value is None or (_is_number(value) and not math.isfinite(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def _check_non_negative(name: str, value) -> None:
    if _is_number(value) and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}.")


def _check_label_smoothing(label_smoothing, *, robust: bool = False) -> None:
    """ε ∈ [0, 1] (conservative: the probability that a label is flipped); [0, ½) if robust."""
    if label_smoothing is None or isinstance(label_smoothing, bool):
        raise TypeError(f"`label_smoothing` must be a number in [0, 1], got {label_smoothing!r}.")
    if not _is_number(label_smoothing):
        return  # an array: not checkable at trace time
    if robust and not 0 <= label_smoothing < 0.5:
        raise ValueError(
            f"`label_smoothing` must be in [0, 0.5) for loss_type='robust' (the robust loss "
            f"divides by 1 − 2ε), got {label_smoothing!r}."
        )
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)


def _inputs(where, weights, reduction, fill: float = 0.0, **named):
    """The floating inputs of a pair loss in the compute dtype, masked entries set to ``fill``.

    The first named input fixes the loss shape (the shape rule); ``fill`` replaces
    masked-out entries before any arithmetic, so their gradient is exactly 0 even for NaN.
    """
    arrays, where, weights = C.float_inputs(where, weights, reduction, **named)
    return [C.keep(where, a, fill) for a in arrays], where, weights


def _soft_label(label_smoothing, dtype) -> jax.Array:
    return jnp.asarray(1.0 - jnp.asarray(label_smoothing, dtype), dtype)


# --------------------------------------------------------------------------------------
# DPO and its variants
# --------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    reference_chosen_logps: ArrayLike,
    reference_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Direct preference optimization (DPO) loss and its variants, per pair.

    With the log-ratio margin u = (π_c − ref_c) − (π_r − ref_r) and h = β·u:

        "sigmoid":  −(1 − ε)·log σ(h) − ε·log σ(−h)            (ε = 0: DPO)
        "robust":   (−(1 − ε)·log σ(h) + ε·log σ(−h)) / (1 − 2ε)
        "hinge":    max(0, 1 − h)                               (SLiC)
        "ipo":      (u − 1/(2β))²                               (IPO)

    "sigmoid" with ε > 0 is conservative DPO (cDPO: the label is flipped with
    probability ε); "robust" is the unbiased loss of Chowdhury et al. under the same
    noise model (ε < ½). "ipo" expects length-averaged log-probabilities (mean over the
    response tokens), as in Azar et al.; the others usually take summed ones. The
    implicit rewards β·(π − ref) that trainers log are `dpo_implicit_rewards`.

    Args:
      policy_chosen_logps: π_c, floating array [B] (any shape): the policy's
        log-probability of each chosen response. The loss has its shape.
      policy_rejected_logps: π_r, the policy's log-probability of the rejected
        responses, broadcastable to ``policy_chosen_logps``.
      reference_chosen_logps: ref_c, the reference model's log-probability of the chosen
        responses, broadcastable (treated as constants only if you stop their gradient).
      reference_rejected_logps: ref_r, likewise for the rejected responses.
      beta: β > 0, the strength of the KL regularization toward the reference.
      loss_type: one of ``"sigmoid"``, ``"robust"``, ``"hinge"``, ``"ipo"``.
      label_smoothing: ε, the assumed probability that a preference label is flipped:
        in [0, 1] for ``"sigmoid"``, in [0, 0.5) for ``"robust"``, and 0 for ``"hinge"``
        and ``"ipo"`` (which have no smoothed form).
      where: optional boolean mask broadcastable to the loss; True keeps a pair.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per pair), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      ``policy_chosen_logps``' shape for ``"none"``, else a scalar; float32, or float64
      for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> pc, pr = jnp.array([-10.0, -12.0]), jnp.array([-14.0, -11.0])
      >>> rc, rr = jnp.array([-11.0, -11.0]), jnp.array([-13.0, -13.0])
      >>> jaxloss.dpo_loss(pc, pr, rc, rr, beta=0.5)
      Array([0.3132617, 1.7014133], dtype=float32)
      >>> jaxloss.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
      Array([0. , 2.5], dtype=float32)

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
      a Reward Model", NeurIPS 2023 (and Mitchell, "A note on DPO with noisy
      preferences", 2023, for cDPO); Chowdhury et al., "Provably Robust DPO: Aligning
      Language Models with Noisy Feedback", ICML 2024; Zhao et al., "SLiC-HF: Sequence
      Likelihood Calibration with Human Feedback", 2023; Azar et al., "A General
      Theoretical Paradigm to Understand Learning from Human Preferences", AISTATS 2024.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {DPO_LOSS_TYPES}, got {loss_type!r}.")
    C.check_positive("beta", beta)
    if loss_type in ("hinge", "ipo"):
        if not (_is_number(label_smoothing) and label_smoothing == 0):
            raise ValueError(
                f"`label_smoothing` must be 0 for loss_type={loss_type!r}, which has no "
                f"smoothed form; got {label_smoothing!r}. Use loss_type='sigmoid' (cDPO) or "
                "'robust' for noisy labels."
            )
    else:
        _check_label_smoothing(label_smoothing, robust=loss_type == "robust")
    (pc, pr, rc, rr), where, weights = _inputs(
        where,
        weights,
        reduction,
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    u = (pc - rc) - (pr - rr)
    if loss_type == "ipo":
        loss = jnp.square(u - 1.0 / (2.0 * beta))
    elif loss_type == "hinge":
        loss = jax.nn.relu(1.0 - beta * u)
    elif loss_type == "sigmoid":
        loss = N.binary_logit_nll(beta * u, _soft_label(label_smoothing, u.dtype))
    else:
        eps = jnp.asarray(label_smoothing, u.dtype)
        # (1 − ε)·softplus(−h) − ε·softplus(h): the weighted binary NLL with weight −ε.
        loss = N.weighted_binary_logit_nll(beta * u, 1.0 - eps, -eps) / (1.0 - 2.0 * eps)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def dpo_implicit_rewards(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    reference_chosen_logps: ArrayLike,
    reference_rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """The implicit rewards β·(π − ref) of the chosen and rejected responses under DPO.

        r_c = β·(π_c − ref_c),   r_r = β·(π_r − ref_r)

    The quantities DPO trainers log: their mean, their margin r_c − r_r (the ``h`` of
    `dpo_loss`) and the accuracy mean(r_c > r_r). They are differentiable; wrap them in
    ``jax.lax.stop_gradient`` when only logging.

    Args:
      policy_chosen_logps, policy_rejected_logps: as in `dpo_loss`.
      reference_chosen_logps, reference_rejected_logps: as in `dpo_loss` (all four
        broadcastable to ``policy_chosen_logps``' shape).
      beta: β > 0, as in `dpo_loss`.

    Returns:
      ``(chosen_rewards, rejected_rewards)``, each of ``policy_chosen_logps``' shape;
      float32, or float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> rc, rr = jaxloss.dpo_implicit_rewards(
      ...     jnp.array([-10.0]), jnp.array([-14.0]), jnp.array([-11.0]), jnp.array([-13.0]),
      ...     beta=0.5)
      >>> rc, rr
      (Array([0.5], dtype=float32), Array([-0.5], dtype=float32))

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
      a Reward Model", NeurIPS 2023 (section 5).
    """
    C.check_positive("beta", beta)
    (pc, pr, rc, rr), _, _ = _inputs(
        None,
        None,
        "none",
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    shape = pc.shape
    return (
        jnp.broadcast_to(beta * (pc - rc), shape),
        jnp.broadcast_to(beta * (pr - rr), shape),
    )


# --------------------------------------------------------------------------------------
# Reference-free pair losses
# --------------------------------------------------------------------------------------


def simpo_loss(
    chosen_avg_logps: ArrayLike,
    rejected_avg_logps: ArrayLike,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Simple preference optimization (SimPO): a reference-free margin loss, per pair.

        h = β·(c − r) − γ,   ℓ = −(1 − ε)·log σ(h) − ε·log σ(−h)

    on the policy's length-averaged log-probabilities c and r of the chosen and rejected
    responses (Σ log p over the response tokens / their count). γ is the target reward
    margin (TRL's ``gamma_beta_ratio`` is γ/β); ε smooths the label as in `dpo_loss`'s
    ``"sigmoid"``. With γ = 0 it is DPO with no reference model (ref_c = ref_r = 0).

    Args:
      chosen_avg_logps: c, floating array [B] (any shape); the loss has its shape.
      rejected_avg_logps: r, broadcastable to ``chosen_avg_logps``.
      beta: β > 0 (the paper uses 2 to 10).
      gamma: γ, the target margin (a finite number; 0.5 to 1.5 in the paper).
      label_smoothing: ε in [0, 1].
      where, weights, reduction: as in `dpo_loss`.

    Returns:
      ``chosen_avg_logps``' shape for ``"none"``, else a scalar; float32, or float64 for
      float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.simpo_loss(jnp.array([-0.5, -1.0]), jnp.array([-1.0, -0.5]))
      Array([0.474077 , 1.7014133], dtype=float32)

    References:
      Meng, Xia & Chen, "SimPO: Simple Preference Optimization with a Reference-Free
      Reward", NeurIPS 2024.
    """
    C.check_positive("beta", beta)
    _check_finite("gamma", gamma)
    _check_label_smoothing(label_smoothing)
    (c, r), where, weights = _inputs(
        where,
        weights,
        reduction,
        chosen_avg_logps=chosen_avg_logps,
        rejected_avg_logps=rejected_avg_logps,
    )
    h = beta * (c - r) - gamma
    loss = N.binary_logit_nll(h, _soft_label(label_smoothing, h.dtype))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def cpo_loss(
    chosen_logps: ArrayLike,
    rejected_logps: ArrayLike,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Contrastive preference optimization (CPO): the preference term, per pair.

        h = β·(c − r),   ℓ = −(1 − ε)·log σ(h) − ε·log σ(−h)

    on the policy's (summed) log-probabilities c and r of the chosen and rejected
    responses: DPO with the reference model dropped. CPO's full objective adds the
    negative log-likelihood of the chosen responses, −c (or its token mean), which this
    function does not include: add it yourself.

    Args:
      chosen_logps: c, floating array [B] (any shape); the loss has its shape.
      rejected_logps: r, broadcastable to ``chosen_logps``.
      beta: β > 0.
      label_smoothing: ε in [0, 1], as in `dpo_loss`'s ``"sigmoid"``.
      where, weights, reduction: as in `dpo_loss`.

    Returns:
      ``chosen_logps``' shape for ``"none"``, else a scalar; float32, or float64 for
      float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.cpo_loss(jnp.array([-10.0, -20.0]), jnp.array([-20.0, -10.0]), beta=0.1)
      Array([0.3132617, 1.3132617], dtype=float32)

    References:
      Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
      Performance in Machine Translation", ICML 2024.
    """
    C.check_positive("beta", beta)
    _check_label_smoothing(label_smoothing)
    (c, r), where, weights = _inputs(
        where, weights, reduction, chosen_logps=chosen_logps, rejected_logps=rejected_logps
    )
    h = beta * (c - r)
    loss = N.binary_logit_nll(h, _soft_label(label_smoothing, h.dtype))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 − exp(x)) for x < 0, accurate everywhere (Mächler, 2012).

    log(−expm1(x)) near 0 (where 1 − exp(x) cancels), log1p(−exp(x)) below −log 2
    (where expm1(x) → −1 loses the small exp(x)); each branch sees only inputs it is
    safe for, so the gradient of the unused one cannot be NaN.
    """
    near = x > -N.LOG_2
    return jnp.where(
        near,
        jnp.log(-jnp.expm1(jnp.where(near, x, -1.0))),
        jnp.log1p(-jnp.exp(jnp.where(near, -1.0, x))),
    )


def _log_odds(log_p: jax.Array) -> jax.Array:
    """log(p / (1 − p)) from log p ≤ 0, finite for log p = 0 (NaN for log p > 0).

    log p in [−tiny, 0] (p within rounding of 1, e.g. a float32 log-softmax that rounded
    to 0) is read as −tiny, the closest value whose 1 − p is representable: the odds stay
    finite (≈ 87 in float32) and so does the gradient 1/(1 − p) (with zero gradient
    across that interval, where the true slope is beyond any float).
    """
    tiny = jnp.finfo(log_p.dtype).tiny
    log_p = jnp.where((log_p > -tiny) & (log_p <= 0), -tiny, log_p)
    return log_p - _log1mexp(log_p)


def _check_log_probabilities(**named: jax.Array) -> None:
    """Reject concrete log-probabilities above 0 (probabilities above 1)."""
    for name, x in named.items():
        if isinstance(x, jax.core.Tracer):
            continue
        values = np.asarray(x)
        if bool(np.any(values > 0)):
            raise ValueError(
                f"`{name}` holds a positive entry ({float(values.max()):.4g}), which is not a "
                "log-probability (log p ≤ 0). Pass the length-averaged log-probabilities "
                "(mean of the token log-probs), not logits or probabilities."
            )


def orpo_loss(
    chosen_avg_logps: ArrayLike,
    rejected_avg_logps: ArrayLike,
    *,
    beta: float = 0.1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Odds-ratio preference optimization (ORPO): the odds-ratio term, per pair.

        odds(p) = log p − log(1 − p),   ℓ = −β·log σ(odds(c) − odds(r))

    on the policy's length-averaged log-probabilities c = log p_c and r = log p_r of the
    chosen and rejected responses. log(1 − p) is computed from log p as
    log(−expm1(log p)) or log1p(−exp(log p)) (whichever is accurate), so the odds are
    right also for p near 1 and for log p of −1e4. ORPO's full objective adds the
    negative log-likelihood of the chosen responses (their token-mean cross-entropy),
    which this function does not include: add it yourself.

    Args:
      chosen_avg_logps: c ≤ 0, floating array [B] (any shape); the loss has its shape.
        Concrete positive entries raise ``ValueError``; traced ones give NaN. Entries
        within the smallest normal float of 0 are read as −tiny (finite odds).
      rejected_avg_logps: r ≤ 0, broadcastable to ``chosen_avg_logps``.
      beta: β > 0, the weight λ of the odds-ratio term in the paper.
      where, weights, reduction: as in `dpo_loss`.

    Returns:
      ``chosen_avg_logps``' shape for ``"none"``, else a scalar; float32, or float64 for
      float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.orpo_loss(jnp.array([-0.5, -2.0]), jnp.array([-2.0, -0.5]), beta=1.0)
      Array([0.09670586, 2.3840446 ], dtype=float32)

    References:
      Hong, Lee & Thorne, "ORPO: Monolithic Preference Optimization without Reference
      Model", EMNLP 2024.
    """
    C.check_positive("beta", beta)
    (c, r), where, weights = _inputs(
        where,
        weights,
        reduction,
        fill=-1.0,
        chosen_avg_logps=chosen_avg_logps,
        rejected_avg_logps=rejected_avg_logps,
    )
    _check_log_probabilities(chosen_avg_logps=c, rejected_avg_logps=r)
    x = _log_odds(c) - _log_odds(r)
    loss = beta * N.binary_logit_nll(x, jnp.ones((), x.dtype))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Unpaired: KTO
# --------------------------------------------------------------------------------------


def kto_loss(
    policy_logps: ArrayLike,
    reference_logps: ArrayLike,
    desirable: ArrayLike,
    *,
    beta: float = 0.1,
    reference_point: ArrayLike = 0.0,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Kahneman–Tversky optimization (KTO) loss on unpaired examples, per example.

    With the log-ratio ρ = π − ref and the reference point z₀:

        desirable:     λ_D·(1 − σ(β·(ρ − z₀)))
        undesirable:   λ_U·(1 − σ(β·(z₀ − ρ)))

    z₀ is the paper's KL estimate max(0, KL(π‖ref)) over the batch (computed by the
    caller, e.g. from mismatched prompt/completion pairs, or 0 as in the paper's
    ablation); it is a baseline, so no gradient flows into it (``stop_gradient``).
    1 − σ(x) is computed as σ(−x), which is finite for every x.

    Args:
      policy_logps: π, floating array [B] (any shape): the policy's log-probability of
        each completion. The loss has its shape.
      reference_logps: ref, the reference model's log-probability, broadcastable.
      desirable: boolean array broadcastable to the loss: True for a desirable
        completion, False for an undesirable one.
      beta: β > 0.
      reference_point: z₀, a number or an array broadcastable to the loss.
      desirable_weight: λ_D ≥ 0.
      undesirable_weight: λ_U ≥ 0 (the paper balances λ_D·n_D / (λ_U·n_U) in [1, 4/3]).
      where, weights, reduction: as in `dpo_loss`.

    Returns:
      ``policy_logps``' shape for ``"none"``, else a scalar; float32, or float64 for
      float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.kto_loss(jnp.array([-9.0, -9.0]), jnp.array([-10.0, -10.0]),
      ...                  jnp.array([True, False]), beta=1.0)
      Array([0.26894143, 0.7310586 ], dtype=float32)

    References:
      Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
      ICML 2024.
    """
    C.check_positive("beta", beta)
    _check_non_negative("desirable_weight", desirable_weight)
    _check_non_negative("undesirable_weight", undesirable_weight)
    if desirable is None:
        raise TypeError("`desirable` is required, got None.")
    desirable = jnp.asarray(desirable)
    if desirable.dtype != jnp.bool_:
        raise TypeError(
            "`desirable` must be a boolean array (True = desirable), got "
            f"{C._describe(desirable)}. Use e.g. `desirable=labels.astype(bool)`."
        )
    (pi, ref, z0), where, weights = _inputs(
        where,
        weights,
        reduction,
        policy_logps=policy_logps,
        reference_logps=reference_logps,
        # A Python number stays weakly typed: it never promotes float32 inputs.
        reference_point=float(reference_point) if _is_number(reference_point) else reference_point,
    )
    C.loss_shape("policy_logps", policy_logps=pi, desirable=desirable)
    z = beta * ((pi - ref) - jax.lax.stop_gradient(z0))
    # 1 − σ(z) = σ(−z) for a desirable example, 1 − σ(−z) = σ(z) for an undesirable one.
    lam = jnp.where(desirable, desirable_weight, undesirable_weight).astype(z.dtype)
    loss = lam * jax.nn.sigmoid(jnp.where(desirable, -z, z))
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Fused from hidden states: the pair losses on the chunked engine
# --------------------------------------------------------------------------------------

PAIR_LOSSES = ("dpo", "simpo", "orpo", "cpo")
_DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "orpo": 0.1, "cpo": 0.1}
_AVERAGED = {"dpo": False, "simpo": True, "orpo": True, "cpo": False}


@dataclasses.dataclass(frozen=True)
class _PairSpec:
    """The static description of a pair loss (hashable: part of the engine's `Config`)."""

    loss: str
    beta: float
    loss_type: str
    label_smoothing: float
    gamma: float
    average: bool  # length-averaged (True) or summed (False) sequence log-probabilities
    nll_weight: float

    def __call__(self, sc, sr, rc, rr, count_c):
        """Per-pair loss [k] of the policy's sequence log-probabilities sc, sr [k] (summed or
        averaged as ``average`` says), the reference's rc, rr (DPO only) and the number of
        kept chosen tokens count_c (for the NLL term's token mean)."""
        if self.loss == "dpo":
            loss = dpo_loss(
                sc,
                sr,
                rc,
                rr,
                beta=self.beta,
                loss_type=self.loss_type,
                label_smoothing=self.label_smoothing,
            )
        elif self.loss == "simpo":
            loss = simpo_loss(
                sc, sr, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing
            )
        elif self.loss == "orpo":
            loss = orpo_loss(sc, sr, beta=self.beta)
        else:
            loss = cpo_loss(sc, sr, beta=self.beta, label_smoothing=self.label_smoothing)
        if self.nll_weight:
            # The chosen sequence's token-mean NLL, −(Σ_t log p_t)/n_c (0 if n_c = 0).
            mean = sc if self.average else sc / jnp.where(count_c > 0, count_c, 1.0)
            loss = loss - self.nll_weight * mean
        return loss


@dataclasses.dataclass(frozen=True)
class PairPreference:
    """The engine's `GroupLoss` of a preference loss: a group is a pair, its segments the
    chosen and the rejected sequence ([2B, T] tokens: the B chosen, then the B rejected).

    Per-token inputs ``xs``: (labels, keep[, reference]), the reference being the
    reference model's log-probability of each token (``reference="tokens"``, computed
    from its hidden states in a pass of their own before this one, so that its logits
    and the policy's are never held at once) or its sequence log-probabilities placed on
    each sequence's first token (``reference="logps"``). Per-token statistics: (log p_t,
    the reference's log p_t, lse, on). With S_c, S_r the sequences' log-probabilities
    (Σ a_t·log p_t over kept tokens, a_t = 1 or 1/count), ∂ℓ/∂log p_t = (∂ℓ/∂S)·a_t: for
    a loss of the gap S_c − S_r alone (DPO, SimPO, CPO without the NLL term) ∂ℓ/∂S_r =
    −∂ℓ/∂S_c, so one deferred factor (and one [D, V] buffer) serves both sequences, the
    sign in a_t.
    """

    n_classes: int
    seg_len: int  # T
    spec: _PairSpec
    reference: str  # "none", "logps" or "tokens"
    segments = 2
    n_values = 1  # one gradient per token (for the engine's `_grad_logits`)
    keep = 1  # xs[1]: the engine zeroes the dropped tokens' hidden rows chunk by chunk

    @property
    def n_buffers(self) -> int:
        gap_only = self.spec.loss in ("dpo", "simpo", "cpo") and not self.spec.nll_weight
        return 1 if gap_only else 2

    def buffer(self, s: int) -> int:
        return 0 if self.n_buffers == 1 else s

    def dtypes(self, cfg):
        return cfg.dtype, cfg.dtype, cfg.dtype, bool

    def _tokens(self):
        return TokenLogProbs(n_classes=self.n_classes, entropy=False)

    def forward(self, cfg, z, xs, b=None, consts=()):
        log_p, lse, on = self._tokens().forward(cfg, z, xs[:1])
        ref = jnp.zeros_like(log_p) if self.reference == "none" else xs[2]
        return log_p, ref, lse, on

    def backward(self, cfg, z, stats, xs, b=None, consts=()):
        return self._tokens().backward(cfg, z, stats[2:], xs[:1])

    def _weights(self, keep):
        """(a [2, T]: 1, or 1/count for length-averaged sequences, on kept tokens; count [2])."""
        count = jnp.sum(keep, axis=-1)
        a = keep.astype(jnp.float32)
        if self.spec.average:
            a = jnp.where(keep, 1.0 / jnp.maximum(count, 1)[:, None], 0.0)
        return a, count

    def factors(self, cfg, xs):
        a = self._weights(xs[1])[0].astype(cfg.dtype)
        if self.n_buffers == 1:
            a = a * jnp.array([[1.0], [-1.0]], cfg.dtype)
        return a

    def finish(self, cfg, stats, xs):
        keep = xs[1]
        a, count = self._weights(keep)
        a = a.astype(cfg.dtype)
        log_p, ref = stats[:2]
        seq = jnp.sum(jnp.where(keep, a * log_p, 0.0), axis=-1)
        if self.reference == "tokens":
            ref = jnp.sum(jnp.where(keep, a * ref, 0.0), axis=-1)
        else:  # the sequences' values on their first tokens (or 0)
            ref = jnp.sum(ref, axis=-1)
        ref = lax.stop_gradient(ref)
        count_c = count[0].astype(cfg.dtype)

        def pair(sc, sr):
            return self.spec(sc, sr, ref[0], ref[1], count_c)

        value, vjp = jax.vjp(pair, seq[0], seq[1])
        d_c, d_r = vjp(jnp.ones_like(value))
        delta = jnp.stack([d_c] if self.n_buffers == 1 else [d_c, d_r])
        return value, delta


def _pair_spec(loss, beta, loss_type, label_smoothing, gamma, average_log_prob, nll_weight):
    if loss not in PAIR_LOSSES:
        raise ValueError(f"`loss` must be one of {PAIR_LOSSES}, got {loss!r}.")
    beta = _DEFAULT_BETA[loss] if beta is None else E.python_number("beta", beta)
    C.check_positive("beta", beta)
    if loss != "dpo" and loss_type != "sigmoid":
        raise ValueError(
            f"`loss_type` applies to loss='dpo' only, got loss_type={loss_type!r} with "
            f"loss={loss!r}; leave it at 'sigmoid'."
        )
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {DPO_LOSS_TYPES}, got {loss_type!r}.")
    if average_log_prob is None:  # as each loss's reference implementation (TRL's IPO averages)
        average_log_prob = _AVERAGED[loss] or loss_type == "ipo"
    if not isinstance(average_log_prob, bool):
        raise TypeError(f"`average_log_prob` must be a bool or None, got {average_log_prob!r}.")
    nll_weight = E.python_number("nll_weight", nll_weight)
    _check_non_negative("nll_weight", nll_weight)
    spec = _PairSpec(
        loss=loss,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=E.python_number("label_smoothing", label_smoothing),
        gamma=E.python_number("gamma", gamma),
        average=average_log_prob,
        nll_weight=nll_weight,
    )
    x = jax.ShapeDtypeStruct((1,), jnp.float32)
    jax.eval_shape(spec, x, x, x, x, x)  # the pair loss's own checks (ε's range, ...)
    return spec


def _reference(loss, n_pairs, reference_logps, reference_hidden, reference_weight, reference_bias):
    """(kind, sequence log-probabilities [2B] or None, hidden, weight, bias): the reference."""
    given = [reference_logps is not None, reference_hidden is not None]
    if loss != "dpo":
        if any(given) or reference_weight is not None:
            raise ValueError(
                f"loss={loss!r} uses no reference model: pass neither `reference_logps` nor "
                "`reference_hidden`/`reference_weight`."
            )
        return "none", None, None, None, None
    if all(given):
        raise ValueError(
            "Pass the reference model either as `reference_logps=(chosen, rejected)` or as "
            "`reference_hidden` with `reference_weight`, not both."
        )
    if not any(given):
        raise ValueError(
            "loss='dpo' needs the reference model: `reference_logps=(chosen, rejected)` (its "
            "per-sequence log-probabilities, [B] each) or `reference_hidden` [2B, T, D] with "
            "`reference_weight`."
        )
    if reference_logps is not None:
        if reference_weight is not None or reference_bias is not None:
            raise ValueError(
                "`reference_weight`/`reference_bias` go with `reference_hidden`, not with "
                "`reference_logps`."
            )
        if not isinstance(reference_logps, (tuple, list)) or len(reference_logps) != 2:
            raise TypeError(
                "`reference_logps` must be a pair (chosen, rejected) of arrays [B], got "
                f"{C._describe(reference_logps)}."
            )
        pair = [C.as_float(f"reference_logps[{i}]", x) for i, x in enumerate(reference_logps)]
        for i, x in enumerate(pair):
            if x.shape not in ((n_pairs,), (), (1,)):
                raise ValueError(
                    f"`reference_logps[{i}]` must have shape ({n_pairs},), one entry per pair, "
                    f"got {x.shape}."
                )
        pair = [jnp.broadcast_to(x, (n_pairs,)) for x in pair]
        return "logps", jnp.concatenate(pair), None, None, None
    if reference_weight is None:
        raise ValueError("`reference_hidden` needs `reference_weight` (the reference's head).")
    return "hidden", None, reference_hidden, reference_weight, reference_bias


def fused_linear_preference_loss(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    loss: str = "dpo",
    reference_logps: tuple[ArrayLike, ArrayLike] | None = None,
    reference_hidden: ArrayLike | None = None,
    reference_weight: ArrayLike | None = None,
    reference_bias: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    beta: float | None = None,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    average_log_prob: bool | None = None,
    nll_weight: float = 0.0,
    temperature: float = 1.0,
    logit_soft_cap: float | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    chunk_size: int | None = None,
    reduction: str = "mean",
    batch_axis_name: Hashable | None = None,
) -> jax.Array:
    """DPO, SimPO, ORPO or CPO loss of ``hidden @ weight`` per pair of sequences, no logits formed.

        log p_t = log softmax(z_t)[y_t],  z_t = h_t·W + b  per token, kept tokens only
        S = Σ_t log p_t   (or Σ_t log p_t / n, length-averaged: ``average_log_prob``)
        ℓ = pair loss(S_c, S_r [, ref_c, ref_r]) − λ·(Σ_{t ∈ chosen} log p_t) / n_c

    per pair of a chosen and a rejected sequence, with the pair loss `dpo_loss` (any
    ``loss_type``), `simpo_loss`, `orpo_loss` or `cpo_loss`, and λ = ``nll_weight`` the
    weight of the chosen sequence's token-mean cross-entropy (ORPO's and CPO's SFT term, as
    in Hong et al. and Xu et al.: a mean per sequence; TRL instead averages over all chosen
    tokens of the batch). The same value as those functions of `sequence_log_probs` of
    `token_log_probs` of the materialized logits, computed by the chunked engine so that
    only a [chunk, V] block of logits exists at once.

    Algorithm (``"sum"``/``"mean"``): the gradient of a pair's loss with respect to its
    token log-probabilities is (∂ℓ/∂S)·a_t, a_t = 1 or 1/n known in advance and ∂ℓ/∂S known
    only once the pair's last token is seen. So each pair's two sequences are processed a
    chunk of tokens at a time, the weight and bias gradients of its tokens accumulated with
    their a_t in a [D, V] buffer and added to the totals, scaled by ∂ℓ/∂S, when the pair
    ends: one pass, the three matrix products of the plain forward and backward pass (and
    one, in a chunked pass of its own before it, for the reference model's
    log-probabilities). DPO, SimPO and CPO are functions of
    S_c − S_r, whose two partial derivatives are opposite, so one buffer serves both
    sequences; ORPO and an ``nll_weight`` need two. ``reduction="none"`` (per-pair losses,
    whose cotangents arrive in the backward pass) takes `fused_linear_token_log_probs`
    (which recomputes each chunk's logits in the backward pass), then the pair loss.

    Memory: one or two [D, V] float32 buffers, one [chunk, V] block of logits (their
    gradient is written over them; the reference's logits are never held beside the
    policy's), the engine's [D, block] temporaries, and per-token vectors.
    The default chunk is `fused_linear_cross_entropy`'s (on the CPU, a block of about
    16 MiB: 128 tokens at V = 32768), at most a sequence. Apart from the per-token
    vectors, none of these grows with the number of pairs, where the materialized
    computation holds [2B, T, V] logits; the measured memory and time of both
    (``benchmarks/post_training.py``) are in ``docs/benchmarks.md``.

    Sharding: inside ``shard_map``, each device passes its own pairs (its chosen, then its
    rejected sequences) and ``batch_axis_name`` names the mesh axes the pairs are split
    over: ``"sum"`` and ``"mean"`` are then taken over every device's pairs. Inputs sharded
    over a mesh of explicit axes need nothing: the sequences are regrouped by pair (a
    copy of the [2B, T, D] inputs through a replicated one) and each device loops over
    its own pairs, the per-pair results ([B]) in the pairs' order.

    Inputs: the layout TRL and Liger Kernel use, the B chosen sequences first, then the B
    rejected ones. A token is kept where ``where`` is True and its label is not
    ``ignore_index`` (mask the prompt and the padding); a dropped token's ``hidden`` row
    gets exactly zero gradient, even if NaN. The reference model gets no gradient: either
    its per-sequence log-probabilities (``reference_logps``, summed or averaged as the
    policy's) or its hidden states and head (``reference_hidden``, ``reference_weight``,
    ``reference_bias``, in ``weight_layout`` too), whose log-probabilities are computed a
    chunk at a time as the policy's.

    Args:
      hidden: h, floating [2B, T, D]: the policy's final hidden states of the B chosen
        sequences, then of the B rejected ones (T tokens each, padded).
      weight: W, floating [D, V] (``weight_layout="dense"``) or [V, D] (``"embedding"``).
      labels: integer token ids [2B, T] (the next tokens, already shifted).
      loss: ``"dpo"`` (default), ``"simpo"``, ``"orpo"`` or ``"cpo"``.
      reference_logps: for DPO, ``(chosen, rejected)``, the reference model's sequence
        log-probabilities, [B] each.
      reference_hidden: for DPO, instead: the reference model's hidden states [2B, T, D_ref].
      reference_weight: its head, [D_ref, V] or [V, D_ref] like ``weight``.
      reference_bias: its optional bias [V].
      bias: optional b, floating [V].
      weight_layout: ``"dense"`` or ``"embedding"``, the layout of both weights.
      beta: β > 0; default each loss's own (0.1 for DPO, ORPO and CPO; 2.0 for SimPO).
      loss_type: DPO's ``"sigmoid"``, ``"robust"``, ``"hinge"`` or ``"ipo"`` (`dpo_loss`).
      label_smoothing: ε for DPO (sigmoid, robust), SimPO and CPO.
      gamma: SimPO's target margin γ.
      average_log_prob: length-average the sequence log-probabilities; default each loss's
        own definition (True for SimPO, ORPO and DPO's ``loss_type="ipo"``, as TRL averages
        for IPO; False for DPO's other loss types and CPO).
      nll_weight: λ ≥ 0, the weight of the chosen sequences' token-mean cross-entropy.
      temperature: T > 0 (a Python number); the logits are divided by it (after the cap),
        the policy's and the reference's (from hidden states) alike.
      logit_soft_cap: optional cap > 0 (a Python number): z ← cap·tanh(z/cap), Gemma 2's
        soft-capping, for the policy's and the reference's logits alike.
      ignore_index: optional label id (e.g. −100) whose tokens are dropped.
      where: optional boolean mask broadcastable to [2B, T]; True keeps a token.
      weights: optional non-negative weights of the pairs, broadcastable to [B]: w·ℓ per
        pair, Σ w·ℓ, or Σ w·ℓ / Σ w (0 if Σ w = 0), as every loss's ``weights``.
      chunk_size: tokens per chunk (a Python int), within a sequence; default as above.
      reduction: ``"mean"`` over pairs (default, as the trainers), ``"sum"`` or ``"none"``.
      batch_axis_name: inside ``shard_map``, the mesh axis (or axes) the pairs are split
        over (see Sharding above); None otherwise.

    Returns:
      A scalar for ``"sum"``/``"mean"``, else the per-pair losses [B]; float32, or float64
      for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> hidden = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])  # 1 pair
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> labels = jnp.array([[0, 1], [2, 2]])
      >>> jaxloss.fused_linear_preference_loss(
      ...     hidden, weight, labels, reference_logps=(jnp.array([-3.0]), jnp.array([-3.0])))
      Array(0.5807126, dtype=float32)
      >>> log_p = jaxloss.token_log_probs(hidden @ weight, labels)
      >>> s = jaxloss.sequence_log_probs(log_p)
      >>> jaxloss.dpo_loss(s[:1], s[1:], jnp.array([-3.0]), jnp.array([-3.0]))
      Array([0.5807126], dtype=float32)
      >>> jaxloss.fused_linear_preference_loss(hidden, weight, labels, loss="simpo")
      Array(0.14052162, dtype=float32)

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
      Reward Model", NeurIPS 2023; Meng, Xia & Chen, "SimPO: Simple Preference Optimization
      with a Reference-Free Reward", NeurIPS 2024; Hong, Lee & Thorne, "ORPO: Monolithic
      Preference Optimization without Reference Model", EMNLP 2024; Xu et al., "Contrastive
      Preference Optimization", ICML 2024; Wijmans et al., "Cut your losses in
      large-vocabulary language models" (2024), for the chunked computation.
    """
    C.check_batch_axis_name("fused_linear_preference_loss", batch_axis_name)
    spec = _pair_spec(loss, beta, loss_type, label_smoothing, gamma, average_log_prob, nll_weight)
    C.check_reduction(reduction)
    temperature = E.python_number("temperature", temperature)
    C.check_positive("temperature", temperature)
    cap = E.soft_cap(logit_soft_cap)
    hidden = C.as_float("hidden", hidden)
    weight = C.as_float("weight", weight)
    bias = None if bias is None else C.as_float("bias", bias)
    labels = C.as_labels("labels", labels)
    C.check_ignore_index(ignore_index)
    d, v, batch = E.check_linear(hidden, weight, bias, weight_layout)
    if hidden.ndim != 3 or batch[0] % 2:
        raise ValueError(
            f"`hidden` must be [2B, T, D]: the B chosen sequences, then the B rejected ones; "
            f"got shape {hidden.shape}."
        )
    if labels.shape != batch:
        raise ValueError(
            f"`labels` of shape {labels.shape} must have the shape of `hidden` without its "
            f"feature axis, {batch}."
        )
    E.check_bias(bias, v)
    n_pairs = batch[0] // 2
    kind, ref_logps, ref_h, ref_w, ref_b = _reference(
        loss, n_pairs, reference_logps, reference_hidden, reference_weight, reference_bias
    )
    if kind == "hidden":
        ref_h = C.as_float("reference_hidden", ref_h)
        ref_w = C.as_float("reference_weight", ref_w)
        ref_b = None if ref_b is None else C.as_float("reference_bias", ref_b)
        try:
            _, v_ref, ref_batch = E.check_linear(ref_h, ref_w, ref_b, weight_layout)
        except ValueError as err:
            raise ValueError(
                f"The reference model: {err}".replace("`weight`", "`reference_weight`").replace(
                    "`hidden`", "`reference_hidden`"
                )
            ) from err
        if v_ref != v:
            raise ValueError(
                f"`reference_weight` of shape {ref_w.shape} has a vocabulary of {v_ref} "
                f"entries, `weight` of shape {weight.shape} one of {v} (weight_layout="
                f"{weight_layout!r} applies to both); they must be equal."
            )
        if ref_batch != batch:
            raise ValueError(
                f"`reference_hidden` of shape {ref_h.shape} must hold the same sequences as "
                f"`hidden` ({batch} tokens)."
            )
        if ref_b is not None and ref_b.shape != (v,):
            raise ValueError(
                f"`reference_bias` must have shape ({v},), one entry per class, got {ref_b.shape}."
            )
    where = C.check_where(where, batch)
    keep = C.kept(where, labels, ignore_index, batch)
    C.check_class_ids(labels, ignore_index, where)
    weights = C.check_weights(weights, (n_pairs,))
    if weights is not None:
        weights = jnp.broadcast_to(weights, (n_pairs,))
    arrays = dict(hidden=hidden, labels=labels, keep=keep, ref_logps=ref_logps, ref_h=ref_h)
    arrays |= dict(weights=weights, weight=weight, bias=bias, ref_w=ref_w, ref_b=ref_b)
    options = dict(spec=spec, layout=weight_layout, chunk_size=chunk_size, kind=kind)
    options |= dict(logits=(temperature, cap))
    options |= dict(
        dtype=C.compute_dtype(*(x for x in (hidden, weight, bias) if x is not None)),
        reduction=reduction,
    )
    if batch_axis_name is None:
        mesh = E.explicit_mesh(*(x for x in arrays.values() if x is not None))
        if mesh is not None:
            return _pairs_per_device(mesh, arrays, options)
    return _preference(**arrays, **options, batch_axis_name=batch_axis_name)


# The inputs with one entry per sequence ([2B, ...]: the chosen, then the rejected), and
# those with one per pair ([B]); the others are shared by every pair.
_PER_SEQUENCE = ("hidden", "labels", "keep", "ref_logps", "ref_h")
_PER_PAIR = ("weights",)


def _pairs_per_device(mesh, arrays: dict, options: dict):
    """The loss of explicitly sharded inputs: data parallel over whole pairs.

    Sharding the [2B, ...] sequences over devices would give some devices chosen sequences
    only and others their rejected ones; the loss needs both of a pair on one device. So
    the sequences are regrouped by pair ([B, 2, ...], a copy through a replicated array)
    and sharded over the mesh axes of ``hidden``'s first axis, each device runs the loss
    on its own pairs in ``shard_map`` with ``batch_axis_name`` set to those axes (the
    mean over all pairs), and the per-pair results come back in the pairs' order.
    """
    hidden = arrays["hidden"]
    axes = E.mesh_axes(tuple(jax.typeof(hidden).sharding.spec)[:1])
    n_pairs = hidden.shape[0] // 2
    devices = math.prod(mesh.shape[a] for a in axes)
    if n_pairs % devices:
        raise ValueError(
            f"`hidden`'s {2 * n_pairs} sequences are sharded over {devices} devices (mesh "
            f"axes {axes}); each device needs whole pairs, so the {n_pairs} pairs must "
            f"divide evenly among them."
        )
    by_pair, shared = P(axes or None), P()

    def regroup(x):  # [2B, ...] → [B, 2, ...], pairs sharded
        x = E.put(mesh, x, shared).reshape((2, n_pairs) + x.shape[1:])
        return E.put(mesh, jnp.swapaxes(x, 0, 1), by_pair)

    def ungroup(x):  # a device's [b, 2, ...] → [2b, ...]
        return jnp.swapaxes(x, 0, 1).reshape((2 * x.shape[0],) + x.shape[2:])

    inputs, specs = {}, {}
    for key, x in arrays.items():
        if x is None:
            continue
        if key in _PER_SEQUENCE:
            inputs[key], specs[key] = regroup(x), by_pair
        else:
            spec = by_pair if key in _PER_PAIR else shared
            inputs[key], specs[key] = E.put(mesh, x, spec), spec

    def local(inputs):
        local_arrays = dict.fromkeys(arrays)
        for key, x in inputs.items():
            local_arrays[key] = ungroup(x) if key in _PER_SEQUENCE else x
        return _preference(**local_arrays, **options, batch_axis_name=axes or None)

    out = by_pair if options["reduction"] == "none" else shared
    return jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out)(inputs)


def _preference(
    hidden,
    labels,
    keep,
    ref_logps,
    ref_h,
    weights,
    weight,
    bias,
    ref_w,
    ref_b,
    *,
    spec,
    layout,
    chunk_size,
    kind,
    dtype,
    reduction,
    logits,
    batch_axis_name,
):
    """The loss of validated (local) inputs: per pair (via fused token log-probabilities),
    or the sum/mean with the gradients formed in the same pass."""
    inputs = (spec, hidden, weight, labels, bias, layout, chunk_size, keep, kind)
    inputs += (ref_logps, ref_h, ref_w, ref_b, dtype, logits)
    if reduction == "none":
        out = _per_pair(*inputs)
        return out if weights is None else out * weights.astype(out.dtype)
    return _fused_total(*inputs, reduction, weights, batch_axis_name)


def _per_pair(
    spec,
    hidden,
    weight,
    labels,
    bias,
    layout,
    chunk_size,
    keep,
    kind,
    ref_logps,
    ref_h,
    ref_w,
    ref_b,
    dtype,
    logits,
):
    """The per-pair losses [B]: per-token log-probabilities (the engine's recompute path,
    exact for any loss of them), then the sequences' and the pair loss."""

    def sequences(h, w, b):
        log_p = _token_log_probs(h, w, b, labels, layout, chunk_size, keep, logits)
        return sequence_log_probs(log_p, where=keep, average=spec.average).astype(dtype)

    seq = sequences(hidden, weight, bias)
    ref = jnp.zeros_like(seq)
    if kind == "hidden":
        ref = lax.stop_gradient(sequences(ref_h, ref_w, ref_b))
    elif kind == "logps":
        ref = lax.stop_gradient(ref_logps.astype(dtype))
    b = seq.shape[0] // 2
    if keep is None:
        count_c = jnp.full((b,), hidden.shape[1], dtype)
    else:
        count_c = jnp.sum(keep[:b], axis=-1).astype(dtype)
    return spec(seq[:b], seq[b:], ref[:b], ref[b:], count_c)


def _token_log_probs(h, w, b, labels, layout, chunk_size, keep, logits) -> jax.Array:
    """log p_t [2B, T] of every token, by the engine's per-token path; ``logits`` =
    (temperature, soft cap)."""
    temperature, cap = logits
    log_p = fused_linear_token_log_probs(
        h, w, labels, bias=b, weight_layout=layout, chunk_size=chunk_size, where=keep,
        temperature=temperature, logit_soft_cap=cap,
    )  # fmt: skip
    return cast(jax.Array, log_p)  # one array: no entropy asked for


def _fused_total(
    spec,
    hidden,
    weight,
    labels,
    bias,
    layout,
    chunk_size,
    keep,
    kind,
    ref_logps,
    ref_h,
    ref_w,
    ref_b,
    dtype,
    logits,
    reduction,
    weights,
    batch_axis_name,
):
    """The sum or mean over pairs (those of every device along ``batch_axis_name``),
    with the gradients formed in the same pass."""
    batch = hidden.shape[:-1]
    d, v = hidden.shape[-1], (weight.shape[1] if layout == "dense" else weight.shape[0])
    n_pairs, seq_len = batch[0] // 2, batch[1]
    n = 2 * n_pairs * seq_len
    reference = {"hidden": "tokens"}.get(kind, kind)
    loss = PairPreference(n_classes=v, seg_len=seq_len, spec=spec, reference=reference)
    cfg = E.Config(
        layout=layout,
        chunk=E.chunk(chunk_size, n, v),
        block=E._default_block(d, v),
        dtype=np.dtype(dtype),
        loss=loss,
        temperature=logits[0],
        soft_cap=logits[1],
    )
    mask = keep
    # No masked copy of the hidden states: the engine zeroes the dropped rows a chunk at
    # a time (``PairPreference.keep``).
    h = E.flat_hidden(hidden, weight, None, batch, d)
    ids = _class_ids(labels, v)
    if keep is not None:
        ids = jnp.where(keep, ids, 0)
    else:  # no copy of the hidden states for an all-True mask
        keep = jnp.ones(batch, bool)
    xs = [ids.reshape(n), keep.reshape(n)]
    if kind == "hidden":
        # A pass of its own (no derivatives): the reference's logits are never held
        # beside the policy's.
        ref = _token_log_probs(ref_h, ref_w, ref_b, labels, layout, chunk_size, mask, logits)
        xs.append(lax.stop_gradient(ref).astype(dtype).reshape(n))
    elif kind == "logps":
        first = jnp.zeros(batch, dtype).at[:, 0].set(lax.stop_gradient(ref_logps.astype(dtype)))
        xs.append(first.reshape(n))
    scale = E.token_scale(cfg, None, weights, (n_pairs,), reduction, batch_axis_name)
    total = E._grouped_sum_jit(cfg, h, weight.astype(h.dtype), bias, tuple(xs), scale)
    if batch_axis_name is not None:
        total = lax.psum(total, batch_axis_name)
    return total
