"""Defects found by a float64 review (issue 10, "Defects confirmed by a float64 review").

Each test names its item; each failed on main at 6aa08ee and passes with the fix. The
references are float64 numpy/scipy (or closed forms), never jaxloss itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss

# --------------------------------------------------------------------------------------
# Item 1: second derivatives of the divergences where p = q
# --------------------------------------------------------------------------------------

P = np.array([0.2, 0.3, 0.5])


def test_kl_hessian_at_p_equal_q():
    """Item 1: ∂²KL/∂p² = diag(1/p) and ∂²KL/∂p∂q = −diag(1/q) at p = q (it was 0)."""
    p = jnp.asarray(P)
    h_pp = jax.hessian(lambda a: jaxloss.kl_divergence(a, p))(p)
    h_qq = jax.hessian(lambda b: jaxloss.kl_divergence(p, b))(p)
    h_pq = jax.jacrev(jax.grad(jaxloss.kl_divergence, 0), 1)(p, p)
    h_qp = jax.jacfwd(jax.grad(jaxloss.kl_divergence, 1), 0)(p, p)
    np.testing.assert_allclose(h_pp, np.diag(1 / P), rtol=1e-12)
    np.testing.assert_allclose(h_qq, np.diag(1 / P), rtol=1e-12)
    np.testing.assert_allclose(h_pq, -np.diag(1 / P), rtol=1e-12)
    np.testing.assert_allclose(h_qp, -np.diag(1 / P), rtol=1e-12)


def test_kl_hessian_is_fisher_matrix():
    """Item 1: the Hessian of KL(softmax(θ)‖p₀) (and of KL(p₀‖softmax(θ))) at θ₀ is the
    Fisher information of the softmax, diag(p₀) − p₀p₀ᵀ (it came out all zeros)."""
    theta0 = jnp.log(jnp.asarray(P)) + 0.7
    fisher = np.diag(P) - np.outer(P, P)
    p0 = jnp.asarray(P)
    forward = jax.hessian(lambda t: jaxloss.kl_divergence(jax.nn.softmax(t), p0))(theta0)
    reverse = jax.hessian(lambda t: jaxloss.kl_divergence(p0, jax.nn.softmax(t)))(theta0)
    logits = jax.hessian(lambda t: jaxloss.kl_divergence_from_logits(t, theta0))(theta0)
    np.testing.assert_allclose(forward, fisher, atol=1e-12)
    np.testing.assert_allclose(reverse, fisher, atol=1e-12)
    np.testing.assert_allclose(logits, fisher, atol=1e-12)


# --------------------------------------------------------------------------------------
# Item 4: the derivative of |·| at 0 is the zero subgradient
# --------------------------------------------------------------------------------------


def test_abs_derivative_at_zero_is_zero():
    """Item 4: |·| has derivative 0 at 0 in every L1-type loss and penalty (JAX's is 1)."""
    x = jnp.array([0.0, 2.0, -3.0, 0.0])
    expected = np.array([0.0, 1.0, -1.0, 0.0])
    zeros = jnp.zeros(4)
    fns = {
        "absolute_error": lambda w: jaxloss.absolute_error(w, zeros, reduction="sum"),
        "laplace_nll": lambda w: jaxloss.laplace_nll(w, zeros, reduction="sum"),
        "laplace_nll[log_scale]": lambda w: jaxloss.laplace_nll(
            w, zeros, log_scale=jnp.zeros(4), reduction="sum"
        ),
        "l1_penalty": lambda w: jaxloss.l1_penalty({"w": w}),
        "elastic_net_penalty[1]": lambda w: jaxloss.elastic_net_penalty({"w": w}, l1_ratio=1.0),
        "group_lasso_penalty[1-D]": lambda w: jaxloss.group_lasso_penalty({"w": w}, group_axis=-1),
    }
    for name, f in fns.items():
        for mode, grad in (("rev", jax.grad(f)(x)), ("fwd", jax.jacfwd(f)(x))):
            np.testing.assert_array_equal(np.asarray(grad), expected, err_msg=f"{name} {mode}")
    # In the targets of absolute_error too (residual 0 is the same kink).
    g = jax.grad(lambda t: jaxloss.absolute_error(zeros, t, reduction="sum"))(x)
    np.testing.assert_array_equal(np.asarray(g), expected)


def test_add_penalty_gradient_l1_keeps_exact_zeros():
    """Item 4: add_penalty_gradient(l1_penalty) adds 0 at an exact zero weight."""
    params = {"w": jnp.array([0.0, 0.5, -0.5])}
    tx = jaxloss.transforms.add_penalty_gradient(jaxloss.l1_penalty, 0.1)
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [0.0, 0.1, -0.1], rtol=1e-12, atol=0)
