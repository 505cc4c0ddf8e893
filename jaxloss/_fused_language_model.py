"""Language-model quantities of a linear layer's output, without materializing the logits.

The fused counterparts of `_language_model.py`'s functions, on the chunked engine
(`_engine.py`): only a [chunk, V] block of the logits z = h·W (+ b) ever exists (for
distillation, a block of the student's and one of the teacher's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxloss import _conventions as C
from jaxloss import _engine as E
from jaxloss import _language_model as LM
from jaxloss import _numerics as N
from jaxloss._classification import _broadcasts_to, _class_ids
from jaxloss._information import _log_softmax
from jaxloss._language_model import _check_divergence, _divergence, _resolved_divergence
from jaxloss._large_vocab import CrossEntropy

ArrayLike = C.ArrayLike


@dataclasses.dataclass(frozen=True)
class TokenLogProbs:
    """The engine's `ChunkLoss` for log softmax(z)[y] (and the entropy of softmax(z)).

    z are the chunk's logits after the cap and the temperature. Per-token outputs:
    (log p_y, [H,] lse, on, [H]): the values, then the logsumexp, whether log p_y is
    finite (False only for a label on a −inf logit) and the entropy, for the backward
    pass.
    """

    n_classes: int  # the whole vocabulary, summed over shards
    entropy: bool

    @property
    def n_values(self) -> int:
        return 2 if self.entropy else 1

    def dtypes(self, cfg: E.Config):
        values = (cfg.dtype,) * self.n_values
        return values + (cfg.dtype, bool) + ((cfg.dtype,) if self.entropy else ())

    def forward(self, cfg: E.Config, z, xs, b=None, consts=()):
        """log p_y (at least the lowest float; NaN for a label outside [0, V)), [H = −Σ p log p]."""
        (labels,) = xs
        local, here, valid = E.targets(cfg, labels, z.shape[1], self.n_classes)
        m = E.pmax(cfg, lax.stop_gradient(jnp.max(z, axis=1)))
        lse = m + jnp.log(E.psum(cfg, jnp.sum(jnp.exp(z - m[:, None]), axis=1)))
        picked = jnp.take_along_axis(z, local[:, None], axis=1)[:, 0]
        log_p = E.psum(cfg, jnp.where(here, picked, 0.0)) - lse
        lowest = jnp.finfo(cfg.dtype).min
        on = log_p >= lowest  # False only for a label on a −inf logit
        log_p = jnp.where(valid, jnp.maximum(log_p, lowest), jnp.nan)
        if not self.entropy:
            return log_p, lse, on
        entropy = -E.psum(cfg, jnp.sum(self._p_log_p(z, lse), axis=1))
        return log_p, entropy, lse, on, entropy

    @staticmethod
    def _p_log_p(z, lse):
        """p·log p, 0 where p = 0 (a −inf logit, or one whose probability underflows)."""
        log_p = E.log_probs(z, lse)
        p = jnp.exp(log_p)
        return jnp.where(p > 0, p * log_p, 0.0)

    def backward(self, cfg: E.Config, z, saved, xs, b=None, consts=()):
        """∂log p_y/∂z = onehot(y) − p (0 where log p_y is clipped, NaN for an invalid label);
        ∂H/∂z = −p·(log p + H)."""
        (labels,) = xs
        lse, on = saved[:2]
        local, here, valid = E.targets(cfg, labels, z.shape[1], self.n_classes)
        row = jnp.where(valid, jnp.where(on, 1.0, 0.0), jnp.nan).astype(cfg.dtype)
        rows, one = jnp.arange(z.shape[0]), jnp.where(here, 1.0, 0.0).astype(cfg.dtype)
        if not self.entropy:
            # −p written over z (one [chunk, V] array, not two). It is set to 0 on the
            # rows where ``on`` is False (their row factor is 0 anyway): reading ``on``,
            # which comes from z's entry at the label, orders this after every read of z.
            minus_p = lambda zb: jnp.where(on[:, None], -jnp.exp(E.log_probs(zb, lse)), 0.0)  # noqa: E731
            g = E.in_place(cfg, z, minus_p)
            return g.at[rows, local].add(one), row
        p = jnp.exp(E.log_probs(z, lse))
        g = (-p).at[rows, local].add(one)
        entropy = saved[2]
        g_h = -(self._p_log_p(z, lse) + p * entropy[:, None])
        return (g, row), (g_h, jnp.ones_like(row))


def _prepare(hidden, weight, labels, bias, weight_layout, temperature, cap, chunk_size, where):
    hidden = C.as_float("hidden", hidden)
    weight = C.as_float("weight", weight)
    bias = None if bias is None else C.as_float("bias", bias)
    d, v, batch = E.check_linear(hidden, weight, bias, weight_layout)
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
            f"`labels` of shape {labels.shape} must broadcast to the shape of `hidden` "
            f"without its feature axis, {batch}."
        )
    E.check_bias(bias, v)
    where = C.check_where(where, batch)
    temperature = E.python_number("temperature", temperature)
    C.check_positive("temperature", temperature)
    n = int(np.prod(batch, dtype=np.int64))
    dtype = C.compute_dtype(*(x for x in (hidden, weight, bias) if x is not None))
    layout = dict(layout=weight_layout, chunk=E.chunk(chunk_size, n, v))
    layout.update(block=E._default_block(d, v), dtype=np.dtype(dtype))
    labels = _class_ids(jnp.broadcast_to(labels, batch), v)  # int32, −1 outside [0, V)
    if where is not None:
        where = jnp.broadcast_to(where, batch)
        labels = jnp.where(where, labels, 0)  # a safe index; the token is dropped anyway
    h = E.flat_hidden(hidden, weight, where, batch, d)
    options = dict(soft_cap=E.soft_cap(cap), temperature=temperature)
    return layout, options, h, weight.astype(h.dtype), bias, labels.reshape(n), where, batch, v


def _token_log_probs(
    hidden,
    weight,
    labels,
    *,
    bias,
    weight_layout,
    temperature,
    logit_soft_cap,
    chunk_size,
    where,
    return_entropy,
    batch_axis_name=None,
):
    """`fused_linear_token_log_probs` of local (unsharded or per-device) inputs."""
    del batch_axis_name  # per-token outputs: nothing is summed over the tokens
    layout, options, h, w, b, y, keep, batch, v = _prepare(
        hidden, weight, labels, bias, weight_layout, temperature, logit_soft_cap, chunk_size, where
    )
    loss = TokenLogProbs(n_classes=v, entropy=bool(return_entropy))
    cfg = E.Config(loss=loss, **layout, **options)
    out = E._per_token_jit(cfg, h, w, b, (y,))
    out = out if return_entropy else (out,)
    out = tuple(
        x.reshape(batch) if keep is None else jnp.where(keep, x.reshape(batch), 0.0) for x in out
    )
    return out if return_entropy else out[0]


def fused_linear_token_log_probs(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    temperature: float = 1.0,
    logit_soft_cap: float | None = None,
    chunk_size: int | None = None,
    where: ArrayLike | None = None,
    return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probability of each token under softmax(``hidden @ weight + bias``), no logits formed.

        z = h·W + b   (then z ← cap·tanh(z/cap) with ``logit_soft_cap``)
        log p(y) = z_y/T − log Σ_v exp(z_v/T),      H = −Σ_v p_v log p_v,  p = softmax(z/T)

    `token_log_probs` of the materialized logits (and, with ``return_entropy=True``, also
    `entropy_from_logits` of z/T), computed ``chunk_size`` tokens at a time by the
    chunked engine, so that only a [chunk, V] block of logits exists at once: never the
    [N, V] logits nor their gradient. Both outputs are differentiable with respect to
    ``hidden``, ``weight`` and ``bias``; since their cotangents (those of a loss built
    on top, e.g. a policy-gradient surrogate) arrive only in the backward pass, it
    recomputes each chunk's logits from the saved logsumexp: four matrix products in
    all instead of three, in the same memory (the weight gradient is updated in place,
    a [D, block] slice at a time, never through a second [D, V] array).

    As in `token_log_probs`: masked-out tokens (``where`` False) give 0 with zero
    gradient, even where their ``hidden`` row is NaN or inf; a label on a −inf logit (a
    −inf ``bias`` entry) gives the lowest float with zero gradient, not −inf; a label
    outside [0, V) gives NaN, and so does its gradient (drop such tokens with ``where``).

    Memory, chunk defaults, bf16/f16 inputs (float32 accumulation) and inputs sharded
    over explicit mesh axes (each device loops over its own tokens) as in
    `fused_linear_cross_entropy`.

    Args:
      hidden: h, floating [..., D] (e.g. [N, D] or [batch, seq, D]).
      weight: W, floating [D, V] (``weight_layout="dense"``) or [V, D] (``"embedding"``).
      labels: integer token ids in [0, V), broadcastable to ``hidden``'s shape without D.
      bias: optional b, floating [V].
      weight_layout: ``"dense"`` or ``"embedding"``, the layout of ``weight``.
      temperature: T > 0 (a Python number); the logits are divided by it (after the cap).
      logit_soft_cap: optional cap > 0 (a Python number), Gemma 2's soft-capping.
      chunk_size: tokens per chunk (a Python int); default as `fused_linear_cross_entropy`.
      where: optional boolean mask broadcastable to ``labels``' shape; True keeps a token.
      return_entropy: also return the entropy of softmax(z/T) per token.

    Returns:
      log p(y), of ``hidden``'s shape without D; with ``return_entropy=True`` a pair
      (log p(y), H) of that shape. float32, or float64 for float64 inputs (bf16/f16 are
      computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> labels = jnp.array([0, 1, 2])
      >>> jaxloss.fused_linear_token_log_probs(hidden, weight, labels, chunk_size=2)
      Array([-0.40761 , -0.40761, -2.29892 ], dtype=float32)
      >>> jaxloss.token_log_probs(hidden @ weight, labels)
      Array([-0.40761 , -0.40761, -2.29892 ], dtype=float32)
      >>> log_p, entropy = jaxloss.fused_linear_token_log_probs(
      ...     hidden, weight, labels, return_entropy=True)
      >>> entropy
      Array([0.83240, 0.83240 , 0.94947], dtype=float32)

    References:
      Williams, "Simple statistical gradient-following algorithms" (Machine Learning 8,
      1992), for the log-likelihood term of policy gradients; Wijmans et al., "Cut your
      losses in large-vocabulary language models" (2024), for the chunked computation.
    """
    options = dict(
        weight_layout=weight_layout,
        temperature=temperature,
        logit_soft_cap=logit_soft_cap,
        chunk_size=chunk_size,
        return_entropy=return_entropy,
    )
    mesh = E.explicit_mesh(hidden, weight, bias, labels, where)
    if mesh is not None:
        return E.per_device(
            _token_log_probs,
            mesh,
            hidden,
            shared={"weight": weight, "bias": bias},
            tokens={"labels": labels, "where": where},
            options=options,
            per_token=True,
        )
    return _token_log_probs(hidden, weight, labels, bias=bias, where=where, **options)


# --------------------------------------------------------------------------------------
# Policy-gradient loss (PPO, GRPO and their variants)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicyGradient:
    """The engine's `ChunkLoss` for the clipped surrogate (+ kl_coef × a KL estimator).

    Per token, of ℓ = log softmax(z)[y]: `_clipped_surrogate` + kl_coef·`_kl_estimate`,
    the functions `policy_gradient_loss` and `kl_penalty` use. Its derivative in ℓ is
    their forward-mode derivative (one elementwise `jvp`): the same subgradient at the
    ties of min and clip as `jax.grad` of the materialized loss, from the same code.
    ∂value/∂z = that derivative × (onehot(y) − softmax(z)), `TokenLogProbs.backward`.
    Per-token inputs: (labels, keep, old log π, A[, log π_ref]); a dropped token (keep
    False) has value 0 and derivative 0 whatever its inputs give. Per-token outputs:
    (value, lse, on, ∂value/∂ℓ).
    """

    n_classes: int
    clip_low: float
    clip_high: float
    kl_coef: float = 0.0
    kl_estimator: str | None = None  # None: no KL term

    n_values = 1

    def dtypes(self, cfg: E.Config):
        return (cfg.dtype, cfg.dtype, bool, cfg.dtype)

    @property
    def _log_probs(self) -> TokenLogProbs:
        return TokenLogProbs(n_classes=self.n_classes, entropy=False)

    def _per_token(self, lp, old, adv, ref):
        value = LM._clipped_surrogate(lp, old, adv, self.clip_low, self.clip_high)
        if self.kl_estimator is not None:
            value = value + self.kl_coef * LM._kl_estimate(lp, ref, self.kl_estimator)
        return value

    def forward(self, cfg: E.Config, z, xs, b=None, consts=()):
        labels, keep, old, adv, *ref = xs
        lp, lse, on = self._log_probs.forward(cfg, z, (labels,), b, consts)
        ref = ref[0] if ref else None
        value, slope = jax.jvp(
            lambda lp: self._per_token(lp, old, adv, ref), (lp,), (jnp.ones_like(lp),)
        )
        # A dropped token whose label sits on a −inf logit would give an infinite KL.
        return jnp.where(keep, value, 0.0), lse, on, jnp.where(keep, slope, 0.0)

    def backward(self, cfg: E.Config, z, saved, xs, b=None, consts=()):
        lse, on, slope = saved
        g, row = self._log_probs.backward(cfg, z, (lse, on), xs[:1], b, consts)
        return g, row * slope


def _policy_gradient_loss(
    hidden,
    weight,
    labels,
    old_log_probs,
    advantages,
    scale,
    reference_log_probs=None,
    where=None,
    bias=None,
    *,
    weight_layout,
    temperature,
    chunk_size,
    loss_options,
    batch_axis_name=None,
):
    """`fused_linear_policy_gradient_loss` of local inputs, the per-token inputs broadcast
    and masked, ``scale`` the aggregation's per-token weights."""
    layout, options, h, w, b, y, keep, batch, v = _prepare(
        hidden, weight, labels, bias, weight_layout, temperature, None, chunk_size, where
    )
    cfg = E.Config(loss=PolicyGradient(n_classes=v, **loss_options), **layout, **options)
    n = h.shape[0]
    kept = jnp.ones(n, bool) if keep is None else keep.reshape(n)
    inputs = (old_log_probs, advantages, reference_log_probs)
    xs = (y, kept, *(x.astype(cfg.dtype).reshape(n) for x in inputs if x is not None))
    # Σ scale·value: the "sum" reduction with the aggregation's weights as token weights.
    return E.reduce(cfg, h, w, b, xs, keep, scale, batch, "sum", batch_axis_name)


def fused_linear_policy_gradient_loss(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    temperature: float = 1.0,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    reference_log_probs: ArrayLike | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    max_length: int | None = None,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """PPO/GRPO's clipped policy-gradient loss of ``hidden @ weight + bias``, no logits formed.

    Per token t of B sequences, with ℓₜ = log softmax(zₜ/T)[yₜ] the log-probability of
    the sampled token under the logits z = h·W + b:

        rₜ = exp(ℓₜ − log π_old(yₜ)),   Δₜ = log π_ref(yₜ) − ℓₜ
        lossₜ = −min(rₜ·Aₜ, clip(rₜ, 1 − ε_low, 1 + ε_high)·Aₜ) + β·KLₜ
        KLₜ = −Δₜ ("k1"),  ½Δₜ² ("k2"),  exp(Δₜ) − Δₜ − 1 ("k3")

    aggregated over the kept tokens (mₜ = ``where``) as `policy_gradient_loss` does:
    "token_mean" Σ m·loss / Σ m (DAPO), "sequence_mean" (1/B) Σ_b Σ_t m·loss / Σ_t m
    (GRPO; a sequence with no kept token contributes 0 and counts in B),
    "sequence_sum_normalized" Σ m·loss / (B·max_length) (Dr. GRPO). It equals
    ``policy_gradient_loss(token_log_probs(z, labels, temperature=T), old_log_probs,
    advantages, ...)`` plus β = ``kl_coef`` times ``kl_penalty(token_log_probs(...),
    reference_log_probs, estimator=kl_estimator)`` aggregated the same way, in value and
    in the gradients with respect to ``hidden``, ``weight`` and ``bias`` (including the
    subgradient of min and clip at their ties).

    The chunked engine computes it ``chunk_size`` tokens at a time, so that only a
    [chunk, V] block of the logits exists at once. Every aggregation is a weighted sum
    over tokens whose weights depend only on ``where`` and ``max_length``, so the
    gradients are formed in the same pass as the loss: three matrix products, as the
    naive computation, and never the [N, V] logits nor their gradient.

    ``old_log_probs``, ``advantages`` and ``reference_log_probs`` are constants of the
    update (no gradient flows to them). Masked-out tokens contribute 0 with zero gradient,
    even where their ``hidden`` rows or other inputs are NaN or inf. As in
    `token_log_probs`, a label on a −inf logit has the lowest float as its log-probability
    (with zero gradient) and a label outside [0, V) gives NaN. bf16/f16 inputs are
    computed with float32 accumulation; inputs sharded over explicit mesh axes are
    computed per device (each over its own tokens), with the aggregation's counts taken
    over the whole batch.

    Args:
      hidden: h, floating [..., T, D]: the last hidden states of B sequences of T tokens
        (B the product of the leading axes; [T, D] is one sequence).
      weight: W, floating [D, V] (``weight_layout="dense"``) or [V, D] (``"embedding"``).
      labels: integer ids of the sampled tokens in [0, V), broadcastable to [..., T].
      old_log_probs: floating, broadcastable to [..., T]: log π_old of the sampled tokens.
      advantages: floating, per sequence [...] (broadcast along T) or per token
        (broadcastable to [..., T]).
      bias: optional b, floating [V].
      weight_layout: ``"dense"`` or ``"embedding"``, the layout of ``weight``.
      temperature: T > 0 (a Python number); the logits are divided by it.
      clip_epsilon: ε_low ≥ 0 (a Python number), the lower clip range.
      clip_epsilon_high: ε_high ≥ 0 (DAPO's clip-higher); defaults to ``clip_epsilon``.
      reference_log_probs: floating, broadcastable to [..., T]: log π_ref of the sampled
        tokens; required when ``kl_coef > 0`` (ignored when it is 0).
      kl_coef: β ≥ 0 (a Python number), the weight of the KL penalty.
      kl_estimator: "k1", "k2" or "k3" (GRPO's), as in `kl_penalty`.
      aggregation: "token_mean", "sequence_mean" or "sequence_sum_normalized".
      max_length: the normalizer of "sequence_sum_normalized" (a positive int); required
        there, not accepted with the other aggregations.
      where: optional boolean mask broadcastable to [..., T]; True keeps a token.
      chunk_size: tokens per chunk (a Python int); default as `fused_linear_cross_entropy`.

    Returns:
      The scalar loss, float32 (float64 for float64 ``hidden`` and ``weight``; bf16/f16
      inputs are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> hidden = jnp.array([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.5, -1.0]]])
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> labels = jnp.array([[0, 1], [2, 0]])
      >>> old = jnp.full((2, 2), -1.0)
      >>> advantages = jnp.array([1.0, -1.0])
      >>> jaxloss.fused_linear_policy_gradient_loss(
      ...     hidden, weight, labels, old, advantages, chunk_size=3)
      Array(0.06988, dtype=float32)
      >>> jaxloss.policy_gradient_loss(
      ...     jaxloss.token_log_probs(hidden @ weight, labels), old, advantages)
      Array(0.06988, dtype=float32)

    References:
      Schulman et al., "Proximal policy optimization algorithms" (2017); Shao et al.,
      "DeepSeekMath" (GRPO, 2024); Yu et al., "DAPO" (2025); Liu et al., "Understanding
      R1-Zero-like training: a critical perspective" (Dr. GRPO, 2025); Schulman,
      "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html;
      Wijmans et al., "Cut your losses in large-vocabulary language models" (2024), for
      the chunked computation.
    """
    low = E.python_number("clip_epsilon", clip_epsilon)
    if clip_epsilon_high is not None:
        clip_epsilon_high = E.python_number("clip_epsilon_high", clip_epsilon_high)
    high = LM._check_policy_options(aggregation, low, clip_epsilon_high, max_length)
    LM._check_choice("kl_estimator", kl_estimator, LM.ESTIMATORS)
    beta = E.python_number("kl_coef", kl_coef)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"`kl_coef` must be a non-negative finite number, got {kl_coef!r}.")
    if beta > 0 and reference_log_probs is None:
        raise ValueError(
            f"`reference_log_probs` is required with kl_coef={kl_coef!r} > 0: pass the "
            "reference policy's log-probabilities of the sampled tokens, or kl_coef=0."
        )
    hidden = C.as_float("hidden", hidden)
    weight = C.as_float("weight", weight)
    bias = None if bias is None else C.as_float("bias", bias)
    _, _, shape = E.check_linear(hidden, weight, bias, weight_layout)
    if not shape:
        raise ValueError(
            f"`hidden` of shape {hidden.shape} must be [..., T, D]: tokens along a sequence "
            "axis, then the feature axis."
        )
    dtype = C.compute_dtype(*(x for x in (hidden, weight, bias) if x is not None))
    where = C.check_where(where, shape)
    keep = None if where is None else jnp.broadcast_to(where, shape)

    def token_input(name, x):
        """A per-token input: validated, [..., T], a constant, 0 where dropped."""
        x = C.as_float(name, x, allow_int=name == "advantages")
        if name == "advantages":
            x = LM._advantages(x, shape)
        C._check_broadcastable(name, x, shape)
        x = lax.stop_gradient(jnp.broadcast_to(x, shape).astype(dtype))
        return C.keep(keep, x, 0.0)

    old = token_input("old_log_probs", old_log_probs)
    adv = token_input("advantages", advantages)
    ref = None
    if beta > 0:
        ref = token_input("reference_log_probs", reference_log_probs)
    mask = jnp.ones(shape, dtype) if keep is None else keep.astype(dtype)
    scale = LM._aggregation_weights(mask, aggregation, max_length)
    loss_options = dict(clip_low=low, clip_high=high)
    if beta > 0:
        loss_options.update(kl_coef=beta, kl_estimator=kl_estimator)
    options = dict(
        weight_layout=weight_layout,
        temperature=temperature,
        chunk_size=chunk_size,
        loss_options=loss_options,
    )
    tokens = dict(labels=labels, old_log_probs=old, advantages=adv, scale=scale)
    tokens.update(reference_log_probs=ref, where=keep)
    mesh = E.explicit_mesh(hidden, weight, bias, labels, old, adv, ref, keep)
    if mesh is not None:
        return E.per_device(
            _policy_gradient_loss,
            mesh,
            hidden,
            shared={"weight": weight, "bias": bias},
            tokens=tokens,
            options=options,
            per_token=False,
        )
    return _policy_gradient_loss(hidden, weight, bias=bias, **tokens, **options)


# --------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Distillation:
    """The engine's `ChunkLoss` for soft_weight·D(teacher‖student) + hard_weight·CE(z, y).

    z are the student's logits of the chunk, untempered (the engine's temperature is 1:
    the temperature divides the logits of the soft part only). The teacher's logits are
    formed here from the chunk's teacher hidden rows (the first per-token input) and
    the teacher's weight and bias (``consts``). Per-token inputs: (teacher hidden [n,
    D_t], labels [n] with a hard loss, keep [n] with a mask). Per-token outputs: (ℓ, D,
    [lse, on]): the loss, the unweighted divergence (its gradient's "reverse_kl" form
    needs it), and the cross-entropy's saved values.
    """

    divergence: str  # after `_resolved_divergence`
    beta: float
    temperature: float
    soft_weight: float  # soft_loss_weight, times T² with scale_by_temperature_squared
    hard_weight: float
    hard: CrossEntropy | None  # the cross-entropy on the labels, if hard_weight > 0
    masked: bool  # a keep mask is the last per-token input
    n_values = 1

    def dtypes(self, cfg: E.Config):
        return (cfg.dtype, cfg.dtype) + ((cfg.dtype, bool) if self.hard is not None else ())

    def _inputs(self, cfg: E.Config, z, xs, consts):
        """(s, t, labels, keep): the tempered student and teacher logits [n, V], ..."""
        h_t, *rest = xs
        labels = rest[0] if self.hard is not None else None
        keep = rest[-1] if self.masked else None
        if not self.soft_weight:
            return None, None, labels, keep
        z_t = E._project(cfg, h_t, consts[0])
        if len(consts) > 1:
            z_t = z_t + consts[1].astype(cfg.dtype)
        if self.temperature != 1.0:
            z, z_t = z / self.temperature, z_t / self.temperature
        return z, z_t, labels, keep

    def forward(self, cfg: E.Config, z, xs, b=None, consts=()):
        """ℓ = soft_weight·D + hard_weight·CE per token (0 for a dropped token), D, [lse, on]."""
        s, t, labels, keep = self._inputs(cfg, z, xs, consts)
        if self.soft_weight:
            div = _divergence(s, t, self.divergence, self.beta, axis=1)
            value = self.soft_weight * div
        else:
            div = value = jnp.zeros(z.shape[:1], cfg.dtype)
        saved = ()
        if self.hard is not None:
            ce, *saved = self.hard.forward(cfg, z, (labels,), b)
            value = value + self.hard_weight * ce
        if keep is not None:
            # A dropped token's logits are its biases' (its hidden rows are 0): a −inf
            # student bias entry where the teacher's is finite would make D = +inf.
            value = jnp.where(keep, value, 0.0)
        return (value, div, *saved)

    def _divergence_grad(self, s, t, div):
        """∂D/∂s for the tempered student logits s, per class.

        With p = softmax(s), q = softmax(t) and ∂D/∂p = g, ∂D/∂s = p·(g − Σ p·g):
        forward KL(q‖p): p − q; reverse KL(p‖q): p·(log p − log q − D); JSD_β: g =
        (1 − β)·log(p/m), m = β·q + (1 − β)·p; TVD: g = ½·sign(p − q) (+½ at p = q, as
        the derivative of |x| at 0 in JAX). Each is 0 where p = 0 (a −inf logit).
        """
        _, log_p = _log_softmax(s, 1)
        _, log_q = _log_softmax(t, 1)
        p, q = jnp.exp(log_p), jnp.exp(log_q)
        if self.divergence == "forward_kl":
            return p - q
        if self.divergence == "reverse_kl":
            return p * jnp.where(p == 0, 0.0, log_p - log_q - div[:, None])
        if self.divergence == "jsd":
            beta = self.beta
            m = beta * q + (1.0 - beta) * p
            positive = p > 0  # then m ≥ (1 − β)·p > 0
            ratio = N._log_ratio(jnp.where(positive, p, 1.0), jnp.where(positive, m, 1.0))
            pg = (1.0 - beta) * p * jnp.where(positive, ratio, 0.0)
        else:
            pg = p * jnp.where(p >= q, 0.5, -0.5)
        return pg - p * jnp.sum(pg, axis=1, keepdims=True)

    def backward(self, cfg: E.Config, z, saved, xs, b=None, consts=()):
        """∂ℓ/∂z = (soft_weight/T)·∂D/∂s + hard_weight·(softmax(z) − onehot(y)), row 1."""
        s, t, labels, keep = self._inputs(cfg, z, xs, consts)
        g = jnp.zeros_like(z)
        if self.soft_weight:
            g = self._divergence_grad(s, t, saved[0]) * (self.soft_weight / self.temperature)
        if self.hard is not None:
            g_ce, row_ce = self.hard.backward(cfg, z, tuple(saved[1:]), (labels,), b)
            g = g + (self.hard_weight * row_ce)[:, None] * g_ce
        if keep is not None:
            g = jnp.where(keep[:, None], g, 0.0)
        return g, jnp.ones(z.shape[:1], cfg.dtype)


def _nonnegative(name: str, value) -> float:
    value = E.python_number(name, value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}.")
    return value


def _check_teacher_shapes(student_hidden, teacher_hidden) -> None:
    s_shape, t_shape = jnp.shape(student_hidden), jnp.shape(teacher_hidden)
    if len(s_shape) >= 1 and len(t_shape) >= 1 and s_shape[:-1] != t_shape[:-1]:
        raise ValueError(
            f"`teacher_hidden` of shape {t_shape} must hold one row per token of "
            f"`student_hidden` of shape {s_shape}: the same shape except the last (feature) "
            "axis, whose size may differ."
        )


def _distillation(
    hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    labels=None,
    *,
    student_bias=None,
    teacher_bias=None,
    weight_layout,
    temperature,
    divergence,
    beta,
    scale_by_temperature_squared,
    hard_loss_weight,
    soft_loss_weight,
    ignore_index,
    where=None,
    weights=None,
    chunk_size,
    reduction,
    batch_axis_name=None,
):
    """`fused_linear_distillation_loss` of local (unsharded or per-device) inputs."""
    _check_divergence(divergence, temperature, beta)
    temperature = E.python_number("temperature", temperature)
    hard_weight = _nonnegative("hard_loss_weight", hard_loss_weight)
    soft_weight = _nonnegative("soft_loss_weight", soft_loss_weight)
    if not isinstance(scale_by_temperature_squared, bool):
        raise TypeError(
            f"`scale_by_temperature_squared` must be a bool, got {scale_by_temperature_squared!r}."
        )
    hidden = C.as_float("student_hidden", hidden)
    weight = C.as_float("student_weight", student_weight)
    bias = None if student_bias is None else C.as_float("student_bias", student_bias)
    h_t = C.as_float("teacher_hidden", teacher_hidden)
    w_t = C.as_float("teacher_weight", teacher_weight)
    b_t = None if teacher_bias is None else C.as_float("teacher_bias", teacher_bias)
    d, v, batch = E.check_linear(hidden, weight, bias, weight_layout, prefix="student_")
    d_t, v_t, batch_t = E.check_linear(h_t, w_t, b_t, weight_layout, prefix="teacher_")
    _check_teacher_shapes(hidden, h_t)
    if v_t != v:
        raise ValueError(
            f"The teacher's vocabulary ({v_t} classes, `teacher_weight` of shape {w_t.shape}) "
            f"must match the student's ({v} classes, `student_weight` of shape {weight.shape}) "
            f"with weight_layout={weight_layout!r}: both distributions are over the same tokens."
        )
    E.check_bias(bias, v, "student_bias")
    E.check_bias(b_t, v, "teacher_bias")
    C.check_ignore_index(ignore_index)
    if labels is None:
        if hard_weight:
            raise ValueError(
                f"`hard_loss_weight={hard_loss_weight!r}` > 0 needs `labels`, the token ids the "
                "student's cross-entropy is taken on; pass them, or hard_loss_weight=0."
            )
        if ignore_index is not None:
            raise ValueError(
                f"`ignore_index={ignore_index!r}` needs `labels` to find the ignored tokens; "
                "pass them, or drop tokens with `where`."
            )
    else:
        labels = C.as_labels("labels", labels)
        if not _broadcasts_to(labels.shape, batch):
            raise ValueError(
                f"`labels` of shape {labels.shape} must broadcast to the shape of "
                f"`student_hidden` without its feature axis, {batch}."
            )
        labels = jnp.broadcast_to(labels, batch)
    where, weights = C.prepare(batch, where, weights, reduction)
    if labels is not None:
        C.check_class_ids(labels, ignore_index, where)
    n = int(np.prod(batch, dtype=np.int64))
    dtype = C.compute_dtype(*(x for x in (hidden, weight, bias, h_t, w_t, b_t) if x is not None))

    keep = C.kept(where, labels, ignore_index, batch)
    # No gradient flows to the teacher: its inputs are constants of the engine too.
    h_t, w_t = lax.stop_gradient(h_t), lax.stop_gradient(w_t)
    h = E.flat_hidden(hidden, weight, keep, batch, d)
    h_t = E.flat_hidden(h_t, w_t, keep, batch_t, d_t)
    xs: tuple = (h_t,)
    hard = None
    if hard_weight and labels is not None:  # labels are required there (checked above)
        hard = CrossEntropy(n_classes=v, label_smoothing=0.0, z_loss=0.0)
        y = _class_ids(labels, v)  # int32, −1 outside [0, V)
        if keep is not None:
            y = jnp.where(keep, y, 0)  # a safe index; the token is dropped anyway
        xs += (y.reshape(n),)
    if keep is not None:
        xs += (keep.reshape(n),)
    consts: tuple = (w_t.astype(h_t.dtype),)
    if b_t is not None:
        consts += (lax.stop_gradient(b_t),)
    loss = Distillation(
        divergence=_resolved_divergence(divergence, beta),
        beta=float(beta) if divergence == "jsd" else 0.0,
        temperature=temperature,
        soft_weight=soft_weight * (temperature**2 if scale_by_temperature_squared else 1.0),
        hard_weight=hard_weight,
        hard=hard,
        masked=keep is not None,
    )
    cfg = E.Config(
        layout=weight_layout,
        chunk=E.chunk(chunk_size, n, v),
        block=E._default_block(d, v),
        dtype=np.dtype(dtype),
        loss=loss,
    )
    w = weight.astype(h.dtype)
    return E.reduce(cfg, h, w, bias, xs, keep, weights, batch, reduction, batch_axis_name, consts)


def fused_linear_distillation_loss(
    student_hidden: ArrayLike,
    student_weight: ArrayLike,
    teacher_hidden: ArrayLike,
    teacher_weight: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    student_bias: ArrayLike | None = None,
    teacher_bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    hard_loss_weight: float = 0.0,
    soft_loss_weight: float = 1.0,
    scale_by_temperature_squared: bool = False,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    chunk_size: int | None = None,
    batch_axis_name: Hashable | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Distillation loss of a student's and a teacher's linear heads, never forming their logits.

        z = h·W + b,   z_t = h_t·W_t + b_t        (student and teacher logits, [V] per token)
        ℓ = α_soft·[T²]·D(softmax(z_t/T) ‖ softmax(z/T)) + α_hard·(logsumexp(z) − z_y)

    per token, with D the ``divergence`` of `distillation_loss` ("forward_kl" KL(t‖s),
    "reverse_kl" KL(s‖t), "jsd" the generalized Jensen-Shannon divergence with the
    teacher's weight β in the mixture, "tvd" ½Σ|s − t|; β = 0 and β = 1 are forward and
    reverse KL, as there), α_soft = ``soft_loss_weight``, the factor T² with
    ``scale_by_temperature_squared``, and α_hard = ``hard_loss_weight`` times the
    student's cross-entropy on ``labels`` of its *untempered* logits (left out, and
    ``labels`` optional, when α_hard = 0). The soft part equals `distillation_loss` of
    the materialized logits, the hard part `softmax_cross_entropy`; here they are
    computed ``chunk_size`` tokens at a time by the chunked engine, so that only a
    [chunk, V] block of each model's logits exists at once: never the [N, V] logits of
    either model, nor the student's logit gradient.

    No gradient flows to the teacher (its hidden states, weight and bias are constants,
    ``stop_gradient``). The gradient with respect to the student's logits is written
    out (forward KL: (s − t)/T per unit of loss, ...), so ``"mean"`` and ``"sum"`` form
    ∂/∂h, ∂/∂W, ∂/∂b in the same pass as the loss: the teacher's product, the student's
    product and the two gradient products, as the naive computation (with
    ``reduction="none"`` the backward pass recomputes both models' logits per chunk).

    Tokens dropped by ``where`` or by ``ignore_index`` (their label) give 0 with zero
    gradient, even where their hidden rows are NaN. −inf bias entries (a masked
    vocabulary) are classes of probability 0, as in `distillation_loss`: at the same
    classes in both models every divergence is finite with finite gradients. A kept
    label outside [0, V) makes the hard part NaN, as in `fused_linear_cross_entropy`.

    Memory, chunk defaults (for V), bf16/f16 inputs (float32 accumulation) and inputs
    sharded over explicit mesh axes (each device loops over its own tokens, the weights
    replicated) as in `fused_linear_cross_entropy`; each chunk holds about four [chunk,
    V] blocks (the two models' logits and probabilities).

    Args:
      student_hidden: h, floating [..., D] (e.g. [N, D] or [batch, seq, D]).
      student_weight: W, floating [D, V] (``weight_layout="dense"``) or [V, D]
        (``"embedding"``).
      teacher_hidden: h_t, floating [..., D_t], one row per token of ``student_hidden``
        (the same shape but for the last axis: the hidden sizes may differ).
      teacher_weight: W_t, floating [D_t, V] or [V, D_t], the same layout and
        vocabulary as ``student_weight``.
      labels: optional integer token ids in [0, V), broadcastable to ``student_hidden``'s
        shape without D; required with ``hard_loss_weight > 0`` or ``ignore_index``.
      student_bias, teacher_bias: optional b, b_t, floating [V].
      weight_layout: ``"dense"`` or ``"embedding"``, the layout of both weights.
      temperature: T > 0 (a Python number), dividing both models' logits in the soft
        part only.
      divergence: one of "forward_kl", "reverse_kl", "jsd", "tvd".
      beta: the teacher's weight β ∈ [0, 1] in the mixture of "jsd" (a Python number).
      hard_loss_weight: α_hard ≥ 0 (a Python number).
      soft_loss_weight: α_soft ≥ 0 (a Python number).
      scale_by_temperature_squared: multiply the soft part by T² (Hinton et al.).
      ignore_index: optional token id whose tokens are dropped, exactly as
        ``where=False`` (from both parts).
      where: optional boolean mask broadcastable to the token shape; True keeps a token.
      weights: optional non-negative per-token weights broadcastable to the token shape.
      chunk_size: tokens per chunk (a Python int); default as `fused_linear_cross_entropy`.
      batch_axis_name: inside ``shard_map``, the mesh axis (or axes) the tokens are
        sharded over; "sum" and "mean" then reduce over all of them.
      reduction: ``"mean"`` (default, Σ w·ℓ / Σ w over kept tokens; 0 over none),
        ``"sum"`` or ``"none"`` (the per-token ℓ, 0 for dropped tokens), as in
        `fused_linear_cross_entropy` (only "sum" and "mean" get the one-pass gradient).

    Returns:
      A scalar for ``"sum"``/``"mean"``, else the token shape; float32, or float64 for
      float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> teacher_hidden = jnp.array([[2.0], [-1.0], [0.5]])
      >>> teacher_weight = jnp.array([[1.0, -1.0, 0.0]])
      >>> jaxloss.fused_linear_distillation_loss(
      ...     hidden, weight, teacher_hidden, teacher_weight, chunk_size=2, temperature=2.0)
      Array(0.06986, dtype=float32)
      >>> jaxloss.distillation_loss(
      ...     hidden @ weight, teacher_hidden @ teacher_weight, temperature=2.0, reduction="mean")
      Array(0.06986, dtype=float32)
      >>> jax.grad(jaxloss.fused_linear_distillation_loss)(
      ...     hidden, weight, teacher_hidden, teacher_weight).shape
      (3, 2)

    References:
      Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
      Agarwal et al., "On-policy distillation of language models: learning from
      self-generated mistakes" (GKD), ICLR 2024, for the generalized JSD; Wijmans et al.,
      "Cut your losses in large-vocabulary language models" (2024), for the chunked
      computation.
    """
    C.check_batch_axis_name("fused_linear_distillation_loss", batch_axis_name)
    options: dict[str, Any] = dict(
        weight_layout=weight_layout,
        temperature=temperature,
        divergence=divergence,
        beta=beta,
        scale_by_temperature_squared=scale_by_temperature_squared,
        hard_loss_weight=hard_loss_weight,
        soft_loss_weight=soft_loss_weight,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        reduction=reduction,
    )
    biases = dict(student_bias=student_bias, teacher_bias=teacher_bias)
    mesh = E.explicit_mesh(
        student_hidden, student_weight, teacher_hidden, teacher_weight, labels, where, weights
    )
    if mesh is not None and batch_axis_name is None:
        _check_teacher_shapes(student_hidden, teacher_hidden)
        return E.per_device(
            _distillation,
            mesh,
            student_hidden,
            shared={"student_weight": student_weight, "teacher_weight": teacher_weight, **biases},
            tokens={"labels": labels, "where": where, "weights": weights},
            rows={"teacher_hidden": teacher_hidden},
            options=options,
            per_token=reduction == "none",
        )
    return _distillation(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        where=where,
        weights=weights,
        batch_axis_name=batch_axis_name,
        **biases,
        **options,
    )
