"""The robustness suite: every corruption at every level, for every seed of a run, and its figure.

Each (corruption, level) draws its noise from ``seed`` and the pair's position only, so every model
(and every seed) sees the same corrupted images. The ``picture`` corruption mixes each test image with
a training image chosen by a fixed permutation of the training split (same for every model).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from deepnmf_jax._format import plural
from deepnmf_jax.data.pipeline import load_for_config
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import corruptions, noise_report
from deepnmf_jax.evaluation.runs import TrainedRun, run_folders
from deepnmf_jax.training import workdir as workdir_lib


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
    data = load_for_config(run.config.data, run.config.progress)
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
        "batch_norm": "population" if run.population is not None else "batch",
        "seeds": run.seeds,
    }


def command(
    selection,
    corruption_names: Sequence[str],
    levels: Sequence[float] | None = None,
    limit: int = 0,
    seed: int = 0,
    out: pathlib.Path | None = None,
    recompute: bool = False,
    say: Callable[[str], None] = print,
) -> dict:
    """The suite on every run of ``selection``; the runs of one variant (seeds in one or more
    folders) make one curve of the pooled figure, JSON and table in ``out`` (default: the one
    workdir; for a single run only the table, beside the run's own ``eval/noise.json``).
    Returns the pooled curves."""
    check_request(corruption_names, levels)
    roots = list(selection.workdirs)
    if len(roots) > 1 and not out:
        raise ConfigError(
            "noise with several --workdir needs --out, the folder of the pooled results"
        )
    opened: dict[str, list] = {}  # label -> runs; every run is opened (and checked) first
    seen: dict[tuple[str, int], pathlib.Path] = {}
    for root in roots:
        folders = run_folders(root)
        for folder in folders:
            workdir_lib.check_writable(folder / "eval")
            run = selection.open(folder)
            label = noise_report.curve_label(folder, run.config.model.name, folders != [root])
            for run_seed in run.seeds:
                if (label, run_seed) in seen:
                    raise ConfigError(
                        f"{label}: seed {run_seed} is in both {seen[label, run_seed]} and {folder}"
                    )
                seen[label, run_seed] = folder
            opened.setdefault(label, []).append(run)
    by_label = {}
    for label, trained in opened.items():
        suites = []
        for run in trained:
            say(f"{run.folder}: {label}, {plural(len(run.seeds), 'seed')}")
            suites.append(
                (run.folder, _suite(run, corruption_names, levels, limit, seed, recompute, say))
            )
        by_label[label] = suites
    curves = {label: noise_report.pool(label, suites) for label, suites in by_label.items()}
    table = noise_report.markdown(curves)
    single = len(roots) == 1 and (roots[0] / "config.json").is_file() and not out
    target = roots[0] / "eval" if single else pathlib.Path(out or roots[0])
    target.mkdir(parents=True, exist_ok=True)
    workdir_lib.atomic_write_text(target / "noise.md", table)
    written = [target / "noise.md"]
    if not single:
        workdir_lib.atomic_write_text(target / "noise.json", json.dumps(curves, indent=1))
        noise_report.plot(curves, target / "noise.png", target.resolve().name)
        written = [target / "noise.json", *written, target / "noise.png"]
    say(table)
    say(", ".join(map(str, written)))
    return curves


def corruption_names(text: str) -> list[str]:
    """``all``, ``reference``, ``standard``, ``cifar10c`` or names separated by commas."""
    groups = {
        "all": corruptions.CORRUPTIONS,
        "reference": corruptions.REFERENCE,
        "standard": corruptions.STANDARD,
    }
    if text in groups:
        return list(groups[text])
    return [name.strip() for name in text.split(",") if name.strip()]


def levels_from_text(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--levels must be numbers separated by commas, got {text!r}") from None


def _suite(run: TrainedRun, names, levels, limit, seed, recompute, say) -> dict:
    """The run's suite: its earlier ``eval/noise.json`` if that was asked the same, else run now and
    saved there (the run's own figure beside it)."""
    path = run.folder / "eval" / "noise.json"
    wanted = request(run, names, levels, limit, seed)
    if path.is_file() and not recompute:
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = {}
        if isinstance(earlier, dict) and earlier.get("request") == wanted:
            say(f"  reused {path} (same checkpoint and options; --recompute runs it again)")
            return earlier
    suite = run_suite(run, names, levels, limit, seed, lambda line: say(f"  {line}"))
    suite.update(model=run.config.model.name, checkpoint=run.checkpoint, epoch=run.epoch)
    path.parent.mkdir(exist_ok=True)
    workdir_lib.atomic_write_text(path, json.dumps(suite, indent=1))
    label = run.config.model.name
    noise_report.plot({label: suite}, path.with_suffix(".png"), f"{label} ({run.folder.name})")
    say(f"  {suite['seconds'] / 60:.1f} min for the suite; {path}")
    return suite
