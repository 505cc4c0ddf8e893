"""Optax gradient transformations for regularization: ``jaxloss.transforms``.

- `add_penalty_gradient` adds α∇Ω(W) to the updates (the gradient of any jaxloss
  penalty); placed before the optimizer's scaling, as ``optax.add_decayed_weights`` is.
- `proximal_l1` and `proximal_group_lasso` apply the exact proximal step of α‖W‖₁ or of
  the group lasso; placed last in an ``optax.chain``, after the step that scales by the
  learning rate, they make weights and whole groups exactly zero, which no subgradient
  step does.

All work inside ``optax.chain``, under ``optax.inject_hyperparams`` and with
``flax.nnx.Optimizer``. ``inject_hyperparams`` treats every callable argument as a
schedule and every number as an array-valued hyperparameter, so name ``penalty``, a
callable ``mask`` and ``group_axis`` in its ``static_args``. Masks are those of
`jaxloss.resolve_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxloss import _conventions as C
from jaxloss import _numerics as N
from jaxloss import _regularization as R

__all__ = ["add_penalty_gradient", "proximal_l1", "proximal_group_lasso", "RegularizerState"]

_NO_PARAMS = (
    "This transformation needs the current parameters: call `update(updates, state, params)`."
)


class RegularizerState(NamedTuple):
    """State of the jaxloss transforms: the number of updates so far (for schedules)."""

    # Shadows tuple.count, as optax's states' `count` fields do; the name is public API.
    count: jax.Array  # type: ignore[assignment]


def _value(x: optax.ScalarOrSchedule, count: jax.Array) -> Any:
    return x(count) if callable(x) else x


def _check_schedule_or_number(name: str, x: Any, *, positive: bool) -> None:
    if callable(x):
        return
    if x is None:
        raise TypeError(f"`{name}` is required, got None.")
    if positive:
        C.check_positive(name, x)
    elif C._is_concrete_number(x) and not (math.isfinite(x) and x >= 0):
        raise ValueError(f"`{name}` must be a non-negative finite number, got {x!r}.")


def _init(params: Any) -> RegularizerState:
    del params
    return RegularizerState(count=jnp.zeros([], jnp.int32))


def _flat_aligned(updates: Any, params: Any) -> tuple[list, list, Any]:
    """The leaves of ``updates`` and ``params`` (NNX variables looked through), aligned."""
    u_leaves, u_def = jax.tree.flatten(updates)
    p_leaves = jax.tree.leaves(params)
    if len(u_leaves) != len(p_leaves):
        raise ValueError(
            f"`updates` has {len(u_leaves)} leaves but `params` has {len(p_leaves)}; they must "
            "have the same structure."
        )
    return u_leaves, p_leaves, u_def


def add_penalty_gradient(
    penalty: Callable[..., jax.Array],
    alpha: optax.ScalarOrSchedule,
    *,
    mask: R.Mask = None,
) -> optax.GradientTransformation:
    """Add α times the gradient of a penalty of the parameters to the updates.

        u ← u + α · ∇Ω(W)

    Placed before the optimizer's scaling, e.g. ``optax.chain(add_penalty_gradient(
    jaxloss.l2_penalty, α), optax.sgd(η))``, one step is w ← w − η(∇ℒ + α∇Ω), which is
    SGD on `jaxloss.penalized`'s objective ℒ + α·Ω. For `jaxloss.l2_penalty`, ∇Ω = w and
    this is ``optax.add_decayed_weights(α)``: the SGD step is the seed's weight decay
    w ← (1 − ηα)·w − η∇ℒ. Placed after Adam's scaling instead, it is AdamW's decoupled
    decay (for L2).

    Args:
      penalty: Ω, called as ``penalty(params, mask=mask)`` (without ``mask`` when it is
        None): a jaxloss penalty or e.g. ``functools.partial(group_lasso_penalty,
        group_axis=-1)``. Only floating leaves are differentiated.
      alpha: α ≥ 0, a number or an optax schedule of the step count.
      mask: which leaves to penalize (see `jaxloss.resolve_mask`); the others' updates are
        unchanged.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, jaxloss
      >>> tx = optax.chain(
      ...     jaxloss.transforms.add_penalty_gradient(jaxloss.l2_penalty, 0.1), optax.sgd(1.0))
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> updates["w"]  # −η·α·w
      Array([-0.1,  0.2], dtype=float32)
    """
    if not callable(penalty):
        raise TypeError(f"`penalty` must be callable, got {penalty!r}.")
    _check_schedule_or_number("alpha", alpha, positive=False)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        leaves, treedef = jax.tree.flatten(params)
        where = [i for i, x in enumerate(leaves) if R._is_float(x)]

        def omega(values):
            full = list(leaves)
            for i, v in zip(where, values, strict=True):
                full[i] = v
            return R._call_penalty(penalty, jax.tree.unflatten(treedef, full), mask)

        grads = jax.grad(omega)([leaves[i] for i in where])
        a = _value(alpha, state.count)
        u_leaves, _, u_def = _flat_aligned(updates, params)
        for i, g in zip(where, grads, strict=True):
            u = jnp.asarray(u_leaves[i])  # a Python-float leaf (as `l2_penalty` accepts)
            u_leaves[i] = u + (a * g).astype(u.dtype)
        new_state = RegularizerState(count=optax.safe_increment(state.count))
        return jax.tree.unflatten(u_def, u_leaves), new_state

    return optax.GradientTransformation(_init, update)


def _proximal(
    name: str,
    prox: Callable[[str, jax.Array, Any], jax.Array],
    alpha: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    mask: R.Mask,
) -> optax.GradientTransformation:
    """A transform that maps the point w + u to prox(w + u, η·α) for every selected leaf."""
    _check_schedule_or_number("alpha", alpha, positive=False)
    _check_schedule_or_number("learning_rate", learning_rate, positive=True)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        selection = R._selection(params, mask)
        u_leaves, p_leaves, u_def = _flat_aligned(updates, params)
        threshold = _value(learning_rate, state.count) * _value(alpha, state.count)
        out = []
        for (path, _, keep), u, p in zip(selection, u_leaves, p_leaves, strict=True):
            if not keep:
                out.append(u)
                continue
            p, u = jnp.asarray(p), jnp.asarray(u)  # Python-float leaves too
            dtype = C.compute_dtype(p)
            z = p.astype(dtype) + u.astype(dtype)
            # The update that lands exactly on prox(z): p + (prox(z) − p) is exactly 0
            # wherever prox(z) is 0, so zeros are exact after `optax.apply_updates`.
            out.append((prox(path, z, threshold) - p.astype(dtype)).astype(u.dtype))
        new_state = RegularizerState(count=optax.safe_increment(state.count))
        return jax.tree.unflatten(u_def, out), new_state

    update.__name__ = name
    return optax.GradientTransformation(_init, update)


def proximal_l1(
    alpha: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    *,
    mask: R.Mask = None,
) -> optax.GradientTransformation:
    """The proximal step of α‖W‖₁ (soft-thresholding), for exactly sparse weights.

        z = w + u                                  (the point the other transforms reach)
        w_new = sign(z) · max(|z| − η·α, 0)        = prox_{ηα‖·‖₁}(z)
        u ← w_new − w

    Placed last in ``optax.chain(optax.sgd(η), proximal_l1(α, η))`` this is ISTA, the
    proximal-gradient method for ℒ + α‖W‖₁: weights whose magnitude falls below η·α
    become exactly 0. ``learning_rate`` must be the η of the preceding step (the same
    number or schedule); after an adaptive optimizer (Adam) the step is the usual
    heuristic with η as the threshold scale, not an exact proximal-gradient method.

    Args:
      alpha: α ≥ 0, a number or an optax schedule of the step count.
      learning_rate: η > 0, a number or an optax schedule of the step count.
      mask: which leaves to threshold (see `jaxloss.resolve_mask`); the others' updates
        are unchanged.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, jaxloss
      >>> tx = optax.chain(optax.sgd(1.0), jaxloss.transforms.proximal_l1(0.5, 1.0))
      >>> params = jnp.array([0.3, -2.0])
      >>> updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([ 0. , -1.5], dtype=float32)

    References:
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear
      inverse problems", SIAM J. Imaging Sci. 2009; Parikh & Boyd, "Proximal algorithms",
      Found. Trends Optim. 2014, §6.5.2.
    """

    def soft_threshold(path, z, threshold):
        del path
        return jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0)

    return _proximal("proximal_l1", soft_threshold, alpha, learning_rate, mask)


def proximal_group_lasso(
    alpha: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    *,
    group_axis: int,
    mask: R.Mask = None,
) -> optax.GradientTransformation:
    """The proximal step of α·`jaxloss.group_lasso_penalty` (group soft-thresholding).

        z = w + u
        w_new_g = z_g · max(0, 1 − η·α·√|g| / ‖z_g‖₂)     for each group g
        u ← w_new − w

    Groups are the indices along ``group_axis`` of each leaf, as in
    `jaxloss.group_lasso_penalty`: with ``group_axis=-1`` on a [in, out] kernel, a unit
    whose incoming weights have norm at most η·α·√in is removed exactly (all zeros).
    Placed last in ``optax.chain(optax.sgd(η), proximal_group_lasso(α, η, group_axis=-1))``
    it is the proximal-gradient method for ℒ + α·Ω_group. ``learning_rate`` must be the
    η of the preceding step. Under ``optax.inject_hyperparams`` pass
    ``static_args=("group_axis",)`` (and ``"mask"`` for a callable mask).

    Args:
      alpha: α ≥ 0, a number or an optax schedule of the step count.
      learning_rate: η > 0, a number or an optax schedule of the step count.
      group_axis: the axis whose indices are the groups (negative counts from the end).
      mask: which leaves to threshold (see `jaxloss.resolve_mask`).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, jaxloss
      >>> prox = jaxloss.transforms.proximal_group_lasso(1.0, 1.0, group_axis=-1)
      >>> kernel = jnp.array([[3.0, 0.1], [4.0, 0.1]])  # group norms 5 and 0.14
      >>> updates, _ = prox.update(jnp.zeros((2, 2)), prox.init(kernel), kernel)
      >>> optax.apply_updates(kernel, updates)  # unit 0 shrunk by (1 − √2/5), unit 1 removed
      Array([[2.151472, 0.      ],
             [2.868629, 0.      ]], dtype=float32)

    References:
      Yuan & Lin, JRSS B 2006; Parikh & Boyd, "Proximal algorithms", 2014, §6.5.4;
      Lobel, Vidal & Soto, "CompactNets", CVIU 2020.
    """
    R._check_group_axis(group_axis)

    def group_soft_threshold(path, z, threshold):
        axis = R._group_axis_of(path, z, int(group_axis))
        if z.size == 0:
            return z  # no groups, or groups of no weights: nothing to threshold
        other = tuple(a for a in range(z.ndim) if a != axis)
        size = z.size // z.shape[axis]
        norms = N.safe_norm(z, other, keepdims=True) if other else jnp.abs(z)
        t = threshold * math.sqrt(size)
        shrink = jnp.where(norms > t, 1 - t / jnp.where(norms > t, norms, 1), 0)
        return z * shrink

    return _proximal("proximal_group_lasso", group_soft_threshold, alpha, learning_rate, mask)
