"""Softmax cross-entropy of a linear layer's output, without materializing the logits.

A language-model head computes logits z = h·W (+ b) for N tokens over a vocabulary of V
classes; the [N, V] logits and their gradient dominate the memory of training. Here the
tokens are processed a chunk at a time inside a loop, so only a [chunk, V] block of
logits ever exists, and, for a ``"sum"`` or ``"mean"`` reduction, the gradients with
respect to h, W and b are computed in the same pass as the loss (the backward pass then
only scales them). That takes the three matrix products of the ordinary forward and
backward pass and nothing more.

The machinery also serves the vocabulary-parallel form (`_parallel.py`): with
``axis_name`` set, W holds one shard of the vocabulary and the three per-token
reductions over the vocabulary (max, sum of exponentials, target logit) are completed
across shards with collectives.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Hashable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from jaxloss import _conventions as C
from jaxloss._classification import _class_ids, class_id_cross_entropy

ArrayLike = C.ArrayLike

LAYOUTS = ("dense", "embedding")

# Default chunk: about this many bytes for one [chunk, V] float32 block of logits, and
# at least _MIN_CHUNK tokens, since the weight gradient is updated once per chunk (a
# read and a write of [D, V]) and small chunks make that traffic dominate.
_CHUNK_BYTES = 16 * 2**20
_MIN_CHUNK = 64
# The weight gradient is updated a block of vocabulary entries at a time, so that its
# temporary is a [D, block] array of about this size rather than a second [D, V] array.
_BLOCK_BYTES = 8 * 2**20
# On a GPU or TPU the CPU's cache-sized chunks leave the matrix units idle: every chunk
# re-reads the [D, V] weight and launches its own kernels. Measured on an H100
# (benchmarks/results/large_vocab_gpu.md): 64-token chunks made N = 16384, D = 2048,
# V = 131072 8.6x slower than the naive computation; 1024-token chunks with the weight
# gradient updated whole ran at 1.05-1.10x (float32) and 0.69-0.70x (bf16) of its time
# (two runs), with 1/16 and 1/12 of its temp memory.
_ACCELERATOR_CHUNK_BYTES = 512 * 2**20
_ACCELERATOR_MIN_CHUNK = 1024


def _on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


@dataclasses.dataclass(frozen=True)
class Config:
    """The static (trace-time) description of one chunked cross-entropy computation."""

    layout: str  # "dense": weight [D, V] (Flax Dense kernel); "embedding": weight [V, D]
    chunk: int  # tokens per chunk
    block: int  # vocabulary entries per weight-gradient update
    n_classes: int  # the whole vocabulary, summed over shards
    label_smoothing: float
    z_loss: float
    soft_cap: float | None
    dtype: Any  # the compute dtype (float32, or float64)
    axis_name: Any = None  # the mesh axis the vocabulary is sharded over, if any


# --------------------------------------------------------------------------------------
# One chunk of tokens
# --------------------------------------------------------------------------------------


def _psum(cfg: Config, x: jax.Array) -> jax.Array:
    return x if cfg.axis_name is None else lax.psum(x, cfg.axis_name)


def _pmax(cfg: Config, x: jax.Array) -> jax.Array:
    return x if cfg.axis_name is None else lax.pmax(x, cfg.axis_name)


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int], dtype: Any) -> jax.Array:
    return lax.dot_general(
        a, b, ((contract[:1], contract[1:]), ((), ())), preferred_element_type=dtype
    )


def _project(cfg: Config, h: jax.Array, w: jax.Array) -> jax.Array:
    """h·W [n, V] in the compute dtype, for either weight layout."""
    return _dot(h, w, (1, 0) if cfg.layout == "dense" else (1, 1), cfg.dtype)


def _logits(cfg: Config, h: jax.Array, w: jax.Array, b: jax.Array | None):
    """(z, tanh(z/cap) or None): the chunk's logits [n, V], soft-capped if asked."""
    z = _project(cfg, h, w)
    if b is not None:
        z = z + b.astype(cfg.dtype)
    if cfg.soft_cap is None:
        return z, None
    t = jnp.tanh(z / cfg.soft_cap)
    return cfg.soft_cap * t, t


def _targets(cfg: Config, labels: jax.Array, v_local: int):
    """(index into this shard, whether the label lives on it, whether it is a valid class)."""
    offset = 0 if cfg.axis_name is None else lax.axis_index(cfg.axis_name) * v_local
    local = labels - offset
    here = (local >= 0) & (local < v_local)
    valid = (labels >= 0) & (labels < cfg.n_classes)
    return jnp.clip(local, 0, v_local - 1), here, valid


def _finite_classes(cfg: Config, b: jax.Array | None):
    """(mask [V] of the classes with a finite logit or None for all, their global count K).

    Only a −inf bias entry makes a logit −inf (h·W is finite, and a soft cap maps −inf
    to −cap), so the support of label smoothing is read off the bias once, not per token.
    """
    if b is None or cfg.soft_cap is not None or not cfg.label_smoothing:
        return None, cfg.n_classes
    finite = b != -jnp.inf
    return finite, _psum(cfg, jnp.sum(finite).astype(cfg.dtype))


def _token_losses(cfg: Config, z: jax.Array, labels: jax.Array, b: jax.Array | None = None):
    """(lse, loss, on) per token of a chunk of logits.

    ℓ = (1 − ε)·min(lse − z_y, MAX) + ε·(lse − (1/K)·Σ_{c: z_c > −∞} z_c) + λ·lse², and
    NaN for a label outside [0, C); K counts the classes with a finite logit (as
    `softmax_cross_entropy`), and MAX is the largest float, the cap that a label on a
    −inf class hits (``on`` is False there: that term then has zero gradient). The max
    is only a shift for stability (lse does not depend on it), so it is taken without
    gradient.
    """
    local, here, valid = _targets(cfg, labels, z.shape[1])
    m = _pmax(cfg, lax.stop_gradient(jnp.max(z, axis=1)))
    lse = m + jnp.log(_psum(cfg, jnp.sum(jnp.exp(z - m[:, None]), axis=1)))
    picked = jnp.take_along_axis(z, local[:, None], axis=1)[:, 0]
    z_y = _psum(cfg, jnp.where(here, picked, 0.0))
    on = ~(lse - z_y > jnp.finfo(cfg.dtype).max)  # False only for a label on a −inf class
    stats = {}
    if cfg.label_smoothing:
        finite, count = _finite_classes(cfg, b)
        total = jnp.sum(z if finite is None else jnp.where(finite, z, 0.0), axis=1)
        stats = {"smooth_count": count, "smooth_logit_sum": _psum(cfg, total)}
    # The per-example formula every class-id cross-entropy shares (PyTorch's convention).
    loss = class_id_cross_entropy(lse, z_y, label_smoothing=cfg.label_smoothing, **stats)
    if cfg.z_loss:
        loss = loss + cfg.z_loss * jnp.square(lse)
    return lse, jnp.where(valid, loss, jnp.nan), on


def _dlogits(cfg: Config, z, t, lse, labels, on, b=None):
    """(∂ℓ/∂z per token, unscaled, and a per-token factor to scale it by).

    ∂ℓ/∂z = softmax·((1 − ε)·on + ε + 2λ·lse) − (1 − ε)·on·onehot(y) − ε·finite/K, times
    the cap's 1 − t². The factor is NaN for an invalid label (its loss is NaN, so is its
    gradient); without smoothing it also carries ``on`` (the whole gradient of a token
    whose label is on a −inf class is then 0), which spares a [chunk, V] product.
    """
    local, here, valid = _targets(cfg, labels, z.shape[1])
    eps = cfg.label_smoothing
    row = jnp.where(valid, 1.0, jnp.nan).astype(cfg.dtype)
    p = jnp.exp(z - lse[:, None])
    if eps:
        a = jnp.where(on, 1.0 - eps, 0.0).astype(cfg.dtype)  # the weight of −log p_y
        coef = a + eps
    else:
        a, coef = 1.0, None
        row = jnp.where(on, row, 0.0)
    if cfg.z_loss:
        coef = (1.0 if coef is None else coef) + 2.0 * cfg.z_loss * lse
    if coef is not None:
        p = p * coef[:, None]
    if eps:
        finite, count = _finite_classes(cfg, b)
        p = p - (eps / count if finite is None else jnp.where(finite, eps / count, 0.0))
    rows = jnp.arange(z.shape[0])
    g = p.at[rows, local].add(jnp.where(here, -a, 0.0))
    if t is not None:
        g = g * (1.0 - jnp.square(t))
    return g, row


def _add_weight_grad(cfg: Config, gw: jax.Array, hs: jax.Array, g: jax.Array) -> jax.Array:
    """gw + hsᵀ·g ([D, V]; gᵀ·hs for the [V, D] layout), a vocabulary block at a time.

    Adding one [D, V] product to the accumulator would need a second [D, V] temporary;
    updating it in place block by block needs only a [D, block] one.
    """
    axis = 1 if cfg.layout == "dense" else 0

    def update(gw, start, g_blk):
        if cfg.layout == "dense":
            blk = _dot(hs, g_blk, (0, 0), cfg.dtype)
        else:
            blk = _dot(g_blk, hs, (0, 0), cfg.dtype)
        old = lax.dynamic_slice_in_dim(gw, start, g_blk.shape[1], axis)
        return lax.dynamic_update_slice_in_dim(gw, old + blk, start, axis)

    def body(gw, start, fresh):
        g_blk = lax.dynamic_slice_in_dim(g, start, cfg.block, 1)
        if fresh is not None:  # columns an earlier block already added
            g_blk = jnp.where(fresh, g_blk, 0)
        return update(gw, start, g_blk)

    return _over_blocks(g.shape[1], cfg.block, body, gw)


# --------------------------------------------------------------------------------------
# Loops over chunks of tokens
# --------------------------------------------------------------------------------------


def _over_blocks(n: int, size: int, body, carry):
    """``carry = body(carry, start, fresh)`` over blocks of ``size`` covering [0, n).

    When ``size`` does not divide ``n`` the last block is shifted back to end at n, so
    one body of one shape serves every block (a ragged tail would need a second copy);
    ``fresh`` [size] then marks the entries of a block that no earlier block covered,
    for the body to leave the others out of its sums. It is None when all are fresh.
    """
    if n == 0:
        return carry
    count = -(-n // size)
    if count == 1:
        return body(carry, 0, None)
    ragged = n % size != 0

    def step(i, carry):
        nominal = i * size
        if not ragged:
            return body(carry, nominal, None)
        start = jnp.minimum(nominal, n - size)
        return body(carry, start, start + jnp.arange(size) >= nominal)

    return lax.fori_loop(0, count, step, carry)


def _over_chunks(n: int, chunk: int, step, carry, xs: tuple[jax.Array, ...]):
    """``carry = step(carry, start, fresh, slices)`` over the token chunks."""

    def body(carry, start, fresh):
        return step(carry, start, fresh, [lax.dynamic_slice_in_dim(x, start, chunk) for x in xs])

    return _over_blocks(n, chunk, body, carry)


def _zeros(shape, dtype, *like) -> jax.Array:
    """Zeros that vary over the mesh axes of every array in ``like``.

    Inside ``shard_map`` a loop carry must keep its type, including the mesh axes it
    varies over; outside, this is just ``jnp.zeros``.
    """
    parts = [jnp.zeros_like(x, dtype=dtype, shape=shape) for x in like if x is not None]
    return sum(parts[1:], parts[0]) if parts else jnp.zeros(shape, dtype)


def _token_zeros(cfg: Config, shape, h, w, b, labels) -> jax.Array:
    """Zeros of a per-token result's type: it varies with the tokens, and with the weight
    shards only before the sum over the vocabulary axis."""
    out = _zeros(shape, cfg.dtype, h, labels)
    if cfg.axis_name is not None:
        out = out + lax.psum(_zeros((), cfg.dtype, w, b), cfg.axis_name)
    return out


def _put(buf: jax.Array, value: jax.Array, start) -> jax.Array:
    return lax.dynamic_update_slice_in_dim(buf, value.astype(buf.dtype), start, 0)


def _losses(cfg: Config, h, w, b, labels):
    """(loss, lse, on) of every token, [N] each; only a [chunk, V] block exists at a time."""

    def step(carry, start, fresh, xs):
        loss, lse, on = carry
        h_c, y_c = xs
        lse_c, loss_c, on_c = _token_losses(cfg, _logits(cfg, h_c, w, b)[0], y_c, b)
        return _put(loss, loss_c, start), _put(lse, lse_c, start), _put(on, on_c, start)

    n = h.shape[0]
    zeros = _token_zeros(cfg, (n,), h, w, b, labels)
    init = (zeros, zeros, zeros.astype(bool))
    return _over_chunks(n, cfg.chunk, step, init, (h, labels))


def _loss_and_grads(cfg: Config, h, w, b, labels, scale, need: tuple[bool, bool, bool]):
    """Per-token losses and the gradients of Σ_i scale_i·ℓ_i, all in one pass.

    Returns (loss [N], ∂/∂h [N, D] or None, ∂/∂W or None, ∂/∂b or None), in the compute
    dtype. The gradient products take ∂ℓ/∂z in the matmul dtype and accumulate in the
    compute dtype; the token weights scale the rows of h (not ∂ℓ/∂z, whose entries
    are as small as 1/V and would underflow in float16 once scaled).
    """
    need_h, need_w, need_b = need
    n, d = h.shape
    v = w.shape[1] if cfg.layout == "dense" else w.shape[0]

    def step(carry, start, fresh, xs):
        loss, gh, gw, gb = carry
        h_c, y_c, s_c = xs
        z, t = _logits(cfg, h_c, w, b)
        lse_c, loss_c, on_c = _token_losses(cfg, z, y_c, b)
        g, row = _dlogits(cfg, z, t, lse_c, y_c, on_c, b)
        r = s_c * row
        # Rows of a shifted last chunk seen before are rewritten with the same values in
        # the per-token outputs, but must not be added to the sums again.
        r_sum = r if fresh is None else jnp.where(fresh, r, 0.0)
        gm = g.astype(w.dtype)
        if need_h:
            part = _dot(gm, w, (1, 1) if cfg.layout == "dense" else (1, 0), cfg.dtype)
            gh = _put(gh, r[:, None] * part, start)
        if need_w:
            hs = (r_sum[:, None] * h_c.astype(cfg.dtype)).astype(w.dtype)
            gw = _add_weight_grad(cfg, gw, hs, gm)
        if need_b:
            gb = gb + r_sum @ g
        return _put(loss, loss_c, start), gh, gw, gb

    everything = (h, w, b, labels, scale)
    init = (
        _token_zeros(cfg, (n,), h, w, b, labels),
        _zeros((n, d), cfg.dtype, *everything) if need_h else None,
        _zeros(w.shape, cfg.dtype, *everything) if need_w else None,
        _zeros((v,), cfg.dtype, *everything) if need_b else None,
    )
    return _over_chunks(n, cfg.chunk, step, init, (h, labels, scale))


# --------------------------------------------------------------------------------------
# The differentiable cores
# --------------------------------------------------------------------------------------


def _zero(t) -> bool:
    return t is None or isinstance(t, SymbolicZero)


def _vdot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(a * b.astype(a.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def weighted_sum(cfg: Config, h, w, b, labels, scale):
    """Σ_i scale_i·ℓ_i: the "sum" and "mean" reductions (``scale`` holds w_i or w_i/Σw)."""
    return jnp.sum(scale * _losses(cfg, h, w, b, labels)[0])


def _weighted_sum_jvp(cfg: Config, primals, tangents):
    # The tangent map is ⟨∇h, dh⟩ + ⟨∇W, dW⟩ + ⟨∇b, db⟩ + ⟨ℓ, d scale⟩ with the gradients
    # computed here, in the forward pass; reverse mode transposes it into a product with
    # the output cotangent, so the backward pass does no further work on the logits.
    h, w, b, labels, scale = primals
    dh, dw, db, _, dscale = tangents
    need = (not _zero(dh), not _zero(dw), b is not None and not _zero(db))
    loss, gh, gw, gb = _loss_and_grads(cfg, h, w, b, labels, scale, need)
    out = jnp.sum(scale * loss)
    parts = [_vdot(g, d) for g, d in zip((gh, gw, gb), (dh, dw, db), strict=True) if g is not None]
    # A sum of arrays is an array (`sum` starts at the int 0, which typeshed keeps).
    tangent = _psum(cfg, cast(jax.Array, sum(parts))) if parts else jnp.zeros_like(out)
    if not _zero(dscale):
        tangent = tangent + _vdot(loss, dscale)
    return out, tangent


weighted_sum.defjvp(_weighted_sum_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def per_token(cfg: Config, h, w, b, labels):
    """ℓ_i for every token, [N]: the ``"none"`` reduction."""
    return _losses(cfg, h, w, b, labels)[0]


def _per_token_jvp(cfg: Config, primals, tangents):
    # The per-token cotangent is only known in the backward pass, so the gradient cannot
    # be formed here: the tangent map recomputes each chunk's logits (from the saved
    # logsumexp) under jax.checkpoint, so that its transpose, too, holds only one
    # [chunk, V] block at a time instead of saving every chunk's softmax.
    h, w, b, labels = primals
    dh, dw, db, _ = tangents
    loss, lse, on = _losses(cfg, h, w, b, labels)
    dh, dw, db = (None if _zero(t) else t for t in (dh, dw, db))
    if dh is None and dw is None and db is None:
        return loss, jnp.zeros_like(loss)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def piece(h_c, y_c, lse_c, on_c, real_c, dh_c, w, b, dw, db):
        z, t = _logits(cfg, h_c, w, b)
        g, row = _dlogits(cfg, z, t, lse_c, y_c, on_c, b)
        if real_c is not None:
            # Padding rows (h = 0, lse = 0) would give exp(b) = inf for a bias entry above
            # log(MAX) ≈ 88.7 in float32, and 0·inf = NaN in the transposed products.
            g = jnp.where(real_c[:, None], g, 0.0)
        dz = jnp.zeros((), cfg.dtype)
        if dh_c is not None:
            dz = dz + _project(cfg, dh_c, w)
        if dw is not None:
            dz = dz + _project(cfg, h_c, dw)
        if db is not None:
            dz = dz + db.astype(cfg.dtype)
        return _psum(cfg, jnp.sum(g * dz, axis=1)) * row

    n, chunk = h.shape[0], cfg.chunk
    if n <= chunk:
        return loss, piece(h, labels, lse, on, None, dh, w, b, dw, db)
    count = -(-n // chunk)

    def stack(x):
        # Scanned inputs, so that the transposed loop, too, reads and writes one chunk
        # of them per step; a ragged end is padded with harmless zeros and cut off.
        if x is None:
            return None
        x = jnp.pad(x, [(0, count * chunk - n)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((count, chunk) + x.shape[1:])

    def body(_, xs):
        return None, piece(*xs, w, b, dw, db)

    real = None if n % chunk == 0 else jnp.ones(n, bool)
    xs = tuple(stack(x) for x in (h, labels, lse, on, real, dh))
    tangent = lax.scan(body, None, xs)[1]
    return loss, tangent.reshape(count * chunk)[:n]


per_token.defjvp(_per_token_jvp, symbolic_zeros=True)

# Called eagerly, the chunk loops would be traced and compiled on every call; jitted,
# they are compiled once per configuration and shape (and inlined under an outer jit).
_weighted_sum_jit = jax.jit(weighted_sum, static_argnums=0)
_per_token_jit = jax.jit(per_token, static_argnums=0)


# --------------------------------------------------------------------------------------
# Input handling shared by the fused losses
# --------------------------------------------------------------------------------------


def _python_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a Python number (it is fixed at trace time), got {value!r}."
        )
    return float(value)


def default_chunk(n_tokens: int, v_local: int) -> int:
    """Tokens per chunk: a power of two, a [chunk, V] float32 block of about 16 MiB and at
    least 64 tokens on the CPU; about 512 MiB and at least 1024 tokens on a GPU or TPU."""
    if _on_accelerator():
        budget, least = _ACCELERATOR_CHUNK_BYTES, _ACCELERATOR_MIN_CHUNK
    else:
        budget, least = _CHUNK_BYTES, _MIN_CHUNK
    chunk = max(least, budget // (4 * max(v_local, 1)))
    chunk = 1 << (chunk.bit_length() - 1)  # a power of two
    return max(1, min(chunk, n_tokens))


def _default_block(d: int, v_local: int) -> int:
    """Vocabulary entries per weight-gradient update: all of them on a GPU or TPU."""
    if _on_accelerator():
        return max(1, v_local)
    block = max(8, _BLOCK_BYTES // (4 * max(d, 1)))
    return max(1, min(1 << (block.bit_length() - 1), v_local))


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
    """Validate and flatten the inputs; returns (cfg, h, w, b, labels, keep, weights, batch)."""
    hidden = C.as_float("hidden", hidden)
    weight = C.as_float("weight", weight)
    bias = None if bias is None else C.as_float("bias", bias)
    C.check_ignore_index(ignore_index)
    labels = C.as_labels("labels", labels)
    if weight_layout not in LAYOUTS:
        raise ValueError(
            f"`weight_layout` must be one of {LAYOUTS}, got {weight_layout!r}: 'dense' for a "
            "[D, V] kernel (Flax Dense), 'embedding' for a [V, D] table (tied embeddings)."
        )
    if hidden.ndim < 1:
        raise ValueError("`hidden` must have a feature axis (its last), got a scalar.")
    d, batch = hidden.shape[-1], hidden.shape[:-1]
    if weight.ndim != 2:
        raise ValueError(f"`weight` must be a matrix, got shape {weight.shape}.")
    d_w, v = weight.shape if weight_layout == "dense" else weight.shape[::-1]
    if d_w != d:
        expected = "[D, V]" if weight_layout == "dense" else "[V, D]"
        raise ValueError(
            f"`weight` of shape {weight.shape} does not match `hidden` of shape {hidden.shape}: "
            f"with weight_layout={weight_layout!r} it must be {expected} with D = {d}."
        )
    if labels.shape != batch:
        raise ValueError(
            f"`labels` of shape {labels.shape} must have the shape of `hidden` without its "
            f"feature axis, {batch}."
        )
    if bias is not None and bias.shape != (v,):
        raise ValueError(f"`bias` must have shape ({v},), one entry per class, got {bias.shape}.")
    where, weights = C.prepare(batch, where, weights, reduction)
    C.check_class_ids(labels, ignore_index, where)
    eps = _python_number("label_smoothing", label_smoothing)
    C.check_in_range("label_smoothing", eps, 0.0, 1.0)
    lam = _python_number("z_loss", z_loss)
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"`z_loss` must be a non-negative finite number, got {z_loss!r}.")
    cap = None
    if logit_soft_cap is not None:
        cap = _python_number("logit_soft_cap", logit_soft_cap)
        C.check_positive("logit_soft_cap", cap)
    n = int(np.prod(batch, dtype=np.int64))
    if chunk_size is None:
        chunk = default_chunk(n, v)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    else:
        chunk = min(int(chunk_size), max(n, 1))

    dtype = C.compute_dtype(*(x for x in (hidden, weight, bias) if x is not None))
    mm = jnp.promote_types(hidden.dtype, weight.dtype)
    cfg = Config(
        layout=weight_layout,
        chunk=chunk,
        block=_default_block(d, v),
        n_classes=v * n_shards,
        label_smoothing=eps,
        z_loss=lam,
        soft_cap=cap,
        dtype=np.dtype(dtype),
        axis_name=axis_name,
    )
    ignored = C.is_ignored(labels, ignore_index)
    # int32 ids, −1 for any id outside [0, V) (tested in the labels' own dtype: a uint8 id
    # cannot wrap the bound 260, nor an int64 id ≥ 2³² land in range).
    labels = _class_ids(labels, cfg.n_classes)
    keep = where
    if ignored is not None:
        keep = ~ignored if keep is None else keep & ~ignored
    if keep is not None:
        keep = jnp.broadcast_to(keep, batch)
        labels = jnp.where(keep, labels, 0)  # a safe index; the token is dropped anyway
        hidden = C.keep(keep[..., None], hidden, 0.0)
    h = hidden.astype(mm).reshape(n, d)
    return cfg, h, weight.astype(mm), bias, labels.reshape(n), keep, weights, batch


def reduce(cfg, h, w, b, labels, keep, weights, batch, reduction, batch_axis_name=None):
    """The loss with the conventions' reduction; "sum"/"mean" take the one-pass gradient."""
    if reduction == "none":
        loss = _per_token_jit(cfg, h, w, b, labels).reshape(batch)
        return C.reduce(loss, where=keep, weights=weights, reduction="none")
    w_tok = jnp.ones(batch, cfg.dtype)
    if weights is not None:
        w_tok = jnp.broadcast_to(weights, batch).astype(cfg.dtype)
    if keep is not None:
        w_tok = jnp.where(keep, w_tok, 0.0)
    scale = w_tok
    if reduction == "mean":
        count = jnp.sum(w_tok)
        if batch_axis_name is not None:
            count = lax.psum(count, batch_axis_name)
        # 0 when nothing is kept; a NaN weight (or count) stays NaN, never 0.
        scale = jnp.where(count == 0, 0.0, w_tok / jnp.where(count == 0, 1.0, count))
    total = _weighted_sum_jit(cfg, h, w, b, labels, scale.reshape(-1))
    if batch_axis_name is not None:
        total = lax.psum(total, batch_axis_name)
    return total


def _explicit_mesh(*arrays):
    """The mesh of the first input sharded over explicit mesh axes, or None."""
    for x in arrays:
        sharding = getattr(jax.typeof(x), "sharding", None) if isinstance(x, jax.Array) else None
        spec = getattr(sharding, "spec", None)
        if sharding is not None and spec is not None and any(e is not None for e in spec):
            return sharding.mesh
    return None


def _per_device(mesh, hidden, weight, labels, bias, where, weights, options):
    """The loss of explicitly sharded inputs: data parallel over the token sharding.

    The chunk loops slice the token and vocabulary axes, which explicit sharding does
    not allow along a sharded axis. So the loss runs in ``shard_map``: each device loops
    over its own tokens (``hidden`` keeps the sharding of its token axes), with the
    weight and bias replicated, and sums and means are taken over all devices.
    """
    hidden = jnp.asarray(hidden)
    spec = jax.typeof(hidden).sharding.spec
    tokens = tuple(spec)[: hidden.ndim - 1] if hidden.ndim else ()
    axes = tuple(
        a
        for entry in tokens
        if entry is not None
        for a in (entry if isinstance(entry, tuple) else (entry,))
    )
    token_spec, row_spec = P(*tokens), P(*tokens, None)

    def put(x, spec):
        if x is None:
            return None
        x = jnp.asarray(x)
        if spec is not None and x.ndim != len(spec):
            x = jnp.broadcast_to(x, hidden.shape[:-1])
        return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, spec or P()))

    inputs = {
        "hidden": put(hidden, row_spec),
        "weight": put(weight, None),
        "labels": put(labels, token_spec),
        "bias": put(bias, None),
        "where": put(where, token_spec),
        "weights": put(weights, token_spec),
    }
    inputs = {k: v for k, v in inputs.items() if v is not None}
    specs = {
        k: (
            row_spec
            if k == "hidden"
            else token_spec
            if k in ("labels", "where", "weights")
            else P()
        )
        for k in inputs
    }

    def local(inputs):
        return fused_linear_cross_entropy(**inputs, **options, batch_axis_name=axes or None)

    out = token_spec if options["reduction"] == "none" else P()
    return jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out)(inputs)


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

    Memory: about two [chunk, V] float32 blocks, a [D, block] block for the in-place
    update of the weight gradient, and [N]-sized per-token vectors, instead of the two
    [N, V] arrays of the naive computation; constant in N. The default chunk depends on
    the backend. On the CPU a [chunk, V] float32 block is about 16 MiB (at least 64
    tokens): 128 tokens for V = 32768. On a GPU or TPU it is about 512 MiB (at least 1024
    tokens: 4096 for V = 32768, 1024 for V = 131072) and the weight gradient is updated
    whole, since small chunks there re-read the weight for too little work: on an H100,
    N = 16384, D = 2048, V = 131072 ran 8.6x slower than the naive computation with
    64-token chunks, and at 1.05-1.10x (float32) and 0.69-0.70x (bf16) of its time
    with these defaults (two runs), in 1/16 and 1/12 of its temp memory. Pass
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
        logits in the backward pass and needs a [D, V] temporary); the fused losses of
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
    options: dict[str, Any] = dict(
        weight_layout=weight_layout,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_soft_cap=logit_soft_cap,
        reduction=reduction,
    )
    mesh = _explicit_mesh(hidden, weight, bias, labels, where, weights)
    if mesh is not None and batch_axis_name is None:
        return _per_device(mesh, hidden, weight, labels, bias, where, weights, options)
    cfg, h, w, b, y, keep, weights, batch = prepare(
        hidden, weight, labels, bias=bias, where=where, weights=weights, **options
    )
    return reduce(cfg, h, w, b, y, keep, weights, batch, reduction, batch_axis_name)
