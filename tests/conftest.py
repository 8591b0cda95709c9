"""Strict test configuration, in the style of optimistix/equinox.

* 8 fake CPU devices (sharding tests), set before JAX is imported.
* float64 available everywhere (``jax_enable_x64``): tests that want float32 say so by their dtypes.
* strict dtype promotion and no implicit rank promotion: library code must cast and broadcast on
  purpose.
* a persistent compilation cache under ``.jax_cache/`` (repeat runs compile less), and XLA
  without LLVM's optimisations (``tests/runners.py``: the tests' programs are tiny, compiling them
  is most of the suite's time).
"""

import os
import pathlib

from tests.runners import cache_dir, xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(cache_dir()))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


# Tests that share work run on one pytest-xdist worker, one after another. By test module:
# pytest-xdist's own ``--dist loadgroup`` marks groups by editing ``item._nodeid``, which pytest 9
# no longer reads, so the groups are drawn here from the test ids.
SHARED_WORK = {
    # the trained smoke sweep (``local_sweep``), and the benchmarks' programs at the device check's
    # smoke sizes (the later ones find them in the persistent compilation cache)
    "test_sweep.py": "trained smoke sweep",
    "test_evaluate.py": "trained smoke sweep",
    "test_noise.py": "trained smoke sweep",
    "test_benchmarks.py": "trained smoke sweep",
    "test_parallel.py": "single-device runs",  # single_device_run
    "test_train.py": "uninterrupted run",  # uninterrupted_run, and the tiny configs' steps
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``-n``): the modules of ``SHARED_WORK`` as units, the other tests one by
    one, the units with the most tests first."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return SHARED_WORK.get(module, nodeid)

    return SharedWorkScheduling(config, log)


@pytest.fixture
def getkey():
    """Returns a function that hands out a fresh PRNG key on every call."""
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    return lambda: next(keys)


@pytest.fixture(scope="session")
def layer_fixtures():
    return np.load(FIXTURES / "nnmf_layer.npz")


SWEEP_EPOCHS = "num_epochs=30"  # long enough to interrupt a SLURM job of the same config midway


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """The smoke sweep (2 models x 2 seeds, tiny) run by the local executor, two at a time: the
    sweep tests' uninterrupted reference and the evaluate tests' trained runs. Returns (folder,
    the command's output)."""
    from tests.runners import SMOKE, run_module

    folder = tmp_path_factory.mktemp("local_sweep")
    code, output = run_module(
        "deepnmf_jax",
        "sweep",
        "run",
        "--config",
        SMOKE,
        "--workdir",
        folder,
        "--max-parallel",
        "2",
        f"--config.{SWEEP_EPOCHS}",
    )
    assert code == 0, output
    return folder, output
