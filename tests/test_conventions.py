"""The shared conventions, checked once on the mechanism itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxloss
from jaxloss import _conventions as C

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@given(
    hnp.arrays(np.float64, 12, elements=finite),
    st.data(),
)
def test_where_mean_equals_mean_over_boolean_indexing(pred, data):
    keep = data.draw(hnp.arrays(np.bool_, pred.shape))
    targets = np.zeros_like(pred)
    out = jaxloss.squared_error(pred, targets, where=keep, reduction="mean")
    expected = np.mean(pred[keep] ** 2) if keep.any() else 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@given(hnp.arrays(np.float64, 12, elements=finite), st.data())
def test_integer_weights_are_repetition(pred, data):
    reps = data.draw(hnp.arrays(np.int64, pred.shape, elements=st.integers(0, 3)))
    out = jaxloss.absolute_error(pred, 0.0, weights=reps, reduction="mean")
    repeated = np.repeat(np.abs(pred), reps)
    expected = repeated.mean() if repeated.size else 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float32),
        (jnp.float32, jnp.float32),
        (jnp.float64, jnp.float64),
    ],
)
def test_returned_dtype_policy(dtype, expected):
    x = jnp.ones(3, dtype)
    for reduction in ("none", "sum", "mean"):
        out = jaxloss.gaussian_nll(x, 0.0, scale=2.0, reduction=reduction)
        assert out.dtype == expected
        out = jaxloss.huber(x, jnp.zeros(3, jnp.int32), delta=0.5, reduction=reduction)
        assert out.dtype == expected


def test_keep_masks_input_before_the_unsafe_operation():
    x = jnp.asarray([1.0, jnp.nan, jnp.inf])
    mask = jnp.asarray([True, False, False])

    def safe(x):
        return jnp.sum(jnp.where(mask, jnp.log(C.keep(mask, x, 1.0)), 0.0))

    def unsafe(x):
        return jnp.sum(jnp.where(mask, jnp.log(x), 0.0))

    np.testing.assert_array_equal(jax.grad(safe)(x), [1.0, 0.0, 0.0])
    assert np.isnan(jax.grad(unsafe)(x)).any()  # why the double where exists


def test_reduce_none_applies_weights_and_zeroes_dropped_elements():
    loss = jnp.asarray([1.0, 2.0, 3.0])
    out = C.reduce(
        loss, where=jnp.asarray([True, False, True]), weights=jnp.asarray([2.0, 5.0, 0.5])
    )
    np.testing.assert_array_equal(out, [2.0, 0.0, 1.5])


def test_zero_total_weight_mean_is_zero():
    loss = jnp.asarray([1.0, 2.0])
    assert float(C.reduce(loss, weights=jnp.zeros(2), reduction="mean")) == 0.0
    assert float(C.reduce(jnp.zeros((0,)), reduction="mean")) == 0.0
