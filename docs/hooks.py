"""mkdocs hooks: a generated API reference, the benchmark tables, checked test links.

- The API page lists every public module of the package (``jaxloss`` and each of its
  submodules whose name does not start with ``_``) through mkdocstrings, so new names
  and new sub-namespaces appear without editing the page; after rendering, every name in
  each module's ``__all__`` must have its own entry, or the build fails.
- The benchmarks page includes every table in ``benchmarks/results/*.md``.
- The examples page replaces ``<!-- gallery:NAME -->`` with the plots and the results
  table of example NAME as committed in ``docs/assets/examples/NAME/``.
- Pages may link to the tests that check a statement, as ``../tests/test_x.py#test_name``
  (relative to the page's file, so that the link also resolves on the repository host):
  the test files are published with the site under ``tests/``, such links are rewritten
  to point there, and a link to a missing file or to a test that the file does not
  define fails the build.

``__all__`` is read from the source with ``ast``, so building the docs imports nothing
(and mkdocs is imported only inside the hooks, so tests/test_docs.py can load this file).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "jaxloss"
API_MARKER = "<!-- api-reference -->"
BENCHMARK_MARKER = "<!-- benchmark-tables -->"
GALLERY_MARKER = re.compile(r"<!-- gallery:(\w+) -->")
TEST_LINK = re.compile(r"\]\((?:\.\./)*(tests/[\w/]+\.py)(?:#([\w\[\]-]+))?\)")
REPO_TEST_LINK = re.compile(r"\]\(((?:\.\./)+)(tests/[\w/]+\.py(?:#[\w\[\]-]+)?)\)")


def _module_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def declared_all(module: str) -> list[str]:
    """The names in ``module.__all__``, read from its source without importing it."""
    tree = ast.parse(_module_file(module).read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return []


def public_modules() -> list[str]:
    """``jaxloss`` and its public submodules (and public sub-packages), sorted."""
    modules = [PACKAGE]
    for path in sorted((ROOT / PACKAGE).iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        is_module = path.suffix == ".py" or (path / "__init__.py").exists()
        if is_module and not name.startswith("_"):
            modules.append(f"{PACKAGE}.{name}")
    return modules


def _api_markdown() -> str:
    # A submodule listed in its parent's __all__ gets its own section (whose heading is
    # its entry), not a second copy inside the parent's.
    modules = public_modules()
    blocks = []
    for module in modules:
        members = [n for n in declared_all(module) if f"{module}.{n}" not in modules]
        blocks.append(f"::: {module}\n    options:\n      members: {members!r}\n")
    return "\n".join(blocks)


def _benchmark_markdown() -> str:
    tables = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    if not tables:
        return (
            '!!! note "No results yet"\n'
            "    Run the scripts in `benchmarks/`; their tables land in "
            "`benchmarks/results/` and appear here.\n"
        )
    parts = []
    for table in tables:
        text = table.read_text().strip()
        if not text.startswith("#"):
            text = f"## {table.stem.replace('_', ' ')}\n\n{text}"
        else:  # demote the table's own title below the page title
            text = re.sub(r"^#", "##", text, flags=re.MULTILINE)
        parts.append(f"{text}\n\n_Source: `benchmarks/results/{table.name}`._\n")
    return "\n".join(parts)


def _gallery_markdown(match: re.Match) -> str:
    name = match.group(1)
    folder = ROOT / "docs" / "assets" / "examples" / name
    if not (folder / "results.md").exists():
        return (
            f'!!! note "Not run yet"\n    Run `python examples/{name}.py`; its plots and '
            f"table land in `examples/results/{name}/`.\n"
        )
    plots = [
        f"![{png.stem.replace('_', ' ')}](assets/examples/{name}/{png.name})"
        for png in sorted(folder.glob("*.png"))
    ]
    return "\n\n".join([*plots, (folder / "results.md").read_text().strip()]) + "\n"


def _check_test_links(markdown: str, page: str) -> None:
    from mkdocs.exceptions import PluginError

    for path, test in TEST_LINK.findall(markdown):
        source = ROOT / path
        if not source.exists():
            raise PluginError(f"{page}: link to {path}, which does not exist")
        if test:
            name = test.split("[")[0]
            defines = rf"^\s*(?:def|class)\s+{name}\b"
            if not re.search(defines, source.read_text(), re.MULTILINE):
                raise PluginError(f"{page}: link to {path}#{test}, which defines no {name}")


def _site_test_links(markdown: str, page: str) -> str:
    """``../tests/x.py`` (from the repository's docs/ folder) -> ``tests/x.py`` (on the site)."""
    depth = page.count("/")  # folders between docs/ and the page

    def to_site(match: re.Match) -> str:
        if len(match.group(1)) // 3 != depth + 1:  # not the repository root's tests/
            return match.group(0)
        return f"]({'../' * depth}{match.group(2)})"

    return REPO_TEST_LINK.sub(to_site, markdown)


def on_files(files, config):
    """Publish the test files so that pages can link to them."""
    from mkdocs.structure.files import File

    for source in sorted((ROOT / "tests").glob("*.py")):
        rel = source.relative_to(ROOT).as_posix()
        files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, _api_markdown())
    if BENCHMARK_MARKER in markdown:
        markdown = markdown.replace(BENCHMARK_MARKER, _benchmark_markdown())
    markdown = GALLERY_MARKER.sub(_gallery_markdown, markdown)
    _check_test_links(markdown, page.file.src_uri)
    return _site_test_links(markdown, page.file.src_uri)


def on_page_content(html, page, config, files):
    from mkdocs.exceptions import PluginError

    if page.file.src_uri != "api.md":
        return html
    missing = [
        f"{module}.{name}"
        for module in public_modules()
        for name in declared_all(module)
        if f'id="{module}.{name}"' not in html
    ]
    if missing:
        raise PluginError(f"API reference lacks entries for public names: {missing}")
    return html
