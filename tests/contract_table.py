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
# Regression: negative log-likelihoods
# --------------------------------------------------------------------------------------


def _ref_torch_poisson_nll(x, k, *, log_input=True, full=False, eps=1e-8):
    """PyTorch's documented poisson_nll_loss, unreduced: exp(x) − k·x (log_input), else
    x − k·log(x + eps); full adds k log k − k + ½ log(2πk) where k > 1."""
    k = np.asarray(k, np.float64)
    loss = np.exp(x) - k * x if log_input else x - k * np.log(x + eps)
    if full:
        kk = np.where(k > 1, k, 2.0)
        loss = loss + np.where(k > 1, kk * np.log(kk) - kk + 0.5 * np.log(2 * np.pi * kk), 0.0)
    return loss


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
    Case(
        "poisson_nll",
        functools.partial(jaxloss.poisson_nll, log_input=False, full="stirling"),
        lambda rng: ((rng.uniform(0.5, 4.0, size=SHAPE), rng.poisson(2.0, size=SHAPE)), {}),
        lambda rate, k: _ref_torch_poisson_nll(rate, k, log_input=False, full=True),
        extreme=lambda: (
            (np.array([0.0, 1e6, 1e-3], np.float32), np.array([0, 10**6, 10**9], np.int32)),
            {},
        ),
        id="poisson_nll[rate,stirling]",
    ),
    Case(
        "mean_absolute_percentage_error",
        jaxloss.mean_absolute_percentage_error,
        # targets away from 0, where a rounded input changes the ratio little
        lambda rng: (
            (_normal(rng), rng.choice([-1.0, 1.0], SHAPE) * rng.uniform(0.5, 3, SHAPE)),
            {},
        ),
        lambda p, t, eps=1e-7: 100 * np.abs(t - p) / np.maximum(np.abs(t), eps),  # Keras
        grad_order=1,
        extreme=lambda: (
            (np.array([1e30, -1e30, 3.0], np.float32), np.array([0.0, 1e-30, -1e30], np.float32)),
            {"eps": 1e-3},
        ),
    ),
    Case(
        "mean_squared_logarithmic_error",
        jaxloss.mean_squared_logarithmic_error,
        lambda rng: ((rng.uniform(0.1, 5.0, SHAPE), rng.uniform(0.1, 5.0, SHAPE)), {}),
        # Keras: (log(max(ŷ, ε) + 1) − log(max(y, ε) + 1))², log(x + 1) as log1p
        lambda p, t, eps=1e-7: (np.log1p(np.maximum(p, eps)) - np.log1p(np.maximum(t, eps))) ** 2,
        extreme=lambda: (
            (np.array([3e38, -1e30, 0.0], np.float32), np.array([0.0, 1e30, 3e38], np.float32)),
            {},
        ),
    ),
]

# --------------------------------------------------------------------------------------
# Information theory
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
        # Finite differences in p step below an exact 0 of p, a negative probability that
        # is NaN under jit: q only here (the p-gradient at 0, −log q: test_information).
        lambda rng: ((_simplex(rng, zeros=True), _simplex(rng)), {}),
        _ref_cross_entropy,
        grad_args=(1,),
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
    # second derivatives.
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
# Classification
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


def _softmax_focal_ref(logits, labels, gamma, label_smoothing=0.0):
    log_p = special.log_softmax(logits, axis=-1)
    t = _target(labels, label_smoothing)
    return -(t * (1.0 - np.exp(log_p)) ** gamma * log_p).sum(-1)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid_bce_ref(logits, labels, pos_weight=1.0, label_smoothing=0.0):
    y = (1.0 - label_smoothing) * labels + label_smoothing / 2
    return pos_weight * y * _softplus(-logits) + (1.0 - y) * _softplus(logits)


def _sigmoid_focal_ref(logits, labels, gamma, alpha=None, label_smoothing=0.0):
    """Lin et al. (2017), with the labels smoothed first as Keras does: (1 − ε)·y + ε/2."""
    labels = (1.0 - label_smoothing) * labels + label_smoothing / 2
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
        "softmax_focal_loss",
        jaxloss.softmax_focal_loss,
        lambda rng: ((_logits(rng), _class_ids(rng)), {"gamma": 2.0, "label_smoothing": 0.15}),
        _softmax_focal_ref,
        extreme=lambda: (
            (_EXTREME_LOGITS[:, :2] * 0.01, np.array([1, 0, 0])),
            {"gamma": 0.5, "label_smoothing": 0.15},
        ),
        id="softmax_focal_loss[class ids,gamma=2,label_smoothing]",
    ),
    Case(
        "softmax_focal_loss",
        jaxloss.softmax_focal_loss,
        lambda rng: ((_logits(rng), _probabilities(rng)), {"gamma": 0.5, "label_smoothing": 0.2}),
        _softmax_focal_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {"gamma": 0.5, "label_smoothing": 0.2}),
        id="softmax_focal_loss[probabilities,gamma=0.5,label_smoothing]",
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
    Case(
        "sigmoid_focal_loss",
        jaxloss.sigmoid_focal_loss,
        lambda rng: (
            (_normal(rng, scale=3.0), _binary_labels(rng)),
            {"alpha": 0.25, "gamma": 2.0, "label_smoothing": 0.1},
        ),
        _sigmoid_focal_ref,
        extreme=lambda: (_BINARY_EXTREME, {"alpha": 0.25, "gamma": 2.0, "label_smoothing": 0.1}),
        id="sigmoid_focal_loss[hard labels,alpha,gamma=2,label_smoothing]",
    ),
]


def _gce_ref(logits, labels, q=0.5):
    """Zhang & Sabuncu (2018), eq. 6: Σ_c t_c (1 − p_c^q)/q, p = softmax(z)."""
    p = special.softmax(logits, axis=-1)
    return (_target(labels) * (1.0 - p**q) / q).sum(-1)


CASES += [
    Case(
        "categorical_generalized_cross_entropy",
        jaxloss.categorical_generalized_cross_entropy,
        lambda rng: ((_logits(rng), _class_ids(rng)), {}),
        _gce_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {}),
        id="categorical_generalized_cross_entropy[class ids]",
    ),
    Case(
        "categorical_generalized_cross_entropy",
        jaxloss.categorical_generalized_cross_entropy,
        lambda rng: ((_logits(rng), _probabilities(rng)), {"q": 0.7}),
        _gce_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {"q": 0.7}),
        id="categorical_generalized_cross_entropy[probabilities,q=0.7]",
    ),
]


def _smooth_labels_ref(labels, alpha, num_classes=None):
    """Szegedy et al. (2016), optax.smooth_labels: (1 − α)·y + α/K, y one-hot for ids."""
    if np.issubdtype(np.asarray(labels).dtype, np.integer):
        labels = np.eye(num_classes)[labels]
    return (1.0 - alpha) * labels + alpha / labels.shape[-1]


CASES += [
    Case(
        # A label transform, not a loss: no where/weights/reduction. alpha is a scalar
        # shared by the batch.
        "smooth_labels",
        jaxloss.smooth_labels,
        lambda rng: ((_probabilities(rng), np.array(0.15)), {}),
        _smooth_labels_ref,
        grad_args=(0, 1),
        conventions=False,
        unbatched=(1,),
        extreme=lambda: ((_EXTREME_PROBS, np.float32(1.0)), {}),
        id="smooth_labels[probabilities]",
    ),
    Case(
        "smooth_labels",
        jaxloss.smooth_labels,
        lambda rng: ((_class_ids(rng), np.array(0.3)), {"num_classes": K}),
        _smooth_labels_ref,
        grad_args=(1,),
        conventions=False,
        unbatched=(1,),
        id="smooth_labels[class ids]",
    ),
]


# --------------------------------------------------------------------------------------
# Regularization penalties
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
# Large-vocabulary and vocab-parallel cross-entropy
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


# fused_linear_token_log_probs: log softmax(z/T)[y] of z = h·W (+ b), the fused
# counterpart of token_log_probs; tests/test_fused_language_model.py checks the entropy
# output and every gradient against float64 references at several chunk sizes.
def _fused_log_probs_ref(
    hidden,
    weight,
    labels,
    *,
    bias=None,
    weight_layout="dense",
    temperature=1.0,
    logit_soft_cap=None,
    chunk_size=None,
    where=None,
):
    z = hidden @ (weight if weight_layout == "dense" else weight.T)
    if bias is not None:
        z = z + bias
    if logit_soft_cap is not None:
        z = logit_soft_cap * np.tanh(z / logit_soft_cap)
    log_p = special.log_softmax(z / temperature, axis=-1)
    out = log_p[np.arange(len(labels)), labels]
    return out if where is None else np.where(where, out, 0.0)


def _fused_log_probs_make(layout="dense", **options):
    make = _fused_make(layout, **options)

    def with_mask(rng):
        args, kwargs = make(rng)
        return args, {**kwargs, "where": rng.random(N) < 0.7}

    return with_mask


def _transposed_weight(inputs):
    (hidden, weight, labels), kwargs = inputs
    return (hidden, np.ascontiguousarray(weight.T), labels), kwargs


CASES += [
    Case(
        "fused_linear_token_log_probs",
        jaxloss.fused_linear_token_log_probs,
        _fused_log_probs_make(chunk_size=4, temperature=1.5),
        _fused_log_probs_ref,
        grad_args=(0, 1),
        unbatched=(1,),
        conventions=False,
        extreme=lambda: _fused_extreme(),
        id="fused_linear_token_log_probs[chunk 4 of 6,temperature]",
    ),
    Case(
        "fused_linear_token_log_probs",
        functools.partial(jaxloss.fused_linear_token_log_probs, weight_layout="embedding"),
        _fused_log_probs_make("embedding", bias=True, logit_soft_cap=2.5, chunk_size=5),
        functools.partial(_fused_log_probs_ref, weight_layout="embedding"),
        grad_args=(0, 1),
        grad_kwargs=("bias",),
        unbatched=(1, "bias"),
        conventions=False,
        extreme=lambda: _transposed_weight(_fused_extreme(bias=True, logit_soft_cap=2.5)),
        id="fused_linear_token_log_probs[embedding,bias,soft_cap,chunk 5 of 6]",
    ),
]


# fused_linear_policy_gradient_loss: policy_gradient_loss (+ kl_coef × the KL
# estimator, aggregated the same way) of log softmax(z/T)[y], z = h·W (+ b);
# tests/test_fused_policy_gradient.py checks it against the materialized loss in value and
# every gradient (aggregations, KL estimators, ties of min and clip, chunk sizes).
PG_T, PG_D, PG_V = 4, 3, 7


def _fused_pg_ref(
    hidden,
    weight,
    labels,
    old_log_probs,
    advantages,
    *,
    bias=None,
    weight_layout="dense",
    temperature=1.0,
    clip_epsilon=0.2,
    clip_epsilon_high=None,
    reference_log_probs=None,
    kl_coef=0.0,
    kl_estimator="k3",
    aggregation="token_mean",
    max_length=None,
    where=None,
    chunk_size=None,
):
    z = hidden @ (weight if weight_layout == "dense" else weight.T)
    if bias is not None:
        z = z + bias
    log_p = special.log_softmax(z / temperature, axis=-1)
    lp = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    options = dict(clip_epsilon=clip_epsilon, clip_epsilon_high=clip_epsilon_high)
    options.update(where=where, aggregation=aggregation, max_length=max_length)
    loss = _ref_policy_gradient(lp, old_log_probs, advantages, **options)
    if kl_coef:
        kl = _ref_kl_penalty(lp, reference_log_probs, estimator=kl_estimator)
        keep = np.ones(lp.shape, bool) if where is None else where
        t = lp.shape[-1]
        loss = loss + kl_coef * _ref_aggregate(
            kl.reshape(-1, t), keep.reshape(-1, t), aggregation, max_length
        )
    return loss


def _fused_pg_make(layout="dense", per_token_advantages=False, **options):
    def make(rng):
        shape = (PG_D, PG_V) if layout == "dense" else (PG_V, PG_D)
        hidden, weight = _normal(rng, (N, PG_T, PG_D)), _normal(rng, shape)
        labels = rng.integers(0, PG_V, size=(N, PG_T))
        old = np.log(1.0 / PG_V) + _normal(rng, (N, PG_T))  # ratios in and out of the clip
        adv = _normal(rng, (N, PG_T) if per_token_advantages else (N,))
        kwargs = dict(options, where=rng.random((N, PG_T)) < 0.7)
        if "bias" in options:
            kwargs["bias"] = _normal(rng, (PG_V,))
        if "kl_coef" in options:
            kwargs["reference_log_probs"] = np.log(1.0 / PG_V) + _normal(rng, (N, PG_T))
        return (hidden, weight, labels, old, adv), kwargs

    return make


def _fused_pg_extreme(layout="dense", **options):
    (hidden, weight, labels), kwargs = _fused_extreme(**options)
    if layout == "embedding":
        weight = np.ascontiguousarray(weight.T)
    old = np.array([-1.0, -30.0, 0.0], np.float32)
    adv = np.array([1.0, -2.0, 0.5], np.float32)
    if "kl_coef" in options:
        kwargs["reference_log_probs"] = np.array([-2.0, -60.0, -1e-7], np.float32)
    return (hidden, weight, labels, old, adv), kwargs


CASES += [
    Case(
        "fused_linear_policy_gradient_loss",
        jaxloss.fused_linear_policy_gradient_loss,
        _fused_pg_make(chunk_size=5, temperature=1.5, clip_epsilon_high=0.28),
        _fused_pg_ref,
        grad_args=(0, 1),
        unbatched=(1,),
        conventions=False,
        extreme=lambda: _fused_pg_extreme(),
        id="fused_linear_policy_gradient_loss[token_mean,chunk 5 of 24,temperature,clip_high]",
    ),
    Case(
        "fused_linear_policy_gradient_loss",
        functools.partial(
            jaxloss.fused_linear_policy_gradient_loss,
            weight_layout="embedding",
            aggregation="sequence_mean",
        ),
        _fused_pg_make("embedding", True, bias=True, kl_coef=0.1, chunk_size=8),
        functools.partial(_fused_pg_ref, weight_layout="embedding", aggregation="sequence_mean"),
        grad_args=(0, 1),
        grad_kwargs=("bias",),
        unbatched=(1, "bias"),
        conventions=False,
        grad_order=1,  # second order: the first case (compiling it takes the most time)
        extreme=lambda: _fused_pg_extreme("embedding", bias=True, kl_coef=0.1),
        id="fused_linear_policy_gradient_loss[sequence_mean,embedding,bias,k3,chunk 8 of 24]",
    ),
    Case(
        "fused_linear_policy_gradient_loss",
        functools.partial(
            jaxloss.fused_linear_policy_gradient_loss,
            aggregation="sequence_sum_normalized",
            kl_estimator="k2",
        ),
        _fused_pg_make(max_length=6, kl_coef=0.2, chunk_size=7),
        functools.partial(_fused_pg_ref, aggregation="sequence_sum_normalized", kl_estimator="k2"),
        grad_args=(0, 1),
        unbatched=(1,),
        conventions=False,
        grad_order=1,  # second order: the first case (compiling it takes the most time)
        id="fused_linear_policy_gradient_loss[sequence_sum_normalized,k2,chunk 7 of 24]",
    ),
]


# --------------------------------------------------------------------------------------
# Margin losses
# --------------------------------------------------------------------------------------


def _signs(rng, shape=SHAPE):
    return rng.choice(np.array([-1, 1]), size=shape)


def _mg_binary(rng):
    return (_normal(rng, scale=2.0), _signs(rng)), {}


def _mg_binary_extreme():
    s = np.array([[1e30, -1e30, 1e4, -1e4, 0.0]], np.float32)
    return (s, np.array([[1, 1, -1, -1, 1]], np.int32)), {}


def _mg_multiclass(rng):
    return (_normal(rng, shape=CLS, scale=2.0), _class_ids(rng)), {}


def _mg_multiclass_extreme():
    s = np.array([[1e30, -1e30, 0.0, 1e4, -1e4], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    return (s, np.array([1, 3], np.int32)), {}


def _ref_crammer_singer(s, y, margin=1.0, power=1):
    s_y = np.take_along_axis(s, y[..., None], -1)[..., 0]
    other = np.where(np.eye(s.shape[-1])[y] == 1, -np.inf, s).max(-1)
    return np.maximum(0.0, margin + other - s_y) ** power


def _ref_weston_watkins(s, y, margin=1.0, power=1):
    # torch.nn.functional.multi_margin_loss, documented formula:
    # Σ_{i≠y} max(0, margin − x[y] + x[i])^p / x.size(0)
    s_y = np.take_along_axis(s, y[..., None], -1)
    terms = np.maximum(0.0, margin - s_y + s) ** power
    return np.where(np.eye(s.shape[-1])[y] == 1, 0.0, terms).sum(-1) / s.shape[-1]


def _ml_labels(rng):
    """Per example a random set of target classes, then −1 padding (torch's format)."""
    labels = np.full(CLS, -1)
    for n in range(CLS[0]):
        k = rng.integers(0, CLS[1] + 1)
        labels[n, :k] = rng.permutation(CLS[1])[:k]
    return labels


def _ref_multilabel_margin(s, y):
    # torch.nn.functional.multilabel_margin_loss, documented formula:
    # Σ_{j in targets} Σ_{i not in targets} max(0, 1 − (x[y[j]] − x[i])) / x.size(0)
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        targets = list(y[idx][: np.argmax(np.append(y[idx], -1) < 0)])
        rest = [i for i in range(s.shape[-1]) if i not in targets]
        out[idx] = sum(max(0.0, 1.0 - s[idx][j] + s[idx][i]) for j in targets for i in rest)
    return out / s.shape[-1]


CASES += [
    Case(
        "hinge_loss",
        jaxloss.hinge_loss,
        lambda rng: ((_normal(rng, scale=2.0), _signs(rng)), {"margin": 0.7}),
        lambda s, y, margin: np.maximum(0.0, margin - y * s),
        grad_order=1,
        extreme=_mg_binary_extreme,
    ),
    Case(
        "hinge_loss",
        jaxloss.hinge_loss,
        lambda rng: ((_normal(rng, scale=2.0), _signs(rng)), {"squared": True}),
        lambda s, y, squared: np.maximum(0.0, 1.0 - y * s) ** 2,
        grad_order=1,
        extreme=lambda: (
            (np.array([[1e18, -1e18, 0.0]], np.float32), np.array([[1, 1, -1]], np.int32)),
            {"squared": True},
        ),
        id="hinge_loss[squared]",
    ),
    Case(
        "perceptron_loss",
        jaxloss.perceptron_loss,
        _mg_binary,
        lambda s, y: np.maximum(0.0, -y * s),
        grad_order=1,
        extreme=_mg_binary_extreme,
    ),
    Case(
        "soft_margin_loss",
        jaxloss.soft_margin_loss,
        _mg_binary,
        lambda s, y: np.logaddexp(0.0, -y * s),  # torch: log(1 + exp(−y·x))
        extreme=_mg_binary_extreme,
    ),
    Case(
        "hinge_embedding_loss",
        jaxloss.hinge_embedding_loss,
        lambda rng: ((np.abs(_normal(rng, scale=2.0)), _signs(rng)), {"margin": 1.5}),
        # torch: x if y = 1, max(0, margin − x) if y = −1
        lambda x, y, margin: np.where(y == 1, x, np.maximum(0.0, margin - x)),
        grad_order=1,
        extreme=_mg_binary_extreme,
    ),
    Case(
        "margin_ranking_loss",
        jaxloss.margin_ranking_loss,
        lambda rng: ((_normal(rng), _normal(rng), _signs(rng)), {"margin": 0.3}),
        # torch: max(0, −y·(x1 − x2) + margin)
        lambda s1, s2, y, margin: np.maximum(0.0, -y * (s1 - s2) + margin),
        grad_args=(0, 1),
        grad_order=1,
        extreme=lambda: (
            (
                np.array([1e30, -1e30, 0.0], np.float32),
                np.array([-1e30, 1e30, 0.0], np.float32),
                np.array([1, 1, -1], np.int32),
            ),
            {},
        ),
    ),
    Case(
        "multiclass_hinge_loss",
        jaxloss.multiclass_hinge_loss,
        lambda rng: ((_normal(rng, shape=CLS, scale=2.0), _class_ids(rng)), {"margin": 0.8}),
        _ref_crammer_singer,
        grad_order=1,
        extreme=_mg_multiclass_extreme,
        id="multiclass_hinge_loss[crammer_singer]",
    ),
    Case(
        "multiclass_hinge_loss",
        functools.partial(jaxloss.multiclass_hinge_loss, formulation="weston_watkins"),
        lambda rng: (
            (_normal(rng, shape=CLS, scale=2.0), _class_ids(rng)),
            {"power": 2, "margin": 0.8},
        ),
        lambda s, y, power, margin: _ref_weston_watkins(s, y, margin, power),
        grad_order=1,
        extreme=_mg_multiclass_extreme,
        id="multiclass_hinge_loss[weston_watkins,power=2]",
    ),
    Case(
        "multilabel_margin_loss",
        jaxloss.multilabel_margin_loss,
        lambda rng: ((_normal(rng, shape=CLS, scale=2.0), _ml_labels(rng)), {}),
        _ref_multilabel_margin,
        grad_order=1,
        extreme=lambda: (
            (
                np.array([[1e30, -1e30, 0.0, 1e4, -1e4], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32),
                np.array([[1, 3, -1, 0, 0], [0, 1, 2, 3, 4]], np.int32),
            ),
            {},
        ),
    ),
    Case(
        "multiclass_perceptron_loss",
        jaxloss.multiclass_perceptron_loss,
        _mg_multiclass,
        lambda s, y: s.max(-1) - np.take_along_axis(s, y[..., None], -1)[..., 0],
        grad_order=1,
        extreme=_mg_multiclass_extreme,
    ),
]


# --------------------------------------------------------------------------------------
# Embedding (metric-learning) losses
# --------------------------------------------------------------------------------------

D = 4  # embedding dimension
EMB = (N, D)


def _ref_cosine(x, y, eps=1e-8):
    # torch.nn.functional.cosine_similarity: x·y / (max(‖x‖, ε)·max(‖y‖, ε))
    nx = np.maximum(np.linalg.norm(x, axis=-1), eps)
    ny = np.maximum(np.linalg.norm(y, axis=-1), eps)
    return (x * y).sum(-1) / (nx * ny)


def _ref_triplet(a, p, n, margin=1.0, p_norm=2.0, eps=1e-6, swap=False):
    # torch.nn.functional.triplet_margin_loss; pairwise_distance(u, v) = ‖u − v + ε‖_p
    def dist(u, v):
        return (np.abs(u - v + eps) ** p_norm).sum(-1) ** (1.0 / p_norm)

    d_neg = dist(a, n)
    if swap:
        d_neg = np.minimum(d_neg, dist(p, n))
    return np.maximum(dist(a, p) - d_neg + margin, 0.0)


_EMB_EXTREME = (
    np.array([[0.0, 0.0, 0.0, 0.0], [1e30, -1e30, 0.0, 1.0], [1e-30, 0.0, 0.0, 0.0]], np.float32),
    np.array([[1.0, 2.0, 3.0, 4.0], [1e30, 1e30, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32),
)

CASES += [
    Case(
        "cosine_similarity",
        jaxloss.cosine_similarity,
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB)), {}),
        _ref_cosine,
        grad_args=(0, 1),
        extreme=lambda: (_EMB_EXTREME, {}),
    ),
    Case(
        "cosine_distance",
        jaxloss.cosine_distance,
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB)), {"eps": 1e-3}),
        lambda x, y, eps: 1.0 - _ref_cosine(x, y, eps),
        grad_args=(0, 1),
        extreme=lambda: (_EMB_EXTREME, {}),
    ),
    Case(
        "cosine_embedding_loss",
        jaxloss.cosine_embedding_loss,
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB), _signs(rng, N)), {"margin": -0.2}),
        # torch: 1 − cos if y = 1, max(0, cos − margin) if y = −1
        lambda x1, x2, y, margin: np.where(
            y == 1, 1.0 - _ref_cosine(x1, x2), np.maximum(0.0, _ref_cosine(x1, x2) - margin)
        ),
        grad_args=(0, 1),
        grad_order=1,
        extreme=lambda: (_EMB_EXTREME + (np.array([1, -1, -1], np.int32),), {}),
    ),
    Case(
        "triplet_margin_loss",
        jaxloss.triplet_margin_loss,
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB), _normal(rng, EMB)), {"margin": 2.0}),
        _ref_triplet,
        grad_args=(0, 1, 2),
        grad_order=1,
        extreme=lambda: (_EMB_EXTREME + (_EMB_EXTREME[0],), {"eps": 0.0}),
    ),
    Case(
        "triplet_margin_loss",
        jaxloss.triplet_margin_loss,
        lambda rng: (
            (_normal(rng, EMB), _normal(rng, EMB), _normal(rng, EMB)),
            {"margin": 1.5, "p": 3.0, "eps": 1e-3, "swap": True},
        ),
        lambda a, pos, neg, margin, p, eps, swap: _ref_triplet(a, pos, neg, margin, p, eps, swap),
        grad_args=(0, 1, 2),
        grad_order=1,
        extreme=lambda: (_EMB_EXTREME + (_EMB_EXTREME[0],), {"p": 1.0, "swap": True}),
        id="triplet_margin_loss[p=3,swap]",
    ),
    Case(
        "triplet_margin_with_distance_loss",
        jaxloss.triplet_margin_with_distance_loss,
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB), _normal(rng, EMB)), {"margin": 2.0}),
        # torch's default distance_function: pairwise_distance, ‖u − v + 1e-6‖₂
        lambda a, pos, neg, margin: _ref_triplet(a, pos, neg, margin),
        grad_args=(0, 1, 2),
        grad_order=1,
        extreme=lambda: (_EMB_EXTREME + (_EMB_EXTREME[0],), {}),
    ),
    Case(
        "triplet_margin_with_distance_loss",
        functools.partial(
            jaxloss.triplet_margin_with_distance_loss,
            distance_function=lambda u, v: jax.numpy.sum((u - v) ** 2, axis=-1),
            swap=True,
        ),
        lambda rng: ((_normal(rng, EMB), _normal(rng, EMB), _normal(rng, EMB)), {"margin": 1.5}),
        lambda a, pos, neg, margin: _ref_triplet_sq(a, pos, neg, margin),
        grad_args=(0, 1, 2),
        grad_order=1,
        extreme=lambda: (
            (
                np.zeros((2, D), np.float32),
                np.ones((2, D), np.float32),
                np.ones((2, D), np.float32) * 1e15,
            ),
            {},
        ),
        id="triplet_margin_with_distance_loss[squared_euclidean,swap]",
    ),
]


def _ref_triplet_sq(a, p, n, margin):
    # max(0, d(a, p) − min(d(a, n), d(p, n)) + m) with d(u, v) = Σ (u − v)²
    def d(u, v):
        return ((u - v) ** 2).sum(-1)

    return np.maximum(d(a, p) - np.minimum(d(a, n), d(p, n)) + margin, 0.0)


# --------------------------------------------------------------------------------------
# Segmentation losses: probabilities [N, C, S], channels first, so that the
# loss [N, C] is the leading part of the input's shape; `axis=-1` is the spatial axis.
# --------------------------------------------------------------------------------------

SEG_C, SEG_S = 3, 7


def _seg_make(**kwargs):
    def make(rng):
        logits = rng.normal(size=(N, SEG_C, SEG_S)) * 2.0
        probs = special.softmax(logits, axis=1)
        targets = np.eye(SEG_C)[rng.integers(0, SEG_C, size=(N, SEG_S))].transpose(0, 2, 1)
        return (probs, targets), {"axis": -1, **kwargs}

    return make


def _ref_tversky(p, t, alpha=0.5, beta=0.5, smooth=1.0, axis=-1):
    # Salehi et al. (2017): 1 − (TP + s)/(TP + α·FP + β·FN + s)
    tp = (p * t).sum(axis)
    fp = (p * (1 - t)).sum(axis)
    fn = ((1 - p) * t).sum(axis)
    return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _ref_dice(p, t, smooth=1.0, axis=-1, class_weights=None):
    loss = 1.0 - (2 * (p * t).sum(axis) + smooth) / (p.sum(axis) + t.sum(axis) + smooth)
    return loss if class_weights is None else loss * class_weights


def _ref_jaccard(p, t, smooth=1.0, axis=-1):
    inter = (p * t).sum(axis)
    return 1.0 - (inter + smooth) / (p.sum(axis) + t.sum(axis) - inter + smooth)


def _ref_generalized_dice(p, t, axis=-1, class_axis=-2, smooth=1e-5):
    # Sudre et al. (2017) for [N, C, S]; w_c = 1/(Σt)², absent classes get the largest
    # present weight, weights scaled to sum to C.
    vol = t.sum(axis)  # [N, C]
    w = np.where(vol > 0, 1.0 / np.where(vol > 0, vol, 1.0) ** 2, 0.0)
    w_max = w.max(-1, keepdims=True)
    w = np.where(vol > 0, w, np.where(w_max > 0, w_max, 1.0))
    w = w * w.shape[-1] / w.sum(-1, keepdims=True)
    num = 2 * (w * (p * t).sum(axis)).sum(-1) + smooth
    den = (w * (p + t).sum(axis)).sum(-1) + smooth
    return 1.0 - num / den


def _ref_multiclass_generalized_dice(p, t, *, where=None, axis=-1, class_axis=-2, smooth=1.0):
    # optax.losses.multiclass_generalized_dice_loss for [N, C, S] (reduction="none"): Dice
    # per (example, class) times w_c = C·v_c/Σv, v_c = 1/(F_c² + 1e-7), F_c = Σ_{n,s} t_nc
    # over the kept (example, class) entries; jaxloss's smoothing (2I + s)/(P + T + s).
    keep = np.ones(p.shape[:2], bool) if where is None else np.broadcast_to(where, p.shape[:2])
    p = np.where(keep[..., None], p, 0.0)
    t = np.where(keep[..., None], t, 0.0)
    v = 1.0 / (t.sum((0, 2)) ** 2 + 1e-7)
    w = v * len(v) / v.sum()
    dice = 1.0 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)
    return w * dice


# Exact 0/1 probabilities, an empty class (no target, no prediction) and a class with
# targets but no prediction.
_SEG_EXTREME_P = np.array([[[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]], np.float32)
_SEG_EXTREME_T = np.array([[[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]], np.float32)
_SEG_EMPTY = np.zeros((1, 3, 4), np.float32)

CASES += [
    Case(
        "dice_loss",
        jaxloss.dice_loss,
        _seg_make(smooth=0.5),  # class_weights change the mean's denominator: test_segmentation
        _ref_dice,
        extreme=lambda: ((_SEG_EXTREME_P, _SEG_EXTREME_T), {"axis": -1, "smooth": 0.0}),
    ),
    Case(
        "tversky_loss",
        jaxloss.tversky_loss,
        _seg_make(alpha=0.3, beta=0.7),
        _ref_tversky,
        extreme=lambda: ((_SEG_EXTREME_P, _SEG_EXTREME_T), {"axis": -1, "smooth": 0.0}),
    ),
    Case(
        "jaccard_loss",
        jaxloss.jaccard_loss,
        _seg_make(smooth=0.1),
        _ref_jaccard,
        extreme=lambda: ((_SEG_EMPTY, _SEG_EMPTY), {"axis": -1, "smooth": 0.0}),
    ),
    Case(
        "multiclass_generalized_dice_loss",
        jaxloss.multiclass_generalized_dice_loss,
        _seg_make(class_axis=-2, smooth=0.5),
        _ref_multiclass_generalized_dice,
        coupled=True,  # the class weights come from every kept example's targets
        extreme=lambda: (
            (
                np.concatenate([_SEG_EXTREME_P, _SEG_EMPTY]),
                np.concatenate([_SEG_EXTREME_T, _SEG_EMPTY]),
            ),
            {"axis": -1, "class_axis": -2, "smooth": 0.0},
        ),
    ),
    Case(
        "generalized_dice_loss",
        jaxloss.generalized_dice_loss,
        _seg_make(class_axis=-2, smooth=1e-3),
        _ref_generalized_dice,
        extreme=lambda: (
            (
                np.concatenate([_SEG_EXTREME_P, _SEG_EMPTY]),
                np.concatenate([_SEG_EXTREME_T, _SEG_EMPTY]),
            ),
            {"axis": -1, "class_axis": -2, "smooth": 0.0},
        ),
    ),
]


# --------------------------------------------------------------------------------------
# Sparse outputs, Poly-1, generalized KL and ranking
# --------------------------------------------------------------------------------------


def _poly_ref(logits, labels, epsilon=2.0, label_smoothing=0.0):
    """Leng et al. (2022), Poly-1: CE(t) + ε Σ t (1 − p), p = softmax(z)."""
    t = _target(labels, label_smoothing)
    log_p = special.log_softmax(logits, axis=-1)
    return -(t * log_p).sum(-1) + epsilon * (t * (1.0 - np.exp(log_p))).sum(-1)


def _generalized_kl_ref(p, q, base=None):
    return _in_base((special.rel_entr(p, q) - p + q).sum(-1), base)


def _measure(rng, shape=SHAPE):
    """Non-negative vectors that do not sum to one, with some exact zeros."""
    x = rng.uniform(0.1, 3.0, size=shape)
    return np.where(rng.random(shape) < 0.2, 0.0, x)


CASES += [
    Case(
        "poly_cross_entropy",
        jaxloss.poly_cross_entropy,
        lambda rng: ((_logits(rng), _class_ids(rng)), {}),
        _poly_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {}),
        id="poly_cross_entropy[class ids]",
    ),
    Case(
        "poly_cross_entropy",
        jaxloss.poly_cross_entropy,
        lambda rng: (
            (_logits(rng), _probabilities(rng)),
            {"epsilon": -0.5, "label_smoothing": 0.1},
        ),
        _poly_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {"label_smoothing": 0.1}),
        id="poly_cross_entropy[probabilities,epsilon,label_smoothing]",
    ),
    Case(
        "poly_cross_entropy",
        jaxloss.poly_cross_entropy,
        lambda rng: ((_logits(rng), _class_ids(rng)), {"epsilon": 1.5, "label_smoothing": 0.2}),
        _poly_ref,
        extreme=lambda: (
            (_EXTREME_LOGITS[:, :2], np.array([1, 0, 0])),
            {"label_smoothing": 0.2},
        ),
        id="poly_cross_entropy[class ids,label_smoothing]",
    ),
    Case(
        "generalized_kl_divergence",
        jaxloss.generalized_kl_divergence,
        lambda rng: ((rng.uniform(0.1, 3.0, size=SHAPE), rng.uniform(0.1, 3.0, size=SHAPE)), {}),
        _generalized_kl_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_P_EXTREME * 1e3, _Q_EXTREME * 1e3), {"base": 2}),
    ),
    Case(
        # Finite differences in p across an exact 0 of p log p are undefined; only q here.
        "generalized_kl_divergence",
        jaxloss.generalized_kl_divergence,
        lambda rng: ((_measure(rng), rng.uniform(0.1, 3.0, size=SHAPE)), {"base": 10}),
        _generalized_kl_ref,
        grad_args=(1,),
        id="generalized_kl_divergence[zeros in p]",
    ),
]


def _sparsemax_ref(z):
    """Martins & Astudillo (2016): the τ with Σ max(z − τ, 0) = 1, found by bisection in
    float64, then made exact from the support it gives: τ = (Σ_S z − 1)/|S|."""
    z = np.asarray(z, np.float64)
    lo = z.max(-1, keepdims=True) - 1.0  # Σ max(z − lo, 0) ≥ 1
    hi = z.max(-1, keepdims=True)  # Σ max(z − hi, 0) = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = np.maximum(z - mid, 0.0).sum(-1, keepdims=True) >= 1.0
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    support = z > lo
    tau = (np.where(support, z, 0.0).sum(-1, keepdims=True) - 1.0) / support.sum(-1, keepdims=True)
    return np.maximum(z - tau, 0.0)


def _sparsemax_loss_ref(z, labels):
    """Ω*(z) + Ω(y) − ⟨z, y⟩ with Ω = ½‖·‖² on the simplex (Blondel et al., 2020)."""
    y = np.eye(z.shape[-1])[labels] if np.issubdtype(labels.dtype, np.integer) else labels
    p = _sparsemax_ref(z)
    return (z * (p - y)).sum(-1) - 0.5 * (p * p).sum(-1) + 0.5 * (y * y).sum(-1)


CASES += [
    Case(
        "sparsemax",
        jaxloss.sparsemax,
        lambda rng: ((_logits(rng),), {}),
        _sparsemax_ref,
        conventions=False,
        extreme=lambda: ((_EXTREME_LOGITS,), {}),
    ),
    Case(
        "sparsemax_loss",
        jaxloss.sparsemax_loss,
        lambda rng: ((_logits(rng), _class_ids(rng)), {}),
        _sparsemax_loss_ref,
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_IDS), {}),
        id="sparsemax_loss[class ids]",
    ),
    Case(
        # The label gradient at a −inf logit is +inf (the true one), so the extreme
        # logits here are finite.
        "sparsemax_loss",
        jaxloss.sparsemax_loss,
        lambda rng: ((_logits(rng), _probabilities(rng)), {}),
        _sparsemax_loss_ref,
        grad_args=(0, 1),
        extreme=lambda: ((np.nan_to_num(_EXTREME_LOGITS, neginf=-1e30), _EXTREME_PROBS), {}),
        id="sparsemax_loss[probabilities]",
    ),
]


def _fenchel_young_logsumexp_ref(scores, targets):
    """Blondel et al. (2020), Ω* = logsumexp, Ω(y) left out: lse(θ) − ⟨θ, y⟩."""
    return special.logsumexp(scores, axis=-1) - (scores * targets).sum(-1)


CASES += [
    Case(
        # make_fenchel_young_loss returns a loss: its contract is checked on the loss it
        # builds from logsumexp (the factory itself: tests/test_sparse.py).
        "make_fenchel_young_loss",
        jaxloss.make_fenchel_young_loss(jax.nn.logsumexp),
        lambda rng: ((_logits(rng), _probabilities(rng)), {}),
        _fenchel_young_logsumexp_ref,
        grad_args=(0, 1),
        extreme=lambda: ((_EXTREME_LOGITS, _EXTREME_PROBS), {}),
        id="make_fenchel_young_loss(logsumexp)",
    ),
]


L = 5  # items per list


def _per_list_mask(fn):
    """``fn`` with ``where`` given per list (the contract's loss-shaped mask), passed on
    as the item mask ``where[..., None]`` that drops the whole list."""

    def wrapped(scores, relevance, *, where=None, **kwargs):
        if where is not None:
            where = jax.numpy.asarray(where)[..., None]
        return fn(scores, relevance, where=where, **kwargs)

    return wrapped


def _lists(rng):
    """Scores and graded relevance 0..3 (ties included), one list per row."""
    return (rng.normal(size=(N, L)) * 2.0, rng.integers(0, 4, size=(N, L)).astype(float)), {}


def _ranking_softmax_ref(s, r):
    mass = r.sum(-1, keepdims=True)
    t = r / np.where(mass == 0, 1.0, mass)
    return -(t * special.log_softmax(s, axis=-1)).sum(-1)


def _listmle_ref(s, r):
    """Xia et al. (2008): Σ_k logsumexp(s_π[k:]) − s_π[k], π by decreasing r, stable."""
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        ordered = s[idx][np.argsort(-r[idx], kind="stable")]
        out[idx] = sum(special.logsumexp(ordered[k:]) - ordered[k] for k in range(len(ordered)))
    return out


def _pairwise_ref(pair_loss):
    def ref(s, r, **kwargs):
        out = np.zeros(s.shape[:-1])
        for idx in np.ndindex(*s.shape[:-1]):
            for i in range(s.shape[-1]):
                for j in range(s.shape[-1]):
                    if r[idx][i] > r[idx][j]:
                        out[idx] += pair_loss(s[idx][i] - s[idx][j], **kwargs)
        return out

    return ref


def _dcg_terms_ref(s, r):
    """Per list: the gains 2^r − 1, the 1-based ranks by decreasing score (ties by
    position) and the discounts 1/log2(1 + rank) (Järvelin & Kekäläinen, 2002)."""
    gains = 2.0**r - 1.0
    ranks = np.empty(s.shape[-1])
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, s.shape[-1] + 1)
    return gains, ranks, 1.0 / np.log2(1.0 + ranks)


def _max_dcg_ref(gains, topn=None):
    ideal = np.sort(gains)[::-1][:topn]
    return float((ideal / np.log2(2.0 + np.arange(len(ideal)))).sum())


def _lambda_pairwise_ref(pair_loss, kind):
    """Wang et al. (2018): Σ_{r_i > r_j} Δ_ij · pair_loss(s_i − s_j), Δ_ij the change of
    the metric when items i and j swap ranks: |r_i − r_j| (label_diff), |G_i − G_j| ·
    |1/D(k_i) − 1/D(k_j)| (dcg), the same divided by maxDCG (ndcg)."""

    def ref(s, r, **kwargs):
        out = np.zeros(s.shape[:-1])
        for idx in np.ndindex(*s.shape[:-1]):
            gains, _, disc = _dcg_terms_ref(s[idx], r[idx])
            ideal = _max_dcg_ref(gains)
            for i in range(s.shape[-1]):
                for j in range(s.shape[-1]):
                    if r[idx][i] <= r[idx][j]:
                        continue
                    if kind == "label_diff":
                        delta = abs(r[idx][i] - r[idx][j])
                    else:
                        delta = abs(gains[i] - gains[j]) * abs(disc[i] - disc[j])
                        if kind == "ndcg":
                            delta = delta / ideal
                    out[idx] += delta * pair_loss(s[idx][i] - s[idx][j], **kwargs)
        return out

    return ref


def _lambda_softmax_ref(kind):
    """TF-Ranking's softmax loss with DCG item weights, times its list weight Σ λ:
    −Σ_i λ_i log softmax(s)_i, λ_i = G(r_i)/log2(1 + k_i) (÷ maxDCG for ndcg)."""

    def ref(s, r):
        out = np.zeros(s.shape[:-1])
        for idx in np.ndindex(*s.shape[:-1]):
            gains, _, disc = _dcg_terms_ref(s[idx], r[idx])
            ideal = _max_dcg_ref(gains) if kind == "ndcg" else 1.0
            lam = gains * disc / (ideal if ideal > 0 else 1.0)
            out[idx] = -(lam * special.log_softmax(s[idx])).sum()
        return out

    return ref


def _ndcg_ref(s, r, topn=None):
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        gains, ranks, disc = _dcg_terms_ref(s[idx], r[idx])
        cut = ranks <= (topn or len(ranks))
        ideal = _max_dcg_ref(gains, topn)
        out[idx] = (gains * disc)[cut].sum() / ideal if ideal > 0 else 0.0
    return out


def _mrr_ref(s, r, topn=None):
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        _, ranks, _ = _dcg_terms_ref(s[idx], r[idx])
        hits = ranks[(r[idx] >= 1) & (ranks <= (topn or len(ranks)))]
        out[idx] = 1.0 / hits.min() if len(hits) else 0.0
    return out


def _approx_ndcg_ref(s, r, temperature=1.0):
    """Qin et al. (2010): −Σ_i G(r_i)/log2(1 + π̂_i) / maxDCG, π̂_i = 1 + Σ_{j≠i}
    σ((s_j − s_i)/T); 0 for a list with maxDCG = 0."""
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        above = special.expit((s[idx][None, :] - s[idx][:, None]) / temperature)
        np.fill_diagonal(above, 0.0)
        gains = 2.0 ** r[idx] - 1.0
        ideal = _max_dcg_ref(gains)
        dcg = (gains / np.log2(2.0 + above.sum(-1))).sum()
        out[idx] = -dcg / ideal if ideal > 0 else 0.0
    return out


def _separated_lists(rng):
    """Scores at least 0.4 apart (no tie, none after bf16 rounding, none within a finite
    difference step), so the ranks, hence the metrics, are locally constant."""
    scores = np.stack([rng.permutation(L) for _ in range(N)]) + rng.uniform(-0.3, 0.3, (N, L))
    return (scores, rng.integers(0, 4, size=(N, L)).astype(float)), {}


_RANK_EXTREME = (
    np.array([[1e4, -1e4, 0.0, 1e9], [-1e9, 1e9, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32),
    np.array([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32),
)

CASES += [
    Case(
        "ranking_softmax_loss",
        _per_list_mask(jaxloss.ranking_softmax_loss),
        _lists,
        _ranking_softmax_ref,
        extreme=lambda: (_RANK_EXTREME, {}),
    ),
    Case(
        "listmle_loss",
        _per_list_mask(jaxloss.listmle_loss),
        _lists,
        _listmle_ref,
        extreme=lambda: (_RANK_EXTREME, {}),
    ),
    Case(
        "pairwise_logistic_loss",
        _per_list_mask(jaxloss.pairwise_logistic_loss),
        _lists,
        _pairwise_ref(lambda d: np.logaddexp(0.0, -d)),
        extreme=lambda: (_RANK_EXTREME, {}),
    ),
    Case(
        "pairwise_hinge_loss",
        _per_list_mask(jaxloss.pairwise_hinge_loss),
        lambda rng: (_lists(rng)[0], {"margin": 0.7}),
        _pairwise_ref(lambda d, margin: max(0.0, margin - d)),
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
    ),
    # The LambdaLoss weights depend on the ranks: separated scores keep them constant
    # within the finite-difference step and under bf16 rounding.
    Case(
        "pairwise_logistic_loss",
        functools.partial(_per_list_mask(jaxloss.pairwise_logistic_loss), lambda_weights="ndcg"),
        _separated_lists,
        _lambda_pairwise_ref(lambda d: np.logaddexp(0.0, -d), "ndcg"),
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
        id="pairwise_logistic_loss[lambda_weights=ndcg]",
    ),
    Case(
        "pairwise_hinge_loss",
        functools.partial(_per_list_mask(jaxloss.pairwise_hinge_loss), lambda_weights="dcg"),
        lambda rng: (_separated_lists(rng)[0], {"margin": 0.7}),
        _lambda_pairwise_ref(lambda d, margin: max(0.0, margin - d), "dcg"),
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
        id="pairwise_hinge_loss[lambda_weights=dcg]",
    ),
    Case(
        "ranking_softmax_loss",
        functools.partial(_per_list_mask(jaxloss.ranking_softmax_loss), lambda_weights="ndcg"),
        _separated_lists,
        _lambda_softmax_ref("ndcg"),
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
        id="ranking_softmax_loss[lambda_weights=ndcg]",
    ),
    Case(
        "approx_ndcg_loss",
        _per_list_mask(jaxloss.approx_ndcg_loss),
        lambda rng: (_lists(rng)[0], {"temperature": 0.5}),
        _approx_ndcg_ref,
        extreme=lambda: (_RANK_EXTREME, {"temperature": 0.1}),
        id="approx_ndcg_loss[temperature=0.5]",
    ),
    # Metrics: step functions of the scores (gradient 0 between ties).
    Case(
        "ndcg",
        _per_list_mask(jaxloss.ndcg),
        lambda rng: (_separated_lists(rng)[0], {"topn": 3}),
        _ndcg_ref,
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
        id="ndcg[topn=3]",
    ),
    Case(
        "mrr",
        _per_list_mask(jaxloss.mrr),
        _separated_lists,
        _mrr_ref,
        grad_order=1,
        extreme=lambda: (_RANK_EXTREME, {}),
    ),
]


# --------------------------------------------------------------------------------------
# Preference optimization on per-sequence log-probabilities
# --------------------------------------------------------------------------------------


def _logps(rng, scale=3.0):
    """Per-sequence log-probabilities [N]: negative, of order −scale."""
    return -np.abs(rng.normal(size=(N,))) * scale - 0.1


def _softplus(x):  # −log σ(−x)
    return np.logaddexp(0.0, x)


def _ref_dpo(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    u = (pc - rc) - (pr - rr)
    h, e = beta * u, label_smoothing
    if loss_type == "sigmoid":  # Rafailov et al. (2023); cDPO for ε > 0
        return (1 - e) * _softplus(-h) + e * _softplus(h)
    if loss_type == "robust":  # Chowdhury et al. (2024)
        return ((1 - e) * _softplus(-h) - e * _softplus(h)) / (1 - 2 * e)
    if loss_type == "hinge":  # SLiC
        return np.maximum(0.0, 1 - h)
    return (u - 1 / (2 * beta)) ** 2  # IPO, Azar et al. (2023)


def _pref_make(n_arrays, **kwargs):
    def make(rng):
        return tuple(_logps(rng) for _ in range(n_arrays)), dict(kwargs)

    return make


# TRL's stress inputs and log-ratio gaps of ±1e4 in float32.
_PREF_STRESS = np.array([410.0, -1e4, 0.0, -5.0], np.float32)
_PREF_STRESS_R = np.array([810.5, 0.0, -1e4, -5.0], np.float32)
_PREF_ZEROS = np.zeros(4, np.float32)

CASES += [
    Case(
        "dpo_loss",
        functools.partial(jaxloss.dpo_loss, loss_type=loss_type),
        _pref_make(4, beta=0.5, label_smoothing=eps),
        functools.partial(_ref_dpo, loss_type=loss_type),
        grad_args=(0, 1, 2, 3),
        grad_order=1 if loss_type == "hinge" else 2,
        extreme=lambda: (
            (_PREF_STRESS, _PREF_STRESS_R, _PREF_ZEROS, _PREF_ZEROS),
            {"beta": 1.0},
        ),
        id=f"dpo_loss[{loss_type}]",
    )
    for loss_type, eps in [("sigmoid", 0.1), ("robust", 0.2), ("hinge", 0.0), ("ipo", 0.0)]
]
CASES += [
    Case(
        "simpo_loss",
        jaxloss.simpo_loss,
        _pref_make(2, beta=2.0, gamma=0.5, label_smoothing=0.1),
        # Meng et al. (2024): −log σ(β(c − r) − γ), label smoothed as cDPO
        lambda c, r, beta, gamma, label_smoothing: (
            (1 - label_smoothing) * _softplus(-(beta * (c - r) - gamma))
            + label_smoothing * _softplus(beta * (c - r) - gamma)
        ),
        grad_args=(0, 1),
        extreme=lambda: ((_PREF_STRESS, _PREF_STRESS_R), {"beta": 1.0}),
    ),
    Case(
        "cpo_loss",
        jaxloss.cpo_loss,
        _pref_make(2, beta=0.3, label_smoothing=0.1),
        # Xu et al. (2024): −(1 − ε) log σ(β(c − r)) − ε log σ(−β(c − r))
        lambda c, r, beta, label_smoothing: (
            (1 - label_smoothing) * _softplus(-beta * (c - r))
            + label_smoothing * _softplus(beta * (c - r))
        ),
        grad_args=(0, 1),
        extreme=lambda: ((_PREF_STRESS, _PREF_STRESS_R), {"beta": 1.0}),
    ),
    Case(
        "orpo_loss",
        jaxloss.orpo_loss,
        _pref_make(2, beta=0.2),
        # Hong et al. (2024): −β log σ(log odds(c) − log odds(r)), log odds(p) = log(p/(1 − p))
        lambda c, r, beta: (
            beta * _softplus(-((c - np.log(-np.expm1(c))) - (r - np.log(-np.expm1(r)))))
        ),
        grad_args=(0, 1),
        extreme=lambda: (
            (
                np.array([-1e-6, -1e4, 0.0, -0.5], np.float32),
                np.array([-1e4, -1e-6, -1e4, 0.0], np.float32),
            ),
            {"beta": 1.0},
        ),
    ),
    Case(
        "kto_loss",
        jaxloss.kto_loss,
        lambda rng: (
            (_logps(rng), _logps(rng), rng.random(N) < 0.5),
            {
                "beta": 0.5,
                "reference_point": 0.3,
                "desirable_weight": 1.0,
                "undesirable_weight": 1.3,
            },
        ),
        # Ethayarajh et al. (2024): λ_D(1 − σ(β(ρ − z₀))) or λ_U(1 − σ(β(z₀ − ρ)))
        lambda p, q, d, beta, reference_point, desirable_weight, undesirable_weight: np.where(
            d,
            desirable_weight * (1 - special.expit(beta * (p - q - reference_point))),
            undesirable_weight * (1 - special.expit(beta * (reference_point - (p - q)))),
        ),
        grad_args=(0, 1),
        extreme=lambda: (
            (_PREF_STRESS, _PREF_STRESS_R, np.array([True, False, True, False])),
            {"beta": 1.0},
        ),
    ),
]
NOT_IN_TABLE["dpo_implicit_rewards"] = "tests/test_preference.py"


# fused_linear_preference_loss: the table's inputs are N pairs [N, 2, T, ...]
# (chosen, rejected), which the wrapper lays out as the function's [2N, T, ...] (the N
# chosen sequences, then the N rejected ones); reduction="none" gives the per-pair losses.
# Its `where` masks tokens, not pairs, so the harness's pair-level mask and weight checks
# do not apply (conventions=False); tests/test_fused_preference.py checks the reductions,
# the one-pass gradients and the masks against the materialized logits.
PREF_T = 3


def _fused_pref(hidden, weight, labels, *, reference_hidden=None, where=None, **kwargs):
    lead = hidden.shape[:-3]

    def flat(x):
        if x is None:
            return None
        x = jax.numpy.asarray(x)
        x = x.reshape((-1,) + x.shape[len(lead) :])
        return jax.numpy.concatenate([x[:, 0], x[:, 1]])

    out = jaxloss.fused_linear_preference_loss(
        flat(hidden),
        weight,
        flat(labels),
        reference_hidden=flat(reference_hidden),
        where=flat(where),
        reduction="none",
        **kwargs,
    )
    return out.reshape(lead)


def _fused_pref_ref(
    hidden,
    weight,
    labels,
    *,
    loss="dpo",
    reference_hidden=None,
    reference_weight=None,
    bias=None,
    weight_layout="dense",
    where=None,
    beta=0.1,
    nll_weight=0.0,
    chunk_size=None,
):
    def seq(h, w, b):  # log p of each token's label, summed or averaged over kept tokens
        z = h @ (w if weight_layout == "dense" else w.T) + (0.0 if b is None else b)
        log_p = np.take_along_axis(special.log_softmax(z, -1), labels[..., None], -1)[..., 0]
        keep = np.ones(log_p.shape, bool) if where is None else where
        total = np.where(keep, log_p, 0.0).sum(-1)
        return total / keep.sum(-1) if loss == "orpo" else total

    c, r = np.moveaxis(seq(hidden, weight, bias), -1, 0)
    if loss == "dpo":  # Rafailov et al. (2023): −log σ(β·[(π_c − ref_c) − (π_r − ref_r)])
        rc, rr = np.moveaxis(seq(reference_hidden, reference_weight, None), -1, 0)
        return _softplus(-beta * ((c - rc) - (r - rr)))
    # ORPO (Hong et al., 2024): −β log σ(log odds(c) − log odds(r)) + λ·(chosen token-mean NLL)
    odds = lambda x: x - np.log(-np.expm1(x))  # noqa: E731
    return beta * _softplus(-(odds(c) - odds(r))) - nll_weight * c


def _fused_pref_make(loss="dpo", layout="dense", **options):
    def make(rng):
        dense = layout == "dense"
        kwargs = dict(options, chunk_size=2)
        weight = _normal(rng, (LV_D, LV_V) if dense else (LV_V, LV_D))
        if loss == "dpo":
            kwargs["reference_hidden"] = _normal(rng, (N, 2, PREF_T, LV_D + 1))
            kwargs["reference_weight"] = _normal(rng, (LV_D + 1, LV_V))
        if "bias" in options:
            kwargs["bias"] = _normal(rng, (LV_V,))
        keep = rng.random((N, 2, PREF_T)) < 0.8
        keep[..., 1] = True
        kwargs["where"] = keep
        labels = rng.integers(0, LV_V, (N, 2, PREF_T))
        return (_normal(rng, (N, 2, PREF_T, LV_D)), weight, labels), kwargs

    return make


def _fused_pref_extreme(loss="dpo", layout="dense", **options):
    make = _fused_pref_make(loss, layout, **options)
    (hidden, weight, labels), kwargs = make(np.random.default_rng(0))
    hidden = hidden.copy()
    hidden[0, 0] *= 1e4  # log p of −1e4 (and p rounded to 1)
    hidden[1, 1] *= 1e9
    kwargs = {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
        for k, v in kwargs.items()
    }
    return (hidden.astype(np.float32), weight.astype(np.float32), labels), kwargs


CASES += [
    Case(
        "fused_linear_preference_loss",
        _fused_pref,
        _fused_pref_make(beta=0.5),
        _fused_pref_ref,
        grad_args=(0, 1),
        unbatched=(1, "reference_weight"),
        conventions=False,
        extreme=lambda: _fused_pref_extreme(beta=0.5),
        id="fused_linear_preference_loss[dpo,reference_hidden,chunk 2 of 3]",
    ),
    Case(
        "fused_linear_preference_loss",
        functools.partial(_fused_pref, loss="orpo", weight_layout="embedding"),
        _fused_pref_make("orpo", "embedding", bias=True, nll_weight=0.5),
        functools.partial(_fused_pref_ref, loss="orpo", weight_layout="embedding"),
        grad_args=(0, 1),
        grad_kwargs=("bias",),
        unbatched=(1, "bias"),
        conventions=False,
        extreme=lambda: _fused_pref_extreme("orpo", "embedding", bias=True),
        id="fused_linear_preference_loss[orpo,nll,embedding,bias]",
    ),
]


# --------------------------------------------------------------------------------------
# Contrastive losses
# --------------------------------------------------------------------------------------

# Inputs [N, B, D]: N independent batches (the vmap axis) of B = 5 pairs of size D = 3.
# The losses couple the examples of a batch (`coupled=True`): the references take the
# mask and drop the masked examples before computing anything. Each reference loops over
# the N batches in float64 numpy.
CON_B, CON_D = 5, 3


def _unit_rows(a):
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


def _per_batch(loss_of_batch):
    """Apply ``loss_of_batch(kept arrays..., **kw) -> [b]`` to each batch of [..., B, D]
    inputs, with the examples outside ``where`` removed first; they get 0."""

    def reference(*arrays, where=None, **kwargs):
        lead = arrays[0].shape[:-2] if arrays[0].ndim > 2 else ()
        b = arrays[0].shape[-2]
        flat = [np.asarray(a).reshape((-1,) + np.shape(a)[len(lead) :]) for a in arrays]
        keep = np.ones((len(flat[0]), b), bool)
        if where is not None:
            keep = np.broadcast_to(where, lead + (b,)).reshape(-1, b)
        out = np.zeros((len(flat[0]), b))
        for n in range(len(flat[0])):
            k = keep[n]
            out[n, k] = loss_of_batch(*(a[n][k] for a in flat), **kwargs)
        return out.reshape(lead + (b,))

    return reference


def _clip_batch(x, y, *, temperature=None, logit_scale=None, normalize=True):
    t = 1.0 / temperature if temperature is not None else np.exp(logit_scale)
    if normalize:
        x, y = _unit_rows(x), _unit_rows(y)
    s = t * (x @ y.T)
    if len(s) == 0:
        return np.zeros(0)
    diag = np.diag(s)
    return 0.5 * (special.logsumexp(s, axis=1) - diag + special.logsumexp(s, axis=0) - diag)


def _siglip_batch(x, y, *, logit_scale, logit_bias, normalize=True):
    if normalize:
        x, y = _unit_rows(x), _unit_rows(y)
    u = np.exp(logit_scale) * (x @ y.T) + logit_bias
    z = 2.0 * np.eye(len(u)) - 1.0
    return np.logaddexp(0.0, -z * u).sum(axis=1)  # −log σ(z·u) = log(1 + e^{−z·u})


def _ntxent_batch(e, labels, *, temperature=0.07):
    e = _unit_rows(e)
    s = (e @ e.T) / temperature
    out = np.full(len(e), np.nan)  # an anchor without a positive has no loss
    for i in range(len(e)):
        pos = [j for j in range(len(e)) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(len(e)) if labels[k] != labels[i]]
        if pos:
            terms = [
                -s[i, j] + special.logsumexp(np.concatenate([[s[i, j]], s[i, neg]])) for j in pos
            ]
            out[i] = np.mean(terms)
    return out


def _circle_batch(e, labels, *, gamma=80.0, margin=0.4, remove_diagonal=True, normalize=True):
    # keras.losses.circle: d = max(1 − e·eᵀ, 0); α_p = max(m + d, 0), α_n = max(1 + m − d, 0);
    # softplus(lse_P(−γ α_p (m − d)) + lse_N(γ α_n (1 − m − d))); Sun et al. (2020), eq. (6)
    if normalize:
        e = _unit_rows(e)
    d = np.maximum(1.0 - e @ e.T, 0.0)
    out = np.full(len(e), np.nan)  # an anchor without a positive or a negative: no loss
    for i in range(len(e)):
        pos = [
            j for j in range(len(e)) if labels[j] == labels[i] and (j != i or not remove_diagonal)
        ]
        neg = [k for k in range(len(e)) if labels[k] != labels[i]]
        if pos and neg:
            lp = special.logsumexp(
                [-gamma * max(margin + d[i, j], 0) * (margin - d[i, j]) for j in pos]
            )
            ln = special.logsumexp(
                [gamma * max(1 + margin - d[i, k], 0) * (1 - margin - d[i, k]) for k in neg]
            )
            out[i] = np.logaddexp(0.0, lp + ln)
    return out


def circle_reference(e, labels, *, where=None, **kwargs):
    labels = np.broadcast_to(labels, np.shape(e)[:-1])[..., None]
    batch = lambda e, lab, **kw: _circle_batch(e, lab[:, 0], **kw)  # noqa: E731
    return _per_batch(batch)(e, labels, where=where, **kwargs)


def _circle_make(**kwargs):
    def make(rng):
        labels = np.stack([rng.permutation([0, 0, 1, 1, 1]) for _ in range(N)])
        return (_normal(rng, (N, CON_B, CON_D)), labels), kwargs

    return make


clip_reference = _per_batch(_clip_batch)
siglip_reference = _per_batch(_siglip_batch)


def ntxent_reference(e, labels, *, where=None, **kwargs):
    # The labels travel through `_per_batch` as a trailing axis of size 1.
    labels = np.broadcast_to(labels, np.shape(e)[:-1])[..., None]
    batch = lambda e, lab, **kw: _ntxent_batch(e, lab[:, 0], **kw)  # noqa: E731
    return _per_batch(batch)(e, labels, where=where, **kwargs)


def _con_pair(rng, **kwargs):
    shape = (N, CON_B, CON_D)
    return (_normal(rng, shape), _normal(rng, shape)), kwargs


def _ntxent_make(rng):
    labels = np.stack([rng.permutation([0, 0, 1, 1, 1]) for _ in range(N)])
    return (_normal(rng, (N, CON_B, CON_D)), labels), {"temperature": 0.5}


def _con_extreme(**kwargs):
    x = np.array([[1e30, -1e30, 0.0], [1e-30, 0.0, 1e-30], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    y = np.array([[1.0, 0.0, 0.0], [-1e30, 1e30, 1e30], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    return (x.astype(np.float32), y.astype(np.float32)), kwargs


CASES += [
    Case(
        "ntxent_loss",
        jaxloss.ntxent_loss,
        _ntxent_make,
        ntxent_reference,
        coupled=True,
        extreme=lambda: (
            (_con_extreme()[0][0], np.array([0, 0, 1, 1])),
            {"temperature": 0.01},
        ),
    ),
    Case(
        "circle_loss",
        jaxloss.circle_loss,
        _circle_make(gamma=6.0, margin=0.25),
        circle_reference,
        coupled=True,
        grad_order=1,  # α = max(0, ·) has kinks
        extreme=lambda: ((_con_extreme()[0][0], np.array([0, 0, 1, 1])), {}),
    ),
    Case(
        "circle_loss",
        jaxloss.circle_loss,
        _circle_make(gamma=3.0, margin=0.4, remove_diagonal=False, normalize=False),
        circle_reference,
        coupled=True,
        grad_order=1,
        id="circle_loss[keep_diagonal,unnormalized]",
    ),
    Case(
        "clip_loss",
        jaxloss.clip_loss,
        lambda rng: _con_pair(rng, temperature=0.3),
        clip_reference,
        grad_args=(0, 1),
        coupled=True,
        extreme=lambda: _con_extreme(temperature=0.01),
        id="clip_loss[temperature]",
    ),
    Case(
        "clip_loss",
        jaxloss.clip_loss,
        lambda rng: _con_pair(rng, logit_scale=np.asarray(0.7), normalize=False),
        clip_reference,
        grad_args=(0, 1),
        grad_kwargs=("logit_scale",),
        coupled=True,
        id="clip_loss[logit_scale,unnormalized]",
    ),
    Case(
        "siglip_loss",
        jaxloss.siglip_loss,
        lambda rng: _con_pair(rng, logit_scale=np.asarray(1.2), logit_bias=np.asarray(-2.0)),
        siglip_reference,
        grad_args=(0, 1),
        grad_kwargs=("logit_scale", "logit_bias"),
        coupled=True,
        extreme=lambda: _con_extreme(logit_scale=np.float32(np.log(100.0)), logit_bias=-10.0),
    ),
]


# --------------------------------------------------------------------------------------
# Language models: token log-probabilities, distillation, policy-gradient losses
# --------------------------------------------------------------------------------------
# References from the formulas in float64 numpy (the GKD/TRL generalized JSD, PPO's
# clipped surrogate with TRL's aggregations, Schulman's k1/k2/k3). One case per function
# or so, to keep the suite fast; tests/test_language_model.py checks the other options
# (every divergence, aggregation and estimator) against the same references.


def _lm_logits(rng):
    return _normal(rng, (N, 3, 5), scale=2.0)


def _ref_token_log_probs(logits, labels, *, temperature=1.0, where=None):
    lp = special.log_softmax(logits / temperature, axis=-1)
    out = np.take_along_axis(lp, labels[..., None], axis=-1)[..., 0]
    return out if where is None else np.where(where, out, 0.0)


def _ref_sequence_log_probs(x, *, where=None, average=False):
    keep = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    total = np.where(keep, x, 0.0).sum(-1)
    if not average:
        return total
    count = keep.sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _ref_kl_rows(p, q):
    return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0), -1)


def _ref_distillation(
    s, t, *, temperature=1.0, divergence="forward_kl", beta=0.5, scale_by_temperature_squared=False
):
    ps = np.exp(special.log_softmax(s / temperature, axis=-1))
    pt = np.exp(special.log_softmax(t / temperature, axis=-1))
    if divergence == "forward_kl":
        out = _ref_kl_rows(pt, ps)
    elif divergence == "reverse_kl":
        out = _ref_kl_rows(ps, pt)
    elif divergence == "jsd":
        m = beta * pt + (1 - beta) * ps
        out = beta * _ref_kl_rows(pt, m) + (1 - beta) * _ref_kl(ps, m)
    else:
        out = 0.5 * np.abs(ps - pt).sum(-1)
    return out * (temperature**2 if scale_by_temperature_squared else 1.0)


def _pg_make(**options):
    def make(rng):
        lp = np.log(rng.uniform(0.05, 0.95, size=(N, 3, 4)))
        old = lp + rng.normal(size=lp.shape) * 0.3
        adv = rng.normal(size=(N, 3))
        kwargs = dict(options)
        kwargs["where"] = rng.random((N, 3, 4)) < 0.7
        return (lp, old, adv), kwargs

    return make


def _ref_policy_gradient(
    lp,
    old,
    adv,
    *,
    clip_epsilon=0.2,
    clip_epsilon_high=None,
    where=None,
    aggregation="token_mean",
    max_length=None,
):
    high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    t = lp.shape[-1]
    per_sequence = np.ndim(adv) == lp.ndim - 1
    lp, old = lp.reshape(-1, t), np.broadcast_to(old, lp.shape).reshape(-1, t)
    adv = np.broadcast_to(adv.reshape(-1, 1) if per_sequence else adv.reshape(-1, t), lp.shape)
    keep = np.ones(lp.shape, bool) if where is None else np.asarray(where).reshape(-1, t)
    r = np.exp(lp - old)
    loss = -np.minimum(r * adv, np.clip(r, 1 - clip_epsilon, 1 + high) * adv)
    return _ref_aggregate(loss, keep, aggregation, max_length)


def _ref_aggregate(loss, keep, aggregation, max_length=None):
    """The aggregation of per-token losses [B, T] over the kept tokens."""
    loss = np.where(keep, loss, 0.0)
    if aggregation == "token_mean":
        return loss.sum() / keep.sum() if keep.sum() else 0.0
    if aggregation == "sequence_mean":
        count = keep.sum(-1)
        return np.mean(np.where(count > 0, loss.sum(-1) / np.maximum(count, 1), 0.0))
    return loss.sum() / (loss.shape[0] * max_length)


def _ref_kl_penalty(lp, ref, *, estimator="k3"):
    d = ref - lp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    return np.exp(d) - d - 1  # accurate enough in float64 at the sample |Δ| ~ 1


def _ref_group_advantages(r, *, group_size, normalize=True, eps=1e-4):
    g = r.reshape(r.shape[:-1] + (-1, group_size))
    c = g - g.mean(-1, keepdims=True)
    if normalize:
        c = c / (g.std(-1, ddof=1, keepdims=True) + eps)
    return c.reshape(r.shape)


# Student logits with the teacher's -inf (masked vocabulary) entries, and extreme values.
_DISTILL_T = _LOGITS_EXTREME
_DISTILL_S = np.where(
    np.isinf(_LOGITS_EXTREME), -np.inf, np.nan_to_num(_Q_LOGITS_EXTREME, neginf=0)
)


def _distill_case(divergence="forward_kl", **options):
    # String options are bound with partial: the harness casts every kwarg it is given.
    name = ",".join([f"divergence={divergence}"] + [f"{k}={v}" for k, v in options.items()])
    return Case(
        "distillation_loss",
        functools.partial(jaxloss.distillation_loss, divergence=divergence),
        lambda rng: ((_normal(rng, scale=2.0), _normal(rng, scale=2.0)), dict(options)),
        functools.partial(_ref_distillation, divergence=divergence),
        grad_order=1 if divergence == "tvd" else 2,
        extreme=lambda: ((_DISTILL_S, _DISTILL_T), dict(options)),
        id=f"distillation_loss[{name}]",
    )


CASES += [
    Case(
        "token_log_probs",
        jaxloss.token_log_probs,
        lambda rng: (
            (_lm_logits(rng), rng.integers(0, 5, size=(N, 3))),
            {"temperature": 1.5, "where": rng.random((N, 3)) < 0.7},
        ),
        _ref_token_log_probs,
        conventions=False,
        # A label at a -inf logit gives the lowest float, not -inf.
        extreme=lambda: ((_LOGITS_EXTREME, np.array([0, 1, 2, 3])), {}),
    ),
    Case(
        "sequence_log_probs",
        jaxloss.sequence_log_probs,
        lambda rng: (
            (-np.abs(_lm_logits(rng)),),
            {"where": rng.random((N, 3, 5)) < 0.3, "average": True},
        ),
        _ref_sequence_log_probs,
        conventions=False,
        id="sequence_log_probs[average]",
    ),
    _distill_case(),
    _distill_case(divergence="jsd", beta=0.3, temperature=2.0, scale_by_temperature_squared=True),
    Case(
        "policy_gradient_loss",
        jaxloss.policy_gradient_loss,
        _pg_make(),
        _ref_policy_gradient,
        conventions=False,
        id="policy_gradient_loss[token_mean]",
    ),
    Case(
        "policy_gradient_loss",
        functools.partial(jaxloss.policy_gradient_loss, aggregation="sequence_sum_normalized"),
        _pg_make(max_length=6, clip_epsilon_high=0.28),
        functools.partial(_ref_policy_gradient, aggregation="sequence_sum_normalized"),
        conventions=False,
        id="policy_gradient_loss[sequence_sum_normalized,clip_high]",
    ),
    *[
        Case(
            "kl_penalty",
            functools.partial(jaxloss.kl_penalty, estimator=e),
            lambda rng: ((-np.abs(_normal(rng)), -np.abs(_normal(rng))), {}),
            functools.partial(_ref_kl_penalty, estimator=e),
            grad_args=(0, 1),
            # k3 stays finite (and ≥ 0) for Δ from -1e30 to 80 and for tiny Δ.
            extreme=lambda: (
                (
                    np.array([-1.0, 0.0, -20.0, -1e-7, 1e30], np.float32),
                    np.array([-1.0 + 1e-7, -80.0, 60.0, -2e-7, 0.0], np.float32),
                ),
                {},
            ),
            id=f"kl_penalty[{e}]",
        )
        for e in ("k3",)
    ],
    Case(
        "group_relative_advantages",
        jaxloss.group_relative_advantages,
        lambda rng: ((_normal(rng, (N, 6)),), {"group_size": 3}),
        _ref_group_advantages,
        conventions=False,
        # A group of equal rewards (std 0) and rewards of 1e15.
        extreme=lambda: (
            (np.array([5.0, 5.0, 5.0, 1e15, -1e15, 0.0], np.float32),),
            {"group_size": 3},
        ),
    ),
]


# fused_linear_distillation_loss: the soft divergence of `distillation_loss` of
# the two models' logits plus the student's cross-entropy, without either model's [N, V]
# logits; the teacher (hidden size LV_DT, its own weight and bias) is a constant input.
# tests/test_fused_distillation.py checks every divergence against the materialized
# logits in value and gradients at several chunk sizes.
LV_DT = 3  # the teacher's hidden size; not N, so the NaN poisoning spares its weight


def _fused_distill(h, w, h_t, w_t, labels, *, reduction="none", **kwargs):
    return jaxloss.fused_linear_distillation_loss(
        h, w, h_t, w_t, labels, reduction=reduction, **kwargs
    )


def _fused_distill_ref(
    h,
    w,
    h_t,
    w_t,
    labels,
    *,
    student_bias=None,
    teacher_bias=None,
    weight_layout="dense",
    hard_loss_weight=0.0,
    soft_loss_weight=1.0,
    chunk_size=None,
    **options,
):
    zs = h @ (w if weight_layout == "dense" else w.T)
    zt = h_t @ (w_t if weight_layout == "dense" else w_t.T)
    zs = zs if student_bias is None else zs + student_bias
    zt = zt if teacher_bias is None else zt + teacher_bias
    ce = special.logsumexp(zs, axis=-1) - zs[np.arange(len(zs)), labels]
    return soft_loss_weight * _ref_distillation(zs, zt, **options) + hard_loss_weight * ce


def _fused_distill_make(layout="dense", **options):
    def make(rng):
        (hidden, weight, labels), kwargs = _fused_make(layout, **options)(rng)
        t_shape = (LV_DT, LV_V) if layout == "dense" else (LV_V, LV_DT)
        h_t, w_t = _normal(rng, (N, LV_DT)), _normal(rng, t_shape, scale=2.0)
        if kwargs.pop("bias", None) is not None:
            kwargs["student_bias"], kwargs["teacher_bias"] = _normal(rng, (2, LV_V))
        return (hidden, weight, h_t, w_t, labels), kwargs

    return make


def _fused_distill_extreme(bias=False, **options):
    (hidden, weight, labels), kwargs = _fused_extreme(**({"bias": True} if bias else {}))
    h_t = np.array([[-1e4, 1.0, 1e4], [0.0, 1e9, -1e9], [0.0, 0.0, 0.0]], np.float32)
    w_t = np.linspace(1.0, -1.0, LV_DT * LV_V).reshape(LV_DT, LV_V).astype(np.float32)
    if bias:
        kwargs = {"student_bias": kwargs["bias"], "teacher_bias": -kwargs["bias"]}
    return (hidden, weight, h_t, w_t, labels), {**kwargs, **options}


_DISTILL_DENSE = dict(divergence="jsd", beta=0.3)  # bound with partial (strings)
_DISTILL_EMBEDDING = dict(divergence="reverse_kl", weight_layout="embedding")

CASES += [
    Case(
        "fused_linear_distillation_loss",
        functools.partial(_fused_distill, **_DISTILL_DENSE),
        _fused_distill_make(bias=True, chunk_size=4, temperature=1.5, hard_loss_weight=0.5),
        functools.partial(_fused_distill_ref, **_DISTILL_DENSE),
        grad_args=(0, 1),
        grad_kwargs=("student_bias",),
        unbatched=(1, 3, "student_bias", "teacher_bias"),
        extreme=lambda: _fused_distill_extreme(True, hard_loss_weight=0.5, temperature=1.5),
        id="fused_linear_distillation_loss[jsd,bias,hard,temperature,chunk 4 of 6]",
    ),
    Case(
        "fused_linear_distillation_loss",
        functools.partial(_fused_distill, **_DISTILL_EMBEDDING),
        _fused_distill_make(
            "embedding", chunk_size=5, temperature=2.0, scale_by_temperature_squared=True
        ),
        functools.partial(_fused_distill_ref, **_DISTILL_EMBEDDING),
        grad_args=(0, 1),
        unbatched=(1, 3),
        extreme=lambda: _transposed_teacher(_fused_distill_extreme()),
        id="fused_linear_distillation_loss[reverse_kl,embedding,T²,chunk 5 of 6]",
    ),
]


def _transposed_teacher(inputs):
    (hidden, weight, h_t, w_t, labels), kwargs = inputs
    return (
        hidden,
        np.ascontiguousarray(weight.T),
        h_t,
        np.ascontiguousarray(w_t.T),
        labels,
    ), kwargs


# --------------------------------------------------------------------------------------
# Sequence losses: CTC
# --------------------------------------------------------------------------------------


def np_ctc_loss(
    logits, labels, logit_lengths=None, label_lengths=None, blank_id=0, zero_infinity=False
):
    """−log p(labels | logits) per sequence by the α recursion of Graves et al. (2006).

    Written from the paper (§4.1, eqs. 5–8 and 14, in log space), one sequence and one
    state at a time, in float64; a sequence of zero frames has p = 1 for zero labels
    and p = 0 otherwise.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    *batch, frames, _ = logits.shape
    batch = tuple(batch)
    size = labels.shape[-1]
    labels = np.broadcast_to(labels, batch + (size,))
    t_len = np.broadcast_to(frames if logit_lengths is None else np.asarray(logit_lengths), batch)
    l_len = np.broadcast_to(size if label_lengths is None else np.asarray(label_lengths), batch)
    out = np.empty(batch)
    for i in np.ndindex(*batch):
        y = special.log_softmax(logits[i][: t_len[i]], axis=-1)  # log y_t(k)
        ext = [blank_id]  # l': a blank before, between and after the labels
        for c in labels[i][: l_len[i]]:
            ext += [int(c), blank_id]
        if t_len[i] == 0:
            log_p = 0.0 if len(ext) == 1 else -np.inf
        else:
            alpha = np.full(len(ext), -np.inf)
            alpha[: min(2, len(ext))] = y[0, ext[:2]]
            for t in range(1, t_len[i]):
                prev, alpha = alpha, np.full(len(ext), -np.inf)
                for s, k in enumerate(ext):
                    acc = prev[s]
                    if s >= 1:
                        acc = np.logaddexp(acc, prev[s - 1])
                    if s >= 2 and k != blank_id and k != ext[s - 2]:
                        acc = np.logaddexp(acc, prev[s - 2])
                    alpha[s] = acc + y[t, k]
            log_p = np.logaddexp.reduce(alpha[-2:])
        out[i] = 0.0 if (zero_infinity and log_p == -np.inf) else -log_p
    return out


def _ctc_make(rng, frames=6, classes=4, size=3):
    """Repeated labels, an empty label sequence and frames past the length; all possible."""
    labels = rng.integers(1, classes, size=(N, size))
    labels[0, 1] = labels[0, 0]  # a repeat: needs a blank in between
    label_lengths = np.array([3, 2, 0, 1, 3, 2])
    logit_lengths = np.array([6, 4, 5, 1, 6, 3])
    labels[1, 2] = -1  # padding past the length is ignored
    return (_normal(rng, (N, frames, classes), scale=2.0), labels), {
        "logit_lengths": logit_lengths,
        "label_lengths": label_lengths,
    }


CASES += [
    Case(
        "ctc_loss",
        jaxloss.ctc_loss,
        _ctc_make,
        np_ctc_loss,
        # The derivative is a closed-form forward–backward pass (a custom JVP): first
        # order in both modes; second order raises NotImplementedError (tested in
        # tests/test_sequence.py).
        grad_order=1,
        extreme=lambda: (
            (
                np.array([[[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 0.0, -1e4]]], np.float32),
                np.array([[1, 2]]),
            ),
            {},
        ),
    ),
    Case(
        "ctc_loss",
        functools.partial(jaxloss.ctc_loss, blank_id=2, zero_infinity=True),
        lambda rng: (
            (_normal(rng, (N, 5, 3)), rng.integers(0, 2, size=(N, 4))),
            {"label_lengths": np.array([4, 2, 1, 0, 3, 2])},  # 4 labels in 5 frames may not fit
        ),
        functools.partial(np_ctc_loss, blank_id=2, zero_infinity=True),
        grad_order=1,
        id="ctc_loss[blank_id=2,zero_infinity]",
    ),
    Case(
        "ctc_loss_with_forward_probs",
        # The loss (the first output); the α tables are tested against their own float64
        # reference in tests/test_sequence.py.
        lambda *args, **kwargs: jaxloss.ctc_loss_with_forward_probs(*args, **kwargs)[0],
        _ctc_make,
        np_ctc_loss,
        grad_order=1,
    ),
]
