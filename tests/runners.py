"""Subprocess launchers shared by the tests: the project's commands as a user runs them."""

import contextlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "sweeps" / "smoke.py")

# The tests' programs are tiny: compiling them costs far more than running them. LLVM's optimisations
# are most of the compile (measured: a tiny training run 15.2 s -> 9.0 s cold), and XLA:CPU's MLIR
# fusion emitters most of the rest (a tiny CNMF+1x1 run 29 s -> 16 s cold, CNN 17 s -> 9 s; the older
# emitters compile faster and run these programs as fast). XLA's own graph optimisations still run,
# so the arithmetic is the same. Every test process gets these.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS of a test process with ``devices`` CPU devices."""
    fake = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
    return fake + TEST_XLA_FLAGS


def cache_dir() -> pathlib.Path:
    """The persistent compilation cache the tests and the commands they run share."""
    return ROOT / ".jax_cache"


def subprocess_env(**extra) -> dict:
    """The environment of a command run by a test: CPU, one device, the suite's compile cache."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir()),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        XLA_FLAGS=xla_flags(1),
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


@contextlib.contextmanager
def mounted_tmpfs(mount_point: pathlib.Path, size: str, read_only_folder: str | None = None):
    """A real file system of ``size`` (a tmpfs, e.g. ``"8m"``) at ``mount_point``, unmounted on exit.
    With ``read_only_folder``, that empty folder is made and the file system remounted read-only
    (even root cannot write there). Skips the test where mounting is not allowed (needs root)."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        if read_only_folder is not None:
            (mount_point / read_only_folder).mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
