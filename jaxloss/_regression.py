"""Regression losses, each the negative log-likelihood of a noise model.

Squared error is the Gaussian NLL with a fixed scale up to an affine map, absolute error
the Laplace NLL, and so on; the ``*_nll`` functions give the exact negative
log-densities with learned (heteroscedastic) scales.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


def squared_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Squared error, the Gaussian negative log-likelihood up to constants.

        ℓ = (ŷ − y)²

    Minimizing it is maximum likelihood under y ~ N(ŷ, σ²) with σ fixed: see
    `gaussian_nll`, which equals ℓ / (2σ²) + log σ + ½ log 2π.

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      where: optional boolean mask broadcastable to the loss; True keeps an element.
      weights: optional non-negative weights broadcastable to the loss.
      reduction: ``"none"`` (per element), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The shape of the predictions for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
      Array([1., 4.], dtype=float32)
      >>> jaxloss.squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]), reduction="mean")
      Array(2.5, dtype=float32)
    """
    (predictions, targets), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("targets",), predictions=predictions, targets=targets
    )
    diff = C.keep(where, predictions - targets, 0.0)
    return C.reduce(jnp.square(diff), where=where, weights=weights, reduction=reduction)


def absolute_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Absolute error, the Laplace negative log-likelihood up to constants.

        ℓ = |ŷ − y|

    Its gradient at ŷ = y is the subgradient 0.

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.absolute_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
      Array([1., 2.], dtype=float32)
    """
    (predictions, targets), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("targets",), predictions=predictions, targets=targets
    )
    diff = C.keep(where, predictions - targets, 0.0)
    return C.reduce(N.abs0(diff), where=where, weights=weights, reduction=reduction)


def huber(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    delta: float = 1.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Huber loss: quadratic near zero, linear in the tails.

        ℓ = ½ r²             if |r| ≤ δ
        ℓ = δ (|r| − ½ δ)    otherwise,       r = ŷ − y

    (the convention of Huber 1964 and optax; PyTorch's ``HuberLoss`` is the same,
    ``SmoothL1Loss`` is this divided by δ). Continuous with a continuous first derivative.

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      delta: δ > 0, where the quadratic turns linear.
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.huber(jnp.array([0.5, 3.0]), jnp.array([0.0, 0.0]), delta=1.0)
      Array([0.125, 2.5  ], dtype=float32)
    """
    C.check_positive("delta", delta)
    (predictions, targets, delta), where, weights = C.float_inputs(
        where,
        weights,
        reduction,
        allow_int=("targets", "delta"),
        predictions=predictions,
        targets=targets,
        delta=delta,
    )
    r = jnp.abs(C.keep(where, predictions - targets, 0.0))
    delta = C.keep(where, delta, 1.0)
    # min(|r|, δ) splits |r| into its quadratic and linear parts without a branch:
    # ½q² + δ(|r| − q) equals both pieces of the definition and is finite everywhere.
    quad = jnp.minimum(r, delta)
    loss = 0.5 * jnp.square(quad) + delta * (r - quad)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def log_cosh(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Log-cosh loss: ≈ ½r² for small residuals, ≈ |r| − log 2 for large ones.

        ℓ = log cosh(ŷ − y)

    Computed as log1p(2 sinh²(r/2)) for |r| < 1 (accurate to a few ulp relative, also
    where it is ≈ ½r²) and as logaddexp(r, −r) − log 2 elsewhere, which never overflows
    (cosh does at |r| ≈ 89 in float32); smooth everywhere, its gradient is tanh(r).

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.log_cosh(jnp.array([0.0, 1000.0]), jnp.array([0.0, 0.0]))
      Array([  0.   , 999.307], dtype=float32)
    """
    (predictions, targets), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("targets",), predictions=predictions, targets=targets
    )
    r = C.keep(where, predictions - targets, 0.0)
    return C.reduce(N.log_cosh(r), where=where, weights=weights, reduction=reduction)


def _location_scale_inputs(loc_name, loc, targets, scale, log_scale, where, weights, reduction):
    """Shared validation for the location-scale NLLs (Gaussian, Laplace, Student-t)."""
    C.check_exclusive(scale=scale, log_scale=log_scale)
    C.check_positive("scale", scale, allow_none=True)
    (loc, targets, scale, log_scale), where, weights = C.float_inputs(
        where,
        weights,
        reduction,
        allow_int=("targets", "scale", "log_scale"),
        **{loc_name: loc},
        targets=targets,
        scale=scale,
        log_scale=log_scale,
    )
    residual = C.keep(where, targets - loc, 0.0)
    scale = C.keep(where, scale, 1.0)
    log_scale = C.keep(where, log_scale, 0.0)
    z, log_scale = N.standardize(residual, scale, log_scale)
    return z, log_scale, where, weights


def gaussian_nll(
    mean: ArrayLike,
    targets: ArrayLike,
    *,
    scale: ArrayLike | None = None,
    log_scale: ArrayLike | None = None,
    full: bool = True,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Negative log-density of y under N(μ, σ²), per element.

        ℓ = (y − μ)² / (2σ²) + log σ + ½ log 2π

    With σ fixed this is `squared_error` / (2σ²) plus a constant, so both have the
    same minimizer and the gradient in μ is the squared error's divided by 2σ². A learned,
    per-element σ (heteroscedastic regression) is best given as ``log_scale`` = log σ: the
    loss is then finite with a finite gradient for every finite input.

    Args:
      mean: μ, floating array of any shape.
      targets: y, broadcastable to the shape of ``mean`` (integers are cast).
      scale: σ > 0, scalar or array broadcastable to the shape of ``mean``. Default 1.
      log_scale: log σ instead of ``scale`` (at most one of the two).
      full: include the constant ½ log 2π (the exact NLL); ``False`` drops only it.
      where, weights, reduction: as in `squared_error`.

    Returns:
      The shape of the predictions for ``"none"``, else a scalar; float32, or
      float64 for float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.gaussian_nll(jnp.array([0.0]), jnp.array([2.0]), scale=2.0)
      Array([2.1120857], dtype=float32)
      >>> jaxloss.gaussian_nll(jnp.array([0.0]), jnp.array([2.0]), log_scale=jnp.log(2.0))
      Array([2.1120857], dtype=float32)

    References:
      The Gaussian NLL as the maximum-likelihood reading of squared error: Bishop,
      *Pattern Recognition and Machine Learning* (2006), §1.2.5; Nix & Weigend,
      "Estimating the mean and variance of the target probability distribution" (1994).
    """
    z, log_scale, where, weights = _location_scale_inputs(
        "mean", mean, targets, scale, log_scale, where, weights, reduction
    )
    loss = 0.5 * jnp.square(z) + log_scale
    if full:
        loss = loss + N.HALF_LOG_2PI
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def laplace_nll(
    loc: ArrayLike,
    targets: ArrayLike,
    *,
    scale: ArrayLike | None = None,
    log_scale: ArrayLike | None = None,
    full: bool = True,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Negative log-density of y under Laplace(μ, b), per element.

        ℓ = |y − μ| / b + log b + log 2

    Absolute error as a likelihood: with b fixed, ℓ = |y − μ| / b + const, and its
    minimizer is the conditional median.

    Args:
      loc: μ, floating array of any shape.
      targets: y, broadcastable to the shape of ``loc`` (integers are cast).
      scale: b > 0, scalar or array broadcastable to the shape of ``loc``. Default 1.
      log_scale: log b instead of ``scale`` (at most one of the two).
      full: include the constant log 2 (the exact NLL); ``False`` drops only it.
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `gaussian_nll`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.laplace_nll(jnp.array([0.0]), jnp.array([2.0]), scale=2.0)
      Array([2.3862944], dtype=float32)
    """
    z, log_scale, where, weights = _location_scale_inputs(
        "loc", loc, targets, scale, log_scale, where, weights, reduction
    )
    loss = N.abs0(z) + log_scale
    if full:
        loss = loss + N.LOG_2
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def student_t_nll(
    loc: ArrayLike,
    targets: ArrayLike,
    *,
    df: ArrayLike,
    scale: ArrayLike | None = None,
    log_scale: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Negative log-density of y under a Student-t(ν, μ, σ), per element: robust regression.

        ℓ = log Γ(ν/2) − log Γ((ν+1)/2) + ½ log(νπ) + log σ + (ν+1)/2 · log(1 + z²/ν),
        z = (y − μ) / σ

    The loss grows like log |z| rather than z², so outliers pull the fit far less than
    under `gaussian_nll` (which it approaches as ν → ∞).

    Args:
      loc: μ, floating array of any shape.
      targets: y, broadcastable to the shape of ``loc`` (integers are cast).
      df: degrees of freedom ν > 0, scalar or array broadcastable to the shape of ``loc``
        (differentiable, so it may be learned).
      scale: σ > 0, scalar or array. Default 1.
      log_scale: log σ instead of ``scale`` (at most one of the two).
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `gaussian_nll`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.student_t_nll(jnp.array([0.0]), jnp.array([1.0]), df=1.0)
      Array([1.837877], dtype=float32)

    References:
      Lange, Little & Taylor, "Robust statistical modeling using the t distribution",
      JASA 84 (1989).
    """
    C.check_positive("df", df)
    df_arr = C.as_float("df", df, allow_int=True)
    z, log_scale, where, weights = _location_scale_inputs(
        "loc", loc, targets, scale, log_scale, where, weights, reduction
    )
    C.loss_shape("loc", loc=z, df=df_arr)
    nu = C.keep(where, df_arr.astype(z.dtype), 1.0)
    half_nu1 = 0.5 * (nu + 1.0)
    # log Γ(ν/2) − log Γ((ν+1)/2) + ½ log(νπ) = ½ log 2π − A(ν/2) with A(x) = log Γ(x + ½)
    # − log Γ(x) − ½ log x, which is −1/(8x) + O(x⁻³) and is computed without the
    # cancellation of the two log-gammas (N.log_gamma_half_ratio).
    # (ν+1)/2 · log1p(u), u = z²/ν, → z²/2 as ν → ∞; for u < 0.1 it is written as
    # ½z²(1 + 1/ν) − (ν+1)/2 · (u − log1p u) so that its ν-derivative, of order u², is
    # not the difference of two terms of order u (N.log1p_minus).
    small = jnp.square(z) < 0.1 * nu
    zs = jnp.where(small, z, 0.0)
    z2 = jnp.square(zs)
    small_tail = 0.5 * z2 * (1.0 + 1.0 / nu) - half_nu1 * N.log1p_minus(z2 / nu)
    # log1p(a²) with a = |z|/√ν as 2 log a + log1p(a⁻²) for a > 1: z² overflows at
    # |z| ≈ 1.8e19 in float32, where the loss is still about (ν+1) log |z|.
    a = jnp.abs(jnp.where(small, 1.0, z)) / jnp.sqrt(nu)
    far = a > 1.0
    a_far, a_near = jnp.where(far, a, 2.0), jnp.where(far, 0.0, a)
    log1p_a2 = jnp.where(
        far,
        2.0 * jnp.log(a_far) + jnp.log1p(1.0 / jnp.square(a_far)),
        jnp.log1p(jnp.square(a_near)),
    )
    tail = jnp.where(small, small_tail, half_nu1 * log1p_a2)
    loss = N.HALF_LOG_2PI - N.log_gamma_half_ratio(0.5 * nu) + log_scale + tail
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


POISSON_FULL = (False, True, "stirling")


def poisson_nll(
    predictions: ArrayLike,
    counts: ArrayLike,
    *,
    log_input: bool = True,
    full: bool | str = True,
    eps: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Negative log-probability of counts k under Poisson(λ), per element.

        ℓ = λ − k log λ + log k!              log λ = predictions (``log_input=True``)
        ℓ = λ − k log(λ + ε) + log k!         λ = predictions (``log_input=False``)

    By default parameterized by log λ (the canonical link), so λ > 0 always and the
    loss is convex. With ``log_input=False`` the predictions are the rate λ ≥ 0 itself,
    and ε (``eps``) keeps the log finite at λ = 0, as in PyTorch's ``poisson_nll_loss``
    (and, with ``eps=1e-7``, Keras's ``Poisson``).

    The term log k! does not depend on the predictions; ``full`` picks it:

        True         log k! = gammaln(k + 1), the exact NLL
        False        0
        "stirling"   k log k − k + ½ log(2πk) for k > 1, 0 for k ≤ 1 (PyTorch's
                     ``full=True``, Stirling's approximation of log k!)

    ``gammaln`` is accurate to rounding but not exact at k = 0, 1 in float32
    (gammaln(1) = 4.8e-7 there, so ``poisson_nll(0., 0)`` is 1.0000005).

    Args:
      predictions: log λ (``log_input=True``) or λ ≥ 0 (``log_input=False``), floating
        array of any shape.
      counts: k ≥ 0, broadcastable to the shape of ``predictions`` (integers are cast).
      log_input: whether ``predictions`` hold log λ (default) or λ.
      full: True, False or "stirling": the log k! term, as above.
      eps: ε ≥ 0 added to λ inside the log with ``log_input=False`` (default 1e-8,
        PyTorch's); not accepted with ``log_input=True``, which takes no log.
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.poisson_nll(jnp.array([0.0]), jnp.array([3]))
      Array([2.79176], dtype=float32)
      >>> jaxloss.poisson_nll(jnp.array([1.0]), jnp.array([3]), log_input=False, full="stirling")
      Array([2.7640815], dtype=float32)

    References:
      PyTorch, ``torch.nn.functional.poisson_nll_loss`` (``log_input``, ``eps`` and the
      Stirling term of ``full=True``); Keras, ``keras.losses.Poisson``.
    """
    if not isinstance(log_input, bool):
        raise TypeError(f"`log_input` must be a bool, got {log_input!r}.")
    if not any(full is f or (isinstance(full, str) and full == f) for f in POISSON_FULL):
        raise ValueError(
            f'`full` must be True (exact log k!), False (no log k! term) or "stirling" '
            f"(PyTorch's approximation), got {full!r}."
        )
    if log_input:
        if eps is not None:
            raise ValueError(
                f"`eps` is used only with log_input=False (it is added to the rate inside "
                f"the log); got eps={eps!r} with log_input=True."
            )
    else:
        eps = 1e-8 if eps is None else eps
        C.check_in_range("eps", eps, 0.0, math.inf)
    (predictions, counts), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("counts",), predictions=predictions, counts=counts
    )
    counts = C.keep(where, counts, 0.0)
    if log_input:
        log_rate = C.keep(where, predictions, 0.0)
        loss = jnp.exp(log_rate) - counts * log_rate
    else:
        rate = C.keep(where, predictions, 1.0)
        loss = rate - counts * jnp.log(rate + eps)
    if full is True:
        loss = loss + gammaln(counts + 1.0)
    elif full == "stirling":
        # Added for k > 1 only; k is replaced there before the logs (double where).
        many = counts > 1
        k = jnp.where(many, counts, 2.0)
        stirling = k * jnp.log(k) - k + 0.5 * jnp.log(2.0 * math.pi * k)
        loss = loss + jnp.where(many, stirling, 0.0)
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


# Keras's backend.epsilon(), the floor of both Keras losses below.
_KERAS_EPSILON = 1e-7


def mean_absolute_percentage_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    eps: float = _KERAS_EPSILON,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Absolute error as a percentage of the target, per element (Keras's MAPE).

        ℓ = 100 · |y − ŷ| / max(|y|, ε)

    The floor ε keeps the loss finite at y = 0 (where it is 100·|ŷ|/ε). The gradient
    in ŷ is 100·sign(ŷ − y)/max(|y|, ε), with the subgradient 0 at ŷ = y; in y, at the
    floor's kink |y| = ε, it is the side of |y| > ε's.

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      eps: the floor ε > 0 of |y| (default 1e-7, Keras's ``backend.epsilon()``).
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`. Keras's ``mean_absolute_percentage_error`` is the mean of
      this over the last axis.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.mean_absolute_percentage_error(jnp.array([1.5, 1.0]), jnp.array([2.0, -4.0]))
      Array([ 25., 125.], dtype=float32)

    References:
      Keras, ``keras.losses.MeanAbsolutePercentageError`` /
      ``keras.losses.mean_absolute_percentage_error``.
    """
    C.check_positive("eps", eps)
    (predictions, targets), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("targets",), predictions=predictions, targets=targets
    )
    predictions = C.keep(where, predictions, 0.0)
    targets = C.keep(where, targets, 1.0)
    size = jnp.abs(targets)
    scale = jnp.where(size >= eps, size, eps)
    loss = 100.0 * N.abs0(predictions - targets) / scale
    return C.reduce(loss, where=where, weights=weights, reduction=reduction)


def mean_squared_logarithmic_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    eps: float = _KERAS_EPSILON,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Squared error of log(1 + ·), with both sides floored at ε, per element (Keras's MSLE).

        ℓ = (log(1 + max(ŷ, ε)) − log(1 + max(y, ε)))²

    A relative error for non-negative quantities (counts, prices). As in Keras, values
    below ε (negative ones included) count as ε, so their gradient is 0; at the floor's
    kink ŷ = ε the gradient is the unfloored side's, 2·(log(1 + ŷ) − log(1 + y'))/(1 + ŷ)
    with y' = max(y, ε). log(1 + x) is evaluated as ``log1p``.

    Args:
      predictions: ŷ, floating array of any shape.
      targets: y, array broadcastable to the shape of ``predictions`` (integers are cast).
      eps: the floor ε ≥ 0 of both sides (default 1e-7, Keras's ``backend.epsilon()``).
      where, weights, reduction: as in `squared_error`.

    Returns:
      As in `squared_error`. Keras's ``mean_squared_logarithmic_error`` is the mean of
      this over the last axis.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.mean_squared_logarithmic_error(jnp.array([0.0, 3.0]), jnp.array([-1.0, 1.0]))
      Array([0.      , 0.480453], dtype=float32)

    References:
      Keras, ``keras.losses.MeanSquaredLogarithmicError`` /
      ``keras.losses.mean_squared_logarithmic_error``.
    """
    C.check_in_range("eps", eps, 0.0, math.inf)
    (predictions, targets), where, weights = C.float_inputs(
        where, weights, reduction, allow_int=("targets",), predictions=predictions, targets=targets
    )
    predictions = C.keep(where, predictions, 0.0)
    targets = C.keep(where, targets, 0.0)
    # Floored with a strict comparison: at ŷ = ε the derivative is the unfloored side's.
    first = jnp.log1p(jnp.where(predictions < eps, eps, predictions))
    second = jnp.log1p(jnp.where(targets < eps, eps, targets))
    return C.reduce(jnp.square(first - second), where=where, weights=weights, reduction=reduction)
