"""One short accelerator check of fused_linear_cross_entropy against the naive computation.

For each configuration: the mean cross-entropy of ``hidden @ weight`` and its gradients
(forward + backward under ``jit``), fused against naive (materialized logits, then
``softmax_cross_entropy``): the largest relative difference of the loss and of each
gradient, XLA's temp memory (``memory_analysis().temp_size_in_bytes``) and the median
wall time of interleaved runs, for the default chunk size and any given with
``--chunk-sizes``. Prints a Markdown table. Float32 products follow JAX's default matmul
precision (TF32 on NVIDIA GPUs), in both computations; set
``JAX_DEFAULT_MATMUL_PRECISION=highest`` for full float32.

    python benchmarks/gpu_check.py                          # on a GPU or TPU: LM-head sizes
    python benchmarks/gpu_check.py --chunk-sizes 256 4096   # and the memory/speed trade-off
    python benchmarks/gpu_check.py --small                  # small sizes, runs anywhere
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jaxloss  # noqa: E402
from jaxloss import _large_vocab as LV  # noqa: E402

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


def fused(chunk_size):
    def loss(hidden, weight, labels):
        return jaxloss.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)

    return loss


def check(n, d, v, dtype, rounds, chunk_sizes):
    """Table rows for one size: fused with each chunk size against naive."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
    weight = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d), dtype)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    args = (hidden, weight, labels)
    programs = {"naive": naive} | {size: fused(size) for size in chunk_sizes}
    programs = {
        k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
        for k, f in programs.items()
    }
    outs = {k: jax.tree.leaves(jax.block_until_ready(p(*args))) for k, p in programs.items()}
    times = {k: [] for k in programs}
    for r in range(rounds):  # interleaved, the order reversed every other round
        for k in list(programs)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            jax.block_until_ready(programs[k](*args))
            times[k].append(time.perf_counter() - start)
    mib = {k: p.memory_analysis().temp_size_in_bytes / 2**20 for k, p in programs.items()}
    med = {k: statistics.median(t) for k, t in times.items()}
    rows = []
    for size in chunk_sizes:
        errors = []
        for a, b in zip(outs[size], outs["naive"], strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            errors.append(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
        chunk = LV.default_chunk(n, v) if size is None else size
        rows.append(
            f"| {n} | {d} | {v} | {dtype} | {chunk}{' (default)' if size is None else ''} | "
            f"{' / '.join(f'{e:.1e}' for e in errors)} | {mib['naive']:.1f} | {mib[size]:.1f} "
            f"| {med['naive'] * 1e3:.1f} | {med[size] * 1e3:.1f} | "
            f"{med[size] / med['naive']:.2f} |"
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small sizes (runs on a CPU)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="*",
        default=[],
        help="explicit chunk sizes to time besides the default one",
    )
    args = parser.parse_args()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} {device.device_kind}, jax {jax.__version__}, "
        f"matmul precision {jax.config.jax_default_matmul_precision or 'default'}\n"
    )
    print(
        "| N | D | V | dtype | chunk | rel. diff. loss / dh / dW | naive temp MiB "
        "| fused temp MiB | naive ms | fused ms | fused / naive |"
    )
    print("|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for n, d, v, dtype in SMALL if args.small else FULL:
        for row in check(n, d, v, jnp.dtype(dtype), args.rounds, [None, *args.chunk_sizes]):
            print(row, flush=True)


if __name__ == "__main__":
    main()
