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
