"""Embedding losses: optax peers, torch formulas (eps placement, swap), zero vectors.

The generic checks are in the contract table; here: parity with the peers, the
numerics at zero vectors and coinciding points, and the errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxloss
from jaxloss._embedding import normalize
from tests.compiled import jit_call

RNG = np.random.default_rng(12)
X = RNG.normal(size=(7, 5))
Y = RNG.normal(size=(7, 5))
Z = RNG.normal(size=(7, 5))


# --- optax peers -----------------------------------------------------------------------


def test_cosine_similarity_and_distance_equal_optax():
    eps = 1e-3  # optax floors the squared norm at its epsilon: epsilon = ε²
    x = np.concatenate([X, np.zeros((1, 5)), 1e-4 * X[:1]])
    y = np.concatenate([Y, Y[:2]])
    np.testing.assert_allclose(
        jaxloss.cosine_similarity(x, y, eps=eps),
        optax.losses.cosine_similarity(x, y, epsilon=eps**2),
        rtol=1e-13,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        jaxloss.cosine_distance(x, y, eps=eps),
        optax.losses.cosine_distance(x, y, epsilon=eps**2),
        rtol=1e-13,
        atol=1e-15,
    )


def test_triplet_margin_loss_equals_optax_without_eps():
    out = jaxloss.triplet_margin_loss(X, Y, Z, margin=2.0, eps=0.0)
    expected = optax.losses.triplet_margin_loss(X, Y, Z, margin=2.0, eps=0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_triplet_eps_is_placed_as_torch_places_it_not_as_optax():
    eps = 0.1  # large, so that the placements differ visibly

    def torch_ref(a, p, n):  # pairwise_distance(u, v) = ‖u − v + ε‖₂
        d = lambda u, v: np.linalg.norm(u - v + eps, axis=-1)  # noqa: E731
        return np.maximum(d(a, p) - d(a, n) + 1.0, 0.0)

    out = jaxloss.triplet_margin_loss(X, Y, Z, eps=eps)
    np.testing.assert_allclose(out, torch_ref(X, Y, Z), rtol=1e-13)
    assert not np.allclose(out, optax.losses.triplet_margin_loss(X, Y, Z, eps=eps), rtol=1e-3)


def test_triplet_swap_uses_the_positive_negative_distance():
    # The negative is nearer the positive than the anchor: swap uses d(p, n).
    a, p, n = jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 0.0]]), jnp.array([[4.0, 0.0]])
    kwargs = {"eps": 0.0, "margin": 1.0}
    np.testing.assert_allclose(jaxloss.triplet_margin_loss(a, p, n, **kwargs), [0.0])
    np.testing.assert_allclose(jaxloss.triplet_margin_loss(a, p, n, swap=True, **kwargs), [3.0])


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 4.0])
def test_triplet_p_norm_equals_numpy(p):
    def ref(a, q, n):
        d = lambda u, v: np.linalg.norm(u - v + 1e-6, ord=p, axis=-1)  # noqa: E731
        return np.maximum(d(a, q) - d(a, n) + 1.0, 0.0)

    np.testing.assert_allclose(jaxloss.triplet_margin_loss(X, Y, Z, p=p), ref(X, Y, Z), rtol=1e-12)


def test_cosine_embedding_loss_equals_torch_formula():
    # torch.nn.functional.cosine_embedding_loss, with its own cosine
    # ⟨x₁, x₂⟩ / √((‖x₁‖² + 1e-12)(‖x₂‖² + 1e-12)).
    y = RNG.choice(np.array([-1, 1]), size=7)
    cos = (X * Y).sum(-1) / np.sqrt(((X**2).sum(-1) + 1e-12) * ((Y**2).sum(-1) + 1e-12))
    expected = np.where(y == 1, 1 - cos, np.maximum(0.0, cos - 0.3))
    out = jaxloss.cosine_embedding_loss(X, Y, y, margin=0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-11)
    np.testing.assert_array_equal(out, jaxloss.cosine_embedding_loss(X, Y, y > 0, margin=0.3))


# --- numerics: zero vectors, coinciding points, huge vectors ---------------------------


def test_zero_vectors_give_cosine_zero_and_finite_gradients():
    zero = jnp.zeros((2, 5))

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(zero, y):
        grads = []
        for fn in (jaxloss.cosine_similarity, jaxloss.cosine_distance):
            f = lambda x, y, fn=fn: jnp.sum(fn(x, y))  # noqa: E731
            grads.append(jax.grad(f, argnums=(0, 1))(zero, y))
        g = jax.grad(lambda x: jnp.sum(jaxloss.cosine_similarity(x, x)))(zero)
        loss = lambda x: jnp.sum(jaxloss.cosine_embedding_loss(x, zero, jnp.array([1, -1])))  # noqa: E731
        return grads, jaxloss.cosine_similarity(zero, zero), g, jax.grad(loss)(zero)

    grads, cos_zero, g, g_loss = evaluate(zero, jnp.asarray(Y[:2]))
    for gx, gy in grads:
        assert np.isfinite(gx).all() and np.isfinite(gy).all()
        np.testing.assert_array_equal(gy, 0.0)  # cos is 0 for every y when x = 0
    np.testing.assert_array_equal(cos_zero, 0.0)
    assert np.isfinite(g).all()
    assert np.isfinite(g_loss).all()


@pytest.mark.parametrize("eps,p", [(0.0, 1.0), (0.0, 2.0), (1e-6, 3.0)])
def test_coinciding_points_give_finite_gradients(eps, p):
    a = jnp.asarray(X[:3])
    value, grads = jit_call(_triplet_value_and_grads, eps, p, a)
    for g in grads:
        assert np.isfinite(g).all()
    np.testing.assert_allclose(value, 3.0, atol=1e-5)  # margin only


def _triplet_value_and_grads(eps, p, a):
    """The summed swap triplet loss at (a, a, a) and its gradients, in one compilation."""

    def loss(a, pos, neg):
        return jnp.sum(jaxloss.triplet_margin_loss(a, pos, neg, eps=eps, p=p, swap=True))

    return loss(a, a, a), jax.grad(loss, argnums=(0, 1, 2))(a, a, a)


def test_huge_vectors_do_not_overflow():
    x = jnp.array([[1e200, 1e200], [3e300, 4e300]])
    y = jnp.array([[1.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(jaxloss.cosine_similarity(x, y), [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(
        jaxloss.triplet_margin_loss(x, x, y, eps=0.0), [0.0, 0.0], rtol=1e-15
    )


def test_normalize_gives_unit_vectors_and_keeps_zero():
    x = np.concatenate([X, np.zeros((1, 5))])
    n, jac = jax.jit(
        lambda x, v: (normalize(x, -1, 1e-8), jax.jacobian(lambda v: normalize(v, -1, 1e-8))(v))
    )(x, np.zeros(3))
    np.testing.assert_allclose(np.linalg.norm(n[:-1], axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(n[-1], 0.0)
    assert np.isfinite(jac).all()


# --- shapes and errors -----------------------------------------------------------------


def test_feature_axis_equals_moving_the_axis():
    np.testing.assert_allclose(
        jaxloss.triplet_margin_loss(X.T, Y.T, Z.T, axis=0), jaxloss.triplet_margin_loss(X, Y, Z)
    )
    np.testing.assert_allclose(
        jaxloss.cosine_similarity(X.T, Y.T, axis=0), jaxloss.cosine_similarity(X, Y)
    )


def test_second_input_broadcasts_to_the_first_but_never_enlarges_it():
    out = jaxloss.cosine_similarity(X, Y[0])
    np.testing.assert_allclose(out, jaxloss.cosine_similarity(X, np.broadcast_to(Y[0], X.shape)))
    with pytest.raises(ValueError, match=r"`y` of shape \(7, 1, 5\).*`x` \(7, 5\)"):
        jaxloss.cosine_similarity(X, Y[:, None])
    with pytest.raises(ValueError, match=r"`negatives` of shape"):
        jaxloss.triplet_margin_loss(X[0], Y[0], Z)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"p": 0.5}, ValueError, r"`p` must be a Python number in \[1, inf\)"),
        ({"eps": -1.0}, ValueError, "`eps` must be a non-negative"),
        ({"margin": -0.5}, ValueError, "`margin` must be a non-negative"),
        ({"swap": 1}, TypeError, "`swap` must be a bool"),
        ({"axis": 3}, ValueError, "`axis` 3 is out of range"),
    ],
)
def test_triplet_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxloss.triplet_margin_loss(X, Y, Z, **kwargs)


def test_cosine_embedding_labels_are_checked():
    with pytest.raises(ValueError, match=r"`labels` must be −1 or \+1"):
        jaxloss.cosine_embedding_loss(X, Y, np.zeros(7, np.int32))
    with pytest.raises(ValueError, match=r"`labels` of shape \(7, 1\)"):
        jaxloss.cosine_embedding_loss(X, Y, np.ones((7, 1), np.int32))
    with pytest.raises(ValueError, match=r"`margin` must be in \[-1.0, 1.0\]"):
        jaxloss.cosine_embedding_loss(X, Y, np.ones(7, np.int32), margin=2.0)


def test_integer_embeddings_are_rejected_also_under_jit():
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        jax.jit(jaxloss.cosine_distance)(jnp.ones((2, 3), int), jnp.ones((2, 3)))


# --- properties -------------------------------------------------------------------------


@settings(max_examples=15)
@given(scale=st.floats(1e-6, 1e20), shift=st.floats(-1e3, 1e3))  # ‖scale·x‖ > ε
def test_cosine_is_scale_invariant_and_triplet_translation_invariant(scale, shift):
    cos = jaxloss.cosine_similarity(X, Y)
    np.testing.assert_allclose(jaxloss.cosine_similarity(scale * X, Y), cos, rtol=1e-12)
    assert np.all(np.abs(np.asarray(cos)) <= 1.0)
    t = jaxloss.triplet_margin_loss(X, Y, Z, eps=0.0)
    shifted = jaxloss.triplet_margin_loss(X + shift, Y + shift, Z + shift, eps=0.0)
    np.testing.assert_allclose(shifted, t, rtol=1e-9, atol=1e-9)


# --- review 2 ---------------------------------------------------------------------------


def test_eps_zero_keeps_zero_vectors_finite():
    """Review 2, item 5: `eps=0.0` is accepted, and a zero vector then gave a NaN cosine
    and an inf gradient against the promise "finite (0) at zero vectors, never NaN".
    With ε = 0 a zero vector has cosine 0 and gradient 0 (the cosine has no derivative
    there); nonzero vectors get the exact cosine."""
    zero = jnp.zeros((2, 5))
    y = jnp.asarray(Y[:2])
    x = jnp.concatenate([zero, jnp.asarray(X[:2])])
    yy = jnp.concatenate([y, y])
    exact = (X[:2] * Y[:2]).sum(-1) / (
        np.linalg.norm(X[:2], axis=-1) * np.linalg.norm(Y[:2], axis=-1)
    )
    labels = jnp.array([1, -1])
    z32 = jnp.zeros((1, 3), jnp.float32)  # float32, as a user computes it
    y32 = jnp.ones((1, 3), jnp.float32)

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(x, yy, zero, y, labels, z32, y32):
        gx, gy = jax.grad(lambda a, b: jnp.sum(jaxloss.cosine_similarity(a, b, eps=0.0)), (0, 1))(
            zero, y
        )
        g = jax.grad(lambda a: jnp.sum(jaxloss.cosine_similarity(a, a, eps=0.0)))(zero)
        loss = lambda a: jaxloss.cosine_embedding_loss(a, y, labels, margin=-0.5, eps=0.0)  # noqa: E731
        g32 = jax.grad(lambda a: jnp.sum(jaxloss.cosine_similarity(a, y32, eps=0.0)))(z32)
        return {
            "out": jaxloss.cosine_similarity(x, yy, eps=0.0),
            "distance": jaxloss.cosine_distance(zero, y, eps=0.0),
            "gx": gx,
            "gy": gy,
            "g": g,
            "loss": loss(zero),
            "loss_grad": jax.grad(lambda a: jnp.sum(loss(a)))(zero),
            "cos32": jaxloss.cosine_similarity(z32, y32, eps=0.0),
            "g32": g32,
        }

    r = evaluate(x, yy, zero, y, labels, z32, y32)
    np.testing.assert_allclose(r["out"], np.concatenate([[0.0, 0.0], exact]), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(r["distance"], 1.0)
    np.testing.assert_array_equal(r["gx"], 0.0)
    np.testing.assert_array_equal(r["gy"], 0.0)
    np.testing.assert_array_equal(r["g"], 0.0)
    np.testing.assert_array_equal(r["loss"], [1.0, 0.5])  # cos = 0: 1 − 0 and max(0, 0 + 0.5)
    np.testing.assert_array_equal(r["loss_grad"], 0.0)
    assert r["cos32"].dtype == jnp.float32
    np.testing.assert_array_equal(r["cos32"], 0.0)
    g32 = r["g32"]
    np.testing.assert_array_equal(g32, 0.0)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda x, y: jaxloss.cosine_similarity(x, y), "x"),
        (lambda x, y: jaxloss.cosine_distance(x, y), "x"),
        (lambda x, y: jaxloss.cosine_embedding_loss(x, y, np.ones(3, np.int32)), "x_1"),
        (lambda x, y: jaxloss.triplet_margin_loss(x, y, y), "anchors"),
        (lambda x, y: jaxloss.cosine_similarity(x.T, y.T, axis=0), "x"),
    ],
)
def test_zero_size_feature_axis_raises_naming_the_argument(call, name):
    """Review 2, item 11: a feature axis of size 0 crashed with JAX's raw "zero-size array
    to reduction operation max"; it is a ValueError that names the input, also under jit."""
    x, y = np.zeros((3, 0)), np.zeros((3, 0))
    with pytest.raises(ValueError, match=rf"`{name}` has a feature axis of size 0"):
        call(x, y)
    with pytest.raises(ValueError, match=rf"`{name}` has a feature axis of size 0"):
        jax.jit(call)(x, y)


def test_empty_batch_is_fine():
    out = jaxloss.cosine_similarity(np.zeros((0, 4)), np.zeros((0, 4)), reduction="mean")
    assert out == 0.0
    assert jaxloss.triplet_margin_loss(
        np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4))
    ).shape == (0,)


# --- triplet_margin_with_distance_loss --------------------------------------------------


def test_triplet_with_distance_default_is_torch_pairwise_distance():
    out = jaxloss.triplet_margin_with_distance_loss(X, Y, Z, margin=1.5, swap=True)
    np.testing.assert_array_equal(out, jaxloss.triplet_margin_loss(X, Y, Z, margin=1.5, swap=True))

    def d(u, v):  # torch.nn.functional.pairwise_distance(u, v): ‖u − v + 1e-6‖₂
        return np.linalg.norm(u - v + 1e-6, axis=-1)

    ref = np.maximum(d(X, Y) - np.minimum(d(X, Z), d(Y, Z)) + 1.5, 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_triplet_with_any_distance_function():
    def cos_d(u, v):  # 1 − cosine similarity, in numpy
        return 1 - (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))

    out = jaxloss.triplet_margin_with_distance_loss(
        X, Y, Z, distance_function=jaxloss.cosine_distance, margin=0.4
    )
    np.testing.assert_allclose(out, np.maximum(cos_d(X, Y) - cos_d(X, Z) + 0.4, 0.0), rtol=1e-12)
    # the feature axis is the loss's; the distance function decides how to use it
    moved = jaxloss.triplet_margin_with_distance_loss(
        X.T,
        Y.T,
        Z.T,
        distance_function=lambda u, v: jaxloss.cosine_distance(u, v, axis=0),
        margin=0.4,
        axis=0,
    )
    np.testing.assert_allclose(moved, out, rtol=1e-14)
    # under jit, and a dropped triplet's NaN inputs get zero gradient
    keep = np.arange(7) != 2
    xn = X.copy()
    xn[2] = np.nan
    f = jax.jit(
        lambda a: jaxloss.triplet_margin_with_distance_loss(
            a,
            Y,
            Z,
            distance_function=jaxloss.cosine_distance,
            margin=0.4,
            where=keep,
            reduction="sum",
        )
    )
    np.testing.assert_allclose(f(xn), np.where(keep, out, 0.0).sum(), rtol=1e-12)
    g = jax.grad(f)(xn)
    assert np.isfinite(g).all() and (np.asarray(g)[2] == 0).all()


def test_triplet_with_distance_errors():
    with pytest.raises(ValueError, match=r"`distance_function` returned shape \(7, 5\).*\(7,\)"):
        jaxloss.triplet_margin_with_distance_loss(X, Y, Z, distance_function=lambda u, v: u - v)
    with pytest.raises(TypeError, match="`distance_function` must be a callable"):
        jaxloss.triplet_margin_with_distance_loss(X, Y, Z, distance_function="cosine")
    with pytest.raises(ValueError, match="`margin` must be a non-negative"):
        jaxloss.triplet_margin_with_distance_loss(X, Y, Z, margin=-1.0)
    with pytest.raises(ValueError, match="`anchors` has a feature axis of size 0"):
        jaxloss.triplet_margin_with_distance_loss(X[:, :0], Y[:, :0], Z[:, :0])
