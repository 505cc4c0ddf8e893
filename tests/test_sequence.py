"""CTC loss: the float64 α-recursion reference (Graves et al. 2006), PyTorch's semantics,
the closed-form gradient, never-negative values, impossible alignments, errors, optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import jaxloss
from tests.contract_table import np_ctc_loss
from tests.gradcheck import check_grads


def _batch(seed=0, n=5, frames=7, classes=5, size=4, blank_id=0):
    """Repeats, an empty label sequence, a zero-frame sequence and padded frames/labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, frames, classes)) * 2
    ids = [k for k in range(classes) if k != blank_id]
    labels = rng.choice(ids, size=(n, size))
    labels[0, 1] = labels[0, 0]  # "a a" needs a blank in between
    labels[1, 1:3] = labels[1, 0]  # "a a a"
    logit_lengths = np.array([frames, frames, 3, 0, 5])[:n]
    label_lengths = np.array([size, 3, 0, 0, 2])[:n]
    labels[4, 2:] = -1  # padding past the length: any id
    return logits, labels, logit_lengths, label_lengths


def _fd_grad(f, x, h=1e-6):
    """Central finite differences of a float64 numpy function, entry by entry."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("blank_id", [0, 2])
def test_values_match_the_alpha_recursion_float64_and_float32(x64, blank_id):
    logits, labels, t_len, l_len = _batch(blank_id=blank_id)
    kw = dict(logit_lengths=t_len, label_lengths=l_len, blank_id=blank_id)
    ref = np_ctc_loss(logits, labels, t_len, l_len, blank_id=blank_id)
    assert ref[3] == 0.0  # zero frames, zero labels: p = 1
    out64 = jaxloss.ctc_loss(jnp.asarray(logits), labels, **kw)
    assert out64.dtype == jnp.float64
    np.testing.assert_allclose(out64, ref, rtol=1e-10, atol=1e-12)
    out32 = jaxloss.ctc_loss(jnp.asarray(logits, jnp.float32), labels, **kw)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, ref, rtol=1e-5, atol=1e-6)


def test_single_alignment_and_uniform_logits_closed_forms():
    # Uniform y = 1/K: p = (#alignments)/K^T. "1 1" in 3 frames has the single alignment
    # (1, ∅, 1); "1" in 2 frames has 3: (1, 1), (∅, 1), (1, ∅).
    k = 4
    z = jnp.zeros((2, 3, k))
    out = jaxloss.ctc_loss(z, jnp.array([[1, 1], [1, 0]]), logit_lengths=jnp.array([3, 2]),
                           label_lengths=jnp.array([2, 1]))  # fmt: skip
    np.testing.assert_allclose(out, [3 * np.log(k), 2 * np.log(k) - np.log(3)], rtol=1e-6)


def test_gradient_matches_finite_differences_of_the_reference(x64):
    logits, labels, t_len, l_len = _batch(seed=1, n=5, frames=5, classes=4, size=3)
    w = np.array([1.0, 0.5, 2.0, 1.5, 0.7])  # a weighted sum: each sequence's gradient

    def ref(z):
        return float(np.sum(w * np_ctc_loss(z, labels, t_len, l_len)))

    expected = _fd_grad(ref, logits)
    loss = lambda z: jnp.sum(  # noqa: E731
        jnp.asarray(w) * jaxloss.ctc_loss(z, labels, logit_lengths=t_len, label_lengths=l_len)
    )
    g64 = jax.grad(loss)(jnp.asarray(logits))
    np.testing.assert_allclose(g64, expected, rtol=1e-6, atol=1e-8)
    g32 = jax.grad(loss)(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(g32, expected, rtol=1e-4, atol=1e-5)
    # Frames past a sequence's length get exactly zero gradient; each frame's gradient
    # sums to zero over the classes (softmax − posterior, both distributions).
    past = np.arange(logits.shape[1])[None, :] >= t_len[:, None]
    assert np.all(np.asarray(g64)[past] == 0)
    np.testing.assert_allclose(np.asarray(g64).sum(-1), 0, atol=1e-12)


def test_forward_mode_equals_reverse_mode_and_jit_vmap(x64):
    logits, labels, t_len, l_len = _batch(seed=2)
    z = jnp.asarray(logits)
    kw = dict(logit_lengths=t_len, label_lengths=l_len)
    f = lambda z: jaxloss.ctc_loss(z, labels, **kw, reduction="sum")  # noqa: E731
    tangent = jnp.asarray(np.random.default_rng(3).normal(size=logits.shape))
    _, jvp = jax.jvp(f, (z,), (tangent,))
    np.testing.assert_allclose(jvp, jnp.sum(jax.grad(f)(z) * tangent), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(f)(z), f(z), rtol=1e-12)
    per_example = jax.vmap(lambda a, b, c, d: jaxloss.ctc_loss(a, b, logit_lengths=c,
                                                               label_lengths=d))  # fmt: skip
    np.testing.assert_allclose(per_example(z, labels, t_len, l_len),
                               jaxloss.ctc_loss(z, labels, **kw), rtol=1e-12)  # fmt: skip


def test_leading_batch_dims_and_broadcast_labels():
    rng = np.random.default_rng(4)
    z = jnp.asarray(rng.normal(size=(2, 3, 6, 4)), jnp.float32)
    labels = np.array([1, 2, 2])
    out = jaxloss.ctc_loss(z, labels)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, np_ctc_loss(np.asarray(z), labels), rtol=1e-5)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignment_is_inf_or_zero_with_zero_gradient(zero_infinity):
    # "1 1 2" needs 4 frames (1 ∅ 1 2); sequence 0 has 3. Sequence 1 is possible.
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
    labels = jnp.array([[1, 1, 2], [1, 2, 0]])
    kw = dict(label_lengths=jnp.array([3, 2]), zero_infinity=zero_infinity)
    out = jaxloss.ctc_loss(z, labels, **kw)
    assert out[0] == (0.0 if zero_infinity else np.inf)
    assert np.isfinite(out[1]) and out[1] > 0
    grad = jax.grad(lambda z: jnp.sum(jaxloss.ctc_loss(z, labels, **kw)[1:]))(z)

    def finite_sum(z):
        out = jaxloss.ctc_loss(z, labels, **kw)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0))

    grad_all = jax.grad(finite_sum)(z)
    assert np.all(np.asarray(grad_all)[0] == 0)
    np.testing.assert_allclose(grad_all[1], grad[1], rtol=1e-6)
    ref = np_ctc_loss(np.asarray(z), labels, None, [3, 2], zero_infinity=zero_infinity)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_masked_frames_and_sequences_with_nan_get_zero_gradient():
    logits, labels, t_len, l_len = _batch(seed=6)
    z = np.array(logits, np.float32)
    past = np.arange(z.shape[1])[None, :] >= t_len[:, None]
    z[past] = np.nan  # frames past the length
    z[2] = np.inf  # a dropped sequence
    keep = jnp.array([True, True, False, True, True])
    f = lambda z: jaxloss.ctc_loss(z, labels, logit_lengths=t_len, label_lengths=l_len,  # noqa: E731
                                   where=keep, reduction="mean")  # fmt: skip
    value, grad = jax.value_and_grad(f)(jnp.asarray(z))
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
    assert np.all(np.asarray(grad)[past] == 0) and np.all(np.asarray(grad)[2] == 0)


def _peaked(draw_logits, labels, scale):
    """Logits that make one alignment of ``labels`` almost certain: p ≈ 1, ℓ ≈ 0."""
    z = np.asarray(draw_logits, np.float32)
    frames = z.shape[0]
    path = [k for c in labels for k in (c, 0)][:frames]
    path += [0] * (frames - len(path))
    z[np.arange(frames), path] += scale
    return z


@jax.jit
def _value_and_grad(z, labels, label_lengths):
    def total(z):
        return jaxloss.ctc_loss(z, labels, label_lengths=label_lengths).sum()

    return jaxloss.ctc_loss(z, labels, label_lengths=label_lengths), jax.grad(total)(z)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(8.0, 40.0),
    n_labels=st.integers(0, 3),
)
def test_never_negative_and_finite_gradient(seed, scale, n_labels):
    # optax #1771: near p = 1 rounding gives −log p < 0 in float32. The loss is clamped at
    # 0 and its gradient (the exact one) stays finite.
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 4, size=(3,))
    z = _peaked(rng.normal(size=(8, 4)) * 0.1, labels[:n_labels], scale)
    zs = jnp.asarray(np.stack([z, z * 0.5, z + 3.0]))  # also a shifted copy (same loss)
    out, grad = _value_and_grad(zs, labels[None], jnp.full(3, n_labels))
    assert np.all(np.asarray(out) >= 0)
    assert np.isfinite(np.asarray(grad)).all()


def test_second_order_derivatives_raise_a_clear_error():
    z = jnp.zeros((1, 4, 3))
    labels = jnp.array([[1, 2]])
    f = lambda z: jaxloss.ctc_loss(z, labels, reduction="sum")  # noqa: E731
    with pytest.raises(NotImplementedError, match="second-order derivatives"):
        jax.hessian(f)(z)
    with pytest.raises(NotImplementedError, match="first-order derivatives only"):
        jax.jvp(jax.grad(f), (z,), (z,))


def test_optax_peer_values_and_gradients_with_converted_paddings():
    logits, labels, t_len, l_len = _batch(seed=7, n=5, frames=9, classes=5, size=4)
    # optax cannot represent a zero-frame sequence with labels, nor an impossible one
    # (it returns ~1e5 from its log ε); give every sequence at least one frame per label.
    t_len = np.array([9, 9, 3, 2, 5])
    labels = np.where(np.arange(4)[None] < l_len[:, None], labels, 0)  # optax pads with ids
    z = jnp.asarray(logits, jnp.float32)
    logit_paddings = (np.arange(9)[None] >= t_len[:, None]).astype(np.float32)
    label_paddings = (np.arange(4)[None] >= l_len[:, None]).astype(np.float32)

    @jax.jit
    def ours(z):
        return jaxloss.ctc_loss(
            z,
            labels,
            logit_lengths=9 - logit_paddings.sum(-1).astype(int),
            label_lengths=4 - label_paddings.sum(-1).astype(int),
        )

    @jax.jit
    def peer(z):
        return optax.ctc_loss(z, logit_paddings, labels, label_paddings)

    np.testing.assert_allclose(ours(z), peer(z), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda z: ours(z).sum())(z)
    g_peer = jax.grad(lambda z: peer(z).sum())(z)
    np.testing.assert_allclose(g_ours, g_peer, rtol=1e-4, atol=1e-5)


def test_traced_bad_labels_give_nan_not_a_finite_loss():
    z = jnp.zeros((3, 4, 3))
    labels = jnp.array([[1, 2], [1, 3], [0, 2]])  # fine, out of range, the blank
    out = jax.jit(lambda z, y: jaxloss.ctc_loss(z, y))(z, labels)
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])
    # Past the length any id is padding.
    short = jax.jit(lambda z, y: jaxloss.ctc_loss(z, y, label_lengths=jnp.array([1, 1, 0])))
    assert np.isfinite(short(z, jnp.array([[1, -1], [2, 7], [0, 0]]))).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(labels=np.array([[1.0, 2.0]] * 2)), TypeError, "integer array of class ids"),
        (dict(logits=np.zeros((4, 2, 3))), ValueError, "time-major"),  # PyTorch's layout
        (dict(blank_id=3), ValueError, "blank_id"),
        (dict(blank_id=1.0), TypeError, "blank_id"),
        (dict(logit_lengths=np.array([4, 5])), ValueError, "logit_lengths"),
        (dict(label_lengths=np.array([[2, 2]])), ValueError, "label_lengths"),
        (dict(logit_lengths=np.array([0.0, 1.0])), TypeError, "logit_paddings.sum"),
        (dict(labels=np.array([[1, 0], [2, 2]])), ValueError, "blank id 0"),
        (dict(labels=np.array([[1, 7], [2, 2]])), ValueError, r"class ids in \[0, 3\)"),
        (dict(logits=np.zeros((3,))), ValueError, r"\[\.\.\., T, K\]"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(where=np.array([1, 0])), TypeError, "where"),
        (dict(zero_infinity=None), TypeError, "zero_infinity"),
    ],
)
def test_bad_input_raises_at_trace_time(kwargs, error, match):
    args = dict(logits=np.zeros((2, 4, 3), np.float32), labels=np.array([[1, 2], [2, 1]]))
    args.update(kwargs)
    logits, labels = args.pop("logits"), args.pop("labels")
    with pytest.raises(error, match=match):
        jaxloss.ctc_loss(logits, labels, **args)
    if not any(k in kwargs for k in ("blank_id", "reduction", "zero_infinity", "labels")):
        with pytest.raises(error, match=match):
            jax.jit(lambda z: jaxloss.ctc_loss(z, labels, **args))(logits)


def test_concatenated_1d_targets_are_split_by_label_lengths(x64):
    """Review 2, item 10: torch's 1-D concatenated targets [sum(label_lengths)] give each
    sequence its own labels (they were broadcast, every sequence reading the first ids)."""
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(3, 8, 5))
    l_len = np.array([2, 3, 1])
    flat = np.array([1, 2, 3, 3, 4, 2])  # (1 2), (3 3 4), (2)
    padded = np.array([[1, 2, -1], [3, 3, 4], [2, -1, -1]])
    ref = np_ctc_loss(logits, padded, None, l_len)
    out = jaxloss.ctc_loss(jnp.asarray(logits), flat, label_lengths=l_len)
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    # Under jit with the lengths known at trace time, and with traced labels.
    jitted = jax.jit(lambda z, y: jaxloss.ctc_loss(z, y, label_lengths=l_len))
    np.testing.assert_allclose(jitted(jnp.asarray(logits), flat), ref, rtol=1e-10)
    g = jax.grad(lambda z: jaxloss.ctc_loss(z, flat, label_lengths=l_len, reduction="sum"))
    g_padded = jax.grad(lambda z: jaxloss.ctc_loss(z, padded, label_lengths=l_len).sum())
    np.testing.assert_allclose(g(jnp.asarray(logits)), g_padded(jnp.asarray(logits)), rtol=1e-12)


def test_concatenated_1d_targets_that_cannot_be_split_raise():
    """Review 2, item 10: 1-D targets whose size is not sum(label_lengths), or whose
    lengths are traced (the split needs them at trace time), raise instead of being
    broadcast to every sequence."""
    z = jnp.zeros((2, 6, 4))
    with pytest.raises(ValueError, match=r"sum\(label_lengths\) = 3"):
        jaxloss.ctc_loss(z, np.array([1, 2, 3, 1]), label_lengths=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"pad them to \[N, S\]"):
        jax.jit(lambda n: jaxloss.ctc_loss(z, np.array([1, 2, 3]), label_lengths=n))(
            np.array([1, 2])
        )


@pytest.mark.parametrize(
    "t_len, l_len",
    [([4, 5], [2, 2]), ([4, -1], [2, 2]), ([4, 4], [2, 3]), ([4, 4], [2, -1])],
    ids=["logit_lengths>T", "logit_lengths<0", "label_lengths>S", "label_lengths<0"],
)
def test_traced_lengths_out_of_range_give_nan(t_len, l_len):
    """Review 2, item 10: under jit, lengths outside [0, T] / [0, S] cannot be checked;
    the sequence's loss is NaN (they were clipped to a plausible finite loss), the other
    sequence's is unchanged."""
    z = jnp.asarray(np.random.default_rng(9).normal(size=(2, 4, 3)), jnp.float32)
    labels = jnp.array([[1, 2], [2, 1]])
    out = _ctc_traced_lengths(z, labels, jnp.array(t_len), jnp.array(l_len))
    assert np.isfinite(out[0]) and np.isnan(out[1])
    np.testing.assert_allclose(out[0], np_ctc_loss(np.asarray(z[:1]), labels[:1]), rtol=1e-5)


@jax.jit
def _ctc_traced_lengths(z, labels, t_len, l_len):
    return jaxloss.ctc_loss(z, labels, logit_lengths=t_len, label_lengths=l_len)


def np_ctc_alpha(logits, labels, logit_lengths, label_lengths, blank_id=0):
    """log α_t(s) of Graves et al. (2006), eqs. 5–8, float64, one sequence at a time.

    ([T, B, S + 1] blank states 2n, [T, B, S] label states 2n + 1); −inf past a
    sequence's 2L_b + 1 states; past its last frame α is carried (optax's convention).
    """
    logits = np.asarray(logits, np.float64)
    batch, frames, _ = logits.shape
    size = labels.shape[-1]
    blank = np.full((frames, batch, size + 1), -np.inf)
    label = np.full((frames, batch, size), -np.inf)
    for b in range(batch):
        y = special.log_softmax(logits[b], axis=-1)
        ext = [blank_id]
        for c in labels[b][: label_lengths[b]]:
            ext += [int(c), blank_id]
        alpha = np.full(len(ext), -np.inf)
        alpha[0] = 0.0  # α_{−1}: the indicator of state 0
        for t in range(frames):
            if t < logit_lengths[b]:
                prev, alpha = alpha, np.full(len(ext), -np.inf)
                for s, k in enumerate(ext):
                    terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
                    if s >= 2 and k != blank_id and k != ext[s - 2]:
                        terms.append(prev[s - 2])
                    alpha[s] = np.logaddexp.reduce(terms) + y[t, k]
            blank[t, b, : len(ext[0::2])] = alpha[0::2]
            label[t, b, : len(ext[1::2])] = alpha[1::2]
    return blank, label


def test_forward_probs_match_the_alpha_recursion_and_the_loss(x64):
    logits, labels, t_len, l_len = _batch(seed=10, blank_id=2)
    kw = dict(logit_lengths=t_len, label_lengths=l_len, blank_id=2)
    loss, blank, label = jaxloss.ctc_loss_with_forward_probs(jnp.asarray(logits), labels, **kw)
    ref_blank, ref_label = np_ctc_alpha(logits, labels, t_len, l_len, blank_id=2)
    assert blank.shape == (7, 5, 5) and label.shape == (7, 5, 4) and blank.dtype == jnp.float64
    np.testing.assert_allclose(blank, ref_blank, rtol=1e-10)  # −inf at the same places
    np.testing.assert_allclose(label, ref_label, rtol=1e-10)
    np.testing.assert_allclose(loss, np_ctc_loss(logits, labels, t_len, l_len, 2), rtol=1e-10)
    # float32, and the loss's gradient is ctc_loss's (the closed form).
    z32 = jnp.asarray(logits, jnp.float32)
    _, blank32, _ = jaxloss.ctc_loss_with_forward_probs(z32, labels, **kw)
    assert blank32.dtype == jnp.float32
    np.testing.assert_allclose(blank32, ref_blank, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda z: jaxloss.ctc_loss_with_forward_probs(z, labels, **kw)[0].sum())(z32)
    g_loss = jax.grad(lambda z: jaxloss.ctc_loss(z, labels, **kw).sum())(z32)
    np.testing.assert_array_equal(g, g_loss)


def test_forward_probs_gradient_of_the_tables(x64):
    """Autodiff of the recursion: finite differences of the tables, zero (not NaN) through
    the unreachable (−inf) states."""
    logits, labels, t_len, l_len = _batch(seed=11, n=5, frames=5, classes=4, size=3)
    reachable = [np.isfinite(t) for t in np_ctc_alpha(logits, labels, t_len, l_len)]
    w = [np.random.default_rng(12).normal(size=r.shape) for r in reachable]

    def f(z):
        _, *tables = jaxloss.ctc_loss_with_forward_probs(
            z, labels, logit_lengths=t_len, label_lengths=l_len
        )
        parts = zip(tables, reachable, w, strict=True)
        return sum(jnp.sum(jnp.where(r, x * v, 0.0)) for x, r, v in parts)

    check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev", "fwd"])
    assert np.isfinite(np.asarray(jax.grad(f)(jnp.asarray(logits)))).all()


def test_forward_probs_masks_reduction_and_invalid_lengths():
    z = jnp.asarray(np.random.default_rng(13).normal(size=(3, 4, 3)), jnp.float32)
    labels = jnp.array([[1, 2], [2, 1], [1, 1]])
    keep = jnp.array([True, False, True])
    loss, blank, label = jaxloss.ctc_loss_with_forward_probs(z, labels, where=keep, reduction="sum")
    per_seq = jaxloss.ctc_loss(z, labels)
    np.testing.assert_allclose(loss, per_seq[0] + per_seq[2], rtol=1e-6)
    assert np.all(np.asarray(blank)[:, 1] == -np.inf) and np.all(np.asarray(label)[:, 1] == -np.inf)
    # Traced lengths out of range: NaN loss and NaN tables for that sequence only.
    f = jax.jit(lambda n: jaxloss.ctc_loss_with_forward_probs(z, labels, logit_lengths=n))
    loss, blank, label = f(jnp.array([4, 5, 4]))
    assert np.isnan(loss[1]) and np.isnan(np.asarray(blank)[:, 1]).all()
    assert np.isfinite(np.asarray(loss)[[0, 2]]).all()
    assert not np.isnan(np.asarray(label)[:, [0, 2]]).any()


def test_deliberate_difference_optax_gives_an_impossible_alignment_a_finite_loss():
    """Labels "1 1 2" need 4 frames (1 ∅ 1 2) and have 3: p = 0, so −log p = +inf here;
    optax returns a large finite number instead (its log ε), which a mean would absorb."""
    z = jnp.asarray(np.random.default_rng(5).normal(size=(1, 3, 3)), jnp.float32)
    labels = jnp.array([[1, 1, 2]])
    assert float(jaxloss.ctc_loss(z, labels)[0]) == np.inf
    peer = float(optax.ctc_loss(z, jnp.zeros((1, 3)), labels, jnp.zeros((1, 3)))[0])
    assert np.isfinite(peer) and peer > 1e4
