"""Auxiliary losses: `combine_losses`, collection from NNX and Linen modules (summed over
layers and calls), and the seed's example of constraining an attention map."""

from __future__ import annotations

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxloss
import jaxloss.flax as jlf

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(6, 3)))

# --------------------------------------------------------------------------------------
# combine_losses
# --------------------------------------------------------------------------------------


def test_combine_losses_total_and_breakdown():
    terms = {"nll": jnp.asarray(2.5, jnp.float64), "kl": np.float64(0.4), "l2": 3}
    total, logs = jaxloss.combine_losses(terms, weights={"kl": 0.1, "l2": -0.5})
    np.testing.assert_allclose(total, 2.5 + 0.1 * 0.4 - 0.5 * 3, rtol=1e-14)
    assert list(logs) == ["nll", "kl", "l2"]
    np.testing.assert_allclose([logs[k] for k in logs], [2.5, 0.4, 3.0], rtol=1e-14)
    assert total.dtype == jnp.float64 and logs["l2"].dtype == jnp.float64
    # float32 terms (and Python numbers, weakly typed) stay float32.
    total32, _ = jaxloss.combine_losses({"a": jnp.float32(1.0), "b": 2.0})
    assert total32.dtype == jnp.float32 and float(total32) == 3.0


def test_combine_losses_under_value_and_grad_with_traced_weights():
    def loss(w, lam):
        terms = {"fit": jnp.sum((w - 1.0) ** 2), "size": jnp.sum(w**2)}
        return jaxloss.combine_losses(terms, weights={"size": lam})

    w = jnp.asarray([0.5, 2.0])
    (total, logs), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(w, 0.3)
    np.testing.assert_allclose(total, 0.25 + 1.0 + 0.3 * 4.25, rtol=1e-14)
    np.testing.assert_allclose(logs["size"], 4.25, rtol=1e-14)
    np.testing.assert_allclose(grad, 2 * (w - 1) + 0.6 * w, rtol=1e-14)


def test_combine_losses_errors():
    with pytest.raises(
        ValueError, match=r"`weights` names terms that are not in `terms`: \['kl'\]"
    ):
        jaxloss.combine_losses({"nll": 1.0}, weights={"kl": 0.1})
    with pytest.raises(ValueError, match=r"`terms\['nll'\]` must be a scalar, got shape \(3,\)"):
        jaxloss.combine_losses({"nll": jnp.ones(3)})
    with pytest.raises(TypeError, match="`terms` must be a mapping"):
        jaxloss.combine_losses([1.0, 2.0])
    with pytest.raises(TypeError, match="`terms` keys must be strings"):
        jaxloss.combine_losses({1: 1.0})


# --------------------------------------------------------------------------------------
# NNX: summed over modules and calls
# --------------------------------------------------------------------------------------


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        y = self.linear(x)
        jlf.sow_aux_loss(self, "activation", jnp.mean(y**2))
        return y


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.first = NnxBlock(rngs)
        self.second = NnxBlock(rngs)

    def __call__(self, x):
        return self.second(self.first(self.first(x)))  # `first` is called twice


def _np_forward(params, x):
    """The three block outputs of NnxNet/LinenNet, in numpy: first, first, second."""
    (w1, b1), (w2, b2) = params
    y1 = x @ w1 + b1
    y2 = y1 @ w1 + b1
    return y1, y2, y2 @ w2 + b2


def _nnx_params(model):
    return [
        (np.asarray(m.linear.kernel[...]), np.asarray(m.linear.bias[...]))
        for m in (model.first, model.second)
    ]


def test_nnx_aux_losses_are_summed_over_layers_and_calls():
    model = NnxNet(nnx.Rngs(0))
    y, losses = jlf.capture_aux_losses(model)(X)
    y1, y2, y3 = _np_forward(_nnx_params(model), np.asarray(X))
    np.testing.assert_allclose(y, y3, rtol=1e-12)
    assert list(losses) == ["activation"]
    expected = np.mean(y1**2) + np.mean(y2**2) + np.mean(y3**2)
    np.testing.assert_allclose(losses["activation"], expected, rtol=1e-12)

    _, by_path = jlf.capture_aux_losses(model, by="path")(X)
    assert list(by_path) == ["first/activation", "second/activation"]
    np.testing.assert_allclose(by_path["first/activation"], np.mean(y1**2) + np.mean(y2**2))
    np.testing.assert_allclose(by_path["second/activation"], np.mean(y3**2))


def test_nnx_aux_losses_with_plain_function_and_gradient():
    model = NnxNet(nnx.Rngs(1))

    def loss(model, x):
        _, losses = jlf.capture_aux_losses(lambda m, x: m(x))(model, x)
        return losses["activation"]

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model, X)

    def reference(params, x):  # the same three terms in plain jnp
        (w1, b1), (w2, b2) = params
        y1 = x @ w1 + b1
        y2 = y1 @ w1 + b1
        y3 = y2 @ w2 + b2
        return jnp.mean(y1**2) + jnp.mean(y2**2) + jnp.mean(y3**2)

    params = [tuple(jnp.asarray(a) for a in p) for p in _nnx_params(model)]
    ref_value, ref_grads = jax.value_and_grad(reference)(params, X)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grads["first"]["linear"]["kernel"][...], ref_grads[0][0], rtol=1e-10)
    np.testing.assert_allclose(grads["second"]["linear"]["bias"][...], ref_grads[1][1], rtol=1e-10)


def test_nnx_outside_capture_records_nothing_and_does_not_warn():
    model = NnxNet(nnx.Rngs(0))
    before = nnx.state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(X)
        assert jlf.sow_aux_loss(model.first, "activation", jnp.ones(())) is False
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(before)
    assert not any(isinstance(v, jlf.AuxLoss) for _, v in nnx.iter_graph(model))
    recorded, state = nnx.capture(
        lambda m: jlf.sow_aux_loss(m, "activation", jnp.ones(())), jlf.AuxLoss
    )(model.first)
    assert recorded is True and jlf.sum_aux_losses(state) == {"activation": 1.0}
    # A capture of other variable types does not collect the loss terms either.
    _, intermediates = nnx.capture(model, nnx.Cache)(X)
    assert not jax.tree.leaves(intermediates)


def test_sow_aux_loss_errors():
    model = NnxNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match="must be a scalar, got shape \\(2,\\)"):
        jlf.sow_aux_loss(model, "x", jnp.ones(2))
    with pytest.raises(TypeError, match="`name` must be a string"):
        jlf.sow_aux_loss(model, 3, jnp.ones(()))
    with pytest.raises(TypeError, match="must be a Flax NNX or Linen module"):
        jlf.sow_aux_loss(object(), "x", jnp.ones(()))
    with pytest.raises(ValueError, match='`by` must be "name" or "path"'):
        jlf.sum_aux_losses({}, by="module")
    with pytest.raises(ValueError, match="pass the collection itself"):
        jlf.sum_aux_losses({"aux_loss": {}, "params": {}})


# --------------------------------------------------------------------------------------
# Linen: sown into the "aux_loss" collection
# --------------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Dense(3)(x)
        jlf.sow_aux_loss(self, "activation", jnp.mean(y**2))
        return y


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        first, second = LinenBlock(), LinenBlock()
        return second(first(first(x)))  # `first` is called twice


def test_linen_aux_losses_are_summed_over_layers_and_calls():
    model = LinenNet()
    variables = model.init(jax.random.key(0), X)
    # Nothing is sown during init, so init's variables hold no terms.
    assert set(variables) == {"params"}
    p = variables["params"]
    params = [
        (np.asarray(p[b]["Dense_0"]["kernel"]), np.asarray(p[b]["Dense_0"]["bias"]))
        for b in ("LinenBlock_0", "LinenBlock_1")
    ]
    y, mutated = model.apply(variables, X, mutable=[jlf.AUX_LOSS_COLLECTION])
    y1, y2, y3 = _np_forward(params, np.asarray(X))
    np.testing.assert_allclose(y, y3, rtol=1e-12)
    collection = mutated[jlf.AUX_LOSS_COLLECTION]
    assert len(collection["LinenBlock_0"]["activation"]) == 2  # one value per call
    losses = jlf.sum_aux_losses(collection)
    expected = np.mean(y1**2) + np.mean(y2**2) + np.mean(y3**2)
    np.testing.assert_allclose(losses["activation"], expected, rtol=1e-12)
    by_path = jlf.sum_aux_losses(collection, by="path")
    np.testing.assert_allclose(by_path["LinenBlock_1/activation"], np.mean(y3**2), rtol=1e-12)
    # Not mutable: nothing is recorded, the output is the same.
    np.testing.assert_allclose(model.apply(variables, X), y, rtol=0)


class LinenAttention(nn.Module):
    @nn.compact
    def __call__(self, x):
        q, k = nn.Dense(DIM, name="query")(x), nn.Dense(DIM, name="key")(x)
        log_attention = jax.nn.log_softmax(q @ jnp.swapaxes(k, -1, -2) / math.sqrt(DIM), -1)
        jlf.sow_aux_loss(self, "attention_kl", _kl_rows(jnp.asarray(TARGET), log_attention))
        return jnp.exp(log_attention) @ nn.Dense(DIM, name="value")(x)


def test_linen_init_variables_passed_whole_to_apply_give_the_apply_time_value():
    """`apply` with the whole `variables` from `init` used to add the
    terms sown during init (6.28 instead of 2.40 in the reported attention model); now
    nothing is sown while initializing, and the value is the apply-time one."""
    model = LinenAttention()
    x_init = jnp.asarray(RNG.normal(size=(BATCH, SEQ, DIM)))
    x = jnp.asarray(RNG.normal(size=(BATCH, SEQ, DIM)))
    variables = model.init(jax.random.key(1), x_init)
    assert jlf.AUX_LOSS_COLLECTION not in variables
    _, whole = model.apply(variables, x, mutable=[jlf.AUX_LOSS_COLLECTION])
    _, params_only = model.apply(
        {"params": variables["params"]}, x, mutable=[jlf.AUX_LOSS_COLLECTION]
    )
    kl_whole = jlf.sum_aux_losses(whole[jlf.AUX_LOSS_COLLECTION])["attention_kl"]
    kl_params = jlf.sum_aux_losses(params_only[jlf.AUX_LOSS_COLLECTION])["attention_kl"]
    assert float(kl_params) > 0
    np.testing.assert_allclose(kl_whole, kl_params, rtol=0)
    # An independent float64 value of the apply-time term, from the parameters.
    p = {
        k: (np.asarray(v["kernel"]), np.asarray(v["bias"])) for k, v in variables["params"].items()
    }
    xn = np.asarray(x)
    q, k = (xn @ p[n][0] + p[n][1] for n in ("query", "key"))
    logits = q @ np.swapaxes(k, -1, -2) / math.sqrt(DIM)
    log_a = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_a -= logits.max(-1, keepdims=True)
    expected = np.mean(np.sum(TARGET * (np.log(TARGET) - log_a), axis=-1))
    np.testing.assert_allclose(kl_whole, expected, rtol=1e-10)


# --------------------------------------------------------------------------------------
# The seed's example: an attention map pushed toward a target by a KL auxiliary term
# --------------------------------------------------------------------------------------

SEQ, FEATURES, BATCH = 5, 3, 16
DIM = SEQ + FEATURES
# Target map: each query attends mostly (0.8) to the previous position, the remaining
# 0.2 spread uniformly, so every entry is positive and log(target) is finite.
TARGET = 0.8 * np.roll(np.eye(SEQ), -1, axis=1) + 0.2 / SEQ


def _kl_rows(p, log_q):
    """KL(p ‖ q) of each attention row to its target row, averaged over rows and batch."""
    return jaxloss.kl_divergence_from_logits(jnp.log(p), log_q, reduction="mean")


class Attention(nnx.Module):
    def __init__(self, rngs):
        self.query = nnx.Linear(DIM, DIM, rngs=rngs)
        self.key = nnx.Linear(DIM, DIM, rngs=rngs)
        self.value = nnx.Linear(DIM, DIM, rngs=rngs)

    def __call__(self, x):
        logits = self.query(x) @ jnp.swapaxes(self.key(x), -1, -2) / math.sqrt(DIM)
        log_attention = jax.nn.log_softmax(logits, axis=-1)
        jlf.sow_aux_loss(self, "attention_kl", _kl_rows(jnp.asarray(TARGET), log_attention))
        return jnp.exp(log_attention) @ self.value(x)


class AttentionModel(nnx.Module):
    def __init__(self, rngs):
        self.attention = Attention(rngs)
        self.head = nnx.Linear(DIM, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.mean(self.head(self.attention(x))[..., 0], axis=-1)


@nnx.jit
def _attention_train_step(model, optimizer, x, y, kl_weight):
    def loss(model):
        prediction, aux = jlf.capture_aux_losses(model)(x)
        task = jnp.mean((prediction - y) ** 2)
        return jaxloss.combine_losses({"task": task, **aux}, weights={"attention_kl": kl_weight})

    (_, logs), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    optimizer.update(model, grads)
    return logs


def test_kl_auxiliary_term_pulls_the_attention_map_to_the_target():
    rng = np.random.default_rng(3)
    positions = np.broadcast_to(np.eye(SEQ), (BATCH, SEQ, SEQ))  # so attention can use them
    x = jnp.asarray(np.concatenate([positions, rng.normal(size=(BATCH, SEQ, FEATURES))], -1))
    y = jnp.asarray(rng.normal(size=BATCH))
    final = {}
    for kl_weight in (0.0, 1.0):
        model = AttentionModel(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
        for _ in range(150):
            logs = _attention_train_step(model, optimizer, x, y, jnp.asarray(kl_weight))
        final[kl_weight] = float(logs["attention_kl"])
    initial = float(np.sum(TARGET * np.log(TARGET * SEQ), axis=-1).mean())  # vs uniform
    assert final[0.0] > 0.5 * initial, final  # without the term the map stays far away
    assert final[1.0] < 0.05 * final[0.0], final
    assert final[1.0] < 0.1 * initial, final
