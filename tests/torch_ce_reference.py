"""PyTorch's documented cross-entropy, in float64 numpy (class ids or probabilities).

Written from the formula of ``torch.nn.functional.cross_entropy(input, target,
weight=w, ignore_index=ii, label_smoothing=ε, reduction=...)`` (torch's documentation),
independently of jaxloss; torch itself is not a test dependency. With log p =
log_softmax(z) over C classes and rows with y_n == ignore_index left out:

    nll_n    = −w[y_n]·log p[n, y_n]
    smooth_n = −(1/C)·Σ_c w[c]·log p[n, c]
    loss_n   = (1 − ε)·nll_n + ε·smooth_n                 reduction="none"
    "sum"    = Σ_n loss_n,   "mean" = Σ_n loss_n / Σ_{n kept} w[y_n]

Probability targets t (floating ``labels``; torch has no ignore_index for them):

    t~       = (1 − ε)·t + ε/C
    loss_n   = −Σ_c w[c]·t~[n, c]·log p[n, c]                reduction="none"
    "sum"    = Σ_n loss_n,   "mean" = Σ_n loss_n / N
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def torch_cross_entropy(
    logits, labels, *, weight=None, ignore_index=None, label_smoothing=0.0, reduction="none"
):
    """torch.nn.functional.cross_entropy, logits [N, C], float64; integer labels are class
    ids, floating labels [N, C] are probabilities."""
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    n, c = z.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    if labels.dtype.kind == "f":
        t = (1.0 - label_smoothing) * labels + label_smoothing / c
        loss = -(w * t * log_p).sum(axis=1)
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.sum() / n
    kept = np.ones(n, bool) if ignore_index is None else labels != ignore_index
    y = np.where(kept, labels, 0)
    nll = -w[y] * log_p[np.arange(n), y]
    smooth = -(log_p * w).sum(axis=1) / c
    loss = np.where(kept, (1.0 - label_smoothing) * nll + label_smoothing * smooth, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w[y][kept].sum()
