"""`jaxloss.transforms`: the weight-decay equivalences, proximal steps against numpy ISTA
and scikit-learn, schedules, optax.inject_hyperparams and flax.nnx.Optimizer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.linear_model import Lasso

import jaxloss
from jaxloss import transforms as T

RNG = np.random.default_rng(0)
PARAMS = {
    "dense": {
        "kernel": jnp.asarray(RNG.normal(size=(3, 4))),
        "bias": jnp.asarray(RNG.normal(size=4)),
    },
    "embed": jnp.asarray(RNG.normal(size=(5, 3))),
}
GRADS = jax.tree.map(lambda x: jnp.asarray(RNG.normal(size=x.shape)), PARAMS)


def _apply(tx, grads, params):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def _assert_trees(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


# --------------------------------------------------------------------------------------
# add_penalty_gradient and the seed's weight decay
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_l2_penalty_gradient_is_optax_add_decayed_weights(dtype):
    params, grads = (jax.tree.map(lambda x: x.astype(dtype), t) for t in (PARAMS, GRADS))
    ours = _apply(T.add_penalty_gradient(jaxloss.l2_penalty, 0.1), grads, params)
    _assert_trees(ours, _apply(optax.add_decayed_weights(0.1), grads, params), rtol=0, atol=0)
    ours = _apply(
        T.add_penalty_gradient(jaxloss.l2_penalty, 0.1, mask=jaxloss.weight_matrix_mask),
        grads,
        params,
    )
    optax_mask = functools.partial(jax.tree.map, lambda x: x.ndim >= 2)
    theirs = _apply(optax.add_decayed_weights(0.1, mask=optax_mask), grads, params)
    _assert_trees(ours, theirs, rtol=0, atol=0)


X = RNG.normal(size=(20, 3))
Y = RNG.normal(size=(20, 4))


def _mse(params, x=X, y=Y):
    pred = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    return 0.5 * jnp.mean((pred - y) ** 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_one_sgd_step_is_the_seeds_weight_decay_update(dtype):
    """w_new = (1 − ηα)·w − η∇ℒ, and = optax.sgd on the penalized loss ℒ + α·½‖w‖²."""
    eta, alpha = 0.3, 0.05
    params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
    tx = optax.chain(T.add_penalty_gradient(jaxloss.l2_penalty, alpha), optax.sgd(eta))
    grads = jax.grad(_mse)(params)
    new = optax.apply_updates(params, _apply(tx, grads, params))

    # numpy float64: ∇ℒ of the least-squares term written out.
    w, b = (np.asarray(PARAMS["dense"][k], np.float64) for k in ("kernel", "bias"))
    residual = X @ w + b - Y
    grad_w, grad_b = X.T @ residual / residual.size, residual.sum(0) / residual.size
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == jnp.float32 else {"rtol": 1e-13, "atol": 1e-14}
    np.testing.assert_allclose(new["dense"]["kernel"], (1 - eta * alpha) * w - eta * grad_w, **tol)
    np.testing.assert_allclose(new["dense"]["bias"], (1 - eta * alpha) * b - eta * grad_b, **tol)

    objective = jaxloss.penalized(_mse, alpha=alpha)
    via_loss = optax.apply_updates(
        params, _apply(optax.sgd(eta), jax.grad(objective)(params), params)
    )
    _assert_trees(new, via_loss, **tol)


def test_add_penalty_gradient_of_group_lasso_and_alpha_schedule():
    penalty = functools.partial(jaxloss.group_lasso_penalty, group_axis=-1)
    schedule = lambda count: 0.5 / (1.0 + count)  # noqa: E731
    tx = T.add_penalty_gradient(penalty, schedule, mask=jaxloss.path_mask("kernel"))
    state = tx.init(PARAMS)
    kernel = np.asarray(PARAMS["dense"]["kernel"])
    norms = np.sqrt((kernel**2).sum(0))
    for step in range(2):
        updates, state = tx.update(GRADS, state, PARAMS)
        expected = (
            np.asarray(GRADS["dense"]["kernel"]) + schedule(step) * np.sqrt(3) * kernel / norms
        )
        np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-12)
        np.testing.assert_array_equal(updates["dense"]["bias"], GRADS["dense"]["bias"])
        np.testing.assert_array_equal(updates["embed"], GRADS["embed"])


# --------------------------------------------------------------------------------------
# Proximal steps: ISTA on a sparse linear regression
# --------------------------------------------------------------------------------------

N_SAMPLES, N_FEATURES = 60, 8
XS = RNG.normal(size=(N_SAMPLES, N_FEATURES))
W_TRUE = np.array([1.5, 0.0, -2.0, 0.0, 0.0, 0.8, 0.0, 0.0])
YS = XS @ W_TRUE + 0.05 * RNG.normal(size=N_SAMPLES)
LIPSCHITZ = np.linalg.eigvalsh(XS.T @ XS / N_SAMPLES).max()
ETA, ALPHA = 1.0 / LIPSCHITZ, 0.1


def _lasso_data_term(w):
    return 0.5 * jnp.mean((XS @ w - YS) ** 2)


def _np_ista(steps, eta, alpha):
    w = np.zeros(N_FEATURES)
    for t in range(steps):
        z = w - eta(t) * XS.T @ (XS @ w - YS) / N_SAMPLES
        w = np.sign(z) * np.maximum(np.abs(z) - eta(t) * alpha, 0.0)
    return w


def _run(tx, steps, params, loss=_lasso_data_term):
    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return params


@jax.jit
def _ista_runs():
    w0 = jnp.zeros(N_FEATURES)
    prox = optax.chain(optax.sgd(ETA), T.proximal_l1(ALPHA, ETA))
    subgradient = optax.chain(T.add_penalty_gradient(jaxloss.l1_penalty, ALPHA), optax.sgd(ETA))
    return _run(prox, 7, w0), _run(prox, 400, w0), _run(subgradient, 400, w0)


def test_proximal_l1_is_ista_and_converges_to_the_lasso():
    early, converged, subgradient = _ista_runs()
    # Step for step the reference proximal-gradient iteration, exact zeros included.
    reference = _np_ista(7, lambda t: ETA, ALPHA)
    np.testing.assert_allclose(early, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(early) == 0, reference == 0)
    # Converged: scikit-learn's Lasso minimizes the same 1/(2n)‖y − Xw‖² + α‖w‖₁.
    lasso = Lasso(alpha=ALPHA, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(XS, YS)
    np.testing.assert_allclose(converged, lasso.coef_, atol=1e-8)
    # Exact zeros exactly where the true weights are zero; the subgradient method on the
    # same objective leaves none of them exactly zero.
    np.testing.assert_array_equal(np.asarray(converged) == 0, W_TRUE == 0)
    assert not np.any(np.asarray(subgradient) == 0)
    # (it only hovers around the solution, within a few ηα ≈ 0.05)
    np.testing.assert_allclose(subgradient, lasso.coef_, atol=0.15)


def test_proximal_l1_with_a_learning_rate_schedule_and_inject_hyperparams():
    def schedule(count):
        return ETA * 0.9**count

    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    plain = optax.chain(sgd, T.proximal_l1(ALPHA, schedule))
    injected = optax.chain(
        sgd, optax.inject_hyperparams(T.proximal_l1)(alpha=ALPHA, learning_rate=schedule)
    )
    run = jax.jit(lambda: (_run(plain, 6, jnp.zeros(N_FEATURES)), _run(injected, 6, jnp.zeros(8))))
    a, b = run()
    reference = _np_ista(6, lambda t: ETA * 0.9**t, ALPHA)
    np.testing.assert_allclose(a, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b, reference, rtol=1e-12, atol=1e-14)


def test_inject_hyperparams_changes_alpha_of_add_penalty_gradient():
    tx = optax.inject_hyperparams(T.add_penalty_gradient, static_args=("penalty", "mask"))(
        penalty=jaxloss.l2_penalty, alpha=0.1, mask=jaxloss.weight_matrix_mask
    )
    state = tx.init(PARAMS)
    state.hyperparams["alpha"] = jnp.asarray(0.7)
    updates, _ = tx.update(GRADS, state, PARAMS)
    expected = GRADS["dense"]["kernel"] + 0.7 * PARAMS["dense"]["kernel"]
    np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-12)
    np.testing.assert_array_equal(updates["dense"]["bias"], GRADS["dense"]["bias"])


# Multi-output regression whose outputs 1 and 3 are pure noise: with groups along the
# output axis (each output unit's incoming weights), the group lasso removes those units.
K_OUT = 4
W_GROUPS = RNG.normal(size=(N_FEATURES, K_OUT)) * np.array([1.0, 0.0, 1.0, 0.0])
YG = XS @ W_GROUPS + 0.05 * RNG.normal(size=(N_SAMPLES, K_OUT))
ALPHA_G = 0.2


def _group_data_term(params):
    return 0.5 * jnp.mean(jnp.sum((XS @ params["kernel"] + params["bias"] - YG) ** 2, axis=-1))


def _np_group_ista(steps):
    w, b = np.zeros((N_FEATURES, K_OUT)), np.zeros(K_OUT)
    for _ in range(steps):
        residual = XS @ w + b - YG
        zw = w - ETA * XS.T @ residual / N_SAMPLES
        b = b - ETA * residual.mean(0)  # the bias is left out by the mask
        norms = np.sqrt((zw**2).sum(0))
        t = ETA * ALPHA_G * np.sqrt(N_FEATURES)
        w = zw * np.where(norms > t, 1 - t / np.where(norms > 0, norms, 1), 0.0)
    return w, b


def test_proximal_group_lasso_is_block_ista_and_removes_units():
    tx = optax.chain(
        optax.sgd(ETA),
        T.proximal_group_lasso(ALPHA_G, ETA, group_axis=-1, mask=jaxloss.path_mask("kernel")),
    )
    params = {"kernel": jnp.zeros((N_FEATURES, K_OUT)), "bias": jnp.zeros(K_OUT)}
    run = jax.jit(lambda p: (_run(tx, 5, p, _group_data_term), _run(tx, 300, p, _group_data_term)))
    early, converged = run(params)
    w, b = _np_group_ista(5)
    np.testing.assert_allclose(early["kernel"], w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(early["bias"], b, rtol=1e-12, atol=1e-14)
    w, b = _np_group_ista(300)
    np.testing.assert_allclose(converged["kernel"], w, rtol=1e-9, atol=1e-12)
    removed = np.all(np.asarray(converged["kernel"]) == 0, axis=0)
    np.testing.assert_array_equal(removed, [False, True, False, True])
    assert np.all(np.asarray(converged["kernel"])[:, ~removed] != 0)


def test_proximal_group_lasso_step_on_a_three_axis_leaf():
    """One step on a conv-like kernel with groups along axis 0, against numpy."""
    z = RNG.normal(size=(3, 2, 5)) * np.array([1.0, 0.05, 2.0])[:, None, None]
    prox = T.proximal_group_lasso(0.4, 0.5, group_axis=0)
    params = jnp.zeros_like(z)
    new = optax.apply_updates(params, _apply(prox, jnp.asarray(z), params))
    norms = np.sqrt((z**2).reshape(3, -1).sum(1))
    t = 0.4 * 0.5 * np.sqrt(10)
    expected = z * np.maximum(1 - t / norms, 0)[:, None, None]
    np.testing.assert_allclose(new, expected, rtol=1e-12)
    assert np.all(np.asarray(new)[1] == 0)


# --------------------------------------------------------------------------------------
# flax.nnx.Optimizer
# --------------------------------------------------------------------------------------


def test_transforms_inside_nnx_optimizer_match_plain_optax():
    model = nnx.Linear(N_FEATURES, K_OUT, rngs=nnx.Rngs(0))
    # A pytree mask built from the Variable-wrapped state; nnx.Optimizer hands optax the
    # pure state, which the mask must match by path.
    kernel_only = jax.tree.map(lambda x: x.ndim == 2, nnx.state(model, nnx.Param))
    prox = optax.inject_hyperparams(T.proximal_group_lasso, static_args=("group_axis",))
    tx = optax.chain(
        T.add_penalty_gradient(jaxloss.l2_penalty, 0.01, mask=jaxloss.weight_matrix_mask),
        optax.sgd(ETA),
        prox(alpha=ALPHA_G, learning_rate=ETA, group_axis=-1, mask=kernel_only),
    )
    start = {k: jnp.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss(model):
            return _group_data_term({"kernel": model.kernel[...], "bias": model.bias[...]})

        optimizer.update(model, nnx.grad(loss)(model))

    for _ in range(3):
        train_step(model, optimizer)
    expected = jax.jit(lambda p: _run(tx, 3, p, _group_data_term))(start)
    np.testing.assert_allclose(model.kernel[...], expected["kernel"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.bias[...], expected["bias"], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_transform_arguments():
    with pytest.raises(TypeError, match="`penalty` must be callable"):
        T.add_penalty_gradient("l2", 0.1)
    with pytest.raises(ValueError, match="`alpha` must be a non-negative finite number"):
        T.add_penalty_gradient(jaxloss.l2_penalty, -0.1)
    with pytest.raises(ValueError, match="`learning_rate` must be a positive finite number"):
        T.proximal_l1(0.1, 0.0)
    with pytest.raises(TypeError, match="`alpha` is required"):
        T.proximal_l1(None, 0.1)
    with pytest.raises(TypeError, match="`group_axis` must be a Python int"):
        T.proximal_group_lasso(0.1, 0.1, group_axis=(0, 1))
    for tx in (T.add_penalty_gradient(jaxloss.l1_penalty, 0.1), T.proximal_l1(0.1, 0.1)):
        with pytest.raises(ValueError, match="needs the current parameters"):
            tx.update(GRADS, tx.init(PARAMS))
        with pytest.raises(ValueError, match="`updates` has 2 leaves but `params` has 3"):
            tx.update(GRADS["dense"], tx.init(PARAMS), PARAMS)
    unstatic = optax.inject_hyperparams(T.proximal_group_lasso)(0.1, 0.1, group_axis=-1)
    with pytest.raises(TypeError, match="static_args=\\('group_axis',\\)"):
        unstatic.update(GRADS, unstatic.init(PARAMS), PARAMS)
    prox = T.proximal_group_lasso(0.1, 0.1, group_axis=1)
    with pytest.raises(ValueError, match="`group_axis`=1 is out of range for the parameter 'w'"):
        prox.update({"w": jnp.ones(3)}, prox.init(None), {"w": jnp.ones(3)})
