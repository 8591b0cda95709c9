"""The robustness suite: every corruption at every level, for every seed of a run, and its figure.

Each (corruption, level) draws its noise from ``seed`` and the pair's position only, so every model
(and every seed) sees the same corrupted images. The ``picture`` corruption mixes each test image with
a training image chosen by a fixed permutation of the training split (same for every model).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from deepnmf_jax import input_pipeline, reporting
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
      ``{"corruptions": {name: {"levels": [...], "accuracy": [[per seed] per level]}}, "seconds",
      "test_images", "seed"}``.
    """
    check_request(names, levels)
    data = input_pipeline.load_for_config(run.config)
    test = data.test.take(limit)
    images = test.images.astype(np.float32) / 255.0
    order = np.random.default_rng(seed).permutation(len(data.train))
    partners = data.train.images[np.resize(order, len(test))].astype(np.float32) / 255.0
    results, start = {}, time.perf_counter()
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
        "seconds": time.perf_counter() - start,
        "test_images": len(test),
        "num_classes": run.num_classes,
        "seed": seed,
    }


def plot(curves: dict[str, dict], path, title: str) -> None:
    """One panel per corruption, one line per model (name -> suite result) with its seed band."""
    from deepnmf_jax.plots import pyplot

    plt = pyplot()
    names = list(next(iter(curves.values()))["corruptions"])
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.3 * rows), squeeze=False, constrained_layout=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for index, (label, suite) in enumerate(curves.items()):
            result = suite["corruptions"].get(name)
            if result is None:
                continue
            x = np.asarray(result["levels"])
            accuracy = 100 * np.asarray(result["accuracy"])  # (levels, seeds)
            color = f"C{index % 10}"
            ax.plot(x, accuracy.mean(1), marker="o", ms=3, color=color, label=label)
            ax.fill_between(x, accuracy.min(1), accuracy.max(1), color=color, alpha=0.2, lw=0)
        classes = {suite.get("num_classes") for suite in curves.values()} - {None}
        if classes:
            ax.axhline(100 / max(classes), color="0.5", ls=":", lw=1, label="chance")
        standard = name in corruptions.STANDARD
        ax.set_xlabel(_axis_label(name))
        if name == "contrast":
            ax.invert_xaxis()  # a smaller factor is a stronger corruption
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name + (" (CIFAR-10-C)" if standard else " (reference)"))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    seeds = {len(s["corruptions"][names[0]]["accuracy"][0]) for s in curves.values()}
    images = {s["test_images"] for s in curves.values()}
    counts = (
        reporting.plural(min(seeds), "seed")
        if len(seeds) == 1
        else f"{min(seeds)}-{max(seeds)} seeds"
    )
    fig.suptitle(
        f"{title}: accuracy under corruption ({counts} per model, "
        f"band min-max; {max(images):,} test images)"
    )
    fig.savefig(path, dpi=110)
    if str(path).endswith(".png"):
        fig.savefig(str(path)[:-4] + ".svg")
    plt.close(fig)


def _axis_label(name: str) -> str:
    return {
        "uniform": "eta (share of uniform noise)",
        "picture": "eta (share of another image)",
        "holes": "eta (share of pixels zeroed)",
        "holes_w_noise": "eta (share of pixels replaced)",
        "gaussian_noise": "noise std (severity 0-5)",
        "impulse_noise": "share of salt-and-pepper pixels",
        "contrast": "contrast factor (severity 0-5)",
        "gaussian_blur": "blur sigma (pixels)",
    }[name]


def table(suite: dict, etas=(0.0, 0.25, 0.5)) -> dict[str, dict[float, dict]]:
    """Accuracy (mean, std over seeds) at the given levels of each reference corruption."""
    rows = {}
    for name, result in suite["corruptions"].items():
        levels = np.asarray(result["levels"])
        rows[name] = {
            float(eta): reporting.mean_std(result["accuracy"][int(np.argmin(np.abs(levels - eta)))])
            for eta in etas
            if np.min(np.abs(levels - eta)) < 1e-9
        }
    return rows
