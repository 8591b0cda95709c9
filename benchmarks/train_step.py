"""Throughput of the train step (and the eval step) for each model, 1 and 5 seeds, on the local devices.

    python benchmarks/train_step.py                          # all four models, 1 and 5 seeds
    python benchmarks/train_step.py --models cnmf_1x1 --seeds 1 --steps 5 --out /tmp/bench.json

The seeds run as ``config.seed_loop="auto"`` picks (``lax.map`` on a CPU, ``vmap`` on accelerators;
recorded per row). Synthetic uint8 CIFAR-shaped data (the step's cost does not depend on pixel values). Each
configuration is compiled, warmed up, then timed over ``--steps`` steps (median). Images/s counts every
seed's images (batch x seeds per step). The last column extrapolates one CIFAR-10 epoch: 1000 train
steps + 200 eval batches of 50 (data loading is free: the split lives on the device). Prints a table
and writes JSON. Not a test: tests only check that it runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from configs import default
from deepnmf_jax import models, train_lib


def _time(fn, steps: int, warmup: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds per call after warmup)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(0))
    compile_s = time.perf_counter() - start
    for k in range(1, warmup):
        jax.block_until_ready(fn(k))
    times = []
    for k in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(warmup + k))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def benchmark(
    model: str,
    seeds: int,
    batch: int,
    steps: int,
    warmup: int,
    gradient: str,
    width=1.0,
    iterations=20,
) -> dict:
    config = default.get_config()
    config.model.name = model
    config.model.gradient = gradient
    config.model.width = width
    config.model.iterations = iterations
    config.num_seeds = seeds
    config.batch_size = batch
    num_images = batch * (steps + warmup + 1)
    trainer = train_lib.Trainer(config, 10, (32, 32, 3), steps_per_epoch=num_images // batch)
    seed_list = list(range(seeds))
    states = trainer.init(trainer.seed_keys(seed_list))
    rng = np.random.default_rng(0)
    images = trainer.put(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8))
    labels = trainer.put(rng.integers(0, 10, num_images, dtype=np.int32))
    order = trainer.epoch_order(trainer.order_keys(seed_list), 1, num_images)
    holder = {"states": states}

    def train(k):
        holder["states"], metrics = trainer.train_step(holder["states"], images, labels, order)
        return metrics

    compile_s, step_s = _time(train, steps, warmup)
    eval_images = trainer.put(np.asarray(images)[:50])
    eval_labels = trainer.put(np.asarray(labels)[:50])
    _, eval_s = _time(
        lambda k: trainer.eval_all(holder["states"], eval_images, eval_labels), steps, 1
    )
    return {
        "model": model,
        "gradient": gradient,
        "seeds": seeds,
        "batch": batch,
        "parameters": models.count_params(states.params) // seeds,
        "mesh": dict(trainer.mesh.shape),
        "seed_loop": trainer.seed_loop,
        "compile_s": compile_s,
        "step_s": step_s,
        "images_per_s": batch * seeds / step_s,
        "eval_batch_s": eval_s,
        "cifar10_epoch_min": (1000 * step_s * 50 / batch + 200 * eval_s) / 60,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(models.PAPER_MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient", default="approximate")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args(argv)

    rows = []
    header = f"{'model':<10} {'seeds':>5} {'mesh':>9} {'compile s':>9} {'step s':>8} {'img/s':>8} {'eval s':>7} {'epoch min':>9}"
    print(f"devices: {jax.devices()}  ({platform.processor() or platform.machine()})")
    print(header)
    for model in args.models:
        for seeds in args.seeds:
            row = benchmark(
                model,
                seeds,
                args.batch,
                args.steps,
                args.warmup,
                args.gradient,
                args.width,
                args.iterations,
            )
            rows.append(row)
            print(
                f"{model:<10} {seeds:>5} {'x'.join(map(str, row['mesh'].values())):>9} {row['compile_s']:>9.1f} {row['step_s']:>8.3f} "
                f"{row['images_per_s']:>8.0f} {row['eval_batch_s']:>7.3f} {row['cifar10_epoch_min']:>9.1f}",
                flush=True,
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "args": vars(args),
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
