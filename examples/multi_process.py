"""Data-parallel training over several JAX processes, with the loss of one process.

Beyond one machine JAX runs one process per host (``jax.distributed.initialize``), each
feeding its own part of every batch. The classic mistake is then to average the loss
per host and average the hosts' averages: wrong whenever the hosts hold different
numbers of valid examples (padding, variable lengths, masked tokens). A jaxloss
``reduction="mean"`` inside ``jit`` over arrays sharded across the processes is the
global mean, so the training must be the same as on one process.

The script launches itself as ``--num-processes`` processes on this machine (each with
``--devices-per-process`` CPU devices, a coordinator on 127.0.0.1, gloo CPU
collectives), as one would on several hosts. They train an MLP on the 8×8 digits,
data-parallel: each process builds its rows of the global batch
(``jax.make_array_from_process_local_data``), part of them padding that the loss masks
out with ``where=``, more on some processes than on others. The launcher then trains
the same model on the same global batches in a single process and checks that every
process printed the same per-step losses; the table also shows what the mean of the
per-process means would have been.

    python examples/multi_process.py [--num-processes 2] [--quick] [--no-progress] [--out DIR]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

import jaxloss

NAME = "multi_process"
BATCH_PER_PROCESS = 32
TOLERANCE = 1e-5  # float32: the per-step losses of the two runs, relative


def settings(args):
    return {
        "num_processes": args.num_processes,
        "devices_per_process": args.devices_per_process,
        "steps": 30 if args.quick else 300,
        "global_batch": BATCH_PER_PROCESS * args.num_processes,
        "learning_rate": 3e-3,
        "hidden": 64,
    }


def global_batches(config):
    """Every step's global batch (features, labels, which rows are real), all processes.

    Process p's rows are [32p, 32p + 32); of them a random number are padding, fewer on
    process 0 than on the last one (the valid fraction falls from 90 % to 40 %).
    """
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(0)
    n, b = config["num_processes"], BATCH_PER_PROCESS
    valid_rate = np.repeat(np.linspace(0.9, 0.4, n) if n > 1 else [0.9], b)
    for _ in range(config["steps"]):
        rows = rng.choice(len(x), size=n * b, replace=False)
        yield x[rows], y[rows], rng.random(n * b) < valid_rate


def init_params(config):
    k1, k2 = jax.random.split(jax.random.key(0))
    h = config["hidden"]
    return {
        "w1": jax.random.normal(k1, (64, h)) / 8.0,
        "b1": jnp.zeros(h),
        "w2": jax.random.normal(k2, (h, 10)) / np.sqrt(h),
        "b2": jnp.zeros(10),
    }


def loss_fn(params, x, y, valid):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return jaxloss.softmax_cross_entropy(logits, y, where=valid, reduction="mean")


def train(config, *, on_step=None):
    """Train on the global batches; each process passes only its rows. Per-step losses."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices), ("data",))
    rows = NamedSharding(mesh, P("data"))  # the batch: split over every device
    optimizer = optax.adam(config["learning_rate"])
    params = jax.device_put(init_params(config), NamedSharding(mesh, P()))  # replicated
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y, valid):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, valid)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    part = config["global_batch"] // jax.process_count()  # the rows each process feeds
    me = slice(jax.process_index() * part, (jax.process_index() + 1) * part)
    local_loss_fn = jax.jit(loss_fn)
    losses, mean_of_means = [], []
    for x, y, valid in global_batches(config):
        # Only this process's part of the batch (a real loader would read only its own).
        local = (x[me], y[me], valid[me])
        batch = [jax.make_array_from_process_local_data(rows, a) for a in local]
        local_params = jax.tree.map(lambda a: a.addressable_data(0), params)
        local_loss = local_loss_fn(local_params, *local)
        params, state, loss = step(params, state, *batch)
        losses.append(float(loss.addressable_data(0)))
        # The mistake, for comparison: each process's own mean, then their average.
        mean_of_means.append(float(np.mean(multihost_utils.process_allgather(local_loss))))
        if on_step is not None:
            on_step()
    return losses, mean_of_means


# --------------------------------------------------------------------------------------
# Launching: the same script as N processes, as a cluster launcher would on N hosts
# --------------------------------------------------------------------------------------


def worker(args):
    """One of the N processes: join the others, train, write this process's losses."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=120,
    )
    config = settings(args)
    with _common.progress(args, config["steps"], f"process {args.process_id}") as bar:
        losses, mean_of_means = train(config, on_step=lambda: bar.update(1))
    record = {"devices": jax.device_count(), "losses": losses, "mean_of_means": mean_of_means}
    (args.out / f"process_{args.process_id}.json").write_text(json.dumps(record))
    jax.distributed.shutdown()


def launch(args, timeout: float) -> list[dict]:
    """Start this script as ``--num-processes`` processes; kill all if one fails."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ)
    # Must be set before JAX starts in the new process: its number of CPU devices.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices_per_process}"
    env["JAX_PLATFORMS"] = "cpu"
    flags = ["--out", str(args.out), "--coordinator", coordinator]
    flags += ["--num-processes", str(args.num_processes)]
    flags += ["--devices-per-process", str(args.devices_per_process)]
    flags += ["--quick"] * args.quick + ["--no-progress"] * args.no_progress
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *flags, "--process-id", str(i)],
            env=env,
            start_new_session=True,  # a process group of its own, killed as one
        )
        for i in range(args.num_processes)
    ]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                raise SystemExit("a process failed; stopping the others")
            if time.monotonic() > deadline:
                raise SystemExit(f"the processes took more than {timeout:.0f} s; stopped")
            time.sleep(0.1)
        if any(p.returncode != 0 for p in procs):
            raise SystemExit("a process failed")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [
        json.loads((args.out / f"process_{i}.json").read_text()) for i in range(args.num_processes)
    ]


def extra(parser):
    parser.add_argument("--num-processes", type=int, default=2, help="default: %(default)s")
    parser.add_argument(
        "--devices-per-process", type=int, default=2, help="CPU devices each (default: 2)"
    )
    parser.add_argument("--process-id", type=int, help="set by the launcher, not by hand")
    parser.add_argument("--coordinator", help="set by the launcher, not by hand")


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0], extra)
    if args.process_id is not None:
        worker(args)
        return
    if args.num_processes < 1 or args.devices_per_process < 1:
        raise SystemExit("--num-processes and --devices-per-process must be at least 1")
    config = settings(args)
    for stale in args.out.glob("process_*.json"):
        stale.unlink()
    print(f"launching {args.num_processes} processes of {args.devices_per_process} devices")
    reports = launch(args, timeout=600)

    # The reference: one process, one device, the same global batches.
    with _common.progress(args, config["steps"], "single process") as bar:
        single, _ = train(config, on_step=lambda: bar.update(1))
    single = np.array(single)
    worst = max(
        float(np.max(np.abs(np.array(r["losses"]) - single) / np.abs(single))) for r in reports
    )
    multi = np.array(reports[0]["losses"])
    wrong = np.array(reports[0]["mean_of_means"])
    bias = float(np.max(np.abs(wrong - single) / np.abs(single)))

    shown = sorted({0, 1, 2, *range(9, config["steps"], max(10, config["steps"] // 10))})
    shown.append(config["steps"] - 1) if shown[-1] != config["steps"] - 1 else None
    rows = [
        [t + 1, f"{single[t]:.6f}", f"{multi[t]:.6f}", f"{abs(multi[t] - single[t]):.1e}",
         f"{wrong[t]:.6f}"]
        for t in shown
    ]  # fmt: skip
    header = [
        "step",
        "1 process",
        f"{args.num_processes} processes",
        "abs. difference",
        "mean of per-process means (wrong)",
    ]
    notes = (
        f"Every process printed the same losses as the single-process run: largest relative "
        f"difference {worst:.1e} over {config['steps']} steps and {args.num_processes} "
        f"processes (tolerance {TOLERANCE:g}, float32). Averaging each process's own mean "
        f"instead would have been off by up to {bias:.0%}."
    )
    _common.write_results(
        args,
        _common.markdown_table(header, rows),
        settings=config,
        numbers={
            "single_process": single.tolist(),
            "per_process": [r["losses"] for r in reports],
            "mean_of_means": wrong.tolist(),
            "max_relative_difference": worst,
            "mean_of_means_max_relative_error": bias,
        },
        notes=notes,
    )
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    steps = np.arange(1, config["steps"] + 1)
    ax.plot(steps, single, label="1 process", lw=3, alpha=0.5)
    ax.plot(steps, multi, "--", label=f"{args.num_processes} processes")
    ax.plot(steps, wrong, ":", label="mean of per-process means")
    ax.set(xlabel="step", ylabel="training loss (valid rows)", yscale="log")
    ax.legend()
    floor = 1e-9  # exact agreement (a difference of 0) is drawn at this floor
    for values, style, label in (
        (multi, ".", f"{args.num_processes} processes"),
        (wrong, "x", "mean of per-process means"),
    ):
        deviation = np.maximum(np.abs(values - single) / single, floor)
        ax2.plot(steps, deviation, style, ms=3, label=label)
    ax2.axhline(TOLERANCE, color="gray", lw=1, label="tolerance")
    ax2.set(xlabel="step", ylabel="relative difference from 1 process", yscale="log")
    ax2.set_ylim(floor / 3, 1e3)  # room for the legend
    ax2.legend(loc="upper center", ncol=3, fontsize="small")
    _common.save_figure(args, fig, f"{NAME}.png")
    if worst > TOLERANCE:
        raise SystemExit(f"the processes' losses differ from one process's by {worst:.1e}")


if __name__ == "__main__":
    main()
