"""Run a check script on host CPU devices in fresh processes, and read their JSON reports.

The one mechanism the tests use to run JAX with more devices (or more processes) than
the pytest process has: ``XLA_FLAGS=--xla_force_host_platform_device_count`` must be set
before JAX is imported, hence a subprocess.

* ``run_workers(script, num_processes=1, devices_per_process=8)``: one process with 8
  devices (what the single-process multi-device checks, tests/multidevice_*.py, need);
* ``run_workers(script, num_processes=2, devices_per_process=4)``: JAX's multi-controller
  runtime on this machine, as on several hosts: two processes, a coordinator on a free
  port of 127.0.0.1 and CPU collectives over gloo. The script calls ``initialize()``
  (below) first, then sees ``jax.devices()`` = the 8 devices of both processes.

Each process prints one JSON object as its last line of standard output. Everything is
bounded in time: the coordinator's own timeout and a wall-clock limit for the whole run.
When a process fails or the time runs out, the others (which would otherwise wait in a
collective forever) are killed with their whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Environment variables through which run_workers tells a process who it is.
_COORDINATOR = "JAXLOSS_COORDINATOR_ADDRESS"
_PROCESS_ID = "JAXLOSS_PROCESS_ID"
_NUM_PROCESSES = "JAXLOSS_NUM_PROCESSES"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices_per_process: int) -> dict[str, str]:
    """The environment of a worker: CPU only, that many host devices, this checkout first."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(file, limit: int = 3000) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")[-limit:]


def run_workers(
    script: str | Path,
    *,
    num_processes: int = 1,
    devices_per_process: int = 8,
    timeout: float = 300.0,
    args: tuple[str, ...] = (),
) -> list[dict]:
    """Run ``script`` as ``num_processes`` processes and return each one's JSON report.

    Raises AssertionError, with the end of every process's output, when a process exits
    with an error, prints no JSON, or the run takes longer than ``timeout`` seconds.
    """
    env = worker_env(devices_per_process)
    if num_processes > 1:
        env[_COORDINATOR] = f"127.0.0.1:{free_port()}"
        env[_NUM_PROCESSES] = str(num_processes)
    procs, outs, errs = [], [], []
    try:
        for i in range(num_processes):
            outs.append(tempfile.TemporaryFile())  # files, not pipes: no buffer to fill
            errs.append(tempfile.TemporaryFile())
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), *args],
                    env={**env, _PROCESS_ID: str(i)} if num_processes > 1 else env,
                    stdout=outs[-1],
                    stderr=errs[-1],
                    start_new_session=True,  # its own process group, killed as one
                )
            )
        deadline = time.monotonic() + timeout
        failure = None
        while failure is None and any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                failure = "a process failed"
            elif time.monotonic() > deadline:
                failure = f"timed out after {timeout:.0f} s"
            else:
                time.sleep(0.1)
        if failure is None and any(p.returncode != 0 for p in procs):
            failure = "a process failed"
        for p in procs:
            _kill(p)
        if failure is not None:
            logs = "\n".join(
                f"--- process {i} (exit {p.returncode}) ---\n{_tail(o)}\n{_tail(e)}"
                for i, (p, o, e) in enumerate(zip(procs, outs, errs, strict=True))
            )
            raise AssertionError(f"{script}: {failure}\n{logs}")
        reports = []
        for i, o in enumerate(outs):
            o.seek(0)
            lines = o.read().decode().strip().splitlines()
            assert lines, f"process {i} printed nothing:\n{_tail(errs[i])}"
            reports.append(json.loads(lines[-1]))
        return reports
    finally:
        for p in procs:
            _kill(p)
        for f in outs + errs:
            f.close()


def once_per_run(tmp_path_factory, key: str, compute):
    """``compute()`` (a JSON-able result) once per pytest run, even with pytest-xdist.

    A module-scoped fixture runs once in every xdist worker that gets one of the module's
    tests; the reports of expensive subprocess runs are shared instead: the first worker
    computes them under a file lock in the run's shared temporary folder, the others
    wait and read them.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:  # no xdist: a single process
        return compute()
    import fcntl

    folder = tmp_path_factory.getbasetemp().parent  # shared by the run's workers
    path = folder / f"{key}-{run}.json"
    with open(folder / f"{key}-{run}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            path.write_text(json.dumps(compute()))
        return json.loads(path.read_text())


def initialize(timeout: int = 120) -> None:
    """In a worker started by ``run_workers``: join the other processes (no-op if alone).

    Must run before any JAX computation: it selects the gloo CPU collectives and calls
    ``jax.distributed.initialize`` with the coordinator, count and id given by
    ``run_workers``.
    """
    if _COORDINATOR not in os.environ:
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[_COORDINATOR],
        num_processes=int(os.environ[_NUM_PROCESSES]),
        process_id=int(os.environ[_PROCESS_ID]),
        initialization_timeout=timeout,
    )
