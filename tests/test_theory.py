"""Identities of docs/theory.md (§7, §10, §11) that tie a family to the likelihoods of §2–§4.

Each margin, ranking or contrastive loss below is computed a second way, as a
classification NLL of jaxloss (`softmax_cross_entropy`, `sigmoid_binary_cross_entropy`)
applied to the quantities the theory names: score differences, similarity matrices. Those
two losses are checked against float64 references in tests/test_classification.py; the
similarity matrices here are formed with numpy.
"""

from __future__ import annotations

import numpy as np

import jaxloss

RNG = np.random.default_rng(26)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_soft_margin_is_the_binary_cross_entropy_in_plus_minus_one_labels():
    """§7: log(1 + e^(−y·s)) is the NLL of y under P(y = +1) = σ(s)."""
    s = RNG.normal(size=20) * 3.0
    y = RNG.choice(np.array([-1, 1]), size=20)
    np.testing.assert_allclose(
        jaxloss.soft_margin_loss(s, y),
        jaxloss.sigmoid_binary_cross_entropy(s, (y + 1) / 2.0),
        rtol=1e-6,
    )


def test_softmax_cross_entropy_is_a_smooth_multiclass_perceptron_loss():
    """§7: max_j s_j − s_y ≤ log Σ_j e^(s_j) − s_y ≤ max_j s_j − s_y + log C."""
    c = 7
    s = RNG.normal(size=(50, c)) * 5.0
    y = RNG.integers(0, c, size=50)
    hard = np.asarray(jaxloss.multiclass_perceptron_loss(s, y))
    soft = np.asarray(jaxloss.softmax_cross_entropy(s, y))
    assert np.all(hard <= soft + 1e-5)
    assert np.all(soft <= hard + np.log(c) + 1e-5)
    assert np.any(soft - hard > 0.1)  # the bounds are not trivially met by equal values


def test_pairwise_logistic_loss_of_two_items_is_a_bradley_terry_nll():
    """§10: a pair with r_i > r_j contributes −log σ(s_i − s_j)."""
    s = RNG.normal(size=(10, 2)) * 2.0
    out = jaxloss.pairwise_logistic_loss(s, np.array([[2.0, 1.0]]))
    expected = jaxloss.sigmoid_binary_cross_entropy(s[:, 0] - s[:, 1], np.ones(10))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_ranking_softmax_loss_with_one_relevant_item_is_softmax_cross_entropy():
    """§10: with one relevant item i, the listwise loss is −log softmax(s)_i (any grade)."""
    s = RNG.normal(size=(6, 5)) * 2.0
    ids = RNG.integers(0, 5, size=6)
    relevance = np.eye(5)[ids] * RNG.uniform(0.5, 3.0, size=(6, 1))
    np.testing.assert_allclose(
        jaxloss.ranking_softmax_loss(s, relevance),
        jaxloss.softmax_cross_entropy(s, ids),
        rtol=1e-6,
    )


def test_clip_loss_is_softmax_cross_entropy_over_the_batch_in_both_directions():
    """§11: InfoNCE classifies the positive among the batch; CLIP averages both directions."""
    x, y, tau = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4)), 0.2
    sim = _unit(x) @ _unit(y).T / tau
    ids = np.arange(6)
    expected = 0.5 * (
        np.asarray(jaxloss.softmax_cross_entropy(sim, ids))
        + np.asarray(jaxloss.softmax_cross_entropy(sim.T, ids))
    )
    np.testing.assert_allclose(jaxloss.clip_loss(x, y, temperature=tau), expected, rtol=1e-5)


def test_siglip_loss_is_a_sum_of_binary_cross_entropies_per_pair():
    """§11: pair (i, j) is a Bernoulli NLL with label 1[i = j] and logit t·cos + b."""
    x, y = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    logits = np.exp(1.2) * _unit(x) @ _unit(y).T - 2.0
    per_pair = jaxloss.sigmoid_binary_cross_entropy(logits, np.eye(6))
    np.testing.assert_allclose(
        jaxloss.siglip_loss(x, y, logit_scale=1.2, logit_bias=-2.0),
        np.asarray(per_pair).sum(-1),
        rtol=1e-5,
    )
