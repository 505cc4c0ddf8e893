"""Write the generated parts of the documentation into the committed pages.

    python docs/generate.py           # rewrite the generated parts of docs/*.md
    python docs/generate.py --check   # exit 1, with a diff, if any committed part is stale

A page asks for generated content with a pair of markers; everything outside the pairs
is hand-written and kept as it is:

    <!-- begin generated: NAME -->
    ...                               (written by this script; do not edit by hand)
    <!-- end generated: NAME -->

NAME is one of

- ``api-reference``: the API reference, in plain Markdown: for every public module
  (``jaxloss`` and each submodule whose name does not start with ``_``) and every name in
  its ``__all__``, a heading with the name, the signature and the docstring, grouped by
  the private module that defines it (one family per module), with a table of contents.
- ``benchmark-tables``: every table in ``benchmarks/results/*.md``.
- ``gallery:EXAMPLE``: the plots and the results table of example EXAMPLE, as committed
  in ``docs/assets/examples/EXAMPLE/``.

A bare ``<!-- NAME -->`` (the older, build-time form) is turned into an empty pair and
filled. The output depends only on the repository's files and the package's docstrings
and signatures (no memory addresses, no dates, no platform), so the same sources give the
same pages on every machine; ``tests/test_docs.py`` and ``.ci/run`` run ``--check``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = "jaxloss"

GENERATED = re.compile(
    r"<!-- begin generated: (?P<name>[\w:-]+)[^>]*-->\n.*?<!-- end generated: (?P=name) -->",
    re.DOTALL,
)
BARE_MARKER = re.compile(r"^<!-- (?P<name>api-reference|benchmark-tables|gallery:\w+) -->$", re.M)
BEGIN = "<!-- begin generated: {name} (python docs/generate.py writes this part) -->"
END = "<!-- end generated: {name} -->"

# The family of a name is the private module that defines it; these are the headings.
FAMILIES = {
    "_regression": "Regression",
    "_classification": "Classification",
    "_sparse": "Sparse",
    "_information": "Information theory",
    "_ranking": "Ranking",
    "_regularization": "Regularization",
    "_auxiliary": "Combining losses",
    "_large_vocab": "Large vocabulary",
    "_parallel": "Vocabulary parallel",
    "_margin": "Margin",
    "_embedding": "Embedding",
    "_segmentation": "Segmentation",
    "_preference": "Preference optimization",
    "_contrastive": "Contrastive",
    "_language_model": "Language-model post-training",
    "_fused_language_model": "Fused language-model post-training",
    "_sequence": "Sequence",
}
SECTIONS = {
    "Args": "Arguments",
    "Arguments": "Arguments",
    "Parameters": "Arguments",
    "Attributes": "Attributes",
    "Returns": "Returns",
    "Yields": "Yields",
    "Raises": "Raises",
    "Example": "Example",
    "Examples": "Examples",
    "References": "References",
    "Reference": "References",
    "Note": "Note",
    "Notes": "Notes",
    "Warning": "Warning",
    "Warnings": "Warnings",
    "See Also": "See also",
}
LISTED_SECTIONS = {"Arguments", "Attributes", "Raises"}  # "name: description" items
SECTION_HEADER = re.compile(rf"^({'|'.join(SECTIONS)}):\s*$")
LINE_WIDTH = 88
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.) ")
ITEM = re.compile(r"^([*\w.]+(?: \([^)]*\))?|[\w.]+(?:, [\w.]+)+):\s*(.*)$")


# --- what is public --------------------------------------------------------------------


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


def documented_names() -> list[tuple[str, str]]:
    """(module, name) for every entry of the API reference: each name in each public
    module's ``__all__``, except a submodule, which has its own section instead."""
    modules = public_modules()
    return [
        (module, name)
        for module in modules
        for name in declared_all(module)
        if f"{module}.{name}" not in modules
    ]


# --- signatures ------------------------------------------------------------------------


def _annotation(annotation: object) -> str:
    if isinstance(annotation, str):
        return annotation
    forward = getattr(annotation, "__forward_arg__", None)
    if isinstance(forward, str):
        return forward
    return inspect.formatannotation(annotation)


def _literal(value: object) -> str:
    """``repr``, with strings in double quotes (as ruff formats the code blocks)."""
    text = repr(value)
    if isinstance(value, str) and text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1].replace("\\'", "'") + '"'
    return text


def _default(value: object) -> str:
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return value.__qualname__
    if isinstance(value, str):
        return _literal(value)
    text = repr(value)
    # Never a memory address or other per-process detail: <X object at 0x...> -> X.
    return re.sub(r"<([\w.]+)(?: [\w.]+)* at 0x[0-9a-fA-F]+>", r"\1", text)


def _parameter(parameter: inspect.Parameter) -> str:
    text = parameter.name
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        text = "*" + text
    elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
        text = "**" + text
    has_annotation = parameter.annotation is not inspect.Parameter.empty
    if has_annotation:
        text += f": {_annotation(parameter.annotation)}"
    if parameter.default is not inspect.Parameter.empty:
        text += (" = " if has_annotation else "=") + _default(parameter.default)
    return text


def format_signature(qualified: str, signature: inspect.Signature) -> str:
    """``name(params) -> return``, on one line if it fits, else one parameter a line."""
    parts = []
    params = list(signature.parameters.values())
    for i, parameter in enumerate(params):
        previous = params[i - 1].kind if i else None
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and previous not in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            parts.append("*")
        parts.append(_parameter(parameter))
        following = params[i + 1].kind if i + 1 < len(params) else None
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and (
            following is not inspect.Parameter.POSITIONAL_ONLY
        ):
            parts.append("/")
    returns = ""
    if signature.return_annotation is not inspect.Signature.empty:
        returns = f" -> {_annotation(signature.return_annotation)}"
    one_line = f"{qualified}({', '.join(parts)}){returns}"
    if len(one_line) <= LINE_WIDTH:
        return one_line
    body = "".join(f"    {part},\n" for part in parts)
    return f"{qualified}(\n{body}){returns}"


def _declaration(module: str, name: str, obj: object) -> str:
    qualified = f"{module}.{name}"
    if inspect.isclass(obj):
        # Only a constructor the class defines itself: an inherited one (a Flax variable's)
        # would put another package's version-dependent signature on the page.
        if not ({"__init__", "__new__"} & set(vars(obj))):
            return f"class {qualified}"
        signature = inspect.signature(obj).replace(return_annotation=inspect.Signature.empty)
        return "class " + format_signature(qualified, signature)
    if callable(obj):
        return format_signature(qualified, inspect.signature(obj))
    if isinstance(obj, (str, int, float, bool)):
        return f"{qualified} = {_literal(obj)}"
    return qualified


def _attribute_docstring(module: str, name: str) -> str:
    """The string literal right after ``name = ...`` in the module's source, if any."""
    body = ast.parse(_module_file(module).read_text()).body
    for node, following in zip(body, body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                if isinstance(following.value.value, str):
                    return inspect.cleandoc(following.value.value)
    return ""


def _docstring(module: str, name: str, obj: object) -> str:
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        return inspect.cleandoc(obj.__doc__ or "")
    if callable(obj) and obj.__doc__ and obj.__doc__ != type(obj).__doc__:
        return inspect.cleandoc(obj.__doc__)
    return _attribute_docstring(module, name)


# --- docstrings to Markdown -----------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _dedent(lines: list[str]) -> list[str]:
    indents = [_indent(line) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:] if line.strip() else "" for line in lines]


class _Inline:
    """Inline text: ``code`` -> `code`, and a known public name in backticks becomes a
    link to its entry."""

    def __init__(self, anchors: dict[str, str]):
        self.anchors = anchors

    def __call__(self, text: str) -> str:
        text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.DOTALL)
        text = re.sub(r"(?<![`\[])`([\w.]+)`(?![`\]])", self._link, text)
        # A star after a math symbol or before a parenthesis is the symbol's (Ω*(θ), the
        # convex conjugate), not emphasis: escaped outside code spans.
        parts = re.split(r"(`[^`]*`)", text)
        for i in range(0, len(parts), 2):
            parts[i] = re.sub(r"(?<=[^\x00-\x7f])\*|\*(?=\()", r"\\*", parts[i])
        return "".join(parts)

    def _link(self, match: re.Match) -> str:
        name = match.group(1)
        anchor = self.anchors.get(name)
        return f"[`{name}`](#{anchor})" if anchor else match.group(0)


def _blocks(lines: list[str], inline: _Inline) -> list[str]:
    """Prose to Markdown: paragraphs and lists as they are (inline code converted),
    doctest blocks (``>>>`` up to a blank line) and indented blocks (formulas) fenced."""
    lines = _dedent(lines)
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:  # inline code may run across the lines of a paragraph
            out.extend(inline("\n".join(paragraph)).split("\n"))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            if out and out[-1] != "":
                out.append("")
            i += 1
            continue
        if line.lstrip().startswith(">>>"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            _fence(out, "python", _dedent(block))
            continue
        starts_paragraph = not paragraph and (not out or out[-1] == "")
        if _indent(line) > 0 and starts_paragraph:
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > 0):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            _fence(out, "text", _dedent(block))
            continue
        if LIST_ITEM.match(line) and paragraph and not LIST_ITEM.match(paragraph[0]):
            flush()
            out.append("")  # a list needs a blank line before it in Python-Markdown
        paragraph.append(line)
        i += 1
    flush()
    while out and out[-1] == "":
        out.pop()
    return out


def _fence(out: list[str], language: str, block: list[str]) -> None:
    if out and out[-1] != "":
        out.append("")
    out.extend([f"```{language}", *block, "```", ""])


def _items(lines: list[str], inline: _Inline) -> list[str]:
    """``name: description`` items (Args, Raises) as a Markdown list."""
    lines = _dedent(lines)
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        match = ITEM.match(line)
        if match and _indent(line) == 0:
            items.append((match.group(1), [match.group(2)]))
        elif items:
            items[-1][1].append(line)
        else:
            items.append(("", [line]))
    out: list[str] = []
    for name, description in items:
        # The first line sits after "name:", the rest are indented below it.
        body = _blocks([description[0], *_dedent(description[1:])], inline) or [""]
        label = ", ".join(f"`{n.strip()}`" for n in name.split(",")) if name else ""
        out.append(f"- {label}: {body[0]}".rstrip() if label else f"- {body[0]}")
        out.extend(f"    {line}" if line else "" for line in body[1:])
    return out


def docstring_markdown(doc: str, inline: _Inline) -> list[str]:
    """A Google-style docstring as Markdown lines."""
    lines = doc.splitlines()
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in lines:
        match = SECTION_HEADER.match(line)
        if match:
            sections.append((SECTIONS[match.group(1)], []))
        else:
            sections[-1][1].append(line)
    out: list[str] = []
    for title, body in sections:
        if not any(line.strip() for line in body):
            continue
        if title:
            out.extend([f"**{title}**", ""])
        rendered = _items(body, inline) if title in LISTED_SECTIONS else _blocks(body, inline)
        out.extend([*rendered, ""])
    return out


# --- the API reference -----------------------------------------------------------------


def _slug(text: str) -> str:
    """The anchor both GitHub and mkdocs give a heading of plain words and underscores."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _family(module: str, obj: object) -> str:
    if module != PACKAGE:
        return f"`{module}`"
    defined_in = getattr(obj, "__module__", None) or PACKAGE
    private = defined_in.rsplit(".", 1)[-1]
    if private in FAMILIES:
        return FAMILIES[private]
    return private.strip("_").replace("_", " ").capitalize() or "Other"


def api_reference() -> str:
    """The API reference page's generated part."""
    entries = []
    for module, name in documented_names():
        obj = getattr(importlib.import_module(module), name)
        entries.append((module, name, obj, _family(module, obj)))

    anchors: dict[str, str] = {}
    for module, name, _, _ in entries:
        anchor = _slug(name)
        if anchor in anchors.values():
            raise SystemExit(f"API reference: two entries would share the anchor #{anchor}")
        anchors[f"{module}.{name}"] = anchor
        if module == PACKAGE or name not in anchors:
            anchors[name] = anchor
    inline = _Inline(anchors)

    families: dict[str, list[tuple[str, str, object]]] = {}
    for module, name, obj, family in entries:
        families.setdefault(family, []).append((module, name, obj))
    family_anchors = {family: _slug(family.replace("`", "")) for family in families}
    clash = set(family_anchors.values()) & set(anchors.values())
    if clash:
        raise SystemExit(f"API reference: a family heading and an entry share {sorted(clash)}")

    out = ["## Contents", ""]
    for family, members in families.items():
        links = ", ".join(f"[`{name}`](#{anchors[f'{m}.{name}']})" for m, name, _ in members)
        out.append(f"- [{family}](#{family_anchors[family]}): {links}")
    out.append("")

    module_docs = {m: inspect.getdoc(importlib.import_module(m)) or "" for m in public_modules()}
    for family, members in families.items():
        out.extend([f"## {family}", ""])
        module = members[0][0]
        if module != PACKAGE and module_docs[module]:
            out.extend([*_blocks(module_docs[module].splitlines(), inline), ""])
        for module, name, obj in members:
            out.extend([f"### `{name}`", ""])
            out.extend(["```python", _declaration(module, name, obj), "```", ""])
            out.extend(docstring_markdown(_docstring(module, name, obj), inline))
    return _tidy(out)


def _tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


# --- benchmark tables and example galleries ---------------------------------------------


def benchmark_tables() -> str:
    tables = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    if not tables:
        return (
            "No results yet: run the scripts in `benchmarks/`; their tables land in "
            "`benchmarks/results/`.\n"
        )
    parts = []
    for table in tables:
        text = table.read_text().strip()
        if not text.startswith("#"):
            text = f"## {table.stem.replace('_', ' ')}\n\n{text}"
        else:  # demote the table's own title below the page title
            text = re.sub(r"^#", "##", text, flags=re.MULTILINE)
        parts.append(f"{text}\n\n_Source: `benchmarks/results/{table.name}`._\n")
    return _tidy("\n".join(parts).splitlines())


def gallery(name: str, page_folder: Path = DOCS) -> str:
    """Example ``name``'s plots (linked relative to ``page_folder``) and results table."""
    folder = DOCS / "assets" / "examples" / name
    relative = Path(os.path.relpath(folder, page_folder)).as_posix()
    if not (folder / "results.md").exists():
        return (
            f"Not run yet: run `python examples/{name}.py`; its plots and table land in "
            f"`examples/results/{name}/`; copy them to `docs/assets/examples/{name}/`.\n"
        )
    plots = [
        f"![{png.stem.replace('_', ' ')}]({relative}/{png.name})"
        for png in sorted(folder.glob("*.png"))
    ]
    return _tidy("\n\n".join([*plots, (folder / "results.md").read_text().strip()]).splitlines())


def content(name: str, page_folder: Path = DOCS) -> str:
    """The generated part called ``name``, for a page in ``page_folder``."""
    if name == "api-reference":
        return api_reference()
    if name == "benchmark-tables":
        return benchmark_tables()
    if name.startswith("gallery:"):
        return gallery(name.removeprefix("gallery:"), page_folder)
    raise SystemExit(f"unknown generated part {name!r}")


# --- pages -----------------------------------------------------------------------------


def render_page(text: str, make: Callable[[str], str] = content) -> str:
    """``text`` with every generated part (re)written."""
    text = BARE_MARKER.sub(lambda m: f"{BEGIN}\n{END}".format(name=m["name"]), text)

    def fill(match: re.Match) -> str:
        name = match["name"]
        return f"{BEGIN.format(name=name)}\n\n{make(name)}\n{END.format(name=name)}"

    return GENERATED.sub(fill, text)


def pages() -> dict[Path, tuple[str, str]]:
    """Each docs page with generated parts: (committed text, text it should have)."""
    cache: dict[tuple[str, Path], str] = {}
    result = {}
    for page in sorted(DOCS.rglob("*.md")):
        if "assets" in page.relative_to(DOCS).parts:
            continue
        text = page.read_text()
        begun = text.count("<!-- begin generated:")
        if begun != len(GENERATED.findall(text)):
            raise SystemExit(
                f"{page.relative_to(ROOT).as_posix()}: a `<!-- begin generated: NAME -->` "
                "without its `<!-- end generated: NAME -->`"
            )

        def make(name: str, folder: Path = page.parent) -> str:
            if (name, folder) not in cache:
                cache[name, folder] = content(name, folder)
            return cache[name, folder]

        if begun or BARE_MARKER.search(text):
            result[page] = (text, render_page(text, make))
    return result


def stale() -> list[str]:
    """A unified diff for each page whose committed generated parts are out of date."""
    diffs = []
    for page, (old, new) in pages().items():
        if old != new:
            name = page.relative_to(ROOT).as_posix()
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"{name} (committed)",
                f"{name} (generated now)",
            )
            diffs.append("".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale()
        if diffs:
            sys.stdout.writelines(diffs)
            print(
                f"\n{len(diffs)} page(s) under docs/ differ from what docs/generate.py "
                "produces now (diff above). Run `python docs/generate.py` and commit the result.",
                file=sys.stderr,
            )
            return 1
        print("docs/: the generated parts are current.")
        return 0
    for page, (old, new) in pages().items():
        if old != new:
            page.write_text(new)
            print(f"wrote {page.relative_to(ROOT).as_posix()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
