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
from tests.compiled import jit_call
from tests.contract import public_functions_taking

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


# --------------------------------------------------------------------------------------
# The shape rule. The per-element loss has the
# shape of the predictions; targets, scales, masks and weights broadcast *to* it, and an
# input that would enlarge it raises a ValueError naming both shapes.
# --------------------------------------------------------------------------------------

N_RULE = 4
_PRED = jnp.arange(N_RULE, dtype=jnp.float32) / 8 + 0.25  # valid probabilities too
_LABELS = jnp.asarray([0.0, 1.0, 1.0, 0.0])

# (name, call(pred, target), name of the prediction, name of the target)
ELEMENTWISE = [
    ("squared_error", lambda p, t: jaxloss.squared_error(p, t), "predictions", "targets"),
    ("absolute_error", lambda p, t: jaxloss.absolute_error(p, t), "predictions", "targets"),
    ("huber", lambda p, t: jaxloss.huber(p, t), "predictions", "targets"),
    ("log_cosh", lambda p, t: jaxloss.log_cosh(p, t), "predictions", "targets"),
    ("gaussian_nll", lambda p, t: jaxloss.gaussian_nll(p, t), "mean", "targets"),
    ("laplace_nll", lambda p, t: jaxloss.laplace_nll(p, t), "loc", "targets"),
    ("student_t_nll", lambda p, t: jaxloss.student_t_nll(p, t, df=3.0), "loc", "targets"),
    ("poisson_nll", lambda p, t: jaxloss.poisson_nll(p, t), "predictions", "counts"),
    (
        "sigmoid_binary_cross_entropy",
        lambda p, t: jaxloss.sigmoid_binary_cross_entropy(p, t),
        "logits",
        "labels",
    ),
    ("binary_cross_entropy", lambda p, t: jaxloss.binary_cross_entropy(p, t), "probs", "labels"),
    ("sigmoid_focal_loss", lambda p, t: jaxloss.sigmoid_focal_loss(p, t), "logits", "labels"),
]


def test_shape_rule_issue_example_raises_instead_of_a_wrong_mean():
    """`squared_error(pred[:, None], target)` gave 2.5 for a perfect fit."""
    pred = jnp.arange(4.0)
    message = (
        r"`targets` of shape \(4,\) would enlarge the loss beyond the shape of "
        r"`predictions` \(4, 1\).*squeeze it.*`predictions\[:, 0\]`"
    )
    with pytest.raises(ValueError, match=message):
        jaxloss.squared_error(pred[:, None], pred, reduction="mean")
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda p, t: jaxloss.squared_error(p, t, reduction="mean"))(pred[:, None], pred)
    assert float(jaxloss.squared_error(pred, pred, reduction="mean")) == 0.0


def test_shape_rule_optax_squared_error_shape_mismatch():
    """optax's own `SquaredErrorTest.test_shape_mismatch`, on jaxloss."""
    ys = jnp.asarray([-2.0, -1.0, 0.5, 1.0])
    ts = jnp.asarray([-1.5, 0.0, -1, 1.0])
    with pytest.raises(ValueError, match=r"`targets` of shape \(4, 1\).*`predictions` \(4,\)"):
        jax.jit(jaxloss.squared_error)(ys, jnp.expand_dims(ts, axis=-1))


def _shape_rule_outputs(call, pred, labels, two_rows):
    """The values the shape-rule test checks, in one compiled program per loss."""
    return call(pred, labels), call(pred, 1.0), call(two_rows, labels)


@pytest.mark.parametrize("name, call, pred_name, target_name", ELEMENTWISE)
def test_shape_rule_every_elementwise_loss(name, call, pred_name, target_name):
    """Either input with a stray size-1 axis raises; broadcasting *to*
    the predictions (a scalar target, a target missing leading axes) still works."""
    with pytest.raises(ValueError, match=rf"`{target_name}` of shape \(4,\).*`{pred_name}`"):
        call(_PRED[:, None], _LABELS)
    with pytest.raises(ValueError, match=rf"`{target_name}` of shape \(4, 1\).*`{pred_name}`"):
        call(_PRED, _LABELS[:, None])
    two_rows = jnp.stack([_PRED, _PRED])
    one, scalar_target, two = jit_call(_shape_rule_outputs, call, _PRED, _LABELS, two_rows)
    assert one.shape == (N_RULE,)
    assert scalar_target.shape == (N_RULE,)
    assert two.shape == (2, N_RULE)
    np.testing.assert_allclose(two[1], one, rtol=1e-6)


@pytest.mark.parametrize(
    "call, culprit",
    [
        (lambda: jaxloss.gaussian_nll(_PRED, _LABELS, scale=jnp.ones((N_RULE, 1))), "scale"),
        (lambda: jaxloss.laplace_nll(_PRED, _LABELS, log_scale=jnp.zeros((3, 1))), "log_scale"),
        (lambda: jaxloss.student_t_nll(_PRED, _LABELS, df=jnp.ones((N_RULE, 1))), "df"),
        (lambda: jaxloss.huber(_PRED, _LABELS, delta=jnp.ones((N_RULE, 1))), "delta"),
        (
            lambda: jaxloss.sigmoid_binary_cross_entropy(
                _PRED, _LABELS, pos_weight=jnp.ones((N_RULE, 1))
            ),
            "pos_weight",
        ),
        (lambda: jaxloss.sigmoid_focal_loss(_PRED, _LABELS, gamma=jnp.ones((2, 1))), "gamma"),
    ],
)
def test_shape_rule_covers_scales_and_hyperparameter_arrays(call, culprit):
    """Scales and hyperparameter arrays may not enlarge the loss either."""
    with pytest.raises(ValueError, match=rf"`{culprit}` of shape .* would enlarge the loss"):
        call()


def test_shape_rule_masks_and_weights_cannot_enlarge_the_loss():
    """`where`/`weights` broadcast to the loss shape, never enlarge it."""
    with pytest.raises(ValueError, match=r"`where` of shape \(4, 1\) does not broadcast"):
        jaxloss.squared_error(_PRED, _LABELS, where=jnp.ones((N_RULE, 1), bool))
    with pytest.raises(ValueError, match=r"`weights` of shape \(4, 1\) does not broadcast"):
        jaxloss.squared_error(_PRED, _LABELS, weights=jnp.ones((N_RULE, 1)))


def test_shape_rule_for_inputs_without_a_prediction():
    """Divergences have no prediction side; their inputs may broadcast
    (a [C] reference against [N, C]), but never to a shape neither of them has."""
    p = jnp.full((3, 1, 4), 0.25)
    q = jnp.full((5, 4), 0.25)
    for call in (jaxloss.kl_divergence, jaxloss.cross_entropy, jaxloss.js_divergence):
        with pytest.raises(ValueError, match=r"`p` \(3, 1, 4\), `q` \(5, 4\).*\(3, 5, 4\)"):
            call(p, q)
        assert call(q, q[0]).shape == (5,)
    with pytest.raises(ValueError, match=r"would create the shape \(4, 4\)"):
        jaxloss.gaussian_kl(_PRED[:, None], mean_q=_PRED)
    assert jaxloss.gaussian_kl(_PRED, mean_q=0.5).shape == (N_RULE,)


def test_mean_is_nan_not_zero_when_a_weight_is_nan():
    """`reduction="mean"` returned 0 for a NaN weight
    (the guard for an empty mask saw `count > 0` False and selected 0)."""
    w = jnp.array([1.0, jnp.nan, 1.0])
    assert np.isnan(jaxloss.squared_error(jnp.ones(3), 0.0, weights=w, reduction="mean"))
    assert np.isnan(C.reduce(jnp.ones(3), weights=w, reduction="mean"))
    assert np.isnan(C.reduce(jnp.ones(3), denominator=w, reduction="mean"))
    # A NaN weight on a dropped element does not count; nothing kept is still 0.
    keep = jnp.array([True, False, True])
    out = jaxloss.squared_error(jnp.ones(3), 0.0, weights=w, where=keep, reduction="mean")
    assert float(out) == 1.0
    nothing = jnp.zeros(3, bool)
    assert float(C.reduce(jnp.ones(3), weights=w, where=nothing, reduction="mean")) == 0.0
    g = jax.grad(lambda x: C.reduce(x, where=nothing, reduction="mean"))(jnp.ones(3))
    np.testing.assert_array_equal(g, 0.0)


def test_reduce_denominator_counts_in_the_mean_only():
    """PyTorch parity: "mean" = Σ w·ℓ / Σ w·d over kept elements, the class
    weight d already inside ℓ; "none" and "sum" ignore d."""
    loss = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    w = jnp.asarray([1.0, 0.5, 2.0, 1.0])
    d = jnp.asarray([2.0, 1.0, 0.5, 3.0])
    keep = jnp.asarray([True, True, False, True])
    mean = C.reduce(loss, where=keep, weights=w, denominator=d, reduction="mean")
    np.testing.assert_allclose(mean, (1 + 1 + 4) / (2 + 0.5 + 3), rtol=1e-12)
    total = C.reduce(loss, where=keep, weights=w, denominator=d, reduction="sum")
    np.testing.assert_allclose(total, 6.0, rtol=1e-12)


def _as_dropped(f, keep_weights):
    """f's value and gradient with weights w against the same with where = w > 0 (weights
    w there too): a weight of 0 must remove the term exactly as `where` does."""
    keep = np.asarray(keep_weights) > 0
    for reduction in ("none", "sum", "mean"):
        weighted = lambda x: f(x, dict(weights=keep_weights, reduction=reduction))  # noqa: E731, B023
        dropped = lambda x: f(x, dict(where=keep, weights=keep_weights, reduction=reduction))  # noqa: E731, B023
        yield reduction, weighted, dropped


@pytest.mark.parametrize("loss", ["ctc_loss", "absolute_error", "fused_linear_distillation_loss"])
def test_zero_weight_removes_an_infinite_term(loss):
    """Review 2, item 6: a kept element of weight 0 whose loss is +inf (an impossible CTC
    alignment: 5 labels in 3 frames) adds nothing: "none" gives 0 there and "mean"/"sum"
    equal dropping it with `where`, in value and gradient; 0·inf made them NaN."""
    rng = np.random.default_rng(0)
    w = jnp.array([0.0, 1.5])
    if loss == "ctc_loss":
        x = jnp.asarray(rng.normal(size=(2, 3, 4)))
        labels = jnp.array([[1, 2, 3, 1, 2], [1, 2, 0, 0, 0]])

        def f(z, kw):
            return jaxloss.ctc_loss(z, labels, label_lengths=jnp.array([5, 2]), **kw)

    elif loss == "absolute_error":
        x = jnp.array([np.inf, -2.0])

        def f(p, kw):
            return jaxloss.absolute_error(p, jnp.zeros(2), **kw)

    else:
        # Token 0: the student puts −inf on a class the teacher gives mass (KL = +inf).
        x = jnp.zeros((1, 3))
        hidden, t_hidden = jnp.ones((2, 1)), jnp.array([[0.0], [1.0]])
        t_weight = jnp.array([[0.0, 1.0, -1e30]])
        bias = jnp.array([0.0, 0.0, -np.inf])

        def f(weight, kw):
            return jaxloss.fused_linear_distillation_loss(
                hidden, weight, t_hidden, t_weight, student_bias=bias, **kw
            )

    cases = list(_as_dropped(f, w))

    @jax.jit  # every value and gradient the test checks, in one compiled program
    def everything(x):
        return f(x, {"reduction": "none"}), [
            (
                weighted(x),
                dropped(x),
                jax.grad(lambda x: jnp.sum(weighted(x)))(x),  # noqa: B023
                jax.grad(lambda x: jnp.sum(dropped(x)))(x),  # noqa: B023
            )
            for _, weighted, dropped in cases
        ]

    plain, results = everything(x)
    assert np.isinf(plain[0])
    for (reduction, _, _), (value, want, g, g_dropped) in zip(cases, results, strict=True):
        assert np.isfinite(value).all(), reduction
        np.testing.assert_allclose(value, want, rtol=1e-6)
        assert np.isfinite(g).all(), reduction
        np.testing.assert_allclose(g, g_dropped, rtol=1e-6)


def _batch_axis_calls():
    """Each function that takes ``batch_axis_name``, on small valid inputs."""
    rng = np.random.default_rng(0)
    h, w = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(3, 5)))
    x, y = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
    labels = jnp.asarray([0, 1, 2, 3])
    pairs = jnp.asarray(rng.normal(size=(4, 2, 3)))
    return {
        "clip_loss": lambda **kw: jaxloss.clip_loss(x, y, temperature=0.1, **kw),
        "siglip_loss": lambda **kw: jaxloss.siglip_loss(
            x, y, logit_scale=1.0, logit_bias=0.0, **kw
        ),
        "fused_linear_cross_entropy": lambda **kw: jaxloss.fused_linear_cross_entropy(
            h, w, labels, **kw
        ),
        "vocab_parallel_cross_entropy": lambda **kw: jaxloss.vocab_parallel_cross_entropy(
            h @ w, labels, axis_name="model", **kw
        ),
        "vocab_parallel_fused_linear_cross_entropy": (
            lambda **kw: jaxloss.vocab_parallel_fused_linear_cross_entropy(
                h, w, labels, axis_name="model", **kw
            )
        ),
        "fused_linear_distillation_loss": lambda **kw: jaxloss.fused_linear_distillation_loss(
            h, w, h, w, **kw
        ),
        "fused_linear_preference_loss": lambda **kw: jaxloss.fused_linear_preference_loss(
            pairs, w, jnp.zeros((4, 2), int), loss="simpo", **kw
        ),
    }


# Every public function with a batch_axis_name (one missing from _batch_axis_calls fails
# with a KeyError), under plain jit and inside a shard_map whose mesh binds only "model"
# (the vocabulary axis that the vocab-parallel functions need bound before anything else).
BATCH_AXIS_CASES = [
    pytest.param(name, plain_jit, id=f"{name}-{'jit' if plain_jit else 'shard_map'}")
    for name in public_functions_taking("batch_axis_name")
    for plain_jit in (True, False)
    if not (plain_jit and name.startswith("vocab_parallel"))
]


@pytest.mark.parametrize("name, plain_jit", BATCH_AXIS_CASES)
def test_batch_axis_name_that_no_mesh_binds_raises_naming_it(name, plain_jit):
    """``batch_axis_name`` under plain ``jit`` (or inside a ``shard_map`` whose mesh has no
    such axis) raises a ValueError that names the argument and says to leave it None,
    instead of JAX's unbound-axis NameError from a collective inside the loss."""
    call = _batch_axis_calls()[name]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",))

    def run():
        return call(batch_axis_name="batch")

    if not plain_jit:
        run = jax.shard_map(run, mesh=mesh, in_specs=(), out_specs=jax.sharding.PartitionSpec())
    with pytest.raises(ValueError, match=r"batch_axis_name='batch'.*leave it None"):
        jax.eval_shape(run)
