"""Releases one seed of a trained run as ``deepnmf_jax/pretrained/NAME.npz`` with its manifest entry.

    python scripts/release_weights.py RUN --seed-index 0 --name cnmf_1x1_cifar10_fast \\
        --data-dir DIR_WITH_cifar-10-python.tar.gz --command "deepnmf train ..."

The run needs BatchNorm population statistics for the checkpoint (``deepnmf population-stats``
makes them): they are released with the weights and are what ``pretrained.load`` uses. The weights
(the moving average where the run kept one, and BatchNorm's running statistics where it has them)
are stored in float32 under their parameter paths. The released file is then loaded back as a user
loads it and measured on the CIFAR-10 test set: with population statistics at batch 1 and at batch
50, and with each batch's own statistics (the reference's evaluation) at batch 50; plus the bundled
sample's 500 test images (which tests/test_pretrained.py reproduces) and how many of them get the
same class at batch 1 as at batch 50. The manifest records these, the config, the sha256 and the
command that trains the run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import sys
import time

import jax
import numpy as np
from flax import traverse_util

from deepnmf_jax import pretrained
from deepnmf_jax.data import pipeline as input_pipeline
from deepnmf_jax.evaluation import export, runs
from deepnmf_jax.nn.linen import POPULATION
from deepnmf_jax.training.workdir import read_config

FOLDER = pathlib.Path(__file__).resolve().parent.parent / "deepnmf_jax" / "pretrained"


def _portable(config: dict) -> dict:
    """The run's config without the training machine's data folder (a path that means nothing on a
    user's machine; the manifest's command says where to put the archive)."""
    return {**config, "data": {**config["data"], "data_dir": ""}}


def predictions(model, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The class of each uint8 (N, 32, 32, C) image, classified ``batch_size`` images at a time
    (the last batch may be smaller)."""
    apply = jax.jit(lambda v, x: model.apply(v, pretrained.preprocess(x), train=False))
    out = [
        np.asarray(apply(variables, images[i : i + batch_size])).argmax(-1)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def measure(name: str, test, sample) -> dict:
    """The accuracies of a released model as ``pretrained.load`` gives it."""
    model, variables = pretrained.load(name)
    _, batch_variables = pretrained.load(name, population=False)
    out = {}
    for key, vs, batch in (
        ("population_batch_1", variables, 1),
        ("population_batch_50", variables, 50),
        ("batch_stats_batch_50", batch_variables, 50),
    ):
        start = time.perf_counter()
        classes = predictions(model, vs, test.images, batch)
        out[key] = float(np.mean(classes == test.labels))
        print(f"{name}: {key} {100 * out[key]:.2f} % in {time.perf_counter() - start:.0f} s")
    single = predictions(model, variables, sample.images, 1)
    batched = predictions(model, variables, sample.images, 50)
    out["bundled_sample_test"] = float(np.mean(batched == sample.labels))
    out["bundled_sample_same_class_batch_1_and_50"] = int(np.sum(single == batched))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("run", help="the trained run's folder")
    parser.add_argument("--seed-index", type=int, default=0)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the command that trains the run")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--data-dir", required=True, help="where the CIFAR-10 archive is")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "source": "folder", "test_limit": 0}
    run = runs.open_run(
        args.run, args.checkpoint, data_overrides=overrides, require_population=True
    )
    variables = run.variables(args.seed_index)
    assert POPULATION in variables or "batch_stats" not in variables
    flat = traverse_util.flatten_dict(variables, sep="/")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    data = buffer.getvalue()
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
        "accuracy": {},
        "command": args.command,
        # as trained: run.config is the evaluation's (another source drops the validation split)
        "config": _portable(read_config(pathlib.Path(args.run)).to_dict()),
    }
    (FOLDER / entry["file"]).write_bytes(data)
    manifest_path = FOLDER / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[args.name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    test = runs.evaluation_split(run, "test")
    accuracy = measure(args.name, test, input_pipeline.load_sample().test)
    entry["accuracy"] = {
        f"{run.config.data.name}_test": accuracy["population_batch_50"],
        "test_images": len(test),
        "eval_batch_size": 50,
        **accuracy,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(
        f"{FOLDER / entry['file']}: {len(data) / 1e6:.2f} MB, test accuracy "
        f"{100 * accuracy['population_batch_50']:.2f} % ({len(test):,} images; batch 1: "
        f"{100 * accuracy['population_batch_1']:.2f} %, batch statistics at 50: "
        f"{100 * accuracy['batch_stats_batch_50']:.2f} %), bundled sample "
        f"{100 * accuracy['bundled_sample_test']:.2f} %, same class at batch 1 and 50 on "
        f"{accuracy['bundled_sample_same_class_batch_1_and_50']} of 500"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
