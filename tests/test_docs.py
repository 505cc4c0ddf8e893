"""The documentation's API reference is generated from what the package declares public.

docs/hooks.py reads each public module's ``__all__`` from the source (the docs build
imports nothing) and fails the build when a declared name has no entry. These tests check
that what it reads is what Python sees, so that no public name can escape the reference,
that relative links resolve, and that each family page mentions every public function of
its family (FAMILY_PAGES).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import jaxloss

ROOT = Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_covers_every_public_module():
    public = {"jaxloss"} | {
        f"jaxloss.{m.name}" for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"
    }
    assert set(_hooks().public_modules()) == public


def test_api_reference_reads_the_same_all_that_python_sees():
    hooks = _hooks()
    for module in hooks.public_modules():
        names = importlib.import_module(module).__all__
        assert hooks.declared_all(module) == list(names), module


def test_links_in_docs_resolve_on_the_repository_host():
    """A relative link in docs/*.md names a file that exists relative to the page, so the
    page reads correctly on the repository host too (the site build checks its side)."""
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
    broken = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for target in link.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


# Each family page (docs/<family>.md) documents every public function of its family: the
# family of a function is the module that defines it.
FAMILY_PAGES = {
    "jaxloss._classification": "classification.md",
    "jaxloss._regression": "regression.md",
    "jaxloss._information": "information.md",
    "jaxloss._regularization": "regularization.md",
    "jaxloss.transforms": "regularization.md",
    "jaxloss._auxiliary": "regularization.md",
    "jaxloss.flax": "regularization.md",
}


def _public_names_defined_in(module_name: str) -> list[str]:
    """The public names that ``module_name`` defines: its ``__all__`` for a public module,
    else the names of ``jaxloss.__all__`` whose object was defined there."""
    module = importlib.import_module(module_name)
    if not module_name.rpartition(".")[2].startswith("_"):
        return list(module.__all__)
    return [
        name
        for name in jaxloss.__all__
        if getattr(getattr(jaxloss, name), "__module__", None) == module_name
    ]


def test_every_public_function_is_on_its_family_page():
    """A name counts as mentioned when it appears in code markup, bare or qualified
    (`` `softmax_cross_entropy(` ``, `` `jaxloss.flax.sow_aux_loss` ``), not in prose."""
    missing = []
    for module_name, page in FAMILY_PAGES.items():
        names = _public_names_defined_in(module_name)
        assert names, f"{module_name} defines no public name: is FAMILY_PAGES stale?"
        text = (ROOT / "docs" / page).read_text()
        for name in names:
            if not re.search(rf"`(?:[\w.]+\.)?{re.escape(name)}\b", text):
                missing.append(f"{page}: {module_name}.{name}")
    assert not missing, missing
