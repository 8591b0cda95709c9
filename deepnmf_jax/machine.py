"""What every measurement records: the machine (CPU, devices, versions, XLA flags), its measured
matrix-multiply peak, and median timings.

Speed is only comparable within one run on one machine, so each benchmark measures the machine's
float32 matmul peak in the same run and reports its own GFLOP/s as a fraction of it.
"""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from deepnmf_jax import _malloc

_CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")


def machine_info() -> dict:
    """CPU model, flags that matter for matrix work, core count, devices, software versions and the
    memory allocator (:mod:`deepnmf_jax._malloc`)."""
    model, flags = platform.processor() or platform.machine(), []
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in _CPU_FLAGS_OF_INTEREST if f in present]
                break
    devices = jax.devices()
    info = {
        "cpu": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "allocator": _malloc.loaded(),  # tcmalloc makes XLA:CPU steps 20-45 % shorter
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.version.__version__
    except ImportError:  # pragma: no cover - jaxlib always comes with jax
        pass
    return info


def median_seconds(fn: Callable[[], object], steps: int, warmup: int) -> tuple[float, float]:
    """(seconds of the first call, i.e. compile + run; median seconds of ``steps`` later calls).

    ``fn`` is called ``1 + (warmup - 1) + steps`` times in all (at least the first call warms up).
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def matmul_peak_gflops(size: int = 4096, steps: int = 5, dtype=jnp.float32) -> float:
    """GFLOP/s of ``jnp.dot`` of two ``size`` x ``size`` matrices (best of ``steps``) on the
    default device: the machine's practical peak for matrix work in that dtype."""
    a = jax.random.uniform(jax.random.key(0), (size, size), dtype)
    b = jax.random.uniform(jax.random.key(1), (size, size), dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    jax.block_until_ready(dot(a, b))
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
