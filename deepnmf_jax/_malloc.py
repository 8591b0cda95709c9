"""The memory allocator: which one this process runs on, and running the command line on tcmalloc.

XLA:CPU allocates every execution's temporary buffers afresh: one block of 105 MB for CNMF+1x1's
train step at batch 50. glibc's ``malloc`` serves a block that large with ``mmap`` and unmaps it
when it is freed, so every step page-faults its temporaries in again (28,000 minor faults and
about 45 ms of system time a step on 2 cores, measured). tcmalloc keeps freed memory for the next
request: no faults, and the step is 20-45 % shorter (CNN+1x1 up to 1.8x faster; the numbers are in
``docs/results/benchmarks.md``). The computation is the same, bit for bit.

The ``deepnmf`` command line therefore re-executes itself with tcmalloc preloaded (``LD_PRELOAD``)
where a tcmalloc library is installed (Debian and Ubuntu: ``apt install libtcmalloc-minimal4``),
on Linux, unless ``DEEPNMF_MALLOC=system`` or another allocator is already preloaded. The process
keeps its PID, arguments and environment. It does so before JAX is imported (``deepnmf_jax`` loads
its subpackages on first use), so the second start costs about 0.1 s.
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys

from deepnmf_jax.errors import ConfigError

MALLOC_ENV = "DEEPNMF_MALLOC"
"""``tcmalloc`` (the default: use it where it is installed) or ``system`` (the C library's own)."""

_EXECUTED_ENV = "DEEPNMF_MALLOC_EXECUTED"  # set in the re-executed process: never twice
_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_FOLDERS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
_KNOWN = ("tcmalloc", "jemalloc", "mimalloc")


def loaded() -> str:
    """The allocator this process runs on: ``"tcmalloc"``, ``"jemalloc"``, ``"mimalloc"`` (a
    library of that name is mapped into it) or ``"system"``."""
    maps = pathlib.Path("/proc/self/maps")
    text = maps.read_text() if maps.exists() else ""
    return next((name for name in _KNOWN if f"lib{name}" in text), "system")


def find_tcmalloc() -> str | None:
    """The path of an installed tcmalloc library, or None."""
    for folder in _FOLDERS:
        for name in _LIBRARIES:
            path = pathlib.Path(folder) / name
            if path.exists():
                return str(path)
    found = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return found if found and pathlib.Path(found).is_absolute() else None


def choice() -> str:
    """``DEEPNMF_MALLOC``, checked: ``"tcmalloc"`` (unset) or ``"system"``."""
    value = os.environ.get(MALLOC_ENV, "tcmalloc") or "tcmalloc"
    if value not in ("tcmalloc", "system"):
        raise ConfigError(f"{MALLOC_ENV} must be 'tcmalloc' or 'system', got {value!r}")
    return value


def exec_on_tcmalloc() -> None:
    """Replaces this process by the same command (``sys.orig_argv``) with tcmalloc preloaded, or
    returns where that is not wanted or not possible (module docstring). Call it first thing in a
    program's entry point: whatever ran before is run again."""
    if (
        choice() == "system"
        or not sys.platform.startswith("linux")
        or os.environ.get(_EXECUTED_ENV)
        or loaded() != "system"
    ):
        return
    library = find_tcmalloc()
    if library is None:
        return
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    env = dict(os.environ, LD_PRELOAD=preload, **{_EXECUTED_ENV: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
