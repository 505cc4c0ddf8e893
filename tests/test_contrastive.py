"""Contrastive losses: optax parity, invariances, errors, and the 8-device checks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.compiled import jit_call
from tests.contract_table import clip_reference, ntxent_reference, siglip_reference
from tests.gradcheck import check_grads
from tests.host_devices import run_script

RNG = np.random.default_rng(0)
B, D = 7, 4
X = RNG.normal(size=(B, D))
Y = RNG.normal(size=(B, D))
KEEP = np.array([True, False, True, True, False, True, True])
MESH = jax.sharding.Mesh(jax.devices()[:1], ("batch",))


def _clip(x, y, **kw):
    return jaxloss.clip_loss(x, y, logit_scale=jnp.asarray(1.3), **kw)


def _siglip(x, y, **kw):
    return jaxloss.siglip_loss(x, y, logit_scale=jnp.asarray(1.1), logit_bias=-1.5, **kw)


def _ntxent(x, y, **kw):  # two views per label: rows of x and y
    labels = np.concatenate([np.arange(len(x))] * 2)
    kept = kw.pop("where", None)
    where = None if kept is None else jnp.concatenate([kept, kept])
    return jaxloss.ntxent_loss(jnp.concatenate([x, y]), labels, temperature=0.3, where=where, **kw)


# --------------------------------------------------------------------------------------
# NT-Xent against optax
# --------------------------------------------------------------------------------------


def _ntxent_and_optax(e, labels):
    """Ours and optax's, in one compiled function (shared by the cases of one shape)."""
    return (
        jaxloss.ntxent_loss(e, labels, temperature=0.2, reduction="mean"),
        optax.losses.ntxent(e, labels, temperature=0.2),
    )


@pytest.mark.parametrize(
    "labels, dtype",
    [
        (np.repeat(np.arange(6), 2), jnp.float64),
        (np.repeat(np.arange(6), 2), jnp.float32),
        (np.tile(np.arange(4), 3), jnp.float64),
        (RNG.permutation(np.repeat([0, 1], 6)), jnp.float64),
    ],
    ids=["two-views-f64", "two-views-f32", "three-views-f64", "two-groups-f64"],
)
def test_ntxent_mean_equals_optax_for_equal_groups(labels, dtype):
    e = jnp.asarray(RNG.normal(size=(len(labels), 5)), dtype)
    ours, theirs = jit_call(_ntxent_and_optax, e, jnp.asarray(labels))
    tol = 1e-12 if dtype == jnp.float64 else 2e-6
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)


def test_ntxent_pair_weights_equal_optax_for_unequal_groups():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])  # label 3 has no positive
    e = jnp.asarray(RNG.normal(size=(len(labels), 3)))
    positives = np.array([np.sum(labels == c) - 1 for c in labels])

    def losses(e, labels, positives):
        return (
            jaxloss.ntxent_loss(e, labels, weights=positives, reduction="mean", temperature=0.5),
            optax.losses.ntxent(e, labels, 0.5),
            jaxloss.ntxent_loss(e, labels, temperature=0.5),
            jaxloss.ntxent_loss(e, labels, temperature=0.5, reduction="mean"),
        )

    ours, theirs, per_anchor, mean = jax.jit(losses)(e, labels, positives)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    # The anchor without a positive is left out of the mean, not averaged in as 0.
    assert per_anchor[-1] == 0.0
    np.testing.assert_allclose(mean, np.mean(per_anchor[:-1]), rtol=1e-12)


# --------------------------------------------------------------------------------------
# Invariances
# --------------------------------------------------------------------------------------


def _masked_and_subset(loss, x, y, keep, x_kept, y_kept):
    return loss(x, y, where=keep), loss(x_kept, y_kept)


@pytest.mark.parametrize("loss", [_clip, _siglip, _ntxent], ids=["clip", "siglip", "ntxent"])
def test_where_equals_removing_the_examples(loss):
    """where=False removes an example entirely: same as indexing the batch."""
    full, subset = jit_call(_masked_and_subset, loss, X, Y, KEEP, X[KEEP], Y[KEEP])
    if loss is _ntxent:  # anchors of x then of y
        masked = np.concatenate([full[:B][KEEP], full[B:][KEEP]])
    else:
        masked = full[KEEP]
    np.testing.assert_allclose(masked, subset, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(full)[:B][~KEEP], 0.0)


def test_clip_temperature_equals_logit_scale():
    a, b = jax.jit(  # both in one compilation
        lambda x, y: (
            jaxloss.clip_loss(x, y, temperature=0.25),
            jaxloss.clip_loss(x, y, logit_scale=jnp.log(4.0)),
        )
    )(X, Y)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def _scaled_plain_unit(loss, x_scaled, x, y, x_unit, y_unit):
    return loss(x_scaled, y), loss(x, y), loss(x_unit, y_unit, normalize=False)


@pytest.mark.parametrize("loss", [_clip, _siglip], ids=["clip", "siglip"])
def test_normalize_makes_the_loss_scale_invariant(loss):
    scales = RNG.uniform(0.1, 10.0, size=(B, 1))
    unit = X / np.linalg.norm(X, axis=-1, keepdims=True), Y / np.linalg.norm(Y, axis=-1)[:, None]
    scaled, plain, unnormalized = jit_call(_scaled_plain_unit, loss, X * scales, X, Y, *unit)
    np.testing.assert_allclose(scaled, plain, rtol=1e-12)
    np.testing.assert_allclose(unnormalized, plain, rtol=1e-12)


def test_siglip_mean_is_the_papers_double_sum():
    """−(1/B) Σ_i Σ_j log σ(z_ij (t⟨x̂_i, ŷ_j⟩ + b)), written out with scipy's log σ."""
    from scipy.special import log_expit

    xn = X / np.linalg.norm(X, axis=-1, keepdims=True)
    yn = Y / np.linalg.norm(Y, axis=-1, keepdims=True)
    z = 2 * np.eye(B) - 1
    expected = -np.sum(log_expit(z * (np.exp(1.1) * xn @ yn.T - 1.5))) / B
    np.testing.assert_allclose(_siglip(X, Y, reduction="mean"), expected, rtol=1e-12)
    np.testing.assert_allclose(
        _siglip(X, Y), siglip_reference(X, Y, logit_scale=1.1, logit_bias=-1.5), rtol=1e-12
    )


def test_clip_mean_is_the_average_of_both_cross_entropies():
    """CLIP's pseudo-code: (CE(logits, arange, axis=0) + CE(logits, arange, axis=1)) / 2."""
    t = np.exp(1.3)
    xn = X / np.linalg.norm(X, axis=-1, keepdims=True)
    yn = Y / np.linalg.norm(Y, axis=-1, keepdims=True)
    logits = t * xn @ yn.T
    ce = lambda z: np.mean(-np.diag(z - np.log(np.exp(z).sum(1, keepdims=True))))  # noqa: E731
    np.testing.assert_allclose(
        _clip(X, Y, reduction="mean"), (ce(logits) + ce(logits.T)) / 2, rtol=1e-12
    )
    np.testing.assert_allclose(_clip(X, Y), clip_reference(X, Y, logit_scale=1.3), rtol=1e-12)


def test_open_clips_exponentiated_logit_scale_as_the_docstring_says():
    """open_clip's ``ClipLoss(image, text, logit_scale)`` takes the scale already
    exponentiated (its model returns ``logit_scale.exp()``): logits = scale · x̂ ŷᵀ, the
    mean of both cross-entropies. clip_loss's docstring says so and how to pass it
    (``temperature=1/scale`` or ``logit_scale=log(scale)``); both equal open_clip's formula,
    written out here in float64."""
    doc = " ".join(jaxloss.clip_loss.__doc__.split())
    assert "open_clip" in doc and "already exponentiated" in doc
    assert "pass that value as ``temperature=1/value``, or its log as ``logit_scale``" in doc
    scale = 14.3  # exp(logit_scale) as open_clip's model returns it
    xn = X / np.linalg.norm(X, axis=-1, keepdims=True)
    yn = Y / np.linalg.norm(Y, axis=-1, keepdims=True)
    logits = scale * xn @ yn.T
    ce = lambda z: np.mean(-np.diag(z - np.log(np.exp(z).sum(1, keepdims=True))))  # noqa: E731
    expected = (ce(logits) + ce(logits.T)) / 2
    by_temperature = jaxloss.clip_loss(X, Y, temperature=1 / scale, reduction="mean")
    by_log = jaxloss.clip_loss(X, Y, logit_scale=np.log(scale), reduction="mean")
    np.testing.assert_allclose(by_temperature, expected, rtol=1e-12)
    np.testing.assert_allclose(by_log, expected, rtol=1e-12)


def test_ntxent_reference_sanity():
    labels = np.repeat(np.arange(3), 2)
    e = RNG.normal(size=(6, 3))
    np.testing.assert_allclose(
        jit_call(jaxloss.ntxent_loss, e, labels, temperature=0.4),
        ntxent_reference(e, labels, temperature=0.4),
        rtol=1e-12,
    )


def _mean_value_and_grad(loss, x, y):
    return jax.value_and_grad(lambda x, y: loss(x, y, reduction="mean"), argnums=(0, 1))(x, y)


@pytest.mark.parametrize("loss", [_clip, _siglip, _ntxent], ids=["clip", "siglip", "ntxent"])
def test_zero_vectors_give_finite_values_and_gradients(loss):
    x, y = X.copy(), Y.copy()
    x[0] = 0.0
    y[3] = 0.0
    value, grads = jit_call(_mean_value_and_grad, loss, x, y)
    assert np.isfinite(value)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# --------------------------------------------------------------------------------------
# shard_map on a one-device mesh (the 8-device checks are below)
# --------------------------------------------------------------------------------------


@functools.cache
def _on_mesh(name, reduction):
    loss = _clip if name == "clip" else _siglip
    local = functools.partial(loss, batch_axis_name="batch", reduction=reduction)
    return jax.jit(
        jax.shard_map(
            lambda x, y, m: local(x, y, where=m),
            mesh=MESH,
            in_specs=(P("batch"),) * 3,
            out_specs=P("batch") if reduction == "none" else P(),
        )
    )


def _on_mesh_and_plain(name, reduction, x, y, keep):
    """The shard_map form and the plain loss, values and gradients, in one compilation."""
    loss = _clip if name == "clip" else _siglip
    f = _on_mesh(name, reduction)
    grad = jax.grad(lambda x, y: jnp.sum(f(x, y, keep)), argnums=(0, 1))(x, y)
    expected = jax.grad(
        lambda x, y: jnp.sum(loss(x, y, where=keep, reduction=reduction)), argnums=(0, 1)
    )(x, y)
    return f(x, y, keep), loss(x, y, where=keep, reduction=reduction), grad, expected


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_shard_map_form_equals_plain_on_one_device(name, reduction):
    value, plain, grad, expected = jit_call(_on_mesh_and_plain, name, reduction, X, Y, KEEP)
    np.testing.assert_allclose(value, plain, rtol=1e-12, atol=1e-12)
    for g, e in zip(grad, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_shard_map_form_gradient_check(name):
    """The ring's custom VJP (and the gather's) against finite differences, float64."""
    f = _on_mesh(name, "mean")
    check_grads(lambda x, y: f(x, y, KEEP), (X, Y), order=1, modes=("rev",))


# --------------------------------------------------------------------------------------
# Eight host devices, in a subprocess (tests/multidevice_contrastive.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eight_device_report():
    return run_script("multidevice_contrastive.py")


SHARD_MAP_CHECKS = [
    f"{name}[{dtype},{axes},{reduction}]"
    for name in ("clip_loss", "siglip_loss")
    for dtype, axes, reduction in [
        ("float64", "data+model", "none"),
        ("float64", "data+model", "mean"),
        ("float64", "data", "none"),
        ("float64", "data", "mean"),
        ("float32", "data+model", "mean"),
    ]
]


def test_subprocess_ran_on_eight_devices(eight_device_report):
    assert eight_device_report["device_count"] == 8


@pytest.mark.parametrize("check", SHARD_MAP_CHECKS)
def test_shard_map_on_2x4_mesh_equals_one_device(eight_device_report, check):
    """Values and gradients (x, y, logit scale, bias; masked, weighted) equal the
    single-device computation on the whole batch: float64 to rounding, float32 to 2e-6."""
    assert eight_device_report[check] < (1e-12 if "float64" in check else 2e-6)


@pytest.mark.parametrize("name", ["clip_loss", "siglip_loss"])
def test_the_per_example_shard_map_recipe_is_wrong_for_contrastive_losses(
    eight_device_report, name
):
    """The sum-then-psum recipe of docs/scaling.md for per-example losses gives a
    different number from the global mean for a loss that couples the batch (each device
    contrasts only its own pairs), which is why the page sends these losses to
    ``batch_axis_name``; with it, the tests above hold them to the global mean."""
    assert eight_device_report[f"generic_recipe_relative_error[{name}]"] > 0.1


def test_ring_holds_no_full_y_and_no_b_by_B_block(eight_device_report):
    assert not eight_device_report["ring_holds_full_y_or_b_by_B_block"]
    assert eight_device_report["ring_has_collective_permute"]
    assert not eight_device_report["ring_has_all_gather"]


@pytest.mark.parametrize("kind", ["Explicit", "Auto"])
@pytest.mark.parametrize("name", ["clip_loss", "siglip_loss", "ntxent_loss"])
def test_plain_jit_with_sharded_batch_is_the_global_mean(eight_device_report, name, kind):
    assert eight_device_report[f"plain_jit[{kind},{name}]"] < 1e-12


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

Z = jnp.zeros((3, 2))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: jaxloss.clip_loss(Z, Z), ValueError, r"exactly one of `temperature`"),
        (
            lambda: jaxloss.clip_loss(Z, Z, temperature=0.1, logit_scale=1.0),
            ValueError,
            r"exactly one of `temperature`",
        ),
        (lambda: jaxloss.clip_loss(Z, Z, temperature=-1.0), ValueError, r"`temperature` must"),
        (
            lambda: jaxloss.clip_loss(Z, jnp.zeros((4, 2)), temperature=0.1),
            ValueError,
            r"`x` \(3, 2\) and `y` \(4, 2\) must have the same shape",
        ),
        (
            lambda: jaxloss.clip_loss(jnp.zeros(3), jnp.zeros(3), temperature=0.1),
            ValueError,
            r"`x` must have shape \[..., B, D\]",
        ),
        (
            lambda: jaxloss.clip_loss(Z, Z, logit_scale=jnp.ones(3)),
            ValueError,
            r"`logit_scale` must be a scalar",
        ),
        (
            lambda: jaxloss.clip_loss(Z.astype(int), Z, temperature=0.1),
            TypeError,
            r"`x` must be a floating-point array",
        ),
        (
            lambda: jaxloss.clip_loss(Z, Z, temperature=0.1, where=jnp.ones(3)),
            TypeError,
            r"`where` must be a boolean mask",
        ),
        (
            lambda: jaxloss.siglip_loss(Z, Z, logit_scale=1.0, logit_bias=None),
            TypeError,
            r"`logit_bias` is required",
        ),
        (
            lambda: jaxloss.siglip_loss(Z, Z, logit_scale=1.0, logit_bias=0.0, weights=jnp.ones(4)),
            ValueError,
            r"`weights` of shape \(4,\) does not broadcast",
        ),
        (
            lambda: jaxloss.ntxent_loss(Z, jnp.zeros(3)),
            TypeError,
            r"`labels` must be an integer array",
        ),
        (
            lambda: jaxloss.ntxent_loss(Z, jnp.zeros(4, int)),
            ValueError,
            r"`labels` of shape \(4,\)",
        ),
        (
            lambda: jaxloss.ntxent_loss(Z, jnp.zeros(3, int), temperature=0.0),
            ValueError,
            r"`temperature` must be a positive",
        ),
    ],
)
def test_bad_input_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


# --- circle_loss ------------------------------------------------------------------------


def keras_circle(labels, e, gamma=80.0, margin=0.4, remove_diagonal=True):
    """keras.losses.circle(y_true, y_pred) as Keras computes it (float64): per anchor
    softplus(lse_P(−γ·max(m + d, 0)·(m − d)) + lse_N(γ·max(1 + m − d, 0)·(1 − m − d))),
    d = max(1 − e·eᵀ, 0), −inf for an empty set; and its "sum_over_batch_size" mean,
    which masks out the anchors whose loss is 0: Σ ℓ / (#{ℓ > 0} + 1e-7)."""
    d = np.maximum(1.0 - e @ e.T, 0.0)
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(len(e), dtype=bool) if remove_diagonal else same
    neg = ~same
    wp = np.maximum(margin + d, 0.0) * pos
    wn = np.maximum(1 + margin - d, 0.0) * neg
    lp = np.where(pos, -gamma * wp * (margin - d), -np.inf)
    ln = np.where(neg, gamma * wn * (1 - margin - d), -np.inf)
    with np.errstate(divide="ignore"):
        per = np.logaddexp(0.0, _lse(lp) + _lse(ln))
    return per, per.sum() / ((per > 0).sum() + 1e-7)


def _lse(x):
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - m).sum(-1)) + m[:, 0]


CIRCLE_LABELS = np.array([0, 1, 0, 2, 1, 1, 3])  # 2 and 3: no positive


def test_circle_loss_equals_keras_per_anchor_and_mean():
    e = X / np.linalg.norm(X, axis=-1, keepdims=True)
    per, mean = keras_circle(CIRCLE_LABELS, e)

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(e, x, labels):
        return (
            jaxloss.circle_loss(e, labels),
            jaxloss.circle_loss(e, labels, reduction="mean"),
            jaxloss.circle_loss(3.0 * x, labels),
            jaxloss.circle_loss(
                0.5 * x, labels, gamma=5.0, margin=0.25, remove_diagonal=False, normalize=False
            ),
        )

    out, out_mean, out_3x, out_d = evaluate(e, X, CIRCLE_LABELS)
    np.testing.assert_allclose(out, per, rtol=1e-12)
    assert out[3] == 0 and out[6] == 0  # no positive: no loss
    np.testing.assert_allclose(out_mean, mean, rtol=1e-6)
    # normalize=True normalizes; Keras expects it done
    np.testing.assert_allclose(out_3x, per, rtol=1e-12)
    per_d, _ = keras_circle(CIRCLE_LABELS, 0.5 * X, 5.0, 0.25, remove_diagonal=False)
    np.testing.assert_allclose(out_d, per_d, rtol=1e-12)


def test_circle_loss_drops_removed_examples_and_is_finite_at_gamma_80():
    e = X / np.linalg.norm(X, axis=-1, keepdims=True)
    keep = np.array([True, True, True, True, True, False, True])
    # float32, γ = 80, near-duplicate and opposite embeddings: finite value and gradient
    x32 = jnp.asarray(np.concatenate([e, -e[:2], e[:2] * (1 + 1e-6)]), jnp.float32)
    labels = np.concatenate([CIRCLE_LABELS, [1, 0, 0, 1]])
    # an example removed with NaN embeddings: zero gradient
    xn = x32.at[1].set(jnp.nan)
    keep_n = np.arange(len(labels)) != 1

    @jax.jit  # every evaluation below, in one compilation
    def evaluate(e, keep, x32, labels, xn, keep_n):
        f = lambda v: jaxloss.circle_loss(v, labels, reduction="mean")  # noqa: E731
        g = jax.grad(lambda v: jaxloss.circle_loss(v, labels, where=keep_n, reduction="sum"))(xn)
        return jaxloss.circle_loss(e, CIRCLE_LABELS, where=keep), f(x32), jax.grad(f)(x32), g

    out, value32, grad32, g = evaluate(e, keep, x32, labels, xn, keep_n)
    per, _ = keras_circle(CIRCLE_LABELS[keep], e[keep])
    np.testing.assert_allclose(np.asarray(out)[keep], per, rtol=1e-12)
    assert np.isfinite(value32) and np.isfinite(grad32).all()
    assert np.isfinite(g).all() and (np.asarray(g)[1] == 0).all()


def test_circle_loss_errors():
    with pytest.raises(ValueError, match="`gamma` must be a positive"):
        jaxloss.circle_loss(X, CIRCLE_LABELS, gamma=0.0)
    with pytest.raises(ValueError, match="`margin` must be a finite number"):
        jaxloss.circle_loss(X, CIRCLE_LABELS, margin=float("inf"))
    with pytest.raises(TypeError, match="`labels` must be an integer array"):
        jaxloss.circle_loss(X, CIRCLE_LABELS.astype(float))
    with pytest.raises(ValueError, match=r"`labels` of shape \(6,\)"):
        jaxloss.circle_loss(X, CIRCLE_LABELS[:6])
    with pytest.raises(TypeError, match="`remove_diagonal` must be a bool"):
        jaxloss.circle_loss(X, CIRCLE_LABELS, remove_diagonal=1)


def test_circle_loss_derivative_at_the_kink_of_alpha_is_the_flat_side():
    """At s = −m the negative's weight α_n = max(0, s + m) reaches 0: a kink, where the
    derivative is the flat side's (0), as documented."""
    e = jnp.array([[1.0], [1.0], [-0.4]])  # s_02 = s_12 = −0.4 = −m (unnormalized)
    labels = jnp.array([0, 0, 1])  # the third example has no positive: no loss of its own

    def f(v):
        return jaxloss.circle_loss(v, labels, margin=0.4, normalize=False, reduction="sum")

    grad = jax.jit(jax.grad(f))  # both points share one compilation
    assert grad(e)[2, 0] == 0.0
    assert grad(e.at[2, 0].set(-0.3))[2, 0] < 0  # past the kink: 2γs, s < 0
