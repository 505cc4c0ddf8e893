"""fused_linear_preference_loss: equal to the preference loss of materialized logits.

The materialized counterpart is the composition the function replaces: the logits
``hidden @ weight + bias``, `token_log_probs`, `sequence_log_probs` (summed or
length-averaged over the kept tokens), then `dpo_loss` / `simpo_loss` / `orpo_loss` /
`cpo_loss` (each checked against its paper's formula in tests/test_preference.py and the
contract table) plus the chosen sequences' token-mean NLL; its gradients are JAX's
gradients of that composition. One case is also checked against a float64 numpy
reference written from the DPO formula (Rafailov et al., 2023).
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

B, T, D, D_REF, V = 3, 5, 4, 6, 9  # 3 pairs of 5-token sequences
RNG = np.random.default_rng(0)
HIDDEN = jnp.asarray(RNG.normal(size=(2 * B, T, D)))
WEIGHT = jnp.asarray(RNG.normal(size=(D, V)))
BIAS = jnp.asarray(RNG.normal(size=V))
LABELS = RNG.integers(0, V, (2 * B, T))
KEEP = RNG.random((2 * B, T)) < 0.75
KEEP[:, 0] = False  # a prompt token
KEEP[4] = False  # a rejected sequence with no kept token
REF_HIDDEN = jnp.asarray(RNG.normal(size=(2 * B, T, D_REF)))
REF_WEIGHT = jnp.asarray(RNG.normal(size=(D_REF, V)))
REF_BIAS = jnp.asarray(RNG.normal(size=V))
REF_LOGPS = (jnp.asarray(-RNG.random(B) * 5), jnp.asarray(-RNG.random(B) * 5))

PAIR_FUNCTIONS = {
    "dpo": jaxloss.dpo_loss,
    "simpo": jaxloss.simpo_loss,
    "orpo": jaxloss.orpo_loss,
    "cpo": jaxloss.cpo_loss,
}


def materialized(hidden, weight, bias, labels, keep, *, loss="dpo", reference=None, **options):
    """Per-pair losses [B] of the materialized logits (the composition being fused)."""
    average = options.pop(
        "average_log_prob", loss in ("simpo", "orpo") or options.get("loss_type") == "ipo"
    )
    nll_weight = options.pop("nll_weight", 0.0)
    layout = options.pop("weight_layout", "dense")
    cap = options.pop("logit_soft_cap", None)
    temperature = options.pop("temperature", 1.0)

    def sequences(h, w, b):
        z = h @ (w if layout == "dense" else w.T)
        if b is not None:
            z = z + b
        if cap is not None:
            z = cap * jnp.tanh(z / cap)
        z = z / temperature
        log_p = jaxloss.token_log_probs(z, labels, where=keep)
        return jaxloss.sequence_log_probs(log_p, where=keep, average=average)

    s = sequences(hidden, weight, bias)
    args = [s[:B], s[B:]]
    if loss == "dpo":
        if reference == "hidden":
            r = jax.lax.stop_gradient(sequences(REF_HIDDEN, _layout(REF_WEIGHT, layout), REF_BIAS))
            args += [r[:B], r[B:]]
        else:
            args += list(REF_LOGPS)
    out = PAIR_FUNCTIONS[loss](*args, **options)
    if nll_weight:
        count = jnp.sum(keep[:B], axis=-1)
        mean = s[:B] if average else s[:B] / jnp.where(count > 0, count, 1)
        out = out - nll_weight * mean
    return out


def _layout(weight, layout):
    return weight if layout == "dense" else weight.T


def fused(hidden, weight, bias, labels, keep, *, reference=None, reduction="mean", **options):
    layout = options.get("weight_layout", "dense")
    if reference == "hidden":
        options |= dict(
            reference_hidden=REF_HIDDEN,
            reference_weight=_layout(REF_WEIGHT, layout),
            reference_bias=REF_BIAS,
        )
    elif reference == "logps":
        options |= dict(reference_logps=REF_LOGPS)
    return jaxloss.fused_linear_preference_loss(
        hidden, weight, labels, bias=bias, where=keep, reduction=reduction, **options
    )


CASES = {
    "dpo-sigmoid-ref-hidden": dict(reference="hidden", beta=0.5, chunk_size=2),
    "dpo-sigmoid-smoothing-ref-hidden-embedding": dict(
        reference="hidden", weight_layout="embedding", label_smoothing=0.1, chunk_size=3
    ),
    "dpo-robust-ref-logps": dict(reference="logps", loss_type="robust", label_smoothing=0.2),
    "dpo-hinge-ref-logps": dict(reference="logps", loss_type="hinge", beta=0.3, chunk_size=5),
    "dpo-ipo-averaged-ref-hidden": dict(
        reference="hidden", loss_type="ipo", average_log_prob=True, chunk_size=4
    ),
    "dpo-nll-ref-hidden": dict(reference="hidden", nll_weight=0.7, chunk_size=2),
    "dpo-soft-cap-temperature-ref-hidden": dict(
        reference="hidden", logit_soft_cap=1.5, temperature=0.7, chunk_size=3
    ),
    "simpo-temperature": dict(loss="simpo", temperature=1.3, chunk_size=2),
    "simpo": dict(loss="simpo", gamma=0.3, label_smoothing=0.1, chunk_size=3),
    "orpo-nll": dict(loss="orpo", beta=0.5, nll_weight=1.0, chunk_size=2),
    "cpo": dict(loss="cpo", beta=0.2, chunk_size=64),
    "cpo-nll-smoothing": dict(loss="cpo", nll_weight=1.0, label_smoothing=0.1),
}


def _grads(fn, *args):
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(*args)


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_fused_equals_materialized_in_value_and_gradients(name):
    options = dict(CASES[name])
    chunk = options.pop("chunk_size", None)
    layout = options.get("weight_layout", "dense")
    weight = _layout(WEIGHT, layout)
    args = (HIDDEN, weight, BIAS)
    per_pair = materialized(*args, LABELS, KEEP, **options)
    for reduction, reduce in (("mean", jnp.mean), ("sum", jnp.sum)):
        value, grads = _grads(
            lambda h, w, b, r=reduction: fused(
                h, w, b, LABELS, KEEP, chunk_size=chunk, reduction=r, **options
            ),
            *args,
        )
        expected, expected_grads = _grads(
            lambda h, w, b, f=reduce: f(materialized(h, w, b, LABELS, KEEP, **options)), *args
        )
        assert value.dtype == jnp.float64
        _close(value, expected)
        for g, e in zip(grads, expected_grads, strict=True):
            _close(g, e)
    # "none": per-pair losses, differentiable through the per-token (recompute) path.
    none = fused(*args, LABELS, KEEP, chunk_size=chunk, reduction="none", **options)
    assert none.shape == (B,)
    _close(none, per_pair)
    weights = jnp.asarray([0.5, 2.0, 1.0])
    grads = jax.grad(
        lambda h, w, b: jnp.sum(
            weights * fused(h, w, b, LABELS, KEEP, chunk_size=chunk, reduction="none", **options)
        ),
        argnums=(0, 1, 2),
    )(*args)
    expected_grads = jax.grad(
        lambda h, w, b: jnp.sum(weights * materialized(h, w, b, LABELS, KEEP, **options)),
        argnums=(0, 1, 2),
    )(*args)
    for g, e in zip(grads, expected_grads, strict=True):
        _close(g, e)


PAIR_WEIGHTS = jnp.asarray([0.5, 0.0, 2.0])  # one pair weighted out


@pytest.mark.parametrize("name", ["dpo-sigmoid-ref-hidden", "orpo-nll"])
def test_pair_weights_in_every_reduction(name):
    """``weights`` [B]: w·ℓ per pair, Σ w·ℓ, and Σ w·ℓ / Σ w (the conventions' weighted
    mean), in value and gradients."""
    options = dict(CASES[name])
    chunk = options.pop("chunk_size", None)
    args = (HIDDEN, WEIGHT, BIAS)
    expected_of = {
        "none": lambda loss: PAIR_WEIGHTS * loss,
        "sum": lambda loss: jnp.sum(PAIR_WEIGHTS * loss),
        "mean": lambda loss: jnp.sum(PAIR_WEIGHTS * loss) / jnp.sum(PAIR_WEIGHTS),
    }
    for reduction, expected_fn in expected_of.items():

        def got(h, w, b, r=reduction):
            out = fused(
                h, w, b, LABELS, KEEP, chunk_size=chunk, reduction=r, weights=PAIR_WEIGHTS,
                **options,
            )  # fmt: skip
            return jnp.sum(out * jnp.arange(1.0, 1.0 + out.size).reshape(out.shape))

        def want(h, w, b, f=expected_fn):
            out = f(materialized(h, w, b, LABELS, KEEP, **options))
            return jnp.sum(out * jnp.arange(1.0, 1.0 + out.size).reshape(out.shape))

        value, grads = _grads(got, *args)
        expected, expected_grads = _grads(want, *args)
        _close(value, expected)
        for g, e in zip(grads, expected_grads, strict=True):
            _close(g, e)


def _one_device_mesh():
    return jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Explicit,))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_explicitly_sharded_pairs_and_shard_map(reduction):
    """Inputs on a mesh of explicit axes (regrouped by pair, looped over per device), and
    the loss inside shard_map with ``batch_axis_name``: equal to the unsharded loss."""
    mesh = _one_device_mesh()
    spec = jax.sharding.PartitionSpec("data")

    def put(x):
        return jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec))

    def loss(h, y, keep, rh, w, batch_axis_name=None):
        return jaxloss.fused_linear_preference_loss(
            h, WEIGHT, y, where=keep, reference_hidden=rh, reference_weight=REF_WEIGHT,
            weights=w, chunk_size=2, reduction=reduction, batch_axis_name=batch_axis_name,
        )  # fmt: skip

    def total(f):
        return lambda *a: jnp.sum(f(*a) * jnp.arange(1.0, 1.0 + B)[: f(*a).size])

    inputs = (HIDDEN, LABELS, KEEP, REF_HIDDEN, PAIR_WEIGHTS)
    expected, expected_grad = jax.value_and_grad(total(loss))(*inputs)
    with jax.set_mesh(mesh):
        value, grad = jax.jit(jax.value_and_grad(total(loss)))(*map(put, inputs))
    _close(value, expected)
    _close(grad, expected_grad)
    local = jax.shard_map(
        lambda *a: loss(*a, batch_axis_name="data"),
        mesh=mesh,
        in_specs=spec,
        out_specs=spec if reduction == "none" else jax.sharding.PartitionSpec(),
    )
    with jax.set_mesh(mesh):
        value, grad = jax.jit(jax.value_and_grad(total(local)))(*map(put, inputs))
    _close(value, expected)
    _close(grad, expected_grad)


def test_dpo_equals_a_numpy_reference_from_the_formula():
    """−log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) of summed kept-token log-probabilities."""
    h, w, b = (np.asarray(x) for x in (HIDDEN, WEIGHT, BIAS))

    def seq(h, w, b):
        log_p = special.log_softmax(h @ w + b, axis=-1)
        picked = np.take_along_axis(log_p, LABELS[..., None], axis=-1)[..., 0]
        return np.where(KEEP, picked, 0.0).sum(-1)

    s, r = seq(h, w, b), seq(np.asarray(REF_HIDDEN), np.asarray(REF_WEIGHT), np.asarray(REF_BIAS))
    u = (s[:B] - r[:B]) - (s[B:] - r[B:])
    expected = np.logaddexp(0.0, -0.5 * u)
    out = fused(HIDDEN, WEIGHT, BIAS, LABELS, KEEP, reference="hidden", beta=0.5, chunk_size=2)
    np.testing.assert_allclose(float(out), expected.mean(), rtol=1e-12)
    none = fused(HIDDEN, WEIGHT, BIAS, LABELS, KEEP, reference="hidden", beta=0.5, reduction="none")
    np.testing.assert_allclose(np.asarray(none), expected, rtol=1e-12)


def test_ignore_index_equals_where():
    labels = np.where(KEEP, LABELS, -100)
    for reduction in ("mean", "none"):
        with_index = jaxloss.fused_linear_preference_loss(
            HIDDEN, WEIGHT, labels, loss="simpo", ignore_index=-100, chunk_size=2,
            reduction=reduction,
        )  # fmt: skip
        with_where = jaxloss.fused_linear_preference_loss(
            HIDDEN, WEIGHT, LABELS, loss="simpo", where=KEEP, chunk_size=2, reduction=reduction
        )
        _close(with_index, with_where)


def test_no_gradient_to_the_reference_and_none_to_masked_nan_tokens():
    hidden = HIDDEN.at[~KEEP].set(jnp.nan)
    ref_hidden = REF_HIDDEN.at[~KEEP].set(jnp.nan)

    def loss(h, w, rh, rw, reduction):
        return jnp.sum(
            jaxloss.fused_linear_preference_loss(
                h,
                w,
                LABELS,
                reference_hidden=rh,
                reference_weight=rw,
                where=KEEP,
                chunk_size=3,
                reduction=reduction,
            )  # fmt: skip
        )

    for reduction in ("mean", "none"):
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)(
            hidden, WEIGHT, ref_hidden, REF_WEIGHT, reduction
        )
        assert np.isfinite(value)
        g_h, g_w, g_rh, g_rw = (np.asarray(g) for g in grads)
        assert np.all(g_rh == 0) and np.all(g_rw == 0)
        assert np.all(g_h[~KEEP] == 0) and np.isfinite(g_h).all() and np.isfinite(g_w).all()
        assert np.any(g_h[KEEP] != 0)
    grads = jax.jit(
        jax.grad(
            lambda lc, lr: jaxloss.fused_linear_preference_loss(
                HIDDEN, WEIGHT, LABELS, reference_logps=(lc, lr)
            ),
            argnums=(0, 1),
        )
    )(*REF_LOGPS)
    assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_jit_and_float32():
    args = (HIDDEN, WEIGHT, LABELS)
    kw = dict(reference_hidden=REF_HIDDEN, reference_weight=REF_WEIGHT, chunk_size=2)
    f = jax.jit(lambda h, w, y: jaxloss.fused_linear_preference_loss(h, w, y, **kw))
    _close(f(*args), jaxloss.fused_linear_preference_loss(*args, **kw))
    low = [jnp.asarray(x, jnp.bfloat16) for x in (HIDDEN, WEIGHT)]
    # Whole-sequence chunks: jaxlib 0.9.0's CPU compiler (the lowest supported) fails on
    # bf16 dots this small inside a ragged chunk loop ("unsupported operand type BF16 in
    # op dot"); ragged chunks are checked in float64 above, bf16 here.
    out = jit_call(jaxloss.fused_linear_preference_loss, *low, LABELS, loss="orpo", chunk_size=5)
    assert out.dtype == jnp.float32
    rounded = [jnp.asarray(x, jnp.float32) for x in low]
    expected = jax.jit(
        lambda h, w: jnp.mean(materialized(h, w, None, LABELS, np.ones_like(KEEP), loss="orpo"))
    )(*rounded)
    np.testing.assert_allclose(float(out), float(expected), rtol=1e-5)


def _call(**kwargs):
    options = dict(reference_logps=REF_LOGPS)
    options |= kwargs
    hidden = options.pop("hidden", HIDDEN)
    labels = options.pop("labels", LABELS)
    return jaxloss.fused_linear_preference_loss(hidden, WEIGHT, labels, **options)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(hidden=HIDDEN[:5], labels=LABELS[:5]), ValueError, "2B, T, D"),
        (dict(labels=LABELS.astype(np.float32)), TypeError, "integer"),
        (dict(labels=LABELS[:, :4]), ValueError, "labels"),
        (dict(reference_hidden=REF_HIDDEN, reference_weight=REF_WEIGHT), ValueError, "not both"),
        (dict(reference_logps=None), ValueError, "needs the reference"),
        (dict(loss="simpo"), ValueError, "no reference"),
        (dict(reference_logps=REF_LOGPS[0]), TypeError, "pair"),
        (dict(reference_logps=(REF_LOGPS[0][:2], REF_LOGPS[1])), ValueError, r"\(3,\)"),
        (
            dict(reference_logps=None, reference_hidden=REF_HIDDEN, reference_weight=REF_WEIGHT.T),
            ValueError,
            "reference_weight",
        ),
        (
            dict(
                reference_logps=None,
                reference_hidden=REF_HIDDEN,
                reference_weight=REF_WEIGHT[:, :5],
            ),
            ValueError,
            "vocabulary",
        ),
        (dict(reference_logps=None, reference_hidden=REF_HIDDEN), ValueError, "reference_weight"),
        (
            dict(
                reference_logps=None,
                reference_hidden=REF_HIDDEN,
                reference_weight=REF_WEIGHT,
                reference_bias=REF_BIAS[:4],
            ),
            ValueError,
            "reference_bias",
        ),
        (dict(loss="kto"), ValueError, "`loss`"),
        (dict(loss="cpo", reference_logps=None, loss_type="hinge"), ValueError, "loss_type"),
        (dict(loss_type="hinge", label_smoothing=0.1), ValueError, "label_smoothing"),
        (dict(beta=-1.0), ValueError, "beta"),
        (dict(nll_weight=-1.0), ValueError, "nll_weight"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(logit_soft_cap=-1.0), ValueError, "logit_soft_cap"),
        (dict(weights=jnp.ones(2)), ValueError, "weights"),
        (dict(weights=-jnp.ones(3)), ValueError, "non-negative"),
    ],
)
def test_invalid_inputs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(**kwargs)


def test_vmap_and_gradient_check_of_the_one_pass_path():
    hidden = jnp.stack([HIDDEN, 0.5 * HIDDEN])
    labels = np.stack([LABELS, LABELS[::-1]])

    def loss(h, w, y):
        return jaxloss.fused_linear_preference_loss(h, w, y, loss="orpo", where=KEEP, chunk_size=2)

    batched = jax.jit(jax.vmap(loss, in_axes=(0, None, 0)))(hidden, WEIGHT, labels)
    one_by_one = jax.jit(lambda h, w, y: jnp.stack([loss(h[i], w, y[i]) for i in range(2)]))
    _close(batched, one_by_one(hidden, WEIGHT, labels))
    check_grads(lambda h, w: loss(h, w, LABELS), (HIDDEN, WEIGHT), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("reference", ["hidden", "logps"])
def test_memory_one_buffer_and_one_block_of_logits(reference, monkeypatch):
    """XLA's accounting of the compiled forward + backward pass (nothing is run): beside
    the one [D, V] buffer of DPO's deferred factor, one [chunk, V] block of logits (the
    logits' gradient is written over them, and the reference's logits come from a pass
    of their own, never held beside the policy's) and small [D, block] temporaries; no
    masked copy of the hidden states ([2B·T, D] is 64 KiB).
    D = 64, V = 4096: [D, V] is 1 MiB, [chunk, V] 0.5 MiB at chunk = 32."""
    from jaxloss import _engine as E

    b, t, d, v, chunk = 2, 64, 64, 4096, 32
    monkeypatch.setattr(E, "_BLOCK_BYTES", 4 * d * 256)  # [D, block] = 64 KiB
    options = dict(chunk_size=chunk)
    if reference == "hidden":
        options |= dict(
            reference_hidden=jax.ShapeDtypeStruct((2 * b, t, d), jnp.float32),
            reference_weight=jax.ShapeDtypeStruct((d, v), jnp.float32),
        )
    else:
        options |= dict(reference_logps=(jnp.zeros(b), jnp.zeros(b)))

    def loss(h, w, y, keep, *ref):
        extra = dict(options)
        if ref:
            extra |= dict(reference_hidden=ref[0], reference_weight=ref[1])
        return jaxloss.fused_linear_preference_loss(h, w, y, where=keep, **extra)

    shapes = [
        jax.ShapeDtypeStruct((2 * b, t, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((2 * b, t), jnp.int32),
        jax.ShapeDtypeStruct((2 * b, t), jnp.bool_),  # no masked copy of the hidden states
    ]
    if reference == "hidden":
        shapes += [options.pop("reference_hidden"), options.pop("reference_weight")]
    program = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    temp = program.memory_analysis().temp_size_in_bytes
    one_buffer, one_block = 4 * d * v, 4 * chunk * v
    # The XLA of jax < 0.10 also holds exp(z − max z) whole while it sums it for the
    # logsumexp (a second block, of every loss on the engine); newer XLA fuses the sum.
    blocks = 1.5 if jax.__version_info__ >= (0, 10) else 2.5
    assert temp < one_buffer + blocks * one_block, temp


def test_ipo_averages_the_log_probabilities_by_default_as_trl():
    """``loss_type="ipo"`` length-averages the sequence log-probabilities (policy and
    reference) unless told otherwise, as TRL's DPOTrainer does for IPO; summing them would
    put the target margin 1/(2β) on a different scale. Independent float64 reference of
    TRL's IPO loss: h = (π̄_c − π̄_r) − (π̄ref_c − π̄ref_r) with π̄ the mean token
    log-probability of the kept tokens, loss (h − 1/(2β))²."""
    keep = KEEP.copy()
    keep[4, 1] = True  # every sequence keeps a token (TRL divides by the length)
    beta = 0.5
    ipo = dict(reference="hidden", loss_type="ipo", beta=beta, reduction="none")
    got = fused(HIDDEN, WEIGHT, BIAS, LABELS, keep, **ipo)

    def mean_log_probs(h, w, b):
        z = np.asarray(h, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        log_p = z - special.logsumexp(z, axis=-1, keepdims=True)
        token = np.take_along_axis(log_p, LABELS[..., None], axis=-1)[..., 0]
        return np.where(keep, token, 0.0).sum(-1) / keep.sum(-1)

    policy = mean_log_probs(HIDDEN, WEIGHT, BIAS)
    ref = mean_log_probs(REF_HIDDEN, REF_WEIGHT, REF_BIAS)
    h = (policy[:B] - policy[B:]) - (ref[:B] - ref[B:])
    np.testing.assert_allclose(got, (h - 1 / (2 * beta)) ** 2, rtol=1e-10, atol=1e-12)
    summed = fused(HIDDEN, WEIGHT, BIAS, LABELS, keep, average_log_prob=False, **ipo)
    assert not np.allclose(summed, got)
