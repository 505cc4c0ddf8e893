"""Contrastive losses: NT-Xent (SimCLR), Circle loss, CLIP's InfoNCE and SigLIP's sigmoid loss.

Each takes a batch of embeddings ``[..., B, D]`` (the contrastive batch is axis −2, the
features axis −1; leading axes are independent problems) and returns one loss per
example, ``[..., B]``, so ``where``, ``weights`` and ``reduction`` work as for every
other loss. These losses couple the examples of a batch: ``where=False`` removes an
example from the batch altogether (it is no positive and nobody's negative), which
changes the losses of the others.

Across devices (``batch_axis_name``, inside ``shard_map``) every example on every device
is a negative: `clip_loss` gathers the [b, D] embeddings of the other devices;
`siglip_loss` passes its chunk of ``y`` around the ring of devices with ``ppermute``
(Zhai et al., 2023, §3.3) and recomputes the blocks in the backward pass, so no device
ever holds all of ``y`` or a [b, B] block of logits.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


# --------------------------------------------------------------------------------------
# Shared input handling
# --------------------------------------------------------------------------------------


def _embeddings(name: str, x: ArrayLike) -> jax.Array:
    x = C.as_float(name, x)
    if x.ndim < 2:
        raise ValueError(
            f"`{name}` must have shape [..., B, D] (a batch of B embeddings of size D), "
            f"got shape {x.shape}. For a single batch pass a 2-D array."
        )
    return x


def _pair(x, y, where, weights, reduction, scalars):
    """Check a paired batch (x, y); returns (x, y, where, weights, dtype), x, y in dtype."""
    x, y = _embeddings("x", x), _embeddings("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"`x` {x.shape} and `y` {y.shape} must have the same shape [..., B, D]: "
            "y[i] is the positive of x[i]."
        )
    where, weights = C.prepare(x.shape[:-1], where, weights, reduction)
    present = [s for s in scalars.values() if s is not None]
    dtype = C.compute_dtype(x, y, *present)
    return x.astype(dtype), y.astype(dtype), where, weights, dtype


def _scalar(name: str, value: ArrayLike | None, dtype) -> jax.Array:
    arr = C.as_float(name, value, allow_int=True)
    if arr.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar, got shape {arr.shape}. Use jax.vmap for one value "
            "per problem."
        )
    return arr.astype(dtype)


def _unit(x: jax.Array) -> jax.Array:
    """x / ‖x‖ along the last axis; a zero vector stays zero (finite value and gradient).

    Computed as (x/m) / (‖x‖/m) with m = max|x| held constant (x/‖x‖ is scale-invariant,
    so this is exact): the derivative of a quotient divides by its denominator squared,
    which would underflow to 0 for a tiny ‖x‖ in float32; ‖x‖/m is in [1, √D].
    """
    m = lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    m = jnp.where(m > 0, m, 1.0)
    r = N.safe_norm(x, -1, keepdims=True) / m
    return (x / m) / jnp.where(r > 0, r, 1.0)


def _similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """⟨a_i, b_j⟩ for every pair: [..., n, D] × [..., m, D] → [..., n, m]."""
    return jnp.einsum("...id,...jd->...ij", a, b, precision=lax.Precision.HIGHEST)


def _explicit_batch(x: jax.Array, name: str = "x") -> tuple[Any, Any] | None:
    """``(mesh, axes)`` if x's batch axis (−2) is sharded over explicit mesh axes, else None.

    Under plain ``jit`` a batch sharded that way has no legal sharding for the B × B
    similarity matrix; the losses then run their ``shard_map`` form over those axes.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    types = getattr(mesh, "axis_types", ())
    if sharding is None or not any(t == jax.sharding.AxisType.Explicit for t in types):
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    if all(entry is None for entry in spec):
        return None
    if any(entry is not None for i, entry in enumerate(spec) if i != x.ndim - 2):
        raise ValueError(
            f"Under plain jit, shard only the batch axis (−2) of `{name}`, got {P(*spec)} for "
            f"shape {x.shape}; or call the loss inside shard_map with `batch_axis_name`."
        )
    return mesh, spec[x.ndim - 2]


def _replicated(mesh, *arrays):
    """Each array (None passes through) gathered onto every device of ``mesh``."""
    full = jax.sharding.NamedSharding(mesh, P())
    return [None if a is None else jax.sharding.reshard(a, full) for a in arrays]


def _per_device(loss, mesh, axes, x, y, where, weights, scalars, reduction):
    """``loss`` inside ``shard_map`` over the explicit mesh axes ``axes`` of the batch."""
    lead = (None,) * (x.ndim - 2)
    rows, batch = P(*lead, axes, None), P(*lead, axes)

    def put(a, spec):
        if a is None:
            return None
        a = jnp.broadcast_to(a, x.shape[:-1]) if spec is batch else a
        return jax.sharding.reshard(a, jax.sharding.NamedSharding(mesh, spec))

    args = {"x": put(x, rows), "y": put(y, rows), "where": put(where, batch)}
    args["weights"] = put(weights, batch)
    args.update({k: put(v, P()) for k, v in scalars.items()})
    args = {k: v for k, v in args.items() if v is not None}
    specs = {
        k: rows if k in ("x", "y") else batch if k in ("where", "weights") else P() for k in args
    }

    def local(args):
        return loss(batch_axis_name=axes, reduction=reduction, **args)

    out = batch if reduction == "none" else P()
    return jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out)(args)


def _varying(x: jax.Array, axis_name) -> jax.Array:
    """``x`` typed as varying over ``axis_name`` inside ``shard_map`` (a no-op if it is)."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    aval = jax.typeof(x)
    vma: Any = getattr(aval, "vma", None)  # the varying mesh axes: `vma` before JAX 0.10
    if vma is None:
        vma = getattr(getattr(aval, "mat", None), "varying", frozenset())
    missing = tuple(a for a in names if a not in vma)
    return lax.pcast(x, missing, to="varying") if missing else x


def _labelled(embeddings, labels, where, weights, reduction):
    """(embeddings, labels, where, weights) of a batch of labelled embeddings [..., B, D],
    the labels broadcast to [..., B]. Under plain ``jit`` with the batch sharded over a
    mesh, everything is gathered: the [B, B] similarities need every example."""
    e = _embeddings("embeddings", embeddings)
    labels = C.as_labels("labels", labels)
    batch = e.shape[:-1]
    try:
        labels = jnp.broadcast_to(labels, batch)
    except ValueError:
        raise ValueError(
            f"`labels` of shape {labels.shape} (group ids) must broadcast to the shape of "
            f"`embeddings` without its feature axis, {batch}."
        ) from None
    where, weights = C.prepare(batch, where, weights, reduction)
    explicit = _explicit_batch(e, "embeddings")
    if explicit is not None:
        e, labels, where, weights = _replicated(explicit[0], e, labels, where, weights)
    return e, labels, where, weights


def _keep_mask(where, shape, axis_name) -> jax.Array:
    keep = jnp.ones(shape, bool) if where is None else jnp.broadcast_to(where, shape)
    return keep if axis_name is None else _varying(keep, axis_name)


# --------------------------------------------------------------------------------------
# NT-Xent
# --------------------------------------------------------------------------------------


def ntxent_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: ArrayLike = 0.07,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """The normalized temperature-scaled cross-entropy (NT-Xent) of SimCLR, per anchor.

        s_ij = cos(e_i, e_j) / τ,   P(i) = {j ≠ i : y_j = y_i},   N(i) = {k : y_k ≠ y_i}
        ℓ_i = (1/|P(i)|) Σ_{j∈P(i)} −log( exp(s_ij) / (exp(s_ij) + Σ_{k∈N(i)} exp(s_ik)) )

    Examples with the same label are positives of each other, all others negatives (the
    other positives are not in the denominator, as in optax's `ntxent`). With two views
    per label (SimCLR: 2N views of N images) or any equal number of positives per anchor,
    ``reduction="mean"`` is optax's ``ntxent``, the mean over all positive pairs; for
    unequal groups, ``weights=|P(i)|`` gives that pair mean. An anchor with no positive
    (no other kept example of its label) has no loss: it is left out of ``"sum"`` and
    ``"mean"`` (and is 0 with ``"none"``), as if ``where`` were False for it; it still
    serves as a negative. ``where=False`` removes an example from the batch entirely.
    Under plain ``jit`` with the batch sharded over a mesh, the embeddings are gathered
    (every anchor needs every example).

    Args:
      embeddings: e, floating ``[..., B, D]``; cosine similarity is taken along D (a zero
        vector has similarity 0 to everything).
      labels: integer group ids ``[..., B]`` (broadcastable); equal ids are positives.
      temperature: τ > 0 (a scalar; may be a traced array).
      where: optional boolean mask ``[..., B]``; False removes an example from the batch.
      weights: optional non-negative per-anchor weights ``[..., B]``.
      reduction: ``"none"`` (per anchor), ``"sum"`` or ``"mean"``.

    Returns:
      ``[..., B]`` for ``"none"``, else a scalar; float32, or float64 for float64 input.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> e = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> jaxloss.ntxent_loss(e, jnp.array([0, 0, 1, 1]), temperature=0.5)
      Array([0.268394 , 0.324527, 0.268394 , 0.324527], dtype=float32)

    References:
      Chen et al., "A simple framework for contrastive learning of visual
      representations" (SimCLR, 2020), eq. (1); Sohn, "Improved deep metric learning
      with multi-class N-pair loss objective" (2016).
    """
    C.check_positive("temperature", temperature)
    e, labels, where, weights = _labelled(embeddings, labels, where, weights, reduction)
    batch = e.shape[:-1]
    tau = C.as_float("temperature", temperature, allow_int=True)
    dtype = C.compute_dtype(e, tau)
    keep = _keep_mask(where, batch, None)
    e = _unit(C.keep(keep[..., None], e.astype(dtype), 0.0))
    s = _similarity(e, e) / tau.astype(dtype)

    n = batch[-1]
    same = labels[..., :, None] == labels[..., None, :]
    kept_j = keep[..., None, :]
    positive = same & ~jnp.eye(n, dtype=bool) & kept_j
    negative = ~same & kept_j
    lse_neg, _ = _masked_logsumexp(s, negative)  # log Σ_{N(i)} exp(s_ik), −inf if none
    # −log(e^s / (e^s + Σ e^n)) = softplus(log Σ e^n − s)
    pair = jnp.where(positive, jax.nn.softplus(lse_neg[..., None] - s), 0.0)
    count = jnp.sum(positive, axis=-1)
    loss = jnp.sum(pair, axis=-1) / jnp.maximum(count, 1).astype(dtype)
    return C.reduce(loss, where=keep & (count > 0), weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# Circle loss
# --------------------------------------------------------------------------------------


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log Σ_{mask} exp(x) over the last axis, whether the mask has an entry); a row
    without one gets −inf, and its entries are replaced by 0 before the logsumexp so its
    gradient stays finite (double where)."""
    has = jnp.any(mask, axis=-1)
    safe = jnp.where(has[..., None], jnp.where(mask, x, -jnp.inf), 0.0)
    return jnp.where(has, jax.nn.logsumexp(safe, axis=-1), -jnp.inf), has


def circle_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 80.0,
    margin: float = 0.4,
    remove_diagonal: bool = True,
    normalize: bool = True,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Circle loss (Sun et al., 2020) within a batch of labelled embeddings, per anchor.

        s_ij = ⟨ê_i, ê_j⟩ (capped at 1),   P(i) = {j : y_j = y_i},   N(i) = {k : y_k ≠ y_i}
        α_p = max(0, 1 + m − s_ij),   α_n = max(0, s_ik + m),   Δ_p = 1 − m,   Δ_n = m
        ℓ_i = log(1 + Σ_{k∈N(i)} exp(γ α_n (s_ik − Δ_n)) · Σ_{j∈P(i)} exp(−γ α_p (s_ij − Δ_p)))

    the paper's eq. (6) with its one-margin parametrization (O_p = 1 + m, O_n = −m), as
    ``keras.losses.Circle`` computes it (defaults γ = 80, m = 0.4): the positives and
    negatives of anchor i are the other examples of the batch with the same and with a
    different label. ``remove_diagonal=True`` (the default, as Keras) leaves i out of its
    own positives; with False, s_ii = 1 is one of them. The gradient is the derivative of
    this value, α's included (as Keras; the paper's eq. (10) treats α as constants);
    where an α reaches 0 (s_ik = −m) the loss has a kink and takes the flat side's
    derivative.
    Computed in log space (``softplus(lse_p + lse_n)``), so γ = 80 never overflows.

    An anchor with no positive or no negative among the kept examples has no loss: it is
    left out of ``"sum"`` and ``"mean"`` (and is 0 with ``"none"``); it still serves as
    others' positive or negative. Keras masks the same anchors (its loss 0) out of its
    mean, so ``reduction="mean"`` is ``keras.losses.Circle()(labels, embeddings)``.
    ``where=False`` removes an example from the batch entirely.

    Args:
      embeddings: e, floating ``[..., B, D]``.
      labels: integer class ids ``[..., B]`` (broadcastable); equal ids are positives.
      gamma: γ > 0, the scale of the similarities.
      margin: m, the relaxation margin (a finite number).
      remove_diagonal: leave each anchor out of its own positives.
      normalize: L2-normalize e along D first (default True, the paper's cosine
        similarity; a zero vector stays 0). Keras expects normalized embeddings and
        does not normalize: False computes its formula on the raw dot products.
      where, weights, reduction: as in `ntxent_loss`.

    Returns:
      As in `ntxent_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> e = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
      >>> jaxloss.circle_loss(e, jnp.array([0, 0, 1, 1]), gamma=4.0)
      Array([0.6652944 , 0.99451315, 0.99451315, 0.6652944 ], dtype=float32)

    References:
      Sun et al., "Circle loss: a unified perspective of pair similarity optimization",
      CVPR 2020, eq. (6); ``keras.losses.Circle``.
    """
    C.check_positive("gamma", gamma)
    if C._is_concrete_number(margin) and not abs(margin) < float("inf"):
        raise ValueError(f"`margin` must be a finite number, got {margin!r}.")
    for name, flag in (("remove_diagonal", remove_diagonal), ("normalize", normalize)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
    e, labels, where, weights = _labelled(embeddings, labels, where, weights, reduction)
    batch = e.shape[:-1]
    dtype = C.compute_dtype(e)
    keep = _keep_mask(where, batch, None)
    e = C.keep(keep[..., None], e.astype(dtype), 0.0)
    if normalize:
        e = _unit(e)
    s = _similarity(e, e)
    s = jnp.where(s > 1.0, 1.0, s)  # Keras's cosine distance max(1 − s, 0)

    n = batch[-1]
    same = labels[..., :, None] == labels[..., None, :]
    kept_j = keep[..., None, :]
    positive = same & kept_j
    if remove_diagonal:
        positive = positive & ~jnp.eye(n, dtype=bool)
    negative = ~same & kept_j
    alpha_p = jax.nn.relu(1.0 + margin - s)
    alpha_n = jax.nn.relu(s + margin)
    lse_p, has_p = _masked_logsumexp(-gamma * alpha_p * (s - (1.0 - margin)), positive)
    lse_n, has_n = _masked_logsumexp(gamma * alpha_n * (s - margin), negative)
    valid = has_p & has_n
    loss = jnp.where(valid, jax.nn.softplus(jnp.where(valid, lse_p + lse_n, 0.0)), 0.0)
    return C.reduce(loss, where=keep & valid, weights=weights, reduction=reduction)


# --------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------


def clip_loss(
    x: ArrayLike,
    y: ArrayLike,
    *,
    temperature: ArrayLike | None = None,
    logit_scale: ArrayLike | None = None,
    normalize: bool = True,
    batch_axis_name: Hashable | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """CLIP's symmetric InfoNCE loss: cross-entropy of matching x to y and y to x, per pair.

        s_ij = ⟨x̂_i, ŷ_j⟩ · t,   t = 1/τ or exp(logit_scale),   x̂ = x/‖x‖ (``normalize``)
        ℓ_i = ½ [ (log Σ_j exp(s_ij) − s_ii) + (log Σ_j exp(s_ji) − s_ii) ]

    The mean of ℓ_i over the batch (``reduction="mean"``) is CLIP's loss, the average of
    the row-wise (x → y) and column-wise (y → x) softmax cross-entropies of the B × B
    similarity matrix with the positives on its diagonal; ℓ_i is pair i's share of it.
    ``where=False`` removes pair i entirely: it is neither a positive nor anyone's
    negative (its row and column leave the matrix).

    Across devices: inside ``jax.shard_map`` with the batch split over
    ``batch_axis_name``, each device holds b = B/S pairs, gathers the normalized
    embeddings of all devices (``all_gather``, [B, D] each for x and y) and computes its
    [b, B] blocks of the matrix; the values are this device's pairs' ℓ_i (``"none"``) or
    the global sum/mean, and the gradients equal the single-device ones on the whole
    batch. Under plain ``jit`` with a sharded batch, leave ``batch_axis_name`` None.

    Args:
      x: floating ``[..., B, D]`` (e.g. image embeddings); pairs are rows with the same
        index in ``x`` and ``y``.
      y: floating, same shape as ``x`` (e.g. text embeddings).
      temperature: τ > 0, used as given (no log): s = ⟨x̂, ŷ⟩/τ. Pass exactly one of
        ``temperature`` and ``logit_scale``.
      logit_scale: log t, a learnable scalar; the loss takes its exp. This is CLIP's
        learnable parameter (initialized to log(1/0.07), t clipped at 100 during training,
        outside the loss). open_clip's ``ClipLoss`` is instead called with
        ``logit_scale`` already exponentiated (its model returns ``logit_scale.exp()``):
        pass that value as ``temperature=1/value``, or its log as ``logit_scale``.
      normalize: L2-normalize x and y along D first (default True; a zero vector stays 0).
      batch_axis_name: inside ``shard_map``, the mesh axis (or tuple of axes) the batch
        is split over, in the order of ``lax.axis_index``; None on one device.
      where: optional boolean mask ``[..., B]``; False removes a pair from the batch.
      weights: optional non-negative per-pair weights ``[..., B]``.
      reduction: ``"none"`` (per pair), ``"sum"`` or ``"mean"``.

    Returns:
      ``[..., B]`` (this device's ``[..., b]`` under ``shard_map``) for ``"none"``,
      else a scalar; float32, or float64 for float64 input.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> y = jnp.array([[0.9, 0.1], [0.2, 1.0], [1.0, 0.8]])
      >>> jaxloss.clip_loss(x, y, temperature=0.1)
      Array([0.112493, 0.116333, 0.20485 ], dtype=float32)
      >>> jaxloss.clip_loss(x, y, logit_scale=jnp.log(10.0), reduction="mean")
      Array(0.144559, dtype=float32)

    References:
      Radford et al., "Learning transferable visual models from natural language
      supervision" (CLIP, 2021), Figure 3; van den Oord et al., "Representation learning
      with contrastive predictive coding" (InfoNCE, 2018).
    """
    C.check_batch_axis_name("clip_loss", batch_axis_name)
    if (temperature is None) == (logit_scale is None):
        raise ValueError(
            "Pass exactly one of `temperature` (τ, logits s/τ) or `logit_scale` (log t, "
            f"logits s·exp(logit_scale)); got temperature={temperature!r}, "
            f"logit_scale={logit_scale!r}."
        )
    C.check_positive("temperature", temperature, allow_none=True)
    scalars = {"temperature": temperature, "logit_scale": logit_scale}
    scalars = {k: C.as_float(k, v, allow_int=True) for k, v in scalars.items() if v is not None}
    x, y, where, weights, dtype = _pair(x, y, where, weights, reduction, scalars)
    explicit = _explicit_batch(x) if batch_axis_name is None else None
    if explicit is not None:
        loss = functools.partial(clip_loss, normalize=normalize)
        return _per_device(loss, *explicit, x, y, where, weights, scalars, reduction)
    if temperature is not None:
        scale = 1.0 / _scalar("temperature", temperature, dtype)
    else:
        scale = jnp.exp(_scalar("logit_scale", logit_scale, dtype))

    keep = _keep_mask(where, x.shape[:-1], batch_axis_name)
    x = C.keep(keep[..., None], x, 0.0)
    y = C.keep(keep[..., None], y, 0.0)
    if normalize:
        x, y = _unit(x), _unit(y)
    b = x.shape[-2]
    if batch_axis_name is None:
        x_all, y_all, keep_all, offset = x, y, keep, 0
    else:
        gather = lambda a: lax.all_gather(a, batch_axis_name, axis=a.ndim - 2, tiled=True)  # noqa: E731
        x_all, y_all = gather(x), gather(y)
        keep_all = lax.all_gather(keep, batch_axis_name, axis=keep.ndim - 1, tiled=True)
        offset = lax.axis_index(batch_axis_name) * b
    own = jnp.arange(b) + offset  # the global index of this device's pairs
    # A dropped pair's own entry stays in its row, so every row has a finite logit; its
    # loss is then discarded by the mask.
    columns = keep_all[..., None, :] | (jnp.arange(keep_all.shape[-1]) == own[:, None])

    def cross_entropy(a, b_all):  # rows of a against all of b: log Σ_j e^{s_ij} − s_ii
        s = _similarity(a, b_all) * scale
        diag = jnp.take_along_axis(s, jnp.broadcast_to(own[:, None], s.shape[:-1] + (1,)), -1)
        lse = jax.nn.logsumexp(jnp.where(columns, s, -jnp.inf), axis=-1)
        return lse - diag[..., 0]

    loss = 0.5 * (cross_entropy(x, y_all) + cross_entropy(y, x_all))
    return C.reduce(
        loss, where=where, weights=weights, reduction=reduction, axis_name=batch_axis_name
    )


# --------------------------------------------------------------------------------------
# SigLIP
# --------------------------------------------------------------------------------------


def _siglip_block(x, y, keep_y, t, bias, positive: bool):
    """Σ_j −log σ(z_ij(t⟨x_i, y_j⟩ + b)) over the kept columns of one block: [..., b]."""
    u = _similarity(x, y) * t + bias
    label = jnp.eye(u.shape[-1], dtype=u.dtype) if positive else 0.0
    terms = N.binary_logit_nll(u, label)
    return jnp.sum(jnp.where(keep_y[..., None, :], terms, 0.0), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(axis_name, x, y, keep, t, bias):
    """Row sums of this device's x against every chunk of y, passed around the ring.

    Step 0 uses the device's own chunk (which holds the positives, on the diagonal);
    then S − 1 times the chunks move one device along the ring (``ppermute``) and the
    next block is added. Only one [b, D] chunk and one [b, b] block exist at a time.
    """
    return _ring_fwd(axis_name, x, y, keep, t, bias)[0]


def _shift(axis_name, *arrays):
    size = lax.axis_size(axis_name)
    perm = [(i, (i + 1) % size) for i in range(size)]
    return tuple(lax.ppermute(a, axis_name, perm) for a in arrays)


def _ring_fwd(axis_name, x, y, keep, t, bias):
    loss = _siglip_block(x, y, keep, t, bias, True)

    def step(_, carry):
        y_c, keep_c, acc = carry
        y_c, keep_c = _shift(axis_name, y_c, keep_c)
        return y_c, keep_c, acc + _siglip_block(x, y_c, keep_c, t, bias, False)

    size = lax.axis_size(axis_name)
    _, _, loss = lax.fori_loop(1, size, step, (y, keep, loss))
    return loss, (x, y, keep, t, bias)


def _ring_bwd(axis_name, residuals, g):
    """The same ring again: each block is recomputed and differentiated; the gradient of
    a y chunk travels with it and is sent home by one last ``ppermute``."""
    x, y, keep, t, bias = residuals

    def block_vjp(y_c, keep_c, positive):
        f = lambda x, y_c, t, bias: _siglip_block(x, y_c, keep_c, t, bias, positive)  # noqa: E731
        return jax.vjp(f, x, y_c, t, bias)[1](g)

    dx, dy, dt, db = block_vjp(y, keep, True)

    def step(_, carry):
        y_c, keep_c, dy_c, dx, dt, db = carry
        y_c, keep_c, dy_c = _shift(axis_name, y_c, keep_c, dy_c)
        gx, gy, gt, gb = block_vjp(y_c, keep_c, False)
        return y_c, keep_c, dy_c + gy, dx + gx, dt + gt, db + gb

    size = lax.axis_size(axis_name)
    _, _, dy, dx, dt, db = lax.fori_loop(1, size, step, (y, keep, dy, dx, dt, db))
    (dy,) = _shift(axis_name, dy)  # the chunk from device k + 1 goes home
    return dx, dy, None, dt, db


_ring.defvjp(_ring_fwd, _ring_bwd)


def siglip_loss(
    x: ArrayLike,
    y: ArrayLike,
    *,
    logit_scale: ArrayLike,
    logit_bias: ArrayLike,
    normalize: bool = True,
    batch_axis_name: Hashable | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """SigLIP's pairwise sigmoid loss, per row: every (x_i, y_j) is a binary classification.

        u_ij = t·⟨x̂_i, ŷ_j⟩ + b,   t = exp(logit_scale),   z_ij = +1 if i = j else −1
        ℓ_i = Σ_j −log σ(z_ij·u_ij) = Σ_j softplus(−z_ij·u_ij)

    The paper's loss, −(1/B) Σ_i Σ_j log σ(z_ij·u_ij), is ``reduction="mean"``: ℓ_i is
    its inner sum, the terms of row x_i against every y_j (so ``weights`` weight rows).
    ``where=False`` removes pair i entirely: its row and its column leave the sum.

    Across devices: inside ``jax.shard_map`` with the batch split over
    ``batch_axis_name``, each device keeps its b = B/S rows of x and passes its chunk of
    y around the ring of devices with ``ppermute`` (S − 1 steps), adding one [b, b] block
    per step, as the SigLIP paper describes; the backward pass runs the ring again,
    recomputing each block, and the gradient of each y chunk travels with it. No device
    holds all of y or a [b, B] block, and values and gradients equal the single-device
    ones on the whole batch. Under plain ``jit`` with a sharded batch, leave
    ``batch_axis_name`` None. (The ring version supports reverse-mode differentiation
    only; keep ``shard_map``'s ``check_vma=True``, the default.)

    Args:
      x: floating ``[..., B, D]`` (e.g. image embeddings).
      y: floating, same shape as ``x``; y_i is the positive of x_i.
      logit_scale: t′ = log t, a scalar (the paper initializes it to log 10).
      logit_bias: b, a scalar (the paper initializes it to −10).
      normalize: L2-normalize x and y along D first (default True; a zero vector stays 0).
      batch_axis_name: inside ``shard_map``, the mesh axis (or tuple of axes) the batch
        is split over, in the order of ``lax.axis_index``; None on one device.
      where: optional boolean mask ``[..., B]``; False removes a pair from the batch.
      weights: optional non-negative per-row weights ``[..., B]``.
      reduction: ``"none"`` (per row), ``"sum"`` or ``"mean"``.

    Returns:
      ``[..., B]`` (this device's ``[..., b]`` under ``shard_map``) for ``"none"``,
      else a scalar; float32, or float64 for float64 input.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> y = jnp.array([[0.9, 0.1], [0.2, 1.0], [1.0, 0.8]])
      >>> jaxloss.siglip_loss(x, y, logit_scale=jnp.log(10.0), logit_bias=-5.0).tolist()
      [2.92114, 1.52783, 6.23036]

    References:
      Zhai et al., "Sigmoid loss for language image pre-training" (SigLIP, 2023),
      Algorithm 1 and §3.3 (the chunked, device-ring implementation).
    """
    C.check_batch_axis_name("siglip_loss", batch_axis_name)
    scalars = {"logit_scale": logit_scale, "logit_bias": logit_bias}
    for k, v in scalars.items():
        if v is None:
            raise TypeError(f"`{k}` is required, got None (the paper starts at log 10 and −10).")
    scalars = {k: C.as_float(k, v, allow_int=True) for k, v in scalars.items()}
    x, y, where, weights, dtype = _pair(x, y, where, weights, reduction, scalars)
    explicit = _explicit_batch(x) if batch_axis_name is None else None
    if explicit is not None:
        loss = functools.partial(siglip_loss, normalize=normalize)
        return _per_device(loss, *explicit, x, y, where, weights, scalars, reduction)
    t = jnp.exp(_scalar("logit_scale", logit_scale, dtype))
    bias = _scalar("logit_bias", logit_bias, dtype)

    keep = _keep_mask(where, x.shape[:-1], batch_axis_name)
    x = C.keep(keep[..., None], x, 0.0)
    y = C.keep(keep[..., None], y, 0.0)
    if normalize:
        x, y = _unit(x), _unit(y)
    if batch_axis_name is None:
        loss = _siglip_block(x, y, keep, t, bias, True)
    else:
        vary = lambda a: _varying(a, batch_axis_name)  # noqa: E731
        loss = _ring(batch_axis_name, vary(x), vary(y), keep, vary(t), vary(bias))
    return C.reduce(
        loss, where=where, weights=weights, reduction=reduction, axis_name=batch_axis_name
    )
