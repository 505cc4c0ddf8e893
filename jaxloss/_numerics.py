"""Safe numerical primitives shared by every loss family.

A numerical fix is made here once. Constants are Python floats so they stay weakly
typed and never promote a float32 computation to float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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
