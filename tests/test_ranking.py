"""Ranking losses: padding, ties, empty lists, the Plackett-Luce model, optax, bad input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxloss
from tests.compiled import jit_call
from tests.contract_table import (
    _approx_ndcg_ref,
    _lambda_pairwise_ref,
    _lambda_softmax_ref,
    _listmle_ref,
    _mrr_ref,
    _ndcg_ref,
    _pairwise_ref,
    _ranking_softmax_ref,
)

RNG = np.random.default_rng(11)
B, L = 6, 5
SCORES = RNG.normal(size=(B, L)) * 2.0
RELEVANCE = RNG.integers(0, 4, size=(B, L)).astype(float)
LENGTHS = np.array([5, 3, 1, 4, 0, 2])  # ragged lists, padded at the end (one empty)
VALID = np.arange(L) < LENGTHS[:, None]

REFERENCES = {
    "ranking_softmax_loss": _ranking_softmax_ref,
    "listmle_loss": _listmle_ref,
    "pairwise_logistic_loss": _pairwise_ref(lambda d: np.logaddexp(0.0, -d)),
    "pairwise_hinge_loss": _pairwise_ref(lambda d: max(0.0, 1.0 - d)),
    "approx_ndcg_loss": _approx_ndcg_ref,
}
FNS = {name: jax.jit(getattr(jaxloss, name), static_argnames="reduction") for name in REFERENCES}
HINGE = jax.jit(jaxloss.pairwise_hinge_loss, static_argnames="margin")
PAIR_LOSSES = {
    "pairwise_logistic_loss": lambda d: np.logaddexp(0.0, -d),
    "pairwise_hinge_loss": lambda d: max(0.0, 1.0 - d),
}
LAMBDA = {
    name: jax.jit(getattr(jaxloss, name), static_argnames=("lambda_weights", "reduction"))
    for name in PAIR_LOSSES
}
METRICS = {"ndcg": _ndcg_ref, "mrr": _mrr_ref}
METRIC_FNS = {
    name: jax.jit(getattr(jaxloss, name), static_argnames=("topn", "reduction")) for name in METRICS
}


def _ragged_reference(name, scores, relevance):
    """The reference on each list cut to its valid items (an empty list gives 0)."""
    out = np.zeros(B)
    for b, n in enumerate(LENGTHS):
        if n:
            out[b] = REFERENCES[name](scores[b, :n][None], relevance[b, :n][None])[0]
    return out


def _value_grad_mean(name, scores, relevance, where):
    """FNS[name]'s value, gradient of the sum and mean, in one compilation."""
    grad = jax.grad(lambda s: jnp.sum(FNS[name](s, relevance, where=where)))(scores)
    mean = FNS[name](scores, relevance, where=where, reduction="mean")
    return FNS[name](scores, relevance, where=where), grad, mean


@pytest.mark.parametrize("name", list(REFERENCES))
def test_padded_items_take_no_part_and_get_zero_gradient_even_when_nan(name):
    scores = np.where(VALID, SCORES, np.nan)
    relevance = np.where(VALID, RELEVANCE, np.inf)
    where = jnp.asarray(VALID)
    out, grad, mean = jit_call(_value_grad_mean, name, scores, relevance, where)
    np.testing.assert_allclose(out, _ragged_reference(name, SCORES, RELEVANCE), rtol=1e-12)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.all(np.asarray(grad)[~VALID] == 0)
    # The empty list is dropped from the mean, like a masked example.
    kept = LENGTHS > 0
    np.testing.assert_allclose(mean, np.asarray(out)[kept].mean(), rtol=1e-12)


def test_ranking_softmax_loss_matches_optax():
    where = jnp.asarray(VALID)
    rel = np.where(VALID, RELEVANCE, 0.0)
    mass = rel.sum(-1, keepdims=True)
    target = rel / np.where(mass == 0, 1.0, mass)  # relevance already a distribution
    ours = FNS["ranking_softmax_loss"](SCORES, target, where=where)
    peer = optax.losses.ranking_softmax_loss(SCORES, target, where=where, reduce_fn=None)
    np.testing.assert_allclose(ours, peer, rtol=1e-12, atol=1e-12)
    for reduction, reduce_fn in (("mean", jnp.mean), ("sum", jnp.sum)):
        np.testing.assert_allclose(
            FNS["ranking_softmax_loss"](SCORES, target, where=where, reduction=reduction),
            optax.losses.ranking_softmax_loss(SCORES, target, where=where, reduce_fn=reduce_fn),
            rtol=1e-12,
        )
    # optax does not normalize the relevance: its loss is ours times Σ r.
    peer = optax.losses.ranking_softmax_loss(SCORES, RELEVANCE, reduce_fn=None)
    ours = FNS["ranking_softmax_loss"](SCORES, RELEVANCE)
    np.testing.assert_allclose(np.asarray(ours) * RELEVANCE.sum(-1), peer, rtol=1e-12)


def test_ranking_softmax_list_without_relevant_item_is_zero_with_zero_gradient():
    relevance = RELEVANCE.copy()
    relevance[2] = 0.0
    loss = lambda s: FNS["ranking_softmax_loss"](s, relevance)  # noqa: E731
    assert float(loss(SCORES)[2]) == 0.0
    grad = jax.grad(lambda s: jnp.sum(loss(s)))(SCORES)
    assert np.all(np.asarray(grad)[2] == 0)
    assert np.any(np.asarray(grad)[0] != 0)


def test_listmle_breaks_ties_by_position():
    s = np.array([0.3, -1.0, 2.0])
    # Items 0 and 1 tie: the ordering is (0, 1, 2), the one of relevance (3, 2, 1).
    tied = FNS["listmle_loss"](s, np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(tied, FNS["listmle_loss"](s, np.array([3.0, 2.0, 1.0])))
    # Swapping the tied items' positions swaps the ordering.
    swapped = FNS["listmle_loss"](s[[1, 0, 2]], np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(swapped, FNS["listmle_loss"](s, np.array([2.0, 3.0, 1.0])))
    assert not np.isclose(tied, swapped)


def test_listmle_padding_sorts_apart_from_infinite_relevance():
    s = np.array([[0.5, -1.0, 2.0, 7.0]])
    where = np.array([[True, True, True, False]])
    out = FNS["listmle_loss"](s, np.array([[1.0, np.inf, 0.0, 5.0]]), where=where)
    expected = _listmle_ref(s[:, :3], np.array([[1.0, 2.0, 0.0]]))  # the same ordering
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_listmle_is_a_plackett_luce_negative_log_likelihood():
    s = RNG.normal(size=4) * 1.5
    total = 0.0
    for perm in itertools.permutations(range(4)):
        relevance = np.empty(4)
        relevance[list(perm)] = np.arange(4, 0, -1)  # ranks the items in the order perm
        total += np.exp(-float(FNS["listmle_loss"](s, relevance)))
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.floats(-1e3, 1e3))
def test_ranking_losses_are_shift_invariant_and_non_negative(seed, shift):
    rng = np.random.default_rng(seed)
    s, r = rng.normal(size=(2, L)) * 3.0, rng.integers(0, 3, size=(2, L)).astype(float)
    for name, fn in FNS.items():
        out = np.asarray(fn(s, r))
        if name == "approx_ndcg_loss":  # minus an NDCG
            assert ((out >= -1) & (out <= 0)).all()
        else:
            assert (out >= 0).all()
        np.testing.assert_allclose(fn(s + shift, r), out, rtol=1e-9, atol=1e-9)


def test_pairwise_losses_count_each_ordered_pair_and_use_the_margin():
    s, r = np.array([1.0, 0.0, 2.0]), np.array([2, 1, 0])
    np.testing.assert_allclose(HINGE(s, r, margin=0.5), 0.0 + 1.5 + 2.5)
    np.testing.assert_allclose(HINGE(s, r, margin=0.0), 0.0 + 1.0 + 2.0)
    big = jnp.array([1e9, -1e9, 0.0], jnp.float32)
    out = FNS["pairwise_logistic_loss"](big, jnp.array([0, 1, 2]))
    np.testing.assert_allclose(out, 2e9 + 1e9, rtol=1e-6)  # the third pair is ~exp(-1e9)
    # A well-ordered pair keeps its exp(-d) size instead of rounding to 0.
    tiny = FNS["pairwise_logistic_loss"](jnp.array([0.0, 40.0]), jnp.array([0, 1]))
    np.testing.assert_allclose(tiny, np.exp(-40.0), rtol=1e-6)


BAD_CALLS = [
    (
        lambda: jaxloss.ranking_softmax_loss(
            jnp.zeros(3), jnp.zeros(3), lambda_weights="label_diff"
        ),
        ValueError,
        r"`lambda_weights` must be one of \('ndcg', 'dcg'\) or None, got 'label_diff' "
        r"\(\"label_diff\" weighs pairs",
    ),
    (
        lambda: jaxloss.approx_ndcg_loss(jnp.zeros(3), jnp.zeros(3), temperature=0.0),
        ValueError,
        r"`temperature` must be a positive finite number, got 0.0",
    ),
    (
        lambda: jaxloss.pairwise_logistic_loss(jnp.zeros(3), jnp.zeros(3), lambda_weights="NDCG"),
        ValueError,
        r"`lambda_weights` must be one of \('ndcg', 'dcg', 'label_diff'\) or None, got 'NDCG'",
    ),
    (
        lambda: jaxloss.ndcg(jnp.zeros(3), jnp.zeros(3), topn=0),
        ValueError,
        r"`topn` must be a positive int or None \(no cutoff\), got 0",
    ),
    (
        lambda: jaxloss.mrr(jnp.zeros(3), jnp.zeros(3), topn=2.0),
        ValueError,
        r"`topn` must be a positive int",
    ),
    (
        lambda: jaxloss.listmle_loss(jnp.zeros(()), jnp.zeros(())),
        ValueError,
        r"`scores` must have a list axis",
    ),
    (
        lambda: jaxloss.ranking_softmax_loss(jnp.zeros((3, 4)), jnp.zeros((2, 3, 4))),
        ValueError,
        r"`relevance` of shape \(2, 3, 4\) must have the ndim of `scores` \(3, 4\)",
    ),
    (
        # A per-list array against 4 lists of 4 items: refused, not read along the items.
        lambda: jaxloss.listmle_loss(jnp.zeros((4, 4)), jnp.arange(4.0)),
        ValueError,
        r"`relevance` of shape \(4,\) must have the ndim of `scores` \(4, 4\)",
    ),
    (
        lambda: jaxloss.ranking_softmax_loss(
            jnp.zeros((4, 4)), jnp.ones((4, 4)), where=jnp.ones(4, bool)
        ),
        ValueError,
        r"`where` of shape \(4,\) must have the ndim of `scores` \(4, 4\).*keep\[..., None\]",
    ),
    (
        lambda: jaxloss.pairwise_logistic_loss(
            jnp.zeros((3, 4)), jnp.zeros((3, 4)), where=jnp.ones(3, bool)
        ),
        ValueError,
        r"`where` of shape \(3,\) must have the ndim of `scores` \(3, 4\)",
    ),
    (
        lambda: jaxloss.pairwise_hinge_loss(jnp.zeros(4), jnp.zeros(4), where=jnp.ones(4)),
        TypeError,
        r"`where` must be a boolean mask",
    ),
    (
        lambda: jaxloss.pairwise_hinge_loss(jnp.zeros(4), jnp.zeros(4), margin=-1.0),
        ValueError,
        r"`margin` must be a non-negative finite number",
    ),
    (
        lambda: jaxloss.listmle_loss(jnp.zeros(4, int), jnp.zeros(4)),
        TypeError,
        r"`scores` must be a floating-point array",
    ),
    (
        lambda: jaxloss.ranking_softmax_loss(jnp.zeros((3, 4)), jnp.zeros((3, 4)), weights=[1, 2]),
        ValueError,
        r"`weights` of shape \(2,\) does not broadcast to the loss shape \(3,\)",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_errors_eagerly_and_under_jit(call, error, message):
    with pytest.raises(error, match=message):
        call()
    with pytest.raises(error, match=message):
        jax.jit(call)()


def test_pairwise_hinge_gradient_at_the_kink_is_the_flat_sides():
    """Review 2, item 4: at s_i − s_j = margin the hinge max(0, m − d) has a kink; the
    gradient is the documented subgradient of the flat side (0), not the ½ tie split."""
    relevance = jnp.array([1.0, 0.0])
    grad = jax.grad(lambda s: HINGE(s, relevance, margin=1.0))
    np.testing.assert_array_equal(grad(jnp.array([1.0, 0.0])), [0.0, 0.0])
    # On either side of the kink the derivative is the one-sided one.
    np.testing.assert_array_equal(grad(jnp.array([0.75, 0.0])), [-1.0, 1.0])
    np.testing.assert_array_equal(grad(jnp.array([1.25, 0.0])), [0.0, 0.0])


NEGATIVE = np.array([[0.5, 1.0, -1.0, 2.0], [1.0, -2.0, 0.0, 3.0]])
PADDED = np.array([[1.0, 0.0, -1.0, -1.0], [2.0, 1.0, 0.0, -1.0]])  # TF-Ranking's −1 padding


@pytest.mark.parametrize("name", list(REFERENCES))
def test_negative_relevance_raises_when_concrete_and_is_nan_when_traced(name):
    """Review 2, item 9: relevance is r ≥ 0; TF-Ranking's −1 padding label must not give
    a plausible number. A concrete negative entry raises, naming `relevance` and the fix
    (`where=relevance >= 0`); a traced one makes its list's loss NaN."""
    fn = getattr(jaxloss, name)
    with pytest.raises(ValueError, match=r"`relevance` holds a negative entry \(-1\).*where="):
        fn(NEGATIVE, PADDED)
    out = FNS[name](NEGATIVE, PADDED)  # traced under jit
    assert np.isnan(np.asarray(out)).all()
    one_bad = PADDED.copy()
    one_bad[1] = np.maximum(one_bad[1], 0.0)
    out = np.asarray(FNS[name](NEGATIVE, one_bad))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1], REFERENCES[name](NEGATIVE[1:], one_bad[1:])[0], rtol=1e-12)
    assert np.isnan(np.asarray(FNS[name](NEGATIVE, PADDED, reduction="mean")))


@pytest.mark.parametrize("name", list(REFERENCES))
def test_negative_relevance_on_padded_items_is_ignored(name):
    """Review 2, item 9: the fix for −1 padding is `where=relevance >= 0`: padded items
    may hold any relevance, eagerly and under jit."""
    where = PADDED >= 0
    expected = [
        REFERENCES[name](NEGATIVE[b : b + 1, w], PADDED[b : b + 1, w])[0]
        for b, w in enumerate(where)
    ]
    np.testing.assert_allclose(
        getattr(jaxloss, name)(NEGATIVE, PADDED, where=where), expected, rtol=1e-12
    )
    np.testing.assert_allclose(
        FNS[name](NEGATIVE, PADDED, where=jnp.asarray(where)), expected, rtol=1e-12
    )


@pytest.mark.parametrize("name", list(REFERENCES))
def test_lists_of_length_zero_have_loss_zero_with_zero_gradient(name):
    """Review 2, item 9: a list of no items has loss 0 in every ranking loss (the softmax
    loss raised numpy's "zero-size array"), and the reductions are 0."""
    scores, relevance = jnp.zeros((3, 0)), jnp.zeros((3, 0))
    fn = getattr(jaxloss, name)
    np.testing.assert_array_equal(fn(scores, relevance), np.zeros(3))
    for reduction in ("sum", "mean"):
        assert float(fn(scores, relevance, reduction=reduction)) == 0.0
    grad = jax.grad(lambda s: fn(s, relevance, reduction="mean"))(scores)
    assert grad.shape == (3, 0)


def _lambda_value_and_grad(name, kind, scores, relevance, where):
    """LAMBDA[name]'s value and the gradient of its sum, in one compilation."""
    grad = jax.grad(lambda s: jnp.sum(LAMBDA[name](s, relevance, lambda_weights=kind, where=where)))
    return LAMBDA[name](scores, relevance, lambda_weights=kind, where=where), grad(scores)


@pytest.mark.parametrize("kind", ["ndcg", "dcg", "label_diff"])
@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_lambda_weights_match_the_lambdaloss_formula_on_ragged_lists(name, kind):
    """Δ_ij from Wang et al. (2018), ranks of the valid items only (padding is NaN)."""
    reference = _lambda_pairwise_ref(PAIR_LOSSES[name], kind)
    scores = np.where(VALID, SCORES, np.nan)
    where = jnp.asarray(VALID)
    out, g = jit_call(_lambda_value_and_grad, name, kind, scores, RELEVANCE, where)
    expected = np.zeros(B)
    for b, n in enumerate(LENGTHS):
        if n:
            expected[b] = reference(SCORES[b, :n][None], RELEVANCE[b, :n][None])[0]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.all(g[~VALID] == 0)


@pytest.mark.parametrize("kind", ["ndcg", "dcg"])
def test_softmax_lambda_weights_match_tf_ranking_item_weights_on_ragged_lists(kind):
    """−Σ λ_i log softmax(s)_i, λ_i = G(r_i)/log2(1 + k_i) (÷ maxDCG), ranks of the valid
    items only; the weights take no gradient."""
    fn = jax.jit(jaxloss.ranking_softmax_loss, static_argnames="lambda_weights")
    scores = np.where(VALID, SCORES, np.nan)
    where = jnp.asarray(VALID)
    out = fn(scores, RELEVANCE, lambda_weights=kind, where=where)
    expected = np.zeros(B)
    for b, n in enumerate(LENGTHS):
        if n:
            expected[b] = _lambda_softmax_ref(kind)(SCORES[b, :n][None], RELEVANCE[b, :n][None])[0]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    # ∂ℓ/∂s = Σλ · softmax(s) − λ with λ held fixed.
    s, r = SCORES[0], RELEVANCE[0]
    gains = 2.0**r - 1.0
    ranks = np.empty(L)
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, L + 1)
    lam = gains / np.log2(1.0 + ranks)
    if kind == "ndcg":
        lam = lam / (np.sort(gains)[::-1] / np.log2(np.arange(2, L + 2))).sum()
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    grad = jax.grad(lambda x: fn(x, r, lambda_weights=kind))(s)
    np.testing.assert_allclose(grad, lam.sum() * p - lam, rtol=1e-10, atol=1e-14)


def test_lambda_weights_match_rax_documented_example():
    """rax's lambdaweights module example: pairwise_logistic_loss(scores, labels,
    lambdaweight_fn=labeldiff_lambdaweight) = 1.8923712, a mean over its 3 pairs."""
    s, r = jnp.array([1.2, 0.4, 1.9]), jnp.array([1.0, 2.0, 0.0])
    out = jaxloss.pairwise_logistic_loss(s, r, lambda_weights="label_diff")
    np.testing.assert_allclose(out / 3, 1.8923712, rtol=1e-6)


def test_ndcg_lambda_weights_are_the_dcg_weights_over_the_ideal_dcg_and_take_no_gradient():
    s, r = SCORES[0], RELEVANCE[0]
    gains = 2.0**r - 1.0
    ideal = (np.sort(gains)[::-1] / np.log2(np.arange(2, L + 2))).sum()
    for name in PAIR_LOSSES:
        dcg = LAMBDA[name](s, r, lambda_weights="dcg")
        np.testing.assert_allclose(LAMBDA[name](s, r, lambda_weights="ndcg"), dcg / ideal)
    # Δ is a constant of the current ranking: the gradient of Σ Δ_ij softplus(s_j − s_i)
    # is Σ Δ_ij σ(s_j − s_i) (e_j − e_i), with no term from Δ.
    ranks = np.empty(L)
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, L + 1)
    disc = 1.0 / np.log2(1.0 + ranks)
    expected = np.zeros(L)
    for i in range(L):
        for j in range(L):
            if r[i] > r[j]:
                slope = (
                    abs(gains[i] - gains[j]) * abs(disc[i] - disc[j]) / (1 + np.exp(s[i] - s[j]))
                )
                expected[i] -= slope
                expected[j] += slope
    grad = jax.grad(lambda x: LAMBDA["pairwise_logistic_loss"](x, r, lambda_weights="dcg"))
    np.testing.assert_allclose(grad(s), expected, rtol=1e-12, atol=1e-15)


def _metric_cases(name, scores, relevance, where):
    """Per cutoff (None, 2) the metric per list and its mean; the gradient of the sum."""
    fn = METRIC_FNS[name]
    outputs = [
        (
            fn(scores, relevance, topn=topn, where=where),
            fn(scores, relevance, topn=topn, where=where, reduction="mean"),
        )
        for topn in (None, 2)
    ]
    grad = jax.grad(lambda s: fn(s, relevance, where=where, reduction="sum"))(scores)
    return outputs, grad


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_on_ragged_lists_with_a_cutoff(name):
    scores = np.where(VALID, SCORES, np.nan)
    where = jnp.asarray(VALID)
    outputs, grad = jit_call(_metric_cases, name, scores, RELEVANCE, where)
    for topn, (out, mean) in zip((None, 2), outputs, strict=True):
        expected = np.zeros(B)
        for b, n in enumerate(LENGTHS):
            if n:
                expected[b] = METRICS[name](SCORES[b, :n][None], RELEVANCE[b, :n][None], topn)[0]
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(mean, expected[LENGTHS > 0].mean(), rtol=1e-12)
    assert np.all(np.asarray(grad) == 0)


def test_metrics_match_rax_documented_values():
    """rax's metrics module: ndcg_metric = 0.79670763 and its batch mean 0.8983538."""
    scores = jnp.array([[2.0, 1.0, 3.0], [1.0, 0.5, 1.5]])
    labels = jnp.array([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = METRIC_FNS["ndcg"](scores, labels)
    np.testing.assert_allclose(out[0], 0.79670763, rtol=1e-6)
    np.testing.assert_allclose(out.mean(), 0.8983538, rtol=1e-6)


def test_metrics_break_ties_by_position_and_follow_the_relevance_rules():
    tied = np.zeros(3)
    # Equal scores: the earlier item ranks higher.
    np.testing.assert_allclose(METRIC_FNS["mrr"](tied, np.array([0.0, 1.0, 0.0])), 0.5)
    np.testing.assert_allclose(METRIC_FNS["mrr"](tied, np.array([1.0, 1.0, 0.0])), 1.0)
    expected = (1.0 / np.log2(3.0)) / 1.0  # gain 1 at rank 2, ideal gain 1 at rank 1
    np.testing.assert_allclose(METRIC_FNS["ndcg"](tied, np.array([0.0, 1.0, 0.0])), expected)
    # MRR: relevant means r ≥ 1 (rax, TF-Ranking); no relevant item gives 0.
    np.testing.assert_allclose(
        METRIC_FNS["mrr"](np.array([3.0, 2.0, 1.0]), np.array([0.5, 0, 2])), 1 / 3
    )
    assert float(METRIC_FNS["mrr"](np.array([3.0, 2.0]), np.array([0.5, 0.0]))) == 0.0
    # NDCG: a list with no relevant item is 0; a NaN score on a valid item is NaN.
    assert float(METRIC_FNS["ndcg"](np.array([3.0, 2.0]), np.array([0.0, 0.0]))) == 0.0
    for fn in METRIC_FNS.values():
        assert np.isnan(float(fn(np.array([np.nan, 2.0]), np.array([1.0, 0.0]))))


def test_approx_ndcg_tends_to_minus_ndcg_as_the_temperature_falls():
    """Qin et al. (2010): the sigmoid rank tends to the rank as T → 0."""
    scores = np.stack([RNG.permutation(L) for _ in range(B)]) * 0.5
    fn = jax.jit(jaxloss.approx_ndcg_loss, static_argnames="temperature")
    exact = -np.asarray(METRIC_FNS["ndcg"](scores, RELEVANCE))
    np.testing.assert_allclose(fn(scores, RELEVANCE, temperature=1e-3), exact, rtol=1e-12)
    assert np.abs(np.asarray(fn(scores, RELEVANCE, temperature=1.0)) - exact).max() > 1e-3
    # A list with no relevant item: 0 (not −0.0) with zero gradient.
    r = np.zeros(L)
    assert np.signbit(np.asarray(fn(scores[0], r))) == False  # noqa: E712
    np.testing.assert_array_equal(jax.grad(fn)(scores[0], r), np.zeros(L))
