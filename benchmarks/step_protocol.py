"""The workers' side of ``side_by_side.py``'s protocol, shared by ``step_worker_jax.py`` and
``step_worker_torch.py`` (plain Python: it runs under either worker's interpreter).

One JSON object per line: the worker prints its ``ready`` record once its step is warm; then each
input line ``{"steps": k}`` runs ``k`` timed steps and prints ``{"step_s": [...]}``, and
``{"quit": true}`` prints ``{"max_rss_mib": ...}`` (the process's peak resident memory) and returns.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable


def allocator() -> str:
    """The worker's memory allocator, as ``deepnmf_jax._malloc.loaded`` names it (the reference's
    interpreter has no deepnmf_jax): a preloaded library's name, or ``"system"``."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        text = ""
    return next(
        (name for name in ("tcmalloc", "jemalloc", "mimalloc") if f"lib{name}" in text), "system"
    )


def timed(step: Callable[[], object]) -> float:
    """Seconds of one call of ``step`` (which waits for its own result)."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def serve(step: Callable[[], object], ready: dict) -> None:
    """Prints ``ready``, then answers requests on stdin until ``{"quit": true}`` or its end."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        seconds = [timed(step) for _ in range(request["steps"])]
        print(json.dumps({"step_s": seconds}), flush=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"max_rss_mib": peak_kib / 1024}), flush=True)
