"""Root test configuration shared by the test suite and the docstring examples."""

import jax
import pytest
from _pytest.doctest import DoctestItem

# Tests compare against float64 references, so float64 must be available; float32 tests
# create float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _docstring_examples_run_with_jax_defaults(request):
    """Docstring examples show what a user sees: JAX's default float32, x64 off."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)
