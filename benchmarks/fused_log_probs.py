"""fused_linear_token_log_probs against token_log_probs of materialized logits.

Forward + backward under ``jit`` of an arbitrary loss on the per-token log-probabilities
(Σ c_i·log p(y_i), whose cotangents arrive only in the backward pass, so the fused
backward recomputes each chunk's logits: four matrix products instead of three), with
respect to the hidden states and the weight. Temp memory from XLA's
``memory_analysis()``; times interleaved (order swapped every round) after a warm-up,
reported as the median of the per-round ratios.

    python benchmarks/fused_log_probs.py --tokens 4096 --timed-tokens 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss


def naive(hidden, weight, labels, c):
    return jnp.sum(c * jaxloss.token_log_probs(hidden @ weight, labels))


def fused(hidden, weight, labels, c):
    return jnp.sum(c * jaxloss.fused_linear_token_log_probs(hidden, weight, labels))


def compiled(loss, n, d, v):
    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((n,), jnp.float32),
    )
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--timed-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    d, v = args.hidden, args.vocab
    for n in args.tokens:
        mem = {
            k: compiled(f, n, d, v).memory_analysis().temp_size_in_bytes
            for k, f in (("naive", naive), ("fused", fused))
        }
        print(
            f"N={n}: temp naive {mem['naive'] / 2**20:.1f} MiB, fused "
            f"{mem['fused'] / 2**20:.1f} MiB (1/{mem['naive'] / mem['fused']:.0f})"
        )
    n = args.timed_tokens
    rng = np.random.default_rng(0)
    inputs = (
        jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
        jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d), jnp.float32),
        jnp.asarray(rng.integers(0, v, n), jnp.int32),
        jnp.asarray(rng.normal(size=n), jnp.float32),
    )
    programs = {k: compiled(f, n, d, v) for k, f in (("naive", naive), ("fused", fused))}
    out = {k: jax.block_until_ready(p(*inputs)) for k, p in programs.items()}
    err = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(out["fused"]), jax.tree.leaves(out["naive"]), strict=True)
    )
    times = {"naive": [], "fused": []}
    for r in range(args.rounds):
        for k in ("naive", "fused") if r % 2 == 0 else ("fused", "naive"):
            start = time.perf_counter()
            jax.block_until_ready(programs[k](*inputs))
            times[k].append(time.perf_counter() - start)
    ratio = statistics.median(f / nv for f, nv in zip(times["fused"], times["naive"], strict=True))
    med = {k: statistics.median(t) for k, t in times.items()}
    print(
        f"N={n}: naive {med['naive']:.3f} s, fused {med['fused']:.3f} s, ratio {ratio:.3f}; "
        f"max relative error {err:.1e}"
    )


if __name__ == "__main__":
    main()
