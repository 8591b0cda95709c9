"""Throughput of the train step per model, batch size and seed count, as a fraction of the machine's peak.

    python benchmarks/train_step.py                                   # 4 models, batch 50, 1 and 5 seeds
    python benchmarks/train_step.py --models cnmf_1x1 cnn_1x1 --batches 50 256 --seeds 1 5
    python benchmarks/train_step.py --out benchmarks/results/train_step_cpu.json   # the committed file

In the same run it measures the machine's float32 matmul peak (``jnp.dot`` of two 4096 x 4096
matrices, before the first configuration and after the last; fractions are of the higher) and,
for every configuration, the train step (augmentation, forward, backward, Adam) on synthetic uint8
CIFAR-shaped data (the step's cost does not depend on pixel values): compile time,
median step time, images/s (every seed's images), GFLOP/s from the hand count of
:mod:`deepnmf_jax.flops` and the fraction of the peak, and the extrapolated CIFAR-10 epoch (50,000
training images in steps of the batch + 200 evaluation batches of 50). The JSON keeps the machine
(CPU model and flags, cores, devices, versions). Numbers compare only within one run on one machine.
Not a test: the tests only check that it runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from deepnmf_jax import machine as benchmarking
from deepnmf_jax import models, training
from deepnmf_jax.configs import default
from deepnmf_jax.models import flops, param_counts
from deepnmf_jax.training import program

DEFAULT_OUT = "runs/benchmarks/train_step.json"


def benchmark(model: str, seeds: int, batch: int, args) -> dict:
    config = training.from_any(default.get_config()).replace(
        {
            "model.name": model,
            "model.gradient": args.gradient,
            "model.width": args.width,
            "model.iterations": args.iterations,
            "model.patch_conv": args.patch_conv,
            "model.chunk_bytes": args.chunk_bytes,
            "model.precision": args.precision,
            "model.unroll": args.unroll,
            "seed_loop": args.seed_loop,
            "num_seeds": seeds,
            "batch_size": batch,
        }
    )
    num_images = batch * (args.steps + args.warmup + 1)
    run = program.build(config, 10, (32, 32, 3), steps_per_epoch=num_images // batch)
    placement = run.placement
    seed_list = list(range(seeds))
    holder = {"states": run.init(placement.seed_keys(seed_list))}
    rng = np.random.default_rng(0)
    host_images = rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
    images = placement.put(host_images)
    labels = placement.put(rng.integers(0, 10, num_images, dtype=np.int32))
    order = run.order(placement.order_keys(config.data, seed_list), 1, num_images)

    def train():
        holder["states"], metrics = run.train(holder["states"], images, labels, order)
        return metrics

    compile_s, step_s = benchmarking.median_seconds(train, args.steps, args.warmup)
    eval_images = placement.put(host_images[: config.eval_batch_size])
    _, eval_s = benchmarking.median_seconds(
        lambda: run.predict(holder["states"], eval_images), args.steps, 1
    )
    crop = config.augment.crop_size
    step_flops = flops.train_step_flops(run.ctx.model, (crop, crop, 3)) * batch * seeds
    gflops = step_flops / step_s / 1e9
    return {
        "model": model,
        "gradient": args.gradient,
        "seeds": seeds,
        "batch": batch,
        "parameters": param_counts.count_params(holder["states"].params) // seeds,
        "mesh": dict(placement.mesh.shape),
        "seed_loop": placement.loop,
        "compile_s": compile_s,
        "step_s": step_s,
        "images_per_s": batch * seeds / step_s,
        "mflop_per_image": step_flops / (batch * seeds) / 1e6,
        "gflops": gflops,
        "fraction_of_peak": gflops / args.peak_gflops,
        "eval_batch_s": eval_s,
        "cifar10_epoch_min": (50_000 / batch * step_s + 200 * eval_s) / 60,
    }


def _line(row: dict) -> str:
    return (
        f"{row['model']:<10} {row['batch']:>5} {row['seeds']:>5} {row['seed_loop']:>5} "
        f"{row['compile_s']:>9.1f} {row['step_s']:>8.3f} {row['images_per_s']:>8.0f} "
        f"{row['gflops']:>8.1f} {100 * row['fraction_of_peak']:>7.1f}% "
        f"{row['cifar10_epoch_min']:>9.1f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(models.PAPER_MODELS), help="models")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 5], help="seed counts")
    parser.add_argument("--batches", nargs="+", type=int, default=[50], help="batch sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps, the compile first")
    parser.add_argument("--gradient", default="approximate", help="NMF backward")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--iterations", type=int, default=20, help="NMF iterations")
    parser.add_argument(
        "--patch-conv", default="auto", help="CNN a-layer: auto|matmul|conv|patches"
    )
    parser.add_argument(
        "--chunk-bytes", type=int, default=None, help="NMF chunk size in bytes (None: auto, 0: off)"
    )
    parser.add_argument("--precision", default="float32", help="model.precision: float32|bfloat16")
    parser.add_argument(
        "--unroll", type=int, default=0, help="model.unroll: 0 rolled, -1 fully unrolled, k"
    )
    parser.add_argument("--seed-loop", default="auto", help="how seeds run: auto|vmap|map|unroll")
    parser.add_argument("--peak-size", type=int, default=4096, help="matrix size of the peak test")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="JSON output; the committed results are written only when named explicitly",
    )
    args = parser.parse_args(argv)

    machine = benchmarking.machine_info()
    args.peak_gflops = benchmarking.matmul_peak_gflops(args.peak_size)
    print(
        f"{machine['cpu']} ({machine['cpu_count']} cores, {' '.join(machine['cpu_flags'])}); "
        f"devices {machine['devices']}; float32 matmul peak {args.peak_gflops:.0f} GFLOP/s"
    )
    print(
        f"{'model':<10} {'batch':>5} {'seeds':>5} {'loop':>5} {'compile s':>9} {'step s':>8} "
        f"{'img/s':>8} {'GFLOP/s':>8} {'of peak':>8} {'epoch min':>9}"
    )
    rows = []
    for model in args.models:
        for batch in args.batches:
            for seeds in args.seeds:
                row = benchmark(model, seeds, batch, args)
                rows.append(row)
                print(_line(row), flush=True)
    # the peak again at the end: the fractions are taken against the higher of the two
    peaks = [args.peak_gflops, benchmarking.matmul_peak_gflops(args.peak_size)]
    args.peak_gflops = max(peaks)
    for row in rows:
        row["fraction_of_peak"] = row["gflops"] / args.peak_gflops
    print(f"float32 matmul peak {peaks[1]:.0f} GFLOP/s after the runs; of the higher peak:")
    for row in rows:
        print(_line(row))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine,
        "peak_gflops": args.peak_gflops,
        "peak_gflops_measured": peaks,
        "args": vars(args),
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
