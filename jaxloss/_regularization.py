"""Regularization penalties Ω(W) over parameter pytrees, the masks that select leaves, and
`penalized`, which turns a loss ℒ into the regularized objective ℒ + α·Ω.

A parameter pytree is anything JAX can flatten: plain dicts and lists of arrays, Linen
``params`` dicts, Flax NNX ``State`` (with or without its ``Variable`` wrappers) and NNX
``Module`` objects. Leaves are named by a readable path such as
``"encoder/layers/0/kernel"``. Flax is never imported here: NNX objects are recognized
only when ``flax.nnx`` has already been imported by the caller.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C
from jaxloss import _numerics as N

PyTree = Any
Mask = Any  # None | pytree of bools | Callable[[str, jax.Array], bool]


# --------------------------------------------------------------------------------------
# Paths and leaves
# --------------------------------------------------------------------------------------


def _nnx():
    """``flax.nnx`` if the caller has imported it, else None (never imports flax)."""
    return sys.modules.get("flax.nnx")


def _is_variable(x: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def _as_tree(params: PyTree) -> PyTree:
    """An NNX ``Module`` is penalized through its ``nnx.Param`` state."""
    nnx = _nnx()
    if nnx is not None and isinstance(params, nnx.Module):
        return nnx.state(params, nnx.Param)
    return params


def path_string(path: tuple[Any, ...]) -> str:
    """A JAX key path as a readable string, e.g. ``"encoder/layers/0/kernel"``."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _is_float(x: Any) -> bool:
    if isinstance(x, float):
        return True  # a Python float leaf is a (weakly typed) parameter, not a flag
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _named_leaves(tree: PyTree) -> list[tuple[str, Any, bool]]:
    """``(path, value, penalizable)`` for every leaf, in flattening order.

    NNX ``Variable`` wrappers are looked through (the path stops at the variable, so
    ``.../kernel`` rather than ``.../kernel/value``); a variable that is not an
    ``nnx.Param`` (batch statistics, RNG state, intermediates) is never penalizable, nor
    is a non-floating leaf (integer counters, RNG keys).
    """
    nnx = _nnx()
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    out = []
    for path, leaf in flat:
        is_param = True
        if _is_variable(leaf):
            is_param = isinstance(leaf, nnx.Param)
            leaf = leaf.get_value()
        out.append((path_string(path), leaf, is_param and _is_float(leaf)))
    return out


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def _mask_flag(path: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and value.dtype == bool:
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"`mask` entry for {path!r} is a traced array; masks are static. Build the "
                "mask outside `jit` (Python bools), or pass a callable mask."
            )
        return bool(value)
    raise TypeError(
        f"`mask` entry for {path!r} must be a Python bool, got {C._describe(value)}. "
        "A mask selects whole leaves; use `jax.tree.map(lambda x: x.ndim > 1, params)`-style "
        "trees of bools, or a callable `(path, leaf) -> bool`."
    )


def _tree_mask_lookup(mask: PyTree) -> dict[str, bool]:
    table = {}
    for path, value, _ in _named_leaves(mask):
        table[path] = _mask_flag(path, value)
    return table


def _lookup(table: dict[str, bool], path: str) -> bool:
    """The flag for ``path``: its own entry, else that of its nearest ancestor (a prefix mask)."""
    parts = path.split("/") if path else []
    for n in range(len(parts), -1, -1):
        key = "/".join(parts[:n])
        if key in table:
            return table[key]
    raise ValueError(
        f"`mask` has no entry for the parameter {path!r}. A pytree mask must have the "
        "structure of the parameters (as `jax.tree.map(f, params)` makes it) or a prefix of "
        f"it; its entries are {sorted(table)[:8]}."
    )


def _selection(
    params: PyTree, mask: Mask, *, require_any: bool = True
) -> list[tuple[str, Any, bool]]:
    """``(path, leaf, selected)`` for every leaf of ``params``: penalizable and kept by ``mask``.

    A callable mask that selects none of the penalizable leaves is almost always a typo
    in a pattern (``path_mask(r"^encodr/")``) and would make the penalty silently 0, so
    it raises (``require_any``), listing some of the available paths.
    """
    leaves = _named_leaves(params)
    if mask is None:
        return leaves
    if callable(mask):
        out = []
        for path, leaf, ok in leaves:
            keep = _mask_flag(path, mask(path, leaf)) if ok else False
            out.append((path, leaf, keep))
        candidates = [path for path, _, ok in leaves if ok]
        if require_any and candidates and not any(keep for _, _, keep in out):
            name = getattr(mask, "__name__", repr(mask))
            raise ValueError(
                f"`mask` {name} selects none of the {len(candidates)} parameters, so the "
                f"penalty would be 0. Their paths include {candidates[:6]}; check the mask "
                "against them (`jaxloss.resolve_mask(params, mask)` shows what it selects)."
            )
        return out
    table = _tree_mask_lookup(mask)
    return [(path, leaf, ok and _lookup(table, path)) for path, leaf, ok in leaves]


def resolve_mask(params: PyTree, mask: Mask = None) -> dict[str, bool]:
    """Which leaves of ``params`` a penalty with this ``mask`` acts on, by path.

    A leaf is penalized when it is floating-point, is not wrapped in an NNX variable other
    than ``nnx.Param`` (batch statistics, RNG state and intermediates never are), and the
    mask keeps it. A mask is one of:

    - ``None``: every such leaf;
    - a pytree of Python bools with the structure of ``params`` (as ``jax.tree.map(f,
      params)`` makes it, NNX ``Variable`` wrappers or not), or a prefix of it whose bools
      apply to whole subtrees (``{"encoder": False, "head": True}``);
    - a callable ``(path, leaf) -> bool`` given each floating leaf and its path string, such
      as `weight_matrix_mask` or one made by `path_mask`.

    Args:
      params: a parameter pytree (dicts/lists of arrays, Linen params, NNX ``State`` or
        ``Module``).
      mask: as above.

    Returns:
      A dict from each leaf's path string (``"layers/0/kernel"``) to whether it is penalized,
      in flattening order.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
      >>> jaxloss.resolve_mask(params, jaxloss.weight_matrix_mask)
      {'dense/bias': False, 'dense/kernel': True}
    """
    return {path: keep for path, _, keep in _selection(_as_tree(params), mask, require_any=False)}


_NORM_NAMES = frozenset({"scale", "bias", "gamma", "beta", "mean", "var"})


def weight_matrix_mask(path: str, leaf: jax.Array) -> bool:
    """Mask that keeps weight matrices and embeddings, leaving out biases and norm scales.

        keep(leaf) = leaf.ndim ≥ 2

    Dense and convolution kernels and embedding tables have two or more axes; biases and
    the scales and offsets of LayerNorm, BatchNorm and RMSNorm have one. This is the usual
    weight-decay mask (e.g. AdamW's in BERT). Pass it as ``mask=jaxloss.weight_matrix_mask``;
    it is used as is, not called.

    Args:
      path: the leaf's path string (unused).
      leaf: the parameter array.

    Returns:
      ``True`` to penalize the leaf.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> params = {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3), "scale": jnp.ones(3)}
      >>> jaxloss.resolve_mask(params, jaxloss.weight_matrix_mask)
      {'bias': False, 'kernel': True, 'scale': False}
    """
    del path
    return jnp.ndim(leaf) >= 2


def path_mask(pattern: str | re.Pattern, *, exclude: bool = False) -> Callable[[str, Any], bool]:
    """Mask that selects leaves whose path matches a regular expression.

        keep(path) = re.search(pattern, path) is not None     (negated with exclude=True)

    Paths are the readable strings that `resolve_mask` shows: Linen ``"params/Dense_0/kernel"``,
    NNX ``"layers/0/kernel"``, plain ``"encoder/0"`` for lists.

    Args:
      pattern: a regular expression (string or compiled), searched anywhere in the path;
        anchor it (``r"kernel$"``) to match exactly.
      exclude: keep the leaves that do *not* match instead.

    Returns:
      A callable mask ``(path, leaf) -> bool``.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> params = {"enc": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 1))}}
      >>> jaxloss.resolve_mask(params, jaxloss.path_mask(r"^enc/"))
      {'enc/kernel': True, 'head/kernel': False}
    """
    if not isinstance(pattern, (str, re.Pattern)):
        raise TypeError(f"`pattern` must be a regular expression string, got {pattern!r}.")
    regex = re.compile(pattern)

    def mask(path: str, leaf: Any) -> bool:
        del leaf
        return (regex.search(path) is None) if exclude else (regex.search(path) is not None)

    mask.__name__ = f"path_mask({regex.pattern!r}{', exclude=True' if exclude else ''})"
    return mask


# --------------------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------------------


def _selected_leaves(params: PyTree, mask: Mask) -> tuple[list[tuple[str, jax.Array]], Any]:
    """The selected leaves as arrays in the compute dtype (float32, or float64)."""
    chosen = [(p, jnp.asarray(x)) for p, x, keep in _selection(_as_tree(params), mask) if keep]
    dtype = C.compute_dtype(*(x for _, x in chosen))
    return [(p, x.astype(dtype)) for p, x in chosen if x.size > 0], dtype


def _total(terms: list[jax.Array], dtype: Any) -> jax.Array:
    total = jnp.zeros((), dtype)
    for t in terms:
        total = total + t
    return total


def l2_penalty(params: PyTree, *, mask: Mask = None) -> jax.Array:
    """Half the squared Euclidean norm of the parameters (weight decay).

        Ω(W) = ½ Σ_w w²,        ∂Ω/∂w = w

    The ½ makes the gradient the weights themselves, so the regularized objective
    ℒ + α·Ω gives the SGD step w ← (1 − ηα)·w − η·∇ℒ, the classic weight decay (see
    `jaxloss.transforms.add_penalty_gradient`, which equals ``optax.add_decayed_weights``).

    Args:
      params: a pytree of floating arrays of any shapes (dicts/lists of arrays, Linen
        ``variables["params"]`` (not the whole variables dict, whose ``batch_stats`` are
        plain arrays too), NNX ``State`` or ``Module``: only ``nnx.Param`` variables count).
      mask: which leaves to penalize: ``None`` (all), a pytree of bools, or a callable
        ``(path, leaf) -> bool`` such as `weight_matrix_mask` (see `resolve_mask`). A
        callable mask that selects no parameter raises a ``ValueError`` listing some
        paths (a mistyped `path_mask` pattern would otherwise give 0 silently).

    Returns:
      A scalar: float32, or float64 when a penalized leaf is float64 (bf16/f16 leaves are
      accumulated in float32). 0 when no leaf is penalized (no floating leaf, or a
      pytree mask of ``False``).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}
      >>> jaxloss.l2_penalty(params)
      Array(7., dtype=float32)
      >>> jaxloss.l2_penalty(params, mask=jaxloss.weight_matrix_mask)
      Array(2.5, dtype=float32)

    References:
      Krogh & Hertz, "A simple weight decay can improve generalization", NeurIPS 1991;
      Tikhonov regularization.
    """
    leaves, dtype = _selected_leaves(params, mask)
    return _total([0.5 * jnp.sum(jnp.square(x)) for _, x in leaves], dtype)


def l1_penalty(params: PyTree, *, mask: Mask = None) -> jax.Array:
    """The L1 norm of the parameters (the lasso penalty).

        Ω(W) = Σ_w |w|,         ∂Ω/∂w = sign(w)   (0 at w = 0)

    Its subgradient drives weights toward zero but never makes them exactly zero under
    gradient descent; for exact zeros use the proximal step
    `jaxloss.transforms.proximal_l1`.

    Args:
      params: a parameter pytree, as in `l2_penalty`.
      mask: which leaves to penalize, as in `l2_penalty`.

    Returns:
      As in `l2_penalty`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.l1_penalty([jnp.array([1.0, -2.0]), jnp.array([[0.5]])])
      Array(3.5, dtype=float32)

    References:
      Tibshirani, "Regression shrinkage and selection via the lasso", JRSS B 1996.
    """
    leaves, dtype = _selected_leaves(params, mask)
    return _total([jnp.sum(N.abs0(x)) for _, x in leaves], dtype)


def elastic_net_penalty(params: PyTree, *, l1_ratio: float = 0.5, mask: Mask = None) -> jax.Array:
    """Elastic-net penalty: a convex mix of `l1_penalty` and `l2_penalty`.

        Ω(W) = ρ · Σ_w |w| + (1 − ρ) · ½ Σ_w w²,      ρ = l1_ratio ∈ [0, 1]

    This is scikit-learn's convention (``ElasticNet(alpha, l1_ratio)`` minimizes the data
    term plus alpha·Ω): ρ = 1 is the lasso, ρ = 0 is ridge / weight decay.

    Args:
      params: a parameter pytree, as in `l2_penalty`.
      l1_ratio: ρ in [0, 1], the weight of the L1 part.
      mask: which leaves to penalize, as in `l2_penalty`.

    Returns:
      As in `l2_penalty`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.elastic_net_penalty({"w": jnp.array([1.0, -2.0])}, l1_ratio=0.5)
      Array(2.75, dtype=float32)

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS B
      2005.
    """
    C.check_in_range("l1_ratio", l1_ratio, 0.0, 1.0)
    leaves, dtype = _selected_leaves(params, mask)
    terms = [
        l1_ratio * jnp.sum(N.abs0(x)) + (1 - l1_ratio) * 0.5 * jnp.sum(jnp.square(x))
        for _, x in leaves
    ]
    return _total(terms, dtype)


def _check_group_axis(group_axis: Any) -> None:
    if isinstance(group_axis, bool) or not isinstance(group_axis, (int, np.integer)):
        hint = ""
        if isinstance(group_axis, jax.Array):
            hint = (
                " Under `optax.inject_hyperparams`, name it static: "
                "`inject_hyperparams(..., static_args=('group_axis',))`."
            )
        raise TypeError(
            f"`group_axis` must be a Python int (the axis whose indices are the groups), "
            f"got {C._describe(group_axis)}.{hint}"
        )


def _group_axis_of(path: str, x: jax.Array, group_axis: int) -> int:
    if not -x.ndim <= group_axis < x.ndim:
        raise ValueError(
            f"`group_axis`={group_axis} is out of range for the parameter {path!r} of shape "
            f"{x.shape}. Give an axis every penalized leaf has (e.g. -1), or leave such "
            "leaves out with `mask`."
        )
    return group_axis % x.ndim


def group_norms(x: jax.Array, group_axis: int) -> jax.Array:
    """‖w_g‖₂ for each index g along ``group_axis`` (finite gradient at zero groups)."""
    other = tuple(a for a in range(x.ndim) if a != group_axis)
    return N.safe_norm(x, other) if other else N.abs0(x)


def group_lasso_penalty(params: PyTree, *, group_axis: int, mask: Mask = None) -> jax.Array:
    """Group lasso: the sum of the Euclidean norms of groups of weights, each scaled by √size.

        Ω(W) = Σ_leaves Σ_g √|g| · ‖w_g‖₂

    Each index g along ``group_axis`` of a leaf is one group w_g (the slice at that index),
    of |g| = leaf.size / leaf.shape[group_axis] weights. For a Dense kernel of shape
    [in, out], ``group_axis=-1`` makes the incoming weights of each output unit one group,
    so driving a group to zero removes the unit: the structured sparsity CompactNets uses
    to shrink layers. A 1-D leaf with ``group_axis=-1`` has groups of one weight (the
    penalty is then its L1 norm); leave biases out with ``mask`` if that is not wanted.

    The norm is computed without overflow and with the zero subgradient at a group that
    is exactly zero, so the gradient is finite everywhere. Exact zeros come from the
    proximal step `jaxloss.transforms.proximal_group_lasso`.

    Args:
      params: a parameter pytree, as in `l2_penalty`. Every penalized leaf must have the
        axis ``group_axis``.
      group_axis: the axis whose indices are the groups (negative counts from the end).
      mask: which leaves to penalize, as in `l2_penalty`.

    Returns:
      As in `l2_penalty`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> kernel = jnp.array([[3.0, 0.0], [4.0, 0.0]])  # unit 0: norm 5; unit 1: all zero
      >>> jaxloss.group_lasso_penalty({"kernel": kernel}, group_axis=-1)
      Array(7.071068, dtype=float32)

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables",
      JRSS B 2006 (the √|g| weights); Scardapane et al., "Group sparse regularization for
      deep neural networks", Neurocomputing 2017; Lobel, Vidal & Soto, "CompactNets:
      Compact hierarchical compositional networks for visual recognition", CVIU 2020.
    """
    _check_group_axis(group_axis)
    leaves, dtype = _selected_leaves(params, mask)
    terms = []
    for path, x in leaves:
        axis = _group_axis_of(path, x, int(group_axis))
        size = x.size // x.shape[axis]
        terms.append(math.sqrt(size) * jnp.sum(group_norms(x, axis)))
    return _total(terms, dtype)


# --------------------------------------------------------------------------------------
# The regularized objective
# --------------------------------------------------------------------------------------


def _call_penalty(penalty: Callable[..., jax.Array], params: PyTree, mask: Mask) -> jax.Array:
    return penalty(params) if mask is None else penalty(params, mask=mask)


def _check_alpha(alpha: Any) -> None:
    if alpha is None:
        raise TypeError("`alpha` is required, got None.")
    if C._is_concrete_number(alpha) and not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"`alpha` must be a non-negative finite number, got {alpha!r}.")


def penalized(
    loss_fn: Callable[..., Any],
    *,
    alpha: float,
    penalty: Callable[..., jax.Array] = l2_penalty,
    mask: Mask = None,
    has_aux: bool = False,
    argnums: int = 0,
) -> Callable[..., Any]:
    """The regularized objective: ``loss_fn`` plus α times a penalty of its parameters.

        L(W) = ℒ(f(x), y; W) + α · Ω(W)

    The returned function has ``loss_fn``'s signature; the parameters are its positional
    argument ``argnums`` (an NNX ``Module`` is penalized through its ``nnx.Param``
    variables). With ``has_aux=True``, ``loss_fn`` returns ``(loss, aux)`` and so does the
    result, with the penalty added to ``loss`` only, as ``jax.value_and_grad(...,
    has_aux=True)`` expects.

    Args:
      loss_fn: the data term ℒ, returning a scalar (or ``(scalar, aux)``).
      alpha: α ≥ 0, the regularization strength (a number or a traced scalar).
      penalty: Ω, called as ``penalty(params, mask=mask)`` (without ``mask`` when it is
        None); a jaxloss penalty or e.g. ``functools.partial(group_lasso_penalty,
        group_axis=-1)``.
      mask: which leaves to penalize (see `resolve_mask`).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      argnums: the position of the parameters among ``loss_fn``'s arguments.

    Returns:
      A function with ``loss_fn``'s signature returning ℒ + α·Ω (and ``aux``).

    Example:
      >>> import jax, jax.numpy as jnp, jaxloss
      >>> def mse(w, x, y):
      ...     return jnp.mean((x @ w - y) ** 2)
      >>> objective = jaxloss.penalized(mse, alpha=0.1)
      >>> w, x, y = jnp.array([1.0, 2.0]), jnp.eye(2), jnp.array([1.0, 2.0])
      >>> objective(w, x, y)  # 0 + 0.1 · ½ (1 + 4)
      Array(0.25, dtype=float32)
      >>> jax.grad(objective)(w, x, y)  # α·w
      Array([0.1, 0.2], dtype=float32)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {loss_fn!r}.")
    if not callable(penalty):
        raise TypeError(f"`penalty` must be callable, got {penalty!r}.")
    _check_alpha(alpha)
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(f"`argnums` must be an int (one argument), got {argnums!r}.")

    @functools.wraps(loss_fn)
    def objective(*args: Any, **kwargs: Any) -> Any:
        if not -len(args) <= argnums < len(args):
            raise ValueError(
                f"`argnums`={argnums} but only {len(args)} positional arguments were given; "
                "pass the parameters positionally."
            )
        out = loss_fn(*args, **kwargs)
        reg = alpha * _call_penalty(penalty, args[argnums], mask)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "`has_aux=True` but `loss_fn` did not return a `(loss, aux)` pair; got "
                    f"{type(out).__name__}."
                )
            loss, aux = out
            return loss + reg, aux
        return out + reg

    return objective
