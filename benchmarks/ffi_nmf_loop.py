"""The NMF layer's fixed-point loop as one fused C++ kernel (an XLA FFI custom call) against XLA's
own ``lax.fori_loop``, at the paper's layer shapes. An experiment for the engine, not the package.

    python benchmarks/ffi_nmf_loop.py                  # CNMF+1x1's four NMF layers at batch 50
    python benchmarks/ffi_nmf_loop.py --out runs/benchmarks/ffi_nmf_loop.json

The question it answers: does a hand-written kernel that keeps a tile of positions, W and W^T in
cache for all 20 iterations (``ffi_nmf_loop.cc``: register-blocked, 16-lane GCC vectors, XLA's
intra-op thread pool) beat what XLA:CPU makes of :func:`deepnmf_jax.nmf_fixed_point`? It builds
the kernel with ``g++ -O3 -march=native`` against ``jax.ffi.include_dir()`` into a temporary
folder, checks that both give the same codes (float32 rounding: the largest difference relative to
the largest code is printed), and prints each one's median milliseconds and GFLOP/s per shape. Not
a test: the tests only check that it runs and agrees.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax import machine, nmf_fixed_point

HERE = pathlib.Path(__file__).resolve().parent
# CNMF+1x1 at batch 50 (28x28 crops): positions x inputs x codes of its four NMF layers
PAPER_SHAPES = ((28_800, 75, 32), (3_200, 800, 64), (50, 1_024, 96), (50, 96, 10))


def build(folder: pathlib.Path) -> pathlib.Path:
    """Compiles ``ffi_nmf_loop.cc`` into ``folder`` and returns the shared library's path."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise SystemExit("error: ffi_nmf_loop.py needs a C++ compiler (g++ or c++) on PATH")
    library = folder / "libnmf_loop.so"
    command = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
    command += [f"-I{jax.ffi.include_dir()}", str(HERE / "ffi_nmf_loop.cc"), "-o", str(library)]
    subprocess.run(command, check=True)
    return library


def register(library: pathlib.Path) -> None:
    handler = ctypes.cdll.LoadLibrary(str(library)).NmfSolve
    jax.ffi.register_ffi_target("deepnmf_nmf_loop", jax.ffi.pycapsule(handler), platform="cpu")


def fused_loop(x: jax.Array, w: jax.Array, iterations: int, threads: int) -> jax.Array:
    """h (P, I) of the kernel for x (P, S) and W (S, I), float32 (vmaps over seeds)."""
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (w.shape[-1],), x.dtype)
    call = jax.ffi.ffi_call("deepnmf_nmf_loop", out, vmap_method="broadcast_all")
    return call(x, w, iterations=np.int64(iterations), threads=np.int64(threads))


def median_ms(fn, *args, repeats: int) -> float:
    _, seconds = machine.median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats, 1)
    return 1e3 * seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[",".join(map(str, shape)) for shape in PAPER_SHAPES],
        help="P,S,I triples (positions, inputs, codes)",
    )
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: every core)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="runs/benchmarks/ffi_nmf_loop.json")
    args = parser.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as folder:
        register(build(pathlib.Path(folder)))
    xla = jax.jit(lambda x, w: nmf_fixed_point(x, w, iterations=args.iterations))
    fused = jax.jit(lambda x, w: fused_loop(x, w, args.iterations, threads))
    rng = np.random.default_rng(0)
    rows = []
    for text in args.shapes:
        positions, inputs, codes = (int(v) for v in text.split(","))
        x = rng.random((positions, inputs), dtype=np.float32)
        u = rng.random((inputs, codes), dtype=np.float32)
        x, w = jnp.asarray(x / x.sum(-1, keepdims=True)), jnp.asarray(u / u.sum(0, keepdims=True))
        expected, got = np.asarray(xla(x, w)), np.asarray(fused(x, w))
        difference = float(np.abs(expected - got).max() / np.abs(expected).max())
        flop = 4 * positions * inputs * codes * args.iterations  # two products per iteration
        row = {"positions": positions, "inputs": inputs, "codes": codes, "difference": difference}
        for name, fn in (("xla", xla), ("fused", fused)):
            ms = median_ms(fn, x, w, repeats=args.repeats)
            row[f"{name}_ms"], row[f"{name}_gflops"] = ms, flop / ms / 1e6
        rows.append(row)
        print(
            f"{positions:>6} x {inputs:>5} x {codes:>3}: XLA {row['xla_ms']:7.2f} ms "
            f"({row['xla_gflops']:4.0f} GFLOP/s), fused kernel {row['fused_ms']:7.2f} ms "
            f"({row['fused_gflops']:4.0f} GFLOP/s); difference {difference:.1e}",
            flush=True,
        )
    report = {
        "machine": machine.machine_info(),
        "threads": threads,
        "args": vars(args),
        "rows": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
