"""fused_linear_distillation_loss: equal to the losses of the materialized logits.

References: the divergences and the cross-entropy written in float64 numpy/scipy from
their formulas (KL, the generalized JSD of GKD, total variation, logsumexp − z_y), the
forward-KL gradient by hand ((s − t)/T + α_hard·(softmax(z) − onehot)), and the
materialized-logits counterparts `distillation_loss` + `softmax_cross_entropy`
differentiated by JAX, for every divergence's gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxloss
from tests.compiled import jit_call

N, D, DT, V = 10, 5, 7, 13  # 10 tokens; the teacher's hidden size differs
T = 1.7
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, D))
WEIGHT = RNG.normal(size=(D, V))
BIAS = RNG.normal(size=V)
T_HIDDEN = RNG.normal(size=(N, DT))
T_WEIGHT = RNG.normal(size=(DT, V))
T_BIAS = RNG.normal(size=V)
LABELS = RNG.integers(0, V, N)
KEEP = RNG.random(N) < 0.7
W_TOK = RNG.random(N) * 2
COT = RNG.normal(size=N)  # the cotangent of the per-token losses
DIVERGENCES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("tvd", 0.5)]

STUDENT = tuple(jnp.asarray(x) for x in (HIDDEN, WEIGHT, BIAS))  # float64
TEACHER = tuple(jnp.asarray(x) for x in (T_HIDDEN, T_WEIGHT, T_BIAS))


def np_kl(p, q):
    return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0), -1)


def np_divergence(zs, zt, *, divergence, beta=0.5, temperature=1.0):
    """D(softmax(zt/T)‖softmax(zs/T)) per token, float64 numpy."""
    s = special.softmax(zs / temperature, axis=-1)
    t = special.softmax(zt / temperature, axis=-1)
    if divergence == "forward_kl":
        return np_kl(t, s)
    if divergence == "reverse_kl":
        return np_kl(s, t)
    if divergence == "jsd":
        m = beta * t + (1 - beta) * s
        return beta * np_kl(t, m) + (1 - beta) * np_kl(s, m)
    return 0.5 * np.abs(s - t).sum(-1)


def np_ce(zs, labels):
    """The cross-entropy logsumexp(z) − z_y per token, float64 numpy."""
    return special.logsumexp(zs, axis=-1) - zs[np.arange(len(zs)), labels]


def fused(h, w, b, *, teacher=TEACHER, labels=LABELS, **options):
    h_t, w_t, b_t = teacher
    return jaxloss.fused_linear_distillation_loss(
        h, w, h_t, w_t, labels, student_bias=b, teacher_bias=b_t, **options
    )


def materialized(h, w, b, *, teacher=TEACHER, labels=LABELS, **options):
    """soft·`distillation_loss` + hard·`softmax_cross_entropy` of the materialized logits.

    Both reduce with the same mask and weights, so the sum of the reduced parts is the
    reduction of the per-token sum.
    """
    h_t, w_t, b_t = teacher
    layout = options.pop("weight_layout", "dense")
    hard = options.pop("hard_loss_weight", 0.0)
    soft = options.pop("soft_loss_weight", 1.0)
    ignore_index = options.pop("ignore_index", None)
    options.pop("chunk_size", None)
    conventions = dict(reduction=options.pop("reduction", "mean"))
    conventions["weights"] = options.pop("weights", None)
    where = options.pop("where", None)
    if ignore_index is not None:
        keep = labels != ignore_index
        where = keep if where is None else where & keep
    conventions["where"] = where
    zs = h @ (w if layout == "dense" else w.T)
    zt = h_t @ (w_t if layout == "dense" else w_t.T)
    zs = zs if b is None else zs + b
    zt = zt if b_t is None else zt + b_t
    loss = soft * jaxloss.distillation_loss(zs, zt, **options, **conventions)
    if hard:
        safe = labels if where is None else jnp.where(where, labels, 0)
        loss = loss + hard * jaxloss.softmax_cross_entropy(zs, safe, **conventions)
    return loss


def summed(fn, reduction, **options):
    """The loss as a scalar: the reduced loss, or the per-token losses against COT for "none"."""

    def total(*args):
        out = fn(*args, reduction=reduction, **options)
        return jnp.sum(COT * out) if reduction == "none" else out

    return total


def value_and_grads(fn, reduction, **options):
    """(value, ∂/∂h, ∂/∂W, ∂/∂b) of ``summed(fn, reduction, **options)`` at STUDENT, under
    a jit shared by the calls with the same function and Python-valued options."""
    return jit_call(_value_and_grads, fn, reduction, **options)


def _value_and_grads(fn, reduction, **options):
    value, vjp = jax.vjp(lambda *a: fn(*a, reduction=reduction, **options), *STUDENT)
    return (value, *vjp(jnp.asarray(COT) if reduction == "none" else jnp.ones_like(value)))


def assert_close(actual, expected, rtol=1e-10):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# Chunks of 3 and 4 (a shifted last chunk), 5 (two chunks) and 10 (one) for the 10 tokens.
@pytest.mark.parametrize(
    ("divergence", "beta", "chunk_size"),
    [("forward_kl", 0.5, 3), ("reverse_kl", 0.5, 5), ("jsd", 0.3, 4), ("tvd", 0.5, 10)],
)
def test_values_and_gradients_equal_the_materialized_logits(divergence, beta, chunk_size):
    options = dict(
        divergence=divergence,
        beta=beta,
        temperature=T,
        hard_loss_weight=0.4,
        soft_loss_weight=0.8,
        where=KEEP,
        weights=W_TOK,
    )
    for reduction in ("mean", "none"):
        got = value_and_grads(fused, reduction, chunk_size=chunk_size, **options)
        want = value_and_grads(materialized, reduction, **options)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
    # The value against the numpy formulas (not jaxloss): the per-token losses.
    zs, zt = HIDDEN @ WEIGHT + BIAS, T_HIDDEN @ T_WEIGHT + T_BIAS
    d = np_divergence(zs, zt, divergence=divergence, beta=beta, temperature=T)
    ref = 0.8 * d + 0.4 * np_ce(zs, LABELS)
    got = jit_call(fused, *STUDENT, reduction="none", chunk_size=chunk_size, **options)
    assert_close(got, np.where(KEEP, ref * W_TOK, 0.0))


def test_forward_kl_gradient_by_hand_embedding_layout_different_teacher_size():
    # Embedding layout [V, D], no biases, T² scaling, a chunk (4) that does not divide N.
    options = dict(temperature=T, hard_loss_weight=0.5, scale_by_temperature_squared=True)
    teacher = (TEACHER[0], TEACHER[1].T, None)
    args = (STUDENT[0], STUDENT[1].T, None)

    def mean(h, w):
        return fused(
            h, w, None, teacher=teacher, weight_layout="embedding", chunk_size=4, **options
        )

    value, (gh, gw) = jax.jit(jax.value_and_grad(mean, argnums=(0, 1)))(*args[:2])
    zs, zt = HIDDEN @ WEIGHT, T_HIDDEN @ T_WEIGHT
    s, t = special.softmax(zs / T, axis=-1), special.softmax(zt / T, axis=-1)
    per_token = T**2 * np_kl(t, s) + 0.5 * np_ce(zs, LABELS)
    assert_close(value, per_token.mean())
    # ∂/∂z of T²·KL(t‖s(z/T)) = T·(s − t); of the cross-entropy softmax(z) − onehot.
    g = (T * (s - t) + 0.5 * (special.softmax(zs, axis=-1) - np.eye(V)[LABELS])) / N
    assert_close(gh, g @ WEIGHT.T)
    assert_close(gw, (HIDDEN.T @ g).T)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_at_beta_0_and_1_is_forward_and_reverse_kl(beta):
    kl = "forward_kl" if beta == 0 else "reverse_kl"
    got = value_and_grads(fused, "mean", divergence="jsd", beta=beta, chunk_size=4)
    want = value_and_grads(fused, "mean", divergence=kl, chunk_size=4)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-12)
    # and near the ends, it is β·KL(t‖s) (β → 0) and (1 − β)·KL(s‖t) (β → 1) to first order.
    eps = 1e-9
    near = jit_call(fused, *STUDENT, divergence="jsd", beta=eps if beta == 0 else 1 - eps)
    assert_close(near / eps, jit_call(fused, *STUDENT, divergence=kl), 1e-5)


def test_hard_part_alone_is_the_fused_cross_entropy():
    # soft_loss_weight=0 leaves the student's cross-entropy on its untempered logits;
    # both weights 0 give 0 with zero gradient.
    options = dict(temperature=T, soft_loss_weight=0.0, chunk_size=4, where=KEEP)
    got = value_and_grads(fused, "mean", hard_loss_weight=1.0, **options)
    want = value_and_grads(
        lambda h, w, b, **o: jaxloss.fused_linear_cross_entropy(h, w, LABELS, bias=b, **o),
        "mean",
        where=KEEP,
    )
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, 1e-12)
    for x in value_and_grads(fused, "mean", **options):
        assert np.all(np.asarray(x) == 0.0)


def test_no_gradient_flows_to_the_teacher():
    def loss(reduction):
        return lambda *teacher: summed(fused, reduction, teacher=teacher, chunk_size=3)(*STUDENT)

    for reduction in ("mean", "none"):
        f = loss(reduction)
        ones = tuple(jnp.ones_like(x) for x in TEACHER)
        grads, tangent = jax.jit(
            lambda t, ones, f=f: (jax.grad(f, argnums=(0, 1, 2))(*t), jax.jvp(f, t, ones)[1])
        )(TEACHER, ones)
        for g in grads:
            assert np.all(np.asarray(g) == 0.0)
        assert float(tangent) == 0.0  # forward mode too


def test_dropped_tokens_give_zero_and_zero_gradient_even_if_nan():
    # Dropped by `where` or by their label (ignore_index): NaN hidden rows in both models.
    labels = np.where(np.arange(N) % 4 == 0, -100, LABELS)
    keep = KEEP & (labels != -100)
    hidden, t_hidden = HIDDEN.copy(), T_HIDDEN.copy()
    hidden[~keep], t_hidden[~keep] = np.nan, np.nan
    teacher = (jnp.asarray(t_hidden), *TEACHER[1:])
    options = dict(labels=labels, teacher=teacher, where=KEEP, ignore_index=-100, chunk_size=3)
    options.update(divergence="reverse_kl", hard_loss_weight=0.3)
    # equal to the clean inputs with the same tokens dropped by `where` alone
    clean = dict(options, teacher=TEACHER, where=keep, ignore_index=None, labels=LABELS)
    args = (jnp.asarray(hidden), *STUDENT[1:])
    for reduction in ("mean", "none"):  # "sum" takes the one-pass path of "mean"
        gh, gw, gb = jax.jit(jax.grad(summed(fused, reduction, **options), argnums=(0, 1, 2)))(
            *args
        )
        assert np.all(np.asarray(gh)[~keep] == 0.0)
        assert np.isfinite(gh).all() and np.isfinite(gw).all() and np.isfinite(gb).all()
        want = jax.jit(jax.grad(summed(fused, reduction, **clean), argnums=(0, 1, 2)))(*STUDENT)
        for g, w in zip((gh, gw, gb), want, strict=True):
            assert_close(g, w, 1e-12)
    per_token = jax.jit(lambda *a: fused(*a, reduction="none", **options))(*args)
    assert np.all(np.asarray(per_token)[~keep] == 0.0) and np.isfinite(per_token).all()


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES[:3], ids=["fkl", "rkl", "jsd"])
def test_minus_inf_bias_entries_at_the_same_classes(divergence, beta):
    # A masked vocabulary: the same classes at −inf in both models; a dropped token's
    # logits are its biases, so it sees them too.
    bias, t_bias = BIAS.copy(), T_BIAS.copy()
    bias[[2, 7]] = t_bias[[2, 7]] = -np.inf
    student = (STUDENT[0], STUDENT[1], jnp.asarray(bias))
    teacher = (*TEACHER[:2], jnp.asarray(t_bias))
    options = dict(divergence=divergence, beta=beta, temperature=T, where=KEEP)
    labels = np.where(np.isin(LABELS, [2, 7]), 0, LABELS)
    options.update(teacher=teacher, labels=labels, hard_loss_weight=0.2)
    got, want = jax.jit(
        lambda *s: (
            jax.value_and_grad(lambda *a: fused(*a, chunk_size=4, **options), argnums=(0, 1, 2))(
                *s
            ),
            jax.value_and_grad(lambda *a: materialized(*a, **options), argnums=(0, 1, 2))(*s),
        )
    )(*student)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.isfinite(g).all()
        assert_close(g, w)


def test_bf16_inputs_are_computed_in_float32():
    args = tuple(jnp.asarray(x, jnp.bfloat16) for x in (*STUDENT, *TEACHER))
    options = dict(temperature=T, hard_loss_weight=0.5, reduction="none", chunk_size=4)
    got = jit_call(
        jaxloss.fused_linear_distillation_loss,
        args[0], args[1], args[3], args[4], LABELS, student_bias=args[2], teacher_bias=args[5],
        **options,
    )  # fmt: skip
    assert got.dtype == jnp.float32
    h, w, b, h_t, w_t, b_t = (np.asarray(x, np.float64) for x in args)
    zs, zt = h @ w + b, h_t @ w_t + b_t
    want = np_divergence(zs, zt, divergence="forward_kl", temperature=T) + 0.5 * np_ce(zs, LABELS)
    assert_close(got, want, 1e-5)


def test_batched_tokens_jit_vmap_and_explicit_mesh():
    hidden, t_hidden = STUDENT[0].reshape(2, 5, D), TEACHER[0].reshape(2, 5, DT)
    options = dict(divergence="jsd", temperature=T, chunk_size=3, reduction="none")

    def f(h, h_t):
        return jaxloss.fused_linear_distillation_loss(
            h, STUDENT[1], h_t, TEACHER[1], LABELS[:5], hard_loss_weight=0.5, **options
        )

    zs, zt = HIDDEN @ WEIGHT, T_HIDDEN @ T_WEIGHT
    want = np_divergence(zs, zt, divergence="jsd", temperature=T)
    want = want + 0.5 * np_ce(zs, np.tile(LABELS[:5], 2))
    got = f(hidden, t_hidden)
    assert got.shape == (2, 5)
    assert_close(got, want.reshape(2, 5))
    assert_close(jax.jit(f)(hidden, t_hidden), got, 1e-12)
    assert_close(jax.jit(jax.vmap(f))(hidden, t_hidden), got, 1e-12)
    mesh = jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with jax.set_mesh(mesh):
        h, h_t = jax.device_put(hidden, sharding), jax.device_put(t_hidden, sharding)
        assert_close(jax.jit(f)(h, h_t), got, 1e-12)
        mean = jax.jit(
            lambda h, h_t: jaxloss.fused_linear_distillation_loss(h, STUDENT[1], h_t, TEACHER[1])
        )(h, h_t)
    want_mean = np_divergence(zs, zt, divergence="forward_kl").mean()
    assert_close(mean, want_mean)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"teacher_weight": RNG.normal(size=(DT, V + 1))}, ValueError, "vocabulary"),
        ({"teacher_weight": T_WEIGHT.T}, ValueError, "teacher_weight"),
        ({"teacher_hidden": T_HIDDEN[:4]}, ValueError, "teacher_hidden"),
        ({"labels": LABELS.astype(np.float32)}, TypeError, "integer"),
        ({"labels": None, "hard_loss_weight": 0.5}, ValueError, "hard_loss_weight"),
        ({"labels": None, "ignore_index": -100}, ValueError, "ignore_index"),
        ({"hard_loss_weight": -1.0}, ValueError, "hard_loss_weight"),
        ({"soft_loss_weight": jnp.array(1.0)}, TypeError, "soft_loss_weight"),
        ({"divergence": "kl"}, ValueError, "divergence"),
        ({"divergence": "jsd", "beta": 1.5}, ValueError, "beta"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": jnp.array(2.0)}, TypeError, "temperature"),
        ({"teacher_bias": np.zeros(V + 1)}, ValueError, "teacher_bias"),
        ({"labels": LABELS[:3]}, ValueError, "broadcast"),
        ({"reduction": "avg"}, ValueError, "reduction"),
    ],
)
def test_bad_input_raises_naming_the_argument(options, error, match):
    kwargs = dict(
        student_hidden=HIDDEN,
        student_weight=WEIGHT,
        teacher_hidden=T_HIDDEN,
        teacher_weight=T_WEIGHT,
        labels=LABELS,
    )
    kwargs.update(options)
    with pytest.raises(error, match=match):
        jaxloss.fused_linear_distillation_loss(**kwargs)
