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


# Module fixtures that start JAX in subprocesses (several host devices or several
# processes) and that the module's tests share.
PROCESS_FIXTURES = {"eight_device_report", "reports"}


def _spawns_processes(item) -> bool:
    uses = PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
    return bool(uses) or item.get_closest_marker("spawns_processes") is not None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "spawns_processes: the test starts JAX in subprocesses (it runs first)"
    )


# The contract's two files, the longest: handed out right after the subprocess files, one
# to each worker.
CONTRACT_FILES = {"tests/test_contract.py", "tests/test_contract_gradients.py"}


def pytest_collection_modifyitems(items):
    """The order in which pytest-xdist (``--dist loadfile``: a file's tests in one worker,
    so that what one test compiles serves the file's other tests instead of being compiled
    again in the other worker) hands out the files: the files whose tests start
    subprocesses first, then the contract tests (the two longest files), then the rest, so
    that no long file is left for the end with one worker idle."""
    items.sort(
        key=lambda item: (
            not _spawns_processes(item),
            item.nodeid.split("::")[0] not in CONTRACT_FILES,
        )
    )
