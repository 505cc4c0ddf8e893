"""Safe numerical primitives shared by every loss family.

A numerical fix is made here once. Constants are Python floats so they stay weakly
typed and never promote a float32 computation to float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import gammaln

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
    """log(cosh x) without overflow and with full relative accuracy at every x.

    logaddexp(x, −x) − log 2 never overflows but cancels for small |x| (7 % error at
    1e-3 and 0 for |x| ≤ 1e-4 in float32, where log cosh x ≈ x²/2); for |x| < 1 the
    identity cosh x − 1 = 2 sinh²(x/2) gives log1p(2 sinh²(x/2)), which does not cancel.
    Both forms are smooth (derivative tanh x) and each sees only inputs it is safe for.
    """
    small = jnp.abs(x) < 1.0
    s = jnp.sinh(jnp.where(small, x, 0.0) * 0.5)
    xb = jnp.where(small, 1.0, x)
    return jnp.where(small, jnp.log1p(2.0 * s * s), jnp.logaddexp(xb, -xb) - LOG_2)


@jax.custom_jvp
def abs0(x: jax.Array) -> jax.Array:
    """|x| with the derivative sign(x), which is 0 at x = 0 (the zero subgradient).

    JAX differentiates ``jnp.abs`` at 0 as +1 (a select on x ≥ 0), so an exact zero of a
    residual or a weight would be pushed away by the L1 term's gradient; 0 is the
    minimum-norm subgradient the docs promise, and the fixed point of a descent step.
    """
    return jnp.abs(x)


abs0.defjvp(lambda primals, tangents: (abs0(primals[0]), jnp.sign(primals[0]) * tangents[0]))


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


def standardize(
    residual: jax.Array, scale: jax.Array | None, log_scale: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(z, log σ) with z = residual / σ, from whichever of ``scale``/``log_scale`` was given.

    With ``log_scale``, z is residual·exp(−log σ) where exp(−log σ) is finite; where it
    overflows (log σ below about −88.7 in float32) that would be 0·∞ = NaN at residual 0
    and ±∞ for a tiny residual whose true z is finite, so there z is
    sign(r)·exp(log|r| − log σ): exactly 0 at r = 0, and every branch sees only inputs it
    is safe for (double where), so the gradients are finite too.
    """
    if log_scale is None:
        inv_scale, log_scale = scale_and_log_scale(scale, None, residual.dtype)
        return residual * inv_scale, log_scale
    log_scale = log_scale.astype(residual.dtype)
    ok = -log_scale < math.log(jnp.finfo(residual.dtype).max)
    inv = jnp.exp(-jnp.where(ok, log_scale, 0.0))
    zero = residual == 0
    safe = ok | zero
    r = jnp.where(safe, 1.0, residual)
    big = jnp.sign(r) * jnp.exp(jnp.log(jnp.abs(r)) - jnp.where(safe, 0.0, log_scale))
    return jnp.where(ok, residual * inv, jnp.where(zero, 0.0, big)), log_scale


# log Γ(x + ½) − log Γ(x) − ½ log x ~ Σ c_n / x^n for large x (Stirling's series for both
# gammas; DLMF 5.11.8 with B_{n+1}(½) = (2^{−n} − 1)·B_{n+1}): c_n = (2^{−n} − 2)·B_{n+1} /
# (n(n + 1)), odd n. Used for x ≥ 8 in float64 (the first term left out is below 2e-16)
# and x ≥ 4 in float32 (below 3e-11), where the log-gamma difference is still accurate.
_GAMMA_RATIO_SERIES = (
    -1.0 / 8.0,
    1.0 / 192.0,
    -1.0 / 640.0,
    17.0 / 14336.0,
    -31.0 / 18432.0,
    691.0 / 180224.0,
    -5461.0 / 425984.0,
    929569.0 / 15728640.0,
)


def log_gamma_half_ratio(x: jax.Array) -> jax.Array:
    """log Γ(x + ½) − log Γ(x) − ½ log x for x > 0, without cancellation for large x.

    The difference of the two log-gammas loses ε·log Γ(x) absolutely (0.3 at x = 5e6
    in float32) to a result of size 1/(8x); for large x the asymptotic series is used
    instead, whose derivatives (automatic) are as accurate as its value.
    """
    min_x = 8.0 if x.dtype == jnp.float64 else 4.0
    large = x >= min_x
    xl = jnp.where(large, x, min_x)
    xs = jnp.where(large, 1.0, x)
    w = 1.0 / jnp.square(xl)
    acc = jnp.zeros_like(w)
    for c in reversed(_GAMMA_RATIO_SERIES[1:]):
        acc = (acc + c) * w
    series = (_GAMMA_RATIO_SERIES[0] + acc) / xl
    direct = gammaln(xs + 0.5) - gammaln(xs) - 0.5 * jnp.log(xs)
    return jnp.where(large, series, direct)


def log1p_minus(u: jax.Array) -> jax.Array:
    """u − log(1 + u) for u ≥ 0, without cancellation for small u.

    With t = u/(2 + u), log1p(u) = 2 atanh t, so u − log1p(u) = u²/(2 + u) − 2(atanh t − t)
    and atanh t − t = t³ Σ t^{2k}/(2k + 3); for u < 0.1 (t < 0.048) eight terms reach
    double precision and the two parts never cancel by more than a factor 1/60. Above,
    the direct difference loses at most a factor 22 of ε.
    """
    small = u < 0.1
    us = jnp.where(small, u, 0.0)
    t = us / (2.0 + us)
    t2 = jnp.square(t)
    acc = jnp.zeros_like(t)
    for k in range(7, -1, -1):
        acc = acc * t2 + 1.0 / (2 * k + 3)
    series = jnp.square(us) / (2.0 + us) - 2.0 * t * t2 * acc
    ub = jnp.where(small, 1.0, u)
    return jnp.where(small, series, ub - jnp.log1p(ub))


def negate(x: jax.Array) -> jax.Array:
    """−x, but +0 for x = 0: a certain outcome has zero (not −0) surprisal, entropy or
    cross-entropy, and a one-class softmax loss is +0."""
    return 0.0 - x


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


def safe_norm(x: jax.Array, axis, *, keepdims: bool = False, p: float = 2.0) -> jax.Array:
    """The p-norm (Σ|x|^p)^(1/p) over ``axis`` (default Euclidean), finite in value and gradient.

    Scaled by m = max |x| (held constant: ‖x‖ is 1-homogeneous, so ∂/∂m of m·‖x/m‖ is 0
    and the gradient is exact) so the powers cannot overflow before the norm does, and a
    double where at m = 0 gives the norm 0 with gradient 0 (the zero subgradient) instead
    of 0/0. ``p`` is a Python number ≥ 1 (a norm; |x|^p has an infinite slope at 0 for
    p < 1).
    """
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    zero = m == 0  # NaN compares unequal, so a NaN anywhere in x still gives NaN
    m_safe = jnp.where(zero, 1.0, m)
    if p == 2:
        s = jnp.sum(jnp.square(x / m_safe), axis=axis, keepdims=True)
        root = jnp.sqrt(jnp.where(zero, 1.0, s))
    elif p == 1:
        root = jnp.sum(jnp.abs(x / m_safe), axis=axis, keepdims=True)
    else:
        s = jnp.sum(jnp.abs(x / m_safe) ** p, axis=axis, keepdims=True)
        root = jnp.where(zero, 1.0, s) ** (1.0 / p)
    norm = jnp.where(zero, 0.0, m_safe * root)
    norm = jnp.where(jnp.isinf(m), jnp.inf, norm)  # x/∞ would be NaN
    return norm if keepdims else jnp.squeeze(norm, axis=axis)


@jax.custom_jvp
def finite_floor(x: jax.Array) -> jax.Array:
    """max(x, lowest finite float), with derivative 1: −inf becomes the lowest float.

    Applied to log-probabilities before they are multiplied by a target, it makes
    0·log 0 = 0 (not NaN) and gives a target with mass m on a −inf class the finite loss
    m·(largest float), which is what clipping the logit gives. The identity derivative
    is that of clipping where it matters (a probability of 0 has gradient weight 0), and
    it avoids the tie-splitting select and divide of ``jnp.maximum``'s derivative, which
    cost a full-size temporary in XLA's CPU fusions. A plain max in the forward pass
    keeps the reduction fusible.
    """
    return jnp.maximum(x, jnp.finfo(x.dtype).min)


finite_floor.defjvp(lambda primals, tangents: (finite_floor(primals[0]), tangents[0]))


def log_softmax(x: jax.Array, axis: int) -> jax.Array:
    """log softmax(x) along ``axis`` with −inf logits at the lowest float (`finite_floor`).

    As jax.nn.log_softmax, x − max(x) − log Σ exp(x − max(x)), with the floor applied to
    the shifted logits in the pass that forms them, where it costs nothing; the result
    is finite wherever a row has a finite logit, so t·log p is 0 for t = 0.
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    shifted = finite_floor(x - m)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def _log1p_exp_neg_abs(z: jax.Array) -> jax.Array:
    """log(1 + exp(−|z|)) = softplus(z) − max(z, 0), in (0, log 2]: never overflows."""
    return jnp.log1p(jnp.exp(-jnp.abs(z)))


def _sigmoid_minus_label(z: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """b·σ(z) − a·σ(−z) without cancellation (σ(z) − y for a = y, b = 1 − y).

    From s = σ(−|z|) ≤ ½ on each side of 0; −|z| is written as a where so that its
    derivative at 0 is the z ≥ 0 branch's, and higher derivatives are right at 0 too.
    """
    pos = z >= 0
    s = jax.nn.sigmoid(jnp.where(pos, -z, z))
    return jnp.where(pos, b - (a + b) * s, (a + b) * s - a)


@jax.custom_jvp
def binary_logit_nll(z: jax.Array, y: jax.Array) -> jax.Array:
    """y·softplus(−z) + (1 − y)·softplus(z) = −y·log σ(z) − (1 − y)·log(1 − σ(z)).

    The binary cross-entropy on logits, as max((1 − y)·z, −y·z) + log(1 + exp(−|z|))
    (the max is max(z, 0) − y·z): one exp and one log1p, and exact for hard labels where
    it matters: for y = 1 and z > 0 the max is exactly 0, so the loss keeps its tiny
    exp(−z) size. Written with no constant, z − y·z for (1 − y)·z, because XLA's CPU
    reduction fusions materialize every broadcast constant as a full-size array. The
    derivative σ(z) − y is written out (the kinks of max and |·| cancel in the sum, but
    not in their automatic derivatives at z = 0).
    """
    yz = y * z
    return jnp.maximum(z - yz, -yz) + _log1p_exp_neg_abs(z)


def _binary_logit_nll_jvp(primals, tangents):
    z, y = primals
    dz, dy = tangents
    out = binary_logit_nll(z, y)
    tangent = jnp.zeros_like(out)
    if not isinstance(dz, SymbolicZero):
        tangent = tangent + _sigmoid_minus_label(z, y, 1.0 - y) * dz
    if not isinstance(dy, SymbolicZero):
        tangent = tangent - z * dy
    return out, tangent


binary_logit_nll.defjvp(_binary_logit_nll_jvp, symbolic_zeros=True)


@jax.custom_jvp
def weighted_binary_logit_nll(z: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """a·softplus(−z) + b·softplus(z): `binary_logit_nll` with label weights a and b.

    softplus(±z) = max(±z, 0) + log(1 + exp(−|z|)) share their log term, so a confident
    correct prediction keeps its exp(−|z|) size here too.
    """
    return a * jnp.maximum(-z, 0.0) + b * jnp.maximum(z, 0.0) + (a + b) * _log1p_exp_neg_abs(z)


def _weighted_binary_logit_nll_jvp(primals, tangents):
    z, a, b = primals
    dz, da, db = tangents
    out = weighted_binary_logit_nll(z, a, b)
    tangent = jnp.zeros_like(out)
    if not isinstance(dz, SymbolicZero):
        tangent = tangent + _sigmoid_minus_label(z, a, b) * dz
    if not isinstance(da, SymbolicZero):
        tangent = tangent + jax.nn.softplus(-z) * da
    if not isinstance(db, SymbolicZero):
        tangent = tangent + jax.nn.softplus(z) * db
    return out, tangent


weighted_binary_logit_nll.defjvp(_weighted_binary_logit_nll_jvp, symbolic_zeros=True)


@jax.custom_jvp
def log_mixture(y: jax.Array, log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """log(y·a + (1 − y)·b) from log a and log b, for a mixing weight y ∈ [0, 1].

    As logaddexp(log y + log a, log(1 − y) + log b) with log 0 = −∞ taken exactly at the
    hard weights y = 0 and y = 1. The derivatives are written out, (a − b)/m in y and
    y·a/m, (1 − y)·b/m in log a and log b (m the mixture): the automatic ones pass
    through 1/y and are 0·∞ = NaN at y = 0 (and at y = 1). The y-derivative (a − b)/m is
    capped at √(largest float), which it exceeds only where m is below ε·(largest float)^(−½)
    of the larger of a and b (|logit| > 44 in float32), where every use multiplies it by a
    power of m that underflows.
    """
    ly = jnp.where(y > 0, jnp.log(jnp.where(y > 0, y, 1.0)), -jnp.inf)
    l1y = jnp.where(y < 1, jnp.log1p(-jnp.where(y < 1, y, 0.0)), -jnp.inf)
    return jnp.logaddexp(ly + log_a, l1y + log_b)


def _log_mixture_jvp(primals, tangents):
    y, log_a, log_b = primals
    dy, da, db = tangents
    out = log_mixture(y, log_a, log_b)
    tangent = jnp.zeros_like(out)
    ra, rb = jnp.exp(log_a - out), jnp.exp(log_b - out)
    if not isinstance(dy, SymbolicZero):
        # Capped at √(largest float), so that a factor such as γ or a tangent cannot
        # overflow it to ∞ before the mixture's own tiny power m^γ multiplies it by 0.
        big = math.sqrt(jnp.finfo(out.dtype).max)
        tangent = tangent + jnp.clip(ra - rb, -big, big) * dy
    if not isinstance(da, SymbolicZero):
        tangent = tangent + jnp.where(y > 0, y * jnp.where(y > 0, ra, 0.0), 0.0) * da
    if not isinstance(db, SymbolicZero):
        tangent = tangent + jnp.where(y < 1, (1.0 - y) * jnp.where(y < 1, rb, 0.0), 0.0) * db
    return out, tangent


log_mixture.defjvp(_log_mixture_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _log_ratio(p: jax.Array, q: jax.Array) -> jax.Array:
    """log(p/q) for p > 0, q ≥ 0, to within ε·|p − q|/min(p, q) (one divide, one log1p).

    sign(p − q) · log1p(|p − q| / min(p, q)): log1p((p − q)/q) for p ≥ q and
    −log1p((q − p)/p) for p < q. The difference is exact for p within a factor 2 of q
    (Sterbenz), and the argument of log1p is never near −1, where (p − q)/q would round
    to −1 for p < ε·q and give −∞.

    The derivatives are those of log p − log q, 1/p and −1/q, written out: the automatic
    ones of sign(d)·log1p(|d|/m) are 0 at p = q (sign′ = 0 and sign(0) = 0), which made
    every second derivative of KL vanish where p = q (a wrong Hessian at the minimum of
    every divergence).
    """
    d = p - q
    return jnp.sign(d) * jnp.log1p(jnp.abs(d) / jnp.minimum(p, q))


def _log_ratio_jvp(primals, tangents):
    p, q = primals
    dp, dq = tangents
    tangent = jnp.zeros(jnp.broadcast_shapes(p.shape, q.shape), jnp.result_type(p, q))
    if not isinstance(dp, SymbolicZero):
        tangent = tangent + dp / p
    if not isinstance(dq, SymbolicZero):
        tangent = tangent - dq / q
    return _log_ratio(p, q), tangent


_log_ratio.defjvp(_log_ratio_jvp, symbolic_zeros=True)


@jax.custom_jvp
def relative_entropy_term(p: jax.Array, q: jax.Array) -> jax.Array:
    """p · log(p/q) for probabilities p, q ≥ 0, accurate also for p ≈ q (`_log_ratio`).

    p·(log p − log q) has error ε·p·|log p| and so loses every digit of KL(p‖q) for
    nearby distributions, where KL is of order (p − q)²; here the error of the term is
    ε·p·|p − q|/q, the most the rounding of the inputs allows. Where p = 0 the term is 0
    (0 · log 0 = 0, also for q = 0); where p > 0 = q it is +inf.

    The derivatives are written out: log(p/q) + 1 in p and −p/q in q (automatic
    differentiation of the division would form p/q², which overflows for tiny q). At
    p = 0 they follow the 0 · log 0 convention of `xlogy`: −log q in p (0 where q = 0
    too) and 0 in q.
    """
    return jnp.where(p == 0, 0.0, p * _log_ratio(p, q))


def _relative_entropy_term_jvp(primals, tangents):
    p, q = primals
    dp, dq = tangents
    out = relative_entropy_term(p, q)
    tangent = jnp.zeros_like(out)
    # Each branch of a where sees only inputs it is safe for, so that these derivatives
    # can be differentiated again without 0 · ∞ (second-order gradients).
    zero = p == 0
    if not isinstance(dp, SymbolicZero):
        p_pos, q_pos = jnp.where(zero, 1.0, p), jnp.where(zero, 1.0, q)
        q_zero = jnp.where(zero & (q > 0), q, 1.0)
        d_p = jnp.where(zero, -jnp.log(q_zero), _log_ratio(p_pos, q_pos) + 1.0)
        tangent = tangent + d_p * dp
    if not isinstance(dq, SymbolicZero):
        tangent = tangent - p / jnp.where(zero, 1.0, q) * dq  # 0 where p = 0
    return out, tangent


relative_entropy_term.defjvp(_relative_entropy_term_jvp, symbolic_zeros=True)
