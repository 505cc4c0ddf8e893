"""fused_linear_cross_entropy: equal to the naive computation, chunking, memory, bad input.

The naive computation materializes the logits and applies `softmax_cross_entropy` (and
λ·`z_loss`), with the reduction written out; every option is compared with it in
float32, values and gradients, within 1e-5 relative (float64 references for the formula
itself are in the contract table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import _engine as E
from jaxloss import _large_vocab as LV
from tests.compiled import jit_call
from tests.gradcheck import check_grads
from tests.torch_ce_reference import torch_cross_entropy

N, D, V, CHUNK = 37, 16, 50, 8  # 37 tokens: four chunks of 8 and a tail of 5
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, D)).astype(np.float32)
WEIGHT = (RNG.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
BIAS = (RNG.normal(size=V) * 0.1).astype(np.float32)
LABELS = RNG.integers(0, V, size=N)
IGNORED = LABELS.copy()
IGNORED[[0, 9, 30]] = -100
KEEP = RNG.random(N) < 0.7
TOKEN_WEIGHTS = (RNG.random(N) * 2.0).astype(np.float32)


def naive(
    hidden,
    weight,
    bias,
    labels,
    *,
    ignore_index=None,
    where=None,
    weights=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_soft_cap=None,
    reduction="mean",
):
    """Materialized logits, then softmax_cross_entropy (+ λ·z_loss), reduced by hand."""
    z = hidden @ weight + (0.0 if bias is None else bias)
    if logit_soft_cap is not None:
        z = logit_soft_cap * jnp.tanh(z / logit_soft_cap)
    keep = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where)
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
    safe = jnp.where(keep, labels, 0)
    loss = jaxloss.softmax_cross_entropy(z, safe, label_smoothing=label_smoothing)
    if z_loss:
        loss = loss + z_loss * jaxloss.z_loss(z)
    w = jnp.where(keep, 1.0 if weights is None else weights, 0.0).astype(loss.dtype)
    if reduction == "none":
        return jnp.where(keep, loss, 0.0) * w
    total = jnp.sum(jnp.where(keep, loss, 0.0) * w)
    return total if reduction == "sum" else total / jnp.sum(w)


def fused(hidden, weight, bias, labels, **options):
    return jaxloss.fused_linear_cross_entropy(
        hidden, weight, labels, bias=bias, chunk_size=options.pop("chunk_size", CHUNK), **options
    )


def assert_close(actual, expected, rel):
    """Within ``rel`` of the expected values, relative to their largest magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


def value_and_grads(loss, options, reduction, dtype=jnp.float32):
    """The loss and its gradients with respect to hidden, weight and bias, under a jit
    shared by the calls with the same loss, reduction and Python-valued options."""
    args = [jnp.asarray(x, dtype) for x in (HIDDEN, WEIGHT, BIAS)]
    labels = jnp.asarray(options.pop("labels", LABELS))
    # Full float32 products: on GPUs the default is TF32 (10-bit mantissa), which would
    # make the two computations differ by their summation order at 1e-3, not 1e-7.
    with jax.default_matmul_precision("highest"):
        return jit_call(_value_and_grads, loss, reduction, *args, labels, **options)


def _value_and_grads(loss, reduction, h, w, b, labels, **options):
    cotangent = jnp.linspace(0.5, 1.5, N) if reduction == "none" else 1.0

    def scalar(h, w, b):
        return jnp.sum(loss(h, w, b, labels, reduction=reduction, **options) * cotangent)

    return loss(h, w, b, labels, reduction=reduction, **options), jax.grad(
        scalar, argnums=(0, 1, 2)
    )(h, w, b)


OPTIONS = {
    "plain": {},
    "ignore_index": {"ignore_index": -100, "labels": IGNORED},
    "where": {"where": KEEP},
    "weights": {"weights": TOKEN_WEIGHTS},
    "label_smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2},
    "logit_soft_cap": {"logit_soft_cap": 3.0},
    "all": {
        "ignore_index": -100,
        "labels": IGNORED,
        "where": KEEP,
        "weights": TOKEN_WEIGHTS,
        "label_smoothing": 0.1,
        "z_loss": 1e-2,
        "logit_soft_cap": 3.0,
    },
}


@pytest.mark.parametrize(
    "name, reduction",
    [(name, "mean") for name in OPTIONS] + [("plain", "sum"), ("all", "none")],
)
def test_value_and_gradients_equal_naive_float32(name, reduction):
    got, got_grads = value_and_grads(fused, dict(OPTIONS[name]), reduction)
    want, want_grads = value_and_grads(naive, dict(OPTIONS[name]), reduction)
    assert got.dtype == jnp.float32
    assert_close(got, want, 1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == jnp.float32
        assert_close(g, w, 1e-5)


# bf16 inputs: the products see the same bf16 numbers and accumulate in float32, so the
# value is the float32 value on the rounded inputs; the gradient products take the
# softmax gradient rounded to bf16 (relative error 2⁻⁹), hence this documented tolerance.
BF16_GRAD_TOL = 1e-2


def test_bf16_inputs_accumulate_in_float32():
    options = dict(OPTIONS["all"])
    got, got_grads = value_and_grads(fused, dict(options), "mean", dtype=jnp.bfloat16)
    rounded = [jnp.asarray(x, jnp.bfloat16).astype(jnp.float32) for x in (HIDDEN, WEIGHT, BIAS)]
    labels = jnp.asarray(options.pop("labels"))

    def scalar(h, w, b):
        return naive(h, w, b, labels, **options)

    want, want_grads = jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2)))(*rounded)
    assert got.dtype == jnp.float32
    assert_close(got, want, 1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == jnp.bfloat16
        assert_close(g, w, BF16_GRAD_TOL)


def assert_fused_equals_naive_float64(chunk_size):
    """Every option on, "mean": value and gradients within 1e-12 of naive, in float64."""
    options = dict(OPTIONS["all"], chunk_size=chunk_size)
    got, got_grads = value_and_grads(fused, options, "mean", dtype=jnp.float64)
    want, want_grads = value_and_grads(naive, dict(OPTIONS["all"]), "mean", dtype=jnp.float64)
    assert_close(got, want, 1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close(g, w, 1e-12)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    assert_fused_equals_naive_float64(chunk_size)


def test_default_chunks_on_cpu_and_on_accelerators(monkeypatch):
    # CPU: a [chunk, V] float32 block of about 16 MiB, at least 64 tokens, a power of two.
    assert LV.default_chunk(16384, 32768) == 128
    assert LV.default_chunk(16384, 131072) == 64
    assert LV.default_chunk(100, 32768) == 100
    # GPU/TPU: about 512 MiB, at least 1024 tokens, and the weight gradient updated whole.
    monkeypatch.setattr(E, "_on_accelerator", lambda: True)
    assert LV.default_chunk(16384, 32768) == 4096
    assert LV.default_chunk(16384, 131072) == 1024
    assert LV.default_chunk(16384, 1 << 20) == 1024
    assert LV._default_block(2048, 131072) == 131072
    # and the accelerator path (one weight-gradient block, a ragged last chunk) is exact.
    monkeypatch.setattr(E, "_ACCELERATOR_MIN_CHUNK", 16)
    monkeypatch.setattr(E, "_ACCELERATOR_CHUNK_BYTES", 0)
    assert_fused_equals_naive_float64(None)


def test_embedding_layout_equals_dense_with_the_transposed_weight(monkeypatch):
    # Blocks of 16 vocabulary entries for the weight-gradient update: three and a tail.
    monkeypatch.setattr(E, "_BLOCK_BYTES", 4 * D * 16)
    table = jnp.asarray(WEIGHT.T, jnp.float64)
    h, b = jnp.asarray(HIDDEN, jnp.float64), jnp.asarray(BIAS, jnp.float64)

    def loss(w, layout):
        return jaxloss.fused_linear_cross_entropy(
            h, w, LABELS, bias=b, weight_layout=layout, chunk_size=CHUNK, z_loss=1e-2
        )

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    v_table, g_table = value_and_grad(table, "embedding")
    v_dense, g_dense = value_and_grad(table.T, "dense")
    np.testing.assert_allclose(v_table, v_dense, rtol=1e-12)
    np.testing.assert_allclose(g_table, g_dense.T, rtol=1e-12, atol=1e-15)
    want = jax.jit(jax.grad(lambda w: naive(h, w, b, jnp.asarray(LABELS), z_loss=1e-2)))(table.T)
    assert_close(g_dense, want, 1e-12)


def test_leading_axes_are_tokens():
    h = jnp.asarray(HIDDEN[:36].reshape(4, 9, D))
    labels, keep = LABELS[:36].reshape(4, 9), KEEP[:36].reshape(4, 9)
    per_token = jit_call(
        jaxloss.fused_linear_cross_entropy,
        h, WEIGHT, labels, where=keep, chunk_size=CHUNK, reduction="none",
    )  # fmt: skip
    flat = jit_call(
        jaxloss.fused_linear_cross_entropy,
        h.reshape(36, D), WEIGHT, labels.reshape(36), where=keep.reshape(36), reduction="none",
    )  # fmt: skip
    assert per_token.shape == (4, 9)
    np.testing.assert_allclose(per_token.reshape(36), flat, rtol=1e-6)


def test_gradient_with_respect_to_one_input_at_a_time():
    h, w, b = (jnp.asarray(x, jnp.float64) for x in (HIDDEN, WEIGHT, BIAS))
    f = lambda h, w, b: fused(h, w, b, LABELS, where=KEEP, weights=TOKEN_WEIGHTS)  # noqa: E731
    g = lambda h, w, b: naive(h, w, b, LABELS, where=KEEP, weights=TOKEN_WEIGHTS)  # noqa: E731
    for argnum in range(3):
        got, want = (jax.jit(jax.grad(fn, argnum))(h, w, b) for fn in (f, g))
        assert_close(got, want, 1e-12)


def test_gradient_with_respect_to_token_weights():
    h, w, b = (jnp.asarray(x, jnp.float64) for x in (HIDDEN, WEIGHT, BIAS))
    weights = jnp.asarray(TOKEN_WEIGHTS, jnp.float64)
    for reduction in ("mean", "sum", "none"):
        f = lambda t, r=reduction: jnp.sum(fused(h, w, b, LABELS, weights=t, reduction=r))  # noqa: E731
        g = lambda t, r=reduction: jnp.sum(naive(h, w, b, LABELS, weights=t, reduction=r))  # noqa: E731
        assert_close(jax.jit(jax.grad(f))(weights), jax.jit(jax.grad(g))(weights), 1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_and_reverse_mode_float64(reduction):
    """Numerical derivatives (the contract table checks second order for "none")."""
    h, w, b = (jnp.asarray(x, jnp.float64) for x in (HIDDEN[:11], WEIGHT[:, :11], BIAS[:11]))
    labels, keep = LABELS[:11] % 11, KEEP[:11]
    weights = jnp.asarray(TOKEN_WEIGHTS[:11], jnp.float64)

    def f(h, w, b):
        out = jaxloss.fused_linear_cross_entropy(
            h,
            w,
            labels,
            bias=b,
            where=keep,
            weights=weights,
            chunk_size=4,
            label_smoothing=0.1,
            logit_soft_cap=2.0,
            reduction=reduction,
        )
        return jnp.sum(out * jnp.linspace(0.5, 1.5, out.size))

    check_grads(jax.jit(f), (h, w, b), order=1, modes=("fwd", "rev"))


def test_dropped_tokens_with_nan_hidden_get_zero_gradient():
    h = HIDDEN.astype(np.float64).copy()
    dropped = (IGNORED == -100) | ~KEEP
    h[dropped] = np.nan
    grads = jax.jit(
        jax.grad(
            lambda h, w: fused(h, w, None, IGNORED, ignore_index=-100, where=KEEP), argnums=(0, 1)
        )
    )(jnp.asarray(h), jnp.asarray(WEIGHT, jnp.float64))
    assert np.all(np.asarray(grads[0])[dropped] == 0)
    assert np.isfinite(np.asarray(grads[0])).all() and np.isfinite(np.asarray(grads[1])).all()


def test_label_outside_the_vocabulary_gives_nan_loss_and_gradient():
    labels = LABELS.copy()
    labels[3] = V
    per_token = jit_call(fused, HIDDEN, WEIGHT, None, labels, reduction="none")
    assert np.isnan(per_token[3]) and np.isfinite(np.delete(np.asarray(per_token), 3)).all()
    assert np.isnan(jax.jit(jax.grad(lambda h: fused(h, WEIGHT, None, labels)))(HIDDEN)).any()


def test_no_retrace_and_jit_equals_eager():
    traces = []

    @jax.jit
    def f(h, y):
        traces.append(1)
        return jaxloss.fused_linear_cross_entropy(h, WEIGHT, y, chunk_size=CHUNK)

    first = f(HIDDEN, LABELS)
    f(HIDDEN + 1.0, LABELS[::-1].copy())
    assert len(traces) == 1
    eager = jaxloss.fused_linear_cross_entropy(HIDDEN, WEIGHT, LABELS, chunk_size=CHUNK)
    np.testing.assert_allclose(first, eager, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Memory: XLA's accounting of the compiled forward + backward (compile only, no run)
# --------------------------------------------------------------------------------------


def _temp_bytes(loss, n, d=32, v=4096):
    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    program = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    return program.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_logits_are_never_materialized(reduction):
    """Temp memory stays far below one [N, V] float32 array and does not grow with N."""

    def loss(h, w, y):
        out = jaxloss.fused_linear_cross_entropy(h, w, y, chunk_size=64, reduction=reduction)
        return jnp.mean(out)

    logits_bytes = 2048 * 4096 * 4
    small, large = _temp_bytes(loss, 512), _temp_bytes(loss, 2048)
    naive_bytes = _temp_bytes(lambda h, w, y: naive(h, w, None, y), 2048)
    assert naive_bytes >= logits_bytes  # the naive program does hold the logits
    assert large < logits_bytes / 8
    # Only the [N] per-token buffers (and [N, D] for the hidden gradient) grow with N.
    assert large - small < 1536 * (2 * 4 + 32 * 4) * 2


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

h3, w34, y3 = jnp.zeros((3, 3)), jnp.zeros((3, 4)), jnp.zeros(3, int)
BAD_CALLS = [
    (lambda: jaxloss.fused_linear_cross_entropy(h3, jnp.zeros((2, 4)), y3), ValueError,
     r"`weight` of shape \(2, 4\) does not match `hidden` of shape \(3, 3\).*\[D, V\]"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, weight_layout="embedding"),
     ValueError, r"with weight_layout='embedding' it must be \[V, D\]"),
    # A weight in the other layout: the message names the option that takes it.
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34.T, y3), ValueError,
     r"must be \[D, V\] with D = 3\. For a \[V, D\] table \(tied embeddings\), pass "
     r"weight_layout='embedding'\."),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, weight_layout="embedding"),
     ValueError, r"For a \[D, V\] kernel, pass weight_layout='dense'\."),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, weight_layout="kernel"),
     ValueError, r"`weight_layout` must be one of \('dense', 'embedding'\), got 'kernel'"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, jnp.zeros(4, int)), ValueError,
     r"`labels` of shape \(4,\) must have the shape of `hidden` without its feature axis"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, jnp.zeros(3)), TypeError,
     r"`labels` must be an integer array"),
    (lambda: jaxloss.fused_linear_cross_entropy(jnp.zeros((3, 3), int), w34, y3), TypeError,
     r"`hidden` must be a floating-point array"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, bias=jnp.zeros(3)), ValueError,
     r"`bias` must have shape \(4,\)"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, label_smoothing=1.5), ValueError,
     r"`label_smoothing` must be in \[0.0, 1.0\]"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, label_smoothing=jnp.array(0.1)),
     TypeError, r"`label_smoothing` must be a Python number"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, z_loss=-1.0), ValueError,
     r"`z_loss` must be a non-negative finite number"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, logit_soft_cap=0.0), ValueError,
     r"`logit_soft_cap` must be a positive finite number"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, chunk_size=0), ValueError,
     r"`chunk_size` must be a positive int or None, got 0"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, chunk_size=2.0), TypeError,
     r"`chunk_size` must be a positive int or None, got 2.0"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, reduction="avg"), ValueError,
     r"`reduction` must be one of"),
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, where=jnp.ones(3)), TypeError,
     r"`where` must be a boolean mask"),
    # A non-int ignore_index.
    (lambda: jaxloss.fused_linear_cross_entropy(h3, w34, y3, ignore_index=True), TypeError,
     r"`ignore_index` must be an int class id"),
]  # fmt: skip


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_errors_eagerly_and_under_jit(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


# --------------------------------------------------------------------------------------
# PyTorch's convention, −inf bias entries, narrow label dtypes, NaN weights
# --------------------------------------------------------------------------------------

_R = np.random.default_rng(10)
H7 = _R.normal(size=(7, 4))  # 7 tokens, chunks of 3: two chunks and a tail of one
W7 = _R.normal(size=(4, 6)) / 2.0
B7 = _R.normal(size=6) * 0.5
Y7 = _R.integers(0, 6, size=7)
Y7_IGNORED = np.where(np.arange(7) % 3 == 1, -100, Y7)


@pytest.mark.parametrize("ignore_index", [None, -100])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_torch_convention_every_combination(label_smoothing, ignore_index):
    """Per token ("none"), "sum" and "mean" equal PyTorch's documented
    cross_entropy (float64 reference from its formula). No class weights here: the fused
    losses do not take them (softmax_cross_entropy does, on materialized logits)."""
    labels = Y7 if ignore_index is None else Y7_IGNORED
    for reduction in ("none", "sum", "mean"):
        got = jaxloss.fused_linear_cross_entropy(
            jnp.asarray(H7),
            jnp.asarray(W7),
            labels,
            bias=jnp.asarray(B7),
            chunk_size=3,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        want = torch_cross_entropy(
            H7 @ W7 + B7,
            labels,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def _fused_and_materialized(bias, labels, reduction, **options):
    """(fused, softmax_cross_entropy of the materialized logits) as functions of (h, W, b)."""

    def fused_loss(h, w, b):
        return jaxloss.fused_linear_cross_entropy(
            h, w, labels, bias=b, chunk_size=3, reduction=reduction, **options
        )

    def materialized(h, w, b):
        out = jaxloss.softmax_cross_entropy(h @ w + b, labels, reduction=reduction, **options)
        return out

    return fused_loss, materialized


def _values_and_grads(f, args, n):
    cotangent = jnp.linspace(0.5, 1.5, n)
    scalar = lambda *a: jnp.sum(f(*a) * cotangent)  # noqa: E731
    return jax.jit(lambda *a: (f(*a), jax.grad(scalar, argnums=(0, 1, 2))(*a)))(*args)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_minus_inf_bias_agrees_with_softmax_cross_entropy(label_smoothing, reduction):
    """A −inf bias entry with label smoothing gave inf per
    token and smoothed over K = V classes. Now, as softmax_cross_entropy on the same logits:
    the smoothing mass goes to the K finite classes, and a label on the −inf class gives the
    largest float with zero gradient from −log p_y. Value and gradients, float64."""
    bias = B7.copy()
    bias[2] = -np.inf
    labels = np.where(Y7 == 2, 0, Y7)
    labels[4] = 2  # a token labelled with the impossible class
    args = tuple(jnp.asarray(x) for x in (H7, W7, bias))
    fused_loss, materialized = _fused_and_materialized(
        bias, labels, reduction, label_smoothing=label_smoothing
    )
    got, got_grads = _values_and_grads(fused_loss, args, 7)
    want, want_grads = _values_and_grads(materialized, args, 7)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    if reduction == "none":  # −log p_y capped at the largest float
        big = np.finfo(np.float64).max
        np.testing.assert_allclose(got[4], (1.0 - label_smoothing) * big, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_forward_mode_is_finite_at_minus_inf_bias(reduction):
    """Issue 10, optax #1762 (NaN tangents of a log-softmax at −inf logits): jax.jvp and
    jax.jacfwd of the fused loss with −inf bias entries (label smoothing on) are finite and
    equal reverse mode of softmax_cross_entropy on the materialized logits."""
    bias = B7.copy()
    bias[[1, 5]] = -np.inf
    labels = np.where((Y7 == 1) | (Y7 == 5), 0, Y7)
    h, w, b = (jnp.asarray(x) for x in (H7, W7, bias))
    fused_loss, materialized = _fused_and_materialized(bias, labels, reduction, label_smoothing=0.1)
    ones = tuple(jnp.ones_like(x) for x in (h, w, b))
    _, tangent = jax.jit(lambda p, t: jax.jvp(fused_loss, p, t))((h, w, b), ones)
    assert np.isfinite(np.asarray(tangent)).all()
    forward = jax.jit(jax.jacfwd(fused_loss, argnums=(0, 2)))(h, w, b)
    reverse = jax.jit(jax.jacrev(materialized, argnums=(0, 2)))(h, w, b)
    for fwd, rev in zip(forward, reverse, strict=True):
        assert np.isfinite(np.asarray(fwd)).all()
        np.testing.assert_allclose(fwd, rev, rtol=1e-10, atol=1e-12)


def test_large_bias_with_ragged_chunks_has_finite_gradients():
    """reduction="none", a chunk that does not divide N
    and a bias entry above log(float32 max) ≈ 88.7 gave NaN ∂b and ∂W (the padding rows of
    the last chunk overflowed exp). Float32, against the materialized logits."""
    bias = B7.astype(np.float32).copy()
    bias[3] = 100.0
    args = tuple(jnp.asarray(x, jnp.float32) for x in (H7, W7, bias))
    fused_loss, materialized = _fused_and_materialized(bias, Y7, "none")
    got, got_grads = _values_and_grads(fused_loss, args, 7)
    want, want_grads = _values_and_grads(materialized, args, 7)
    assert_close(got, want, 1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert np.isfinite(np.asarray(g)).all()
        assert_close(g, w, 1e-5)


@pytest.mark.parametrize(
    "dtype, v, ids",
    [(jnp.uint8, 260, [3, 200]), (jnp.int16, 50257, [7, 30000]), (jnp.uint16, 50257, [9, 50000])],
)
def test_narrow_label_dtypes(dtype, v, ids):
    """With V beyond the labels' dtype (uint8 and V = 260,
    int16 and V = 50257) the bound wrapped and valid labels gave NaN. Uniform logits: log V."""
    labels = jnp.asarray(ids, dtype)
    for reduction in ("none", "mean"):
        got = jit_call(
            jaxloss.fused_linear_cross_entropy,
            jnp.ones((2, 2), jnp.float32),
            jnp.zeros((2, v), jnp.float32),
            labels,
            reduction=reduction,
        )
        np.testing.assert_allclose(got, np.full(got.shape, np.log(v)), rtol=1e-6)
    out = jit_call(
        jaxloss.fused_linear_cross_entropy,
        jnp.ones((2, 2), jnp.float32),
        jnp.zeros((2, v), jnp.float32),
        labels,
        ignore_index=ids[1],
        reduction="none",
    )
    np.testing.assert_allclose(out, [np.log(v), 0.0], rtol=1e-6)


def test_64_bit_labels_beyond_the_vocabulary_give_nan():
    """An int64 (or uint64) id ≥ 2³² must be out of
    range (NaN), never wrap into another class."""
    for dtype in (jnp.int64, jnp.uint64, jnp.uint32):
        big = 2**32 + 3 if dtype != jnp.uint32 else 2**31 + 3
        labels = jnp.asarray([3, big], dtype)
        out = jaxloss.fused_linear_cross_entropy(
            jnp.asarray(H7[:2]), jnp.asarray(W7), labels, reduction="none"
        )
        assert np.isfinite(out[0]) and np.isnan(out[1])


def test_mean_with_a_nan_weight_is_nan():
    """A "mean" returned 0 when a weight was NaN (the
    count turned NaN and the guard for an empty mask mapped it to 0)."""
    weights = jnp.asarray([1.0, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0])
    out = jit_call(
        jaxloss.fused_linear_cross_entropy,
        jnp.asarray(H7), jnp.asarray(W7), Y7, weights=weights, chunk_size=3,
    )  # fmt: skip
    assert np.isnan(out)
    nothing = jit_call(
        jaxloss.fused_linear_cross_entropy,
        jnp.asarray(H7), jnp.asarray(W7), Y7, where=jnp.zeros(7, bool), chunk_size=3,
    )  # fmt: skip
    assert nothing == 0.0


def test_negative_ids_without_ignore_index_raise_when_concrete():
    """For the fused loss too: PyTorch's −100 padding without
    ``ignore_index`` raises where the labels are concrete; under jit the documented NaN stays."""
    labels = jnp.array([0, -100, 2])
    with pytest.raises(ValueError, match=r"negative class ids \[-100\].*`ignore_index=-100`"):
        jaxloss.fused_linear_cross_entropy(h3, w34, labels)
    out = jax.jit(lambda y: jaxloss.fused_linear_cross_entropy(h3, w34, y, reduction="none"))(
        labels
    )
    assert np.isnan(out[1]) and np.isfinite(out[0]) and np.isfinite(out[2])
