"""Fused post-training losses of ``hidden @ weight`` against the same losses of materialized logits.

Each row is one fused loss and its naive counterpart (the [N, V] logits formed, then the
loss of them), forward + backward under ``jit`` with respect to the hidden states and the
weight, float32:

- Temp memory: XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled programs
  at each ``--tokens`` N (nothing is run), to show the fused loss's memory flat in N.
- Time: the two programs run alternately (interleaved, the order swapped every round)
  after a warm-up, at ``--timed-tokens``; the ratio is the median of the per-round
  ratios fused / naive.
- The largest relative difference of the loss and the gradients between the two.

    python benchmarks/post_training.py                 # every row, writes results/
    python benchmarks/post_training.py --only token_log_probs --output -

A row registers itself in ``ROWS`` (name, target, naive loss, fused loss, inputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_vocab import cpu_name, max_relative_error  # noqa: E402

import jaxloss  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    target: str  # the target, quoted in the table
    naive: Callable  # (*inputs) -> scalar loss, of materialized logits
    fused: Callable  # (*inputs) -> the same scalar, fused
    inputs: Callable  # (rng, n, d, v) -> tuple of arrays; hidden first, weight second
    argnums: tuple[int, ...] = (0, 1)  # differentiated inputs


ROWS: list[Row] = []


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


def _log_probs_inputs(rng, n, d, v):
    return (
        _normal(rng, (n, d)),
        _normal(rng, (d, v), 1 / np.sqrt(d)),
        jnp.asarray(rng.integers(0, v, n), jnp.int32),
        _normal(rng, (n,)),
    )


ROWS.append(
    Row(
        "token_log_probs",
        "≤ 1.40×, ≤ 1/16 memory",
        # An arbitrary loss on the per-token log-probabilities: Σ c_i·log p(y_i), whose
        # cotangents arrive only in the backward pass (four matrix products, not three).
        lambda h, w, y, c: jnp.sum(c * jaxloss.token_log_probs(h @ w, y)),
        lambda h, w, y, c: jnp.sum(c * jaxloss.fused_linear_token_log_probs(h, w, y)),
        _log_probs_inputs,
    )
)


def _distillation_inputs(rng, n, d, v):
    # A teacher of the student's hidden size; its rows differ from the student's so that
    # the two distributions differ (KL of order 1, the plain form of the KL serves).
    return (
        _normal(rng, (n, d)),
        _normal(rng, (d, v), 1 / np.sqrt(d)),
        _normal(rng, (n, d)),
        _normal(rng, (d, v), 1 / np.sqrt(d)),
    )


ROWS.append(
    Row(
        "distillation",
        "≤ 1.10×, ≤ 1/16 memory",
        # Forward KL(teacher‖student), the mean over tokens; no gradient to the teacher.
        lambda h, w, ht, wt: jaxloss.distillation_loss(
            h @ w, jax.lax.stop_gradient(ht @ wt), reduction="mean"
        ),
        lambda h, w, ht, wt: jaxloss.fused_linear_distillation_loss(h, w, ht, wt),
        _distillation_inputs,
    )
)


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def compiled(row: Row, loss: Callable, example: tuple):
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in example)
    grad = jax.value_and_grad(loss, argnums=row.argnums)
    return jax.jit(grad).lower(*shapes).compile()


def measure(row: Row, tokens: list[int], timed: int, d: int, v: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    memory = []
    for n in tokens:
        example = row.inputs(np.random.default_rng(0), n, d, v)
        temp = {
            k: compiled(row, f, example).memory_analysis().temp_size_in_bytes
            for k, f in (("naive", row.naive), ("fused", row.fused))
        }
        memory.append((n, temp["naive"], temp["fused"]))
        print(
            f"{row.name} N={n}: temp naive {temp['naive'] / 2**20:.1f} MiB, "
            f"fused {temp['fused'] / 2**20:.1f} MiB",
            flush=True,
        )
    args = row.inputs(rng, timed, d, v)
    programs = {k: compiled(row, f, args) for k, f in (("naive", row.naive), ("fused", row.fused))}
    out = {k: jax.block_until_ready(p(*args)) for k, p in programs.items()}  # warm-up
    error = max(
        max_relative_error(a, b)
        for a, b in zip(jax.tree.leaves(out["fused"]), jax.tree.leaves(out["naive"]), strict=True)
    )
    times: dict[str, list[float]] = {"naive": [], "fused": []}
    for r in range(rounds):
        for k in ("naive", "fused") if r % 2 == 0 else ("fused", "naive"):
            start = time.perf_counter()
            jax.block_until_ready(programs[k](*args))
            times[k].append(time.perf_counter() - start)
    ratio = statistics.median(f / nv for f, nv in zip(times["fused"], times["naive"], strict=True))
    med = {k: statistics.median(t) for k, t in times.items()}
    print(
        f"{row.name} N={timed}: naive {med['naive']:.3f} s, fused {med['fused']:.3f} s, "
        f"ratio {ratio:.3f}, max relative error {error:.1e}",
        flush=True,
    )
    return dict(memory=memory, ratio=ratio, naive_s=med["naive"], fused_s=med["fused"], error=error)


def table(results: dict, args) -> str:
    backend = jax.default_backend()
    machine = cpu_name() if backend == "cpu" else jax.devices()[0].device_kind
    try:
        load = f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        load = "load average unknown"
    lines = [
        f"Forward + backward under `jit` with respect to hidden and weight, D = {args.hidden}, "
        f"V = {args.vocab}, float32, backend `{backend}` ({machine}, {os.cpu_count()} CPU "
        f"core(s), {load} at the end), jax {jax.__version__}. Temp memory is XLA's "
        "`memory_analysis().temp_size_in_bytes` (naive / fused at each N); time is the median "
        f"of {args.rounds} interleaved rounds after a warm-up at N = {args.timed_tokens}.",
        "",
        "| loss | target | "
        + " | ".join(f"temp N = {n}" for n in args.tokens)
        + " | naive s | fused s | fused / naive time | max rel. error |",
        "|---|---|" + "---:|" * (len(args.tokens) + 4),
    ]
    for name, r in results.items():
        target = next(row.target for row in ROWS if row.name == name)
        mem = " | ".join(
            f"{a / 2**20:.0f} / {b / 2**20:.1f} MiB (1/{a / b:.0f})" for _, a, b in r["memory"]
        )
        lines.append(
            f"| `{name}` | {target} | {mem} | {r['naive_s']:.3f} | {r['fused_s']:.3f} | "
            f"{r['ratio']:.2f}× | {r['error']:.0e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="row names")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--timed-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--small", action="store_true", help="small sizes, a smoke run")
    parser.add_argument(
        "--output",
        default=None,
        help="the table's file ('-': print only); default results/post_training_<backend>.md",
    )
    args = parser.parse_args()
    if args.small:
        args.tokens, args.timed_tokens, args.hidden, args.vocab, args.rounds = (
            [256, 512],
            256,
            64,
            2048,
            3,
        )
    names = [row.name for row in ROWS]
    for name in args.only or ():
        if name not in names:
            parser.error(f"unknown row {name!r}; the rows are {names}")
    results = {
        row.name: measure(row, args.tokens, args.timed_tokens, args.hidden, args.vocab, args.rounds)
        for row in ROWS
        if args.only is None or row.name in args.only
    }
    text = table(results, args)
    print(text)
    if args.output != "-":
        path = (
            args.output
            or Path(__file__).parent / "results" / f"post_training_{jax.default_backend()}.md"
        )
        Path(path).write_text(text)


if __name__ == "__main__":
    main()
