"""jaxloss: pure, JIT-compiled loss functions and regularization penalties for JAX.

Every loss returns the per-element loss by default and takes the keyword-only
``where=``, ``weights=`` and ``reduction=`` arguments described in
``docs/conventions.md``.
"""

from jaxloss._classification import (
    binary_cross_entropy,
    nll_loss,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    z_loss,
)
from jaxloss._regression import (
    absolute_error,
    gaussian_nll,
    huber,
    laplace_nll,
    log_cosh,
    poisson_nll,
    squared_error,
    student_t_nll,
)
from jaxloss._version import __version__ as __version__

__all__ = [
    # regression (negative log-likelihoods)
    "squared_error",
    "absolute_error",
    "huber",
    "log_cosh",
    "gaussian_nll",
    "laplace_nll",
    "student_t_nll",
    "poisson_nll",
    # classification (cross-entropies)
    "softmax_cross_entropy",
    "nll_loss",
    "softmax_focal_loss",
    "z_loss",
    "sigmoid_binary_cross_entropy",
    "binary_cross_entropy",
    "sigmoid_focal_loss",
]
