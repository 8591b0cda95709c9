"""The robustness suite: every corruption at every level, for every seed of a run, and its figure.

Each (corruption, level) draws its noise from ``seed`` and the pair's position only, so every model
(and every seed) sees the same corrupted images. The ``picture`` corruption mixes each test image with
a training image chosen by a fixed permutation of the training split (same for every model).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from deepnmf_jax import input_pipeline
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluate import corruptions
from deepnmf_jax.evaluate.runs import TrainedRun


def check_request(names: Sequence[str], levels: Sequence[float] | None) -> None:
    """One-line errors for an unknown corruption or a level outside [0, 1]."""
    unknown = [n for n in names if n not in corruptions.CORRUPTIONS]
    if unknown:
        raise ConfigError(
            f"unknown corruption {unknown[0]!r}; choose from {', '.join(corruptions.CORRUPTIONS)}"
        )
    bad = [level for level in levels or () if not 0 <= level <= 1]
    if bad:
        raise ConfigError(f"noise levels must be in [0, 1], got {bad[0]}")


def run_suite(
    run: TrainedRun,
    names: Sequence[str] = tuple(corruptions.CORRUPTIONS),
    levels: Sequence[float] | None = None,
    limit: int = 0,
    seed: int = 0,
    progress=None,
) -> dict:
    """Accuracy per corruption x level x seed of ``run`` on its test split.

    Args:
      names: corruptions (``corruptions.CORRUPTIONS``).
      levels: the levels of the reference corruptions (eta); None: the reference's 21.
        The standard corruptions always run at their severities 0-5.
      limit: only the first ``limit`` test images (0: all).
      seed: of every noise draw.
      progress: called with a line of text after each level.

    Returns:
      ``{"corruptions": {name: {"levels": [...], "accuracy": [[per seed] per level]}},
      "clean": [per seed], "seeds", "seconds", "test_images", "seed", "request"}``.
    """
    check_request(names, levels)
    data = input_pipeline.load_for_config(run.config)
    test = data.test.take(limit)
    images = test.images.astype(np.float32) / 255.0
    order = np.random.default_rng(seed).permutation(len(data.train))
    partners = data.train.images[np.resize(order, len(test))].astype(np.float32) / 255.0
    results, start = {}, time.perf_counter()
    clean = np.mean(run.predict(test.images).argmax(-1) == test.labels, axis=-1).tolist()
    for index, name in enumerate(names):
        grid = corruptions.CORRUPTIONS[name][1]
        if levels is not None and name in corruptions.REFERENCE:
            grid = tuple(levels)
        accuracy = []
        for level_index, level in enumerate(grid):
            corrupted = corruptions.corrupt(
                name, images, level, [seed, index, level_index], partners
            )
            probs = run.predict(corrupted)
            accuracy.append(np.mean(probs.argmax(-1) == test.labels, axis=-1).tolist())
            if progress:
                progress(f"{name} level {level:g}: {100 * np.mean(accuracy[-1]):.2f} %")
        results[name] = {"levels": list(grid), "accuracy": accuracy}
    return {
        "corruptions": results,
        "clean": clean,
        "seeds": run.seeds,
        "seconds": time.perf_counter() - start,
        "test_images": len(test),
        "num_classes": run.num_classes,
        "seed": seed,
        "request": request(run, names, levels, limit, seed),
    }


def request(run: TrainedRun, names, levels, limit: int, seed: int) -> dict:
    """What determines a suite's numbers: an earlier ``noise.json`` with the same one is reused."""
    return {
        "corruptions": list(names),
        "levels": None if levels is None else [float(x) for x in levels],
        "limit": int(limit),
        "seed": int(seed),
        "checkpoint": run.checkpoint,
        "eval_batch_size": int(run.config.eval_batch_size),
        "seeds": run.seeds,
    }
