"""The contract every public jaxloss function is held to, and the ``Case`` that describes one.

A ``Case`` says how to make sample inputs and gives an independent float64 reference
(numpy/scipy). ``tests/test_contract.py`` and ``tests/test_contract_gradients.py`` run
every case in ``tests/contract_table.py`` through the same checks: value against the
reference in float32 and float64, jit == eager, vmap == per-example loop, float64
gradient checks, every reduction with and without ``where``/``weights``, NaN under a
mask, low-precision inputs and extreme inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Inputs = tuple[tuple[Any, ...], dict[str, Any]]

# bf16/f16 inputs are computed in float32. Against the float32 result on the
# *unrounded* inputs, the only error is the input rounding; these tolerances (relative
# and absolute) are the documented bound for the well-conditioned sample inputs.
LOW_PRECISION_TOL = {jnp.bfloat16: 0.1, jnp.float16: 0.01}


@dataclasses.dataclass(frozen=True)
class Case:
    """One public function and how to test it.

    Attributes:
      name: the public name in ``jaxloss.__all__``.
      fn: the function under test, called as ``fn(*args, **kwargs)``.
      make: ``make(rng) -> (args, kwargs)`` with float64 numpy inputs (integer arrays
        for labels). Positional args and array-valued kwargs of ndim ≥ 1 carry a leading
        batch axis of the same length (used by the vmap check); scalars and the inputs
        named in ``unbatched`` do not.
      reference: ``reference(*args, **kwargs) -> np.ndarray``, an independent float64
        implementation of the *unreduced* loss (numpy/scipy, never jaxloss).
      grad_args: positions of the args to differentiate.
      grad_kwargs: names of kwargs to differentiate.
      grad_order: 2 where the function is smooth at the sample inputs, else 1.
      extreme: ``extreme() -> (args, kwargs)``: float32 inputs at which the math is
        finite; values and gradients must be finite too.
      conventions: whether the function takes ``where``/``weights``/``reduction``
        (losses do; penalties over pytrees and scalar-valued functions do not).
      rtol, atol: float32 value tolerances against the reference (float64 uses 1e-10).
      lowp_tol: overrides ``LOW_PRECISION_TOL`` for this case (documented where set).
      unbatched: positions of args and names of kwargs that carry no batch axis (a
        weight matrix shared by every example, as in a linear layer's loss); the vmap
        check passes them whole to every example.
      coupled: the loss couples the examples of a batch (contrastive losses), so
        ``where=False`` changes the other examples' losses: the masking checks call
        ``reference(*args, where=keep, **kwargs)``, and a NaN in its result marks an
        element that the function leaves out of the reduction by itself.
    """

    name: str
    fn: Callable[..., Any]
    make: Callable[[np.random.Generator], Inputs]
    reference: Callable[..., np.ndarray]
    grad_args: tuple[int, ...] = (0,)
    grad_kwargs: tuple[str, ...] = ()
    grad_order: int = 2
    extreme: Callable[[], Inputs] | None = None
    conventions: bool = True
    rtol: float = 2e-5
    atol: float = 2e-5
    lowp_tol: dict | None = None
    unbatched: tuple[int | str, ...] = ()
    coupled: bool = False
    id: str | None = None

    def __str__(self) -> str:  # pytest ids
        return self.id or self.name


def sample_inputs(case: Case, seed: int = 0) -> Inputs:
    """The case's sample inputs from ``seed``."""
    return case.make(np.random.default_rng(seed))


def is_float(x: Any) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def cast(inputs: Inputs, dtype: Any) -> Inputs:
    """Cast every floating leaf of the inputs (arrays and pytrees) to ``dtype``."""

    def leaf(x):
        if isinstance(x, (int, float, bool)) or x is None:
            return x  # Python numbers stay Python numbers (weakly typed hyperparameters)
        return jnp.asarray(x, dtype) if is_float(x) else jnp.asarray(x)

    args, kwargs = inputs
    return jax.tree.map(leaf, tuple(args)), {k: jax.tree.map(leaf, v) for k, v in kwargs.items()}


@dataclasses.dataclass(frozen=True)
class SplitKwargs:
    traced: dict[str, Any]
    static: dict[str, Any]


def split_static(inputs: Inputs) -> tuple[tuple[Any, ...], SplitKwargs]:
    """Separate Python-scalar kwargs (flags, hyperparameters) that ``jit`` must close over."""
    args, kwargs = inputs
    static = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str))}
    traced = {k: v for k, v in kwargs.items() if k not in static}
    return args, SplitKwargs(traced, static)


def call(case: Case, inputs: Inputs, **extra: Any) -> jax.Array:
    args, kwargs = inputs
    return case.fn(*args, **kwargs, **extra)


def differentiable(
    case: Case, inputs: Inputs, **extra: Any
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(f, primals)``: ``f(*primals)`` is the case's function of its differentiable inputs.

    ``extra`` keyword arguments (``where``, ``reduction``, ...) are passed on every call.
    """
    args, kwargs = inputs
    primals = tuple(args[i] for i in case.grad_args) + tuple(kwargs[k] for k in case.grad_kwargs)

    def f(*values):
        a, kw = list(args), dict(kwargs)
        for i, v in zip(case.grad_args, values[: len(case.grad_args)], strict=True):
            a[i] = v
        for k, v in zip(case.grad_kwargs, values[len(case.grad_args) :], strict=True):
            kw[k] = v
        return case.fn(*a, **kw, **extra)

    return f, primals


def batch_axes(
    inputs: Inputs, unbatched: tuple[int | str, ...] = ()
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = inputs
    arg_axes = tuple(None if i in unbatched else 0 for i in range(len(args)))
    kw_axes = {
        k: (0 if np.ndim(v) >= 1 and k not in unbatched else None) for k, v in kwargs.items()
    }
    return arg_axes, kw_axes


def example(inputs: Inputs, i: int, unbatched: tuple[int | str, ...] = ()) -> Inputs:
    """The ``i``-th example of a batch of inputs (see ``batch_axes``)."""
    args, kwargs = inputs
    arg_axes, kw_axes = batch_axes(inputs, unbatched)
    return (
        tuple(
            a if ax is None else jax.tree.map(lambda x: x[i], a)
            for a, ax in zip(args, arg_axes, strict=True)
        ),
        {k: (v if kw_axes[k] is None else v[i]) for k, v in kwargs.items()},
    )


def poison(inputs: Inputs, keep: np.ndarray) -> Inputs:
    """NaN in every floating input entry that belongs to a masked-out loss element.

    An input whose leading dims equal the loss shape (the loss may drop trailing axes,
    as a class axis) gets NaN across the trailing dims of every masked element.
    """

    def leaf(x):
        x = np.asarray(x)
        if not is_float(x) or x.ndim < keep.ndim or x.shape[: keep.ndim] != keep.shape:
            return x
        mask = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
        return np.where(mask, x, np.nan)

    args, kwargs = inputs
    return tuple(leaf(a) for a in args), {
        k: (leaf(v) if not isinstance(v, (int, float)) else v) for k, v in kwargs.items()
    }


def reduce_reference(
    loss: np.ndarray, keep: np.ndarray | None, w: np.ndarray | None, reduction: str
) -> np.ndarray:
    """The conventions' reductions, written out in numpy."""
    keep = np.ones(loss.shape, bool) if keep is None else np.broadcast_to(keep, loss.shape)
    w = np.ones(loss.shape) if w is None else np.broadcast_to(w, loss.shape)
    w = np.where(keep, w, 0.0)
    terms = np.where(keep, loss, 0.0) * w
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    return terms.sum() / w.sum() if w.sum() > 0 else np.float64(0.0)


def public_functions_taking(parameter: str) -> list[str]:
    """The names in ``jaxloss.__all__`` of the functions that have a parameter so named
    (for checks that must cover every such function, a new one included)."""
    import jaxloss

    return sorted(
        name
        for name in jaxloss.__all__
        if inspect.isfunction(inspect.unwrap(fn := getattr(jaxloss, name)))
        and parameter in inspect.signature(fn).parameters
    )
