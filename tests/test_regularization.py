"""Regularization penalties, masks and `penalized`: values and gradients against numpy,
masks on real NNX and Linen parameter trees, the seed's identities, bad input."""

from __future__ import annotations

import functools
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import ElasticNet

import jaxloss
from jaxloss import _compat

RNG = np.random.default_rng(0)
PARAMS = {
    "dense": {
        "kernel": jnp.asarray(RNG.normal(size=(3, 4))),
        "bias": jnp.asarray(RNG.normal(size=4)),
    },
    "conv": [jnp.asarray(RNG.normal(size=(2, 3, 4)))],
}
NP = {
    "dense/kernel": np.asarray(PARAMS["dense"]["kernel"]),
    "dense/bias": np.asarray(PARAMS["dense"]["bias"]),
    "conv/0": np.asarray(PARAMS["conv"][0]),
}


class NnxModel(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.LayerNorm(4, rngs=rngs)])
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.conv = nnx.Conv(4, 2, kernel_size=(3,), rngs=rngs)
        self.head = nnx.Linear(2, 1, use_bias=False, rngs=rngs)


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(10, 4)(ids)
        x = nn.Dense(4)(x)
        x = nn.LayerNorm()(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Dense(2)(x)


# The leaves each mask must select, written out by hand for the models above.
NNX_MATRICES = {
    "bn/bias": False,
    "bn/scale": False,
    "conv/bias": False,
    "conv/kernel": True,
    "embed/embedding": True,
    "head/kernel": True,
    "layers/0/bias": False,
    "layers/0/kernel": True,
    "layers/1/bias": False,
    "layers/1/scale": False,
}
LINEN_MATRICES = {
    "BatchNorm_0/bias": False,
    "BatchNorm_0/scale": False,
    "Dense_0/bias": False,
    "Dense_0/kernel": True,
    "Dense_1/bias": False,
    "Dense_1/kernel": True,
    "Embed_0/embedding": True,
    "LayerNorm_0/bias": False,
    "LayerNorm_0/scale": False,
}


@pytest.fixture(scope="module")
def nnx_model():
    return NnxModel(nnx.Rngs(0))


@pytest.fixture(scope="module")
def linen_variables():
    return LinenModel().init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def _np_l2(arrays):
    return sum(0.5 * float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)


# --------------------------------------------------------------------------------------
# Masks on real parameter trees
# --------------------------------------------------------------------------------------


def test_weight_matrix_mask_on_nnx_module_state_and_pure_state(nnx_model):
    params = nnx.state(nnx_model, nnx.Param)
    assert jaxloss.resolve_mask(params, jaxloss.weight_matrix_mask) == NNX_MATRICES
    assert jaxloss.resolve_mask(nnx_model, jaxloss.weight_matrix_mask) == NNX_MATRICES
    assert (
        jaxloss.resolve_mask(_compat.nnx_as_pure(params), jaxloss.weight_matrix_mask)
        == NNX_MATRICES
    )


def test_nnx_batch_statistics_are_never_penalized(nnx_model):
    everything = jaxloss.resolve_mask(nnx.state(nnx_model))
    assert everything["bn/mean"] is False and everything["bn/var"] is False
    assert all(v for k, v in everything.items() if k not in ("bn/mean", "bn/var"))
    # ... so the penalty of the whole state is that of its parameters (BatchNorm's running
    # variance starts at 1 and would otherwise add 2).
    np.testing.assert_allclose(
        jaxloss.l2_penalty(nnx.state(nnx_model)),
        _np_l2(jax.tree.leaves(nnx.state(nnx_model, nnx.Param))),
        rtol=1e-6,
    )


def test_weight_matrix_mask_on_linen_params(linen_variables):
    params = linen_variables["params"]
    assert jaxloss.resolve_mask(params, jaxloss.weight_matrix_mask) == LINEN_MATRICES
    expected = _np_l2([params[k]["kernel"] for k in ("Dense_0", "Dense_1")])
    expected += _np_l2([params["Embed_0"]["embedding"]])
    np.testing.assert_allclose(
        jaxloss.l2_penalty(params, mask=jaxloss.weight_matrix_mask), expected, rtol=1e-6
    )


def test_path_mask_selects_by_regular_expression(nnx_model, linen_variables):
    got = jaxloss.resolve_mask(nnx_model, jaxloss.path_mask(r"^layers/\d+/kernel$"))
    assert [k for k, v in got.items() if v] == ["layers/0/kernel"]
    got = jaxloss.resolve_mask(linen_variables["params"], jaxloss.path_mask("Dense"))
    assert [k for k, v in got.items() if v] == [
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
        "Dense_1/kernel",
    ]
    got = jaxloss.resolve_mask(linen_variables["params"], jaxloss.path_mask("Norm", exclude=True))
    assert [k for k, v in got.items() if not v] == [
        "BatchNorm_0/bias",
        "BatchNorm_0/scale",
        "LayerNorm_0/bias",
        "LayerNorm_0/scale",
    ]


def test_tree_of_bools_and_prefix_masks(nnx_model, linen_variables):
    params = nnx.state(nnx_model, nnx.Param)
    tree = jax.tree.map(lambda x: x.ndim > 1, params)  # keeps the nnx.Param wrappers
    assert jaxloss.resolve_mask(params, tree) == NNX_MATRICES
    # A mask built from the Variable-wrapped state applies to the pure state (what
    # nnx.Optimizer hands to optax) as well.
    assert jaxloss.resolve_mask(_compat.nnx_as_pure(params), tree) == NNX_MATRICES
    linen = linen_variables["params"]
    prefix = {k: k.startswith("Dense") for k in linen}
    got = jaxloss.resolve_mask(linen, prefix)
    assert got == {k: k.startswith("Dense") for k in LINEN_MATRICES}
    assert set(jaxloss.resolve_mask(linen, True).values()) == {True}


def test_mask_errors():
    with pytest.raises(ValueError, match="no entry for the parameter 'dense/bias'"):
        jaxloss.l2_penalty(PARAMS, mask={"dense": {"kernel": True}, "conv": True})
    with pytest.raises(TypeError, match="`mask` entry for 'conv/0' must be a Python bool"):
        jaxloss.l2_penalty(PARAMS, mask=lambda path, leaf: leaf)
    with pytest.raises(TypeError, match="`pattern` must be a regular expression"):
        jaxloss.path_mask(3)

    @jax.jit
    def traced_mask(flag):
        return jaxloss.l2_penalty(PARAMS, mask={"dense": flag, "conv": True})

    with pytest.raises(TypeError, match="traced array; masks are static"):
        traced_mask(jnp.array(True))


# --------------------------------------------------------------------------------------
# Values and gradients against numpy
# --------------------------------------------------------------------------------------


def _leaf(tree, path):
    first, second = path.split("/")
    return tree[first][int(second) if second.isdigit() else second]


def test_gradients_match_closed_forms_in_float64():
    """∇½‖w‖² = w, ∇‖w‖₁ = sign w, elastic net mixes them, group lasso √|g|·w_g/‖w_g‖."""
    grads = jax.jit(
        lambda p: {
            "l2": jax.grad(jaxloss.l2_penalty)(p),
            "l1": jax.grad(jaxloss.l1_penalty)(p),
            "en": jax.grad(functools.partial(jaxloss.elastic_net_penalty, l1_ratio=0.3))(p),
            "gl": jax.grad(functools.partial(jaxloss.group_lasso_penalty, group_axis=-1))(p),
        }
    )(PARAMS)
    for path, x in NP.items():
        pick = functools.partial(_leaf, path=path)
        np.testing.assert_allclose(pick(grads["l2"]), x, rtol=1e-14)
        np.testing.assert_allclose(pick(grads["l1"]), np.sign(x), rtol=1e-14)
        np.testing.assert_allclose(pick(grads["en"]), 0.3 * np.sign(x) + 0.7 * x, rtol=1e-14)
        g = np.moveaxis(x, -1, 0)
        norms = np.sqrt((g**2).reshape(g.shape[0], -1).sum(1))
        size = x.size // x.shape[-1]
        expected = np.sqrt(size) * x / norms  # broadcasts along the last (group) axis
        np.testing.assert_allclose(pick(grads["gl"]), expected, rtol=1e-12)


def test_group_lasso_gradient_at_exactly_zero_group_is_zero_and_finite():
    kernel = jnp.array([[3.0, 0.0, 1.0], [4.0, 0.0, -1.0]])
    f = functools.partial(jaxloss.group_lasso_penalty, group_axis=-1)
    np.testing.assert_allclose(f({"k": kernel}), np.sqrt(2) * (5.0 + 0.0 + np.sqrt(2)))
    g = jax.grad(f)({"k": kernel})["k"]
    np.testing.assert_array_equal(g[:, 1], 0.0)
    np.testing.assert_allclose(g[:, 0], np.sqrt(2) * np.array([0.6, 0.8]), rtol=1e-14)
    hessian = jax.jit(jax.hessian(lambda k: f({"k": k})))(kernel)
    assert np.isfinite(np.asarray(hessian)).all()
    # Forward mode too, and an entirely zero parameter tree.
    tangent = jax.jit(lambda k, t: jax.jvp(lambda k: f({"k": k}), (k,), (t,))[1])(
        jnp.zeros((2, 3)), jnp.ones((2, 3))
    )
    assert float(tangent) == 0.0


def test_nan_in_a_penalized_leaf_gives_nan():
    bad = {"k": jnp.array([[1.0, jnp.nan]])}
    for fn in (
        jaxloss.l2_penalty,
        jaxloss.l1_penalty,
        functools.partial(jaxloss.group_lasso_penalty, group_axis=0),
        functools.partial(jaxloss.group_lasso_penalty, group_axis=-1),
    ):
        assert np.isnan(float(fn(bad)))
    # ... and only where it is penalized.
    assert float(jaxloss.l2_penalty({**bad, "w": jnp.ones(2)}, mask=jaxloss.path_mask("w"))) == 1.0


def test_dtypes_float64_bf16_and_nothing_selected():
    assert jaxloss.l2_penalty(PARAMS).dtype == jnp.float64
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    out = jaxloss.group_lasso_penalty(low, group_axis=-1)
    assert out.dtype == jnp.float32
    mixed = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)}
    assert jaxloss.l1_penalty(mixed).dtype == jnp.float64
    assert jaxloss.l1_penalty(mixed, mask=jaxloss.path_mask("a")).dtype == jnp.float32
    for fn in (jaxloss.l2_penalty, jaxloss.l1_penalty, jaxloss.elastic_net_penalty):
        zero = fn(PARAMS, mask=jax.tree.map(lambda leaf: False, PARAMS))
        assert zero.dtype == jnp.float32 and float(zero) == 0.0
    ints = {"step": jnp.array(3), "key": jax.random.key(0), "w": jnp.array([2.0])}
    assert float(jaxloss.l2_penalty(ints)) == 2.0  # integer and key leaves are skipped
    assert float(jaxloss.l1_penalty({"a": -1.5, "b": [2.0]})) == 3.5  # Python floats count


@given(c=st.floats(-20.0, 20.0))
def test_homogeneity(c):
    """Ω(cW): |c|·Ω for L1 and group lasso, c²·Ω for L2."""
    scaled = jax.tree.map(lambda x: c * x, PARAMS)
    gl = functools.partial(jaxloss.group_lasso_penalty, group_axis=-2, mask=jaxloss.path_mask("k"))
    for fn, power in ((jaxloss.l1_penalty, 1), (gl, 1), (jaxloss.l2_penalty, 2)):
        np.testing.assert_allclose(fn(scaled), abs(c) ** power * fn(PARAMS), rtol=1e-12)


def test_elastic_net_endpoints_and_mixture():
    en = jaxloss.elastic_net_penalty
    np.testing.assert_allclose(en(PARAMS, l1_ratio=1.0), jaxloss.l1_penalty(PARAMS), rtol=1e-14)
    np.testing.assert_allclose(en(PARAMS, l1_ratio=0.0), jaxloss.l2_penalty(PARAMS), rtol=1e-14)
    expected = sum(0.25 * np.abs(x).sum() + 0.75 * 0.5 * (x**2).sum() for x in NP.values())
    np.testing.assert_allclose(en(PARAMS, l1_ratio=0.25), expected, rtol=1e-12)


def test_elastic_net_is_scikit_learns_convention():
    """At scikit-learn's ElasticNet solution, 1/(2n)‖y − Xw‖² + α·Ω(w) is stationary:
    zero gradient on the non-zero weights, |∇ smooth part| ≤ α·ρ on the zero ones."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 8))
    w_true = np.array([2.0, -1.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5])
    y = x @ w_true + 0.1 * rng.normal(size=80)
    alpha, rho = 0.2, 0.6
    model = ElasticNet(alpha=alpha, l1_ratio=rho, fit_intercept=False, tol=1e-12, max_iter=100_000)
    w = model.fit(x, y).coef_
    assert (w == 0).any() and (w != 0).any()

    def data_term(w):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    objective = jaxloss.penalized(
        data_term, alpha=alpha, penalty=functools.partial(jaxloss.elastic_net_penalty, l1_ratio=rho)
    )
    grad = np.asarray(jax.grad(objective)(jnp.asarray(w)))
    np.testing.assert_allclose(grad[w != 0], 0.0, atol=1e-8)
    smooth = np.asarray(jax.grad(lambda w: data_term(w) + alpha * (1 - rho) * 0.5 * w @ w)(w))
    assert np.all(np.abs(smooth[w == 0]) <= alpha * rho + 1e-8)


# --------------------------------------------------------------------------------------
# penalized
# --------------------------------------------------------------------------------------

X = jnp.asarray(RNG.normal(size=(7, 3)))
Y = jnp.asarray(RNG.normal(size=(7, 4)))


def _mse(params, x, y):
    pred = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean((pred - y) ** 2)


def test_penalized_adds_alpha_times_penalty_and_its_gradient():
    objective = jaxloss.penalized(_mse, alpha=0.3)
    np.testing.assert_allclose(
        objective(PARAMS, X, Y), _mse(PARAMS, X, Y) + 0.3 * _np_l2(NP.values()), rtol=1e-12
    )
    value, grads = jax.value_and_grad(objective)(PARAMS, X, Y)
    data_grads = jax.grad(_mse)(PARAMS, X, Y)
    expected = jax.tree.map(lambda g, w: g + 0.3 * w, data_grads, PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), grads, expected)
    np.testing.assert_allclose(value, objective(PARAMS, X, Y), rtol=1e-14)
    # Under jit, with alpha traced.
    jitted = jax.jit(lambda a, p: jaxloss.penalized(_mse, alpha=a)(p, X, Y))
    np.testing.assert_allclose(jitted(0.3, PARAMS), objective(PARAMS, X, Y), rtol=1e-12)


def test_penalized_has_aux_argnums_and_mask():
    def with_aux(x, params):
        return _mse(params, x, Y), {"n": x.shape[0]}

    objective = jaxloss.penalized(
        with_aux, alpha=2.0, has_aux=True, argnums=1, mask=jaxloss.weight_matrix_mask
    )
    (value, aux), grads = jax.value_and_grad(objective, argnums=1, has_aux=True)(X, PARAMS)
    assert aux == {"n": 7}
    kernel = np.asarray(PARAMS["dense"]["kernel"])
    conv = np.asarray(PARAMS["conv"][0])
    np.testing.assert_allclose(value, _mse(PARAMS, X, Y) + 2.0 * _np_l2([kernel, conv]), rtol=1e-12)
    data_grads = jax.grad(_mse)(PARAMS, X, Y)
    np.testing.assert_allclose(grads["dense"]["bias"], data_grads["dense"]["bias"], rtol=1e-12)
    np.testing.assert_allclose(grads["conv"][0], 2.0 * conv, rtol=1e-12)


def test_penalized_on_an_nnx_module_under_nnx_grad():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))

    def loss(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    objective = jaxloss.penalized(loss, alpha=0.5, mask=jaxloss.weight_matrix_mask)
    value, grads = nnx.value_and_grad(objective)(model, X, Y)
    base_value, base_grads = nnx.value_and_grad(loss)(model, X, Y)
    kernel = np.asarray(model.kernel[...])
    np.testing.assert_allclose(value, base_value + 0.5 * _np_l2([kernel]), rtol=1e-6)
    np.testing.assert_allclose(
        grads["kernel"][...], base_grads["kernel"][...] + 0.5 * kernel, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(grads["bias"][...], base_grads["bias"][...], rtol=1e-6)


# --------------------------------------------------------------------------------------
# Bad input, eager and under jit
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_bad_penalty_arguments(jit):
    def run(fn, **kw):
        f = functools.partial(fn, **kw)
        return jax.jit(f)(PARAMS) if jit else f(PARAMS)

    with pytest.raises(TypeError, match="`group_axis` must be a Python int"):
        run(jaxloss.group_lasso_penalty, group_axis=1.0)
    with pytest.raises(
        ValueError, match="`group_axis`=2 is out of range for the parameter 'dense/bias'"
    ):
        run(jaxloss.group_lasso_penalty, group_axis=2)
    with pytest.raises(ValueError, match=r"`l1_ratio` must be in \[0.0, 1.0\]"):
        run(jaxloss.elastic_net_penalty, l1_ratio=1.5)


def test_bad_penalized_arguments():
    with pytest.raises(ValueError, match="`alpha` must be a non-negative finite number"):
        jaxloss.penalized(_mse, alpha=-1.0)
    with pytest.raises(TypeError, match="`alpha` is required"):
        jaxloss.penalized(_mse, alpha=None)
    with pytest.raises(TypeError, match="`penalty` must be callable"):
        jaxloss.penalized(_mse, alpha=1.0, penalty="l2")
    with pytest.raises(TypeError, match="`argnums` must be an int"):
        jaxloss.penalized(_mse, alpha=1.0, argnums=(0, 1))
    with pytest.raises(ValueError, match="`argnums`=3 but only 3 positional arguments"):
        jaxloss.penalized(_mse, alpha=1.0, argnums=3)(PARAMS, X, Y)
    with pytest.raises(TypeError, match="did not return a `\\(loss, aux\\)` pair"):
        jaxloss.penalized(_mse, alpha=1.0, has_aux=True)(PARAMS, X, Y)


# --------------------------------------------------------------------------------------
# flax stays optional
# --------------------------------------------------------------------------------------


def test_import_jaxloss_works_without_flax():
    """In a fresh interpreter where `import flax` fails, jaxloss (penalties, masks,
    transforms) works, and only `jaxloss.flax` asks for flax."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoFlax(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "flax" or name.startswith("flax."):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, NoFlax())
        import jax.numpy as jnp, optax, jaxloss

        params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
        assert float(jaxloss.l2_penalty(params, mask=jaxloss.weight_matrix_mask)) == 3.0
        tx = optax.chain(optax.sgd(0.1), jaxloss.transforms.proximal_l1(1.0, 0.1))
        tx.update(params, tx.init(params), params)
        assert not any(m == "flax" or m.startswith("flax.") for m in sys.modules)
        try:
            jaxloss.flax
        except ImportError as err:
            assert "jaxloss[flax]" in str(err), err
        else:
            raise AssertionError("jaxloss.flax imported without flax")
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_callable_mask_that_selects_no_parameter_raises_listing_paths(linen_variables):
    """`path_mask(r"^encodr/")` (a typo) made every penalty silently 0."""
    params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 1))}}
    typo = jaxloss.path_mask(r"^encodr/")
    message = r"path_mask\('\^encodr/'\) selects none of the 2 parameters.*'encoder/kernel'"
    for fn in (
        jaxloss.l2_penalty,
        jaxloss.l1_penalty,
        jaxloss.elastic_net_penalty,
        functools.partial(jaxloss.group_lasso_penalty, group_axis=-1),
    ):
        with pytest.raises(ValueError, match=message):
            fn(params, mask=typo)
        with pytest.raises(ValueError, match=message):
            jax.jit(functools.partial(fn, mask=typo))(params)
    with pytest.raises(ValueError, match=message):
        jaxloss.penalized(lambda p: 0.0, alpha=0.1, mask=typo)(params)
    with pytest.raises(ValueError, match=r"selects none of the .*'params/"):
        jaxloss.l2_penalty(linen_variables, mask=jaxloss.path_mask(r"^params/Dens/"))
    # resolve_mask is the diagnostic: it answers, it does not raise.
    assert jaxloss.resolve_mask(params, typo) == {"encoder/kernel": False, "head/kernel": False}
    assert float(jaxloss.l2_penalty(params, mask=jaxloss.path_mask(r"^encoder/"))) == 2.0
