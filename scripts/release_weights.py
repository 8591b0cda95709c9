"""Releases one seed of a trained run as ``deepnmf_jax/pretrained/NAME.npz`` with its manifest entry.

    python scripts/release_weights.py runs/recipes/cnmf_1x1_fast --seed-index 0 \\
        --name cnmf_1x1_cifar10_fast --command "python -m deepnmf_jax.sweep run ..."

The weights (the moving average where the run kept one, and BatchNorm's running statistics where it
has them) are stored in float32 under their parameter paths. The manifest records the config, the
accuracy on the CIFAR-10 test set (evaluated here, in batches of the run's eval_batch_size) and on the
500 test images of the bundled sample (which tests/test_pretrained.py reproduces), the sha256 of the
file, and the command that trains the run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import sys

import numpy as np
from flax import traverse_util

from deepnmf_jax.data import pipeline as input_pipeline
from deepnmf_jax.evaluation import export, runs
from deepnmf_jax.training.workdir import read_config

FOLDER = pathlib.Path(__file__).resolve().parent.parent / "deepnmf_jax" / "pretrained"


def _portable(config: dict) -> dict:
    """The run's config without the training machine's data folder (a path that means nothing on a
    user's machine; the manifest's command says where to put the archive)."""
    return {**config, "data": {**config["data"], "data_dir": ""}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("run", help="the trained run's folder")
    parser.add_argument("--seed-index", type=int, default=0)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the command that trains the run")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--data-dir", default="", help="where the CIFAR-10 archive is")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "source": "folder"} if args.data_dir else {}
    run = runs.open_run(args.run, args.checkpoint, data_overrides={**overrides, "test_limit": 0})
    variables = run.variables(args.seed_index)
    flat = traverse_util.flatten_dict(variables, sep="/")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    data = buffer.getvalue()
    test = runs.evaluation_split(run, "test")
    probs = run.predict(test.images)[args.seed_index]
    test_accuracy = float(np.mean(probs.argmax(-1) == test.labels))
    sample = input_pipeline.load_sample().test
    sample_probs = run.predict(sample.images)[args.seed_index]
    sample_accuracy = float(np.mean(sample_probs.argmax(-1) == sample.labels))
    m = run.config.model
    entry = {
        "file": f"{args.name}.npz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": {
            "name": m.name,
            "width": m.width,
            "groups": m.groups,
            "iterations": m.iterations,
            "batch_norm": m.batch_norm,
            "head": m.head,
            "batch_norm_1x1": m.batch_norm_1x1,
        },
        "classes": export.class_names(run.config.data.name),
        "seed": run.seeds[args.seed_index],
        "checkpoint": run.checkpoint,
        "epoch": run.epoch,
        "accuracy": {
            f"{run.config.data.name}_test": test_accuracy,
            "test_images": len(test),
            "eval_batch_size": run.config.eval_batch_size,
            "bundled_sample_test": sample_accuracy,
        },
        "command": args.command,
        # as trained: run.config is the evaluation's (another source drops the validation split)
        "config": _portable(read_config(pathlib.Path(args.run)).to_dict()),
    }
    (FOLDER / entry["file"]).write_bytes(data)
    manifest_path = FOLDER / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[args.name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(
        f"{FOLDER / entry['file']}: {len(data) / 1e6:.2f} MB, test accuracy {100 * test_accuracy:.2f} % "
        f"({len(test):,} images), bundled sample {100 * sample_accuracy:.2f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
