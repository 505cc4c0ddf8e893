"""The lower bounds in pyproject.toml are the releases the lowest-versions CI run pins.

`.ci/run` runs the test suite a second time with the constraints in
`.ci/lowest-versions.txt`; a lower bound that differs from its pin would be untested.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "lowest-versions.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): version.strip() for name, version in pairs}


def test_pins_are_the_core_dependencies_and_flax():
    assert set(_pins()) == {"jax", "jaxlib", "optax", "chex", "flax"}


def test_every_lower_bound_in_pyproject_equals_its_pin():
    pins = _pins()
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = re.findall(r'"(jax|jaxlib|optax|chex|flax)\s*([<>=!~]=?)\s*([^",;\s]+)', pyproject)
    assert {name for name, _, _ in found} == set(pins)
    for name, operator, version in found:
        assert (operator, version) == (">=", pins[name]), f"{name}{operator}{version}"
