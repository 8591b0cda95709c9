"""Paper Fig. 2: time and memory of back-propagation, approximate (one-step) vs through every iteration.

    python benchmarks/backprop.py                       # batch 50 and 256, all configurations
    python benchmarks/backprop.py --batches 50 --configs cnn cnmf:approximate cnmf:unrolled

For CNN, CNN+1x1 (no NMF: one configuration each) and CNMF, CNMF+1x1 with the NMF gradient
``approximate`` (the paper's custom_vjp), ``unrolled`` (autodiff through all iterations),
``unrolled_remat`` (the same, each iteration rematerialised with ``jax.checkpoint``) and ``implicit``
(exact fixed-point gradient), it measures in float32 on the local devices:

* compile time of the value-and-grad program; forward time (training mode), backward time
  (value-and-grad minus forward), and train-step time (forward, backward and the Adam update),
  medians over ``--steps`` runs after ``--warmup``;
* memory: XLA's compiled memory analysis of the value-and-grad program (temporaries, i.e. what is kept
  for the backward pass plus scratch) and the process's peak RSS.

Each configuration runs in its own process, so peak RSS belongs to it alone. Prints a table of
absolute numbers and ratios to the CNN (same batch), and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = [
    "cnn",
    "cnn_1x1",
    "cnmf:approximate",
    "cnmf:unrolled",
    "cnmf:unrolled_remat",
    "cnmf:implicit",
    "cnmf_1x1:approximate",
    "cnmf_1x1:unrolled",
    "cnmf_1x1:unrolled_remat",
    "cnmf_1x1:implicit",
]


def _median_time(fn, steps, warmup):
    from deepnmf_jax import machine as benchmarking

    return benchmarking.median_seconds(fn, steps, max(warmup, 1))[1]


def run_one(
    config: str, batch: int, steps: int, warmup: int, width: float, iterations: int
) -> dict:
    """Measures one configuration in this process."""
    import jax
    import jax.numpy as jnp
    import optax

    from deepnmf_jax import models
    from deepnmf_jax.configs import default
    from deepnmf_jax.models import losses
    from deepnmf_jax.training import optim

    model_name, _, gradient = config.partition(":")
    remat = gradient == "unrolled_remat"
    backward = (
        models.ModelConfig(
            gradient="unrolled" if remat else (gradient or "approximate"), remat=remat
        )
        .nmf_options()
        .backward
    )
    model = models.build_model(model_name, width=width, iterations=iterations, backward=backward)
    key_images, key_labels, key_init = jax.random.split(jax.random.key(0), 3)
    images = jax.random.uniform(key_images, (batch, 28, 28, 3), jnp.float32)
    labels = jax.random.randint(key_labels, (batch,), 0, 10)
    init = jax.jit(functools.partial(model.init, train=False))  # not op by op
    params = init(key_init, images[:2])["params"]
    roles = models.anatomy(model, (28, 28, 3)).param_roles()
    tx = optim.make_optimizer(default.get_config().optim, roles)
    opt_state = tx.init(params)

    def loss_fn(params):
        return losses.reference_loss(model.apply({"params": params}, images, train=True), labels)

    forward = jax.jit(lambda p: model.apply({"params": p}, images, train=True))
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled_value_and_grad = value_and_grad.lower(params).compile()  # timed and called below
    compile_s = time.perf_counter() - start
    memory = compiled_value_and_grad.memory_analysis()
    forward_s = _median_time(lambda: forward(params), steps, warmup)
    grad_s = _median_time(lambda: compiled_value_and_grad(params), steps, warmup)
    step_s = _median_time(lambda: train_step(params, opt_state), steps, warmup)
    return {
        "config": config,
        "model": model_name,
        "gradient": gradient or "-",
        "batch": batch,
        "compile_s": compile_s,
        "forward_s": forward_s,
        "backward_s": max(grad_s - forward_s, 0.0),
        "value_and_grad_s": grad_s,
        "train_step_s": step_s,
        "xla_temp_mib": memory.temp_size_in_bytes / 2**20 if memory else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(jax.devices()[0]),
    }


def _ratio(value, reference):
    return value / reference if reference else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--batches", nargs="+", type=int, default=[50, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/backprop.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one configuration, in this process
        config, batch = args.child.rsplit("@", 1)
        print(
            json.dumps(
                run_one(config, int(batch), args.steps, args.warmup, args.width, args.iterations)
            )
        )
        return None

    rows = []
    for batch in args.batches:
        for config in args.configs:
            command = [sys.executable, __file__, f"--child={config}@{batch}"]
            command += [f"--steps={args.steps}", f"--warmup={args.warmup}"]
            command += [f"--width={args.width}", f"--iterations={args.iterations}"]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                print(f"{config} batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"measured {config} batch {batch}", file=sys.stderr, flush=True)

    print(
        f"{'config':<24} {'batch':>5} {'compile s':>9} {'fwd s':>7} {'bwd s':>7} {'step s':>7} {'XLA tmp MiB':>11} "
        f"{'RSS MiB':>8} {'bwd/CNN':>8} {'step/CNN':>8} {'tmp/CNN':>8} {'RSS/CNN':>8}"
    )
    for row in rows:
        cnn = next((r for r in rows if r["config"] == "cnn" and r["batch"] == row["batch"]), None)
        ref = cnn or {}
        row["backward_vs_cnn"] = _ratio(row["backward_s"], ref.get("backward_s"))
        row["train_step_vs_cnn"] = _ratio(row["train_step_s"], ref.get("train_step_s"))
        row["xla_temp_vs_cnn"] = _ratio(row["xla_temp_mib"] or 0, ref.get("xla_temp_mib"))
        row["peak_rss_vs_cnn"] = _ratio(row["peak_rss_mib"], ref.get("peak_rss_mib"))
        print(
            f"{row['config']:<24} {row['batch']:>5} {row['compile_s']:>9.1f} {row['forward_s']:>7.3f} {row['backward_s']:>7.3f} "
            f"{row['train_step_s']:>7.3f} {row['xla_temp_mib'] or 0:>11.1f} {row['peak_rss_mib']:>8.0f} "
            f"{row['backward_vs_cnn']:>8.2f} {row['train_step_vs_cnn']:>8.2f} "
            f"{row['xla_temp_vs_cnn']:>8.2f} {row['peak_rss_vs_cnn']:>8.2f}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows}, indent=2
        )
    )
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
