"""Fused linear cross-entropy against the naive computation: temp memory and wall time.

Forward + backward (``jax.value_and_grad`` with respect to the hidden states and the
weight) under ``jit``, on the default backend (the CPU here). The naive computation
materializes the logits, ``jaxloss.softmax_cross_entropy(hidden @ weight, labels)``.

- Memory: XLA's own accounting of the compiled programs,
  ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``, for each N.
- Time: the two programs run alternately (interleaved, the order swapped every round)
  after a warm-up; reported as medians and as the median of the per-round ratios.

    python benchmarks/large_vocab.py            # N = 4096, 16384; D = 512; V = 32768
    python benchmarks/large_vocab.py --small    # a quick smoke run

Writes a Markdown table to ``benchmarks/results/large_vocab_<backend>.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss

RESULTS = Path(__file__).parent / "results"


def naive(hidden, weight, labels):
    return jaxloss.softmax_cross_entropy(hidden @ weight, labels, reduction="mean")


def fused(hidden, weight, labels, chunk_size=None):
    return jaxloss.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)


def compiled(loss, n, d, v, dtype):
    """The compiled forward + backward program for these shapes."""
    shapes = (
        jax.ShapeDtypeStruct((n, d), dtype),
        jax.ShapeDtypeStruct((d, v), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()


def inputs(n, d, v, dtype, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
    weight = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d), dtype)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    return hidden, weight, labels


def max_relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--timed-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--small", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.small:
        args.tokens, args.timed_tokens, args.hidden, args.vocab = [256, 1024], 256, 64, 2048
        args.rounds = 3
    d, v, dtype = args.hidden, args.vocab, jnp.float32
    backend = jax.default_backend()
    device = jax.devices()[0]
    machine = cpu_name() if backend == "cpu" else device.device_kind
    fused_at = lambda h, w, y: fused(h, w, y, args.chunk_size)  # noqa: E731

    memory = []
    for n in args.tokens:
        row = {"n": n}
        for name, loss in (("naive", naive), ("fused", fused_at)):
            stats = compiled(loss, n, d, v, dtype).memory_analysis()
            row[name] = stats.temp_size_in_bytes
        memory.append(row)
        mib = {k: row[k] / 2**20 for k in ("naive", "fused")}
        print(f"N={n}: temp naive {mib['naive']:.1f} MiB, fused {mib['fused']:.1f} MiB")

    n = args.timed_tokens
    args_ = inputs(n, d, v, dtype)
    programs = {
        name: compiled(loss, n, d, v, dtype)
        for name, loss in (("naive", naive), ("fused", fused_at))
    }
    results = {name: jax.block_until_ready(p(*args_)) for name, p in programs.items()}  # warm-up
    errors = [
        max_relative_error(a, b)
        for a, b in zip(
            jax.tree.leaves(results["fused"]), jax.tree.leaves(results["naive"]), strict=True
        )
    ]
    times = {"naive": [], "fused": []}
    for r in range(args.rounds):
        order = ("naive", "fused") if r % 2 == 0 else ("fused", "naive")
        for name in order:
            start = time.perf_counter()
            jax.block_until_ready(programs[name](*args_))
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(t) for k, t in times.items()}
    paired = statistics.median(f / nv for f, nv in zip(times["fused"], times["naive"], strict=True))
    print(f"N={n}: naive {med['naive']:.3f} s, fused {med['fused']:.3f} s, ratio {paired:.3f}")
    print("max relative error (loss, d hidden, d weight):", ", ".join(f"{e:.1e}" for e in errors))

    lines = [
        f"Forward + backward of the mean cross-entropy of `hidden @ weight` under `jit`, "
        f"D = {d}, V = {v}, float32, backend `{backend}` ({machine}, "
        f"{jax.local_device_count()} device(s), {__import__('os').cpu_count()} CPU core(s)), "
        f"jax {jax.__version__}. Temp memory is XLA's `memory_analysis().temp_size_in_bytes`; "
        f"times are medians of {args.rounds} interleaved rounds after a warm-up.",
        "",
        "| N tokens | naive temp | fused temp | fused / naive |",
        "|---:|---:|---:|---:|",
    ]
    for row in memory:
        lines.append(
            f"| {row['n']} | {row['naive'] / 2**20:.1f} MiB | {row['fused'] / 2**20:.1f} MiB "
            f"| 1/{row['naive'] / row['fused']:.0f} |"
        )
    lines += [
        "",
        "| N tokens | naive time | fused time | fused / naive (median of per-round ratios) |",
        "|---:|---:|---:|---:|",
        f"| {n} | {med['naive']:.3f} s | {med['fused']:.3f} s | {paired:.3f} |",
        "",
        "Fused against naive, max relative error: loss {:.1e}, d hidden {:.1e}, "
        "d weight {:.1e}.".format(*errors),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write and not args.small:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"large_vocab_{backend}.md").write_text(table)


if __name__ == "__main__":
    main()
