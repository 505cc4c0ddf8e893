"""Losses across processes: JAX's multi-controller runtime, two processes on this machine.

tests/multiprocess_checks.py runs as two processes of 4 host CPU devices each (a
coordinator on 127.0.0.1, gloo CPU collectives), as on two hosts; the batch, the
vocabulary or the parameters are sharded across both. Each process compares its part
of the distributed result with a single-process float64 computation of the global
batch. The processes start once for the module; every test reads their reports.
"""

from __future__ import annotations

import time

import pytest

from tests.multiprocess import ROOT, once_per_run, run_workers

# float64: rounding only; float32: the distributed float32 result against float64.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One report per process, in process order (computed once per pytest run)."""
    return once_per_run(
        tmp_path_factory,
        "multiprocess_checks",
        lambda: run_workers(
            ROOT / "tests" / "multiprocess_checks.py",
            num_processes=2,
            devices_per_process=4,
            timeout=400,
        ),
    )


def _assert_close(reports, check):
    for dtype, tolerance in TOLERANCE.items():
        for report in reports:
            difference = report[f"{check}[{dtype}]"]
            assert difference < tolerance, (report["process_index"], dtype, difference)


def test_two_processes_of_four_devices_with_different_valid_tokens(reports):
    assert [r["process_index"] for r in reports] == [0, 1]
    for r in reports:
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 8, 4)
    assert reports[0]["valid_tokens"] != reports[1]["valid_tokens"]


MEAN_LOSSES = ["softmax_cross_entropy", "sigmoid_binary_cross_entropy", "gaussian_nll"]


@pytest.mark.parametrize("loss", MEAN_LOSSES)
def test_jitted_mean_over_both_processes_is_the_global_mean(reports, loss):
    """Value and gradients of reduction="mean" equal the global batch's on one device."""
    _assert_close(reports, f"mean:{loss}")


@pytest.mark.parametrize("loss", MEAN_LOSSES)
def test_the_mean_of_per_process_means_would_be_caught(reports, loss):
    """Averaging each process's mean (the classic multi-host bug) misses the global mean by
    far more than the tolerance the checks above hold the correct mean to."""
    for report in reports:
        assert report[f"mean_of_means:{loss}"] > 1e-2 > TOLERANCE["float32"]


@pytest.mark.parametrize("check", ["fused[jit,Auto]", "fused[jit,Explicit]", "fused[shard_map]"])
def test_fused_linear_cross_entropy_with_tokens_across_processes(reports, check):
    """Plain jit on sharded tokens, and shard_map with batch_axis_name; value and the
    gradients of hidden and of the replicated weight against materialized logits."""
    _assert_close(reports, check)


@pytest.mark.parametrize(
    "check", ["vocab_parallel_ce[mean]", "vocab_parallel_ce[none]", "vocab_parallel_fused"]
)
def test_vocabulary_split_between_the_processes(reports, check):
    """vocab_parallel_* with axis_name spanning the two processes, tokens over the local
    devices (batch_axis_name): value and gradients equal the unsharded loss."""
    _assert_close(reports, check)


@pytest.mark.parametrize("check", ["preference[jit]", "preference[shard_map]"])
def test_fused_preference_loss_with_pairs_across_processes(reports, check):
    """fused_linear_preference_loss with the chosen sequences on one process and the
    rejected on the other (regrouped by pair), and in shard_map with batch_axis_name:
    value and the gradients of hidden and weight equal one device's."""
    _assert_close(reports, check)


def test_penalty_of_parameters_sharded_across_processes(reports):
    """elastic_net_penalty + group_lasso_penalty (groups spanning both processes)."""
    _assert_close(reports, "penalty")


def test_jaxloss_transforms_on_parameters_sharded_across_processes(reports):
    """Three optax steps of add_penalty_gradient, sgd and proximal_group_lasso; a group
    spanning both processes is removed exactly, as on one device."""
    _assert_close(reports, "transforms")
    for report in reports:
        for dtype in TOLERANCE:
            assert report[f"zero_groups[{dtype}]"] == report[f"zero_groups_one_device[{dtype}]"]
            assert report[f"zero_groups[{dtype}]"] == 1


def test_contrastive_losses_with_the_batch_across_processes(reports):
    """clip_loss and siglip_loss: plain jit and shard_map with batch_axis_name; value and
    gradients of both embeddings equal one device's."""
    present = ["clip_loss", "siglip_loss"]
    for report in reports:
        assert report["contrastive"] == present
    for name in present:
        _assert_close(reports, f"{name}[jit]")
        _assert_close(reports, f"{name}[shard_map]")


# --------------------------------------------------------------------------------------
# The harness itself: a failing or hanging process never leaves the others running
# --------------------------------------------------------------------------------------

ECHO_WORKER = """
import json, os
print("some output first")
print(json.dumps({k: os.environ.get(k) for k in (
    "XLA_FLAGS", "JAX_PLATFORMS", "JAXLOSS_COORDINATOR_ADDRESS", "JAXLOSS_PROCESS_ID",
    "JAXLOSS_NUM_PROCESSES")}))
"""


@pytest.mark.spawns_processes
def test_harness_tells_each_process_its_devices_and_place(tmp_path):
    script = tmp_path / "echo.py"
    script.write_text(ECHO_WORKER)
    (alone,) = run_workers(script, devices_per_process=8)
    assert alone["XLA_FLAGS"].split()[-1] == "--xla_force_host_platform_device_count=8"
    assert alone["JAX_PLATFORMS"] == "cpu"
    assert alone["JAXLOSS_COORDINATOR_ADDRESS"] is None  # alone: no jax.distributed
    pair = run_workers(script, num_processes=2, devices_per_process=4)
    assert [r["JAXLOSS_PROCESS_ID"] for r in pair] == ["0", "1"]
    assert {r["JAXLOSS_NUM_PROCESSES"] for r in pair} == {"2"}
    assert len({r["JAXLOSS_COORDINATOR_ADDRESS"] for r in pair}) == 1
    assert pair[0]["JAXLOSS_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
    assert pair[0]["XLA_FLAGS"].split()[-1] == "--xla_force_host_platform_device_count=4"


# Process 0 starts a child, writes both pids, then waits as if blocked in a collective;
# process 1 then exits with an error ("fail") or does the same ("hang").
STUCK_WORKER = """
import os, subprocess, sys, time
me = int(os.environ["JAXLOSS_PROCESS_ID"])
if me == 1 and sys.argv[2] == "fail":
    while not os.path.exists(os.path.join(sys.argv[1], "pids0")):
        time.sleep(0.01)
    sys.exit("process 1 failed")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
path = os.path.join(sys.argv[1], f"pids{me}")
with open(path + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(path + ".tmp", path)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


@pytest.mark.spawns_processes
@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_harness_kills_every_process_group_on_failure_or_timeout(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(STUCK_WORKER)
    with pytest.raises(AssertionError, match="process 1 failed" if mode == "fail" else "timed out"):
        run_workers(script, num_processes=2, timeout=5, args=(str(tmp_path), mode))
    pids = [int(p) for f in tmp_path.glob("pids[01]") for p in f.read_text().split()]
    assert len(pids) == (2 if mode == "fail" else 4)  # process 0 and its child (and 1's)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
