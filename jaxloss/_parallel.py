"""Cross-entropy with the vocabulary sharded over a mesh axis, for use inside ``shard_map``.

The Megatron-LM scheme: each device holds the logits (or the output weight) of one
contiguous slice of the vocabulary. The softmax needs three reductions over the whole
vocabulary per token: the max (a ``pmax``), the sum of exponentials (a ``psum``) and
the target logit, found on the one shard that holds the label (a ``psum`` of a value
that is 0 elsewhere). Each is a [tokens]-sized collective; the logits themselves never
move, and the gradient of each shard's logits is computed on that shard.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _conventions as C
from jaxloss import _engine as E
from jaxloss import _large_vocab as LV
from jaxloss._classification import (
    _batch_shape,
    _class_axis,
    _class_ids,
    _class_weights,
    _is_zero,
    class_id_cross_entropy,
)

ArrayLike = C.ArrayLike


def axis_size(axis_name, function: str) -> int:
    """The number of shards along ``axis_name``, or an error saying how to call ``function``."""
    fallback = (
        "softmax_cross_entropy"
        if function == "vocab_parallel_cross_entropy"
        else "fused_linear_cross_entropy"
    )
    return C.bound_axis_size(
        axis_name,
        f"`{function}` was called with axis_name={axis_name!r}, but no mesh axis of that "
        "name is bound here: it must run inside `jax.shard_map` over a mesh with that "
        "axis, the vocabulary sharded along it (e.g. in_specs=P(None, "
        f"{axis_name!r}) for [N, V] logits). For unsharded inputs use `jaxloss.{fallback}`.",
    )


def vocab_parallel_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis_name: Hashable,
    axis: int = -1,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    batch_axis_name: Hashable | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Softmax cross-entropy of logits sharded along the vocabulary, inside ``shard_map``.

        ℓ = (1 − ε)·w_y·(lse − z_y) + (ε/K)·Σ_{c: z_c > −∞} w_c·(lse − z_c)
        lse = m + log Σ_shards Σ_c exp(z_c − m),  m = max over all shards,
        z_y and w_y read on the shard that holds class y

    with w ≡ 1 without ``class_weights`` and K the number of classes with a finite logit
    (C without −inf). Equal to `softmax_cross_entropy` of the gathered logits (same
    options, same conventions) without gathering them: each device holds the logits of
    one contiguous slice of the C classes, the slice of device k along ``axis_name``
    being classes [k·C/S, (k+1)·C/S) for S devices (what ``PartitionSpec(...,
    axis_name)`` gives). Per token it communicates three scalars (a ``pmax`` and two
    ``psum``s; one more, of two or three numbers, with ``label_smoothing``); the
    gradient of each shard's logits stays on it.

    PyTorch's convention: per token (``"none"``), ``"sum"`` and ``"mean"`` equal
    ``torch.nn.functional.cross_entropy(z, y, weight=w, ignore_index=...,
    label_smoothing=ε)`` when no logit is −inf: the smoothing term of class c is weighted
    by w_c, and ``"mean"`` divides by Σ w_y (times ``weights``) over the kept tokens. A
    NaN weight or a kept label outside [0, C) makes ``"mean"`` NaN, never 0.

    −inf logits (classes a token cannot take), as in `softmax_cross_entropy`: smoothing
    spreads over the K finite classes only, and a label on a −inf class gives −log p_y
    capped at the largest float, with zero gradient from that term (not inf with
    gradient −1). Forward-mode derivatives are finite there.

    Called outside ``shard_map`` (no mesh axis ``axis_name`` bound) it raises a
    ValueError saying to wrap it in ``jax.shard_map``, or to use `softmax_cross_entropy`.

    Use it when the logits of a tensor-parallel output layer are sharded along the
    vocabulary; if the weight is sharded too, `vocab_parallel_fused_linear_cross_entropy`
    also avoids materializing the logits.

    Args:
      logits: this device's shard of z, floating, with the class axis ``axis`` holding
        C/S classes.
      labels: integer class ids in [0, C) (global ids, the same on every shard of
        ``axis_name``), of the logits' shape without ``axis``; any integer dtype
        (range-checked in that dtype, then int32: uint8 ids with C = 260 are read
        correctly, an int64 id ≥ 2³² gives NaN).
      axis_name: the mesh axis (a name, or a tuple of names) the classes are sharded over.
      axis: the class axis of ``logits`` (default the last).
      label_smoothing: ε ∈ [0, 1]: t = (1 − ε)·onehot + ε/K, K the number of classes with
        a finite logit on all shards together (as `softmax_cross_entropy`).
      class_weights: optional non-negative weights w of this device's classes, shape
        [C/S] (sharded like the logits), in PyTorch's convention above.
      ignore_index: optional class id whose tokens are dropped, as ``where=False``.
      where: optional boolean mask broadcastable to ``labels``; True keeps a token.
      weights: optional non-negative per-token weights broadcastable to ``labels``.
      batch_axis_name: optional mesh axis (or axes) the tokens are sharded over (data
        parallelism): ``"sum"`` and ``"mean"`` then reduce over all tokens of all
        devices along it, so ``"mean"`` is the global Σ w·ℓ / Σ w, not a mean of means.
      reduction: ``"none"`` (per token, this device's tokens), ``"sum"`` or ``"mean"``.

    Returns:
      ``labels``' shape for ``"none"``, else a scalar; the same on every device along
      ``axis_name``; float32, or float64 for float64 inputs.

    Example:
      >>> import functools, jax, jax.numpy as jnp, jaxloss
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("model",), (jax.sharding.AxisType.Auto,))
      >>> loss = jax.jit(jax.shard_map(
      ...     functools.partial(jaxloss.vocab_parallel_cross_entropy, axis_name="model"),
      ...     mesh=mesh, in_specs=(P(None, "model"), P()), out_specs=P()))
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
      >>> loss(logits, jnp.array([0, 2]))
      Array([0.16985, 1.09861 ], dtype=float32)

    References:
      Shoeybi et al., "Megatron-LM: training multi-billion parameter language models
      using model parallelism" (2019), §3.
    """
    C.check_batch_axis_name("vocab_parallel_cross_entropy", batch_axis_name)
    C.check_ignore_index(ignore_index)
    x = C.as_float("logits", logits)
    axis = _class_axis(axis, x, "logits")
    labels = C.as_labels("labels", labels)
    batch = _batch_shape(x, axis)
    try:
        labels = jnp.broadcast_to(labels, batch)
    except ValueError:
        raise ValueError(
            f"`labels` of shape {labels.shape} (class ids) must broadcast to the shape of "
            f"`logits` without its class axis {axis}, {batch}."
        ) from None
    C.check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    where, weights = C.prepare(batch, where, weights, reduction)
    C.check_class_ids(labels, ignore_index, where)
    cw = _class_weights(class_weights, x.shape[axis])
    v_local = x.shape[axis]
    n_classes = v_local * axis_size(axis_name, "vocab_parallel_cross_entropy")
    dtype = C.compute_dtype(x)
    x = jnp.moveaxis(x.astype(dtype), axis, -1)

    keep = C.kept(where, labels, ignore_index, batch)
    labels = _class_ids(labels, n_classes)  # int32, −1 for any id outside [0, C)
    if keep is not None:
        labels = jnp.where(keep, labels, 0)  # a safe index; the token is dropped anyway
        x = C.keep(keep[..., None], x, 0.0)

    local = labels - lax.axis_index(axis_name) * v_local
    here = (local >= 0) & (local < v_local)
    local = jnp.clip(local, 0, v_local - 1)
    valid = labels >= 0

    # The max only shifts the exponentials for stability; lse does not depend on it.
    m = lax.pmax(lax.stop_gradient(jnp.max(x, axis=-1)), axis_name)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    lse = m + jnp.log(lax.psum(jnp.sum(jnp.exp(x - m[..., None]), axis=-1), axis_name))
    picked = jnp.take_along_axis(x, local[..., None], axis=-1)[..., 0]
    omega = None
    if cw is not None:
        cw = cw.astype(dtype)
        omega = lax.psum(jnp.where(here, jnp.take(cw, local), 0.0), axis_name)
        omega = jnp.where(valid, omega, jnp.nan)
    stats = {}
    if not _is_zero(label_smoothing):
        # K, and Σ_c w_c, Σ_c w_c·z_c over the classes with a finite logit (w ≡ 1 without
        # class weights), summed over the shards in one collective.
        finite = x != -jnp.inf
        z = jnp.where(finite, x, 0.0)
        if cw is None:
            parts = (jnp.sum(finite, axis=-1).astype(dtype), jnp.sum(z, axis=-1))
            count, total = lax.psum(parts, axis_name)
            stats = {"smooth_count": count, "smooth_logit_sum": total}
        else:
            mass = jnp.sum(jnp.where(finite, cw, 0.0), axis=-1)
            parts = (jnp.sum(finite, axis=-1).astype(dtype), mass, z @ cw)
            count, mass, total = lax.psum(parts, axis_name)
            stats = {"smooth_count": count, "smooth_weight": mass, "smooth_logit_sum": total}
    # The per-example formula every class-id cross-entropy shares (PyTorch's convention),
    # −log p_y capped at the largest float for a label on a −inf class.
    z_y = lax.psum(jnp.where(here, picked, 0.0), axis_name)
    loss = class_id_cross_entropy(
        lse, z_y, label_smoothing=label_smoothing, label_weight=omega, **stats
    )
    loss = jnp.where(valid, loss, jnp.nan)  # a class id outside [0, C) is never silent
    # A mean divides by Σ w·ω over the kept tokens (of every device along batch_axis_name;
    # ω = the class weights, PyTorch's convention), NaN if that sum is (a NaN weight, a
    # label outside [0, C)).
    return C.reduce(
        loss,
        where=keep,
        weights=weights,
        reduction=reduction,
        denominator=omega,
        axis_name=batch_axis_name,
    )


def vocab_parallel_fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    axis_name: Hashable,
    batch_axis_name: Hashable | None = None,
    bias: ArrayLike | None = None,
    weight_layout: str = "dense",
    chunk_size: int | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """`fused_linear_cross_entropy` with the weight sharded along the vocabulary, in ``shard_map``.

        z = h·W_k (+ b_k) on device k,    ℓ as in `fused_linear_cross_entropy`

    Outside ``shard_map`` it raises a ValueError saying what to do instead. No
    ``class_weights`` (as `fused_linear_cross_entropy`); with ``reduction="mean"`` by
    default for the same reason.

    For a tensor-parallel language-model head: each device along ``axis_name`` holds
    the columns [k·V/S, (k+1)·V/S) of the [D, V] weight (rows of a [V, D] embedding)
    and the whole ``hidden``. Neither the logits nor a gathered weight ever exist: each
    device computes its [chunk, V/S] block of logits a chunk at a time, and the per-token
    max, sum of exponentials and target logit are combined across shards as in
    `vocab_parallel_cross_entropy`. The gradient of each weight shard is computed on its
    device; the gradient of ``hidden`` is summed over ``axis_name`` (by JAX's
    ``shard_map`` typing: keep ``check_vma=True``, the default).

    Args:
      hidden: h, floating [..., D], the same on every device along ``axis_name``.
      weight: this device's shard of W: [D, V/S] (``"dense"``) or [V/S, D] (``"embedding"``).
      labels: global class ids in [0, V), of ``hidden``'s shape without D.
      axis_name: the mesh axis (or axes) the vocabulary is sharded over.
      batch_axis_name: optional mesh axis (or axes) the tokens are sharded over; ``"sum"``
        and ``"mean"`` then reduce over all tokens along it (a global mean).
      bias: optional b, this device's shard [V/S].
      weight_layout, chunk_size, ignore_index, where, weights: as in
        `fused_linear_cross_entropy` (``chunk_size`` counts tokens; the default sizes the
        [chunk, V/S] block).
      label_smoothing, z_loss, logit_soft_cap, reduction: as in `fused_linear_cross_entropy`.

    Returns:
      As in `fused_linear_cross_entropy`, the same on every device along ``axis_name``.

    Example:
      >>> import functools, jax, jax.numpy as jnp, jaxloss
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("model",), (jax.sharding.AxisType.Auto,))
      >>> loss = jax.jit(jax.shard_map(
      ...     functools.partial(jaxloss.vocab_parallel_fused_linear_cross_entropy,
      ...                       axis_name="model"),
      ...     mesh=mesh, in_specs=(P(), P(None, "model"), P()), out_specs=P()))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> weight = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
      >>> loss(hidden, weight, jnp.array([0, 1, 2]))
      Array(1.03804, dtype=float32)

    References:
      Shoeybi et al., "Megatron-LM" (2019), §3; Wijmans et al., "Cut your losses in
      large-vocabulary language models" (2024).
    """
    C.check_batch_axis_name("vocab_parallel_fused_linear_cross_entropy", batch_axis_name)
    cfg, h, w, b, xs, keep, weights, batch = LV.prepare(
        hidden,
        weight,
        labels,
        bias=bias,
        weight_layout=weight_layout,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        where=where,
        weights=weights,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_soft_cap=logit_soft_cap,
        reduction=reduction,
        axis_name=axis_name,
        n_shards=axis_size(axis_name, "vocab_parallel_fused_linear_cross_entropy"),
    )
    return E.reduce(cfg, h, w, b, xs, keep, weights, batch, reduction, batch_axis_name)
