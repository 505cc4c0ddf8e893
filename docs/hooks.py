"""mkdocs hooks: checked and published links to the tests.

The pages are the committed Markdown: generated parts (the API reference, the benchmark
tables, the examples' results) are written into them by ``docs/generate.py`` and
committed, so the build generates nothing. What the build adds:

- Pages may link to the tests that check a statement, as ``../tests/test_x.py#test_name``
  (relative to the page's file, so that the link also resolves on the repository host):
  the test files are published with the site under ``tests/``, such links are rewritten
  to point there, and a link to a missing file or to a test that the file does not
  define fails the build.

That the generated parts are current is checked by ``python docs/generate.py --check``
(in tests/test_docs.py and .ci/run), not here: the build imports nothing from the package.
mkdocs is imported only inside the hooks, so this file loads without it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_LINK = re.compile(r"\]\((?:\.\./)*(tests/[\w/]+\.py)(?:#([\w\[\]-]+))?\)")
REPO_TEST_LINK = re.compile(r"\]\(((?:\.\./)+)(tests/[\w/]+\.py(?:#[\w\[\]-]+)?)\)")


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
    _check_test_links(markdown, page.file.src_uri)
    return _site_test_links(markdown, page.file.src_uri)
