"""fused_linear_token_log_probs: equal to the materialized logits, in value and gradients.

References: log softmax and the entropy written in float64 numpy/scipy, with their
gradients by hand (∂log p_y/∂z = onehot − p, ∂H/∂z = −p·(log p + H), the chain rule
through the cap and the temperature), and the materialized-logits counterparts
`token_log_probs` and `entropy_from_logits`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxloss
from jaxloss import _engine as E
from tests.compiled import jit_call
from tests.gradcheck import check_grads

N, D, V = 10, 5, 13  # 10 tokens
T, CAP = 1.7, 2.5
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, D))
WEIGHT = RNG.normal(size=(D, V))
BIAS = RNG.normal(size=V)
LABELS = RNG.integers(0, V, N)
C1, C2 = RNG.normal(size=N), RNG.normal(size=N)  # the cotangents of log p_y and H
KEEP = RNG.random(N) < 0.7


def reference(hidden, weight, bias, labels, *, temperature=1.0, cap=None):
    """(log p_y, H, and the gradients of Σ C1·log p_y + C2·H w.r.t. h, W, b), float64."""
    a = hidden @ weight + bias
    t = None if cap is None else np.tanh(a / cap)
    u = (a if cap is None else cap * t) / temperature
    log_p = special.log_softmax(u, axis=-1)
    p = np.exp(log_p)
    lp = log_p[np.arange(len(labels)), labels]
    h = -(p * log_p).sum(-1)
    onehot = np.eye(u.shape[-1])[labels]
    g = C1[:, None] * (onehot - p) + C2[:, None] * (-p * (log_p + h[:, None]))
    g = g / temperature
    if cap is not None:
        g = g * (1.0 - t**2)
    return lp, h, g @ weight.T, hidden.T @ g, g.sum(0)


def fused(hidden, weight, bias, labels, **options):
    return jaxloss.fused_linear_token_log_probs(hidden, weight, labels, bias=bias, **options)


def value_and_grads(fn, *args):
    """(log p_y, H, and the gradients of Σ C1·log p_y + C2·H), in one compiled function."""

    @jax.jit
    def both(*args):
        lp, h = fn(*args)
        grads = jax.grad(lambda *a: jnp.sum(C1 * fn(*a)[0] + C2 * fn(*a)[1]), argnums=(0, 1, 2))(
            *args
        )
        return (lp, h, *grads)

    return both(*args)


def assert_close(actual, expected, rtol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


ARGS64 = tuple(jnp.asarray(x, jnp.float64) for x in (HIDDEN, WEIGHT, BIAS))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, None])
def test_values_and_gradients_equal_float64_references(chunk_size):
    # chunk sizes that do (1, 10) and do not (3, 4) divide the 10 tokens, and the default.
    options = dict(temperature=T, logit_soft_cap=CAP, chunk_size=chunk_size, return_entropy=True)
    got = value_and_grads(lambda h, w, b: fused(h, w, b, LABELS, **options), *ARGS64)
    want = reference(HIDDEN, WEIGHT, BIAS, LABELS, temperature=T, cap=CAP)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.float64
        assert_close(g, w, 1e-12)

    def materialized(h, w, b):
        z = h @ w + b
        z = CAP * jnp.tanh(z / CAP)
        return (
            jaxloss.token_log_probs(z, LABELS, temperature=T),
            jaxloss.entropy_from_logits(z / T),
        )

    for g, w in zip(got, value_and_grads(materialized, *ARGS64), strict=True):
        assert_close(g, w, 1e-12)


def test_embedding_layout_no_bias_no_cap_log_probs_only():
    table = ARGS64[1].T
    got = jit_call(fused, ARGS64[0], table, None, LABELS, weight_layout="embedding", chunk_size=4)
    assert isinstance(got, jax.Array) and got.shape == (N,)
    want = reference(HIDDEN, WEIGHT, np.zeros(V), LABELS)[0]
    assert_close(got, want, 1e-12)
    grads = jax.jit(
        jax.grad(
            lambda h, w: jnp.sum(C1 * fused(h, w, None, LABELS, weight_layout="embedding")),
            argnums=(0, 1),
        )
    )(ARGS64[0], table)
    z = HIDDEN @ WEIGHT
    g = C1[:, None] * (np.eye(V)[LABELS] - special.softmax(z, axis=-1))
    assert_close(grads[0], g @ WEIGHT.T, 1e-12)
    assert_close(grads[1], (HIDDEN.T @ g).T, 1e-12)


@pytest.mark.parametrize("layout", ["dense", "embedding"])
def test_weight_tangent_in_vocabulary_blocks_forward_and_reverse(layout, monkeypatch):
    """The tangent map forms h·dW (and reverse mode ∂W) a vocabulary block at a
    time; blocks of 8 of the 13 entries (the last one shifted back to overlap the first)
    and chunks of 3 of the 10 tokens, equal to the float64 reference in both modes."""
    monkeypatch.setattr(E, "_BLOCK_BYTES", 0)  # the smallest block, 8 entries
    assert E._default_block(D, V) == 8
    options = dict(temperature=T, logit_soft_cap=CAP, chunk_size=3, return_entropy=True)
    dense = layout == "dense"

    def f(h, w, b):
        lp, ent = fused(h, w if dense else w.T, b, LABELS, weight_layout=layout, **options)
        return jnp.sum(C1 * lp + C2 * ent)

    want = reference(HIDDEN, WEIGHT, BIAS, LABELS, temperature=T, cap=CAP)[2:]
    for g, w in zip(jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*ARGS64), want, strict=True):
        assert_close(g, w, 1e-12)
    rng = np.random.default_rng(1)
    tangents = tuple(jnp.asarray(rng.normal(size=x.shape)) for x in ARGS64)
    _, got = jax.jit(lambda p, t: jax.jvp(f, p, t))(ARGS64, tangents)
    expected = sum(np.sum(g * np.asarray(t)) for g, t in zip(want, tangents, strict=True))
    assert_close(got, expected, 1e-12)
    # ∂W alone (the path whose transpose updates ∂W in place), forward against reverse.
    g = lambda w: fused(ARGS64[0], w if dense else w.T, None, LABELS, weight_layout=layout)  # noqa: E731
    forward, reverse = jax.jit(jax.jacfwd(g))(ARGS64[1]), jax.jit(jax.jacrev(g))(ARGS64[1])
    assert_close(forward, reverse, 1e-12)


@pytest.mark.parametrize("layout", ["dense", "embedding"])
def test_backward_pass_holds_no_second_weight_sized_array(layout, monkeypatch):
    """Forward + backward of a loss on the log-probabilities (XLA's accounting
    of the compiled program, nothing is run) holds a few [chunk, V] blocks and a
    [D, block] one, not a second [D, V] array (the weight gradient is an output), and
    does not grow with N. D = 256, V = 4096: [D, V] is 4 MiB, [chunk, V] 0.5 MiB."""
    d, v = 256, 4096
    monkeypatch.setattr(E, "_BLOCK_BYTES", 4 * d * 512)  # [D, block] = 0.5 MiB

    def temp_bytes(n):
        def loss(h, w, y, c):
            out = jaxloss.fused_linear_token_log_probs(h, w, y, weight_layout=layout, chunk_size=32)
            return jnp.sum(c * out)

        shapes = (
            jax.ShapeDtypeStruct((n, d), jnp.float32),
            jax.ShapeDtypeStruct((d, v) if layout == "dense" else (v, d), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32),
            jax.ShapeDtypeStruct((n,), jnp.float32),
        )
        program = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
        return program.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(256), temp_bytes(1024)
    assert large < d * v * 4 / 2
    assert large - small < 768 * 64  # only [N] per-token buffers grow with N


def test_masked_tokens_give_zero_and_zero_gradient_even_if_nan():
    hidden = HIDDEN.copy()
    hidden[~KEEP] = np.nan
    hidden = jnp.asarray(hidden)
    options = dict(where=KEEP, chunk_size=3, return_entropy=True)
    lp, h = jit_call(fused, hidden, ARGS64[1], ARGS64[2], LABELS, **options)
    want_lp, want_h = reference(HIDDEN, WEIGHT, BIAS, LABELS)[:2]
    assert_close(lp, np.where(KEEP, want_lp, 0.0), 1e-12)
    assert_close(h, np.where(KEEP, want_h, 0.0), 1e-12)
    gh, gw, gb = jax.jit(
        jax.grad(
            lambda *a: jnp.sum(
                C1 * fused(*a, LABELS, **options)[0] + fused(*a, LABELS, **options)[1]
            ),
            argnums=(0, 1, 2),
        )
    )(hidden, ARGS64[1], ARGS64[2])
    assert np.all(np.asarray(gh)[~KEEP] == 0.0)
    assert np.all(np.isfinite(gh)) and np.all(np.isfinite(gw)) and np.all(np.isfinite(gb))


def test_batched_tokens_and_broadcast_labels():
    hidden = jnp.asarray(HIDDEN.reshape(2, 5, D))
    labels = jnp.asarray(LABELS[:5])  # [5], broadcast over the 2 sequences
    got = jit_call(fused, hidden, ARGS64[1], ARGS64[2], labels, chunk_size=4)
    assert got.shape == (2, 5)
    want = reference(HIDDEN, WEIGHT, BIAS, np.tile(LABELS[:5], 2))[0].reshape(2, 5)
    assert_close(got, want, 1e-12)


def test_label_on_a_minus_inf_logit_and_out_of_range_labels():
    bias = BIAS.copy()
    bias[3] = -np.inf
    labels = LABELS.copy()
    labels[0], labels[1] = 3, V  # on the −inf class; outside [0, V)
    args = (ARGS64[0], ARGS64[1], jnp.asarray(bias))
    lp, h = jit_call(fused, *args, labels, chunk_size=4, return_entropy=True)
    assert lp[0] == np.finfo(np.float64).min and np.isnan(lp[1])
    log_p = special.log_softmax(HIDDEN @ WEIGHT + bias, axis=-1)
    p = np.exp(log_p)
    want_h = -special.xlogy(p, p).sum(-1)  # the −inf class carries no mass
    keep = np.arange(N) != 1  # every label but the out-of-range one
    picked = log_p[np.arange(N), np.where(keep, labels, 0)]
    lowest = np.finfo(np.float64).min  # for every label on the −inf class, as token_log_probs
    assert_close(np.asarray(lp)[keep], np.maximum(picked, lowest)[keep], 1e-12)
    assert_close(h, want_h, 1e-12)

    # Kept, the out-of-range label's row of the gradient is NaN too (never silently
    # finite); dropped with `where`, every gradient is finite.
    @jax.jit
    def gradients(h, w, b, labels):
        entropy = jax.grad(lambda h: jnp.sum(fused(h, w, b, labels, return_entropy=True)[1]))
        log_p = jax.grad(lambda h: jnp.sum(fused(h, w, b, labels)))
        kept = jax.grad(lambda h: jnp.sum(fused(h, w, b, labels, where=keep)))
        first = jax.grad(lambda h: fused(h, w, b, labels, where=keep)[0])
        return entropy(h), log_p(h), kept(h), first(h)

    g_entropy, g_log_p, g_kept, g0 = gradients(*args, labels)
    assert np.all(np.isfinite(g_entropy))
    gh = g_log_p
    assert np.all(np.isnan(gh[1])) and np.all(np.isfinite(np.delete(np.asarray(gh), 1, 0)))
    gh = g_kept
    assert np.all(np.isfinite(gh)) and np.all(gh[1] == 0.0)
    assert np.all(g0 == 0.0)  # the clipped log-probability has zero gradient


def test_bf16_inputs_are_computed_in_float32():
    args = tuple(jnp.asarray(x, jnp.bfloat16) for x in (HIDDEN, WEIGHT, BIAS))
    lp, h = jit_call(fused, *args, LABELS, temperature=T, return_entropy=True, chunk_size=4)
    assert lp.dtype == h.dtype == jnp.float32
    rounded = [np.asarray(x, np.float64) for x in args]
    want_lp, want_h = reference(*rounded, LABELS, temperature=T)[:2]
    assert_close(lp, want_lp, 1e-5)
    assert_close(h, want_h, 1e-5)


def test_check_grads_jit_and_vmap():
    def f(h, w, b):
        lp, ent = fused(h, w, b, LABELS, temperature=T, chunk_size=3, return_entropy=True)
        return C1 * lp + C2 * ent

    check_grads(f, ARGS64, order=1, modes=("rev",))
    assert_close(jax.jit(f)(*ARGS64), f(*ARGS64), 1e-12)
    stacked = jnp.stack([ARGS64[0], 2.0 * ARGS64[0]])
    per_batch = jax.jit(jax.vmap(lambda h: fused(h, ARGS64[1], ARGS64[2], LABELS, chunk_size=4)))(
        stacked
    )
    assert_close(per_batch[1], jit_call(fused, stacked[1], ARGS64[1], ARGS64[2], LABELS), 1e-12)


def test_explicitly_sharded_tokens_loop_per_device():
    mesh = jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    hidden = jax.device_put(ARGS64[0], sharding)
    labels = jax.device_put(jnp.asarray(LABELS), sharding)
    with jax.set_mesh(mesh):
        lp, h = jax.jit(
            lambda h, w, b, y: fused(h, w, b, y, chunk_size=4, return_entropy=True, where=KEEP)
        )(hidden, ARGS64[1], ARGS64[2], labels)
    want_lp, want_h = reference(HIDDEN, WEIGHT, BIAS, LABELS)[:2]
    assert_close(lp, np.where(KEEP, want_lp, 0.0), 1e-12)
    assert_close(h, np.where(KEEP, want_h, 0.0), 1e-12)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": jnp.array(1.0)}, TypeError, "temperature"),
        ({"logit_soft_cap": -1.0}, ValueError, "logit_soft_cap"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"weight_layout": "dense_t"}, ValueError, "weight_layout"),
        ({"labels": LABELS.astype(np.float32)}, TypeError, "integer"),
        ({"labels": LABELS[:3]}, ValueError, "broadcast"),
        ({"weight": WEIGHT.T}, ValueError, "weight"),
    ],
)
def test_bad_input_raises_naming_the_argument(options, error, match):
    kwargs = {"hidden": HIDDEN, "weight": WEIGHT, "labels": LABELS, **options}
    with pytest.raises(error, match=match):
        jaxloss.fused_linear_token_log_probs(
            kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("labels"), **kwargs
        )


def test_backward_probabilities_at_most_one_when_logits_round_above_the_saved_lse():
    """The backward pass recomputes a chunk's logits; at a logit of 5e9 (one float32 ulp
    is 512) they can round above the logsumexp saved by the forward pass, and exp of
    that overflowed to inf, then NaN gradients (seen on the CPU with two chunks). Every
    backward probability is exp(min(z − lse, 0)) ≤ 1."""
    z = jnp.array([[5.347e9, -1.6e9, 1.59e9]], jnp.float32)
    lse = z[:, 0] - 512.0  # the saved value, one ulp below the recomputed logit
    assert float(jnp.max(jnp.exp(E.log_probs(z, lse)))) == 1.0
    # End to end: tokens at that scale beside ordinary ones, in chunks of two.
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 4)).astype(np.float32)
    hidden[0] *= 1e4
    hidden[3] *= 1e9
    weight = rng.normal(size=(7, 4)).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32)
    labels = rng.integers(0, 7, size=4)
    for fn in (jaxloss.fused_linear_token_log_probs, jaxloss.fused_linear_cross_entropy):
        grads = jax.jit(
            jax.grad(
                lambda h, w, b, fn=fn: jnp.sum(
                    fn(h, w, labels, bias=b, weight_layout="embedding", chunk_size=2)
                ),
                argnums=(0, 1, 2),
            )
        )(hidden, weight, bias)
        for g in grads:
            assert np.isfinite(np.asarray(g)).all(), fn.__name__
