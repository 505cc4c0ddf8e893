"""The README's runnable claims: its table names every public function, its quickstarts run.

The quickstart blocks are taken from README.md itself (the ```python block after each
``<!-- quickstart:NAME -->`` marker), so the README cannot drift from what runs. They run
as a user sees them, with JAX's default float32 (x64 off); the one that needs several
devices runs in a subprocess with 4 host CPU devices. The GRPO step is also checked
against an independent float64 implementation of TRL's GRPO loss.
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxloss
from tests.multiprocess import run_workers
from tests.test_docs import FAMILY_PAGES as DOCS_FAMILY_PAGES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# The family pages the table may link to: those of docs/, one per family.
FAMILY_PAGES = {f"docs/{page}" for page in DOCS_FAMILY_PAGES.values()}


def _quickstart(name: str) -> str:
    match = re.search(rf"<!-- quickstart:{name} -->\n```python\n(.*?)\n```\n", README, re.S)
    assert match, f"README.md has no ```python block after <!-- quickstart:{name} -->"
    return match.group(1) + "\n"


def _family_rows() -> list[list[str]]:
    """The cells of each row of the table after ``<!-- families -->`` (no header)."""
    lines = README.split("<!-- families -->", 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, separator, *body = rows
    assert header == ["family", "for", "functions", "docs"], header
    assert set(separator) == {"---"}, separator
    assert body, "the family table has no rows"
    return body


def _run(code: str, name: str) -> dict:
    """Execute a README block as a user would: JAX's defaults (x64 off), a fresh namespace."""
    namespace = {"__name__": f"readme_{name}"}
    jax.config.update("jax_enable_x64", False)
    try:
        exec(compile(code, f"README.md:quickstart:{name}", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", True)
    return namespace


def test_family_table_names_every_public_function_once():
    """Every name in jaxloss.__all__ and in each public submodule's __all__ (written
    ``transforms.name``) is in exactly one row of the README's table, and the table names
    nothing that is not public."""
    submodules = [m.name for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"]
    public = [name for name in jaxloss.__all__ if name not in submodules]
    for module in submodules:
        names = getattr(jaxloss, module).__all__
        public += [f"{module}.{name}" for name in names]
    listed = [name for row in _family_rows() for name in re.findall(r"`([\w.]+)`", row[2])]
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert not duplicates, f"named in more than one row: {duplicates}"
    assert not set(public) - set(listed), f"missing from the README: {set(public) - set(listed)}"
    assert not set(listed) - set(public), f"not public: {set(listed) - set(public)}"


def test_family_table_links_each_row_to_its_family_page():
    for family, purpose, functions, docs in _family_rows():
        assert family and purpose and functions, family
        targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", docs)
        assert len(targets) == 1 and targets[0] in FAMILY_PAGES, (family, docs)


def test_the_commands_that_ci_reads_are_there():
    """.ci/run takes the first line starting with ``python`` within 3 lines of each marker."""
    for marker in ("example-command", "test-command"):
        after = README.split(f"<!-- {marker} -->", 1)[1].splitlines()[:4]
        assert any(line.startswith("python -m pip install -e") for line in after), marker


def test_quickstart_flax_classifier_with_a_penalty_trains():
    namespace = _run(_quickstart("flax"), "flax")
    assert namespace["loss"] < namespace["first"]  # the block asserts it too


@pytest.fixture(scope="module")
def post_training():
    """The namespace of the README's post-training block, run once (it asserts that the
    fused DPO loss equals `dpo_loss` of the materialized log-probabilities)."""
    return _run(_quickstart("post-training"), "post_training")


def test_quickstart_post_training_runs(post_training):
    for name in ("sft", "dpo", "grpo_loss"):
        assert callable(post_training[name]), name
    assert np.isfinite(post_training["loss"])


def _trl_grpo_loss(hidden, weight, ids, old_lp, ref_lp, advantages, mask, beta, eps):
    """TRL's GRPOTrainer loss for loss_type="grpo", in float64 numpy, from its definition:
    per token −min(r·A, clip(r, 1 − ε, 1 + ε)·A) + β·(exp(ref − lp) − (ref − lp) − 1),
    averaged over each sequence's completion tokens, then over the sequences."""
    z = np.einsum("btd,dv->btv", hidden, weight)
    zmax = z.max(-1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(-1, keepdims=True)))[..., 0]
    lp = np.take_along_axis(z, ids[..., None], -1)[..., 0] - lse
    ratio = np.exp(lp - old_lp)
    a = advantages[:, None]
    surrogate = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
    delta = ref_lp - lp
    per_token = surrogate + beta * (np.exp(delta) - delta - 1)
    per_sequence = (per_token * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    return per_sequence.mean()


def test_readme_grpo_step_is_trls_grpo_loss(post_training):
    """Guards the README's GRPO step against adding the KL penalty as a token mean on top
    of a sequence-mean surrogate (not TRL's "grpo" loss, and a different number). The
    README's `grpo_loss`, on fixed float64 inputs with completions of different lengths,
    must equal TRL's loss written out independently (β = 0.04, ε = 0.2, k3 KL per token,
    everything averaged per sequence, then over sequences)."""
    rng = np.random.default_rng(21)
    B, T, D, V = 4, 5, 3, 7
    hidden = rng.normal(size=(B, T, D))
    weight = rng.normal(size=(D, V))
    ids = rng.integers(0, V, size=(B, T))
    z = np.einsum("btd,dv->btv", hidden, weight)
    lp = np.take_along_axis(z, ids[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1))
    old_lp = lp + rng.normal(scale=0.3, size=(B, T))  # some ratios beyond the clip range
    ref_lp = lp + rng.normal(scale=0.5, size=(B, T))
    advantages = np.array([1.0, -0.5, 2.0, -1.5])
    lengths = np.array([5, 2, 4, 1])
    mask = np.arange(T) < lengths[:, None]
    expected = _trl_grpo_loss(hidden, weight, ids, old_lp, ref_lp, advantages, mask, 0.04, 0.2)

    ratio = np.exp(lp - old_lp)
    assert ((ratio > 1.2) | (ratio < 0.8))[mask].any() and ((ratio > 0.8) & (ratio < 1.2)).any()
    got = post_training["grpo_loss"](weight, hidden, ids, old_lp, ref_lp, advantages, mask)
    assert got.dtype == np.float64
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)


@pytest.mark.spawns_processes
def test_quickstart_contrastive_across_four_devices(tmp_path):
    """The block on 4 host CPU devices (a subprocess: the device count is fixed when JAX
    is imported); it asserts that the sharded loss equals the one-device loss."""
    script = tmp_path / "contrastive.py"
    report = "import json\nprint(json.dumps({'devices': jax.device_count(), 'loss': float(loss)}))"
    script.write_text(_quickstart("contrastive") + report + "\n")
    (result,) = run_workers(script, devices_per_process=4, timeout=300)
    assert result["devices"] == 4
    assert np.isfinite(result["loss"])
