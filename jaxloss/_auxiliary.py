"""Named, weighted loss terms: the total to differentiate and a breakdown to log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _conventions as C


def combine_losses(
    terms: Mapping[str, Any],
    *,
    weights: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Add named scalar loss terms with weights; return the total and each term's value.

        total = Σ_k λ_k · ℓ_k          (λ_k = weights[k], 1 when not given)

    The breakdown holds each term's *unweighted* value ℓ_k (what one logs and compares
    across runs), in the order of ``terms``. The result is ``(total, breakdown)``, the
    ``(loss, aux)`` pair that ``jax.value_and_grad(..., has_aux=True)`` expects. Terms are
    added as given: nothing is averaged; reduce each term to a scalar first (e.g. with
    ``reduction="mean"``).

    Args:
      terms: a mapping from a name to a scalar loss (array of shape ``()`` or a number).
      weights: optional mapping from some of those names to their weight λ_k (numbers or
        traced scalars; negative ones are allowed, e.g. for an entropy bonus); a name that
        is not in ``terms`` is an error (it is likely a typo).

    Returns:
      ``(total, breakdown)``: the total, a scalar of the terms' compute dtype (float32, or
      float64 when a term is float64), and a dict from name to that term's value in the
      same dtype.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> total, logs = jaxloss.combine_losses(
      ...     {"nll": jnp.array(2.0), "kl": jnp.array(0.5)}, weights={"kl": 0.1})
      >>> total
      Array(2.05, dtype=float32)
      >>> logs["kl"]
      Array(0.5, dtype=float32)
    """
    if not isinstance(terms, Mapping):
        raise TypeError(
            f"`terms` must be a mapping from names to scalar losses, got {type(terms).__name__}."
        )
    weights = {} if weights is None else weights
    if not isinstance(weights, Mapping):
        raise TypeError(f"`weights` must be a mapping from term names to weights, got {weights!r}.")
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(
            f"`weights` names terms that are not in `terms`: {unknown}; terms are {list(terms)}."
        )
    values = {}
    for name, value in terms.items():
        if not isinstance(name, str):
            raise TypeError(f"`terms` keys must be strings, got {name!r}.")
        value = C.as_float(f"terms[{name!r}]", value, allow_int=True)
        if value.shape != ():
            raise ValueError(
                f"`terms[{name!r}]` must be a scalar, got shape {value.shape}. Reduce it first "
                "(e.g. `reduction='mean'`); terms are never averaged implicitly."
            )
        values[name] = value
    dtype = C.compute_dtype(*values.values())
    breakdown = {k: v.astype(dtype) for k, v in values.items()}
    total = jnp.zeros((), dtype)
    for name, value in breakdown.items():
        total = total + (value * weights[name] if name in weights else value)
    return total.astype(dtype), breakdown
