"""fused_linear_policy_gradient_loss: equal to the loss of the materialized logits.

The reference is the materialized computation, written from the public pieces:
`policy_gradient_loss(token_log_probs(h·W + b, labels, temperature=T), ...)` plus
kl_coef × `kl_penalty(token_log_probs(...), reference_log_probs)` aggregated the same
way (the aggregation written here: Σ m·k / Σ m, the mean over sequences of
Σ_t m·k / Σ_t m, Σ m·k / (B·max_length)); values and gradients with respect to hidden,
weight and bias, in float64. tests/contract_table.py adds float64 numpy references and
the generic checks (jit, vmap, gradient checks, low precision, extreme inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxloss
from tests.compiled import jit_call
from tests.gradcheck import check_grads

B, T, D, V = 3, 5, 4, 11  # 15 tokens
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(B, T, D))
WEIGHT = RNG.normal(size=(D, V))
BIAS = RNG.normal(size=V)
LABELS = RNG.integers(0, V, (B, T))
_LP = special.log_softmax(HIDDEN @ WEIGHT + BIAS, axis=-1)[
    np.arange(B)[:, None], np.arange(T), LABELS
]
OLD = _LP + 0.4 * RNG.normal(size=(B, T))  # ratios on both sides of the clip range
REF = _LP + 0.5 * RNG.normal(size=(B, T))
ADV = np.array([1.0, -0.5, 2.0])
ADV_TOKENS = RNG.normal(size=(B, T))
KEEP = RNG.random((B, T)) < 0.7
KEEP_EMPTY_ROW = KEEP.copy()
KEEP_EMPTY_ROW[1] = False  # a sequence with no kept token (counts in B for sequence_mean)


def f64(x):
    return None if x is None else jnp.asarray(x, jnp.float64)


def aggregate(per_token, where, aggregation, max_length):
    m = jnp.ones(per_token.shape) if where is None else jnp.asarray(where, per_token.dtype)
    total = m * per_token
    if aggregation == "token_mean":
        return jnp.sum(total) / jnp.sum(m)
    if aggregation == "sequence_mean":
        count = jnp.sum(m, axis=-1)
        rows = jnp.where(count > 0, jnp.sum(total, -1) / jnp.maximum(count, 1.0), 0.0)
        return jnp.mean(rows)
    return jnp.sum(total) / (per_token.shape[0] * max_length)


def materialized(hidden, weight, bias, labels, old, adv, **options):
    layout = options.pop("weight_layout", "dense")
    ref = options.pop("reference_log_probs", None)
    kl_coef = options.pop("kl_coef", 0.0)
    estimator = options.pop("kl_estimator", "k3")
    temperature = options.pop("temperature", 1.0)
    options.pop("chunk_size", None)
    z = hidden @ (weight if layout == "dense" else weight.T)
    if bias is not None:
        z = z + bias
    where = options.get("where")
    lp = jaxloss.token_log_probs(z, labels, temperature=temperature, where=where)
    loss = jaxloss.policy_gradient_loss(lp, old, adv, **options)
    if kl_coef:
        kl = jaxloss.kl_penalty(lp, ref, estimator=estimator, where=where)
        loss = loss + kl_coef * aggregate(
            kl, where, options.get("aggregation", "token_mean"), options.get("max_length")
        )
    return loss


def fused(hidden, weight, bias, labels, old, adv, **options):
    return jaxloss.fused_linear_policy_gradient_loss(
        hidden, weight, labels, old, adv, bias=bias, **options
    )


def value_and_grads(fn, hidden, weight, bias, *rest, **options):
    """The value and the gradients with respect to hidden, weight and bias (when not
    None), under a jit shared by the calls with the same function and Python-valued
    options."""
    return jit_call(_value_and_grads, fn, hidden, weight, bias, *rest, **options)


def _value_and_grads(fn, hidden, weight, bias, *rest, **options):
    if bias is None:
        return jax.value_and_grad(lambda h, w: fn(h, w, None, *rest, **options), (0, 1))(
            hidden, weight
        )
    return jax.value_and_grad(lambda h, w, b: fn(h, w, b, *rest, **options), (0, 1, 2))(
        hidden, weight, bias
    )


def assert_close(actual, expected, rtol=1e-12):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    atol = rtol * max(np.abs(expected).max(), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def assert_matches_materialized(hidden, weight, bias, labels, old, adv, **options):
    args = (hidden, weight, bias, labels, old, adv)
    (got, got_grads) = value_and_grads(fused, *args, **dict(options))
    (want, want_grads) = value_and_grads(materialized, *args, **dict(options))
    assert got.dtype == jnp.float64
    assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == jnp.float64 and g.shape == w.shape
        assert_close(g, w)
    return got_grads


CASES = {
    "token_mean,dense,chunk 4 of 15,where": dict(chunk_size=4, where=KEEP),
    "sequence_mean,embedding,chunk 5 of 15,T,clip_high,k3,per-token A,empty sequence": dict(
        aggregation="sequence_mean",
        weight_layout="embedding",
        chunk_size=5,
        temperature=1.7,
        clip_epsilon_high=0.28,
        kl_coef=0.1,
        reference_log_probs=REF,
        advantages=ADV_TOKENS,
        where=KEEP_EMPTY_ROW,
    ),
    "sequence_sum_normalized,bias,chunk 1,k1,where": dict(
        aggregation="sequence_sum_normalized",
        max_length=8,
        bias=BIAS,
        chunk_size=1,
        kl_coef=0.05,
        kl_estimator="k1",
        reference_log_probs=REF,
        where=KEEP,
    ),
    "token_mean,embedding,bias,default chunk,k2,T": dict(
        weight_layout="embedding",
        bias=BIAS,
        temperature=0.7,
        kl_coef=0.2,
        kl_estimator="k2",
        reference_log_probs=REF,
    ),
    "sequence_mean,chunk 15 of 15,clip 0.1": dict(
        aggregation="sequence_mean", chunk_size=15, clip_epsilon=0.1
    ),
    "sequence_sum_normalized,chunk 7 of 15,per-token A,k3,clip_high": dict(
        aggregation="sequence_sum_normalized",
        max_length=5,
        chunk_size=7,
        clip_epsilon_high=0.3,
        kl_coef=0.3,
        reference_log_probs=REF,
        advantages=ADV_TOKENS,
        where=KEEP,
    ),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_value_and_gradients_equal_the_materialized_loss(options):
    options = dict(options)
    layout = options.get("weight_layout", "dense")
    weight = WEIGHT if layout == "dense" else WEIGHT.T
    adv = options.pop("advantages", ADV)
    bias = options.pop("bias", None)
    if "reference_log_probs" in options:
        options["reference_log_probs"] = f64(options["reference_log_probs"])
    assert_matches_materialized(
        f64(HIDDEN), f64(weight), f64(bias), LABELS, f64(OLD), f64(adv), **options
    )


def test_the_sample_ratios_are_clipped_on_both_sides():
    # The cases above exercise every branch of min/clip, not only the unclipped one.
    r = np.exp(_LP - OLD)
    assert np.any(r < 0.8) and np.any(r > 1.3) and np.any(np.abs(r - 1) < 0.1)


def test_ties_of_min_and_clip_take_the_subgradient_of_jax_grad():
    # Zero hidden rows give logits 0 and log p = −log V in both computations, bit for
    # bit; with old = log p, r = 1 exactly, and ε = 0 makes r = 1 − ε = 1 + ε: ties in
    # the clip and in the min, whose subgradient must be jax.grad's, and the documented
    # one: the unclipped side's −A·r, as at r = 1 inside the clip range (ε = 0.2).
    hidden = HIDDEN.copy()
    hidden[:, ::2] = 0.0
    z = jnp.asarray(hidden) @ f64(WEIGHT)
    old = np.array(jaxloss.token_log_probs(z, LABELS))
    old[:, 1::2] = OLD[:, 1::2]
    options = dict(clip_epsilon=0.0, chunk_size=4, where=KEEP)
    gh = assert_matches_materialized(
        f64(hidden), f64(WEIGHT), None, LABELS, f64(old), f64(ADV), **options
    )[0]
    untied = value_and_grads(
        materialized, f64(hidden), f64(WEIGHT), None, LABELS, f64(old), f64(ADV), where=KEEP
    )[1][0]
    tied = KEEP[:, ::2]
    np.testing.assert_allclose(
        np.asarray(gh)[:, ::2][tied], np.asarray(untied)[:, ::2][tied], 1e-12
    )


def _nan_where_dropped(x):
    keep = KEEP_EMPTY_ROW[..., None] if np.ndim(x) == 3 else KEEP_EMPTY_ROW
    return f64(np.where(keep, x, np.nan))


def test_masked_tokens_get_zero_gradient_even_if_their_inputs_are_nan():
    options = dict(aggregation="sequence_mean", chunk_size=4, kl_coef=0.1, where=KEEP_EMPTY_ROW)
    clean = (f64(HIDDEN), f64(WEIGHT), f64(BIAS), LABELS, f64(OLD), f64(ADV_TOKENS))
    dirty = (_nan_where_dropped(HIDDEN), *clean[1:4])
    dirty += (_nan_where_dropped(OLD), _nan_where_dropped(ADV_TOKENS))
    value, grads = value_and_grads(
        fused, *dirty, reference_log_probs=_nan_where_dropped(REF), **options
    )
    want, want_grads = value_and_grads(
        materialized, *clean, reference_log_probs=f64(REF), **options
    )
    assert_close(value, want)
    for g, w in zip(grads, want_grads, strict=True):
        assert np.all(np.isfinite(g))
        assert_close(g, w)
    assert np.all(np.asarray(grads[0])[~KEEP_EMPTY_ROW] == 0.0)


def test_masked_token_on_a_minus_inf_logit_contributes_nothing():
    # A dropped token's label is replaced by a safe index; with a −inf bias there, k3
    # would be +inf (and 0·inf = NaN) were the token not excluded from the sum.
    bias = BIAS.copy()
    bias[0] = -np.inf
    keep = KEEP & (LABELS != 0)
    options = dict(where=keep, kl_coef=0.5, reference_log_probs=f64(REF), chunk_size=4)
    value, grads = value_and_grads(
        fused, f64(HIDDEN), f64(WEIGHT), f64(bias), LABELS, f64(OLD), f64(ADV), **options
    )
    want, want_grads = value_and_grads(
        materialized, f64(HIDDEN), f64(WEIGHT), f64(bias), LABELS, f64(OLD), f64(ADV), **options
    )
    assert np.isfinite(value)
    assert_close(value, want)
    for g, w in zip(grads, want_grads, strict=True):
        assert np.all(np.isfinite(g))
        assert_close(g, w)


def test_nothing_kept_gives_zero_with_zero_gradient():
    for aggregation in ("token_mean", "sequence_mean"):
        value, grads = value_and_grads(
            fused,
            f64(HIDDEN),
            f64(WEIGHT),
            f64(BIAS),
            LABELS,
            f64(OLD),
            f64(ADV),
            where=np.zeros((B, T), bool),
            aggregation=aggregation,
        )
        assert value == 0.0
        assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_kl_coef_zero_ignores_the_reference():
    args = (f64(HIDDEN), f64(WEIGHT), None, LABELS, f64(OLD), f64(ADV))
    plain = fused(*args, chunk_size=4)
    assert fused(*args, chunk_size=4, reference_log_probs=f64(REF)) == plain
    assert fused(*args, chunk_size=4, reference_log_probs=f64(REF), kl_coef=0.1) != plain


def test_flat_tokens_are_one_sequence_and_broadcast_inputs():
    # [N, D] hidden: one sequence of N tokens; a scalar advantage and old log-prob.
    hidden = f64(HIDDEN.reshape(B * T, D))
    labels = LABELS.reshape(-1)
    got = jit_call(fused, hidden, f64(WEIGHT), None, labels, -2.0, 1.5, aggregation="sequence_mean")

    @jax.jit
    def want_of(hidden, weight, labels):
        lp = jaxloss.token_log_probs(hidden @ weight, labels)
        return jaxloss.policy_gradient_loss(lp, -2.0, 1.5, aggregation="sequence_mean")

    want = want_of(hidden, f64(WEIGHT), labels)
    assert_close(got, want)


def test_bf16_inputs_are_computed_in_float32():
    args = [jnp.asarray(x, jnp.bfloat16) for x in (HIDDEN, WEIGHT, BIAS, OLD)]
    got = jit_call(fused, *args[:3], LABELS, args[3], ADV, chunk_size=4, where=KEEP)
    assert got.dtype == jnp.float32
    rounded = [jnp.asarray(np.asarray(x, np.float64)) for x in args]
    want = jit_call(materialized, *rounded[:3], LABELS, rounded[3], f64(ADV), where=KEEP)
    assert_close(got, want, 1e-5)


def test_check_grads_and_jit():
    def f(h, w, b):
        return fused(
            h,
            w,
            b,
            LABELS,
            f64(OLD),
            f64(ADV),
            chunk_size=4,
            where=KEEP,
            kl_coef=0.1,
            reference_log_probs=f64(REF),
        )

    args = (f64(HIDDEN), f64(WEIGHT), f64(BIAS))
    check_grads(f, args, order=1, modes=("rev",))
    assert_close(jax.jit(f)(*args), f(*args))


def test_explicitly_sharded_tokens_loop_per_device():
    mesh = jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Explicit,))
    spec = jax.sharding.PartitionSpec("data")
    put = lambda x: jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec))  # noqa: E731
    options = dict(aggregation="sequence_mean", chunk_size=4, kl_coef=0.1)
    with jax.set_mesh(mesh):
        got = jax.jit(
            lambda h, y, old, adv, ref: fused(
                h,
                f64(WEIGHT),
                f64(BIAS),
                y,
                old,
                adv,
                reference_log_probs=ref,
                where=KEEP,
                **options,
            )
        )(put(f64(HIDDEN)), put(LABELS), put(f64(OLD)), put(f64(ADV)), put(f64(REF)))
    want = jit_call(
        materialized,
        f64(HIDDEN),
        f64(WEIGHT),
        f64(BIAS),
        LABELS,
        f64(OLD),
        f64(ADV),
        reference_log_probs=f64(REF),
        where=KEEP,
        **options,
    )
    assert_close(got, want)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"labels": LABELS.astype(np.float32)}, TypeError, "`labels` must be an integer"),
        ({"labels": LABELS[:, :3]}, ValueError, "`labels` of shape"),
        ({"labels": np.concatenate([LABELS, LABELS[:, :1]], 1)}, ValueError, "`labels`"),
        ({"old_log_probs": OLD[:, :4]}, ValueError, "`old_log_probs` of shape"),
        ({"old_log_probs": OLD.astype(np.int32)}, TypeError, "`old_log_probs` must be"),
        ({"advantages": ADV[:2]}, ValueError, "`advantages` of shape"),
        ({"weight": WEIGHT.T}, ValueError, "`weight` of shape"),  # [V, D] as dense
        ({"hidden": HIDDEN[0, 0]}, ValueError, "`hidden` of shape"),
        ({"aggregation": "sequence_sum_normalized"}, TypeError, "`max_length` .* is required"),
        ({"aggregation": "mean"}, ValueError, "`aggregation` must be one of"),
        ({"max_length": 8}, ValueError, "`max_length` is used only"),
        ({"kl_coef": 0.1}, ValueError, "`reference_log_probs` is required"),
        ({"kl_coef": -0.1, "reference_log_probs": REF}, ValueError, "`kl_coef`"),
        ({"kl_estimator": "k4"}, ValueError, "`kl_estimator` must be one of"),
        ({"clip_epsilon": jnp.array(0.2)}, TypeError, "`clip_epsilon` must be a Python"),
        ({"clip_epsilon_high": -0.1}, ValueError, "`clip_epsilon_high` must be in"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"where": KEEP.astype(np.int32)}, TypeError, "`where` must be a boolean"),
        ({"reference_log_probs": REF[:2], "kl_coef": 0.1}, ValueError, "`reference_log_probs`"),
    ],
)
def test_bad_input_raises_naming_the_argument(options, error, match):
    kwargs = dict(hidden=HIDDEN, weight=WEIGHT, labels=LABELS, old_log_probs=OLD, advantages=ADV)
    kwargs.update(options)
    positional = [kwargs.pop(k) for k in ("hidden", "weight", "labels", "old_log_probs")]
    with pytest.raises(error, match=match):
        jaxloss.fused_linear_policy_gradient_loss(*positional, kwargs.pop("advantages"), **kwargs)
