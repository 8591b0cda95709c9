"""Subprocess launchers shared by the tests: the project's commands as a user runs them."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "sweeps" / "smoke.py")


def subprocess_env(**extra) -> dict:
    """The environment of a command run by a test: CPU, one device, the suite's compile cache."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        XLA_FLAGS="",
        **extra,
    )


def run_module(module: str, *args, timeout=600) -> tuple[int, str]:
    """``python -m MODULE ARGS`` from the project's root; (exit status, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr
