"""Root test configuration shared by the test suite and the docstring examples."""

import os
from pathlib import Path

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


def pytest_configure(config):
    config.addinivalue_line("markers", "spawns_processes: the test starts JAX in subprocesses")
    _use_persistent_compilation_cache(config.rootpath)


# JAX's persistent compilation cache: every compiled program is written to this folder and
# read back, instead of compiled again, wherever the same program (the same lowered module,
# compile options, backend and jax/jaxlib versions: JAX's cache key) is compiled later: in
# the other xdist worker, in the subprocesses the tests start (which inherit the
# environment), and in later runs. A program that changes (an edited function) gets a new
# key and is compiled anew. A JAX_COMPILATION_CACHE_DIR set by the caller is used instead;
# set to the empty string, it turns the cache off.
CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
CACHE_FOLDER = ".jax-compilation-cache"
# JAX's own size limit scans the whole folder on every write; instead the run's first
# process, once per run, deletes the oldest entries when the folder outgrows this.
CACHE_LIMIT_BYTES = 2 * 2**30


def _use_persistent_compilation_cache(rootpath: Path) -> None:
    if CACHE_DIR_ENV not in os.environ:
        os.environ[CACHE_DIR_ENV] = str(rootpath / CACHE_FOLDER)
    # JAX caches only programs that took at least a second to compile by default; here
    # most take tens of milliseconds, and reading one back is several times faster.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    folder = os.environ[CACHE_DIR_ENV]
    if not folder:
        return
    # This process imported jax before the environment was set (the workers and the
    # subprocesses read it when they import jax).
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )
    if "PYTEST_XDIST_WORKER" not in os.environ:
        _prune(Path(folder), CACHE_LIMIT_BYTES)


def _prune(folder: Path, limit: int) -> None:
    """Delete the oldest files of ``folder`` until it holds at most half of ``limit``
    bytes, if it holds more than ``limit``."""
    if not folder.is_dir():
        return
    files = []
    for entry in os.scandir(folder):
        if entry.is_file():
            stat = entry.stat()
            files.append((stat.st_mtime, stat.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    if total <= limit:
        return
    for _, size, path in sorted(files):
        os.remove(path)
        total -= size
        if total <= limit // 2:
            break
