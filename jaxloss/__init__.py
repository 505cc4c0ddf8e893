"""jaxloss: pure, JIT-compiled loss functions and regularization penalties for JAX.

Every loss returns the per-element loss by default and takes the keyword-only
``where=``, ``weights=`` and ``reduction=`` arguments described in
``docs/conventions.md``.

Sub-namespaces: ``jaxloss.transforms`` (optax gradient transformations) and
``jaxloss.flax`` (Flax helpers; imported on first use, so flax stays optional).
"""

from jaxloss import transforms as transforms
from jaxloss._auxiliary import combine_losses
from jaxloss._classification import (
    binary_cross_entropy,
    nll_loss,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    z_loss,
)
from jaxloss._information import (
    cross_entropy,
    entropy,
    entropy_from_logits,
    gaussian_kl,
    js_divergence,
    kl_divergence,
    kl_divergence_from_logits,
    surprisal,
)
from jaxloss._large_vocab import fused_linear_cross_entropy
from jaxloss._parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_fused_linear_cross_entropy,
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
from jaxloss._regularization import (
    elastic_net_penalty,
    group_lasso_penalty,
    l1_penalty,
    l2_penalty,
    path_mask,
    penalized,
    resolve_mask,
    weight_matrix_mask,
)
from jaxloss._sequence import ctc_loss
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
    # information theory (entropies and divergences, math order (p, q))
    "surprisal",
    "entropy",
    "entropy_from_logits",
    "cross_entropy",
    "kl_divergence",
    "kl_divergence_from_logits",
    "js_divergence",
    "gaussian_kl",
    # regularization: penalties over parameter pytrees, masks, the regularized objective
    "l2_penalty",
    "l1_penalty",
    "elastic_net_penalty",
    "group_lasso_penalty",
    "resolve_mask",
    "weight_matrix_mask",
    "path_mask",
    "penalized",
    "transforms",
    # auxiliary losses
    "combine_losses",
    # large-vocabulary and vocab-parallel cross-entropy
    "fused_linear_cross_entropy",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_fused_linear_cross_entropy",
    # sequence losses
    "ctc_loss",
]


def __getattr__(name: str):
    # `jaxloss.flax` imports flax, an optional dependency: load it on first use only (it is
    # left out of `__all__` so that `from jaxloss import *` never needs flax).
    if name == "flax":
        import importlib

        return importlib.import_module("jaxloss.flax")
    raise AttributeError(f"module 'jaxloss' has no attribute {name!r}")
