"""Learning to rank: listwise losses (softmax, ListMLE), pairwise losses (logistic,
hinge, with optional LambdaLoss weights) and the ranking metrics NDCG@k and MRR@k.

Each list lies along the last axis: ``scores`` [..., L] are the model's scores of the L
items, ``relevance`` [..., L] their graded relevance (higher is better). The loss is one
number per list, shape [...] (the list axis removed).

``where`` here is an *item* mask of the scores' ndim (True = a real item, False = padding
of a ragged batch): a padded item takes no part in the loss, and gets exactly zero
gradient even when its score or relevance is NaN or inf. A list with no valid item is
dropped like a masked example (loss 0, left out of ``"mean"``); to drop whole lists, pass
``where=keep[..., None]``. ``weights`` are per list, broadcastable to [...].

Relevance grades are r ≥ 0. A negative relevance on a valid item is an error when it is
concrete (it is almost always TF-Ranking's padding label −1: pass
``where=relevance >= 0``, the mask rax takes as ``where``) and makes its list's loss NaN
when it is traced (under ``jit``), never a plausible number.

LambdaLoss weights (Wang et al., 2018), the ``lambda_weights`` of the pairwise losses
(`ranking_softmax_loss` takes their per-item form, TF-Ranking's),
scale the loss of each pair (i, j) with r_i > r_j by the change Δ_ij in a metric when
the two items swap places in the current ranking (ranks k by decreasing score, ties by
position, computed without gradient); with G(r) = 2^r − 1 and D(k) = log2(1 + k):

    "label_diff":  Δ_ij = |r_i − r_j|                    (rax labeldiff_lambdaweight)
    "dcg":         Δ_ij = |G(r_i) − G(r_j)| · |1/D(k_i) − 1/D(k_j)|   (dcg_lambdaweight)
    "ndcg":        Δ_ij = the "dcg" weight / maxDCG     (dcg_lambdaweight(normalize=True))

maxDCG is the DCG of the ordering by relevance (a list whose maxDCG is 0 has only zero
weights; a grade so large that 2^r overflows gives NaN). rax and TF-Ranking multiply
the "dcg" and "ndcg" weights by the list length L (a learning-rate heuristic); these are
the paper's, so rax's pair losses with those weights sum to L times this loss. The
weights take no gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _classification as K
from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike


def _lists(scores, relevance, where, weights, reduction):
    """Validated ``(s, r, valid, keep, weights)``: scores and relevance with padded items
    replaced by 0 (before any unsafe operation), the item mask ``valid`` (None: all items),
    the per-list mask ``keep`` (lists with a valid item) and the per-list weights."""
    s = C.as_float("scores", scores)
    r = C.as_float("relevance", relevance, allow_int=True)
    if s.ndim == 0:
        raise ValueError(
            "`scores` must have a list axis (the last): got a scalar. Pass shape [..., L]."
        )
    # Same ndim as the scores, then broadcasting: a [B] array against [B, L] scores would
    # otherwise be read along the items whenever B == L, a silent wrong answer.
    if r.ndim != s.ndim or not K._broadcasts_to(r.shape, s.shape):
        raise ValueError(
            f"`relevance` of shape {r.shape} must have the ndim of `scores` {s.shape} and "
            "broadcast to it (one relevance per item, the lists along the last axis)."
        )
    if where is not None and (
        jnp.ndim(where) != s.ndim or not K._broadcasts_to(jnp.shape(where), s.shape)
    ):
        raise ValueError(
            f"`where` of shape {jnp.shape(where)} must have the ndim of `scores` {s.shape} "
            "and broadcast to it: it marks the valid items of each list. To drop whole "
            "lists pass `where=keep[..., None]`; for one item mask shared by every list, "
            "`where=mask[None, :]`."
        )
    where = C.check_where(where, s.shape)
    _check_relevance(r, where, s.shape)
    C.check_reduction(reduction)
    weights = C.check_weights(weights, s.shape[:-1])
    dtype = C.compute_dtype(s, r)
    s, r = s.astype(dtype), jnp.broadcast_to(r.astype(dtype), s.shape)
    if where is None:
        return s, r, None, None, weights
    valid = jnp.broadcast_to(where, s.shape)
    s, r = C.keep(valid, s, 0.0), C.keep(valid, r, 0.0)
    return s, r, valid, jnp.any(valid, axis=-1), weights


def _check_relevance(r, where, shape) -> None:
    """Reject a concrete negative relevance on a valid item.

    A negative relevance is almost always TF-Ranking's padding label −1 (rax and jaxloss
    mark padding with ``where``); read as a grade it would give a plausible wrong loss.
    A traced one cannot be seen here: `_per_list` makes its list's loss NaN instead.
    """
    if isinstance(r, jax.core.Tracer) or isinstance(where, jax.core.Tracer):
        return
    values = np.broadcast_to(np.asarray(r), shape)
    bad = values < 0
    if where is not None:
        bad = bad & np.broadcast_to(np.asarray(where), shape)
    if bad.any():
        raise ValueError(
            f"`relevance` holds a negative entry ({float(values[bad].min()):.4g}); relevance "
            "grades are r >= 0. If negative labels mark padding (TF-Ranking's -1), pass "
            "`where=relevance >= 0` to drop those items."
        )


def _per_list(loss, r, keep, weights, reduction):
    """The per-list ``loss`` reduced by the conventions, NaN for a list with a negative
    relevance on a valid item (traced, so not rejected at trace time): never a plausible
    number. ``r`` has padded items already replaced by 0."""
    loss = jnp.where(jnp.any(r < 0, axis=-1), jnp.nan, loss)
    return C.reduce(loss, where=keep, weights=weights, reduction=reduction)


def ranking_softmax_loss(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    lambda_weights: str | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Listwise softmax cross-entropy: the relevance, normalized, against softmax(scores).

        ℓ(s, r) = −Σ_i t_i · log softmax(s)_i,        t_i = r_i / Σ_j r_j

    over the valid items of each list. A list whose relevance is all 0 has no target: its
    loss is 0 with zero gradient (it still counts in ``"mean"`` if it has a valid item).
    ``optax.losses.ranking_softmax_loss`` uses r itself as the target (no normalization);
    the two agree when the relevance of each list sums to 1, and differ by the factor Σ r
    otherwise.

    With ``lambda_weights`` the targets are TF-Ranking's LambdaLoss item weights λ_i at
    the current ranking (ranks k_i by decreasing score, ties by position, no gradient),
    not normalized:

        ℓ(s, r) = −Σ_i λ_i · log softmax(s)_i,   λ_i = G(r_i) / D(k_i)   (÷ maxDCG)

    with G, D and maxDCG as in the module notes: ``"dcg"`` or ``"ndcg"`` (÷ maxDCG).
    This is TF-Ranking's ``SoftmaxLoss(lambda_weight=NDCGLambdaWeight())`` times its
    per-list weight Σ λ (the sum its reductions take); ``"label_diff"`` weighs pairs and
    is refused here.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, the graded relevance, of ``scores``' ndim and broadcastable to
        its shape; integers and booleans are cast. Negative entries on valid items raise
        (concrete) or give NaN (traced); see the module notes.
      lambda_weights: None (the normalized relevance is the target), ``"ndcg"`` or
        ``"dcg"`` (the item weights λ above).
      where: optional boolean item mask of ``scores``' ndim, broadcastable to its shape
        (True = valid item, False = padding); see the module notes.
      weights: optional non-negative per-list weights, broadcastable to [...].
      reduction: ``"none"`` (per list), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w over the
        lists with a valid item).

    Returns:
      Shape [...] (``scores``' shape without the list axis) for ``"none"``, else a
      scalar; float32, or float64 for float64 inputs (bf16/f16 computed in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> scores = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
      >>> relevance = jnp.array([[1.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
      >>> jaxloss.ranking_softmax_loss(scores, relevance, where=jnp.array([[True, True, False]]))
      Array([0.31326163, 0.6931472 ], dtype=float32)

    References:
      Cao et al., "Learning to rank: from pairwise approach to listwise approach"
      (ListNet), ICML 2007; Bruch et al., "An analysis of the softmax cross entropy loss
      for learning-to-rank with binary relevance", ICTIR 2019.
    """
    _check_lambda_weights(lambda_weights, ("ndcg", "dcg"))
    s, r, valid, keep, weights = _lists(scores, relevance, where, weights, reduction)
    if lambda_weights is not None:  # from the scores before padding turns to −inf
        gain, discount = _dcg_terms(lambda_weights, s, r, valid)
        lam = jax.lax.stop_gradient(gain * discount)
    if valid is not None:
        # A padded item's score is −inf (probability 0); a list of padding only keeps
        # its zeroed scores so that its (dropped) row stays finite.
        empty = ~jnp.expand_dims(keep, -1)
        s = jnp.where(valid | empty, s, -jnp.inf)
    # −Σ r log p / Σ r: optax's program, with one division per list instead of a
    # normalized copy of the relevance. All-0 relevance: no target, loss 0 (the sum is 0).
    mass = jnp.sum(r, axis=-1)
    if s.shape[-1] == 0:  # lists of no item: loss 0, like the other ranking losses
        loss = jnp.zeros(s.shape[:-1], s.dtype)
    else:
        log_p = N.log_softmax(s, -1)
        if lambda_weights is None:
            loss = -jnp.sum(r * log_p, axis=-1) / jnp.where(mass == 0, 1.0, mass)
        else:
            loss = -jnp.sum(lam * log_p, axis=-1)
    return _per_list(loss, r, keep, weights, reduction)


def listmle_loss(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """ListMLE: the Plackett–Luce negative log-likelihood of the ordering by relevance.

        ℓ(s, r) = −log P(π | s) = Σ_{k=1}^{n} [log Σ_{j≥k} exp(s_{π_j}) − s_{π_k}]

    π lists the n valid items by decreasing relevance; items of equal relevance are
    ordered by position (the earlier item first), so the loss is a deterministic function
    of the scores (it is not symmetrized over the orderings of tied items). The inner
    sums are a reverse cumulative logsumexp, stable for scores of any size.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, of ``scores``' ndim and broadcastable to its shape (only its
        order matters); integers and booleans are cast. It is not differentiated.
      where, weights, reduction: as in `ranking_softmax_loss`.

    Returns:
      As in `ranking_softmax_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.listmle_loss(jnp.array([0.0, 0.0, 0.0]), jnp.array([2.0, 1.0, 0.0]))
      Array(1.7917595, dtype=float32)

    References:
      Xia, Liu, Wang, Zhang & Li, "Listwise approach to learning to rank: theory and
      algorithm", ICML 2008.
    """
    s, r, valid, keep, weights = _lists(scores, relevance, where, weights, reduction)
    # Padded items sort first: the suffix sums of the valid items then never include them
    # (a valid item's key is floored at the lowest float, so +inf relevance sorts after).
    key = (
        -r if valid is None else jnp.where(valid, jnp.maximum(-r, jnp.finfo(r.dtype).min), -jnp.inf)
    )
    order = jnp.argsort(key, axis=-1, stable=True)
    s = jnp.take_along_axis(s, order, axis=-1)
    suffix = jax.lax.cumlogsumexp(s, axis=s.ndim - 1, reverse=True)
    terms = suffix - s
    if valid is not None:
        terms = jnp.where(jnp.take_along_axis(valid, order, axis=-1), terms, 0.0)
    loss = jnp.sum(terms, axis=-1)
    return _per_list(loss, r, keep, weights, reduction)


def _ranks(s, valid):
    """1-based ranks by decreasing score, without gradient (a step function of s).

    Ties are broken by position (the earlier item ranks higher), so ranks are a
    permutation of 1..L; padded items rank after every valid item (a valid −inf score
    included), so the valid items of a list hold ranks 1..n.
    """
    key = jnp.minimum(-jax.lax.stop_gradient(s), jnp.finfo(s.dtype).max)
    if valid is not None:
        key = jnp.where(valid, key, jnp.inf)
    order = jnp.argsort(key, axis=-1, stable=True)
    return (jnp.argsort(order, axis=-1) + 1).astype(s.dtype)


def _gain(r):
    """The DCG gain 2^r − 1 (0 for r = 0, the padded items' relevance)."""
    return jnp.expm1(r * math.log(2.0))


def _discount(rank):
    """The DCG discount 1 / log2(1 + rank) of a 1-based rank."""
    return math.log(2.0) / jnp.log1p(rank)


def _max_dcg(r, topn=None):
    """The DCG of the ideal ordering (by decreasing relevance), cut at ``topn``; padded
    items have r = 0, hence gain 0, and do not count."""
    gains = -jnp.sort(-_gain(r), axis=-1)
    ranks = jnp.arange(1, r.shape[-1] + 1, dtype=r.dtype)
    terms = gains * _discount(ranks)
    if topn is not None:
        terms = jnp.where(ranks <= topn, terms, 0.0)
    return jnp.sum(terms, axis=-1)


LAMBDA_WEIGHTS = ("ndcg", "dcg", "label_diff")


def _check_lambda_weights(lambda_weights, kinds=LAMBDA_WEIGHTS) -> None:
    if lambda_weights is not None and lambda_weights not in kinds:
        hint = (
            ""
            if kinds == LAMBDA_WEIGHTS
            else ' ("label_diff" weighs pairs: use it with the pairwise losses)'
        )
        raise ValueError(
            f"`lambda_weights` must be one of {kinds} or None, got {lambda_weights!r}{hint}."
        )


def _dcg_terms(kind, s, r, valid):
    """Per item, the gain G(r_i) (over maxDCG for ``"ndcg"``) and the discount
    1/D(k_i) at the current rank k_i: the factors of the ``"dcg"``/``"ndcg"`` weights."""
    gain = _gain(r)
    if kind == "ndcg":
        ideal = _max_dcg(r)[..., None]
        gain = gain / jnp.where(ideal == 0, 1.0, ideal)
    return gain, _discount(_ranks(s, valid))


def _lambda_weights(kind, s, r, valid):
    """The LambdaLoss pair weights Δ_ij [..., L, L] (no gradient), see `_pairwise`."""
    if kind == "label_diff":
        return jnp.abs(r[..., :, None] - r[..., None, :])
    gain, discount = _dcg_terms(kind, s, r, valid)
    delta_gain = jnp.abs(gain[..., :, None] - gain[..., None, :])
    return delta_gain * jnp.abs(discount[..., :, None] - discount[..., None, :])


def _pairwise(pair_loss, scores, relevance, where, weights, reduction, lambda_weights):
    """Σ over valid pairs (i, j) with r_i > r_j of Δ_ij · pair_loss(s_i − s_j), per list
    (Δ_ij = 1 without ``lambda_weights``)."""
    _check_lambda_weights(lambda_weights)
    s, r, valid, keep, weights = _lists(scores, relevance, where, weights, reduction)
    diff = s[..., :, None] - s[..., None, :]
    pairs = r[..., :, None] > r[..., None, :]
    if valid is not None:
        pairs = pairs & valid[..., :, None] & valid[..., None, :]
    terms = pair_loss(diff)
    if lambda_weights is not None:
        terms = terms * jax.lax.stop_gradient(_lambda_weights(lambda_weights, s, r, valid))
    loss = jnp.sum(jnp.where(pairs, terms, 0.0), axis=(-2, -1))
    return _per_list(loss, r, keep, weights, reduction)


def pairwise_logistic_loss(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    lambda_weights: str | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Pairwise logistic (RankNet) loss: every more-relevant item should score higher.

        ℓ(s, r) = Σ_{i, j valid, r_i > r_j} Δ_ij · log(1 + exp(−(s_i − s_j)))

    with Δ_ij = 1, or the LambdaLoss weights chosen by ``lambda_weights`` (see the module
    notes); ``lambda_weights="ndcg"`` is LambdaRank's loss, the NDCG instance of the
    LambdaLoss framework (Wang et al., 2018).

    The log(1 + exp(−d)) is a softplus, exact for any finite d. Pairs of equal relevance
    do not contribute; a list with no such pair has loss 0. The pairs are formed as an
    [..., L, L] array.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, of ``scores``' ndim and broadcastable to its shape; integers
        and booleans are cast.
      lambda_weights: None (every pair counts 1), or the LambdaLoss weight Δ_ij of
        each pair: ``"ndcg"``, ``"dcg"`` or ``"label_diff"`` (see the module notes).
      where, weights, reduction: as in `ranking_softmax_loss`.

    Returns:
      As in `ranking_softmax_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.pairwise_logistic_loss(jnp.array([1.0, 0.0, 2.0]), jnp.array([2, 1, 0]))
      Array(3.7534516, dtype=float32)

    References:
      Burges et al., "Learning to rank using gradient descent" (RankNet), ICML 2005.
    """
    return _pairwise(
        lambda d: jax.nn.softplus(-d), scores, relevance, where, weights, reduction, lambda_weights
    )


def pairwise_hinge_loss(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    margin: float = 1.0,
    lambda_weights: str | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Pairwise hinge (RankSVM) loss: a more-relevant item should score higher by a margin.

        ℓ(s, r) = Σ_{i, j valid, r_i > r_j} Δ_ij · max(0, margin − (s_i − s_j))

    with Δ_ij = 1, or the LambdaLoss weights chosen by ``lambda_weights`` (see the module
    notes).

    Pairs of equal relevance do not contribute. At a kink (s_i − s_j = margin) the
    gradient is the one of the flat side (0). The pairs are formed as an [..., L, L]
    array.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, of ``scores``' ndim and broadcastable to its shape; integers
        and booleans are cast.
      margin: the required score gap, a non-negative number (default 1).
      lambda_weights: None (every pair counts 1), or the LambdaLoss weight Δ_ij of
        each pair: ``"ndcg"``, ``"dcg"`` or ``"label_diff"`` (see the module notes).
      where, weights, reduction: as in `ranking_softmax_loss`.

    Returns:
      As in `ranking_softmax_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> jaxloss.pairwise_hinge_loss(jnp.array([1.0, 0.0, 2.0]), jnp.array([2, 1, 0]))
      Array(5., dtype=float32)

    References:
      Herbrich, Graepel & Obermayer, "Large margin rank boundaries for ordinal
      regression", 2000; Joachims, "Optimizing search engines using clickthrough data"
      (RankSVM), KDD 2002.
    """
    if C._is_concrete_number(margin) and not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"`margin` must be a non-negative finite number, got {margin!r}.")
    # relu's derivative at 0 is 0: the flat side's subgradient at the kink.
    return _pairwise(
        lambda d: jax.nn.relu(margin - d),
        scores,
        relevance,
        where,
        weights,
        reduction,
        lambda_weights,
    )


def approx_ndcg_loss(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """ApproxNDCG: minus the NDCG of smooth ranks, a differentiable surrogate of `ndcg`.

        π̂_i = 1 + Σ_{j valid, j ≠ i} σ((s_j − s_i) / T)
        ℓ(s, r) = −(1 / maxDCG) Σ_{i valid} (2^{r_i} − 1) / log2(1 + π̂_i)

    π̂_i approximates item i's rank (1 + the count of items that score higher) with the
    logistic sigmoid σ at temperature T; as T → 0 the loss tends to −NDCG (`ndcg`, no
    cutoff) where scores do not tie. maxDCG is the DCG of the ordering by relevance; a
    list with no relevant item (maxDCG = 0) has loss 0 with zero gradient. The loss
    lies in [−1, 0]: lower is better. The pairs are formed as an [..., L, L] array.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, of ``scores``' ndim and broadcastable to its shape; integers
        and booleans are cast.
      temperature: T > 0, the sigmoid's temperature (default 1, rax's default;
        TF-Ranking's ``ApproxNDCGLoss`` defaults to 0.1).
      where, weights, reduction: as in `ranking_softmax_loss`.

    Returns:
      As in `ranking_softmax_loss`.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> scores, relevance = jnp.array([2.0, 1.0, 3.0]), jnp.array([2.0, 0.0, 1.0])
      >>> jaxloss.approx_ndcg_loss(scores, relevance).round(4)
      Array(-0.7406, dtype=float32)
      >>> jaxloss.approx_ndcg_loss(scores, relevance, temperature=0.01).round(4)
      Array(-0.7967, dtype=float32)

    References:
      Qin, Liu & Li, "A general approximation framework for direct optimization of
      information retrieval measures", Information Retrieval 13 (2010). The per-list
      loss of TF-Ranking's ``ApproxNDCGLoss`` (which gives padded items a very low score
      where this drops them) and minus rax's ``approx_t12n(ndcg_metric, temperature=T)``.
    """
    C.check_positive("temperature", temperature)
    s, r, valid, keep, weights = _lists(scores, relevance, where, weights, reduction)
    others = ~jnp.eye(s.shape[-1], dtype=bool)
    if valid is not None:
        others = others & valid[..., None, :]
    above = jax.nn.sigmoid((s[..., None, :] - s[..., :, None]) / temperature)
    ranks = 1.0 + jnp.sum(jnp.where(others, above, 0.0), axis=-1)
    dcg = jnp.sum(_gain(r) * _discount(ranks), axis=-1)
    ideal = _max_dcg(r)
    # maxDCG = 0: every gain is 0, so the DCG is 0 too; 0, not −0.0.
    loss = jnp.where(ideal == 0, 0.0, -dcg / jnp.where(ideal == 0, 1.0, ideal))
    return _per_list(loss, r, keep, weights, reduction)


def _check_topn(topn) -> None:
    if topn is not None and (
        isinstance(topn, bool) or not isinstance(topn, (int, np.integer)) or topn < 1
    ):
        raise ValueError(f"`topn` must be a positive int or None (no cutoff), got {topn!r}.")


def _metric(value_fn, scores, relevance, topn, where, weights, reduction):
    """A per-list metric ``value_fn(r, ranks)`` with the family's conventions; NaN for a
    list with a NaN score on a valid item (its ranks would be arbitrary)."""
    _check_topn(topn)
    s, r, valid, keep, weights = _lists(scores, relevance, where, weights, reduction)
    ranks = _ranks(s, valid)
    value = value_fn(r, ranks, ranks <= (s.shape[-1] if topn is None else topn))
    value = jnp.where(jnp.any(jnp.isnan(s), axis=-1), jnp.nan, value)
    return _per_list(value, r, keep, weights, reduction)


def ndcg(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    topn: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Normalized discounted cumulative gain at ``topn`` (NDCG@k): a metric, not a loss.

        DCG@k(s, r) = Σ_{i: k_i ≤ k} (2^{r_i} − 1) / log2(1 + k_i),
        NDCG@k(s, r) = DCG@k(s, r) / DCG@k of the ordering by relevance

    k_i is item i's 1-based rank by decreasing score among the valid items; ties are
    broken by position (the earlier item ranks higher), so the metric is deterministic.
    A list with no relevant item (maxDCG = 0) has NDCG 0. The metric is a step function
    of the scores: its gradient is 0 (use `approx_ndcg_loss` or ``lambda_weights`` to
    train). A NaN score on a valid item gives NaN.

    Args:
      scores: s, floating array [..., L], the lists along the last axis.
      relevance: r ≥ 0, the graded relevance, of ``scores``' ndim and broadcastable to
        its shape; integers and booleans are cast.
      topn: the cutoff k, a positive int, or None (every item counts).
      where: optional boolean item mask of ``scores``' ndim (True = valid item).
      weights: optional non-negative per-list weights, broadcastable to [...].
      reduction: ``"none"`` (per list), ``"sum"`` or ``"mean"`` (Σ w·NDCG / Σ w over
        the lists with a valid item).

    Returns:
      Shape [...] for ``"none"``, else a scalar, in [0, 1]; float32, or float64 for
      float64 inputs.

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> scores = jnp.array([2.0, 1.0, 3.0])
      >>> jaxloss.ndcg(scores, jnp.array([2.0, 0.0, 1.0])).round(6)
      Array(0.796708, dtype=float32)
      >>> jaxloss.ndcg(scores, jnp.array([2.0, 0.0, 1.0]), topn=1).round(6)
      Array(0.333333, dtype=float32)

    References:
      Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM
      TOIS 20 (2002); Burges et al., "Learning to rank using gradient descent", ICML
      2005 (the gain 2^r − 1). Equal to rax ``ndcg_metric(..., topn=k,
      reduce_fn=None)`` and TF-Ranking's NDCG where scores do not tie.
    """

    def value(r, ranks, ranks_in):
        dcg = jnp.sum(jnp.where(ranks_in, _gain(r) * _discount(ranks), 0.0), axis=-1)
        ideal = _max_dcg(r, topn)
        return jnp.where(ideal == 0, 0.0, dcg / jnp.where(ideal == 0, 1.0, ideal))

    return _metric(value, scores, relevance, topn, where, weights, reduction)


def mrr(
    scores: ArrayLike,
    relevance: ArrayLike,
    *,
    topn: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Reciprocal rank of the first relevant item, at ``topn`` (MRR@k): a metric.

        RR@k(s, r) = max_{i: r_i ≥ 1, k_i ≤ k} 1 / k_i        (0 if there is none)

    An item is relevant when r ≥ 1 (rax's and TF-Ranking's rule for graded relevance).
    k_i is item i's 1-based rank by decreasing score among the valid items, ties broken
    by position (the earlier item ranks higher). ``reduction="mean"`` gives the mean
    reciprocal rank. Its gradient is 0 (a step function of the scores); a NaN score on
    a valid item gives NaN.

    Args:
      scores, relevance, topn, where, weights, reduction: as in `ndcg`.

    Returns:
      As in `ndcg`, in [0, 1].

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> scores = jnp.array([[2.0, 1.0, 3.0], [0.5, 2.0, 1.0]])
      >>> relevance = jnp.array([[1, 0, 0], [0, 0, 1]])
      >>> jaxloss.mrr(scores, relevance)
      Array([0.5, 0.5], dtype=float32)
      >>> jaxloss.mrr(scores, relevance, topn=1)
      Array([0., 0.], dtype=float32)

    References:
      Voorhees, "The TREC-8 question answering track report", TREC 1999. Equal to rax
      ``mrr_metric(..., topn=k, reduce_fn=None)`` where scores do not tie.
    """

    def value(r, ranks, ranks_in):
        return jnp.max(jnp.where((r >= 1) & ranks_in, 1.0 / ranks, 0.0), axis=-1, initial=0.0)

    return _metric(value, scores, relevance, topn, where, weights, reduction)
