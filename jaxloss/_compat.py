"""What differs between the JAX (and Flax) releases jaxloss supports, in one place.

The supported range is stated in the README ("Supported versions") and pinned, at its
lower end, in ``.ci/lowest-versions.txt``, against which CI runs the whole test suite a
second time. Every workaround for an older release lives here, keyed on the release that
made it unnecessary, so that it can be deleted when the lower bound moves past it; on
the newest releases each one is the plain call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# jax 0.10.0: a scan's transpose reads which of its inputs are linear from the inputs
# themselves. Before it, the scan recorded them when traced, and one traced inside a
# `jax.custom_jvp` rule (as a tangent map) recorded none: reverse mode then failed with
# "ValAccum ... is not a valid JAX type".
_SCAN_TRANSPOSE_READS_INPUTS = jax.__version_info__ >= (0, 10, 0)


def linear_call(fn: Callable[..., Any], *tangents: Any) -> Any:
    """``fn(*tangents)`` for a ``fn`` that is linear in its arguments (pytrees, ``None``
    allowed), traced so that every supported JAX can transpose the loops inside it.

    On JAX before 0.10 it is evaluated as the tangent of ``fn`` at zero: the same
    value, but built by ``jax.jvp``, which marks the loop's tangent inputs linear.
    """
    if _SCAN_TRANSPOSE_READS_INPUTS:
        return fn(*tangents)
    zeros = jax.tree.map(jnp.zeros_like, tangents)
    return jax.jvp(fn, zeros, tangents)[1]


def nnx_as_pure(tree: Any) -> Any:
    """``flax.nnx.as_pure(tree)``: the tree with each ``nnx.Variable`` replaced by its value
    (what ``nnx.Optimizer`` hands to optax). flax 0.12.7 renamed it from ``nnx.pure``,
    which now warns."""
    from flax import nnx

    as_pure = getattr(nnx, "as_pure", None) or nnx.pure
    return as_pure(tree)
