"""The chunked engine: a loss of ``hidden @ weight (+ bias)`` without the [N, V] logits.

A language-model head computes logits z = h·W (+ b) for N tokens over a vocabulary of V
classes; the [N, V] logits and their gradient dominate the memory of training. This
module owns the one loop that avoids them: the tokens are processed a chunk at a time,
so only a [chunk, V] block of logits ever exists. A loss plugs in as a `ChunkLoss`, a
function of one chunk's logits (its per-token value and the values it saves), and of
its gradient with respect to those logits:

- when the loss is a weighted sum over tokens (`weighted_sum`, the ``"sum"`` and
  ``"mean"`` reductions), the gradients with respect to h, W and b are formed in the
  same pass as the loss (the backward pass only scales them): the three matrix products
  of the ordinary forward and backward pass and nothing more;
- otherwise (`per_token`, per-token values whose cotangents arrive only in the backward
  pass) the backward pass recomputes each chunk's logits from what the forward pass
  saved (a fourth product); it, too, updates ∂W in place a block of the vocabulary at
  a time (`_weight_tangent`), so both hold no second [D, V] array;
- when the loss is a sum over groups of tokens whose value is known only at the group's
  end (`grouped_sum`: a preference pair of a chosen and a rejected sequence), the
  gradients are formed in the same pass too, each group's weight gradient accumulated
  in a buffer and scaled once the group ends.

The engine also owns what every such loss shares: the dense [D, V] and embedding [V, D]
layouts, soft-capping and temperature of the logits, bf16/f16 inputs with float32
accumulation, the backend-dependent default chunk size, the vocabulary sharded over a
mesh axis (``axis_name``: the loss completes its reductions over the vocabulary with
`psum`/`pmax`), tokens sharded under ``batch_axis_name``, and inputs sharded over
explicit mesh axes (`explicit_mesh`, `per_device`).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Protocol, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from jaxloss import _compat as compat
from jaxloss import _conventions as C

LAYOUTS = ("dense", "embedding")

# Default chunk: about this many bytes for one [chunk, V] float32 block of logits, and
# at least _MIN_CHUNK tokens, since the weight gradient is updated once per chunk (a
# read and a write of [D, V]) and small chunks make that traffic dominate.
_CHUNK_BYTES = 16 * 2**20
_MIN_CHUNK = 64
# The weight gradient is updated a block of vocabulary entries at a time, so that its
# temporaries are [D, block] arrays of about this size (XLA holds two: the product, and
# a copy of the gradient's block it is added to) rather than a second [D, V] array; a
# quarter of a default [chunk, V] block of logits, the other temporary of a chunk.
_BLOCK_BYTES = 4 * 2**20
# On a GPU or TPU the CPU's cache-sized chunks leave the matrix units idle: every chunk
# re-reads the [D, V] weight and launches its own kernels, so there the chunks are large
# and the weight gradient is updated whole (the timings and memory of both choices are in
# benchmarks/results/large_vocab_gpu.md, quoted in docs/benchmarks.md).
_ACCELERATOR_CHUNK_BYTES = 512 * 2**20
_ACCELERATOR_MIN_CHUNK = 1024


def _on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


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
    """Vocabulary entries per weight-gradient update: a [D, block] float32 array of about
    4 MiB on the CPU; all of them on a GPU or TPU."""
    if _on_accelerator():
        return max(1, v_local)
    block = max(8, _BLOCK_BYTES // (4 * max(d, 1)))
    return max(1, min(1 << (block.bit_length() - 1), v_local))


class ChunkLoss(Protocol):
    """A per-token loss of one chunk's logits z [n, V] (this device's vocabulary shard).

    Implementations are frozen dataclasses (hashable: they are part of the static
    `Config`). ``xs`` is the chunk's slice of the per-token inputs (labels, ...): [n, ...]
    arrays that are constants to the engine (no derivative flows to them). ``consts``
    are whole arrays every chunk reads (a teacher's or a reference model's weight, ...),
    constants to the engine too.
    """

    n_values: int  # per-token values: 1 for a loss, more for `per_token` only

    def dtypes(self, cfg: Config) -> tuple[Any, ...]:
        """The dtypes of the per-token outputs of `forward`: (*values, *saved)."""

    def forward(
        self, cfg: Config, z: jax.Array, xs: tuple, b: jax.Array | None, consts: tuple
    ) -> tuple:
        """(*values [n], *saved [n]): the per-token values, and what `backward` needs."""

    def backward(
        self, cfg: Config, z: jax.Array, saved: tuple, xs: tuple, b: jax.Array | None, consts: tuple
    ) -> tuple:
        """(g [n, V], row [n]) with ∂value/∂z = row[:, None]·g, of the logits z as given
        (after the cap and the temperature); one such pair per value if ``n_values > 1``."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The static (trace-time) description of one chunked computation."""

    layout: str  # "dense": weight [D, V] (Flax Dense kernel); "embedding": weight [V, D]
    chunk: int  # tokens per chunk
    block: int  # vocabulary entries per weight-gradient update
    dtype: Any  # the compute dtype (float32, or float64)
    loss: Any  # the ChunkLoss
    soft_cap: float | None = None  # logits cap·tanh(z/cap)
    temperature: float = 1.0  # logits divided by it (after the cap)
    axis_name: Any = None  # the mesh axis the vocabulary is sharded over, if any


# --------------------------------------------------------------------------------------
# One chunk of tokens
# --------------------------------------------------------------------------------------


def psum(cfg: Config, x: jax.Array) -> jax.Array:
    """Σ over the vocabulary shards (``x`` itself without ``axis_name``)."""
    return x if cfg.axis_name is None else lax.psum(x, cfg.axis_name)


def pmax(cfg: Config, x: jax.Array) -> jax.Array:
    """max over the vocabulary shards (``x`` itself without ``axis_name``)."""
    return x if cfg.axis_name is None else lax.pmax(x, cfg.axis_name)


def shard_offset(cfg: Config, v_local: int):
    """The global id of this shard's first vocabulary entry (0 without ``axis_name``)."""
    return 0 if cfg.axis_name is None else lax.axis_index(cfg.axis_name) * v_local


def log_probs(z: jax.Array, lse: jax.Array) -> jax.Array:
    """log softmax(z) = z − lse from a chunk's logits [n, V] and their saved logsumexp [n],
    at most 0. The logits recomputed in the backward pass can exceed the logsumexp saved
    by the forward pass by a rounding of their own (the matrix product's summation order
    differs between the two passes; at a logit of 5e9 one float32 ulp is 512), and exp of
    that would overflow: log p ≤ 0 holds exactly, so the difference is clamped there."""
    return jnp.minimum(z - lse[:, None], 0.0)


def targets(cfg: Config, labels: jax.Array, v_local: int, n_classes: int):
    """(index into this shard, whether the label lives on it, whether it is in [0, V))."""
    local = labels - shard_offset(cfg, v_local)
    here = (local >= 0) & (local < v_local)
    valid = (labels >= 0) & (labels < n_classes)
    return jnp.clip(local, 0, v_local - 1), here, valid


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int], dtype: Any) -> jax.Array:
    return lax.dot_general(
        a, b, ((contract[:1], contract[1:]), ((), ())), preferred_element_type=dtype
    )


def _project(cfg: Config, h: jax.Array, w: jax.Array) -> jax.Array:
    """h·W [n, V] in the compute dtype, for either weight layout."""
    return _dot(h, w, (1, 0) if cfg.layout == "dense" else (1, 1), cfg.dtype)


def _logits(cfg: Config, h: jax.Array, w: jax.Array, b: jax.Array | None):
    """(z, tanh(z/cap) or None): the chunk's logits [n, V], soft-capped and tempered."""
    z = _project(cfg, h, w)
    if b is not None:
        z = z + b.astype(cfg.dtype)
    t = None
    if cfg.soft_cap is not None:
        t = jnp.tanh(z / cfg.soft_cap)
        z = cfg.soft_cap * t
    if cfg.temperature != 1.0:
        z = z / cfg.temperature
    return z, t


def _n_values(cfg: Config) -> int:
    return cfg.loss.n_values


def _grad_logits(cfg: Config, z, t, saved, xs, b, consts):
    """((∂value/∂(h·W + b) per token, unscaled, the per-token factor to scale it by), ...),
    one pair per value."""
    pairs = cfg.loss.backward(cfg, z, saved, xs, b, consts)
    if _n_values(cfg) == 1:
        pairs = (pairs,)
    out = []
    for g, row in pairs:
        if t is not None:
            g = g * (1.0 - jnp.square(t))
        if cfg.temperature != 1.0:
            g = g / cfg.temperature
        out.append((g, row))
    return tuple(out)


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


def _weight_tangent(cfg: Config, h: jax.Array, dw: jax.Array):
    """(dW, h·dW [n, V]): the product a vocabulary block at a time, dW threaded through.

    Linear in dW, for the tangent map of `per_token`. Its transpose (reverse mode) adds
    hᵀ·(…) to the cotangent of dW a [D, block] slice at a time, in place (XLA turns
    ``ct + dynamic_update_slice(zeros, blk)`` into an update of ``ct``), as
    `_add_weight_grad` does, instead of forming a second [D, V] array; provided that
    cotangent is threaded through the loops: callers return the dW given back here
    and loop over it as a carry, not as a constant.
    """
    axis = 1 if cfg.layout == "dense" else 0
    v = dw.shape[axis]
    zeros = jnp.zeros((h.shape[0], v), cfg.dtype)

    def body(carry, start, fresh):
        dw, z = carry
        blk = _project(cfg, h, lax.dynamic_slice_in_dim(dw, start, cfg.block, axis))
        if fresh is not None:  # columns an earlier block already added
            blk = jnp.where(fresh, blk, 0.0)
        # ``dw + 0``, not ``dw``: `lax.scan` makes a carry it returns unchanged a constant
        # of the loop, whose cotangent the transposed loop would sum from zeros (a second
        # [D, V] array). The block is added to z (XLA updates z in place), not written
        # over it: the transposed loop then only reads z's cotangent, a block at a time,
        # where the transpose of a write would clear that block of it (copies of [n, V]).
        return dw + 0, z + lax.dynamic_update_slice_in_dim(zeros, blk, start, 1)

    return _over_blocks(v, cfg.block, body, (dw, zeros))


def in_place(cfg: Config, z: jax.Array, fn) -> jax.Array:
    """fn(z) for an elementwise ``fn`` of a chunk's logits z [n, V], written over z a
    vocabulary block at a time: XLA updates z in place, where ``fn(z)`` whole would be a
    second [n, V] array beside it. Provided z is not read after, and ``fn`` depends on
    every other value read from z (else XLA copies z first, to keep it for those reads).
    """

    def body(z, start, fresh):
        blk = lax.dynamic_slice_in_dim(z, start, cfg.block, 1)
        new = fn(blk)
        if fresh is not None:  # entries an earlier block already mapped
            new = jnp.where(fresh, new, blk)
        return lax.dynamic_update_slice_in_dim(z, new.astype(z.dtype), start, 1)

    return _over_blocks(z.shape[1], cfg.block, body, z)


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


def _token_zeros(cfg: Config, shape, h, w, b, xs) -> jax.Array:
    """Zeros of a per-token result's type: it varies with the tokens, and with the weight
    shards only before the sum over the vocabulary axis."""
    out = _zeros(shape, cfg.dtype, h, *xs)
    if cfg.axis_name is not None:
        out = out + lax.psum(_zeros((), cfg.dtype, w, b), cfg.axis_name)
    return out


def _put(buf: jax.Array, value: jax.Array, start) -> jax.Array:
    return lax.dynamic_update_slice_in_dim(buf, value.astype(buf.dtype), start, 0)


def _forward(cfg: Config, h, w, b, xs, consts):
    """The loss's (value, *saved) of every token, [N] each; one [chunk, V] block at a time."""

    def step(carry, start, fresh, slices):
        h_c, *xs_c = slices
        out = cfg.loss.forward(cfg, _logits(cfg, h_c, w, b)[0], tuple(xs_c), b, consts)
        return tuple(_put(buf, o, start) for buf, o in zip(carry, out, strict=True))

    n = h.shape[0]
    zeros = _token_zeros(cfg, (n,), h, w, b, xs)
    init = tuple(zeros.astype(dtype) for dtype in cfg.loss.dtypes(cfg))
    return _over_chunks(n, cfg.chunk, step, init, (h, *xs))


def _add_chunk_grads(cfg: Config, need, grads, h_c, w, g, row_h, row_w, start, fresh):
    """One chunk's part of (∂/∂h, ∂/∂W, ∂/∂b), those in ``need``, from g = ∂value/∂z.

    The rows row_h[:, None]·g·Wᵀ of ∂/∂h are put at ``start``; hᵀ·(row_w[:, None]·g) and
    row_wᵀ·g are added to ∂/∂W and ∂/∂b, without the rows of a shifted last chunk that an
    earlier chunk already added (``fresh`` False): the per-token outputs rewrite those
    with the same values, but the sums must not count them twice.
    """
    need_h, need_w, need_b = need
    gh, gw, gb = grads
    r_sum = row_w if fresh is None else jnp.where(fresh, row_w, 0.0)
    gm = g.astype(w.dtype)
    if need_h:
        part = _dot(gm, w, (1, 1) if cfg.layout == "dense" else (1, 0), cfg.dtype)
        gh = _put(gh, row_h[:, None] * part, start)
    if need_w:
        hs = (r_sum[:, None] * h_c.astype(cfg.dtype)).astype(w.dtype)
        gw = _add_weight_grad(cfg, gw, hs, gm)
    if need_b:
        gb = gb + r_sum @ g
    return gh, gw, gb


def _forward_and_grads(cfg: Config, h, w, b, xs, consts, scale, need: tuple[bool, bool, bool]):
    """Per-token values and the gradients of Σ_i scale_i·value_i, all in one pass.

    Returns (value [N], ∂/∂h [N, D] or None, ∂/∂W or None, ∂/∂b or None), in the compute
    dtype. The gradient products take ∂value/∂z in the matmul dtype and accumulate in the
    compute dtype; the token weights scale the rows of h (not ∂value/∂z, whose entries
    are as small as 1/V and would underflow in float16 once scaled).
    """
    need_h, need_w, need_b = need
    n, d = h.shape
    v = w.shape[1] if cfg.layout == "dense" else w.shape[0]

    def step(carry, start, fresh, slices):
        value, gh, gw, gb = carry
        h_c, *xs_c, s_c = slices
        xs_c = tuple(xs_c)
        z, t = _logits(cfg, h_c, w, b)
        value_c, *saved_c = cfg.loss.forward(cfg, z, xs_c, b, consts)
        ((g, row),) = _grad_logits(cfg, z, t, tuple(saved_c), xs_c, b, consts)
        r = s_c * row
        gh, gw, gb = _add_chunk_grads(cfg, need, (gh, gw, gb), h_c, w, g, r, r, start, fresh)
        return _put(value, value_c, start), gh, gw, gb

    everything = (h, w, b, *xs, scale)
    init = (
        _token_zeros(cfg, (n,), h, w, b, xs),
        _zeros((n, d), cfg.dtype, *everything) if need_h else None,
        _zeros(w.shape, cfg.dtype, *everything) if need_w else None,
        _zeros((v,), cfg.dtype, *everything) if need_b else None,
    )
    return _over_chunks(n, cfg.chunk, step, init, (h, *xs, scale))


# --------------------------------------------------------------------------------------
# The differentiable cores
# --------------------------------------------------------------------------------------


def _zero(t) -> bool:
    return t is None or isinstance(t, SymbolicZero)


def _vdot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(a * b.astype(a.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def weighted_sum(cfg: Config, h, w, b, xs, scale, consts=()):
    """Σ_i scale_i·value_i over the tokens (``scale`` [N] holds e.g. w_i or w_i/Σw)."""
    if _n_values(cfg) != 1:
        raise ValueError("weighted_sum needs a loss with one per-token value.")
    return jnp.sum(scale * C.drop_unweighted(_forward(cfg, h, w, b, xs, consts)[0], scale))


def _one_pass_jvp(values_and_grads, cfg: Config, primals, tangents):
    """The tangent rule of `weighted_sum` and `grouped_sum`, whose ``values_and_grads``
    (`_forward_and_grads`, `_grouped`) form the gradients in the forward pass.

    The tangent map is ⟨∇h, dh⟩ + ⟨∇W, dW⟩ + ⟨∇b, db⟩ + ⟨value, d scale⟩ with the
    gradients computed here; reverse mode transposes it into a product with the output
    cotangent, so the backward pass does no further work on the logits. The per-token
    inputs ``xs`` and the ``consts`` are constants.
    """
    h, w, b, xs, scale, consts = primals
    dh, dw, db, _, dscale, _ = tangents
    need = (not _zero(dh), not _zero(dw), b is not None and not _zero(db))
    value, gh, gw, gb = values_and_grads(cfg, h, w, b, xs, consts, scale, need)
    value = C.drop_unweighted(value, scale)
    out = jnp.sum(scale * value)
    parts = [_vdot(g, d) for g, d in zip((gh, gw, gb), (dh, dw, db), strict=True) if g is not None]
    # A sum of arrays is an array (`sum` starts at the int 0, which typeshed keeps).
    tangent = psum(cfg, cast(jax.Array, sum(parts))) if parts else jnp.zeros_like(out)
    if not _zero(dscale):
        tangent = tangent + _vdot(value, dscale)
    return out, tangent


weighted_sum.defjvp(functools.partial(_one_pass_jvp, _forward_and_grads), symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def per_token(cfg: Config, h, w, b, xs, consts=()):
    """value_i for every token, [N]; a tuple of them for a loss with several values."""
    k = _n_values(cfg)
    out = _forward(cfg, h, w, b, xs, consts)
    return out[0] if k == 1 else tuple(out[:k])


def _per_token_jvp(cfg: Config, primals, tangents):
    # The per-token cotangent is only known in the backward pass, so the gradient cannot
    # be formed here: the tangent map recomputes each chunk's logits (from the saved
    # per-token values) under jax.checkpoint, so that its transpose, too, holds only one
    # [chunk, V] block at a time instead of saving every chunk's softmax.
    h, w, b, xs, consts = primals
    dh, dw, db, _, _ = tangents
    k = _n_values(cfg)
    out = _forward(cfg, h, w, b, xs, consts)
    value, saved = (out[0] if k == 1 else tuple(out[:k])), tuple(out[k:])
    dh, dw, db = (None if _zero(t) else t for t in (dh, dw, db))
    if dh is None and dw is None and db is None:
        return value, jax.tree.map(jnp.zeros_like, value)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def piece(h_c, xs_c, saved_c, real_c, dh_c, w, b, dw, db):
        z, t = _logits(cfg, h_c, w, b)
        pairs = _grad_logits(cfg, z, t, saved_c, xs_c, b, consts)
        if real_c is not None:
            # Padding rows (h = 0, saved values 0) would give exp(b) = inf for a bias
            # entry above log(MAX) ≈ 88.7 in float32, and 0·inf = NaN in the transposed
            # products.
            pairs = tuple((jnp.where(real_c[:, None], g, 0.0), row) for g, row in pairs)
        dz = jnp.zeros((), cfg.dtype)
        if dh_c is not None:
            dz = dz + _project(cfg, dh_c, w)
        if dw is not None:
            dw, dz_w = _weight_tangent(cfg, h_c, dw)
            dz = dz + dz_w
        if db is not None:
            dz = dz + db.astype(cfg.dtype)
        tangents = tuple(psum(cfg, jnp.sum(g * dz, axis=1)) * row for g, row in pairs)
        return dw, (tangents[0] if k == 1 else tangents)

    n, chunk = h.shape[0], cfg.chunk
    if n <= chunk:

        def whole(dh, dw, db):
            return piece(h, xs, saved, None, dh, w, b, dw, db)[1]

        return value, compat.linear_call(whole, dh, dw, db)
    count = -(-n // chunk)

    def stack(x):
        # Scanned inputs, so that the transposed loop, too, reads and writes one chunk
        # of them per step; a ragged end is padded with harmless zeros and cut off.
        if x is None:
            return None
        x = jnp.pad(x, [(0, count * chunk - n)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((count, chunk) + x.shape[1:])

    real = None if n % chunk == 0 else jnp.ones(n, bool)
    fixed = (stack(h), tuple(map(stack, xs)), tuple(map(stack, saved)), stack(real))

    def tangent_map(dh, dw, db):
        def body(dw, slices):
            # ∂W's tangent is threaded through the loop (not closed over), so that reverse
            # mode threads its cotangent through the transposed loop and every chunk adds
            # to it in place, a vocabulary block at a time (see `_weight_tangent`).
            return piece(*slices, w, b, dw, db)

        return lax.scan(body, dw, (*fixed, stack(dh)))[1]

    tangent = compat.linear_call(tangent_map, dh, dw, db)
    return value, jax.tree.map(lambda t: t.reshape(count * chunk)[:n], tangent)


per_token.defjvp(_per_token_jvp, symbolic_zeros=True)

# --------------------------------------------------------------------------------------
# Losses of groups of segments (preference pairs)
# --------------------------------------------------------------------------------------


class GroupLoss(Protocol):
    """A loss of groups of token segments, e.g. a preference pair (chosen, rejected).

    The N tokens form ``segments`` blocks of n_groups segments of ``seg_len`` tokens each
    (segment-major: token t of segment s of group i is token (s·n_groups + i)·seg_len + t),
    as in [2B, T] sequences: the B chosen ones, then the B rejected ones. A group's value
    depends on its tokens' logits only through per-token statistics (`forward`), and its
    derivative with respect to the logits of token t is δ_k·a_t·row_t·g_t: (g_t, row_t)
    from `backward`, a_t known before the group is processed (`factors`), and δ [K]
    known only at its end (`finish`), with k = ``buffer(s)`` for the tokens of segment s.
    Implementations are frozen dataclasses.
    """

    segments: int
    seg_len: int
    n_values: int  # 1: `backward` returns one (g, row) pair
    # The index in the per-token inputs of a boolean mask of the kept tokens, or None:
    # each chunk's hidden rows of the dropped tokens are zeroed (where the caller would
    # need a masked copy of all of them), and their a_t must be 0.
    keep: int | None

    @property
    def n_buffers(self) -> int:
        """K: the number of deferred factors δ (and of [D, V] buffers)."""

    def buffer(self, s: int) -> int:
        """k(s) in [0, K): the factor δ_k of segment s's tokens."""

    def dtypes(self, cfg: Config) -> tuple[Any, ...]:
        """The dtypes of the per-token statistics of `forward`."""

    def forward(self, cfg: Config, z, xs: tuple, b, consts: tuple) -> tuple:
        """The per-token statistics [n] of a chunk of one segment (what `finish` and
        `backward` need)."""

    def backward(self, cfg: Config, z, stats: tuple, xs: tuple, b, consts: tuple) -> tuple:
        """(g [n, V], row [n]) of a chunk, as `ChunkLoss.backward`."""

    def factors(self, cfg: Config, xs: tuple) -> jax.Array:
        """a [S, T] from the group's per-token inputs (each [S, T, ...])."""

    def finish(self, cfg: Config, stats: tuple, xs: tuple) -> tuple:
        """(value, δ [K]) from the group's statistics and inputs ([S, T, ...] each)."""


def _of_group(x: jax.Array, segments: int, n_groups: int, seg_len: int, i) -> jax.Array:
    """Group i's entries [S, T, ...] of a per-token array [N, ...] (segment-major)."""
    x = x.reshape((segments, n_groups, seg_len) + x.shape[1:])
    return lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)


def _grouped(cfg: Config, h, w, b, xs, consts, scale, need: tuple[bool, bool, bool]):
    """Per-group values and the gradients of Σ_g scale_g·value_g, all in one pass.

    Each group's segments are processed ``cfg.chunk`` tokens at a time (chunks within a
    segment). The weight and bias gradients of a group are accumulated with their known
    factors a_t in K buffers, and added to the totals scaled by δ once the group ends;
    the rows of ∂/∂h are stored without a_t·δ and scaled in place when it ends. Memory:
    K [D, V] buffers (and K [V]) besides the gradients themselves and one chunk's logits.
    Returns (value [G], ∂/∂h [N, D] or None, ∂/∂W or None, ∂/∂b or None).
    """
    loss = cfg.loss
    need_h, need_w, need_b = need
    n_seg, seg_len, k_buf = loss.segments, loss.seg_len, loss.n_buffers
    n, d = h.shape
    n_groups = n // (n_seg * seg_len)
    v = w.shape[1] if cfg.layout == "dense" else w.shape[0]
    chunk = min(cfg.chunk, seg_len)
    grads = any(need)
    everything = (h, w, b, *xs, scale)
    token = _token_zeros(cfg, (n,), h, w, b, xs)

    def group(i, carry):
        stats, value, gh, gw, gb = carry
        xs_g = tuple(_of_group(x, n_seg, n_groups, seg_len, i) for x in xs)
        a = loss.factors(cfg, xs_g)  # cheap: from the per-token inputs only
        bufs = [_zeros(w.shape, cfg.dtype, *everything) if need_w else None] * k_buf
        bbufs = [_zeros((v,), cfg.dtype, *everything) if need_b else None] * k_buf
        for s in range(n_seg):
            k = loss.buffer(s)
            offset = (s * n_groups + i) * seg_len

            def body(carry, start, fresh, s=s, offset=offset):
                stats, gh, buf, bbuf = carry
                pos = offset + start
                h_c = lax.dynamic_slice_in_dim(h, pos, chunk)
                xs_c = tuple(lax.dynamic_slice_in_dim(x, pos, chunk) for x in xs)
                if loss.keep is not None:
                    h_c = jnp.where(xs_c[loss.keep][:, None], h_c, jnp.zeros((), h_c.dtype))
                z, t = _logits(cfg, h_c, w, b)
                out = loss.forward(cfg, z, xs_c, b, consts)
                stats = tuple(_put(st, o, pos) for st, o in zip(stats, out, strict=True))
                if not grads:
                    return stats, gh, buf, bbuf
                ((g, row),) = _grad_logits(cfg, z, t, tuple(out), xs_c, b, consts)
                r = lax.dynamic_slice_in_dim(a[s], start, chunk) * row
                # ∂/∂h's rows without a·δ (scaled at the end), the buffers' with a.
                gh, buf, bbuf = _add_chunk_grads(
                    cfg, need, (gh, buf, bbuf), h_c, w, g, row, r, pos, fresh
                )
                return stats, gh, buf, bbuf

            stats, gh, bufs[k], bbufs[k] = _over_blocks(
                seg_len, chunk, body, (stats, gh, bufs[k], bbufs[k])
            )
        stats_g = tuple(_of_group(st, n_seg, n_groups, seg_len, i) for st in stats)
        value_g, delta = loss.finish(cfg, stats_g, xs_g)
        value = lax.dynamic_update_index_in_dim(value, value_g.astype(value.dtype), i, 0)
        if grads:
            factor = scale[i] * delta  # [K]
            if need_w:
                gw = gw + sum(factor[j] * bufs[j] for j in range(k_buf))
            if need_b:
                gb = gb + sum(factor[j] * bbufs[j] for j in range(k_buf))
            if need_h:  # the group's rows of ∂/∂h, scaled in place
                for s in range(n_seg):
                    offset = (s * n_groups + i) * seg_len
                    rows = lax.dynamic_slice_in_dim(gh, offset, seg_len)
                    coef = factor[loss.buffer(s)] * a[s]
                    gh = _put(gh, coef[:, None] * rows, offset)
        return stats, value, gh, gw, gb

    init = (
        tuple(token.astype(dtype) for dtype in loss.dtypes(cfg)),
        _zeros((n_groups,), cfg.dtype, *everything),
        _zeros((n, d), cfg.dtype, *everything) if need_h else None,
        _zeros(w.shape, cfg.dtype, *everything) if need_w else None,
        _zeros((v,), cfg.dtype, *everything) if need_b else None,
    )
    _, value, gh, gw, gb = lax.fori_loop(0, n_groups, group, init)
    return value, gh, gw, gb


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def grouped_sum(cfg: Config, h, w, b, xs, scale, consts=()):
    """Σ_g scale_g·value_g over the groups of a `GroupLoss` (``scale`` [G])."""
    value = _grouped(cfg, h, w, b, xs, consts, scale, (False, False, False))[0]
    return jnp.sum(scale * C.drop_unweighted(value, scale))


grouped_sum.defjvp(functools.partial(_one_pass_jvp, _grouped), symbolic_zeros=True)


# Called eagerly, the chunk loops would be traced and compiled on every call; jitted,
# they are compiled once per configuration and shape (and inlined under an outer jit).
_weighted_sum_jit = jax.jit(weighted_sum, static_argnums=0)
_per_token_jit = jax.jit(per_token, static_argnums=0)
_grouped_sum_jit = jax.jit(grouped_sum, static_argnums=0)


# --------------------------------------------------------------------------------------
# Inputs and reductions
# --------------------------------------------------------------------------------------


def python_number(name: str, value: Any) -> float:
    """``value`` as a float, or a TypeError: a hyperparameter fixed at trace time."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a Python number (it is fixed at trace time), got {value!r}."
        )
    return float(value)


def check_linear(hidden, weight, bias, weight_layout: str, prefix: str = ""):
    """Validate the layer's shapes; returns (D, V of this shard, the token shape).

    ``prefix`` names the arguments in the messages (``"teacher_"``: `teacher_hidden`, ...).
    """
    if weight_layout not in LAYOUTS:
        raise ValueError(
            f"`weight_layout` must be one of {LAYOUTS}, got {weight_layout!r}: 'dense' for a "
            "[D, V] kernel (Flax Dense), 'embedding' for a [V, D] table (tied embeddings)."
        )
    h_name, w_name = f"`{prefix}hidden`", f"`{prefix}weight`"
    if hidden.ndim < 1:
        raise ValueError(f"{h_name} must have a feature axis (its last), got a scalar.")
    d, batch = hidden.shape[-1], hidden.shape[:-1]
    if weight.ndim != 2:
        raise ValueError(f"{w_name} must be a matrix, got shape {weight.shape}.")
    d_w, v = weight.shape if weight_layout == "dense" else weight.shape[::-1]
    if d_w != d:
        expected = "[D, V]" if weight_layout == "dense" else "[V, D]"
        hint = ""
        if v == d:  # the other layout fits: the weight is most likely transposed
            other, what = (
                ("embedding", "a [V, D] table (tied embeddings)")
                if weight_layout == "dense"
                else ("dense", "a [D, V] kernel")
            )
            hint = f" For {what}, pass weight_layout={other!r}."
        raise ValueError(
            f"{w_name} of shape {weight.shape} does not match {h_name} of shape {hidden.shape}: "
            f"with weight_layout={weight_layout!r} it must be {expected} with D = {d}.{hint}"
        )
    return d, v, batch


def check_bias(bias, v: int, name: str = "bias") -> None:
    if bias is not None and bias.shape != (v,):
        raise ValueError(f"`{name}` must have shape ({v},), one entry per class, got {bias.shape}.")


def soft_cap(logit_soft_cap) -> float | None:
    """The validated ``logit_soft_cap`` (a positive Python number) or None."""
    if logit_soft_cap is None:
        return None
    cap = python_number("logit_soft_cap", logit_soft_cap)
    C.check_positive("logit_soft_cap", cap)
    return cap


def chunk(chunk_size, n: int, v: int) -> int:
    """Tokens per chunk: the validated ``chunk_size`` (at most N), or the default."""
    if chunk_size is None:
        return default_chunk(n, v)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    return min(int(chunk_size), max(n, 1))


def flat_hidden(hidden, weight, keep, batch, d: int) -> jax.Array:
    """[N, D] in the matmul dtype, a dropped token's row 0 (and no gradient to it)."""
    mm = jnp.promote_types(hidden.dtype, weight.dtype)
    if keep is not None:
        hidden = C.keep(keep[..., None], hidden, 0.0)
    n = int(np.prod(batch, dtype=np.int64))
    return hidden.astype(mm).reshape(n, d)


def token_scale(cfg: Config, keep, weights, batch, reduction, batch_axis_name=None):
    """The per-token factors of a "sum" (w_i, 0 if dropped) or "mean" (w_i / Σ w) reduction."""
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
    return scale.reshape(-1)


def reduce(cfg, h, w, b, xs, keep, weights, batch, reduction, batch_axis_name=None, consts=()):
    """The loss with the conventions' reduction; "sum"/"mean" take the one-pass gradient."""
    if reduction == "none":
        value = _per_token_jit(cfg, h, w, b, xs, consts).reshape(batch)
        return C.reduce(value, where=keep, weights=weights, reduction="none")
    scale = token_scale(cfg, keep, weights, batch, reduction, batch_axis_name)
    total = _weighted_sum_jit(cfg, h, w, b, xs, scale, consts)
    if batch_axis_name is not None:
        total = lax.psum(total, batch_axis_name)
    return total


# --------------------------------------------------------------------------------------
# Explicitly sharded inputs
# --------------------------------------------------------------------------------------


def explicit_mesh(*arrays):
    """The mesh of the first input sharded over explicit mesh axes, or None."""
    for x in arrays:
        sharding = getattr(jax.typeof(x), "sharding", None) if isinstance(x, jax.Array) else None
        spec = getattr(sharding, "spec", None)
        if sharding is not None and spec is not None and any(e is not None for e in spec):
            return sharding.mesh
    return None


def mesh_axes(entries) -> tuple:
    """The mesh axis names of PartitionSpec entries (None, a name, or a tuple of names)."""
    return tuple(a for e in entries if e is not None for a in (e if isinstance(e, tuple) else (e,)))


def put(mesh, x, spec):
    """``x`` resharded to ``spec`` on ``mesh`` (None stays None)."""
    if x is None:
        return None
    return jax.sharding.reshard(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec))


def per_device(
    function, mesh, hidden, *, shared: dict, tokens: dict, options: dict, per_token, rows=None
):
    """``function`` of explicitly sharded inputs: data parallel over the token sharding.

    The chunk loops slice the token and vocabulary axes, which explicit sharding does
    not allow along a sharded axis. So the loss runs in ``shard_map``: each device loops
    over its own tokens (``hidden`` keeps the sharding of its token axes, ``tokens`` are
    sharded like them; ``rows`` like ``hidden``, e.g. a teacher's hidden states), with
    the ``shared`` inputs (weight, bias) replicated, and
    ``function`` is called with ``batch_axis_name`` set to the token axes, so that its
    sums and means are taken over all devices. ``per_token``: whether the result has
    the token shape (else it is a scalar).
    """
    hidden = jnp.asarray(hidden)
    spec = jax.typeof(hidden).sharding.spec
    token_axes = tuple(spec)[: hidden.ndim - 1] if hidden.ndim else ()
    axes = mesh_axes(token_axes)
    token_spec, row_spec = P(*token_axes), P(*token_axes, None)

    inputs = {"hidden": put(mesh, hidden, row_spec)}
    specs = {"hidden": row_spec}
    groups = ((shared, P(), False), (tokens, token_spec, True), (rows or {}, row_spec, False))
    for group, spec, per_token_input in groups:
        for key, x in group.items():
            if x is not None:
                if per_token_input and jnp.ndim(x) != len(spec):  # given broadcastable
                    x = jnp.broadcast_to(x, hidden.shape[:-1])
                inputs[key], specs[key] = put(mesh, x, spec), spec

    def local(inputs):
        return function(**inputs, **options, batch_axis_name=axes or None)

    out = token_spec if per_token else P()
    return jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out)(inputs)
