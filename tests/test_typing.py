"""The public API is typed: every public function annotates each parameter and its return.

`.ci/run` type-checks the package with mypy (configured in pyproject.toml); mypy only
checks what is annotated, so these tests make sure nothing public is left unannotated,
and that every annotation names real objects (a user's `typing.get_type_hints`, as used
by documentation and validation tools, must not fail).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import pytest

import jaxloss

PUBLIC_MODULES = ["jaxloss"] + [
    f"jaxloss.{m.name}" for m in pkgutil.iter_modules(jaxloss.__path__) if m.name[0] != "_"
]


def _public_functions():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not inspect.isclass(obj):
                yield pytest.param(obj, id=f"{module_name}.{name}")


FUNCTIONS = list(_public_functions())


def test_the_public_functions_are_found():
    # Guards the parametrization below against silently collecting nothing.
    names = {p.id for p in FUNCTIONS}
    assert len(FUNCTIONS) >= 70
    assert {"jaxloss.softmax_cross_entropy", "jaxloss.transforms.proximal_l1"} <= names
    assert "jaxloss.flax.sow_aux_loss" in names


def test_the_check_catches_a_missing_annotation():
    def partly_typed(x: int, y, *, z: float = 1.0) -> float:
        return x + y + z

    def untyped_return(x: int):
        return x

    assert _missing(partly_typed) == ["y"]
    assert _missing(untyped_return) == ["return"]


def _missing(fn) -> list[str]:
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_public_function_is_fully_annotated(fn):
    assert _missing(fn) == [], f"{fn.__module__}.{fn.__qualname__}: annotate {_missing(fn)}"


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_public_annotations_resolve(fn):
    hints = typing.get_type_hints(fn)
    assert set(hints) == set(inspect.signature(fn).parameters) | {"return"}
