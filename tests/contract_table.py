"""The contract-test table: every public jaxloss function, registered once.

Each family adds its ``Case`` entries in its own section below. References are
independent float64 numpy/scipy implementations, never jaxloss itself.
``NOT_IN_TABLE`` names the public names that are not loss or penalty functions
(higher-order helpers, sub-namespaces) with the test file that covers each.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

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


# --------------------------------------------------------------------------------------
# Classification (issue 3)
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Regularization penalties (issue 4)
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Large-vocabulary and vocab-parallel cross-entropy (issue 6)
# --------------------------------------------------------------------------------------
