"""Compiled functions shared across test cases.

On the CPU backend compiling dominates the test suite's time, and an eager call compiles
every primitive it meets at a new shape on its own (cached by shape for the process), so
an eager loss call at shapes no earlier test used can cost more than compiling the whole
loss once (measure: where many cases share shapes, eager can be cheaper). Tests that
check values, gradients or options (not eager execution itself, which
``tests/test_contract.py::test_jit_equals_eager`` checks for every public function) call
through ``jit_call``: one ``jax.jit`` per function and per set of Python-valued options,
kept for the whole session, so that cases differing only in array values (or in shapes:
one compilation per shape, as eagerly) share it.

A check that needs concrete values inside the function (an error raised on a concrete
negative label, say) must stay eager: under ``jit`` the values are traced.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np


def _is_static(x: Any) -> bool:
    """Python-valued arguments (options, Python-number hyperparameters, dtypes, functions) are
    closed over, as an eager call sees them; arrays and pytrees of arrays are traced."""
    if x is None or isinstance(x, (bool, int, float, complex, str, np.dtype)):
        return True
    if isinstance(x, tuple) and all(_is_static(v) for v in x):
        return True
    return callable(x) and isinstance(x, Hashable)


def _key(x: Any) -> Hashable:
    """A cache key that tells apart what ``==`` does not: ``1``, ``1.0`` and ``True``;
    ``0.0`` and ``-0.0``."""
    if isinstance(x, tuple):
        return (tuple, tuple(_key(v) for v in x))
    if isinstance(x, (float, complex)):
        return (type(x), repr(x))
    return (type(x), x)


_CACHE: dict[Hashable, Callable] = {}
_TRACES: dict[Hashable, int] = {}


def _split(fn: Callable, args: tuple, kwargs: dict) -> tuple:
    """``(key, fixed positional args, fixed kwargs, traced args, traced kwargs)``."""
    positions = tuple((i, a) for i, a in enumerate(args) if _is_static(a))
    static = tuple((k, v) for k, v in sorted(kwargs.items()) if _is_static(v))
    key = (fn, tuple((i, _key(a)) for i, a in positions), tuple((k, _key(v)) for k, v in static))
    traced_args = tuple(a for a in args if not _is_static(a))
    traced_kwargs = {k: v for k, v in kwargs.items() if not _is_static(v)}
    return key, dict(positions), dict(static), traced_args, traced_kwargs


def _compile(fn: Callable, key: Hashable, fixed_args: dict, fixed_kwargs: dict) -> Callable:
    import jax

    def call(traced_args, traced_kwargs):
        _TRACES[key] = _TRACES.get(key, 0) + 1
        it = iter(traced_args)
        n = len(fixed_args) + len(traced_args)
        args = [fixed_args[i] if i in fixed_args else next(it) for i in range(n)]
        return fn(*args, **traced_kwargs, **fixed_kwargs)

    return jax.jit(call)


def jit_call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under a ``jax.jit`` shared by every call of ``fn`` with the
    same Python-valued arguments (see ``_is_static``); the other arguments are traced."""
    key, fixed_args, fixed_kwargs, traced_args, traced_kwargs = _split(fn, args, kwargs)
    if key not in _CACHE:
        _CACHE[key] = _compile(fn, key, fixed_args, fixed_kwargs)
    return _CACHE[key](traced_args, traced_kwargs)


def traces(fn: Callable, *args: Any, **kwargs: Any) -> int:
    """How many times ``jit_call(fn, *args, **kwargs)``'s shared function has been traced
    (a call that needs no new trace leaves it unchanged)."""
    return _TRACES.get(_split(fn, args, kwargs)[0], 0)
