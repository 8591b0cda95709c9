"""Our train step, timed on request: one of the workers of ``side_by_side.py``.

The train step a run uses (augmentation, forward, backward, Adam; all seeds at once) on synthetic
uint8 CIFAR-shaped data, built by :func:`deepnmf_jax.training.program.build` from the default config
with ``--set KEY=VALUE`` overrides. The package is imported from wherever ``PYTHONPATH`` points first
(``side_by_side.py`` points it at the code tree under test, e.g. an older commit); the ready line says
which file was imported.

Protocol: ``step_protocol.py``; the ready record, printed after the compile and ``--warmup`` steps,
is ``{"ready": ..., "parameters": ..., "compile_s": ..., "mflop_per_image": ..., "seed_loop": ...}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import jax
import numpy as np
import step_protocol  # beside this script

import deepnmf_jax
from deepnmf_jax import _malloc, _schema, training
from deepnmf_jax.models import flops, param_counts
from deepnmf_jax.training import program


def default_config():
    """The default config of the code tree under test: its own ``configs/default.py`` where the
    package sits in a source tree (an editable install maps ``deepnmf_jax.configs`` to the
    installed tree's ``configs/``, whatever ``PYTHONPATH`` says), else the installed one."""
    own = pathlib.Path(deepnmf_jax.__file__).absolute().parent.parent / "configs" / "default.py"
    if not own.is_file():
        from deepnmf_jax.configs import default

        return default.get_config()
    spec = importlib.util.spec_from_file_location("_tree_default_config", own)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv=None) -> None:
    _malloc.exec_on_tcmalloc()  # as the command line runs (DEEPNMF_MALLOC=system: glibc's malloc)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="config KEY=VALUE")
    args = parser.parse_args(argv)

    config = training.from_any(default_config()).replace(
        {"model.name": args.model, "num_seeds": args.seeds, "batch_size": args.batch}
    )
    texts = dict(item.partition("=")[::2] for item in args.set)
    config = _schema.replace(config, texts, texts=True)  # each read as its key's type, as the CLI
    steps_per_epoch = 8
    run = program.build(config, 10, (32, 32, 3), steps_per_epoch=steps_per_epoch)
    seeds = list(range(args.seeds))
    holder = {"states": run.init(run.placement.seed_keys(seeds))}
    rng = np.random.default_rng(0)
    num_images = args.batch * steps_per_epoch
    images = run.placement.put(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8))
    labels = run.placement.put(rng.integers(0, 10, num_images, dtype=np.int32))
    order = run.order(run.placement.order_keys(config.data, seeds), 1, num_images)

    def step() -> None:
        holder["states"], metrics = run.train(holder["states"], images, labels, order)
        jax.block_until_ready(metrics)

    first = step_protocol.timed(step)
    for _ in range(args.warmup - 1):
        step()
    crop = config.augment.crop_size
    ready = {
        "ready": f"jax {jax.__version__} from {deepnmf_jax.__file__}",
        "parameters": param_counts.count_params(holder["states"].params) // args.seeds,
        "compile_s": first,
        "mflop_per_image": flops.train_step_flops(run.ctx.model, (crop, crop, 3)) / 1e6,
        "seed_loop": run.placement.loop,
        "allocator": step_protocol.allocator(),
    }
    step_protocol.serve(step, ready)


if __name__ == "__main__":
    main()
