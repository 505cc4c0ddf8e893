"""Flax helpers: ``jaxloss.flax``, auxiliary losses produced inside NNX and Linen modules.

A layer records a scalar loss term with `sow_aux_loss`; the training step collects them
with `capture_aux_losses` (NNX) or from the ``"aux_loss"`` collection of
``Module.apply(..., mutable=["aux_loss"])`` with `sum_aux_losses` (Linen). Then
`jaxloss.combine_losses` weights them against the task loss.

How values are combined, exactly: every value sown under a name is a scalar, and the
collected value of the name is the plain **sum** over every module that sowed it and
every call of those modules (a layer called twice contributes twice). Nothing is
averaged; average inside the layer (e.g. over the batch) before sowing if that is what
you want.

Importing this module imports flax (``pip install "jaxloss[flax]"``); ``import jaxloss``
does not, and the penalties, masks and transforms work on Flax parameters without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax

try:
    from flax import nnx
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "`jaxloss.flax` needs flax (>= 0.12.6): `pip install 'jaxloss[flax]'`. The rest of "
        "jaxloss works without it."
    ) from err

from jaxloss import _conventions as C
from jaxloss._regularization import path_string

__all__ = ["AUX_LOSS_COLLECTION", "AuxLoss", "sow_aux_loss", "capture_aux_losses", "sum_aux_losses"]

AUX_LOSS_COLLECTION = "aux_loss"
"""The Linen collection that `sow_aux_loss` writes to: pass it to ``apply(mutable=...)``."""


class AuxLoss(nnx.Intermediate):
    """The NNX variable type under which `sow_aux_loss` records loss terms.

    A subclass of ``nnx.Intermediate``, so filters on intermediates include it, while
    ``nnx.capture(fn, AuxLoss)`` collects only the loss terms.
    """


def _check_value(name: Any, value: Any) -> jax.Array:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got {name!r}.")
    value = C.as_float("value", value)
    if value.shape != ():
        raise ValueError(
            f"`value` of the auxiliary loss {name!r} must be a scalar, got shape {value.shape}. "
            "Reduce it in the layer (sum or mean, as you intend); collected values are summed."
        )
    return value


def sow_aux_loss(module: Any, name: str, value: Any) -> bool:
    """Record a scalar auxiliary loss term from inside a Flax module.

    NNX: stored as an `AuxLoss` variable, collected by `capture_aux_losses` (or
    ``nnx.capture(fn, AuxLoss)``). Outside such a capture nothing is recorded and
    ``False`` is returned, so the same model runs unchanged at evaluation time.

    Linen: sown into the ``"aux_loss"`` collection (`AUX_LOSS_COLLECTION`), recorded
    only when ``apply`` is given ``mutable=["aux_loss"]``; collect with `sum_aux_losses`.
    Nothing is sown while a module is initializing (``init`` would otherwise return the
    init-time terms in its variables, and ``apply`` given those whole variables would
    add them to the new ones), so ``init``'s variables can be passed to ``apply`` as
    they are; ``False`` is returned there.

    Each call appends the value; collection sums all of them (see the module docstring).

    Args:
      module: the calling module, ``self`` (an ``nnx.Module`` or a Linen ``nn.Module``).
      name: the term's name, the key of the collected dict.
      value: a floating scalar.

    Returns:
      Whether the value was recorded.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxloss.flax
      >>> class Scale(nnx.Module):
      ...     def __init__(self):
      ...         self.w = nnx.Param(jnp.array(2.0))
      ...     def __call__(self, x):
      ...         y = self.w * x
      ...         jaxloss.flax.sow_aux_loss(self, "activation_l2", jnp.sum(y**2))
      ...         return y
      >>> model = Scale()
      >>> y, losses = jaxloss.flax.capture_aux_losses(model)(jnp.array([1.0, 1.0]))
      >>> losses
      {'activation_l2': Array(8., dtype=float32)}
    """
    value = _check_value(name, value)
    if isinstance(module, nnx.Module):
        # nnx.capture marks the modules it collects from with `__captures__`; outside a
        # capture, Module.sow would store an attribute on the module (deprecated in flax).
        if getattr(module, "__captures__", None) is None:
            return False
        return bool(module.sow(AuxLoss, name, value))
    linen = sys.modules.get("flax.linen")
    if linen is not None and isinstance(module, linen.Module):
        if module.is_initializing():
            return False
        return bool(module.sow(AUX_LOSS_COLLECTION, name, value))
    raise TypeError(
        f"`module` must be a Flax NNX or Linen module (pass `self`), got {type(module).__name__}."
    )


def _is_record(x: Any) -> bool:
    return isinstance(x, (tuple, nnx.Variable))


def sum_aux_losses(collection: Any, *, by: str = "name") -> dict[str, jax.Array]:
    """Sum the auxiliary losses in a collection, per name (or per module path).

        loss[name] = Σ_modules Σ_calls value

    Args:
      collection: what was sown: the NNX ``State`` of `AuxLoss` variables that
        ``nnx.capture(fn, AuxLoss)`` returns, or the Linen collection
        ``mutated["aux_loss"]`` from ``apply(..., mutable=["aux_loss"])``.
      by: ``"name"`` sums each name over all modules; ``"path"`` keeps one entry per
        module and name, keyed by the path (``"layers/0/attn/kl"``), summed over calls.

    Returns:
      A dict from name (or path) to the summed scalar (float32, or float64 for float64
      values), in the order the collection flattens in.

    Example:
      >>> import jax.numpy as jnp, jaxloss.flax
      >>> linen_collection = {"Block_0": {"kl": (jnp.array(1.0), jnp.array(2.0))},
      ...                     "Block_1": {"kl": (jnp.array(0.5),)}}
      >>> jaxloss.flax.sum_aux_losses(linen_collection)
      {'kl': Array(3.5, dtype=float32)}
    """
    if by not in ("name", "path"):
        raise ValueError(f'`by` must be "name" or "path", got {by!r}.')
    if isinstance(collection, Mapping) and AUX_LOSS_COLLECTION in collection:
        raise ValueError(
            f"`collection` has a key {AUX_LOSS_COLLECTION!r}: pass the collection itself, "
            f"`mutated[{AUX_LOSS_COLLECTION!r}]`, not the dict of all mutated collections."
        )
    totals: dict[str, jax.Array] = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(collection, is_leaf=_is_record)
    for path, record in flat:
        path = path_string(path)
        values = record.get_value() if isinstance(record, nnx.Variable) else record
        values = values if isinstance(values, tuple) else (values,)
        key = path.rsplit("/", 1)[-1] if by == "name" else path
        for v in values:
            v = _check_value(key, v)
            v = v.astype(C.compute_dtype(v))
            totals[key] = v if key not in totals else totals[key] + v
    return totals


def capture_aux_losses(
    fn: Callable[..., Any], *, by: str = "name"
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """Wrap an NNX forward pass so it also returns the auxiliary losses its modules sow.

    Built on ``nnx.capture(fn, AuxLoss)``; the sums follow `sum_aux_losses`. Use it inside
    the loss function that ``nnx.value_and_grad`` or ``jax.jit`` traces, so the sown terms
    are part of the differentiated computation.

    Args:
      fn: an ``nnx.Module`` (its ``__call__``), a bound method of one, or a function whose
        first argument is the module.
      by: ``"name"`` or ``"path"``, as in `sum_aux_losses`.

    Returns:
      A function with ``fn``'s signature returning ``(result, losses)``, ``losses`` a dict
      from name to summed scalar (empty if nothing was sown).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxloss.flax
      >>> class Penalize(nnx.Module):
      ...     def __call__(self, x):
      ...         jaxloss.flax.sow_aux_loss(self, "size", jnp.sum(jnp.abs(x)))
      ...         return x
      >>> layer = Penalize()
      >>> def forward(layer, x):
      ...     return layer(layer(x))  # called twice: both terms are added
      >>> _, losses = jaxloss.flax.capture_aux_losses(forward)(layer, jnp.array([1.0, -2.0]))
      >>> losses
      {'size': Array(6., dtype=float32)}
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be an NNX module or a callable, got {fn!r}.")
    captured = nnx.capture(fn, AuxLoss)

    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, jax.Array]]:
        result, state = captured(*args, **kwargs)
        return result, sum_aux_losses(state, by=by)

    return wrapper
