"""Memory and time of a language-model head's loss as the vocabulary grows.

The last layer of a language model maps each hidden state h (dimension d) to V logits,
z = h·W, and the loss is the softmax cross-entropy of the next token. Computed naively,
``softmax_cross_entropy(hidden @ W, labels)`` materializes the [tokens, V] logits (and,
for the gradient, an array of the same size), which dominates memory once V is large.
``fused_linear_cross_entropy(hidden, W, labels)`` computes the same loss and gradients
in chunks of the vocabulary without ever holding all the logits.

For a sweep of V, the script compiles ``value_and_grad`` of both (loss and gradients in
``hidden`` and ``W``) and reports:

- peak temporary memory, from XLA's memory analysis of the compiled program (what the
  program allocates besides its inputs and outputs; deterministic);
- time per call, interleaved runs after warm-up, the median, and the ratio naive/fused;
- the largest difference between the two losses and gradients (they must agree).

    python examples/large_vocab_lm_head.py [--quick] [--no-progress] [--out DIR]
"""

from __future__ import annotations

import time

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxloss

NAME = "large_vocab_lm_head"


def naive(hidden, w, labels):
    return jaxloss.softmax_cross_entropy(hidden @ w, labels, reduction="mean")


def fused(hidden, w, labels):
    return jaxloss.fused_linear_cross_entropy(hidden, w, labels, reduction="mean")


def compiled(fn, *args):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()


def temp_bytes(executable) -> float:
    analysis = executable.memory_analysis()
    return float(analysis.temp_size_in_bytes) if analysis is not None else float("nan")


def median_times(executables, args, repeats):
    """Interleaved timing: each round calls every executable once; medians per executable."""
    for ex in executables:  # warm-up
        jax.block_until_ready(ex(*args))
    times = [[] for _ in executables]
    for _ in range(repeats):
        for i, ex in enumerate(executables):
            start = time.perf_counter()
            jax.block_until_ready(ex(*args))
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    tokens, dim = (256, 64) if args.quick else (1024, 256)
    vocabs = [1024, 4096] if args.quick else [2048, 8192, 32768, 65536]
    repeats = 3 if args.quick else 5
    rng = np.random.default_rng(0)

    rows, numbers = [], []
    bar = _common.progress(args, len(vocabs), "vocabulary sizes")
    for vocab in vocabs:
        hidden = jnp.asarray(rng.standard_normal((tokens, dim)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((dim, vocab)) / np.sqrt(dim), jnp.float32)
        labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)
        call = (hidden, w, labels)
        ex_naive, ex_fused = compiled(naive, *call), compiled(fused, *call)
        (loss_n, grads_n), (loss_f, grads_f) = ex_naive(*call), ex_fused(*call)
        diff = max(
            float(jnp.abs(loss_n - loss_f)),
            *(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads_n, grads_f, strict=True)),
        )
        t_naive, t_fused = median_times([ex_naive, ex_fused], call, repeats)
        m_naive, m_fused = temp_bytes(ex_naive), temp_bytes(ex_fused)
        logits_mb = tokens * vocab * 4 / 2**20
        numbers.append(
            {
                "vocab": vocab,
                "logits_MiB": logits_mb,
                "naive_temp_MiB": m_naive / 2**20,
                "fused_temp_MiB": m_fused / 2**20,
                "naive_ms": 1e3 * t_naive,
                "fused_ms": 1e3 * t_fused,
                "max_abs_difference": diff,
            }
        )
        rows.append(
            [
                f"{vocab:,}",
                f"{logits_mb:.0f}",
                f"{m_naive / 2**20:.1f}",
                f"{m_fused / 2**20:.1f}",
                f"{1e3 * t_naive:.1f}",
                f"{1e3 * t_fused:.1f}",
                f"{t_naive / t_fused:.2f}",
                f"{diff:.1e}",
            ]
        )
        bar.update(1)
    bar.close()
    table = _common.markdown_table(
        [
            "vocabulary",
            "logits (MiB)",
            "naive temp memory (MiB)",
            "fused temp memory (MiB)",
            "naive (ms)",
            "fused (ms)",
            "time naive / fused",
            "largest difference",
        ],
        rows,
    )
    notes = (
        f"{tokens} tokens, hidden size {dim}, float32; `value_and_grad` in `hidden` and `W`. "
        "Memory: XLA's temp allocation of the compiled program (inputs and outputs "
        f"excluded). Time: median of {repeats} interleaved calls after warm-up, on a CPU "
        "shared with other work, so ratios are more reliable than absolute times."
    )
    _common.write_results(
        args,
        table,
        settings={"tokens": tokens, "hidden": dim, "vocabularies": vocabs, "repeats": repeats},
        numbers={"rows": numbers},
        notes=notes,
    )

    plot(args, numbers)


def plot(args, numbers):
    """Memory and time against the vocabulary size, from the rows of the results."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    v = [r["vocab"] for r in numbers]
    axes[0].plot(
        v, [r["naive_temp_MiB"] for r in numbers], "o-", label="naive (logits materialized)"
    )
    axes[0].plot(
        v, [r["fused_temp_MiB"] for r in numbers], "s-", label="fused_linear_cross_entropy"
    )
    axes[0].plot(v, [r["logits_MiB"] for r in numbers], "k:", label="size of the logits")
    axes[0].set(xscale="log", yscale="log", xlabel="vocabulary size", ylabel="MiB")
    axes[0].set_title("peak temporary memory of value_and_grad")
    axes[1].plot(v, [r["naive_ms"] for r in numbers], "o-", label="naive")
    axes[1].plot(v, [r["fused_ms"] for r in numbers], "s-", label="fused")
    axes[1].set(xscale="log", yscale="log", xlabel="vocabulary size", ylabel="ms per call")
    axes[1].set_title("time of value_and_grad (median)")
    for ax in axes:
        ax.set_xticks(v, [f"{x:,}" for x in v])
        ax.minorticks_off()
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _common.save_figure(args, fig, "large_vocab_lm_head.png")


if __name__ == "__main__":
    main()
