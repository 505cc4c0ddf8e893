"""``jax.test_util.check_grads`` with one compilation instead of one per derivative.

``check_grads(f, args, order=2)`` checks the JVP and the VJP of ``f``, then of the
function that computes ``f``'s JVP and of the one that computes its VJP, against central
differences. It evaluates each of those functions separately, and under ``jax.jit``
every one is a compilation of its own (about fifteen for order 2); compiling dominates
the test suite's time. This module makes the same checks (the same functions, the same
kind of random directions, the same step ``eps`` and the same tolerances, scaled by the
array size as JAX's are) but evaluates everything one check needs in a single jitted
function, so it compiles once. The comparisons run in numpy afterwards.

For every function ``F`` in the chain (``f``; for order 2 also ``(x, t) -> jvp(f, x, t)``
and ``x -> vjp(f, x)(f(x))``), at its arguments ``a`` with a random direction ``t`` and a
random cotangent ``u``:

- forward mode: ``jvp(F, a, t)`` equals ``(F(a), (F(a + eps t) - F(a - eps t)) / (2 eps))``;
- reverse mode: ``vjp(F, a)`` gives ``F(a)``, and ``<t, vjp(u)> = <(F(a + eps t) -
  F(a - eps t)) / (2 eps), u>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

EPS = 1e-4
# JAX's default gradient tolerances (jax._src.public_test_util.default_gradient_tolerance).
TOLERANCE = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 2e-3, np.dtype(np.float64): 1e-5}


def _nodes(f: Callable, args: tuple, order: int, modes: Sequence[str], name: str) -> list:
    """``(F, args, name)`` for every function whose first derivatives are checked."""
    nodes = [(f, args, name)]
    if order > 1:
        if "fwd" in modes:
            nodes += _nodes(
                functools.partial(jax.jvp, f), (args, args), order - 1, modes, f"JVP of {name}"
            )

        if "rev" in modes:

            def f_vjp(*a):
                out, vjp = jax.vjp(f, *a)
                return vjp(out)

            nodes += _nodes(f_vjp, args, order - 1, modes, f"VJP of {name}")
    return nodes


def _close(actual, expected, atol: float | None, rtol: float | None, what: str) -> None:
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
        default = TOLERANCE[np.dtype(a.dtype)]
        at, rt = default if atol is None else atol, default if rtol is None else rtol
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(a, e, rtol=rt * e.size, atol=at * a.size, err_msg=what)


def _safe_sub(x, y):
    """``x - y`` with ``inf - inf = 0``, as JAX's finite differences take it."""
    with np.errstate(invalid="ignore"):
        return np.where(np.equal(x, y), np.zeros((), x.dtype), np.subtract(x, y, dtype=x.dtype))


def _draw(rng: np.random.RandomState, x) -> np.ndarray:
    return np.asarray(rng.randn(*np.shape(x)), x.dtype)


def _inner(xs, ys) -> float:
    return sum(
        float(np.dot(np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)))
        for x, y in zip(jax.tree.leaves(xs), jax.tree.leaves(ys), strict=True)
    )


def check_grads(
    f: Callable,
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float = EPS,
) -> None:
    """The checks of ``jax.test_util.check_grads(f, args, order, modes)``, compiled once.

    ``atol``/``rtol`` override the dtype's default tolerances (one number each, scaled
    by the array size as JAX scales its own).
    """
    args = tuple(jax.tree.map(np.asarray, tuple(args)))
    nodes = _nodes(f, args, order, modes, "f")
    feeds = []
    for F, a, _ in nodes:
        # JAX's directions: the tangent, then the cotangent, from one RandomState(0).
        rng = np.random.RandomState(0)
        draw = functools.partial(_draw, rng)
        t = jax.tree.map(draw, a)
        u = jax.tree.map(draw, jax.eval_shape(F, *a))
        pos = jax.tree.map(lambda x, d: x + d * np.asarray(eps, x.dtype), a, t)
        neg = jax.tree.map(lambda x, d: x - d * np.asarray(eps, x.dtype), a, t)
        feeds.append({"a": a, "t": t, "u": u, "pos": pos, "neg": neg})

    @jax.jit
    def evaluate(feeds):
        outs = []
        for (F, _, _), feed in zip(nodes, feeds, strict=True):
            out = {"F": F(*feed["a"]), "pos": F(*feed["pos"]), "neg": F(*feed["neg"])}
            if "fwd" in modes:
                out["jvp"] = jax.jvp(F, feed["a"], feed["t"])
            if "rev" in modes:
                value, vjp = jax.vjp(F, *feed["a"])
                out["vjp"] = (value, vjp(feed["u"]))
            outs.append(out)
        return outs

    for (_, _, name), feed, out in zip(nodes, feeds, evaluate(feeds), strict=True):
        numerical = jax.tree.map(
            lambda p, n: _safe_sub(np.asarray(p), np.asarray(n)) * (0.5 / eps),
            out["pos"],
            out["neg"],
        )
        if "fwd" in modes:
            value, tangent = out["jvp"]
            _close(value, out["F"], atol, rtol, f"JVP of {name}: primal")
            _close(tangent, numerical, atol, rtol, f"JVP of {name}: tangent")
        if "rev" in modes:
            value, cotangent_out = out["vjp"]
            _close(value, out["F"], atol, rtol, f"VJP of {name}: primal")
            ip = _inner(feed["t"], cotangent_out)
            ip_expected = _inner(numerical, feed["u"])
            dtype = np.asarray(jax.tree.leaves(value)[0]).dtype
            _close(
                np.asarray(ip, dtype),
                np.asarray(ip_expected, dtype),
                atol,
                rtol,
                f"VJP of {name}: cotangent projection",
            )
