"""The generic contract test: every case in the table, through every check (the gradient
checks and the extreme inputs are in ``tests/test_contract_gradients.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests import contract as K
from tests.compiled import jit_call, traces
from tests.contract_table import CASES, NOT_IN_TABLE

LOSSES = [c for c in CASES if c.conventions]


def _inputs(case, seed=0):
    return K.sample_inputs(case, seed)


def _ref(case, inputs):
    args, kwargs = inputs
    return np.asarray(case.reference(*args, **kwargs), np.float64)


def _masked_ref(case, inputs, keep):
    """``(reference, keep)`` under the mask ``keep`` (None: no mask); for a coupled loss
    the reference sees the mask, and its NaN entries are left out (``Case.coupled``)."""
    if not case.coupled:
        return _ref(case, inputs), keep
    args, kwargs = inputs
    ref = np.asarray(case.reference(*args, where=keep, **kwargs), np.float64)
    kept = ~np.isnan(ref) if keep is None else keep & ~np.isnan(ref)
    return ref, kept


def _compiled(case, inputs, **extra):
    """The case's function on ``inputs`` under the jit that every check with the same
    options shares (``tests/compiled.py``); ``test_jit_equals_eager`` ties it to eager."""
    args, kwargs = inputs
    return jit_call(case.fn, *args, **kwargs, **extra)


def test_every_public_name_is_in_the_table():
    covered = {c.name for c in CASES} | set(NOT_IN_TABLE)
    missing = sorted(set(jaxloss.__all__) - covered)
    assert not missing, f"public names missing from tests/contract_table.py: {missing}"
    stale = sorted(covered - set(jaxloss.__all__))
    assert not stale, f"table entries that are not public names: {stale}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_value_matches_float64_reference(case, dtype):
    inputs = _inputs(case)
    out = _compiled(case, K.cast(inputs, dtype))
    assert out.dtype == dtype
    rtol, atol = (case.rtol, case.atol) if dtype == jnp.float32 else (1e-10, 1e-10)
    np.testing.assert_allclose(np.asarray(out, np.float64), _ref(case, inputs), rtol, atol)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jit_equals_eager(case):
    inputs = K.cast(_inputs(case), jnp.float32)
    out = _compiled(case, inputs)
    np.testing.assert_allclose(out, K.call(case, inputs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_vmap_equals_per_example_loop(case):
    inputs = K.cast(_inputs(case), jnp.float64)
    args, kwargs = K.split_static(inputs)
    arg_axes, kw_axes = K.batch_axes((args, kwargs.traced), case.unbatched)
    batched = jax.jit(
        jax.vmap(lambda a, kw: case.fn(*a, **kw, **kwargs.static), in_axes=(arg_axes, kw_axes))
    )(args, kwargs.traced)
    n = len(jax.tree.leaves(inputs[0])[0])
    looped = jnp.stack([_compiled(case, K.example(inputs, i, case.unbatched)) for i in range(n)])
    np.testing.assert_allclose(batched, looped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", LOSSES, ids=str)
def test_reductions_where_weights(case, reduction, masked, weighted):
    inputs = _inputs(case)
    ref = _ref(case, inputs)
    rng = np.random.default_rng(1)
    keep = rng.random(ref.shape) < 0.6 if masked else None
    w = rng.random(ref.shape) * 2 if weighted else None
    ref, kept = _masked_ref(case, inputs, keep)
    extra = {"reduction": reduction}
    if masked:
        extra["where"] = jnp.asarray(keep)
    if weighted:
        extra["weights"] = jnp.asarray(w)
    out = K.call(case, K.cast(inputs, jnp.float64), **extra)
    expected = K.reduce_reference(ref, kept, w, reduction)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", LOSSES, ids=str)
def test_masked_out_nan_inputs_give_zero_gradient(case, reduction):
    inputs = _inputs(case)
    ref = _ref(case, inputs)
    keep = np.random.default_rng(2).random(ref.shape) < 0.5
    keep.flat[0], keep.flat[-1] = True, False
    poisoned = K.cast(K.poison(inputs, keep), jnp.float64)
    f, primals = K.differentiable(case, poisoned, where=jnp.asarray(keep), reduction=reduction)
    assert any(np.isnan(np.asarray(p)).any() for p in jax.tree.leaves(primals))

    def loss(*values):
        return jnp.sum(f(*values))

    expected = K.reduce_reference(*_masked_ref(case, inputs, keep), None, reduction).sum()
    np.testing.assert_allclose(loss(*primals), expected, rtol=1e-10, atol=1e-12)
    grads = jax.grad(loss, argnums=tuple(range(len(primals))))(*primals)
    for g in jax.tree.leaves(grads):
        g = np.asarray(g)
        assert np.isfinite(g).all()
        if g.ndim >= keep.ndim and g.shape[: keep.ndim] == keep.shape:
            dropped = keep.reshape(keep.shape + (1,) * (g.ndim - keep.ndim)) == 0
            assert np.all(np.where(np.broadcast_to(dropped, g.shape), g, 0) == 0)


@pytest.mark.parametrize("case", LOSSES, ids=str)
def test_mean_over_nothing_is_zero_with_zero_gradient(case):
    shape = _ref(case, _inputs(case)).shape
    mean, primals = K.differentiable(
        case, K.cast(_inputs(case), jnp.float64), where=jnp.zeros(shape, bool), reduction="mean"
    )

    assert float(mean(*primals)) == 0.0
    grads = jax.grad(mean, argnums=tuple(range(len(primals))))(*primals)
    for g in jax.tree.leaves(grads):
        assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_low_precision_inputs_computed_in_float32(case, dtype):
    inputs = _inputs(case)
    low = K.cast(inputs, dtype)
    out = K.call(case, low)
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    # Exactly the float32 computation on the same (rounded) values ...
    upcast = K.cast(low, jnp.float32)
    np.testing.assert_allclose(out, K.call(case, upcast), rtol=1e-6, atol=1e-6)
    # ... and within the documented tolerance of float32 on the unrounded inputs.
    tol = (case.lowp_tol or K.LOW_PRECISION_TOL)[dtype]
    np.testing.assert_allclose(out, K.call(case, K.cast(inputs, jnp.float32)), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_no_retrace_on_second_call(case):
    inputs = K.cast(_inputs(case), jnp.float32)
    _compiled(case, inputs)  # traced here unless another check traced it already
    before = traces(case.fn, *inputs[0], **inputs[1])
    assert before >= 1
    args, kwargs = K.split_static(inputs)
    args2, kwargs2 = K.split_static(K.cast(_inputs(case, seed=3), jnp.float32))
    other_values = (args2, {**kwargs2.traced, **kwargs.static})
    _compiled(case, other_values)
    assert traces(case.fn, *other_values[0], **other_values[1]) == before
