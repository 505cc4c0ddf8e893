"""One short accelerator check of fused_linear_cross_entropy against the naive computation.

For each configuration: the mean cross-entropy of ``hidden @ weight`` and its gradients
(forward + backward under ``jit``), fused against naive (materialized logits, then
``softmax_cross_entropy``): the largest relative difference of the loss and of each
gradient, XLA's temp memory (``memory_analysis().temp_size_in_bytes``) and the median
wall time of interleaved runs. Prints a Markdown table.

    python benchmarks/gpu_check.py            # on a GPU or TPU: LM-head sizes
    python benchmarks/gpu_check.py --small    # small sizes, runs anywhere (e.g. CPU)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss

# (tokens, hidden size, vocabulary, dtype)
FULL = [
    (4096, 512, 32768, "float32"),
    (16384, 2048, 131072, "float32"),
    (16384, 2048, 131072, "bfloat16"),
]
SMALL = [(2048, 64, 8192, "float32"), (2048, 64, 8192, "bfloat16")]


def naive(hidden, weight, labels):
    logits = jnp.dot(hidden, weight, preferred_element_type=jnp.float32)
    return jaxloss.softmax_cross_entropy(logits, labels, reduction="mean")


def fused(hidden, weight, labels):
    return jaxloss.fused_linear_cross_entropy(hidden, weight, labels)


def check(n, d, v, dtype, rounds):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
    weight = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d), dtype)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    programs = {
        name: jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(hidden, weight, labels).compile()
        for name, f in (("naive", naive), ("fused", fused))
    }
    outs = {name: jax.block_until_ready(p(hidden, weight, labels)) for name, p in programs.items()}
    errors = []
    for a, b in zip(jax.tree.leaves(outs["fused"]), jax.tree.leaves(outs["naive"]), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        errors.append(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
    times = {name: [] for name in programs}
    for r in range(rounds):
        for name in ("naive", "fused") if r % 2 == 0 else ("fused", "naive"):
            start = time.perf_counter()
            jax.block_until_ready(programs[name](hidden, weight, labels))
            times[name].append(time.perf_counter() - start)
    temp = {k: p.memory_analysis().temp_size_in_bytes / 2**20 for k, p in programs.items()}
    med = {k: statistics.median(t) for k, t in times.items()}
    return (
        f"| {n} | {d} | {v} | {dtype} | {errors[0]:.1e} / {errors[1]:.1e} / {errors[2]:.1e} "
        f"| {temp['naive']:.1f} | {temp['fused']:.1f} | {med['naive'] * 1e3:.1f} "
        f"| {med['fused'] * 1e3:.1f} | {med['fused'] / med['naive']:.2f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small sizes (runs on a CPU)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}, jax {jax.__version__}\n")
    print(
        "| N | D | V | dtype | rel. diff. loss / dh / dW | naive temp MiB | fused temp MiB "
        "| naive ms | fused ms | fused / naive |"
    )
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for n, d, v, dtype in SMALL if args.small else FULL:
        print(check(n, d, v, jnp.dtype(dtype), args.rounds), flush=True)


if __name__ == "__main__":
    main()
