"""Run a check script on 8 host CPU devices in a subprocess, and compare its results.

JAX reads ``--xla_force_host_platform_device_count`` once, when it is imported, so the
multi-device checks (``tests/multidevice_*.py``) run in a separate process (started by
`tests.multiprocess.run_workers`, the one subprocess mechanism); each prints one JSON
object (its last line of output), which the pytest side reads with `run_script` and
asserts on. `difference` is how the scripts compare a sharded computation with the
unsharded one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from tests.multiprocess import run_workers

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, devices: int = 8) -> dict:
    """Run ``tests/<name>`` with ``devices`` host CPU devices and return its JSON report."""
    return run_workers(ROOT / "tests" / name, devices_per_process=devices, timeout=600)[0]


def difference(a, b) -> float:
    """max |a − b| / max |b| over every leaf of two pytrees (NaN-safe: NaN counts as ∞)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        err = np.max(np.abs(x - y), initial=0.0)
        worst = max(worst, float(err / max(np.max(np.abs(y), initial=0.0), 1e-300)))
        if not np.isfinite(err):
            return float("inf")
    return worst
