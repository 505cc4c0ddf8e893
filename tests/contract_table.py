"""The contract-test table: every public jaxloss function, registered once.

Each family adds its ``Case`` entries in its own section below. References are
independent float64 numpy/scipy implementations, never jaxloss itself.
``NOT_IN_TABLE`` names the public names that are not loss or penalty functions
(higher-order helpers, sub-namespaces) with the test file that covers each.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from scipy import special, stats

import jaxloss
from tests.contract import Case

CASES: list[Case] = []
NOT_IN_TABLE: dict[str, str] = {}

N = 6  # leading (batch) axis of every sample input
SHAPE = (N, 5)


def _normal(rng, shape=SHAPE, scale=1.0):
    return rng.normal(size=shape) * scale


# --------------------------------------------------------------------------------------
# Regression: negative log-likelihoods (issue 2)
# --------------------------------------------------------------------------------------


def _pair(rng):
    return (_normal(rng), _normal(rng)), {}


def _pair_extreme():
    p = np.array([[1e30, -1e30, 1e4, -1e4, 0.0]], np.float32)
    return (p, np.zeros_like(p)), {}


CASES += [
    Case(
        "squared_error",
        jaxloss.squared_error,
        _pair,
        lambda p, t: (p - t) ** 2,
        extreme=lambda: ((np.array([1e18, -1e18, 0.0], np.float32), np.zeros(3, np.float32)), {}),
    ),
    Case(
        "absolute_error",
        jaxloss.absolute_error,
        _pair,
        lambda p, t: np.abs(p - t),
        grad_order=1,
        extreme=_pair_extreme,
    ),
    Case(
        "huber",
        jaxloss.huber,
        lambda rng: ((_normal(rng, scale=2.0), _normal(rng)), {"delta": 1.3}),
        lambda p, t, delta: np.where(
            np.abs(p - t) <= delta, 0.5 * (p - t) ** 2, delta * (np.abs(p - t) - 0.5 * delta)
        ),
        grad_order=1,
        extreme=_pair_extreme,
    ),
    Case(
        "log_cosh",
        jaxloss.log_cosh,
        _pair,
        lambda p, t: np.log(np.cosh(p - t)),
        extreme=_pair_extreme,
    ),
    Case(
        "gaussian_nll",
        jaxloss.gaussian_nll,
        lambda rng: ((_normal(rng), _normal(rng)), {"scale": np.exp(_normal(rng, scale=0.5))}),
        lambda m, y, scale: -stats.norm.logpdf(y, loc=m, scale=scale),
        grad_args=(0, 1),
        grad_kwargs=("scale",),
        extreme=lambda: (
            (np.array([0.0, 1e4, 0.0], np.float32), np.array([1.0, -1e4, 0.0], np.float32)),
            {"scale": np.array([1e-6, 1e15, 1e-18], np.float32)},
        ),
        id="gaussian_nll[scale]",
    ),
    Case(
        "gaussian_nll",
        jaxloss.gaussian_nll,
        lambda rng: (
            (_normal(rng), _normal(rng)),
            {"log_scale": _normal(rng, scale=0.5), "full": False},
        ),
        lambda m, y, log_scale, full: (
            -stats.norm.logpdf(y, loc=m, scale=np.exp(log_scale)) - 0.5 * np.log(2 * np.pi)
        ),
        grad_args=(0, 1),
        grad_kwargs=("log_scale",),
        extreme=lambda: (
            (np.array([0.0, 1e4, 0.0], np.float32), np.array([1.0, -1e4, 0.0], np.float32)),
            {"log_scale": np.array([-40.0, 40.0, 80.0], np.float32), "full": False},
        ),
        id="gaussian_nll[log_scale,full=False]",
    ),
    Case(
        "laplace_nll",
        jaxloss.laplace_nll,
        lambda rng: ((_normal(rng), _normal(rng)), {"log_scale": _normal(rng, scale=0.5)}),
        lambda m, y, log_scale: -stats.laplace.logpdf(y, loc=m, scale=np.exp(log_scale)),
        grad_args=(0, 1),
        grad_kwargs=("log_scale",),
        grad_order=1,
        extreme=lambda: (
            (np.array([0.0, 1e30, 0.0], np.float32), np.array([1.0, -1e30, 0.0], np.float32)),
            {"log_scale": np.array([-40.0, 40.0, 80.0], np.float32)},
        ),
    ),
    Case(
        "student_t_nll",
        jaxloss.student_t_nll,
        lambda rng: (
            (_normal(rng), _normal(rng, scale=3.0)),
            {"df": np.exp(_normal(rng, scale=0.5)) + 0.5, "scale": np.exp(_normal(rng, scale=0.3))},
        ),
        lambda m, y, df, scale: -stats.t.logpdf(y, df=df, loc=m, scale=scale),
        grad_args=(0, 1),
        grad_kwargs=("df", "scale"),
        extreme=lambda: (
            (np.array([0.0, 1e12, 0.0], np.float32), np.array([1.0, -1e12, 0.0], np.float32)),
            {"df": np.array([1e-3, 1.0, 1e6], np.float32), "scale": np.float32(1e-5)},
        ),
    ),
    Case(
        "poisson_nll",
        jaxloss.poisson_nll,
        lambda rng: ((_normal(rng), rng.poisson(3.0, size=SHAPE)), {}),
        lambda log_rate, k: -stats.poisson.logpmf(k, np.exp(log_rate)),
        extreme=lambda: (
            (np.array([-80.0, 80.0, 0.0], np.float32), np.array([0, 10**6, 10**9], np.int32)),
            {},
        ),
    ),
]

# --------------------------------------------------------------------------------------
# Information theory (issue 3)
# --------------------------------------------------------------------------------------


def _simplex(rng, shape=SHAPE, zeros=False):
    """Random probability vectors along the last axis; with ``zeros``, some exact zeros."""
    x = rng.uniform(0.1, 1.0, size=shape)
    if zeros:
        x = np.where(rng.random(shape) < 0.35, 0.0, x)
        x[..., 0] = np.where(x.sum(-1) == 0, 1.0, x[..., 0])
    return x / x.sum(-1, keepdims=True)


def _zeros_where_p_is_zero(rng, p):
    """A distribution that is 0 on some (not all) of the classes where ``p`` is 0."""
    q = _simplex(rng, p.shape)
    q = np.where((p == 0) & (rng.random(p.shape) < 0.6), 0.0, q)
    return q / q.sum(-1, keepdims=True)


def _pair_with_zeros(rng):
    p = _simplex(rng, zeros=True)
    return (p, _zeros_where_p_is_zero(rng, p)), {}


def _in_base(nats, base=None):
    return nats if base is None else nats / np.log(base)


def _ref_entropy(p, base=None):
    return _in_base(special.entr(p).sum(-1), base)


def _ref_cross_entropy(p, q, base=None):
    return _in_base(-special.xlogy(p, q).sum(-1), base)


def _ref_kl(p, q, base=None):
    return _in_base(special.rel_entr(p, q).sum(-1), base)


def _ref_js(p, q, base=None):
    m = 0.5 * (p + q)
    return _in_base(0.5 * (special.rel_entr(p, m) + special.rel_entr(q, m)).sum(-1), base)


def _ref_gaussian_kl(mean_p, scale_p, mean_q, scale_q):
    return (
        np.log(scale_q / scale_p) + (scale_p**2 + (mean_p - mean_q) ** 2) / (2 * scale_q**2) - 0.5
    )


# Exact 0/1 probabilities: certain outcomes, zero classes, a 0 of q under a 0 of p.
_P_EXTREME = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [1e-30, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]],
    np.float32,
)
_Q_EXTREME = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [1e-30, 1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [1e-30, 1e-30, 1e-30, 1.0],
    ],
    np.float32,
)
# Logits of ±1e4 and ±1e9, and −inf on some classes (never all of a row).
_LOGITS_EXTREME = np.array(
    [
        [1e4, -1e4, 0.0, -np.inf],
        [1e9, -1e9, -np.inf, 0.0],
        [-1e9, -1e9, 1e9, -np.inf],
        [0.0, 0.0, -np.inf, -np.inf],
    ],
    np.float32,
)
# q has −inf only where p has −inf (KL finite), and ±1e9 where p > 0 (KL ≈ 1e9).
_Q_LOGITS_EXTREME = np.array(
    [
        [-1e4, 1e4, -np.inf, -np.inf],
        [-1e9, 1e9, -np.inf, 0.0],
        [0.0, 0.0, 0.0, 1e9],
        [1e9, -1e9, -np.inf, 0.0],
    ],
    np.float32,
)


CASES += [
    Case(
        "surprisal",
        jaxloss.surprisal,
        lambda rng: ((rng.uniform(0.1, 1.0, size=SHAPE),), {"base": 2}),
        lambda p, base: -np.log(p) / np.log(base),
        extreme=lambda: ((np.array([1.0, 1e-37, 0.5, 1e-7], np.float32),), {}),
    ),
    Case(
        "entropy",
        jaxloss.entropy,
        lambda rng: ((_simplex(rng),), {}),
        _ref_entropy,
        extreme=lambda: ((_P_EXTREME,), {"base": 2}),
    ),
    Case(
        "entropy_from_logits",
        jaxloss.entropy_from_logits,
        lambda rng: ((_normal(rng, scale=2.0),), {"base": 2}),
        lambda z, base: _ref_entropy(np.exp(special.log_softmax(z, axis=-1)), base),
        extreme=lambda: ((_LOGITS_EXTREME,), {}),
    ),
    Case(
        "cross_entropy",
        jaxloss.cross_entropy,
        lambda rng: ((_simplex(rng), _simplex(rng)), {"base": 10}),
        _ref_cross_entropy,
        grad_args=(0, 1),
        extreme=lambda: ((_P_EXTREME, _Q_EXTREME), {}),
    ),
    Case(
        "cross_entropy",
        jaxloss.cross_entropy,
        lambda rng: ((_simplex(rng, zeros=True), _simplex(rng)), {}),
        _ref_cross_entropy,
        grad_args=(0, 1),
        id="cross_entropy[zeros in p]",
    ),
    Case(
        # Finite differences in p across an exact 0 of p log p are undefined (log of a
        # negative number), so only q is differentiated here; see tests/test_information.py.
        "cross_entropy",
        jaxloss.cross_entropy,
        _pair_with_zeros,
        _ref_cross_entropy,
        grad_args=(1,),
        id="cross_entropy[zeros in p and q]",
    ),
    Case(
        "kl_divergence",
        jaxloss.kl_divergence,
        lambda rng: ((_simplex(rng), _simplex(rng)), {"base": 2}),
        _ref_kl,
        grad_args=(0, 1),
        extreme=lambda: ((_P_EXTREME, _Q_EXTREME), {}),
    ),
    Case(
        "kl_divergence",
        jaxloss.kl_divergence,
        _pair_with_zeros,
        _ref_kl,
        grad_args=(1,),
        id="kl_divergence[zeros in p and q]",
    ),
    Case(
        "kl_divergence_from_logits",
        jaxloss.kl_divergence_from_logits,
        lambda rng: ((_normal(rng, scale=2.0), _normal(rng, scale=2.0)), {}),
        lambda zp, zq: _ref_kl(
            np.exp(special.log_softmax(zp, axis=-1)), np.exp(special.log_softmax(zq, axis=-1))
        ),
        grad_args=(0, 1),
        extreme=lambda: ((_LOGITS_EXTREME, _Q_LOGITS_EXTREME), {"base": 2}),
    ),
    Case(
        "js_divergence",
        jaxloss.js_divergence,
        lambda rng: ((_simplex(rng), _simplex(rng)), {"base": 2}),
        _ref_js,
        grad_args=(0, 1),
        # Reversing the classes gives disjoint supports in the first row (JS = log 2).
        extreme=lambda: ((_P_EXTREME, _P_EXTREME[:, ::-1]), {}),
    ),
    # Second-order checks where p = q, the minimum of every divergence: the place a
    # Hessian (a Fisher matrix) is taken, where sign-based accurate forms had zero
    # second derivatives (issue 10, item 1).
    *[
        Case(
            name,
            getattr(jaxloss, name),
            lambda rng, m=make: (lambda x: ((x, x.copy()), {}))(m(rng)),
            ref,
            grad_args=(0, 1),
            id=f"{name}[p = q]",
        )
        for name, make, ref in [
            ("kl_divergence", _simplex, _ref_kl),
            ("cross_entropy", _simplex, _ref_cross_entropy),
            ("js_divergence", _simplex, _ref_js),
            (
                "kl_divergence_from_logits",
                lambda rng: _normal(rng, scale=2.0),
                lambda zp, zq: _ref_kl(
                    np.exp(special.log_softmax(zp, axis=-1)),
                    np.exp(special.log_softmax(zq, axis=-1)),
                ),
            ),
        ]
    ],
    Case(
        "gaussian_kl",
        jaxloss.gaussian_kl,
        lambda rng: (
            (
                _normal(rng),
                np.exp(_normal(rng, scale=0.5)),
                _normal(rng),
                np.exp(_normal(rng, scale=0.5)),
            ),
            {},
        ),
        _ref_gaussian_kl,
        grad_args=(0, 1, 2, 3),
        extreme=lambda: (
            (
                np.array([0.0, 1e4, -1e4, 0.0], np.float32),
                np.array([1e-18, 1e6, 1.0, 1e-18], np.float32),
                np.array([0.0, -1e4, 1e4, 0.0], np.float32),
                np.array([1.0, 1e-6, 1e15, 1e-18], np.float32),
            ),
            {},
        ),
        id="gaussian_kl[scale]",
    ),
    Case(
        "gaussian_kl",
        jaxloss.gaussian_kl,
        lambda rng: (
            (_normal(rng),),
            {"log_scale_p": _normal(rng, scale=0.5), "log_scale_q": _normal(rng, scale=0.5)},
        ),
        lambda mean_p, log_scale_p, log_scale_q: _ref_gaussian_kl(
            mean_p, np.exp(log_scale_p), 0.0, np.exp(log_scale_q)
        ),
        grad_kwargs=("log_scale_p", "log_scale_q"),
        extreme=lambda: (
            (np.array([0.0, 1e4, -1e4, 0.0], np.float32),),
            {
                "mean_q": np.array([0.0, -1e4, 1e4, 1e-30], np.float32),
                "log_scale_p": np.array([-40.0, 40.0, 0.0, 1e-30], np.float32),
                "log_scale_q": np.array([0.0, 20.0, 40.0, -1e-30], np.float32),
            },
        ),
        id="gaussian_kl[log_scale, prior N(0, 1)]",
    ),
]


# --------------------------------------------------------------------------------------
# Classification (issue 3)
# --------------------------------------------------------------------------------------

K = 5  # classes
CLS = (N, K)
_NEG = -np.inf


def _logits(rng):
    return rng.normal(size=CLS) * 2.0


def _class_ids(rng):
    return rng.integers(0, K, size=N)


def _probabilities(rng):
    return rng.dirichlet(np.ones(K), size=N)


def _target(labels, label_smoothing=0.0):
    t = np.eye(K)[labels] if np.issubdtype(np.asarray(labels).dtype, np.integer) else labels
    return (1.0 - label_smoothing) * t + label_smoothing / K


def _softmax_ce_ref(logits, labels, label_smoothing=0.0):
    return -(_target(labels, label_smoothing) * special.log_softmax(logits, axis=-1)).sum(-1)


def _nll_ref(log_probs, labels, label_smoothing=0.0):
    return -(_target(labels, label_smoothing) * log_probs).sum(-1)


# Logits of ±1e4 and ±1e9 and −inf on classes the label puts no mass on.
_EXTREME_LOGITS = np.array(
    [
        [1e4, -1e4, 0.0, _NEG, _NEG],
        [1e9, -1e9, 0.0, 5.0, _NEG],
        [-1e9, 1e9, _NEG, 3.0, 0.0],
    ],
    np.float32,
)
_EXTREME_IDS = np.array([1, 1, 0], np.int32)
_EXTREME_PROBS = np.array(
    [[0.5, 0.5, 0, 0, 0], [0.2, 0.3, 0.4, 0.1, 0], [0.9, 0.0, 0, 0, 0.1]], np.float32
)

CASES += [
    Case(
        "softmax_cross_entropy",
        jaxloss.softmax_cross_entropy,
        lambda rng: ((_logits(rng), _class_ids(rng)), {}),
        _softmax_ce_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {}),
        id="softmax_cross_entropy[class ids]",
    ),
    Case(
        "softmax_cross_entropy",
        jaxloss.softmax_cross_entropy,
        lambda rng: ((_logits(rng), _probabilities(rng)), {}),
        _softmax_ce_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {}),
        id="softmax_cross_entropy[probabilities]",
    ),
    Case(
        "softmax_cross_entropy",
        jaxloss.softmax_cross_entropy,
        lambda rng: ((_logits(rng), _class_ids(rng)), {"label_smoothing": 0.1}),
        _softmax_ce_ref,
        extreme=lambda: ((_EXTREME_LOGITS[:, :2], np.array([1, 0, 0])), {"label_smoothing": 0.1}),
        id="softmax_cross_entropy[class ids,label_smoothing]",
    ),
    Case(
        "softmax_cross_entropy",
        jaxloss.softmax_cross_entropy,
        lambda rng: ((_logits(rng), _probabilities(rng)), {"label_smoothing": 0.2}),
        _softmax_ce_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {"label_smoothing": 0.2}),
        id="softmax_cross_entropy[probabilities,label_smoothing]",
    ),
    Case(
        "nll_loss",
        jaxloss.nll_loss,
        lambda rng: ((special.log_softmax(_logits(rng), axis=-1), _class_ids(rng)), {}),
        _nll_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {}),
        id="nll_loss[class ids]",
    ),
    Case(
        "nll_loss",
        jaxloss.nll_loss,
        lambda rng: ((special.log_softmax(_logits(rng), axis=-1), _probabilities(rng)), {}),
        _nll_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {}),
        id="nll_loss[probabilities]",
    ),
    Case(
        "z_loss",
        jaxloss.z_loss,
        lambda rng: ((_logits(rng),), {}),
        lambda z: special.logsumexp(z, axis=-1) ** 2,
        extreme=lambda: ((_EXTREME_LOGITS,), {}),
    ),
]


def _softmax_focal_ref(logits, labels, gamma):
    log_p = special.log_softmax(logits, axis=-1)
    return -(_target(labels) * (1.0 - np.exp(log_p)) ** gamma * log_p).sum(-1)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid_bce_ref(logits, labels, pos_weight=1.0, label_smoothing=0.0):
    y = (1.0 - label_smoothing) * labels + label_smoothing / 2
    return pos_weight * y * _softplus(-logits) + (1.0 - y) * _softplus(logits)


def _sigmoid_focal_ref(logits, labels, gamma, alpha=None):
    p = special.expit(logits)
    p_t = labels * p + (1.0 - labels) * (1.0 - p)
    alpha_t = 1.0 if alpha is None else alpha * labels + (1.0 - alpha) * (1.0 - labels)
    return alpha_t * (1.0 - p_t) ** gamma * _sigmoid_bce_ref(logits, labels)


def _unit(rng, low=0.0, high=1.0):
    return rng.uniform(low, high, size=SHAPE)


def _binary_labels(rng):
    return (rng.random(SHAPE) < 0.4).astype(np.float64)


# Binary logits of ±100, ±1e4 and ±1e9, each with both labels.
_BINARY_EXTREME = (
    np.array([[100, -100, 1e4, -1e4, 1e9, -1e9, 0]] * 2, np.float32),
    np.array([[1] * 7, [0] * 7], np.float32),
)

CASES += [
    Case(
        "softmax_focal_loss",
        jaxloss.softmax_focal_loss,
        lambda rng: ((_logits(rng), _class_ids(rng)), {"gamma": 2.0}),
        _softmax_focal_ref,
        extreme=lambda: ((_EXTREME_LOGITS * 0.01, _EXTREME_IDS), {"gamma": 0.5}),
        id="softmax_focal_loss[class ids,gamma=2]",
    ),
    Case(
        "softmax_focal_loss",
        jaxloss.softmax_focal_loss,
        lambda rng: ((_logits(rng), _probabilities(rng)), {"gamma": 0.5}),
        _softmax_focal_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {"gamma": 0.5}),
        id="softmax_focal_loss[probabilities,gamma=0.5]",
    ),
    Case(
        "sigmoid_binary_cross_entropy",
        jaxloss.sigmoid_binary_cross_entropy,
        lambda rng: ((_normal(rng, scale=3.0), _unit(rng)), {}),
        _sigmoid_bce_ref,
        grad_args=(0, 1),
        extreme=lambda: (_BINARY_EXTREME, {}),
    ),
    Case(
        "sigmoid_binary_cross_entropy",
        jaxloss.sigmoid_binary_cross_entropy,
        lambda rng: (
            (_normal(rng, scale=3.0), _binary_labels(rng)),
            {"pos_weight": _unit(rng, 0.5, 4.0), "label_smoothing": 0.1},
        ),
        _sigmoid_bce_ref,
        grad_args=(0,),
        grad_kwargs=("pos_weight",),
        extreme=lambda: (_BINARY_EXTREME, {"pos_weight": np.float32(3.0), "label_smoothing": 0.1}),
        id="sigmoid_binary_cross_entropy[pos_weight,label_smoothing]",
    ),
    Case(
        "binary_cross_entropy",
        jaxloss.binary_cross_entropy,
        lambda rng: ((_unit(rng, 0.3, 0.7), _unit(rng)), {}),
        lambda q, y: -(y * np.log(q) + (1.0 - y) * np.log1p(-q)),
        grad_args=(0, 1),
        # Exact 0 and 1 where the label makes the loss finite, and tiny probabilities.
        extreme=lambda: (
            (
                np.array([0.0, 1.0, 0.0, 1.0, 1e-30, 1.0 - 2**-24, 1e-37], np.float32),
                np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0], np.float32),
            ),
            {},
        ),
    ),
    Case(
        "sigmoid_focal_loss",
        jaxloss.sigmoid_focal_loss,
        lambda rng: ((_normal(rng, scale=3.0), _unit(rng)), {"alpha": 0.25, "gamma": 2.0}),
        _sigmoid_focal_ref,
        extreme=lambda: (_BINARY_EXTREME, {"alpha": 0.25, "gamma": 2.0}),
        id="sigmoid_focal_loss[soft labels,alpha,gamma=2]",
    ),
    Case(
        "sigmoid_focal_loss",
        jaxloss.sigmoid_focal_loss,
        lambda rng: ((_normal(rng, scale=3.0), _binary_labels(rng)), {"gamma": 0.5}),
        _sigmoid_focal_ref,
        extreme=lambda: (_BINARY_EXTREME, {"gamma": 0.5}),
        id="sigmoid_focal_loss[hard labels,gamma=0.5]",
    ),
]


# --------------------------------------------------------------------------------------
# Regularization penalties (issue 4)
# --------------------------------------------------------------------------------------

# Penalties take a parameter pytree and return a scalar (`conventions=False`). Every leaf
# carries the leading batch axis, so the vmap check computes one penalty per example.
# References flatten the (dict/list) trees by hand and use numpy only.


def _params(rng):
    return (
        {
            "dense": {"kernel": _normal(rng, (N, 3, 4)), "bias": _normal(rng, (N, 4))},
            "embed": [_normal(rng, (N, 2, 3), scale=2.0)],
        },
    ), {}


def _np_leaves(tree, path=""):
    """``(path, array)`` for every leaf of a tree of dicts and lists, sorted like JAX."""
    if isinstance(tree, dict):
        return [kv for k in sorted(tree) for kv in _np_leaves(tree[k], f"{path}{k}/")]
    if isinstance(tree, (list, tuple)):
        return [kv for i, v in enumerate(tree) for kv in _np_leaves(v, f"{path}{i}/")]
    return [(path[:-1], np.asarray(tree, np.float64))]


def _np_penalty(term, exclude=None):
    def reference(params, **kwargs):
        leaves = [x for p, x in _np_leaves(params) if exclude is None or exclude not in p]
        return np.float64(sum(term(x, **kwargs) for x in leaves))

    return reference


def _np_group_lasso(x, group_axis):
    groups = np.moveaxis(x, group_axis, 0).reshape(x.shape[group_axis], -1)
    return np.sqrt(groups.shape[1]) * np.sqrt((groups**2).sum(axis=1)).sum()


def _np_elastic_net(x, l1_ratio):
    return l1_ratio * np.abs(x).sum() + (1 - l1_ratio) * 0.5 * (x**2).sum()


def _huge(value):
    """Float32 parameters at which each penalty is finite, with an all-zero group."""
    kernel = np.array([[value, 0.0], [-value, 0.0]], np.float32)
    return lambda: (({"kernel": kernel, "bias": np.array([value, 0.0], np.float32)},), {})


_no_bias = jaxloss.path_mask("bias", exclude=True)

CASES += [
    Case(
        "l2_penalty",
        jaxloss.l2_penalty,
        _params,
        _np_penalty(lambda x: 0.5 * (x**2).sum()),
        conventions=False,
        extreme=_huge(1e18),
    ),
    Case(
        "l2_penalty",
        functools.partial(jaxloss.l2_penalty, mask=_no_bias),
        _params,
        _np_penalty(lambda x: 0.5 * (x**2).sum(), exclude="bias"),
        conventions=False,
        id="l2_penalty[mask=path_mask]",
    ),
    Case(
        "l1_penalty",
        jaxloss.l1_penalty,
        _params,
        _np_penalty(lambda x: np.abs(x).sum()),
        grad_order=1,
        conventions=False,
        extreme=_huge(1e30),
    ),
    Case(
        "elastic_net_penalty",
        jaxloss.elastic_net_penalty,
        lambda rng: (_params(rng)[0], {"l1_ratio": 0.3}),
        _np_penalty(_np_elastic_net),
        grad_order=1,
        conventions=False,
        extreme=lambda: (_huge(1e18)()[0], {"l1_ratio": 0.3}),
    ),
    Case(
        "group_lasso_penalty",
        jaxloss.group_lasso_penalty,
        lambda rng: (_params(rng)[0], {"group_axis": -1}),
        _np_penalty(_np_group_lasso),
        conventions=False,
        # Entries of 1e30 would overflow a plain sum of squares; the scaled norm does not,
        # and the all-zero group has the zero subgradient.
        extreme=lambda: (_huge(1e30)()[0], {"group_axis": -1}),
        id="group_lasso_penalty[group_axis=-1]",
    ),
    Case(
        "group_lasso_penalty",
        functools.partial(jaxloss.group_lasso_penalty, mask=_no_bias),
        lambda rng: (_params(rng)[0], {"group_axis": -2}),
        _np_penalty(_np_group_lasso, exclude="bias"),
        conventions=False,
        id="group_lasso_penalty[group_axis=-2,mask=path_mask]",
    ),
]
NOT_IN_TABLE.update(
    {
        "resolve_mask": "tests/test_regularization.py",
        "weight_matrix_mask": "tests/test_regularization.py",
        "path_mask": "tests/test_regularization.py",
        "penalized": "tests/test_regularization.py",
        "transforms": "tests/test_transforms.py",
        "combine_losses": "tests/test_auxiliary.py",
    }
)


# --------------------------------------------------------------------------------------
# Large-vocabulary and vocab-parallel cross-entropy (issue 6)
# --------------------------------------------------------------------------------------

# The fused losses take hidden [N, D] and a weight shared by every token ("unbatched"
# for the vmap check); D and V differ from N so the NaN-poisoning of masked tokens
# touches only their rows of `hidden`. The table's cases use reduction="none" by
# default (the harness reduces), so the wrapper defaults to it; "sum" and "mean" (the
# one-pass gradient) are exercised by the harness's reduction and masking checks.
LV_D, LV_V = 4, 7


def _fused_per_token(hidden, weight, labels, *, reduction="none", **kwargs):
    return jaxloss.fused_linear_cross_entropy(hidden, weight, labels, reduction=reduction, **kwargs)


def _fused_ref(
    hidden,
    weight,
    labels,
    *,
    bias=None,
    weight_layout="dense",
    chunk_size=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_soft_cap=None,
):
    z = hidden @ (weight if weight_layout == "dense" else weight.T)
    if bias is not None:
        z = z + bias
    if logit_soft_cap is not None:
        z = logit_soft_cap * np.tanh(z / logit_soft_cap)
    lse = special.logsumexp(z, axis=-1)
    target = (1.0 - label_smoothing) * np.eye(z.shape[-1])[labels] + label_smoothing / z.shape[-1]
    return lse - (target * z).sum(-1) + z_loss * lse**2


def _fused_make(layout="dense", **options):
    def make(rng):
        shape = (LV_D, LV_V) if layout == "dense" else (LV_V, LV_D)
        hidden, weight = _normal(rng, (N, LV_D)), _normal(rng, shape)
        kwargs = dict(options)
        if "bias" in options:
            kwargs["bias"] = _normal(rng, (LV_V,))
        return (hidden, weight, rng.integers(0, LV_V, size=N)), kwargs

    return make


def _fused_extreme(**options):
    hidden = np.array([[1e4, -1e4, 0.0, 1.0], [1e9, 0.0, -1e9, 0.0], [0.0, 0.0, 0.0, 0.0]])
    weight = np.linspace(-1.0, 1.0, LV_D * LV_V).reshape(LV_D, LV_V)
    kwargs = dict(options)
    if "bias" in options:
        kwargs["bias"] = np.linspace(-2.0, 2.0, LV_V).astype(np.float32)
    args = (hidden.astype(np.float32), weight.astype(np.float32), np.array([0, 3, 6]))
    return args, kwargs


_ALL_OPTIONS = {"bias": True, "label_smoothing": 0.1, "z_loss": 0.01, "logit_soft_cap": 2.5}

# A one-device mesh in this process: vocab_parallel_* run inside shard_map exactly as on
# a real mesh (the collectives are over one shard). tests/test_parallel.py checks them
# on a 2 x 4 mesh of 8 host devices against the unsharded functions.
_MESH = jax.sharding.Mesh(jax.devices()[:1], ("model",))
_STATIC = (bool, int, float, str)


@functools.cache
def _sharded_program(fn, sharded_args, ndims, static):
    """``fn`` inside shard_map over ``_MESH``, jitted once per signature (eager shard_map
    would dispatch op by op)."""
    specs = tuple(
        P(*([None] * (ndim - 1)), "model") if i in sharded_args else P()
        for i, ndim in enumerate(ndims)
    )
    body = lambda args, arrays: fn(*args, **arrays, **dict(static), axis_name="model")  # noqa: E731
    return jax.jit(jax.shard_map(body, mesh=_MESH, in_specs=(specs, P()), out_specs=P()))


def _in_shard_map(fn, sharded_args):
    """``fn`` called inside shard_map; args in ``sharded_args`` split along their last axis."""

    def wrapped(*args, **kwargs):
        static = {k: v for k, v in kwargs.items() if isinstance(v, _STATIC) or v is None}
        arrays = {k: v for k, v in kwargs.items() if k not in static}
        ndims = tuple(np.ndim(a) for a in args)
        program = _sharded_program(fn, sharded_args, ndims, tuple(sorted(static.items())))
        return program(args, arrays)

    return wrapped


def _vocab_parallel_fused_per_token(hidden, weight, labels, *, reduction="none", **kwargs):
    return jaxloss.vocab_parallel_fused_linear_cross_entropy(
        hidden, weight, labels, reduction=reduction, **kwargs
    )


CASES += [
    Case(
        "fused_linear_cross_entropy",
        _fused_per_token,
        _fused_make(chunk_size=4),
        _fused_ref,
        grad_args=(0, 1),
        unbatched=(1,),
        extreme=lambda: _fused_extreme(),
        id="fused_linear_cross_entropy[chunk 4 of 6]",
    ),
    Case(
        "fused_linear_cross_entropy",
        _fused_per_token,
        _fused_make(**_ALL_OPTIONS),
        _fused_ref,
        grad_args=(0, 1),
        grad_kwargs=("bias",),
        unbatched=(1, "bias"),
        extreme=lambda: _fused_extreme(**_ALL_OPTIONS),
        id="fused_linear_cross_entropy[bias,smoothing,z_loss,soft_cap]",
    ),
    Case(
        "vocab_parallel_cross_entropy",
        _in_shard_map(jaxloss.vocab_parallel_cross_entropy, sharded_args=(0,)),
        lambda rng: ((_logits(rng), _class_ids(rng)), {"label_smoothing": 0.1}),
        _softmax_ce_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {"label_smoothing": 0.1}),
        id="vocab_parallel_cross_entropy[1-device mesh,label_smoothing]",
    ),
    Case(
        "vocab_parallel_fused_linear_cross_entropy",
        _in_shard_map(_vocab_parallel_fused_per_token, sharded_args=(1,)),
        _fused_make(z_loss=0.01, chunk_size=4),
        _fused_ref,
        grad_args=(0, 1),
        unbatched=(1,),
        extreme=lambda: _fused_extreme(z_loss=0.01),
        id="vocab_parallel_fused_linear_cross_entropy[1-device mesh]",
    ),
]
