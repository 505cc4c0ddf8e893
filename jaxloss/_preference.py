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

import math
import numbers
from typing import TypeGuard

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C
from jaxloss import _numerics as N

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
