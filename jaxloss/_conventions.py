"""The conventions every jaxloss loss follows, in one place.

Each public loss does the same four things, with the helpers below:

1. ``as_float`` / ``as_labels``: turn each input into an array once, check its dtype, and
   promote bf16/f16 to float32 (``compute_dtype``) so low precision is never silently
   computed in low precision.
2. ``loss_shape`` and ``check_*``: validate shapes (the shape rule: the per-element loss
   has the shape of the predictions, the other inputs only broadcast to it),
   ``reduction``, ``where``, ``weights`` and hyperparameters given as Python numbers, at
   trace time, with a message that names the argument and shows what came in.
3. ``keep``: replace masked-out inputs by a harmless value *before* the unsafe
   operation ("double where"), so masked elements get exactly zero gradient even when
   their inputs are NaN or inf.
4. ``reduce``: apply ``where``/``weights`` and ``reduction``; a mean over nothing is 0,
   a NaN weight gives NaN.

See ``docs/conventions.md`` for the user-facing statement of these rules.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

REDUCTIONS = ("none", "sum", "mean")

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"an array of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(x).__name__} {x!r}"


def compute_dtype(*arrays: Array) -> jnp.dtype:
    """The dtype a loss computes and returns in: float32, or float64 for float64 input."""
    # result_type on the arrays themselves honours weak types: a Python-number
    # hyperparameter never promotes float32 inputs to float64 under jax_enable_x64.
    floats = [a for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    dtype = jnp.result_type(*floats) if floats else jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def as_float(name: str, x: ArrayLike | None, *, allow_int: bool = False) -> Array:
    """``x`` as a floating array; integers only where ``allow_int`` (e.g. targets, counts)."""
    if x is None:
        raise TypeError(f"`{name}` is required, got None.")
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"`{name}` must be an array or a number, got {_describe(x)}.") from err
    if jnp.issubdtype(arr.dtype, jnp.floating):
        return arr
    if allow_int and (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
        return arr.astype(jnp.float32)
    raise TypeError(
        f"`{name}` must be a floating-point array, got {_describe(arr)}. "
        f"Cast it first, e.g. `{name}.astype(jnp.float32)`."
    )


def as_labels(name: str, x: ArrayLike) -> Array:
    """``x`` as an integer array of class ids."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be an integer array of class ids, got {_describe(arr)}.")
    return arr


def check_ignore_index(ignore_index: Any) -> None:
    """``ignore_index`` must be None or an int class id (not a bool, not a float)."""
    if ignore_index is None:
        return
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"`ignore_index` must be an int class id (e.g. -100) or None, got {ignore_index!r}."
        )


def kept(
    where: Array | None, labels: Array | None, ignore_index: int | None, shape: Sequence[int]
) -> Array | None:
    """Where an entry is kept, broadcast to ``shape``: ``where`` (True = keep) and its label
    not ``ignore_index``; None when every entry is kept."""
    keep = where
    ignored = None if labels is None else is_ignored(labels, ignore_index)
    if ignored is not None:
        keep = ~ignored if keep is None else keep & ~ignored
    return None if keep is None else jnp.broadcast_to(keep, tuple(shape))


def is_ignored(labels: Array, ignore_index: int | None) -> Array | None:
    """Where integer ``labels`` equal ``ignore_index`` (None: no ``ignore_index``).

    Compared in the labels' own dtype when ``ignore_index`` fits it; an id the dtype
    cannot hold (−100 for uint8 labels) matches no label.
    """
    if ignore_index is None:
        return None
    info = jnp.iinfo(labels.dtype)
    if not info.min <= ignore_index <= info.max:
        return jnp.zeros(labels.shape, bool)
    return labels == jnp.asarray(ignore_index, labels.dtype)


def check_class_ids(labels: Array, ignore_index: int | None, where: Array | None = None) -> None:
    """Reject concrete negative class ids that are not ``ignore_index`` nor masked out.

    PyTorch pads labels with −100 and ignores them by default; here a negative id
    without ``ignore_index`` would give NaN, so where the labels (and ``where``) are
    concrete, not traced, it raises, naming the fix. Under ``jit`` the documented NaN
    stays.
    """
    if isinstance(labels, jax.core.Tracer) or isinstance(where, jax.core.Tracer):
        return
    values = np.asarray(labels)
    bad = values < 0
    if ignore_index is not None:
        bad &= values != ignore_index
    if where is not None:
        bad = bad & np.asarray(where)
    if not bad.any():
        return
    found = sorted({int(v) for v in values[bad].ravel()[:1000]})[:3]
    if ignore_index is None:
        raise ValueError(
            f"`labels` hold negative class ids {found} and `ignore_index` is None. Class ids "
            "lie in [0, C); PyTorch pads labels with -100 and ignores them by default, "
            "jaxloss does not. Pass `ignore_index=-100` (or your padding id), or drop them "
            "with `where=labels >= 0`."
        )
    raise ValueError(
        f"`labels` hold negative class ids {found} other than `ignore_index={ignore_index}`. "
        "Class ids lie in [0, C); drop the others with `where=` or map them to the "
        "ignored id."
    )


def check_probabilities(
    hint: str,
    where: Array | None = None,
    *,
    axis: int | None = None,
    atol: float = 0.0,
    **named: Array,
) -> None:
    """Reject a concrete probability argument with a negative entry, with ``hint``.

    A negative "probability" is almost always a log-probability passed where a
    probability belongs (PyTorch's ``kl_div(log q, p)`` habit); the math would give NaN.
    With ``axis`` the entries along it must also form distributions: a sum off 1 by more
    than ``atol`` raises too (multi-hot labels where a distribution is required). Only
    concrete arrays (not traced) can be inspected; under ``jit`` `probabilities_or_nan`
    makes the result NaN instead. Entries masked out by a concrete ``where`` (broadcast
    against the inputs by the caller) are not inspected.
    """
    if isinstance(where, jax.core.Tracer):
        return
    for name, x in named.items():
        if x is None or isinstance(x, jax.core.Tracer):
            continue
        values = np.asarray(x)
        kept = np.ones(values.shape, bool) if where is None else np.asarray(where)
        bad = (values < 0) & kept
        if bad.any():
            values = np.broadcast_to(values, bad.shape)
            raise ValueError(
                f"`{name}` holds a negative entry ({float(values[bad].min()):.4g}), which is not a "
                f"probability. {hint}"
            )
        if axis is None:
            continue
        total = np.sum(values, axis=axis, keepdims=True)
        off = (np.abs(total - 1.0) > atol) & np.any(kept, axis=axis, keepdims=True)
        if off.any():
            found = float(np.broadcast_to(total, off.shape)[off][0])
            raise ValueError(
                f"`{name}` holds a vector that sums to {found:.4g} along axis {axis}, which "
                f"is not a probability distribution. {hint}"
            )


def probabilities_or_nan(x: Array, *, axis: int | None = None, atol: float = 0.0) -> Array:
    """``x`` with NaN in place of what is not a probability, for values `check_probabilities`
    cannot inspect (traced): a negative entry or, with ``axis``, every entry of a vector
    along ``axis`` that has a negative entry or a sum off 1 by more than ``atol``.

    The NaN reaches the value and the gradient of the loss built on ``x``, never a
    plausible number. Apply it before masked-out rows are replaced (`keep`), so that a
    dropped row is not inspected.
    """
    bad = x < 0
    if axis is not None:
        off = jnp.abs(jnp.sum(x, axis=axis, keepdims=True) - 1.0) > atol
        bad = jnp.any(bad, axis=axis, keepdims=True) | off
    return jnp.where(bad, jnp.nan, x)


def cast(dtype: jnp.dtype, *arrays: Array) -> tuple[Array, ...]:
    return tuple(a.astype(dtype) for a in arrays)


def broadcast_shape(**named: Any) -> tuple[int, ...]:
    """The common broadcast shape of the named arrays (``None`` entries are skipped)."""
    shapes = {k: tuple(jnp.shape(v)) for k, v in named.items() if v is not None}
    try:
        return tuple(jnp.broadcast_shapes(*shapes.values()))
    except ValueError:
        listing = ", ".join(f"`{k}` {s}" for k, s in shapes.items())
        raise ValueError(
            f"Shapes do not broadcast: {listing}. Every argument must broadcast to one shape."
        ) from None


def loss_shape(prediction: str | None, **named: Any) -> tuple[int, ...]:
    """The shape of the per-element loss, enforcing the shape rule.

    With ``prediction`` (the name of one of ``named``), the loss has the shape of that
    input and every other input (``None`` entries are skipped) must broadcast *to* it:
    an input that would enlarge it (``predictions`` [N, 1] against ``targets`` [N]
    becoming [N, N]) raises a ``ValueError`` naming both shapes and the fix. With
    ``prediction=None`` (inputs with no prediction among them, e.g. the two
    distributions of a divergence) the loss has the broadcast shape of the inputs, which
    must be the shape of one of them: broadcasting may stretch an input, never create a
    shape none of them has.
    """
    shapes = {k: tuple(jnp.shape(v)) for k, v in named.items() if v is not None}
    common = broadcast_shape(**named)
    if prediction is None:
        if shapes and common not in shapes.values():
            listing = ", ".join(f"`{k}` {s}" for k, s in shapes.items())
            raise ValueError(
                f"Broadcasting {listing} would create the shape {common}, which none of them "
                "has: an input has an extra axis of size 1 where another has a real one. "
                "Squeeze that axis (e.g. `x[:, 0]` or `jnp.squeeze(x, -1)`), or broadcast "
                f"explicitly (`jnp.broadcast_to(x, {common})`) if that is intended."
            )
        return common
    shape = shapes[prediction]
    if common != shape:
        other, other_shape = next(
            (k, s) for k, s in shapes.items() if jnp.broadcast_shapes(s, shape) != shape
        )
        raise ValueError(
            f"`{other}` of shape {other_shape} would enlarge the loss beyond the shape of "
            f"`{prediction}` {shape} (to {common}): the per-element loss has the shape of "
            f"`{prediction}`, and the other inputs may only broadcast to it. If "
            f"`{prediction}` has an extra axis of size 1, squeeze it (e.g. "
            f"`{prediction}[:, 0]` or `jnp.squeeze({prediction}, -1)`); if the larger loss "
            f"is intended, broadcast explicitly (`jnp.broadcast_to({prediction}, {common})`)."
        )
    return shape


def _is_concrete_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Reject a non-positive (or non-finite) hyperparameter given as a Python number."""
    if value is None:
        if allow_none:
            return
        raise TypeError(f"`{name}` is required, got None.")
    if _is_concrete_number(value) and not (np.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
    """Reject a Python-number hyperparameter outside the closed interval [low, high]."""
    if _is_concrete_number(value) and not (low <= value <= high):
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value!r}.")


def check_exclusive(**named: Any) -> None:
    given = [k for k, v in named.items() if v is not None]
    if len(given) > 1:
        raise ValueError(f"Pass at most one of {', '.join(f'`{k}`' for k in named)}; got {given}.")


def bound_axis_size(axis_name: Any, error: str) -> int:
    """The number of shards along the mesh axis ``axis_name`` (a name or a tuple of names);
    ``ValueError(error)`` where no such axis is bound (outside ``jax.shard_map``)."""
    try:
        return lax.axis_size(axis_name)
    except NameError:
        raise ValueError(error) from None


def check_batch_axis_name(function: str, batch_axis_name: Any) -> None:
    """A ``batch_axis_name`` that names no bound mesh axis (plain ``jit``, say) is an error
    that says what the argument is for, instead of JAX's unbound-axis error from a
    collective deep inside the loss."""
    if batch_axis_name is not None:
        bound_axis_size(
            batch_axis_name,
            f"`{function}` was called with batch_axis_name={batch_axis_name!r}, but no mesh "
            "axis of that name is bound here: `batch_axis_name` names the mesh axis (or axes) "
            "that the batch is split over inside `jax.shard_map`, where the loss forms the "
            "global reduction with collectives. Under plain `jax.jit` with a sharded batch, "
            "leave it None: XLA forms the global reduction itself.",
        )


def check_reduction(reduction: Any) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_broadcastable(name: str, x: Array, shape: Sequence[int]) -> None:
    try:
        out = jnp.broadcast_shapes(x.shape, tuple(shape))
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(
            f"`{name}` of shape {x.shape} does not broadcast to the loss shape {tuple(shape)}."
        )


def check_where(where: ArrayLike | None, shape: Sequence[int]) -> Array | None:
    """Validate the boolean mask ``where`` (True = keep) against the loss shape."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"`where` must be a boolean mask (True = keep), got {_describe(where)}. "
            "Use e.g. `where=mask.astype(bool)` or `where=labels != pad_id`."
        )
    _check_broadcastable("where", where, shape)
    return where


def check_weights(weights: ArrayLike | None, shape: Sequence[int]) -> Array | None:
    """Validate non-negative ``weights`` against the loss shape."""
    if weights is None:
        return None
    weights = jnp.asarray(weights)
    if not jnp.issubdtype(weights.dtype, jnp.number) or jnp.iscomplexobj(weights):
        raise TypeError(f"`weights` must be a numeric array, got {_describe(weights)}.")
    _check_broadcastable("weights", weights, shape)
    if not isinstance(weights, jax.core.Tracer):
        if bool(np.any(np.asarray(weights) < 0)):
            raise ValueError("`weights` must be non-negative; got a negative entry.")
    return weights


def prepare(
    shape: Sequence[int], where: ArrayLike | None, weights: ArrayLike | None, reduction: Any
) -> tuple[Array | None, Array | None]:
    """Validate the three convention arguments of a loss whose per-element shape is ``shape``."""
    check_reduction(reduction)
    return check_where(where, shape), check_weights(weights, shape)


def float_inputs(
    where: ArrayLike | None,
    weights: ArrayLike | None,
    reduction: Any,
    /,
    *,
    allow_int: Sequence[str] = (),
    symmetric: bool = False,
    **named: ArrayLike | None,
) -> tuple[list[Any], Array | None, Array | None]:
    """Validate and convert the floating inputs of an elementwise loss in one call.

    Each named input (``None`` passes through) becomes an array of the compute dtype
    (``compute_dtype``). The first named input is the prediction: the loss has its shape
    and every other input, ``where`` and ``weights`` must broadcast to it (the shape rule,
    `loss_shape`). ``symmetric=True`` is for inputs with no prediction among them (the
    two sides of a divergence): the loss has their broadcast shape, which must be the
    shape of one of them. Returns ``(arrays, where, weights)`` with the arrays in the
    order given (typed ``Any``: which entries are None depends on the call).
    """
    arrays = {
        k: None if v is None else as_float(k, v, allow_int=k in allow_int) for k, v in named.items()
    }
    present = [a for a in arrays.values() if a is not None]
    dtype = compute_dtype(*present)
    shape = loss_shape(None if symmetric else next(iter(arrays)), **arrays)
    where, weights = prepare(shape, where, weights, reduction)
    return [None if a is None else a.astype(dtype) for a in arrays.values()], where, weights


@overload
def keep(where: Array | None, x: Array, fill: float) -> Array: ...
@overload
def keep(where: Array | None, x: None, fill: float) -> None: ...
@overload
def keep(where: Array | None, x: Array | None, fill: float) -> Array | None: ...
def keep(where: Array | None, x: Array | None, fill: float) -> Array | None:
    """``x`` with masked-out entries replaced by ``fill``, so their gradient is exactly 0.

    Masking only the *output* of an unsafe function still propagates NaN into the
    gradient (0 · NaN = NaN); masking its input first does not.
    """
    if where is None or x is None:
        return x
    shape = jnp.broadcast_shapes(where.shape, x.shape)
    return jnp.where(where, jnp.broadcast_to(x, shape), jnp.asarray(fill, x.dtype))


def drop_unweighted(values: Array, weights: Array) -> Array:
    """``values`` with 0 where ``weights`` is 0: a weight of 0 removes its term, as `where`
    does. 0·ℓ would be NaN for an infinite ℓ (an impossible CTC alignment), and the
    product's gradient in the weight would be ℓ; zeroed before the product (double
    where), while a NaN weight stays NaN. The one rule for `reduce` and the fused
    engine's weighted sums."""
    return jnp.where(weights == 0, 0, values)


def reduce(
    loss: Array,
    *,
    where: Array | None = None,
    weights: Array | None = None,
    reduction: str = "none",
    denominator: Array | None = None,
    axis_name: Any = None,
) -> Array:
    """Apply the mask, the weights and the reduction to an elementwise loss.

    ``"none"`` returns the loss with masked-out entries set to 0 (times ``weights``; an
    entry of weight 0 is 0, with zero gradient, as a masked-out one, even where ℓ is
    inf or NaN);
    ``"sum"`` returns Σ w·ℓ over kept entries; ``"mean"`` returns Σ w·ℓ / Σ w·d over kept
    entries, where ``denominator`` d (default 1) is a per-element weight the caller has
    already applied inside ℓ (a class weight ω_y: PyTorch's mean divides by Σ ω_y). A
    mean over nothing (no kept entry, or zero total weight) is 0 with zero gradient; a
    NaN total weight (a NaN weight, or a class weight read at an out-of-range label)
    gives NaN, never 0. With ``axis_name`` (inside ``shard_map``, the mesh axes the
    entries are split over) the sums are taken over every device's entries.
    """
    check_reduction(reduction)
    w = None
    if weights is not None:
        w = jnp.broadcast_to(weights.astype(loss.dtype), loss.shape)
    if where is not None:
        mask = jnp.broadcast_to(where, loss.shape)
        loss = jnp.where(mask, loss, 0)
        w = jnp.where(mask, 1 if w is None else w, 0).astype(loss.dtype)
    if w is not None:
        loss = drop_unweighted(loss, w) * w
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if axis_name is not None:
        total = lax.psum(total, axis_name)
    if reduction == "sum":
        return total
    d = None
    if denominator is not None:
        d = jnp.broadcast_to(denominator.astype(loss.dtype), loss.shape)
        if where is not None:
            d = jnp.where(mask, d, 0)
    if w is not None and d is not None:
        count = jnp.sum(w * d)
    elif w is not None:
        count = jnp.sum(w)
    elif d is not None:
        count = jnp.sum(d)
    else:
        count = jnp.asarray(loss.size, loss.dtype)
    if axis_name is not None:
        count = lax.psum(count, axis_name)
    # `count == 0`, not `count > 0`: a NaN count must reach the result, not select 0.
    empty = count == 0
    return jnp.where(empty, 0, total / jnp.where(empty, 1, count)).astype(loss.dtype)


def check_fits(pred_name: str, pred_shape: Sequence[int], **named: Any) -> None:
    """``loss_shape``'s shape rule for a caller that holds the predictions' shape only."""
    loss_shape(
        pred_name, **{pred_name: jax.ShapeDtypeStruct(tuple(pred_shape), jnp.float32)}, **named
    )
