"""The documentation reads completely in the repository, and its generated parts are current.

docs/generate.py writes the generated parts of the pages (the API reference from each
public module's ``__all__``, the benchmark tables, the examples' results) into the
committed Markdown. These tests check that the committed copy is what the generator gives
now, that what it reads as public is what Python sees, that every public name has an
entry in the committed docs/api.md, that links resolve on the repository host, and that
each family page mentions every public function of its family (FAMILY_PAGES).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import jaxloss
from tests.contract import public_functions_taking

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public_names():
    """(module, name) for every name in the ``__all__`` of ``jaxloss`` and of its public
    submodules, as Python sees them, except the submodules themselves."""
    modules = ["jaxloss"] + sorted(
        f"jaxloss.{m.name}" for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"
    )
    return [
        (module, name)
        for module in modules
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in modules
    ]


def test_api_reference_covers_every_public_module():
    public = {"jaxloss"} | {
        f"jaxloss.{m.name}" for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"
    }
    assert set(_generator().public_modules()) == public


def test_api_reference_reads_the_same_all_that_python_sees():
    generator = _generator()
    for module in generator.public_modules():
        names = importlib.import_module(module).__all__
        assert generator.declared_all(module) == list(names), module


def test_committed_generated_docs_are_current():
    """The generated parts committed in docs/*.md are what docs/generate.py gives now (CI
    fails on a stale API reference, benchmark table or example result)."""
    stale = _generator().stale()
    assert not stale, (
        "docs/ is stale: run `python docs/generate.py` and commit the result.\n" + "".join(stale)
    )


def test_every_public_name_has_an_entry_in_the_committed_api_reference():
    """Each public name has its own heading in docs/api.md, followed by its declaration
    under its full name (so the entry is the right module's)."""
    page = (ROOT / "docs" / "api.md").read_text()
    missing = []
    for module, name in _public_names():
        entry = rf"^### `{name}`\n\n```python\n(?:class )?{re.escape(f'{module}.{name}')}\b"
        if not re.search(entry, page, re.MULTILINE):
            missing.append(f"{module}.{name}")
    assert not missing, f"docs/api.md has no entry for {missing}"
    assert " at 0x" not in page  # no memory address in a rendered default


def test_generated_parts_keep_the_hand_written_text_around_them():
    generator = _generator()
    page = (
        "# Title\n\nProse before.\n\n<!-- benchmark-tables -->\n\nProse between.\n\n"
        "<!-- begin generated: gallery:x -->\nold\n<!-- end generated: gallery:x -->\nAfter.\n"
    )
    once = generator.render_page(page, lambda name: f"made {name}\n")
    assert once == (
        "# Title\n\nProse before.\n\n"
        f"{generator.BEGIN.format(name='benchmark-tables')}\n\nmade benchmark-tables\n\n"
        f"{generator.END.format(name='benchmark-tables')}\n\nProse between.\n\n"
        f"{generator.BEGIN.format(name='gallery:x')}\n\nmade gallery:x\n\n"
        f"{generator.END.format(name='gallery:x')}\nAfter.\n"
    )
    assert generator.render_page(once, lambda name: f"made {name}\n") == once


def test_docstring_sections_render_as_markdown():
    generator = _generator()
    doc = (
        "Summary with ``code`` and a link to `known`.\n\n"
        "    f(x) = x*\n\n"
        "Args:\n"
        "  x: first line\n"
        "    second line.\n"
        "  a, b: shared.\n\n"
        "Returns:\n"
        "  A value.\n\n"
        "Example:\n"
        "  >>> f(1)\n"
        "  1\n"
    )
    lines = generator.docstring_markdown(doc, generator._Inline({"known": "known"}))
    assert lines == [
        "Summary with `code` and a link to [`known`](#known).",
        "",
        "```text",
        "f(x) = x*",
        "```",
        "",
        "**Arguments**",
        "",
        "- `x`: first line",
        "    second line.",
        "- `a`, `b`: shared.",
        "",
        "**Returns**",
        "",
        "A value.",
        "",
        "**Example**",
        "",
        "```python",
        ">>> f(1)",
        "1",
        "```",
        "",
    ]


def _pages():
    """docs/**/*.md (except the examples' results tables, copied into examples.md), the
    README and CONTRIBUTING.md."""
    docs = [p for p in sorted((ROOT / "docs").rglob("*.md")) if "assets" not in p.parts]
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *docs]


def test_links_in_docs_resolve_on_the_repository_host():
    """A relative link in docs/**/*.md names a file that exists relative to the page, so the
    page reads correctly on the repository host too (the site build checks its side)."""
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
    broken = []
    for page in _pages():
        text = re.sub(r"`[^`\n]*`", "", page.read_text())  # a link shown as code is no link
        for target in link.findall(text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def _github_anchors(page: Path) -> set[str]:
    """The anchors the repository host gives the page's headings (lowercased; characters
    other than letters, digits, spaces, hyphens and underscores dropped; spaces to
    hyphens; a repeated anchor numbered), plus explicit ``id``/``name`` attributes."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    anchors: set[str] = set(re.findall(r"""(?:id|name)=["']([^"']+)["']""", text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.MULTILINE):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        plain = re.sub(r"\*{1,2}(\S(?:.*?\S)?)\*{1,2}", r"\1", plain)  # emphasis
        plain = re.sub(r"(?<!\w)_{1,2}(\S(?:.*?\S)?)_{1,2}(?!\w)", r"\1", plain)
        slug = re.sub(r"[^\w\- ]", "", plain.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_anchors_in_docs_resolve_on_the_repository_host():
    """A link to ``#anchor`` or ``page.md#anchor`` between docs pages names a heading of
    that page (the API reference's table of contents and cross-references among them)."""
    link = re.compile(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)")
    broken, anchors = [], {}
    for page in _pages():
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
        for target, anchor in link.findall(text):
            linked = (page.parent / target).resolve() if target else page
            if linked.exists() and linked not in anchors:
                anchors[linked] = _github_anchors(linked)
            if linked.exists() and anchor not in anchors[linked]:
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
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
    "jaxloss._sequence": "sequence-sparse-ranking.md",
    "jaxloss._sparse": "sequence-sparse-ranking.md",
    "jaxloss._ranking": "sequence-sparse-ranking.md",
    "jaxloss._margin": "margin-embedding-contrastive-segmentation.md",
    "jaxloss._embedding": "margin-embedding-contrastive-segmentation.md",
    "jaxloss._contrastive": "margin-embedding-contrastive-segmentation.md",
    "jaxloss._segmentation": "margin-embedding-contrastive-segmentation.md",
    "jaxloss._language_model": "large-vocabulary-and-post-training.md",
    "jaxloss._large_vocab": "large-vocabulary-and-post-training.md",
    "jaxloss._fused_language_model": "large-vocabulary-and-post-training.md",
    "jaxloss._parallel": "large-vocabulary-and-post-training.md",
    "jaxloss._preference": "large-vocabulary-and-post-training.md",
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


def test_every_module_that_defines_a_public_function_has_a_family_page():
    """A new family module cannot go undocumented: each module that defines a name of
    ``jaxloss.__all__`` (or is a public submodule) is in FAMILY_PAGES."""
    defining = {getattr(getattr(jaxloss, n), "__module__", None) for n in jaxloss.__all__}
    defining = {m for m in defining if m and m.startswith("jaxloss.")}
    public = {
        f"jaxloss.{m.name}" for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"
    }
    unmapped = sorted((defining | public) - set(FAMILY_PAGES))
    assert not unmapped, f"add these modules to FAMILY_PAGES with their docs page: {unmapped}"


def test_scaling_table_names_every_function_with_batch_axis_name():
    """docs/scaling.md's table has a row naming each public function that takes
    ``batch_axis_name``, so that how its global mean is formed inside ``shard_map`` is
    stated for every one of them (the generic per-example recipe is wrong for some)."""
    table = [
        line
        for line in (ROOT / "docs" / "scaling.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    takers = public_functions_taking("batch_axis_name")
    assert len(takers) >= 7, takers
    missing = [n for n in takers if not any(f"`{n}`" in row.split("|")[1] for row in table)]
    assert not missing, f"docs/scaling.md's table has no row for {missing}"
