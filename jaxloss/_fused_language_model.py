"""Language-model quantities of a linear layer's output, without materializing the logits.

The fused counterparts of `_language_model.py`'s functions, on the chunked engine
(`_engine.py`): only a [chunk, V] block of the logits z = h·W (+ b) ever exists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxloss import _conventions as C
from jaxloss import _engine as E
from jaxloss import _language_model as LM
from jaxloss._classification import _broadcasts_to, _class_ids

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
        log_p = z - lse[:, None]
        p = jnp.exp(log_p)
        return jnp.where(p > 0, p * log_p, 0.0)

    def backward(self, cfg: E.Config, z, saved, xs, b=None, consts=()):
        """∂log p_y/∂z = onehot(y) − p (0 where log p_y is clipped, NaN for an invalid label);
        ∂H/∂z = −p·(log p + H)."""
        (labels,) = xs
        lse, on = saved[:2]
        local, here, valid = E.targets(cfg, labels, z.shape[1], self.n_classes)
        row = jnp.where(valid, jnp.where(on, 1.0, 0.0), jnp.nan).astype(cfg.dtype)
        p = jnp.exp(z - lse[:, None])
        rows = jnp.arange(z.shape[0])
        g = (-p).at[rows, local].add(jnp.where(here, 1.0, 0.0).astype(cfg.dtype))
        if not self.entropy:
            return g, row
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
    all instead of three, and a [D, V] temporary.

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
