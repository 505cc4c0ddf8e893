"""What every example shares: command line, progress bar, results files and plots.

Each example is a standalone script (``python examples/<name>.py``). It takes

  --quick        a few seconds of work: the smoke test that CI runs
  --no-progress  no progress bar (for logs and CI)
  --out DIR      where to write the plots and results (default examples/results/<name>/)

and writes ``results.md`` (the table it prints), ``results.json`` (the same numbers and
the settings that produced them) and its plots as PNG into the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files, never open a window

import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent


def parse_args(name: str, description: str, extra=None) -> argparse.Namespace:
    """The shared command line; ``extra(parser)`` may add example-specific options."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--out",
        type=Path,
        default=EXAMPLES / "results" / name,
        help="folder for plots and results (default: %(default)s)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.name = name
    args.out.mkdir(parents=True, exist_ok=True)
    args.started = time.perf_counter()
    return args


def progress(args: argparse.Namespace, total: int, desc: str):
    """A progress bar over ``total`` steps (a no-op with ``--no-progress``)."""
    return tqdm(total=total, desc=desc, disable=args.no_progress, leave=False, file=sys.stderr)


def machine() -> str:
    """A one-line description of where the example ran."""
    import jax

    device = jax.devices()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.system()} {platform.machine()}, {cores} CPU cores, "
        f"jax {jax.__version__} on {device.platform}"
    )


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; every cell is already formatted as text."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pm(values, digits: int = 3, scale: float = 1.0, style: str = "f") -> str:
    """``mean ± std`` of per-seed values (std with ddof=1; the value alone for one seed).

    ``style`` is a format type: ``"f"`` fixed point, ``"e"`` scientific.
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64) * scale
    if v.size == 1:
        return f"{v[0]:.{digits}{style}}"
    return f"{v.mean():.{digits}{style}} ± {v.std(ddof=1):.{digits}{style}}"


def write_results(
    args: argparse.Namespace,
    table: str,
    *,
    settings: dict,
    numbers: dict,
    notes: str = "",
) -> None:
    """Print the table and write it as results.md and results.json in ``args.out``."""
    elapsed = time.perf_counter() - args.started
    where = machine()
    mode = "quick" if args.quick else "default"
    footer = f"_{mode} settings; {elapsed:.0f} s on {where}._"
    text = table + ("\n\n" + notes if notes else "") + "\n\n" + footer + "\n"
    print()
    print(text)
    (args.out / "results.md").write_text(text)
    record = {
        "example": args.name,
        "mode": mode,
        "seconds": round(elapsed, 1),
        "machine": where,
        "settings": settings,
        "results": numbers,
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {args.out / 'results.md'} and results.json")


def save_figure(args: argparse.Namespace, fig, filename: str) -> None:
    """Save ``fig`` as PNG in ``args.out`` and close it."""
    path = args.out / filename
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def train_loop(args, step, state, steps: int, *, desc: str, chunk: int = 50, evaluate=None):
    """Run ``step(state, t) -> (state, metrics)`` for ``steps`` steps.

    The steps run jit-compiled in chunks of ``chunk`` (a ``lax.scan``), the progress bar
    advancing per chunk. Returns the final state, the per-step metrics stacked along a
    leading axis, and ``[(t, evaluate(state)), ...]`` after every chunk when ``evaluate``
    is given (plus once at t = 0).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    if steps % chunk:
        raise ValueError(f"steps ({steps}) must be a multiple of chunk ({chunk})")

    @jax.jit
    def run(state, start):
        return jax.lax.scan(step, state, start + jnp.arange(chunk))

    history, evaluations = [], []
    if evaluate is not None:
        evaluations.append((0, evaluate(state)))
    with progress(args, steps, desc) as bar:
        for start in range(0, steps, chunk):
            state, metrics = run(state, start)
            history.append(jax.device_get(metrics))
            if evaluate is not None:
                evaluations.append((start + chunk, evaluate(state)))
            bar.update(chunk)
    stacked = jax.tree.map(lambda *xs: np.concatenate(xs), *history)
    return state, stacked, evaluations


def stack_models(models):
    """Split equally shaped Flax NNX models; return (graphdef, parameters stacked on axis 0)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, first = nnx.split(models[0], nnx.Param)
    states = [first] + [nnx.split(m, nnx.Param)[1] for m in models[1:]]
    return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states)
