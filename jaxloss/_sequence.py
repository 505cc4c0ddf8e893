"""Sequence losses: connectionist temporal classification (CTC).

The CTC loss is computed by the α (forward) recursion of Graves et al. (2006) in log
space, one ``lax.scan`` over time vectorized over the states of the blank-extended label
sequence, its S + 1 blank states and S label states kept apart (a blank state sums two
terms, a label state three). Its derivative is not obtained by differentiating the scan:
a custom JVP forms the gradient with respect to the logits in closed form,

    ∂ℓ/∂z_{t,k} = softmax(z_t)_k − γ_t(k),   γ_t(k) = Σ_{s: l'_s = k} α_t(s) β_t(s) / p,

(Graves et al. 2006, eq. 16), with the posteriors γ_t(s) = α_t(s) β_t(s) / p from the β
recursion in normalized form: one backward scan that shares each state's posterior among
its predecessors by the weights that the forward pass kept (the softmax weights of its
log-sum-exps), so that the backward pass takes no exponential or logarithm. Forward- and
reverse-mode first derivatives are supported; differentiating the derivative again
raises an error that says so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _conventions as C
from jaxloss import _numerics as N

ArrayLike = C.ArrayLike

_SECOND_ORDER = (
    "ctc_loss supports first-order derivatives only (jax.grad, jax.vjp, jax.jvp, "
    "jax.jacfwd/jacrev of the loss); second-order derivatives (jax.hessian, grad of grad, "
    "jvp of grad) are not implemented: its gradient comes from a closed-form "
    "forward-backward pass that is not itself differentiable."
)

_PADDINGS_HINT = (
    "Lengths are integer counts per sequence; to convert optax's padding indicators use "
    "`logit_lengths = T - logit_paddings.sum(-1).astype(int)` and "
    "`label_lengths = S - label_paddings.sum(-1).astype(int)`."
)


# --------------------------------------------------------------------------------------
# The α and β recursions (log space; the blank and the label states of l' apart)
# --------------------------------------------------------------------------------------


def _lse2_shares(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log(eᵃ + eᵇ), eᵃ / (eᵃ + eᵇ)), one exp and one log: the larger term is e⁰ = 1.

    −inf when both are −inf (then the share is 1, and what it multiplies is 0).
    """
    m = jnp.maximum(a, b)
    safe = jnp.where(m == -jnp.inf, 0.0, m)
    e = jnp.exp(jnp.minimum(a, b) - safe)
    total = 1.0 + e
    return m + jnp.log(total), jnp.where(a >= b, 1.0, e) / total


def _lse3_shares(a: jax.Array, b: jax.Array, c: jax.Array) -> tuple[jax.Array, ...]:
    """(log(eᵃ + eᵇ + eᶜ), the shares of a and of c), two exps and one log.

    The largest term is e⁰ = 1; only the other two are exponentiated. The share of b is
    one minus the other two.
    """
    hi, lo = jnp.maximum(a, b), jnp.minimum(a, b)
    m = jnp.maximum(hi, c)
    safe = jnp.where(m == -jnp.inf, 0.0, m)
    e_lo, e_mid = jnp.exp(lo - safe), jnp.exp(jnp.minimum(hi, c) - safe)
    total = 1.0 + e_lo + e_mid
    share_a = jnp.where(a >= b, jnp.where(hi >= c, 1.0, e_mid), e_lo) / total
    share_c = jnp.where(c > hi, 1.0, e_mid) / total
    return m + jnp.log(total), share_a, share_c


@jax.custom_jvp
def _lse2(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(eᵃ + eᵇ), −inf when both are −inf."""
    return _lse2_shares(a, b)[0]


@jax.custom_jvp
def _lse3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """log(eᵃ + eᵇ + eᶜ), −inf when all three are −inf."""
    return _lse3_shares(a, b, c)[0]


def _lse_jvp(fn, primals, tangents):
    # The weights e^(x − out) of a softmax; an unreachable state (out = −inf) gets weight
    # 0 where the automatic derivative would form 0/0 = NaN. Only autodiff of the α tables
    # (ctc_loss_with_forward_probs) comes here; the loss has its closed-form derivative.
    out = fn(*primals)
    safe = jnp.where(out == -jnp.inf, 0.0, out)
    return out, sum(jnp.exp(x - safe) * dx for x, dx in zip(primals, tangents, strict=True))


_lse2.defjvp(functools.partial(_lse_jvp, _lse2))
_lse3.defjvp(functools.partial(_lse_jvp, _lse3))


def _row(x: jax.Array, fill) -> jax.Array:
    return jnp.full((1,) + x.shape[1:], fill, x.dtype)


def _down(x: jax.Array, fill=-jnp.inf) -> jax.Array:
    """x moved one state down along the first (state) axis: row n holds x[n − 1]."""
    if not x.shape[0]:
        return x
    return jnp.concatenate([_row(x, fill), x[:-1]], axis=0)


def _up(x: jax.Array, fill=-jnp.inf) -> jax.Array:
    """x moved one state up along the first (state) axis: row n holds x[n + 1]."""
    if not x.shape[0]:
        return x
    return jnp.concatenate([x[1:], _row(x, fill)], axis=0)


class _Problem:
    """The blank-extended labels l' and the emission log-probabilities of one batch.

    l' = (∅, l₁, ∅, l₂, …, ∅) has S + 1 blank states (state 2n, the blank before label n)
    and S label states (state 2n + 1, label n); the recursions keep them apart, as
    state-major arrays [S + 1, B] and [S, B]. Then every blank state emits the same
    log y_t(∅) and has two predecessors (one log-sum-exp of two terms), and only the
    label states have three; a shift along the states moves whole rows, and XLA
    vectorizes each step over the batch.
    """

    def __init__(self, logits, labels, logit_lengths, label_lengths, blank_id):
        frames = logits.shape[1]
        self.frames_valid = jnp.arange(frames) < logit_lengths[:, None]  # [B, T]
        # Frames past the length are replaced before the softmax (double where): they
        # get exactly zero gradient even when they hold NaN or inf.
        z = jnp.where(self.frames_valid[..., None], logits, 0.0)
        self.log_probs = N.log_softmax(z, axis=-1)  # [B, T, K]
        size = labels.shape[1]
        kept = jnp.arange(size) < label_lengths[:, None]
        self.ids = jnp.where(kept, jnp.clip(labels, 0, logits.shape[-1] - 1), blank_id)  # [B, S]
        # Label n − 1 → label n skips the blank between two *different* labels only.
        differ = (self.ids[:, 1:] != self.ids[:, :-1]).T  # [S − 1, B]
        self.skip = jnp.concatenate([jnp.zeros((min(size, 1), len(labels)), bool), differ])
        # log y_t(∅) [T, B] and log y_t(l_n) [T, S, B], time- and state-major for the scans.
        self.emit_blank = self.log_probs[:, :, blank_id].T
        labels_emit = jnp.take_along_axis(self.log_probs, self.ids[:, None, :], axis=2)
        self.emit_label = jnp.transpose(labels_emit, (1, 2, 0))
        self.logit_lengths = logit_lengths
        self.label_lengths = label_lengths

    def alpha(self, keep: str):
        """(log α of the blank and the label states after the last valid frame, [S + 1, B]
        and [S, B]; per frame, what ``keep`` asks for, or None for ``"none"``).

        ``keep="all"``: log α of both, [T, S + 1, B] and [T, S, B]. ``keep="shares"``: the
        shares of the terms of each step's sums (for the backward pass): of blank n in
        the new blank n [T, S + 1, B] (label n − 1 has the rest), of label n and of label
        n − 1 (the skip) in the new label n [T, S, B] each (blank n has the rest).

        α_{−1} is the indicator of state 0, so that α_0 is the paper's initialization and
        a sequence of zero frames ends where it started. Past a sequence's last frame α
        is carried unchanged.
        """
        blank_shape = (self.emit_label.shape[1] + 1, self.emit_blank.shape[1])
        start_blank = jnp.where(jnp.arange(blank_shape[0])[:, None] == 0, 0.0, -jnp.inf)
        start_blank = jnp.broadcast_to(start_blank, blank_shape).astype(self.emit_blank.dtype)
        start_label = jnp.full(self.emit_label.shape[1:], -jnp.inf, self.emit_label.dtype)

        def step(carry, inputs):
            ab, al = carry
            eb, el, valid = inputs
            # blank n ← blank n, label n − 1; label n ← label n, blank n, label n − 1 (skip)
            from_label = jnp.concatenate([_row(al, -jnp.inf), al])
            skipped = jnp.where(self.skip, _down(al), -jnp.inf)
            out = None
            if keep == "shares":
                sum_b, own_b = _lse2_shares(ab, from_label)
                sum_l, own_l, skip_l = _lse3_shares(al, ab[:-1], skipped)
                out = (own_b, own_l, skip_l)
            else:
                sum_b, sum_l = _lse2(ab, from_label), _lse3(al, ab[:-1], skipped)
            new = (jnp.where(valid, eb + sum_b, ab), jnp.where(valid, el + sum_l, al))
            return new, (new if keep == "all" else out)

        xs = (self.emit_blank, self.emit_label, self.frames_valid.T)
        return jax.lax.scan(step, (start_blank, start_label), xs)

    def final_states(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Where each sequence ends: blank state L, and label state L − 1 where L > 0."""
        states = jnp.arange(self.emit_label.shape[1] + 1)[:, None]
        last = self.label_lengths
        return states == last, (states[:-1] == last - 1), last > 0

    def accepting(self, ab: jax.Array, al: jax.Array) -> tuple[jax.Array, jax.Array]:
        """log α [B] of the two accepting states: blank L and label L − 1 (−inf if L = 0)."""
        at_blank, at_label, _ = self.final_states()
        end = jnp.max(jnp.where(at_blank, ab, -jnp.inf), axis=0)
        prev = jnp.max(jnp.where(at_label, al, -jnp.inf), axis=0, initial=-jnp.inf)
        return end, prev

    def log_likelihood(self, a_end) -> jax.Array:
        return _lse2(*self.accepting(*a_end))

    def posterior(self, a_end, shares):
        """γ_t(s) = α_t(s) β_t(s) / p: the blank states' total [T, B], the label states
        [T, S, B]; 0 at frames past a sequence's length.

        The β recursion in normalized form (Graves et al. 2006, eqs. 10–14): γ_t(s') is
        shared among the predecessors r of s' in proportion to their terms α_{t−1}(r) of
        the sum that formed α_t(s') (the forward pass's ``shares``), and γ_{t−1}(s)
        collects the shares of s. γ stays in [0, 1], and the shares are the weights of a
        softmax over neighbouring states: no large logarithm is added and subtracted
        again (α and β apart reach log magnitudes whose rounding α β / p would keep).
        """
        at_blank, at_label, _ = self.final_states()
        # At the last frame: the accepting states' shares of p.
        _, share = _lse2_shares(*self.accepting(*a_end))
        end_b, end_l = jnp.where(at_blank, share, 0.0), jnp.where(at_label, 1.0 - share, 0.0)
        frames = jnp.arange(self.emit_blank.shape[0])[:, None]
        is_last = frames == self.logit_lengths - 1  # [T, B]

        def step(flow, inputs):  # flow: what frame t + 1 sends back to frame t
            own_b, own_l, skip_l, last, kept = inputs  # the shares that formed α_t
            gb = jnp.where(last, end_b, jnp.where(kept, flow[0], 0.0))
            gl = jnp.where(last, end_l, jnp.where(kept, flow[1], 0.0))
            # blank n → blank n, label n; label n → label n, blank n + 1, label n + 1 (skip)
            to_b = gb * own_b + jnp.concatenate([gl * (1.0 - own_l - skip_l), _row(gb, 0.0)])
            to_l = gl * own_l + (gb * (1.0 - own_b))[1:] + _up(gl * skip_l, 0.0)
            return (to_b, to_l), (jnp.sum(gb, axis=0), gl)

        start: Any = (jnp.zeros_like(end_b), jnp.zeros_like(end_l))
        xs = (*shares, is_last, self.frames_valid.T)
        _, gamma = jax.lax.scan(step, start, xs, reverse=True)
        return gamma


def _finish(log_p: jax.Array, zero_infinity: bool) -> tuple[jax.Array, jax.Array]:
    """(loss, whether the gradient is kept): −log p ≥ 0, +inf (or 0) when p = 0."""
    impossible = log_p == -jnp.inf
    # The true value is ≥ 0 (p ≤ 1); rounding can give −log p = −1e−8 when p ≈ 1, which
    # the clamp removes. The derivative is left to the custom rule (the exact one).
    loss = jnp.maximum(-log_p, 0.0)
    if zero_infinity:
        loss = jnp.where(impossible, 0.0, loss)
    return loss, ~impossible


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _ctc(logits, labels, logit_lengths, label_lengths, blank_id, zero_infinity):
    problem = _Problem(logits, labels, logit_lengths, label_lengths, blank_id)
    a_end, _ = problem.alpha(keep="none")
    return _finish(problem.log_likelihood(a_end), zero_infinity)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _ctc_value_and_grad(logits, labels, logit_lengths, label_lengths, blank_id, zero_infinity):
    """(loss [B], ∂loss/∂logits [B, T, K]) by the forward–backward algorithm."""
    problem = _Problem(logits, labels, logit_lengths, label_lengths, blank_id)
    a_end, shares = problem.alpha(keep="shares")
    loss, kept = _finish(problem.log_likelihood(a_end), zero_infinity)
    g_blank, g_label = problem.posterior(a_end, shares)  # 0 for an impossible sequence
    # γ_t(k) = Σ_{s: l'_s = k} γ_t(s): the blank states' total, and the label states
    # through a one-hot product.
    one_hot = jax.nn.one_hot(problem.ids, logits.shape[-1], dtype=logits.dtype)  # [B, S, K]
    gamma = jnp.einsum("tsb,bsk->btk", g_label, one_hot)  # [B, T, K]
    gamma = gamma.at[:, :, blank_id].add(g_blank.T)
    grad = jnp.exp(problem.log_probs) - gamma
    keep = problem.frames_valid[..., None] & kept[:, None, None]
    return loss, jnp.where(keep, grad, 0.0)


@_ctc_value_and_grad.defjvp
def _ctc_value_and_grad_jvp(blank_id, zero_infinity, primals, tangents):
    raise NotImplementedError(_SECOND_ORDER)


@_ctc.defjvp
def _ctc_jvp(blank_id, zero_infinity, primals, tangents):
    loss, grad = _ctc_value_and_grad(*primals, blank_id, zero_infinity)
    return loss, jnp.einsum("btk,btk->b", grad, tangents[0])


def _forward_tables(logits, labels, logit_lengths, label_lengths, blank_id):
    """log α_t of the blank states [T, B, S + 1] and of the label states [T, B, S].

    States past a sequence's labels (blank n > L_b, label n ≥ L_b) are −inf.
    """
    problem = _Problem(logits, labels, logit_lengths, label_lengths, blank_id)
    _, (a_blank, a_label) = problem.alpha(keep="all")  # [T, S + 1, B], [T, S, B]
    states = jnp.arange(a_blank.shape[1])[:, None]
    a_blank = jnp.where(states <= label_lengths, a_blank, -jnp.inf)
    a_label = jnp.where(states[:-1] < label_lengths, a_label, -jnp.inf)
    return jnp.swapaxes(a_blank, 1, 2), jnp.swapaxes(a_label, 1, 2)


# Jitted once per shape, so that eager calls (and a loop over examples) compile the scans
# once instead of dispatching them op by op; inside an outer jit it is inlined.
_ctc_jit = jax.jit(_ctc, static_argnums=(4, 5))
_forward_tables_jit = jax.jit(_forward_tables, static_argnums=(4,))


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """The value of an input given as a concrete array (checked at trace time), else None."""
    return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _lengths(
    name: str, x, batch: tuple[int, ...], size: int, size_name: str
) -> tuple[jax.Array, jax.Array]:
    """(lengths clipped to [0, size], whether each was outside it) of the batch shape."""
    if x is None:
        return jnp.full(batch, size, jnp.int32), jnp.zeros(batch, bool)
    given = x
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must be an integer array, got {C._describe(x)}. {_PADDINGS_HINT}"
        )
    try:
        ok = jnp.broadcast_shapes(x.shape, batch) == batch
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"`{name}` of shape {x.shape} must broadcast to the batch shape {batch} "
            f"(one length per sequence). {_PADDINGS_HINT}"
        )
    values = _concrete(given)
    if values is not None and values.size and (values.min() < 0 or values.max() > size):
        raise ValueError(
            f"`{name}` must be in [0, {size_name} = {size}], got values in "
            f"[{values.min()}, {values.max()}]. {_PADDINGS_HINT}"
        )
    # Traced lengths cannot be checked: they are clipped for the recursion, and the
    # sequences whose length was out of range get a NaN loss (see _prepare).
    x = jnp.broadcast_to(x, batch)
    return jnp.clip(x, 0, size).astype(jnp.int32), (x < 0) | (x > size)


def _split_concatenated(labels: jax.Array, label_lengths, batch: tuple[int, ...]) -> jax.Array:
    """PyTorch's 1-D concatenated targets [Σ L_b] as padded rows [B, max L_b] (padding −1).

    The split needs the lengths at trace time; traced lengths raise.
    """
    lengths = _concrete(label_lengths)
    if lengths is None:
        raise ValueError(
            f"`labels` of shape {labels.shape} with one `label_lengths` per sequence are "
            "read as PyTorch's concatenated targets, whose split needs `label_lengths` at "
            "trace time, but they are traced (under jit). Pass the labels padded: pad them "
            "to [N, S] (entries past each length are ignored); for the same labels in every "
            "sequence pass `labels[None]`."
        )
    lengths = np.broadcast_to(lengths, batch).reshape(-1).astype(np.int64)
    if lengths.size and lengths.min() < 0:
        return labels  # the range check of label_lengths reports it
    if int(lengths.sum()) != labels.shape[0]:
        raise ValueError(
            f"`labels` of shape {labels.shape} with one `label_lengths` per sequence are "
            f"read as PyTorch's concatenated targets, which need sum(label_lengths) = "
            f"{int(lengths.sum())} labels, got {labels.shape[0]}. Pass the labels padded to "
            "[N, S] (entries past each length are ignored); for the same labels in every "
            "sequence pass `labels[None]`."
        )
    width = max(int(lengths.max(initial=0)), 1)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = start[:, None] + np.arange(width)[None, :]
    kept = np.arange(width)[None, :] < lengths[:, None]
    if labels.shape[0] == 0:
        return jnp.full(batch + (width,), -1, labels.dtype)
    rows = jnp.where(kept, labels[np.where(kept, index, 0)], -1)
    return rows.reshape(batch + (width,))


def _check_labels(labels, label_lengths, classes: int, blank_id: int) -> None:
    """Labels within their lengths must be non-blank class ids (when known at trace time)."""
    values = _concrete(labels)
    size = 0 if values is None or values.ndim == 0 else values.shape[-1]
    lengths = np.asarray(size) if label_lengths is None else _concrete(label_lengths)
    if values is None or lengths is None or values.size == 0:
        return
    kept = np.arange(values.shape[-1]) < lengths[..., None]
    bad = kept & ((values < 0) | (values >= classes))
    if bad.any():
        got = np.broadcast_to(values, bad.shape)[bad][0]
        raise ValueError(
            f"`labels` must be class ids in [0, {classes}) within `label_lengths`, got {got}. "
            "Pad past the length with any id, or pass `label_lengths`."
        )
    if (kept & (values == blank_id)).any():
        raise ValueError(
            f"`labels` contain the blank id {blank_id} within `label_lengths`; the blank "
            "cannot be a label. Pass the right `blank_id`, or shorten `label_lengths`."
        )


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """Checked CTC inputs, flattened to one batch axis [B] for the recursions."""

    logits: jax.Array  # [B, T, K], the compute dtype, dropped sequences zeroed
    labels: jax.Array  # [B, S]
    logit_lengths: jax.Array  # [B], clipped to [0, T]
    label_lengths: jax.Array  # [B], clipped to [0, S]
    invalid: jax.Array  # [B]: a traced length out of range or a traced bad label id
    batch: tuple[int, ...]
    blank_id: int
    zero_infinity: bool
    where: jax.Array | None
    weights: jax.Array | None

    def args(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        return self.logits, self.labels, self.logit_lengths, self.label_lengths

    def finish(self, loss: jax.Array) -> jax.Array:
        """The per-sequence loss [B] in the batch shape, NaN where the input was invalid."""
        return jnp.where(self.invalid, jnp.nan, loss).reshape(self.batch)


def _prepare(
    logits, labels, logit_lengths, label_lengths, blank_id, zero_infinity, where, weights,
    reduction,
) -> _Inputs:  # fmt: skip
    """Every check of the CTC functions' arguments (at trace time), one place."""
    z = C.as_float("logits", logits)
    if z.ndim < 2:
        raise ValueError(f"`logits` must have shape [..., T, K] (frames, classes), got {z.shape}.")
    y = C.as_labels("labels", labels)
    if y.ndim < 1:
        raise ValueError("`labels` must have shape [..., S], got a scalar.")
    *batch, frames, classes = z.shape
    batch = tuple(batch)
    if y.ndim == 1 and batch and label_lengths is not None and np.ndim(label_lengths) >= 1:
        # One label sequence and one length per sequence: PyTorch's concatenated targets.
        y = _split_concatenated(y, label_lengths, batch)
        labels = y
    size = y.shape[-1]
    try:
        label_batch_ok = jnp.broadcast_shapes(y.shape[:-1], batch) == batch
    except ValueError:
        label_batch_ok = False
    if not label_batch_ok:
        raise ValueError(
            f"`labels` of shape {y.shape} do not match `logits` of shape {z.shape}: the "
            f"labels' batch shape {y.shape[:-1]} must broadcast to the logits' {batch}. "
            "`logits` is batch-major [..., T, K]; PyTorch's time-major [T, B, K] needs "
            "`jnp.swapaxes(log_probs, 0, 1)`."
        )
    if isinstance(blank_id, bool) or not isinstance(blank_id, (int, np.integer)):
        raise TypeError(f"`blank_id` must be a Python int, got {blank_id!r}.")
    blank_id = int(blank_id)
    if not 0 <= blank_id < classes:
        raise ValueError(f"`blank_id` must be in [0, K = {classes}), got {blank_id}.")
    if not isinstance(zero_infinity, (bool, np.bool_)):
        raise TypeError(f"`zero_infinity` must be a bool, got {zero_infinity!r}.")
    t_len, t_bad = _lengths("logit_lengths", logit_lengths, batch, frames, "T")
    l_len, l_bad = _lengths("label_lengths", label_lengths, batch, size, "S")
    y = jnp.broadcast_to(y, batch + (size,))
    _check_labels(labels, label_lengths, classes, blank_id)
    where, weights = C.prepare(batch, where, weights, reduction)
    if where is not None:  # dropped sequences: harmless logits before any unsafe step
        z = C.keep(where[..., None, None], z, 0.0)
    # Traced labels cannot be checked at trace time: a bad id within the length gives NaN.
    kept = jnp.arange(size) < l_len[..., None]
    bad = jnp.any(kept & ((y < 0) | (y >= classes) | (y == blank_id)), axis=-1)
    flat = math.prod(batch)
    return _Inputs(
        z.astype(C.compute_dtype(z)).reshape(flat, frames, classes),
        y.reshape(flat, size),
        t_len.reshape(flat),
        l_len.reshape(flat),
        (bad | t_bad | l_bad).reshape(flat),
        batch,
        blank_id,
        bool(zero_infinity),
        where,
        weights,
    )


# --------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------


def ctc_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    logit_lengths: ArrayLike | None = None,
    label_lengths: ArrayLike | None = None,
    blank_id: int = 0,
    zero_infinity: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    """Connectionist temporal classification loss: −log p(labels | logits) per sequence.

        ℓ = −log Σ_{π ∈ B⁻¹(l)} Π_{t < T} y_t(π_t),   y_t = softmax(z_t)

    over every alignment π of T frames that collapses to the labels l under B (merge
    repeats, then drop blanks), computed by the α recursion in log space over the
    blank-extended labels l' = (∅, l₁, ∅, l₂, …, ∅); two equal consecutive labels need a
    blank between them. Values and gradients are those of
    ``torch.nn.functional.ctc_loss(log_softmax(logits).transpose(0, 1), labels,
    logit_lengths, label_lengths, blank=blank_id, reduction="none",
    zero_infinity=zero_infinity)``. PyTorch's ``reduction="mean"`` (each loss divided
    by its label length, then averaged over the batch) is
    ``jnp.mean(ctc_loss(...) / jnp.maximum(label_lengths, 1))``.

    The loss is never negative (it is clamped at 0 where rounding would give −1e−8 for
    p ≈ 1; the gradient is the exact one). A label sequence that no alignment of the
    frames can produce (fewer frames than labels plus repeats) has loss +inf and
    gradient 0, or loss 0 and gradient 0 with ``zero_infinity=True``. Frames past
    ``logit_lengths`` and labels past ``label_lengths`` are ignored: their logits get
    exactly zero gradient even if they hold NaN or inf.

    Derivatives: the gradient comes from the β recursion in closed form (a custom JVP),
    so ``jax.grad``, ``jax.vjp`` and ``jax.jvp`` work and cost about one more pass;
    second-order derivatives raise ``NotImplementedError``.

    From optax: ``optax.ctc_loss(logits, logit_paddings, labels, label_paddings)``
    takes 0/1 padding indicators; pass ``logit_lengths = T - logit_paddings.sum(-1)``
    and ``label_lengths = S - label_paddings.sum(-1)`` (as integers) instead. optax's
    paddings must be right-padded, which is what lengths describe.

    Args:
      logits: z, floating array [..., T, K] of unnormalized scores (log-softmax is taken
        inside, in float32 or wider), batch-major (PyTorch's input is time-major
        [T, B, K]: use ``jnp.swapaxes(x, 0, 1)``).
      labels: integer array [..., S] of class ids, broadcastable to the batch shape
        ``logits.shape[:-2]`` plus S; entries past ``label_lengths`` are ignored (any
        padding id, e.g. −1). Within the length, an id outside [0, K) or equal to
        ``blank_id`` is a ``ValueError`` for concrete labels and gives a NaN loss for
        traced ones (never a silent finite value). A 1-D array given with one
        ``label_lengths`` per sequence is PyTorch's concatenated layout [Σ L_b] and is
        split by the lengths, which must then be known at trace time (concrete, also
        under ``jit``) and sum to its size; otherwise it raises. For the same labels in
        every sequence pass ``labels[None]``.
      logit_lengths: optional integer array [...] of valid frames per sequence,
        0 ≤ T_b ≤ T (default T). Out of range: a ``ValueError`` when concrete, a NaN
        loss for that sequence when traced.
      label_lengths: optional integer array [...] of labels per sequence, 0 ≤ L_b ≤ S
        (default S); out of range as for ``logit_lengths``.
      blank_id: the class id of the blank, in [0, K) (default 0).
      zero_infinity: give impossible sequences loss 0 (and gradient 0) instead of +inf.
      where: optional boolean mask [...] of the sequences to keep (True = keep).
      weights: optional non-negative per-sequence weights [...].
      reduction: ``"none"`` (per sequence), ``"sum"`` or ``"mean"`` (Σ w·ℓ / Σ w).

    Returns:
      The batch shape ``logits.shape[:-2]`` for ``"none"``, else a scalar; float32, or
      float64 for float64 logits (bf16/f16 are computed and returned in float32).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.zeros((1, 3, 3))  # T = 3 frames, K = 3 classes, uniform
      >>> loss = jaxloss.ctc_loss(logits, jnp.array([[1, 1]]))  # "1 1" needs 1 ∅ 1
      >>> bool(jnp.allclose(loss, 3 * jnp.log(3.0)))  # the single alignment (1, ∅, 1)
      True
      >>> jaxloss.ctc_loss(logits, jnp.array([[1, 2, 1, 2]]))  # too long for 3 frames
      Array([inf], dtype=float32)

    References:
      Graves, Fernández, Gomez and Schmidhuber, "Connectionist temporal classification:
      labelling unsegmented sequence data with recurrent neural networks", ICML 2006,
      §4.1 (the α and β recursions, eqs. 6–16).
    """
    inputs = _prepare(
        logits, labels, logit_lengths, label_lengths, blank_id, zero_infinity, where, weights,
        reduction,
    )  # fmt: skip
    loss = _ctc_jit(*inputs.args(), inputs.blank_id, inputs.zero_infinity)
    return C.reduce(
        inputs.finish(loss), where=inputs.where, weights=inputs.weights, reduction=reduction
    )


def ctc_loss_with_forward_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    logit_lengths: ArrayLike | None = None,
    label_lengths: ArrayLike | None = None,
    blank_id: int = 0,
    zero_infinity: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "none",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The CTC loss and the forward (α) log-probabilities of every frame and state.

        α_t(s) = y_t(l'_s) · (α_{t−1}(s) + α_{t−1}(s − 1) + σ_s α_{t−1}(s − 2)),
        ℓ = −log(α_{T_b−1}(2L_b) + α_{T_b−1}(2L_b − 1))

    over the blank-extended labels l' = (∅, l₁, ∅, l₂, …, ∅), with σ_s = 1 where l'_s is a
    label different from l'_{s−2} (else 0) and α_{−1} the indicator of state 0: α_t(s) is
    the probability of the first t + 1 frames' alignments that end in state s. The loss
    is :func:`ctc_loss`'s (same arguments, values and closed-form gradient); the tables
    come from the same recursion and are split as optax's are: the blank states 2n and
    the label states 2n + 1, time-major.

    From optax: ``optax.losses.ctc_loss_with_forward_probs(logits, logit_paddings,
    labels, label_paddings)`` returns the same three arrays of the same shapes for a
    batch [B]; pass lengths instead of paddings (see :func:`ctc_loss`). Differences:
    states that no alignment reaches, and states past a sequence's labels, are −inf
    here, where optax has values near its ``log_epsilon`` (−1e5) or the α of its
    padding ids; and optax's last row of the blank table also adds the label states,
    ``jnp.logaddexp(log_alpha_blank[-1][..., 1:], log_alpha_label[-1])`` (the
    probability of n labels emitted by the end), where here every row is α.

    Args:
      logits: z, floating array [..., T, K] of unnormalized scores, batch-major.
      labels: integer array [..., S] of class ids (or PyTorch's concatenated 1-D
        targets), as in :func:`ctc_loss`.
      logit_lengths: optional integer array [...] of valid frames, 0 ≤ T_b ≤ T. Past a
        sequence's last frame its α is carried unchanged (as optax's is).
      label_lengths: optional integer array [...] of labels, 0 ≤ L_b ≤ S.
      blank_id: the class id of the blank, in [0, K) (default 0).
      zero_infinity: give impossible sequences loss 0 (and gradient 0) instead of +inf.
      where: optional boolean mask [...] of the sequences to keep; a dropped sequence's
        tables are −inf.
      weights: optional non-negative per-sequence weights [...] (of the loss).
      reduction: ``"none"``, ``"sum"`` or ``"mean"``, applied to the loss only.

    Returns:
      ``(loss, log_alpha_blank, log_alpha_label)``: the loss of the batch shape for
      ``"none"`` (else a scalar); log α of the blank states [T, ..., S + 1] (entry
      [t, ..., n] is log α_t(2n)) and of the label states [T, ..., S] (log α_t(2n + 1)).
      float32, or float64 for float64 logits. A sequence whose traced lengths or labels
      are invalid has a NaN loss and NaN tables. The loss's gradient is
      :func:`ctc_loss`'s closed form; the tables are differentiated through the
      recursion (an unreachable state, −inf, passes zero gradient).

    Example:
      >>> import jax.numpy as jnp, jaxloss
      >>> logits = jnp.zeros((1, 2, 3))  # T = 2 frames, K = 3 classes, uniform
      >>> loss, blank, label = jaxloss.ctc_loss_with_forward_probs(logits, jnp.array([[1]]))
      >>> blank.shape, label.shape  # [T, B, S + 1], [T, B, S]
      ((2, 1, 2), (2, 1, 1))
      >>> jnp.round(9 * jnp.exp(blank[:, 0]))  # 9 α_t(∅ before 1), 9 α_t(∅ after 1)
      Array([[3., 0.],
             [1., 1.]], dtype=float32)
      >>> jnp.round(9 * jnp.exp(label[:, 0, 0]))  # 9 α_t(1): (1); then (∅ 1), (1 1)
      Array([3., 2.], dtype=float32)
      >>> bool(jnp.allclose(loss, jnp.log(3.0)))  # −log(1/9 + 2/9)
      True

    References:
      Graves, Fernández, Gomez and Schmidhuber, "Connectionist temporal classification:
      labelling unsegmented sequence data with recurrent neural networks", ICML 2006,
      §4.1 (the α recursion, eqs. 5–8); optax's ``ctc_loss_with_forward_probs`` for the
      layout of the tables.
    """
    inputs = _prepare(
        logits, labels, logit_lengths, label_lengths, blank_id, zero_infinity, where, weights,
        reduction,
    )  # fmt: skip
    loss = _ctc_jit(*inputs.args(), inputs.blank_id, inputs.zero_infinity)
    tables = _forward_tables_jit(*inputs.args(), inputs.blank_id)
    frames = inputs.logits.shape[1]
    dropped = (
        jnp.zeros(inputs.logits.shape[0], bool)
        if inputs.where is None
        else ~jnp.broadcast_to(inputs.where, inputs.batch).reshape(-1)
    )

    def finish(x):  # [T, B, n] → [T, ..., n]: −inf where dropped, NaN where invalid
        x = jnp.where(dropped[:, None], -jnp.inf, x)
        x = jnp.where(inputs.invalid[:, None], jnp.nan, x)
        return x.reshape((frames,) + inputs.batch + x.shape[-1:])

    blank, label = (finish(x) for x in tables)
    loss = C.reduce(
        inputs.finish(loss), where=inputs.where, weights=inputs.weights, reduction=reduction
    )
    return loss, blank, label
