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
        "deepnmf_jax.sweep",
        "run",
        SMOKE,
        "--workdir",
        folder,
        "--max-parallel",
        "2",
        "--set",
        SWEEP_EPOCHS,
    )
    assert code == 0, output
    return folder, output
