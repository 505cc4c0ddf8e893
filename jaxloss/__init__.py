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
    categorical_generalized_cross_entropy,
    nll_loss,
    poly_cross_entropy,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    smooth_labels,
    softmax_cross_entropy,
    softmax_focal_loss,
    z_loss,
)
from jaxloss._contrastive import circle_loss, clip_loss, ntxent_loss, siglip_loss
from jaxloss._embedding import (
    cosine_distance,
    cosine_embedding_loss,
    cosine_similarity,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)
from jaxloss._fused_language_model import (
    fused_linear_distillation_loss,
    fused_linear_policy_gradient_loss,
    fused_linear_token_log_probs,
)
from jaxloss._information import (
    cross_entropy,
    entropy,
    entropy_from_logits,
    gaussian_kl,
    generalized_kl_divergence,
    js_divergence,
    kl_divergence,
    kl_divergence_from_logits,
    surprisal,
)
from jaxloss._language_model import (
    distillation_loss,
    group_relative_advantages,
    kl_penalty,
    policy_gradient_loss,
    sequence_log_probs,
    token_log_probs,
)
from jaxloss._large_vocab import fused_linear_cross_entropy
from jaxloss._margin import (
    hinge_embedding_loss,
    hinge_loss,
    margin_ranking_loss,
    multiclass_hinge_loss,
    multiclass_perceptron_loss,
    multilabel_margin_loss,
    perceptron_loss,
    soft_margin_loss,
)
from jaxloss._parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_fused_linear_cross_entropy,
)
from jaxloss._preference import (
    cpo_loss,
    dpo_implicit_rewards,
    dpo_loss,
    fused_linear_preference_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)
from jaxloss._ranking import (
    approx_ndcg_loss,
    listmle_loss,
    mrr,
    ndcg,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    ranking_softmax_loss,
)
from jaxloss._regression import (
    absolute_error,
    gaussian_nll,
    huber,
    laplace_nll,
    log_cosh,
    mean_absolute_percentage_error,
    mean_squared_logarithmic_error,
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
from jaxloss._segmentation import (
    dice_loss,
    generalized_dice_loss,
    jaccard_loss,
    multiclass_generalized_dice_loss,
    tversky_loss,
)
from jaxloss._sequence import ctc_loss, ctc_loss_with_forward_probs
from jaxloss._sparse import make_fenchel_young_loss, sparsemax, sparsemax_loss
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
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    # classification (cross-entropies)
    "softmax_cross_entropy",
    "nll_loss",
    "softmax_focal_loss",
    "z_loss",
    "sigmoid_binary_cross_entropy",
    "binary_cross_entropy",
    "sigmoid_focal_loss",
    "poly_cross_entropy",
    "categorical_generalized_cross_entropy",
    "smooth_labels",
    # sparse outputs (sparsemax and its Fenchel-Young loss)
    "sparsemax",
    "sparsemax_loss",
    "make_fenchel_young_loss",
    # information theory (entropies and divergences, math order (p, q))
    "surprisal",
    "entropy",
    "entropy_from_logits",
    "cross_entropy",
    "kl_divergence",
    "kl_divergence_from_logits",
    "js_divergence",
    "gaussian_kl",
    "generalized_kl_divergence",
    # ranking (lists along the last axis; `where` marks the valid items)
    "ranking_softmax_loss",
    "listmle_loss",
    "pairwise_logistic_loss",
    "pairwise_hinge_loss",
    "approx_ndcg_loss",
    "ndcg",
    "mrr",
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
    # margin losses
    "hinge_loss",
    "hinge_embedding_loss",
    "perceptron_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multilabel_margin_loss",
    "margin_ranking_loss",
    "soft_margin_loss",
    # embedding (metric-learning) losses
    "cosine_similarity",
    "cosine_distance",
    "cosine_embedding_loss",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
    # segmentation (overlap) losses on probabilities
    "dice_loss",
    "tversky_loss",
    "jaccard_loss",
    "generalized_dice_loss",
    "multiclass_generalized_dice_loss",
    # preference optimization (on per-sequence log-probabilities)
    "dpo_loss",
    "dpo_implicit_rewards",
    "simpo_loss",
    "orpo_loss",
    "cpo_loss",
    "kto_loss",
    "fused_linear_preference_loss",  # the same, fused from hidden states
    # contrastive losses (batches of embeddings; clip and siglip also across devices)
    "ntxent_loss",
    "circle_loss",
    "clip_loss",
    "siglip_loss",
    # language models: token log-probabilities, distillation, policy-gradient losses
    "token_log_probs",
    "fused_linear_token_log_probs",
    "sequence_log_probs",
    "distillation_loss",
    "fused_linear_distillation_loss",
    "policy_gradient_loss",
    "fused_linear_policy_gradient_loss",
    "kl_penalty",
    "group_relative_advantages",
    # sequence losses
    "ctc_loss",
    "ctc_loss_with_forward_probs",
]


def __getattr__(name: str):
    # `jaxloss.flax` imports flax, an optional dependency: load it on first use only (it is
    # left out of `__all__` so that `from jaxloss import *` never needs flax).
    if name == "flax":
        import importlib

        return importlib.import_module("jaxloss.flax")
    raise AttributeError(f"module 'jaxloss' has no attribute {name!r}")
