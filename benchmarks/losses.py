"""jaxloss against optax.losses on the same inputs, in one process (CPU by default).

    python benchmarks/losses.py                      # every case, table to stdout and file
    python benchmarks/losses.py --only softmax_ids   # one case
    python benchmarks/losses.py --reps 11 --shape 4096 32768
    python benchmarks/losses.py --platform gpu       # on a GPU; saved as losses-gpu.md

Each case is jitted twice per library: the forward pass (the loss with default
arguments, per example or per element) and forward+backward (``jax.value_and_grad`` of
the mean of that loss). After a warm-up call, the two libraries are timed alternately
(the order flips every repetition) and the median of ``--reps`` runs is reported with the
ratio jaxloss / optax of the medians. Below 1.00 jaxloss is faster. The spread column
gives the middle half (25th to 75th percentile) of the per-round ratios, each from two
runs adjacent in time; a control row times optax against itself the same way: its
distance from 1.00 is the noise of this run.

The "XLA" column compares the two compiled programs (``jit(...).lower(...).compile()``):
"same" where their optimized HLO is identical up to names and source locations, else the
number of instructions of each that produce a full-size ([N, C]) array, fused or not,
which shows where jaxloss's program does more (or less) work per element.

The floor column is the time the case needs at the memory bandwidth measured in the same
run: the bytes that must be read (every input once) and written (the output, and the
gradient for forward+backward) over the bandwidth of an in-place streaming update of an
array of the same size. Ratios are the result; absolute times depend on the machine and
its load, which is recorded with the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jaxloss  # noqa: E402

F32 = 4  # bytes


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: the same inputs through jaxloss and optax.

    ``make(rng, n, c)`` returns the inputs; ``ours`` names the jaxloss function and
    ``peer`` is the optax call, both giving the loss with default arguments;
    ``grad_argnum`` is the input differentiated in forward+backward;
    ``bytes_forward``/``bytes_backward`` give the (read, written) bytes that no
    implementation can avoid. A row whose jaxloss function does not exist (yet) is
    reported as pending; an empty ``ours`` runs the peer on both sides (a control).
    ``adapt(fn)``, where given, turns the jaxloss function into one that takes the
    peer's positional inputs (keyword-only arguments such as CTC's lengths). ``dims``,
    where given, is the case's own input shape: its ``make`` and byte counts ignore
    ``--shape`` and the XLA column counts instructions of that shape.
    """

    name: str
    label: str
    make: Callable
    ours: str
    peer: Callable
    grad_argnum: int
    bytes_forward: Callable[[int, int], tuple[int, int]]
    bytes_backward: Callable[[int, int], tuple[int, int]]
    adapt: Callable | None = None
    dims: tuple[int, ...] | None = None


def _logits(rng, n, c):
    return jnp.asarray(rng.normal(size=(n, c)).astype(np.float32) * 3)


def _probs(rng, n, c):
    x = rng.random((n, c), dtype=np.float32) + 1e-3
    return jnp.asarray(x / x.sum(-1, keepdims=True))


def _softmax_ids(rng, n, c):
    return _logits(rng, n, c), jnp.asarray(rng.integers(0, c, size=n, dtype=np.int32))


def _softmax_probs(rng, n, c):
    return _logits(rng, n, c), _probs(rng, n, c)


def _binary(rng, n, c):
    return _logits(rng, n, c), jnp.asarray((rng.random((n, c)) < 0.3).astype(np.float32))


def _two_distributions(rng, n, c):
    return _probs(rng, n, c), _probs(rng, n, c)


def _pair(rng, n, c):
    return _logits(rng, n, c), _logits(rng, n, c)


def _full(n, c):
    return n * c * F32


# CTC at the size of issue 11: B sequences of T frames over K classes, labels of S ids.
CTC_B, CTC_T, CTC_K, CTC_S = 32, 200, 64, 40


def _ctc(rng, n, c):
    """Logits, labels, lengths and optax's paddings converted from the same lengths."""
    b, t, k, s = CTC_B, CTC_T, CTC_K, CTC_S
    logits = jnp.asarray(rng.normal(size=(b, t, k)).astype(np.float32))
    labels = jnp.asarray(rng.integers(1, k, size=(b, s), dtype=np.int32))
    logit_lengths = rng.integers(t // 2, t + 1, size=b, dtype=np.int32)
    label_lengths = rng.integers(s // 2, s + 1, size=b, dtype=np.int32)
    logit_paddings = (np.arange(t)[None] >= logit_lengths[:, None]).astype(np.float32)
    label_paddings = (np.arange(s)[None] >= label_lengths[:, None]).astype(np.float32)
    return (
        logits,
        labels,
        jnp.asarray(logit_paddings),
        jnp.asarray(label_paddings),
        jnp.asarray(t - logit_paddings.sum(-1).astype(np.int32)),  # lengths = T − Σ paddings
        jnp.asarray(s - label_paddings.sum(-1).astype(np.int32)),
    )


def _ctc_bytes(backward):
    full = CTC_B * CTC_T * CTC_K * F32
    return lambda n, c: (full + CTC_B * CTC_S * 4, full if backward else CTC_B * F32)


CASES = [
    Case(
        "softmax_ids",
        "softmax cross-entropy, integer labels",
        _softmax_ids,
        "softmax_cross_entropy",
        optax.losses.softmax_cross_entropy_with_integer_labels,
        0,
        lambda n, c: (_full(n, c) + n * 4, n * F32),
        lambda n, c: (_full(n, c) + n * 4, _full(n, c)),
    ),
    Case(
        "softmax_probs",
        "softmax cross-entropy, probability labels",
        _softmax_probs,
        "softmax_cross_entropy",
        optax.losses.softmax_cross_entropy,
        0,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "sigmoid_bce",
        "sigmoid binary cross-entropy",
        _binary,
        "sigmoid_binary_cross_entropy",
        optax.losses.sigmoid_binary_cross_entropy,
        0,
        lambda n, c: (2 * _full(n, c), _full(n, c)),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "kl_divergence",
        "KL divergence KL(p‖q)",
        _two_distributions,
        "kl_divergence",  # math order (p, q); optax takes (log q, p)
        lambda p, q: optax.losses.kl_divergence(jnp.log(q), p),
        1,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "kl_logits",
        "KL divergence from logits",
        _pair,
        "kl_divergence_from_logits",  # optax takes log-probabilities, in the order (q, p)
        lambda zp, zq: optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(zq), jax.nn.log_softmax(zp)
        ),
        1,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "poly_cross_entropy",
        "Poly-1 cross-entropy, probability labels",
        _softmax_probs,
        "poly_cross_entropy",
        optax.losses.poly_loss_cross_entropy,
        0,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "generalized_kl",
        "generalized KL divergence",
        _two_distributions,
        "generalized_kl_divergence",  # math order (p, q); optax takes (log q, p)
        lambda p, q: optax.losses.generalized_kl_divergence(jnp.log(q), p),
        1,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "ranking_softmax",
        "ranking softmax loss (relevance summing to 1)",
        _softmax_probs,
        "ranking_softmax_loss",  # optax does not normalize the relevance, so it sums to 1
        lambda s, r: optax.losses.ranking_softmax_loss(s, r, reduce_fn=None),
        0,
        lambda n, c: (2 * _full(n, c), n * F32),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "ctc",
        f"CTC, B={CTC_B} T={CTC_T} K={CTC_K} S={CTC_S}",
        _ctc,
        "ctc_loss",
        lambda z, y, logit_pad, label_pad, _t, _s: optax.ctc_loss(z, logit_pad, y, label_pad),
        0,
        _ctc_bytes(backward=False),
        _ctc_bytes(backward=True),
        adapt=lambda fn: lambda z, y, _lp, _sp, t, s: fn(z, y, logit_lengths=t, label_lengths=s),
        dims=(CTC_B, CTC_T, CTC_K),
    ),
    Case(
        "control",
        "control: optax squared error against itself",
        _pair,
        "",  # the peer runs on both sides: the ratio shows this run's timing noise
        optax.losses.squared_error,
        0,
        lambda n, c: (2 * _full(n, c), _full(n, c)),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
    Case(
        "squared_error",
        "squared error",
        _pair,
        "squared_error",
        optax.losses.squared_error,
        0,
        lambda n, c: (2 * _full(n, c), _full(n, c)),
        lambda n, c: (2 * _full(n, c), _full(n, c)),
    ),
]


def _timed(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _normalized_hlo(text: str) -> str:
    """Optimized HLO without names, source locations and the module's name."""
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    text = re.sub(r"^HloModule \S+", "HloModule", text, flags=re.M)
    text = re.sub(r"^\d+ .*$", "", text, flags=re.M)  # file and location tables
    text = re.sub(r"%[\w.\-]+", "%", text)
    return re.sub(r"\b(param|a)_[\w.]*", "p", text)


def _full_size_ops(text: str, *dims: int) -> int:
    """How many HLO instructions produce an array of shape ``dims`` (parameters excluded)."""
    shape = re.compile(rf"= \w+\[{','.join(map(str, dims))}\]\{{[^}}]*\}} (?!parameter)")
    return sum(1 for line in text.splitlines() if shape.search(line))


def _compare_programs(ours, peer, args, *dims: int) -> str:
    texts = [fn.lower(*args).compile().as_text() for fn in (ours, peer)]
    if _normalized_hlo(texts[0]) == _normalized_hlo(texts[1]):
        return "same"
    return " / ".join(str(_full_size_ops(t, *dims)) for t in texts)


def _bandwidth(n: int, c: int, reps: int) -> float:
    """Memory bandwidth, bytes read plus written per second, of an in-place update.

    The update x ← x + 1 of an [n, c] float32 array reads and writes every byte once;
    its output reuses the (donated) input buffer, so the time is memory traffic, not the
    allocation of fresh pages (as in the STREAM benchmark's kernels).
    """
    x = jnp.ones((n, c), jnp.float32)
    update = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    x = jax.block_until_ready(update(x))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        x = jax.block_until_ready(update(x))
        times.append(time.perf_counter() - start)
    return 2 * _full(n, c) / statistics.median(times)


def _cpuinfo() -> str:
    """The CPU model, family, cache size and vector extensions from /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    vector = "/".join(x for x in ("avx2", "fma", "avx512f") if x in flags) or "no AVX2"
    return (
        f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
        f"{fields.get('cache size', '?')} L2 per core, {vector})"
    )


def _machine() -> str:
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "RAM unknown"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{_cpuinfo()}, {os.cpu_count()} logical CPUs visible, {memory}, "
        f"{platform.system()} {platform.release()}; load average at start {load} (the "
        f"machine is shared); Python {platform.python_version()}, jax {jax.__version__}, "
        f"optax {optax.__version__}, jaxloss {jaxloss.__version__}; backend "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    )


def run(cases: list[Case], n: int, c: int, reps: int) -> str:
    rng = np.random.default_rng(0)
    bandwidth = _bandwidth(n, c, reps)
    rows = []
    for case in cases:
        ours_fn = getattr(jaxloss, case.ours, None) if case.ours else case.peer
        if ours_fn is not None and case.adapt is not None:
            ours_fn = case.adapt(ours_fn)
        if ours_fn is None:
            rows.append(f"| {case.label} | pending: no `jaxloss.{case.ours}` yet | | | | | | |")
            print(f"{case.label}: pending (no jaxloss.{case.ours} yet)", file=sys.stderr)
            continue
        args = case.make(rng, n, c)

        def forward(fn):
            return jax.jit(fn)

        def forward_backward(fn, i=case.grad_argnum):
            return jax.jit(jax.value_and_grad(lambda *a: jnp.mean(fn(*a)), argnums=i))

        for mode, wrap, bytes_of in (
            ("forward", forward, case.bytes_forward),
            ("forward+backward", forward_backward, case.bytes_backward),
        ):
            ours, peer = wrap(ours_fn), wrap(case.peer)
            for fn in (ours, peer, ours, peer):  # compile and warm up
                _timed(fn, args)
            times = {"ours": [], "peer": []}
            for r in range(reps):
                order = (("ours", ours), ("peer", peer))
                for key, fn in order if r % 2 == 0 else order[::-1]:
                    times[key].append(_timed(fn, args))
            t_ours, t_peer = (statistics.median(times[k]) for k in ("ours", "peer"))
            paired = np.array(times["ours"]) / np.array(times["peer"])
            q1, q3 = np.percentile(paired, [25, 75])
            read, written = bytes_of(n, c)
            floor = (read + written) / bandwidth
            row = (
                f"| {case.label} | {mode} | {t_ours * 1e3:.1f} | {t_peer * 1e3:.1f} | "
                f"**{t_ours / t_peer:.2f}** | {q1:.2f}–{q3:.2f} | "
                f"{_compare_programs(ours, peer, args, *(case.dims or (n, c)))} | "
                f"{floor * 1e3:.1f} |"
            )
            rows.append(row)
            print(row, file=sys.stderr)
        del args
    header = (
        f"N = {n}, C = {c}, float32; median of {reps} interleaved runs after warm-up; "
        f"memory bandwidth measured in this run (in-place update, bytes read + written): "
        f"{bandwidth / 1e9:.1f} GB/s. Spread: 25th–75th percentile of the per-round "
        'ratios. XLA: "same" where the compiled programs are identical, else the count '
        "of full-size ([N, C]) instructions in each (jaxloss / optax).\n\n"
        "| case | pass | jaxloss (ms) | optax (ms) | jaxloss / optax | spread | XLA | "
        "bandwidth floor (ms) |\n"
        "|---|---|---:|---:|---:|---:|---|---:|"
    )
    return header + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 32768), metavar=("N", "C"))
    parser.add_argument("--reps", type=int, default=21, help="timed runs per pass (>= 7)")
    parser.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default="cpu")
    parser.add_argument("--only", nargs="*", choices=[c.name for c in CASES], default=None)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to save the Markdown table (default results/losses-PLATFORM.md; "
        "'-' for stdout only)",
    )
    args = parser.parse_args()
    if args.reps < 7:
        parser.error("--reps must be at least 7")
    if args.platform == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() != args.platform:  # a GPU or TPU is picked by default
        parser.error(f"--platform {args.platform}: jax's backend is {jax.default_backend()}")
    if args.output is None:
        args.output = Path(__file__).parent / "results" / f"losses-{args.platform}.md"
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    n, c = args.shape
    machine = _machine()
    table = run(cases, n, c, args.reps)
    today = datetime.date.today().isoformat()
    text = (
        f"# jaxloss vs optax.losses on the {args.platform.upper()}\n\n"
        f"Run on {today} with `python benchmarks/losses.py"
        f"{'' if args.only is None else ' --only ' + ' '.join(args.only)}"
        f" --reps {args.reps} --shape {n} {c} --platform {args.platform}`.\n\n"
        f"Machine: {machine}.\n\n{table}"
    )
    print(text)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
