"""Vocab-parallel cross-entropy: 8-device checks (in a subprocess) and one-device identities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.compiled import jit_call
from tests.host_devices import run_script
from tests.torch_ce_reference import torch_cross_entropy

MESH = jax.sharding.Mesh(jax.devices()[:1], ("model",))


@pytest.fixture(scope="module")
def eight_device_report():
    """Run tests/multidevice_vocab.py on 8 host CPU devices, once, and read its report."""
    return run_script("multidevice_vocab.py")


SHARDED_CHECKS = [
    *(
        f"vocab_parallel_cross_entropy[torch,{cw},{reduction}]"
        for cw in ("class_weights", "no_class_weights")
        for reduction in ("none", "sum", "mean")
    ),
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
    "data_parallel[Explicit,fused_linear_policy_gradient_loss]",
    *(
        f"data_parallel[Explicit,fused_linear_preference_loss[{layout}{reduction}]]"
        for layout in ("", "shard_map,")
        for reduction in ("mean", "none")
    ),
    "data_parallel[Auto,squared_error]",
    "data_parallel[Auto,softmax_cross_entropy]",
]


def test_subprocess_ran_on_eight_devices(eight_device_report):
    assert eight_device_report["device_count"] == 8


def test_preference_pairs_that_do_not_divide_among_devices_raise(eight_device_report):
    assert eight_device_report["preference_uneven_pairs_raise"]


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


def _sharded_and_unsharded(axis, options, logits, labels, arrays):
    """The sharded loss and softmax_cross_entropy, values and gradients, in one jit."""
    f = _sharded(axis, options)

    def unsharded(z):
        return jaxloss.softmax_cross_entropy(z, labels, axis=axis, **arrays, **dict(options))

    grad = jax.grad(lambda z: jnp.sum(f(z, labels, arrays)))(logits)
    expected_grad = jax.grad(lambda z: jnp.sum(unsharded(z)))(logits)
    return f(logits, labels, arrays), unsharded(logits), grad, expected_grad


@pytest.mark.parametrize("axis, reduction", [(1, "none"), (-1, "mean")])
def test_all_options_equal_softmax_cross_entropy(axis, reduction):
    logits = np.moveaxis(LOGITS, -1, axis)
    options = (("ignore_index", -100), ("label_smoothing", 0.2), ("reduction", reduction))
    arrays = {"class_weights": CLASS_WEIGHTS, "where": KEEP, "weights": WEIGHTS}
    value, expected, grad, expected_grad = jit_call(
        _sharded_and_unsharded, axis, options, logits, LABELS, arrays
    )
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)
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


# --------------------------------------------------------------------------------------
# PyTorch's convention, −inf classes, narrow label dtypes, NaN, outside shard_map
# --------------------------------------------------------------------------------------

_R = np.random.default_rng(10)
Z = _R.normal(size=(6, 5)) * 2.0
Y = _R.integers(0, 5, size=6)
Y_IGNORED = np.where(np.arange(6) % 3 == 2, -100, Y)
CW = _R.random(5) + 0.3


@functools.cache
def _vp(options, with_class_weights):
    """vocab_parallel_cross_entropy on the one-device mesh: f(logits, labels[, class_weights])."""

    def local(z, y, *cw):
        cw = {"class_weights": cw[0]} if cw else {}
        return jaxloss.vocab_parallel_cross_entropy(z, y, axis_name="model", **cw, **dict(options))

    specs = (P(None, "model"), P()) + ((P("model"),) if with_class_weights else ())
    return jax.jit(jax.shard_map(local, mesh=MESH, in_specs=specs, out_specs=P()))


REDUCTIONS = ("none", "sum", "mean")


def _vp_every_reduction(ignore_index, label_smoothing, z, labels, *extra):
    """_vp's result for every reduction, in one compilation."""
    return [
        _vp(
            (
                ("ignore_index", ignore_index),
                ("label_smoothing", label_smoothing),
                ("reduction", reduction),
            ),
            bool(extra),
        )(z, labels, *extra)
        for reduction in REDUCTIONS
    ]


@pytest.mark.parametrize("ignore_index", [None, -100])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("class_weights", [None, "given"])
def test_torch_convention_every_combination(class_weights, label_smoothing, ignore_index):
    """Per token ("none"), "sum" and "mean" equal PyTorch's documented
    cross_entropy (float64 reference from its formula), with the smoothing term of class c
    weighted by w[c] and "mean" divided by Σ w[y] over the kept tokens."""
    labels = Y if ignore_index is None else Y_IGNORED
    extra = () if class_weights is None else (CW,)
    outputs = jit_call(_vp_every_reduction, ignore_index, label_smoothing, Z, labels, *extra)
    for reduction, got in zip(REDUCTIONS, outputs, strict=True):
        want = torch_cross_entropy(
            Z,
            labels,
            weight=None if class_weights is None else CW,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@functools.cache
def _vp_fused(options):
    def local(h, w, b, y):
        return jaxloss.vocab_parallel_fused_linear_cross_entropy(
            h, w, y, bias=b, axis_name="model", chunk_size=4, **dict(options)
        )

    specs = (P(), P(None, "model"), P("model"), P())
    return jax.jit(jax.shard_map(local, mesh=MESH, in_specs=specs, out_specs=P()))


H6 = _R.normal(size=(6, 3))
W6 = _R.normal(size=(3, 5))
B6 = _R.normal(size=5) * 0.3


def _vp_fused_every_reduction(ignore_index, h, w, b, labels):
    """_vp_fused's result for every reduction, in one compilation."""
    return [
        _vp_fused(
            (("ignore_index", ignore_index), ("label_smoothing", 0.2), ("reduction", reduction))
        )(h, w, b, labels)
        for reduction in REDUCTIONS
    ]


@pytest.mark.parametrize("ignore_index", [None, -100])
def test_fused_torch_convention(ignore_index):
    """PyTorch parity for vocab_parallel_fused_linear_cross_entropy (no class weights: it
    does not take them), label smoothing on, every reduction, against PyTorch's formula."""
    labels = Y if ignore_index is None else Y_IGNORED
    outputs = jit_call(_vp_fused_every_reduction, ignore_index, H6, W6, B6, labels)
    for reduction, got in zip(REDUCTIONS, outputs, strict=True):
        want = torch_cross_entropy(
            H6 @ W6 + B6,
            labels,
            ignore_index=ignore_index,
            label_smoothing=0.2,
            reduction=reduction,
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "call",
    [
        lambda: jaxloss.vocab_parallel_cross_entropy(
            jnp.zeros((3, 4)), jnp.zeros(3, int), axis_name="model"
        ),
        lambda: jaxloss.vocab_parallel_fused_linear_cross_entropy(
            jnp.zeros((3, 2)), jnp.zeros((2, 4)), jnp.zeros(3, int), axis_name="model"
        ),
    ],
    ids=["vocab_parallel_cross_entropy", "vocab_parallel_fused_linear_cross_entropy"],
)
def test_outside_shard_map_says_what_to_do(call):
    """Outside shard_map the functions raised JAX's
    NameError "unbound axis name"; now an error that says how to call them instead."""
    message = r"inside `jax.shard_map` over a mesh with that axis.*For unsharded inputs use"
    with pytest.raises(ValueError, match=message):
        call()
    with pytest.raises(ValueError, match=message):
        jax.jit(call)()


def test_mean_is_nan_for_a_nan_weight_or_an_out_of_range_label():
    """A "mean" returned 0 instead of NaN when a weight was
    NaN, or when an out-of-range label (with class weights) poisoned the count."""

    def local(z, y, w, cw):
        return jaxloss.vocab_parallel_cross_entropy(
            z, y, axis_name="model", weights=w, class_weights=cw, reduction="mean"
        )

    f = jax.jit(
        jax.shard_map(
            local, mesh=MESH, in_specs=(P(None, "model"), P(), P(), P("model")), out_specs=P()
        )
    )
    nan_weight = np.ones(6)
    nan_weight[2] = np.nan
    assert np.isnan(f(Z, Y, nan_weight, CW))
    bad_label = Y.copy()
    bad_label[1] = 5
    assert np.isnan(f(Z, bad_label, np.ones(6), CW))
    assert np.isfinite(f(Z, Y, np.ones(6), CW))


@pytest.mark.parametrize(
    "dtype, v, ids", [(jnp.uint8, 260, [3, 200]), (jnp.int16, 50257, [7, 30000])]
)
def test_narrow_label_dtypes(dtype, v, ids):
    """uint8 labels with V = 260 and int16 labels with
    V = 50257 gave NaN for valid ids (the bound wrapped). Uniform logits: log V."""
    f = _vp((("reduction", "none"),), False)
    out = f(jnp.zeros((2, v), jnp.float32), jnp.asarray(ids, dtype))
    np.testing.assert_allclose(out, [np.log(v)] * 2, rtol=1e-6)
    big = f(jnp.zeros((2, 6), jnp.float32), jnp.asarray([3, 2**32 + 3], jnp.int64))
    assert np.isfinite(big[0]) and np.isnan(big[1])


def _minus_inf_case(label_smoothing, z, labels):
    """Values and gradients of _vp and softmax_cross_entropy, in one compilation."""
    options = (("label_smoothing", label_smoothing), ("reduction", "none"))
    f = _vp(options, False)
    cotangent = jnp.linspace(0.5, 1.5, 6)
    grad = jax.grad(lambda z: jnp.sum(f(z, labels) * cotangent))(z)
    want_grad = jax.grad(
        lambda z: jnp.sum(
            jaxloss.softmax_cross_entropy(z, labels, label_smoothing=label_smoothing) * cotangent
        )
    )(z)
    want = jaxloss.softmax_cross_entropy(z, labels, label_smoothing=label_smoothing)
    return f(z, labels), want, grad, want_grad


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_label_on_a_minus_inf_class_agrees_with_softmax_cross_entropy(label_smoothing):
    """The label on a −inf class gave inf with gradient −1;
    now the largest float (times 1 − ε) and zero gradient from −log p_y, as
    softmax_cross_entropy; smoothing spreads over the finite classes only."""
    z = Z.copy()
    z[0, 3] = z[4, 1] = -np.inf
    labels = Y.copy()
    labels[0] = 3
    labels[4] = 1
    got, want, grad, want_grad = jit_call(_minus_inf_case, label_smoothing, z, labels)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got[0], (1 - label_smoothing) * np.finfo(np.float64).max)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-14)
    if label_smoothing == 0:
        assert np.all(np.asarray(grad)[[0, 4]] == 0)


def _both_modes(f):
    """jax.jacfwd and jax.jacrev of f in one compilation."""
    return jax.jit(lambda x: (jax.jacfwd(f)(x), jax.jacrev(f)(x)))


def test_forward_mode_is_finite_at_minus_inf_logits():
    """Issue 10, optax #1762 (NaN forward-mode tangents of a weighted log-softmax at −inf
    logits): jax.jacfwd (a vmap of jax.jvp) of both vocab-parallel losses, label smoothing
    and class weights on, is finite there and equals reverse mode."""
    z = Z.copy()
    z[0, 3] = z[4, 1] = -np.inf
    options = (("label_smoothing", 0.1), ("reduction", "none"))
    f = lambda z: _vp(options, True)(z, Y, CW)  # noqa: E731
    forward, reverse = _both_modes(f)(z)
    assert np.isfinite(np.asarray(forward)).all()
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-14)

    bias = B6.copy()
    bias[2] = -np.inf
    labels = np.where(Y == 2, 0, Y)
    g = lambda b: _vp_fused(options)(H6, W6, b, labels)  # noqa: E731
    forward, reverse = _both_modes(g)(bias)
    assert np.isfinite(np.asarray(forward)).all()
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-14)
