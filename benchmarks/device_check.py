"""One prepared check of whatever accelerator JAX sees: software, parity, speed, a real epoch, mixed precision.

    python benchmarks/device_check.py --out device_check.json          # full size, about 8 minutes
    python benchmarks/device_check.py --smoke --out /tmp/smoke.json    # tiny, on a CPU (CI runs it)
    bash benchmarks/device_check.sh OUT_DIR                            # the same after an install

Sections, each written to the JSON as soon as it is done (a run cut short keeps what it measured):

1. ``machine``: ``jax.devices()``, jax / jaxlib / CUDA versions (``jax.print_environment_info``),
   device memory.
2. ``parity``: the layer and model fixtures (``tests/fixtures/``, the reference in float64) recomputed
   in float32 on the device with the approximate gradient (the one the fixtures hold), checked
   against the fixtures README's per-element bounds, so that TF32 or other reduced-precision matrix
   products would be caught; also the scaled error of the forward with ``precision="bfloat16"``
   and ``"tf32"``.
3. ``loop_variants``: CNMF+1x1's train step with the NMF loops rolled (``lax.fori_loop``), fully
   unrolled (``model.unroll=-1``) and rolled under XLA's command buffers for while loops (CUDA
   graphs: ``--xla_gpu_enable_command_buffer=...,WHILE,CONDITIONAL``), at batch 50 and 256, 1 and
   5 seeds: compile time, step time, images/s, and the floor (the step's FLOPs over the device's
   measured matmul peak). Rows carry ``loop_variant``. The fastest becomes the GPU default only
   once measured (until then the default stays rolled).
4. ``speed``: the train step of each model at each batch size, 1 and 5 seeds, with ``seed_loop``
   vmap and map (rows as ``benchmarks/train_step.py``, with the peak device memory so far), and the
   paper's Fig. 2 ratios (approximate against unrolled backward, ``benchmarks/backprop.py``).
5. ``epoch``: one CIFAR-10 epoch of CNMF+1x1 with 5 seeds through ``train_and_evaluate``, timed end
   to end with evaluation: the full archive from ``--data-dir`` if it is there, else the bundled
   sample repeated to 50,000 training and 10,000 test images; then the same with
   ``model.precision="bfloat16"`` and the accuracy difference.

Configurations are skipped (and listed as skipped) once ``--budget-s`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time

import backprop  # benchmarks/backprop.py, beside this script
import jax
import numpy as np
import train_step  # benchmarks/train_step.py

from deepnmf_jax import machine as benchmarking
from deepnmf_jax import models, training
from deepnmf_jax.configs import cifar10
from deepnmf_jax.data import pipeline as input_pipeline
from deepnmf_jax.reference import parity
from deepnmf_jax.training import loop as train_lib

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"


class Budget:
    """Seconds left of ``--budget-s``; ``spent()`` says when to stop starting new work."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def spent(self) -> bool:
        return time.perf_counter() > self.end


def machine_section() -> dict:
    info = benchmarking.machine_info()
    info["environment"] = jax.print_environment_info(return_string=True)
    stats = jax.devices()[0].memory_stats() or {}
    info["memory_bytes_limit"] = stats.get("bytes_limit")
    return info


def _compare(out: dict, fixture, prefix: str = "") -> dict:
    checks = {}
    for name, value in out.items():
        ref = fixture[f"{prefix}{name}"]
        checks[name] = {
            "scaled_error": parity.scaled_error(value, ref),
            "out_of_bounds": parity.out_of_fixture_bounds(value, ref, np.float32),
        }
    return checks


def parity_section(layer_cases, model_names) -> dict:
    layer = np.load(FIXTURES / "nnmf_layer.npz")
    rows = {}
    for case in layer_cases:
        out = parity.layer_fixture_outputs(layer, case, np.float32)
        row = {"float32": _compare(out, layer, f"{case}/")}
        for precision in ("bfloat16", "tf32"):
            h = parity.layer_fixture_outputs(layer, case, np.float32, precision=precision)["h"]
            row[f"{precision}_h_scaled_error"] = parity.scaled_error(h, layer[f"{case}/h"])
        rows[f"layer/{case}"] = row
    for name in model_names:
        fixture = np.load(FIXTURES / f"model_{name}.npz")
        out = parity.model_fixture_outputs(name, fixture, np.float32)
        zero_grad = {f"grad/{p}" for p in fixture["meta/zero_grad_params"]}
        out = {k: v for k, v in out.items() if k not in zero_grad and k != "output/loss"}
        rows[f"model/{name}"] = {"float32": _compare(out, fixture)}
    failures = [
        f"{key}:{name}"
        for key, row in rows.items()
        for name, check in row["float32"].items()
        if check["out_of_bounds"]
    ]
    return {"rows": rows, "failures": failures, "passed": not failures}


def speed_section(args, budget: Budget, write) -> dict:
    args.peak_gflops = benchmarking.matmul_peak_gflops(args.peak_size)
    section = {"peak_gflops": args.peak_gflops, "rows": [], "skipped": [], "fig2": []}
    plan = [
        (model, batch, seeds, loop)
        for model in args.models
        for batch in args.batches
        for seeds in args.seeds
        for loop in (["vmap"] if seeds == 1 else ["vmap", "map"])
    ]
    for model, batch, seeds, loop in plan:
        if budget.spent():
            section["skipped"].append(f"{model} batch {batch} seeds {seeds} {loop}: budget")
            continue
        args.seed_loop = loop
        row = train_step.benchmark(model, seeds, batch, args)
        row["peak_device_bytes_so_far"] = (jax.devices()[0].memory_stats() or {}).get(
            "peak_bytes_in_use"
        )
        section["rows"].append(row)
        print(
            f"  {model:<9} batch {batch:>4} seeds {seeds} {loop:<4} {row['images_per_s']:>8.0f} img/s "
            f"{100 * row['fraction_of_peak']:5.1f}% of peak, compile {row['compile_s']:.1f} s",
            flush=True,
        )
        write()
    for config in ("cnn", "cnmf_1x1:approximate", "cnmf_1x1:unrolled"):
        if budget.spent():
            section["skipped"].append(f"fig2 {config}: budget")
            continue
        section["fig2"].append(
            backprop.run_one(
                config, args.batches[0], args.steps, args.warmup, args.width, args.iterations
            )
        )
    by_config = {r["config"]: r for r in section["fig2"]}
    if {"cnmf_1x1:approximate", "cnmf_1x1:unrolled"} <= by_config.keys():
        section["fig2_unrolled_over_approximate_backward"] = by_config["cnmf_1x1:unrolled"][
            "backward_s"
        ] / max(by_config["cnmf_1x1:approximate"]["backward_s"], 1e-12)
    return section


LOOP_VARIANTS = {
    # name: (model.unroll, extra XLA flags)
    "rolled": (0, ""),
    "unrolled": (-1, ""),
    # XLA's command buffers (CUDA graphs) for the while loop and what runs inside it: the rolled
    # loop's per-iteration kernel launches replayed as one graph
    "command_buffer": (
        0,
        "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
        " --xla_gpu_graph_min_graph_size=1",
    ),
}


def loop_variants_section(args, budget: Budget) -> dict:
    """The NMF loop compiled three ways (:data:`LOOP_VARIANTS`), CNMF+1x1's train step at each
    batch and seed count: each variant in its own process (XLA flags are per process), with
    compile time, step time, images/s and the floor (the step's FLOPs over the device's measured
    matmul peak)."""
    section = {"rows": [], "skipped": []}
    for variant, (unroll, flags) in LOOP_VARIANTS.items():
        if budget.spent():
            section["skipped"].append(f"{variant}: budget")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "rows.json"
            command = [
                sys.executable,
                str(HERE / "train_step.py"),
                "--models",
                "cnmf_1x1",
                "--batches",
                *map(str, args.batches),
                "--seeds",
                *map(str, args.seeds),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--width",
                str(args.width),
                "--iterations",
                str(args.iterations),
                "--peak-size",
                str(args.peak_size),
                "--unroll",
                str(unroll),
                "--out",
                str(out),
            ]
            env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                section["skipped"].append(f"{variant}: failed: {done.stderr.strip()[-600:]}")
                continue
            measured = json.loads(out.read_text())
        for row in measured["rows"]:
            floor_s = (
                row["mflop_per_image"]
                * 1e6
                * row["batch"]
                * row["seeds"]
                / (measured["peak_gflops"] * 1e9)
            )
            section["rows"].append(
                {
                    "loop_variant": variant,
                    "xla_flags": flags,
                    **{
                        k: row[k] for k in ("batch", "seeds", "compile_s", "step_s", "images_per_s")
                    },
                    "floor_s": floor_s,
                    "step_over_floor": row["step_s"] / floor_s,
                    "fraction_of_peak": row["fraction_of_peak"],
                    "peak_gflops": measured["peak_gflops"],
                }
            )
            print(
                f"  {variant:<14} batch {row['batch']:>4} seeds {row['seeds']} "
                f"{row['images_per_s']:>8.0f} img/s, step {1e3 * row['step_s']:.2f} ms "
                f"(floor {1e3 * floor_s:.3f} ms), compile {row['compile_s']:.1f} s",
                flush=True,
            )
    return section


def write_cifar_folder(folder: pathlib.Path, train_size: int, test_size: int) -> pathlib.Path:
    """The bundled sample repeated to ``train_size`` / ``test_size`` images, written as the
    extracted CIFAR-10 python folder that the ``folder`` data source reads."""
    sample = input_pipeline.load_sample()
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)

    def batch(split, size):
        index = np.arange(size) % len(split)
        data = split.images[index].transpose(0, 3, 1, 2).reshape(size, 3072)
        return {b"data": np.ascontiguousarray(data), b"labels": split.labels[index].tolist()}

    per_batch = train_size // 5
    for k in range(1, 6):
        (target / f"data_batch_{k}").write_bytes(pickle.dumps(batch(sample.train, per_batch)))
    (target / "test_batch").write_bytes(pickle.dumps(batch(sample.test, test_size)))
    return folder


def epoch_section(args, budget: Budget, workdir: pathlib.Path) -> dict:
    archive = pathlib.Path(args.data_dir or "/nonexistent") / "cifar-10-python.tar.gz"
    if archive.exists():
        data_dir, data = str(archive.parent), "full CIFAR-10"
    else:
        data_dir = str(write_cifar_folder(workdir / "data", args.epoch_train, args.epoch_test))
        data = f"bundled sample repeated to {args.epoch_train} + {args.epoch_test} images"
    section = {"data": data, "runs": {}}
    for precision in ("float32", "bfloat16"):
        if budget.spent():
            section["runs"][precision] = "skipped: budget"
            continue
        config = training.from_any(cifar10.get_config()).replace(
            {
                "num_seeds": args.epoch_seeds,
                "num_epochs": 1,
                "model.precision": precision,
                "model.width": args.width,
                "model.iterations": args.iterations,
                "data.source": "folder",
                "data.data_dir": data_dir,
                "progress": False,
                "tensorboard": False,
            }
        )
        start = time.perf_counter()
        results = train_lib.train_and_evaluate(config, workdir / f"run_{precision}")
        section["runs"][precision] = {
            "wall_s": time.perf_counter() - start,
            "test_accuracy_per_seed": [s["final_test_accuracy"] for s in results["per_seed"]],
            "test_accuracy_mean": results["final_test_accuracy"]["mean"],
        }
        print(f"  epoch {precision}: {section['runs'][precision]}", flush=True)
    runs = section["runs"]
    if all(isinstance(runs.get(p), dict) for p in ("float32", "bfloat16")):
        section["bfloat16_minus_float32_accuracy"] = (
            runs["bfloat16"]["test_accuracy_mean"] - runs["float32"]["test_accuracy_mean"]
        )
    return section


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", default="runs/device_check.json", help="the JSON report")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU (CI)")
    parser.add_argument("--budget-s", type=float, default=420, help="no new work after this")
    parser.add_argument("--data-dir", default="", help="folder with cifar-10-python.tar.gz")
    args = parser.parse_args(argv)
    big = not args.smoke
    args.models = list(models.PAPER_MODELS) if big else ["cnmf_1x1"]
    # smoke: one layer case and one model show that the section runs; the device checks them all
    args.layer_cases = parity.LAYER_CASES if big else parity.LAYER_CASES[:1]
    args.parity_models = list(models.PAPER_MODELS) if big else ["cnmf_1x1"]
    args.batches = [50, 256] if big else [4]
    args.seeds = [1, 5] if big else [2]  # smoke: one row per seed loop
    args.steps, args.warmup = (10, 2) if big else (1, 1)
    args.width, args.iterations = (1.0, 20) if big else (0.125, 2)
    args.gradient, args.patch_conv, args.chunk_bytes, args.precision, args.unroll = (
        "approximate",
        "auto",
        None,
        "float32",
        0,
    )
    args.peak_size = 8192 if big else 256
    args.epoch_train, args.epoch_test = (50_000, 10_000) if big else (100, 50)
    args.epoch_seeds = 5 if big else 1
    budget = Budget(args.budget_s)

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def write():
        out.write_text(json.dumps(report, indent=2, default=str))

    sections = [
        ("machine", lambda: machine_section()),
        ("parity", lambda: parity_section(args.layer_cases, args.parity_models)),
        ("loop_variants", lambda: loop_variants_section(args, budget)),
        ("speed", lambda: speed_section(args, budget, write)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sections.append(("epoch", lambda: epoch_section(args, budget, pathlib.Path(tmp))))
        for name, run in sections:
            start = time.perf_counter()
            print(f"[{name}]", flush=True)
            report[name] = run()
            report[name + "_s"] = time.perf_counter() - start
            write()
    checked = report["parity"]
    print(
        f"parity: {'passed' if checked['passed'] else 'FAILED ' + ', '.join(checked['failures'])}; "
        f"wrote {out}"
    )
    return report


if __name__ == "__main__":
    main()
