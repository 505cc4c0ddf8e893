"""The migration guide's rows (docs/migrating.md), each one computed both ways.

Every row of the guide's three tables names an id of ``test_migration_row`` below:
``optax-NAME`` rows call ``optax.losses.NAME`` itself; ``torch-NAME`` rows
(``torch.nn.functional.NAME``) and ``keras-NAME`` rows (``keras.losses.NAME``) compare
with a float64 numpy reference written from the peer's documented formula (neither torch
nor keras is a dependency). References that the family tests already have are imported
from them. ``test_every_guide_row_names_a_test`` parses the guide so that the tables and
this file cannot drift apart.
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

import jaxloss
from tests.compiled import jit_call
from tests.contract_table import np_ctc_loss
from tests.test_contrastive import keras_circle
from tests.test_margin import (
    _keras_hinge,
    _torch_hinge_embedding,
    _torch_multi_margin,
    torch_multilabel_margin,
)
from tests.torch_ce_reference import torch_cross_entropy

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "migrating.md"

RNG = np.random.default_rng(15)
N, C, D = 6, 5, 4
Z = RNG.normal(size=(N, C)) * 2.0  # logits
IDS = RNG.integers(0, C, size=N)
ONE_HOT = np.eye(C)[IDS]
P = special.softmax(RNG.normal(size=(N, C)), axis=-1)
Q = special.softmax(RNG.normal(size=(N, C)), axis=-1)
X = RNG.normal(size=(N, D))
Y = RNG.normal(size=(N, D))
W = RNG.normal(size=(N, D))
S = RNG.normal(size=N) * 2.0  # binary scores
SIGNS = RNG.choice(np.array([-1.0, 1.0]), size=N)
B01 = (SIGNS > 0).astype(np.float64)
PROB = special.expit(RNG.normal(size=(N, D)))  # probabilities away from 0 and 1
MULTI = (RNG.random((N, D)) < 0.5).astype(np.float64)  # multi-label 0/1 targets
CW = np.array([0.5, 2.0, 1.0, 0.25, 3.0])  # class weights

ROWS = {}


def row(name, rtol=1e-10, atol=1e-12):
    """Register ``fn(rng) -> (jaxloss value, peer value)`` under the guide's id ``name``."""

    def register(fn):
        assert name not in ROWS, name
        ROWS[name] = (fn, rtol, atol)
        return fn

    return register


def _xent(logits, labels):
    """−Σ t log softmax(z) over the last axis, float64."""
    return -(labels * special.log_softmax(logits, axis=-1)).sum(-1)


class _Compiled:
    """``module``'s functions, each called through a jit shared by the rows (and by the
    other tests of the session, ``tests/compiled.py``): eagerly, each row would compile
    every primitive it meets on its own. Factories (``make_*``) are called directly; the
    calls that need concrete values (optax's dice_loss validation, torch-style concatenated
    CTC targets) call the module eagerly."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        return fn if name.startswith("make_") else functools.partial(jit_call, fn)


J = _Compiled(jaxloss)


# --- optax.losses: calls optax --------------------------------------------------------

L = _Compiled(optax.losses)


@row("optax-squared_error")
def _(rng):
    return J.squared_error(X, Y), L.squared_error(X, Y)


@row("optax-l2_loss")
def _(rng):
    return 0.5 * J.squared_error(X, Y), L.l2_loss(X, Y)


@row("optax-huber_loss")
def _(rng):
    return J.huber(X, Y, delta=0.7), L.huber_loss(X, Y, delta=0.7)


@row("optax-log_cosh")
def _(rng):
    return J.log_cosh(X, Y), L.log_cosh(X, Y)


@row("optax-softmax_cross_entropy")
def _(rng):
    return J.softmax_cross_entropy(Z, P), L.softmax_cross_entropy(Z, P)


@row("optax-safe_softmax_cross_entropy")
def _(rng):
    z = Z.copy()
    z[0, 1] = -np.inf  # a masked-out class without label mass: finite on both sides
    p = P.copy()
    p[0, 1] = 0.0
    p[0] /= p[0].sum()
    return J.softmax_cross_entropy(z, p), L.safe_softmax_cross_entropy(z, p)


@row("optax-softmax_cross_entropy_with_integer_labels")
def _(rng):
    return (
        J.softmax_cross_entropy(Z, IDS),
        L.softmax_cross_entropy_with_integer_labels(Z, IDS),
    )


@row("optax-smooth_labels")
def _(rng):
    peer = L.softmax_cross_entropy(Z, optax.smooth_labels(ONE_HOT, 0.2))
    return J.softmax_cross_entropy(Z, IDS, label_smoothing=0.2), peer


@row("optax-smooth_labels[direct]")
def _(rng):
    peer = optax.smooth_labels(ONE_HOT, 0.2)
    ours = J.smooth_labels(ONE_HOT, 0.2)
    np.testing.assert_array_equal(J.smooth_labels(IDS, 0.2, num_classes=C), ours)
    return ours, peer


@row("optax-poly_loss_cross_entropy")
def _(rng):
    return (
        J.poly_cross_entropy(Z, IDS, epsilon=1.5),
        L.poly_loss_cross_entropy(Z, ONE_HOT, epsilon=1.5),
    )


@row("optax-sigmoid_binary_cross_entropy")
def _(rng):
    return J.sigmoid_binary_cross_entropy(X, PROB), L.sigmoid_binary_cross_entropy(X, PROB)


@row("optax-sigmoid_focal_loss")
def _(rng):
    return (
        J.sigmoid_focal_loss(X, MULTI, alpha=0.25, gamma=2.0),
        L.sigmoid_focal_loss(X, MULTI, alpha=0.25, gamma=2.0),
    )


@row("optax-hinge_loss")
def _(rng):
    return J.hinge_loss(S, SIGNS), L.hinge_loss(S, SIGNS)


@row("optax-perceptron_loss")
def _(rng):
    return J.perceptron_loss(S, SIGNS), L.perceptron_loss(S, SIGNS)


@row("optax-multiclass_hinge_loss")
def _(rng):
    return J.multiclass_hinge_loss(Z, IDS), L.multiclass_hinge_loss(Z, IDS)


@row("optax-multiclass_perceptron_loss")
def _(rng):
    return J.multiclass_perceptron_loss(Z, IDS), L.multiclass_perceptron_loss(Z, IDS)


@row("optax-multiclass_sparsemax_loss")
def _(rng):
    return J.sparsemax_loss(Z, IDS), L.multiclass_sparsemax_loss(Z, IDS)


@row("optax-sparsemax_loss")
def _(rng):
    labels = B01.astype(np.int64)
    two_class = np.stack([S, np.zeros_like(S)], axis=-1)  # class 0 is "label 1"
    return J.sparsemax_loss(two_class, 1 - labels), L.sparsemax_loss(S, labels)


@row("optax-make_fenchel_young_loss")
def _(rng):
    peer = L.make_fenchel_young_loss(jax.scipy.special.logsumexp)
    ours = J.make_fenchel_young_loss(jax.scipy.special.logsumexp)
    return ours(Z, P), peer(Z, P)


@row("optax-kl_divergence")
def _(rng):
    return J.kl_divergence(P, Q), L.kl_divergence(np.log(Q), P)


@row("optax-kl_divergence_with_log_targets")
def _(rng):
    return (
        J.kl_divergence_from_logits(np.log(P), np.log(Q)),
        L.kl_divergence_with_log_targets(np.log(Q), np.log(P)),
    )


@row("optax-convex_kl_divergence")
def _(rng):
    q = 2.0 * Q  # unnormalized predictions
    with pytest.warns(DeprecationWarning, match="generalized_kl_divergence"):
        peer = L.convex_kl_divergence(np.log(q), P)  # deprecated in optax 0.2.8
    return J.generalized_kl_divergence(P, q), peer


@row("optax-generalized_kl_divergence")
def _(rng):
    q = 2.0 * Q
    return J.generalized_kl_divergence(P, q), L.generalized_kl_divergence(np.log(q), P)


@row("optax-cosine_similarity")
def _(rng):
    return J.cosine_similarity(X, Y, eps=1e-3), L.cosine_similarity(X, Y, epsilon=1e-6)


@row("optax-cosine_distance")
def _(rng):
    return J.cosine_distance(X, Y, eps=1e-3), L.cosine_distance(X, Y, epsilon=1e-6)


@row("optax-triplet_margin_loss")
def _(rng):
    return (
        J.triplet_margin_loss(X, Y, W, margin=2.0, eps=0.0),
        L.triplet_margin_loss(X, Y, W, margin=2.0, eps=0.0),
    )


@row("optax-ntxent")
def _(rng):
    e = rng.normal(size=(6, 3))
    labels = np.array([0, 1, 2, 0, 1, 2])
    return (
        J.ntxent_loss(e, labels, temperature=0.2, reduction="mean"),
        L.ntxent(e, labels, temperature=0.2),
    )


@row("optax-ranking_softmax_loss")
def _(rng):
    relevance = rng.integers(0, 3, size=(N, D)).astype(np.float64)
    relevance[:, 0] += 1.0  # every list has a relevant item
    peer = L.ranking_softmax_loss(X, relevance, reduce_fn=None)
    return J.ranking_softmax_loss(X, relevance) * relevance.sum(-1), peer


SEG_PROBS = special.softmax(RNG.normal(size=(2, 3, 4, 3)) * 2.0, axis=-1)  # [B, H, W, C]
SEG_TARGETS = np.eye(3)[RNG.integers(0, 3, size=(2, 3, 4))]


@row("optax-dice_loss")
def _(rng):
    ours = J.tversky_loss(SEG_PROBS, SEG_TARGETS, alpha=0.3, beta=0.7, axis=(1, 2))
    peer = optax.losses.dice_loss(  # eager: optax checks concrete probabilities
        SEG_PROBS,
        SEG_TARGETS,
        alpha=0.3,
        beta=0.7,
        smooth=1.0,
        apply_softmax=False,
        reduction="none",
    )
    return ours, peer


@row("optax-binary_dice_loss")
def _(rng):
    logits = rng.normal(size=(2, 3, 4))
    masks = (rng.random((2, 3, 4)) < 0.4).astype(np.float64)
    ours = J.dice_loss(jax.nn.sigmoid(logits), masks, axis=(1, 2), smooth=2.0)
    return ours, L.binary_dice_loss(logits, masks, smooth=1.0)


@row("optax-multiclass_generalized_dice_loss")
def _(rng):
    logits = rng.normal(size=(2, 3, 4, 3)) * 2.0
    ours = J.multiclass_generalized_dice_loss(
        jax.nn.softmax(logits, axis=-1), SEG_TARGETS, axis=(1, 2), smooth=2.0, reduction="mean"
    )
    return ours, L.multiclass_generalized_dice_loss(logits, SEG_TARGETS, smooth=1.0)


def _ctc_batch(rng):
    logits = rng.normal(size=(3, 6, 4))  # [B, T, K], blank 0
    labels = np.array([[1, 2, 2], [3, 1, 0], [2, 0, 0]])
    logit_lengths = np.array([6, 5, 3])
    label_lengths = np.array([3, 2, 1])
    return logits, labels, logit_lengths, label_lengths


@row("optax-ctc_loss", rtol=1e-9, atol=1e-9)
def _(rng):
    logits, labels, t_len, l_len = _ctc_batch(rng)
    logit_paddings = (np.arange(6)[None] >= t_len[:, None]).astype(np.float64)
    label_paddings = (np.arange(3)[None] >= l_len[:, None]).astype(np.float64)
    ours = J.ctc_loss(
        logits,
        labels,
        logit_lengths=(1 - logit_paddings).sum(-1).astype(np.int32),
        label_lengths=(1 - label_paddings).sum(-1).astype(np.int32),
    )
    return ours, optax.ctc_loss(logits, logit_paddings, labels, label_paddings)


@row("optax-ctc_loss_with_forward_probs", rtol=1e-9, atol=1e-9)
def _(rng):
    logits, labels, t_len, l_len = _ctc_batch(rng)
    logit_paddings = (np.arange(6)[None] >= t_len[:, None]).astype(np.float64)
    label_paddings = (np.arange(3)[None] >= l_len[:, None]).astype(np.float64)
    loss, blank, label = J.ctc_loss_with_forward_probs(
        logits, labels, logit_lengths=t_len, label_lengths=l_len
    )
    peer = L.ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings)
    # optax's last blank row also adds the label states (the documented conversion).
    last = jnp.concatenate([blank[-1, :, :1], jnp.logaddexp(blank[-1, :, 1:], label[-1])], -1)
    ours = (loss, blank.at[-1].set(last), label)
    # States that no alignment reaches, or past the labels: −inf here, near log ε in optax.
    states = np.arange(4)[None, :]
    kept = [np.broadcast_to(states <= l_len[:, None], blank.shape)]
    kept.append(np.broadcast_to(states[:, :3] < l_len[:, None], label.shape))
    kept = [k & (np.asarray(t) > -1e4) for k, t in zip(kept, peer[1:], strict=True)]
    for table, k in zip(ours[1:], kept, strict=True):
        assert np.all(np.asarray(table)[~k] == -np.inf)
    flat = lambda out: jnp.concatenate([out[0], out[1][kept[0]], out[2][kept[1]]])  # noqa: E731
    return flat(ours), flat(peer)


# --- torch.nn.functional: float64 references of the documented formulas ---------------


@row("torch-mse_loss")
def _(rng):
    return J.squared_error(X, Y, reduction="mean"), np.mean((X - Y) ** 2)


@row("torch-l1_loss")
def _(rng):
    return J.absolute_error(X, Y, reduction="mean"), np.mean(np.abs(X - Y))


def _np_huber(r, delta):
    a = np.abs(r)
    return np.where(a < delta, 0.5 * r**2, delta * (a - 0.5 * delta))


@row("torch-huber_loss")
def _(rng):
    return J.huber(X, Y, delta=0.7, reduction="mean"), np.mean(_np_huber(X - Y, 0.7))


@row("torch-smooth_l1_loss")
def _(rng):
    beta, r = 0.7, X - Y  # smooth_l1: 0.5 r²/β if |r| < β, else |r| − 0.5 β
    ref = np.where(np.abs(r) < beta, 0.5 * r**2 / beta, np.abs(r) - 0.5 * beta)
    return J.huber(X, Y, delta=beta, reduction="mean") / beta, np.mean(ref)


@row("torch-binary_cross_entropy")
def _(rng):
    w = rng.random((N, D)) + 0.5  # weight: rescales each element; the mean divides by N·D
    ref = np.mean(-w * (MULTI * np.log(PROB) + (1 - MULTI) * np.log1p(-PROB)))
    return jnp.mean(J.binary_cross_entropy(PROB, MULTI, weights=w)), ref


@row("torch-binary_cross_entropy_with_logits")
def _(rng):
    pw = np.array([0.5, 1.0, 2.0, 3.0])  # pos_weight, one per class (last axis)
    log_sig = -np.logaddexp(0.0, -X)
    ref = -(pw * MULTI * log_sig + (1 - MULTI) * (log_sig - X))
    out = J.sigmoid_binary_cross_entropy(X, MULTI, pos_weight=pw, reduction="mean")
    return out, np.mean(ref)


@row("torch-poisson_nll_loss")
def _(rng):
    # torch's defaults (log_input=True, full=False), and log_input=False with eps and
    # full=True (its Stirling term, for targets > 1 only): the four combinations.
    counts = rng.poisson(2.0, size=(N, D)).astype(np.float64)
    rate = PROB * 3.0
    rate[0, 0] = 0.0  # λ = 0: torch's eps keeps log(λ + eps) finite
    big = np.where(counts > 1, counts, 2.0)
    stirling = np.where(counts > 1, big * np.log(big) - big + 0.5 * np.log(2 * np.pi * big), 0)
    refs, ours = [], []
    for log_input, full in [(True, False), (True, True), (False, False), (False, True)]:
        x = X if log_input else rate
        nll = np.exp(x) - counts * x if log_input else x - counts * np.log(x + 1e-6)
        refs.append(np.mean(nll + (stirling if full else 0.0)))
        ours.append(
            J.poisson_nll(
                x,
                counts,
                log_input=log_input,
                full="stirling" if full else False,
                eps=None if log_input else 1e-6,
                reduction="mean",
            )
        )
    return jnp.stack(ours), np.array(refs)


@row("torch-gaussian_nll_loss")
def _(rng):
    var = rng.random((N, D)) + 0.1
    ref = np.mean(0.5 * (np.log(var) + (X - Y) ** 2 / var))  # full=False
    out = J.gaussian_nll(X, Y, scale=np.sqrt(var), full=False, reduction="mean")
    return out, ref


@row("torch-kl_div")
def _(rng):
    # kl_div(input=log q, target=p, reduction="batchmean") = Σ p (log p − log q) / N
    ref = (P * (np.log(P) - np.log(Q))).sum() / N
    return J.kl_divergence(P, Q, reduction="mean"), ref


@row("torch-cross_entropy")
def _(rng):
    z = rng.normal(size=(N, C, 3)) * 2.0  # [N, C, L]: torch's class axis 1
    ids = rng.integers(0, C, size=(N, 3))
    ids[0, 1] = ids[3, 2] = -100  # torch's default ignore_index
    ref = torch_cross_entropy(
        np.moveaxis(z, 1, -1).reshape(-1, C),
        ids.reshape(-1),
        weight=CW,
        ignore_index=-100,
        label_smoothing=0.1,
        reduction="mean",
    )
    out = J.softmax_cross_entropy(
        z,
        ids,
        axis=1,
        class_weights=CW,
        ignore_index=-100,
        label_smoothing=0.1,
        reduction="mean",
    )
    return out, ref


@row("torch-linear_cross_entropy")
def _(rng):
    # torch's linear_weight is [C, D] (nn.Linear's layout): weight_layout="embedding".
    # Every combination of its options that the fused loss shares, each reduction.
    h = rng.normal(size=(N, D))
    w = rng.normal(size=(C, D))
    b = rng.normal(size=C)
    ids = IDS.copy()
    ids[2] = -100  # the default ignore_index for class ids
    outs, refs = [], []
    for bias in (None, b):
        logits = h @ w.T + (0.0 if bias is None else bias)
        for smoothing in (0.0, 0.15):
            for reduction in ("none", "sum", "mean"):
                ref = torch_cross_entropy(
                    logits, ids, ignore_index=-100, label_smoothing=smoothing, reduction=reduction
                )
                out = J.fused_linear_cross_entropy(
                    h,
                    w,
                    ids,
                    bias=bias,
                    weight_layout="embedding",
                    ignore_index=-100,
                    label_smoothing=smoothing,
                    reduction=reduction,
                    chunk_size=4,
                )
                outs.append(np.ravel(out))
                refs.append(np.ravel(ref))
    return np.concatenate(outs), np.concatenate(refs)


@row("torch-nll_loss")
def _(rng):
    ids = IDS.copy()
    ids[2] = -100
    ref = torch_cross_entropy(Z, ids, weight=CW, ignore_index=-100, reduction="mean")
    log_p = special.log_softmax(Z, axis=-1)
    out = J.nll_loss(log_p, ids, class_weights=CW, ignore_index=-100, reduction="mean")
    return out, ref


@row("torch-multi_margin_loss")
def _(rng):
    # weight=w: each term times w[y]; torch's "mean" divides by N, not by Σ w[y]
    out = J.multiclass_hinge_loss(
        Z, IDS, formulation="weston_watkins", power=2, margin=0.5, class_weights=CW
    )
    return jnp.mean(out), np.mean(_torch_multi_margin(Z, IDS, p=2, margin=0.5, weight=CW))


@row("torch-multilabel_margin_loss")
def _(rng):
    y = np.full((N, C), -1)
    for n in range(N):  # target classes, then -1 padding
        k = rng.integers(0, C + 1)
        y[n, :k] = rng.permutation(C)[:k]
    ref = np.mean(torch_multilabel_margin(Z, y))
    return J.multilabel_margin_loss(Z, y, reduction="mean"), ref


@row("torch-multilabel_soft_margin_loss")
def _(rng):
    log_sig = lambda v: -np.logaddexp(0.0, -v)  # noqa: E731
    ref = -(MULTI * log_sig(X) + (1 - MULTI) * log_sig(-X)).mean(-1)  # mean over classes
    return jnp.mean(J.sigmoid_binary_cross_entropy(X, MULTI), axis=-1).mean(), ref.mean()


@row("torch-soft_margin_loss")
def _(rng):
    ref = np.mean(np.log1p(np.exp(-SIGNS * S)))
    return J.soft_margin_loss(S, SIGNS, reduction="mean"), ref


@row("torch-hinge_embedding_loss")
def _(rng):
    x = np.abs(X)  # distances
    y = rng.choice(np.array([-1.0, 1.0]), size=(N, D))
    out = J.hinge_embedding_loss(x, y, margin=0.8, reduction="mean")
    return out, np.mean(_torch_hinge_embedding(x, y, 0.8))


@row("torch-margin_ranking_loss")
def _(rng):
    s2 = rng.normal(size=N)
    ref = np.mean(np.maximum(0.0, -SIGNS * (S - s2) + 0.25))
    return J.margin_ranking_loss(S, s2, SIGNS, margin=0.25, reduction="mean"), ref


@row("torch-cosine_similarity")
def _(rng):
    ref = (X * Y).sum(-1) / (np.linalg.norm(X, axis=-1) * np.linalg.norm(Y, axis=-1))
    return J.cosine_similarity(X, Y), ref


@row("torch-cosine_embedding_loss")
def _(rng):
    # torch's own cosine: ⟨x₁, x₂⟩ / √((‖x₁‖² + 1e-12)(‖x₂‖² + 1e-12))
    cos = (X * Y).sum(-1) / np.sqrt(((X**2).sum(-1) + 1e-12) * ((Y**2).sum(-1) + 1e-12))
    ref = np.mean(np.where(SIGNS > 0, 1 - cos, np.maximum(0.0, cos - 0.3)))
    return J.cosine_embedding_loss(X, Y, SIGNS, margin=0.3, reduction="mean"), ref


@row("torch-triplet_margin_loss")
def _(rng):
    d = lambda u, v: np.linalg.norm(u - v + 1e-6, axis=-1)  # pairwise_distance: ‖u − v + ε‖  # noqa: E731
    ref = np.mean(np.maximum(d(X, Y) - d(X, W) + 1.0, 0.0))
    return J.triplet_margin_loss(X, Y, W, reduction="mean"), ref


@row("torch-triplet_margin_with_distance_loss")
def _(rng):
    # distance_function=torch.nn.PairwiseDistance(p=1): ‖u − v + 1e-6‖₁; swap=True
    d = lambda u, v: np.abs(u - v + 1e-6).sum(-1)  # noqa: E731
    ref = np.mean(np.maximum(d(X, Y) - np.minimum(d(X, W), d(Y, W)) + 0.5, 0.0))

    def l1(u, v):
        return jnp.sum(jnp.abs(u - v + 1e-6), axis=-1)

    out = J.triplet_margin_with_distance_loss(
        X, Y, W, distance_function=l1, margin=0.5, swap=True, reduction="mean"
    )
    return out, ref


@row("torch-ctc_loss", rtol=1e-9, atol=1e-9)
def _(rng):
    logits, labels, t_len, l_len = _ctc_batch(rng)
    log_probs = np.moveaxis(special.log_softmax(logits, axis=-1), 1, 0)  # torch: [T, N, C]
    # reduction="mean": each loss divided by its target length, then the batch mean
    ref = np.mean(np_ctc_loss(logits, labels, t_len, l_len) / l_len)
    ours = [
        jnp.mean(
            # eager: the concatenated targets' split needs concrete label_lengths
            jaxloss.ctc_loss(
                jnp.moveaxis(log_probs, 0, 1), targets, logit_lengths=t_len, label_lengths=l_len
            )
            / l_len
        )
        # padded [N, S] targets, and torch's concatenated 1-D targets [sum(target_lengths)]
        for targets in (labels, np.concatenate([y[:n] for y, n in zip(labels, l_len, strict=True)]))
    ]
    return jnp.stack(ours), np.array([ref, ref])


# --- keras.losses: float64 references of the documented formulas ---------------------
# Keras calls loss(y_true, y_pred): targets FIRST. Its default reduction
# "sum_over_batch_size" is the mean of the per-example losses (each already a mean over
# the last axis for the elementwise losses), so the jaxloss "mean" over [N, D] equals it.


@row("keras-MeanSquaredError")
def _(rng):
    return J.squared_error(X, Y, reduction="mean"), np.mean(np.mean((Y - X) ** 2, -1))


@row("keras-MeanAbsoluteError")
def _(rng):
    return J.absolute_error(X, Y, reduction="mean"), np.mean(np.mean(np.abs(Y - X), -1))


@row("keras-MeanSquaredLogarithmicError")
def _(rng):
    # Keras: log(max(y, ε) + 1) on both sides, ε = 1e-7 (zeros and negatives floored).
    y_true, y_pred = X.copy(), 2.0 * PROB[::-1]
    y_true[0, 0], y_pred[1, 1] = 0.0, -0.5
    floor = lambda v: np.log(np.maximum(v, 1e-7) + 1.0)  # noqa: E731
    ref = np.mean((floor(y_pred) - floor(y_true)) ** 2, -1).mean()
    return J.mean_squared_logarithmic_error(y_pred, y_true, reduction="mean"), ref


@row("keras-MeanAbsolutePercentageError")
def _(rng):
    # Keras: 100·|y − ŷ| / max(|y|, ε), ε = 1e-7 (a zero target included).
    y_true = Y.copy()
    y_true[0, 0] = 0.0
    ref = np.mean(100.0 * np.abs(y_true - X) / np.maximum(np.abs(y_true), 1e-7), -1).mean()
    return J.mean_absolute_percentage_error(X, y_true, reduction="mean"), ref


@row("keras-Huber")
def _(rng):
    return J.huber(X, Y, delta=1.0, reduction="mean"), np.mean(_np_huber(Y - X, 1.0))


@row("keras-LogCosh")
def _(rng):
    r = X - Y  # keras: r + softplus(−2r) − log 2
    ref = np.mean(r + np.logaddexp(0.0, -2.0 * r) - np.log(2.0))
    return J.log_cosh(X, Y, reduction="mean"), ref


@row("keras-BinaryCrossentropy")
def _(rng):
    # from_logits=True, label_smoothing=0.1: y ← y(1 − ε) + ε/2; mean over the last axis
    y = MULTI * 0.9 + 0.05
    ref = np.mean(np.logaddexp(0.0, X) - y * X)
    out = J.sigmoid_binary_cross_entropy(X, MULTI, label_smoothing=0.1, reduction="mean")
    return out, ref


@row("keras-BinaryFocalCrossentropy")
def _(rng):
    # apply_class_balancing=True, alpha=0.25, gamma=2, from_logits=True,
    # label_smoothing=0.1: y ← y(1 − ε) + ε/2 first, then every term uses it
    y = MULTI * 0.9 + 0.05
    p = special.expit(X)
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * 0.25 + (1 - y) * 0.75
    bce = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    ref = np.mean(alpha_t * (1 - p_t) ** 2 * bce)
    out = J.sigmoid_focal_loss(
        X, MULTI, alpha=0.25, gamma=2.0, label_smoothing=0.1, reduction="mean"
    )
    return out, ref


@row("keras-CategoricalCrossentropy")
def _(rng):
    # from_logits=True, label_smoothing=0.1: y ← y(1 − ε) + ε/C
    ref = np.mean(_xent(Z, ONE_HOT * 0.9 + 0.1 / C))
    out = J.softmax_cross_entropy(Z, ONE_HOT, label_smoothing=0.1, reduction="mean")
    return out, ref


@row("keras-SparseCategoricalCrossentropy")
def _(rng):
    ref = np.mean(_xent(Z, ONE_HOT))  # from_logits=True
    return J.softmax_cross_entropy(Z, IDS, reduction="mean"), ref


@row("keras-CategoricalFocalCrossentropy")
def _(rng):
    # alpha=0.25 (a constant factor), gamma=2, from_logits=True, label_smoothing=0.1:
    # y ← y(1 − ε) + ε/C, then −Σ α y (1 − p)^γ log p
    y = ONE_HOT * 0.9 + 0.1 / C
    p = special.softmax(Z, axis=-1)
    ref = np.mean(-(0.25 * y * (1 - p) ** 2 * np.log(p)).sum(-1))
    out = J.softmax_focal_loss(Z, ONE_HOT, gamma=2.0, label_smoothing=0.1, reduction="mean")
    return 0.25 * out, ref


@row("keras-CategoricalGeneralizedCrossEntropy")
def _(rng):
    # q=0.7: (1 − p^q)/q, p = y_pred at the class id y_true; y_pred probabilities
    y_pred = special.softmax(Z, axis=-1)
    ref = np.mean((1.0 - y_pred[np.arange(N), IDS] ** 0.7) / 0.7)
    out = J.categorical_generalized_cross_entropy(jnp.log(y_pred), IDS, q=0.7, reduction="mean")
    return out, ref


@row("keras-KLDivergence")
def _(rng):
    ref = np.mean((P * np.log(P / Q)).sum(-1))  # y_true = p, y_pred = q (clipped to [ε, 1])
    return J.kl_divergence(P, Q, reduction="mean"), ref


@row("keras-Poisson")
def _(rng):
    rate = PROB + 0.5
    counts = rng.poisson(1.0, size=(N, D)).astype(np.float64)
    ref = np.mean(rate - counts * np.log(rate + 1e-7))  # keras adds ε = 1e-7 in the log
    out = J.poisson_nll(rate, counts, log_input=False, eps=1e-7, full=False, reduction="mean")
    return out, ref


@row("keras-CosineSimilarity")
def _(rng):
    unit = lambda v: v / np.sqrt(np.maximum((v**2).sum(-1, keepdims=True), 1e-12))  # noqa: E731
    ref = np.mean(-(unit(Y) * unit(X)).sum(-1))
    return -J.cosine_similarity(X, Y, reduction="mean"), ref


@row("keras-Hinge")
def _(rng):
    out = jnp.mean(J.hinge_loss(X, MULTI.astype(bool)), axis=-1).mean()
    return out, _keras_hinge(MULTI, X).mean()


@row("keras-SquaredHinge")
def _(rng):
    out = jnp.mean(J.hinge_loss(X, MULTI.astype(bool), squared=True), axis=-1).mean()
    return out, _keras_hinge(MULTI, X, squared=True).mean()


@row("keras-CategoricalHinge")
def _(rng):
    # pos = Σ y·s, neg = max((1 − y)·s) ≥ 0 (the true class counts as 0), max(0, neg − pos + 1)
    pos = (ONE_HOT * Z).sum(-1)
    neg = ((1 - ONE_HOT) * Z).max(-1)
    ref = np.mean(np.maximum(0.0, neg - pos + 1.0))
    padded = jnp.pad(Z, ((0, 0), (0, 1)))  # an extra class of score 0: keras's floor
    return J.multiclass_hinge_loss(padded, IDS, reduction="mean"), ref


@row("keras-Dice", rtol=1e-7)
def _(rng):
    p, t = SEG_PROBS, SEG_TARGETS  # axis=None: one score over every element
    ref = 1 - 2 * (p * t).sum() / (t.sum() + p.sum() + 1e-7)
    return J.dice_loss(p, t, axis=(0, 1, 2, 3), smooth=0.0), ref


@row("keras-Tversky", rtol=1e-7)
def _(rng):
    p, t = SEG_PROBS, SEG_TARGETS
    tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
    ref = 1 - tp / (tp + 0.3 * fp + 0.7 * fn + 1e-7)
    out = J.tversky_loss(p, t, alpha=0.3, beta=0.7, axis=(0, 1, 2, 3), smooth=0.0)
    return out, ref


@row("keras-Circle", rtol=1e-6)
def _(rng):
    # y_pred: L2-normalized embeddings; labels with an anchor without positive (masked)
    e = X / np.linalg.norm(X, axis=-1, keepdims=True)
    labels = np.array([0, 1, 0, 1, 2, 1])
    return J.circle_loss(e, labels, reduction="mean"), keras_circle(labels, e)[1]


# --- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", list(ROWS))
def test_migration_row(x64, name):
    fn, rtol, atol = ROWS[name]
    ours, peer = fn(np.random.default_rng(zlib.crc32(name.encode())))  # order-independent
    assert np.shape(ours) == np.shape(peer), (np.shape(ours), np.shape(peer))
    assert np.all(np.isfinite(np.asarray(peer)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(peer), rtol=rtol, atol=atol)


# An id is ``peer-NAME``, or ``peer-NAME[variant]`` for a second row of the same peer function.
TEST_ID = re.compile(r"^`((?:optax|torch|keras)-\w+(?:\[\w+\])?)`$")


def _guide_ids():
    """The last cell of every body row of the guide's tables (header and rule skipped)."""
    ids = []
    for line in GUIDE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(line) <= set("|- ") or cells[-1] == "Test id":
            continue
        match = TEST_ID.match(cells[-1])
        assert match, f"docs/migrating.md: a table row without a test id: {line!r}"
        peer = match.group(1).split("-", 1)[1].split("[")[0]
        assert f".{peer}(" in cells[0], f"row {match.group(1)} documents {cells[0]}"
        ids.append(match.group(1))
    return ids


def test_every_guide_row_names_a_test():
    ids = _guide_ids()
    assert len(ids) > 60  # the three tables were found
    assert len(ids) == len(set(ids)), "a test id appears in two rows"
    assert set(ids) == set(ROWS), {
        "rows without a test": sorted(set(ids) - set(ROWS)),
        "tests without a row": sorted(set(ROWS) - set(ids)),
    }


def test_every_optax_loss_is_in_the_guide():
    """Each public name of optax.losses has a row or is listed as not covered."""
    text = GUIDE.read_text()
    names = [n for n in dir(optax.losses) if not n.startswith("_")]
    missing = [n for n in names if not re.search(rf"`optax\.(?:losses\.)?{n}\b", text)]
    assert not missing, missing


# The loss functions of torch.nn.functional ("Loss functions" in its documentation,
# torch 2.13) and the loss classes of keras.losses (Keras 3); neither package is a
# dependency, so the lists are written here from their documentation.
TORCH_LOSSES = (
    "binary_cross_entropy binary_cross_entropy_with_logits poisson_nll_loss "
    "cosine_embedding_loss cross_entropy ctc_loss gaussian_nll_loss hinge_embedding_loss "
    "kl_div l1_loss mse_loss margin_ranking_loss multilabel_margin_loss "
    "multilabel_soft_margin_loss multi_margin_loss nll_loss huber_loss smooth_l1_loss "
    "soft_margin_loss triplet_margin_loss triplet_margin_with_distance_loss "
    "linear_cross_entropy"
).split()
KERAS_LOSSES = (
    "BinaryCrossentropy BinaryFocalCrossentropy CTC CategoricalCrossentropy "
    "CategoricalFocalCrossentropy CategoricalGeneralizedCrossEntropy CategoricalHinge Circle "
    "CosineSimilarity Dice Hinge Huber KLDivergence LogCosh MeanAbsoluteError "
    "MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson "
    "SparseCategoricalCrossentropy SquaredHinge Tversky"
).split()


@pytest.mark.parametrize(
    "peer, names", [("torch", TORCH_LOSSES), ("keras", KERAS_LOSSES)], ids=["torch", "keras"]
)
def test_every_torch_and_keras_loss_is_in_the_guide(peer, names):
    """Each peer loss has a tested row in the guide or is named in its table's
    "Not covered" paragraph, which gives the reason."""
    text = GUIDE.read_text()
    section = text.split(f"## {'torch.nn.functional' if peer == 'torch' else 'keras.losses'}")[1]
    section = section.split("\n## ")[0]
    rows = {i.split("-", 1)[1] for i in _guide_ids() if i.startswith(peer + "-")}
    not_covered = section.split("Not covered:")[1] if "Not covered:" in section else ""
    missing = [n for n in names if n not in rows and f"`{n}`" not in not_covered]
    assert not missing, f"{peer} losses neither in a row nor under 'Not covered': {missing}"
