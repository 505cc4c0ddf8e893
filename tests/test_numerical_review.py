"""Defects found by a float64 review (issue 10, "Defects confirmed by a float64 review").

Each test names its item; each failed on main at 6aa08ee and passes with the fix. The
references are float64 numpy/scipy (or closed forms), never jaxloss itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

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
