"""Vocab-parallel cross-entropy: 8-device checks (in a subprocess) and one-device identities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.host_devices import run_script

MESH = jax.sharding.Mesh(jax.devices()[:1], ("model",))


@pytest.fixture(scope="module")
def eight_device_report():
    """Run tests/multidevice_vocab.py on 8 host CPU devices, once, and read its report."""
    return run_script("multidevice_vocab.py")


SHARDED_CHECKS = [
    "vocab_parallel_cross_entropy[none]",
    "vocab_parallel_cross_entropy[mean]",
    "vocab_parallel_fused_linear_cross_entropy[dense,mean]",
    "vocab_parallel_fused_linear_cross_entropy[embedding,none]",
]
DATA_PARALLEL_CHECKS = [
    "data_parallel[Explicit,squared_error]",
    "data_parallel[Explicit,softmax_cross_entropy]",
    "data_parallel[Explicit,fused_linear_cross_entropy]",
    "data_parallel[Explicit,fused_linear_cross_entropy[shard_map]]",
    "data_parallel[Auto,squared_error]",
    "data_parallel[Auto,softmax_cross_entropy]",
]


def test_subprocess_ran_on_eight_devices(eight_device_report):
    assert eight_device_report["device_count"] == 8


@pytest.mark.parametrize("check", SHARDED_CHECKS)
def test_sharded_on_2x4_mesh_equals_unsharded(eight_device_report, check):
    """Values and gradients on a (data=2, model=4) mesh equal the unsharded function, float64."""
    assert eight_device_report[check] < 1e-12


@pytest.mark.parametrize("check", DATA_PARALLEL_CHECKS)
def test_data_parallel_mean_is_global(eight_device_report, check):
    """Batch sharded over 8 devices, jitted mean (masked and weighted) == one device."""
    assert eight_device_report[check] < 1e-12
    assert eight_device_report[f"sharded_gradient:{check}"]


# --------------------------------------------------------------------------------------
# In-process, on a one-device mesh: the option handling against softmax_cross_entropy
# --------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 5, 7)) * 2.0
LOGITS[0, 1, 3] = -np.inf
LABELS = RNG.integers(0, 7, size=(2, 5))
LABELS[1, 2] = -100
KEEP = RNG.random((2, 5)) < 0.7
WEIGHTS = RNG.random((2, 5))
CLASS_WEIGHTS = RNG.random(7) + 0.2


@functools.cache
def _sharded(axis, options, ndim=3):
    options = dict(options)
    class_axis = axis % ndim
    spec = P(*["model" if i == class_axis else None for i in range(ndim)])

    def local(logits, labels, arrays):
        return jaxloss.vocab_parallel_cross_entropy(
            logits, labels, axis_name="model", axis=axis, **arrays, **options
        )

    return jax.jit(
        jax.shard_map(
            local,
            mesh=MESH,
            in_specs=(spec, P(), {"class_weights": P("model"), "where": P(), "weights": P()}),
            out_specs=P(),
        )
    )


@pytest.mark.parametrize("axis, reduction", [(1, "none"), (-1, "mean")])
def test_all_options_equal_softmax_cross_entropy(axis, reduction):
    logits = np.moveaxis(LOGITS, -1, axis)
    options = (("ignore_index", -100), ("label_smoothing", 0.2), ("reduction", reduction))
    arrays = {"class_weights": CLASS_WEIGHTS, "where": KEEP, "weights": WEIGHTS}
    f = _sharded(axis, options)
    expected = jaxloss.softmax_cross_entropy(logits, LABELS, axis=axis, **arrays, **dict(options))
    np.testing.assert_allclose(f(logits, LABELS, arrays), expected, rtol=1e-12, atol=1e-12)
    grad = jax.grad(lambda z: jnp.sum(f(z, LABELS, arrays)))(logits)
    expected_grad = jax.grad(
        lambda z: jnp.sum(
            jaxloss.softmax_cross_entropy(z, LABELS, axis=axis, **arrays, **dict(options))
        )
    )(logits)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_label_outside_the_vocabulary_gives_nan():
    f = _sharded(-1, (), ndim=2)
    arrays = {"class_weights": CLASS_WEIGHTS, "where": KEEP[0] | True, "weights": WEIGHTS[0]}
    out = f(LOGITS[1], np.array([0, 7, -1, 3, 2]), arrays)
    assert np.isnan(out[1]) and np.isnan(out[2])
    assert np.isfinite(np.asarray(out)[[0, 3, 4]]).all()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: jaxloss.vocab_parallel_cross_entropy(
                jnp.zeros((3, 4)), jnp.zeros(5, int), axis_name="model"
            ),
            ValueError,
            r"`labels` of shape \(5,\).*\(3,\)",
        ),
        (
            lambda: jaxloss.vocab_parallel_cross_entropy(
                jnp.zeros((3, 4)), jnp.zeros(3), axis_name="model"
            ),
            TypeError,
            r"`labels` must be an integer array",
        ),
        (
            lambda: jaxloss.vocab_parallel_cross_entropy(
                jnp.zeros((3, 4)), jnp.zeros(3, int), axis_name="model", label_smoothing=2.0
            ),
            ValueError,
            r"`label_smoothing` must be in \[0.0, 1.0\]",
        ),
        (
            lambda: jaxloss.vocab_parallel_cross_entropy(
                jnp.zeros((3, 4)), jnp.zeros(3, int), axis_name="model", class_weights=jnp.ones(5)
            ),
            ValueError,
            r"`class_weights` must have shape \(4,\)",
        ),
    ],
)
def test_bad_input_errors_inside_shard_map(call, error, message):
    run = jax.shard_map(lambda: call(), mesh=MESH, in_specs=(), out_specs=P())
    with pytest.raises(error, match=message):
        run()
    with pytest.raises(error, match=message):
        jax.jit(run)()
