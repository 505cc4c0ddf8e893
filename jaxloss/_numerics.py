"""Safe numerical primitives shared by every loss family.

A numerical fix is made here once. Constants are Python floats so they stay weakly
typed and never promote a float32 computation to float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

LOG_2 = math.log(2.0)
LOG_PI = math.log(math.pi)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def log_base_factor(base: float | None) -> float:
    """1 / ln(base): multiply a quantity in nats by this to express it in ``base`` units."""
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"`base` must be None (nats) or a positive number, got {base!r}.")
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"`base` must be positive, finite and not 1, got {base!r}.")
    return 1.0 / math.log(base)


def log_cosh(x: jax.Array) -> jax.Array:
    """log(cosh x) without overflow: logaddexp(x, −x) − log 2 (smooth at every x)."""
    return jnp.logaddexp(x, -x) - LOG_2


def scale_and_log_scale(
    scale: jax.Array | None, log_scale: jax.Array | None, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """(1/σ, log σ) from whichever of ``scale`` or ``log_scale`` was given (default σ = 1).

    With ``log_scale`` the inverse scale is exp(−log σ), which is finite and has a finite
    gradient for every finite ``log_scale``; dividing by exp(log σ) would overflow first.
    """
    if log_scale is not None:
        log_scale = log_scale.astype(dtype)
        return jnp.exp(-log_scale), log_scale
    if scale is not None:
        scale = scale.astype(dtype)
        return 1.0 / scale, jnp.log(scale)
    one = jnp.ones((), dtype)
    return one, jnp.zeros((), dtype)


def xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
    """x · log y with 0 · log y = 0 for every y ≤ 0, finite in value and gradient at x = 0.

    Where x = 0 and y ≤ 0 (the 0 · log 0 of an entropy, or of a zero probability under a
    zero-probability class), y is replaced by 1 *before* the log, so the term is exactly 0
    and both partial derivatives are 0 there (the true one-sided derivative in x at y = 0
    is −∞; 0 is the convention). Elsewhere the gradients are the exact ones: log y in x
    and x / y in y; in particular the gradient in x at x = 0, y > 0 is log y.
    ``jax.scipy.special.xlogy`` gets the value right but its gradient at (0, 0) is NaN.
    """
    zero = (x == 0) & (y <= 0)
    return x * jnp.log(jnp.where(zero, jnp.ones_like(y), y))


def safe_norm(x: jax.Array, axis, *, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over ``axis`` that is finite in value and gradient everywhere.

    Scaled by m = max |x| (held constant: ‖x‖ is 1-homogeneous, so ∂/∂m of m·‖x/m‖ is 0
    and the gradient is exact) so the squares cannot overflow before the norm does, and a
    double where at m = 0 gives the norm 0 with gradient 0 (the zero subgradient) instead
    of 0/0.
    """
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    zero = m == 0  # NaN compares unequal, so a NaN anywhere in x still gives NaN
    m_safe = jnp.where(zero, 1.0, m)
    s = jnp.sum(jnp.square(x / m_safe), axis=axis, keepdims=True)
    norm = jnp.where(zero, 0.0, m_safe * jnp.sqrt(jnp.where(zero, 1.0, s)))
    norm = jnp.where(jnp.isinf(m), jnp.inf, norm)  # x/∞ would be NaN
    return norm if keepdims else jnp.squeeze(norm, axis=axis)


@jax.custom_jvp
def finite_floor(x: jax.Array) -> jax.Array:
    """max(x, lowest finite float), with derivative 1: −inf becomes the lowest float.

    The identity derivative is what clipping a −inf logit to a very negative number
    gives where it matters (its probability, and so its gradient weight, is 0), and it
    avoids the tie-splitting select and divide of ``jnp.maximum``'s derivative.
    """
    return jnp.maximum(x, jnp.finfo(x.dtype).min)


finite_floor.defjvp(lambda primals, tangents: (finite_floor(primals[0]), tangents[0]))


def log_softmax_parts(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(s, log_z) with log_softmax(x) = s − log_z along ``axis`` (log_z keeps the axis).

    s = x − max(x) is never −inf (see `finite_floor`), so Σ t·(log_z − s) is finite
    where t = 0 on a −inf logit (0·log 0 = 0) without a select in the reduction, and a
    target with mass on such a class gets the finite value of clipping the logit to the
    lowest float. The max is a constant for the derivative (softmax is shift-invariant).
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows of −inf stay −inf, not NaN
    s = finite_floor(x - m)
    return s, jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


@jax.custom_jvp
def binary_logit_nll(z: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """a·softplus(−z) + b·softplus(z) = −a·log σ(z) − b·log(1 − σ(z)), elementwise.

    The binary cross-entropy on logits with label weights a (for "1") and b (for "0").
    softplus(±z) = max(±z, 0) + log1p(exp(−|z|)) share their log1p term, so the value
    costs one exp and one log1p and has no cancellation: a·max(−z, 0) is exactly 0 for
    a confident correct prediction and the loss keeps its tiny exp(−|z|) size. The
    derivative is written out (the kinks of max and |·| cancel in the sum, but not in
    their automatic derivatives at z = 0).
    """
    log1p_term = jnp.log1p(jnp.exp(-jnp.abs(z)))
    return a * jnp.maximum(-z, 0.0) + b * jnp.maximum(z, 0.0) + (a + b) * log1p_term


def _binary_logit_nll_jvp(primals, tangents):
    z, a, b = primals
    dz, da, db = tangents
    out = binary_logit_nll(z, a, b)
    # dℓ/dz = b·σ(z) − a·σ(−z), from s = σ(−|z|) ≤ ½ on each side so no term cancels.
    # −|z| is written as a where so that its derivative at 0 is the z ≥ 0 branch's.
    pos = z >= 0
    s = jax.nn.sigmoid(jnp.where(pos, -z, z))
    slope = jnp.where(pos, b - (a + b) * s, (a + b) * s - a)
    tangent = jnp.zeros_like(out)
    if not isinstance(dz, SymbolicZero):
        tangent = tangent + slope * dz
    if not isinstance(da, SymbolicZero):
        tangent = tangent + jax.nn.softplus(-z) * da
    if not isinstance(db, SymbolicZero):
        tangent = tangent + jax.nn.softplus(z) * db
    return out, tangent


binary_logit_nll.defjvp(_binary_logit_nll_jvp, symbolic_zeros=True)
