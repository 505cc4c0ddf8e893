"""Softmax cross-entropy of a linear layer's output, without materializing the logits.

A language-model head computes logits z = h·W (+ b) for N tokens over a vocabulary of V
classes; the [N, V] logits and their gradient dominate the memory of training. The
chunked engine (`_engine.py`) processes the tokens a chunk at a time, so only a [chunk,
V] block of logits ever exists, and, for a ``"sum"`` or ``"mean"`` reduction, forms the
gradients with respect to h, W and b in the same pass as the loss. This module plugs
the cross-entropy into it: its per-token value of a chunk's logits and its gradient.

The same loss serves the vocabulary-parallel form (`_parallel.py`): with ``axis_name``
set, W holds one shard of the vocabulary and the three per-token reductions over the
vocabulary (max, sum of exponentials, target logit) are completed across shards with
collectives.
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
from jaxloss._classification import _class_ids, class_id_cross_entropy

# The engine's default chunk and block, read here by benchmarks/gpu_check.py and the tests
# (their constants, and what they patch, live in _engine.py).
from jaxloss._engine import LAYOUTS, _default_block, default_chunk  # noqa: F401

ArrayLike = C.ArrayLike


# --------------------------------------------------------------------------------------
# The cross-entropy of one chunk of logits
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    """The engine's `ChunkLoss` for the class-id cross-entropy (per-token input: labels).

    Its per-token outputs are (ℓ, lse, on): the loss, the logsumexp that the backward
    pass of ``"none"`` reuses, and whether −log p_y is finite (False only for a label on
    a −inf class).
    """

    n_classes: int  # the whole vocabulary, summed over shards
    label_smoothing: float
    z_loss: float
    n_values = 1  # the loss; lse and on are saved for the backward pass

    def dtypes(self, cfg: E.Config):
        return cfg.dtype, cfg.dtype, bool

    def _finite_classes(self, cfg: E.Config, b: jax.Array | None):
        """(mask [V] of the classes with a finite logit or None for all, their global count K).

        Only a −inf bias entry makes a logit −inf (h·W is finite, and a soft cap maps −inf
        to −cap), so the support of label smoothing is read off the bias once, not per token.
        """
        if b is None or cfg.soft_cap is not None or not self.label_smoothing:
            return None, self.n_classes
        finite = b != -jnp.inf
        return finite, E.psum(cfg, jnp.sum(finite).astype(cfg.dtype))

    def forward(self, cfg: E.Config, z: jax.Array, xs, b: jax.Array | None = None, consts=()):
        """(loss, lse, on) per token of a chunk of logits.

        ℓ = (1 − ε)·min(lse − z_y, MAX) + ε·(lse − (1/K)·Σ_{c: z_c > −∞} z_c) + λ·lse², and
        NaN for a label outside [0, C); K counts the classes with a finite logit (as
        `softmax_cross_entropy`), and MAX is the largest float, the cap that a label on a
        −inf class hits (``on`` is False there: that term then has zero gradient). The max
        is only a shift for stability (lse does not depend on it), so it is taken without
        gradient.
        """
        (labels,) = xs
        local, here, valid = E.targets(cfg, labels, z.shape[1], self.n_classes)
        m = E.pmax(cfg, lax.stop_gradient(jnp.max(z, axis=1)))
        lse = m + jnp.log(E.psum(cfg, jnp.sum(jnp.exp(z - m[:, None]), axis=1)))
        picked = jnp.take_along_axis(z, local[:, None], axis=1)[:, 0]
        z_y = E.psum(cfg, jnp.where(here, picked, 0.0))
        on = ~(lse - z_y > jnp.finfo(cfg.dtype).max)  # False only for a label on a −inf class
        stats = {}
        if self.label_smoothing:
            finite, count = self._finite_classes(cfg, b)
            total = jnp.sum(z if finite is None else jnp.where(finite, z, 0.0), axis=1)
            stats = {"smooth_count": count, "smooth_logit_sum": E.psum(cfg, total)}
        # The per-example formula every class-id cross-entropy shares (PyTorch's convention).
        loss = class_id_cross_entropy(lse, z_y, label_smoothing=self.label_smoothing, **stats)
        if self.z_loss:
            loss = loss + self.z_loss * jnp.square(lse)
        return jnp.where(valid, loss, jnp.nan), lse, on

    def backward(self, cfg: E.Config, z, saved, xs, b=None, consts=()):
        """(∂ℓ/∂z per token, unscaled, and a per-token factor to scale it by).

        ∂ℓ/∂z = softmax·((1 − ε)·on + ε + 2λ·lse) − (1 − ε)·on·onehot(y) − ε·finite/K. The
        factor is NaN for an invalid label (its loss is NaN, so is its gradient); without
        smoothing it also carries ``on`` (the whole gradient of a token whose label is on
        a −inf class is then 0), which spares a [chunk, V] product.
        """
        lse, on = saved
        (labels,) = xs
        local, here, valid = E.targets(cfg, labels, z.shape[1], self.n_classes)
        eps = self.label_smoothing
        row = jnp.where(valid, 1.0, jnp.nan).astype(cfg.dtype)
        rows = jnp.arange(z.shape[0])
        if not eps:
            # p·coef written over z (one [chunk, V] array, not two), 0 on the rows where
            # ``on`` is False (their row factor is 0): reading ``on``, which comes from z's
            # entry at the label, orders this after every read of z (`E.in_place`).
            coef = 1.0 + 2.0 * self.z_loss * lse if self.z_loss else jnp.ones_like(lse)
            coef = jnp.where(on, coef, 0.0)
            g = E.in_place(cfg, z, lambda zb: jnp.exp(E.log_probs(zb, lse)) * coef[:, None])
            row = jnp.where(on, row, 0.0)
            return g.at[rows, local].add(jnp.where(here, -1.0, 0.0)), row
        p = jnp.exp(E.log_probs(z, lse))
        a = jnp.where(on, 1.0 - eps, 0.0).astype(cfg.dtype)  # the weight of −log p_y
        coef = a + eps
        if self.z_loss:
            coef = coef + 2.0 * self.z_loss * lse
        p = p * coef[:, None]
        finite, count = self._finite_classes(cfg, b)
        p = p - (eps / count if finite is None else jnp.where(finite, eps / count, 0.0))
        return p.at[rows, local].add(jnp.where(here, -a, 0.0)), row


# --------------------------------------------------------------------------------------
# Input handling shared by the fused cross-entropies
# --------------------------------------------------------------------------------------


def prepare(
    hidden,
    weight,
    labels,
    *,
    bias,
    weight_layout,
    chunk_size,
    ignore_index,
    where,
    weights,
    label_smoothing,
    z_loss,
    logit_soft_cap,
    reduction,
    axis_name=None,
    n_shards: int = 1,
):
    """Validate and flatten the inputs; returns (cfg, h, w, b, xs, keep, weights, batch)."""
    hidden = C.as_float("hidden", hidden)
    weight = C.as_float("weight", weight)
    bias = None if bias is None else C.as_float("bias", bias)
    C.check_ignore_index(ignore_index)
    labels = C.as_labels("labels", labels)
    d, v, batch = E.check_linear(hidden, weight, bias, weight_layout)
    if labels.shape != batch:
        raise ValueError(
            f"`labels` of shape {labels.shape} must have the shape of `hidden` without its "
            f"feature axis, {batch}."
        )
    E.check_bias(bias, v)
    where, weights = C.prepare(batch, where, weights, reduction)
    C.check_class_ids(labels, ignore_index, where)
    eps = E.python_number("label_smoothing", label_smoothing)
    C.check_in_range("label_smoothing", eps, 0.0, 1.0)
    lam = E.python_number("z_loss", z_loss)
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"`z_loss` must be a non-negative finite number, got {z_loss!r}.")
    cap = E.soft_cap(logit_soft_cap)
    n = int(np.prod(batch, dtype=np.int64))
    chunk = E.chunk(chunk_size, n, v)

    dtype = C.compute_dtype(*(x for x in (hidden, weight, bias) if x is not None))
    loss = CrossEntropy(n_classes=v * n_shards, label_smoothing=eps, z_loss=lam)
    cfg = E.Config(
        layout=weight_layout,
        chunk=chunk,
        block=E._default_block(d, v),
        dtype=np.dtype(dtype),
        loss=loss,
        soft_cap=cap,
        axis_name=axis_name,
    )
    keep = C.kept(where, labels, ignore_index, batch)
    # int32 ids, −1 for any id outside [0, V) (tested in the labels' own dtype: a uint8 id
    # cannot wrap the bound 260, nor an int64 id ≥ 2³² land in range).
    labels = _class_ids(labels, loss.n_classes)
    if keep is not None:
        labels = jnp.where(keep, labels, 0)  # a safe index; the token is dropped anyway
    h = E.flat_hidden(hidden, weight, keep, batch, d)
    return cfg, h, weight.astype(h.dtype), bias, (labels.reshape(n),), keep, weights, batch


# --------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------


def fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    chunk_size: int | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
    batch_axis_name: Hashable | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Softmax cross-entropy of ``hidden @ weight (+ bias)``, never forming all the logits.

        z = h·W + b                 (then z ← cap·tanh(z/cap) with ``logit_soft_cap``)
        ℓ = (1 − ε)·(lse − z_y) + ε·(lse − (1/K)·Σ_{c: z_c > −∞} z_c) + λ·lse²,
        lse = logsumexp(z),  K = the number of classes with a finite logit (V without −inf)

    the same loss as `softmax_cross_entropy` of the materialized logits (plus λ times
    `z_loss`), computed ``chunk_size`` tokens at a time, so that only a [chunk, V] block
    of logits exists at once: never the [N, V] logits, nor their gradient. Per token
    (``"none"``), ``"sum"`` and ``"mean"`` equal PyTorch's ``cross_entropy(z, y,
    ignore_index=..., label_smoothing=ε)`` (no class weights) when no logit is −inf.

    −inf bias entries (classes a model can never predict), as in `softmax_cross_entropy`:
    label smoothing spreads its mass ε over the K classes with a finite logit only (the
    uniform target over all V classes would make the loss infinite), and a token whose
    label is such a class gets (1 − ε)·(largest float) + ε·(…), with zero gradient from
    its −log p_y term (the value of that logit clipped to the lowest float), never inf or
    NaN. Forward-mode derivatives (``jax.jvp``, ``jax.jacfwd``) are finite there too.

    Algorithm: a loop over token chunks computes each chunk's logits, their logsumexp
    and the loss. Under reverse-mode differentiation with ``reduction="sum"`` or
    ``"mean"`` the same pass also forms ∂/∂h, ∂/∂W and ∂/∂b from the chunk's softmax
    minus target, and the backward pass only scales them: the three matrix products of
    the ordinary forward and backward pass, no recomputation. With ``reduction="none"``
    the per-token cotangents arrive only in the backward pass, which recomputes each
    chunk's logits from the saved logsumexp (a fourth product). Forward-mode and
    higher-order derivatives work too, without the memory savings beyond first order.

    Memory: one [chunk, V] float32 block (the gradient is written over the logits; two
    with label smoothing), two [D, block] blocks of about 4 MiB on the CPU for the
    in-place update of the weight gradient, and [N]-sized per-token vectors, instead of
    the two [N, V] arrays of the naive computation; apart from the per-token vectors,
    constant in N. The default chunk depends on the backend. On the CPU a [chunk, V]
    float32 block is about 16 MiB (at least 64 tokens): 128 tokens for V = 32768. On a
    GPU or TPU it is about 512 MiB (at least 1024 tokens: 4096 for V = 32768, 1024 for
    V = 131072) and the weight gradient is updated whole, since small chunks there
    re-read the weight for too little work. Measured speed and memory against the naive
    computation, on the CPU and on a GPU, are in ``docs/benchmarks.md``. Pass
    ``chunk_size`` to trade memory for speed. ``reduction="none"`` also needs a [D, V]
    temporary in its backward pass.

    No ``class_weights``: ``weights=class_weights[labels]`` weights each token by its
    label's class weight, which is PyTorch's class weighting without label smoothing
    (PyTorch also weights the smoothing term of class c by w[c]: use
    `softmax_cross_entropy` on materialized logits, or `vocab_parallel_cross_entropy`).

    When to use it: language-model heads and any classifier whose N×V logits are large
    next to the rest of the activations. For small vocabularies `softmax_cross_entropy`
    on materialized logits is as good. With the vocabulary sharded over devices use
    `vocab_parallel_fused_linear_cross_entropy`.

    bf16/f16 inputs enter the products in their own dtype with float32 accumulation
    (products of bf16 numbers are exact in float32), so the loss is the float32 loss of
    the rounded inputs; the softmax gradient is rounded to the weight's dtype before its
    two products, as in the naive low-precision backward pass (gradients within about 1e-2
    relative of float32 for bf16).

    Float32 products run at JAX's default matmul precision, as in ``hidden @ weight``:
    on NVIDIA GPUs that is TF32, whose 10-bit mantissa puts fused and naive gradients
    about 1e-3 apart (their sums are ordered differently); under
    ``jax.default_matmul_precision("highest")`` they agree within the tests' 1e-5.

    Sharding: inside ``shard_map`` with the tokens split over a mesh axis, pass it as
    ``batch_axis_name`` to make "sum" and "mean" global. Under plain ``jit``, inputs
    sharded over explicit mesh axes (sharding in types) are handled the same way
    automatically: each device loops over its own tokens, with ``weight`` replicated.

    Args:
      hidden: h, floating array [..., D] (e.g. [N, D] or [batch, seq, D]).
      weight: W, floating [D, V] (``weight_layout="dense"``, the Flax ``Dense`` kernel) or
        [V, D] (``weight_layout="embedding"``, a tied input-embedding table).
      labels: integer class ids in [0, V), of ``hidden``'s shape without D, of any integer
        dtype (range-checked in that dtype, then int32: uint8 ids with V = 260 are read
        correctly). A kept label outside [0, V) gives NaN, also one ≥ 2³². Concrete (not
        traced) negative ids other than ``ignore_index`` raise, as in
        `softmax_cross_entropy`.
      bias: optional b, floating [V].
      weight_layout: ``"dense"`` or ``"embedding"``, the layout of ``weight``.
      chunk_size: tokens per chunk (a Python int); default as above. Larger chunks update
        the weight gradient less often (faster) and take more memory.
      ignore_index: optional class id (e.g. −100) whose tokens are dropped, exactly as
        ``where=False``.
      where: optional boolean mask broadcastable to ``labels``; True keeps a token. A
        dropped token's row of ``hidden`` gets exactly zero gradient, even if NaN.
      weights: optional non-negative per-token weights broadcastable to ``labels``.
      label_smoothing: ε ∈ [0, 1] (a Python number), the uniform mass in the target,
        spread over the K classes with a finite logit.
      z_loss: λ ≥ 0 (a Python number), the coefficient of the squared logsumexp.
      logit_soft_cap: optional cap > 0 (a Python number): the logits become
        cap·tanh(z/cap), Gemma 2's final-logit soft-capping.
      batch_axis_name: inside ``shard_map``, the mesh axis (or axes) the tokens are
        sharded over; "sum" and "mean" then reduce over all of them.
      reduction: ``"mean"`` (default, Σ w·ℓ / Σ w over kept tokens), ``"sum"`` or
        ``"none"``. The one exception to jaxloss's per-element default, on purpose: this
        loss exists to train a language-model head on the mean over tokens, and only
        ``"sum"``/``"mean"`` get the one-pass gradient (``"none"`` recomputes every chunk's
        logits in the backward pass, a fourth matrix product); the fused losses of
        Liger Kernel and Cut Cross-Entropy default to the mean too. A NaN weight or a kept
        out-of-range label makes ``"mean"`` NaN; a mean over no kept token is 0.

    Returns:
      A scalar for ``"sum"``/``"mean"``, else ``labels``' shape; float32, or float64 for
      float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> labels = jnp.array([0, 1, 2])
      >>> jaxloss.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=2)
      Array(1.03804, dtype=float32)
      >>> logits = hidden @ weight
      >>> jaxloss.softmax_cross_entropy(logits, labels, reduction="mean")
      Array(1.03804, dtype=float32)
      >>> jax.grad(jaxloss.fused_linear_cross_entropy, argnums=1)(hidden, weight, labels).shape
      (2, 3)

    References:
      Wijmans et al., "Cut your losses in large-vocabulary language models" (2024), and
      Hsu et al., "Liger Kernel: efficient Triton kernels for LLM training" (2024), for
      the chunked linear cross-entropy; Chowdhery et al., "PaLM" (2022), §5, for the
      z-loss; Gemma Team, "Gemma 2" (2024), for logit soft-capping.
    """
    C.check_batch_axis_name("fused_linear_cross_entropy", batch_axis_name)
    options: dict[str, Any] = dict(
        weight_layout=weight_layout,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_soft_cap=logit_soft_cap,
        reduction=reduction,
    )
    mesh = E.explicit_mesh(hidden, weight, bias, labels, where, weights)
    if mesh is not None and batch_axis_name is None:
        return E.per_device(
            fused_linear_cross_entropy,
            mesh,
            hidden,
            shared={"weight": weight, "bias": bias},
            tokens={"labels": labels, "where": where, "weights": weights},
            options=options,
            per_token=reduction == "none",
        )
    cfg, h, w, b, xs, keep, weights, batch = prepare(
        hidden, weight, labels, bias=bias, where=where, weights=weights, **options
    )
    return E.reduce(cfg, h, w, b, xs, keep, weights, batch, reduction, batch_axis_name)
