"""The robustness suite: every corruption at every level, for every seed of a run, and its figure.

Each (corruption, level) draws its noise from ``seed`` and the pair's position only, so every model
(and every seed) sees the same corrupted images. The ``picture`` corruption mixes each test image with
a training image chosen by a fixed permutation of the training split (same for every model).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable

import numpy as np

from deepnmf_jax import machine
from deepnmf_jax._format import plural
from deepnmf_jax.data.pipeline import load_for_config
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import cifar10c, corruptions, noise_report
from deepnmf_jax.evaluation.runs import TrainedRun, run_folders
from deepnmf_jax.training import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """What a suite runs: the corruptions, their levels, the images and the draws.

    Attributes:
      names: corruptions (``corruptions.CORRUPTIONS``).
      levels: the levels (eta) of the reference's corruptions; None: the reference's 21.
      severities: the CIFAR-10-C severities (1-5); None: all five.
      limit: only the first ``limit`` test images (0: all).
      seed: of every draw.
      cifar10c_dir: a folder of the official CIFAR-10-C files: its images instead of generated ones.
    """

    names: tuple[str, ...] = tuple(corruptions.CORRUPTIONS)
    levels: tuple[float, ...] | None = None
    severities: tuple[int, ...] | None = None
    limit: int = 0
    seed: int = 0
    cifar10c_dir: str | None = None

    def __post_init__(self):
        unknown = [n for n in self.names if n not in corruptions.CORRUPTIONS]
        if unknown:
            raise ConfigError(
                f"unknown corruption {unknown[0]!r}; choose from "
                f"{', '.join(corruptions.CORRUPTIONS)} (or reference, cifar10c, all)"
            )
        bad = [level for level in self.levels or () if not 0 <= level <= 1]
        if bad:
            raise ConfigError(f"noise levels must be in [0, 1], got {bad[0]}")
        wrong = [s for s in self.severities or () if s not in cifar10c.SEVERITIES]
        if wrong:
            raise ConfigError(f"CIFAR-10-C severities are 1 to 5, got {wrong[0]}")
        if self.cifar10c_dir and not pathlib.Path(self.cifar10c_dir).is_dir():
            raise ConfigError(f"--cifar10c-dir {self.cifar10c_dir} is not a folder")

    def grid(self, name: str) -> tuple[float, ...]:
        if name in corruptions.CIFAR10C:
            return (0, *(self.severities or cifar10c.SEVERITIES))
        levels = corruptions.CORRUPTIONS[name][1]
        return tuple(self.levels) if self.levels is not None else levels


def run_suite(run: TrainedRun, options: SuiteOptions, progress=None) -> dict:
    """Accuracy per corruption x level x seed of ``run`` on its test split.

    Returns:
      ``{"corruptions": {name: {"levels": [...], "accuracy": [[per seed] per level]}},
      "clean": [per seed], "cifar10c_mean": [per seed] (the mean over every CIFAR-10-C corruption
      and severity run, RobustBench's convention), "seeds", "seconds", "test_images", "seed",
      "request"}``.
    """
    data = load_for_config(run.config.data, run.config.progress)
    test = data.test.take(options.limit)
    order = np.random.default_rng(options.seed).permutation(len(data.train))
    partners = data.train.images[np.resize(order, len(test))].astype(np.float32) / 255.0
    results, start = {}, time.perf_counter()
    clean = np.mean(run.predict(test.images).argmax(-1) == test.labels, axis=-1).tolist()
    for index, name in enumerate(options.names):
        accuracy = []
        for level_index, level in enumerate(options.grid(name)):
            labels = test.labels
            if name in corruptions.CIFAR10C and options.cifar10c_dir and level:
                images, labels = cifar10c.read_official(
                    pathlib.Path(options.cifar10c_dir), name, int(level), len(test)
                )
            else:
                seed = [options.seed, index, level_index]
                images = corruptions.corrupt(name, test.images, level, seed, partners)
            probs = run.predict(images)
            accuracy.append(np.mean(probs.argmax(-1) == labels, axis=-1).tolist())
            if progress:
                progress(f"{name} level {level:g}: {100 * np.mean(accuracy[-1]):.2f} %")
        results[name] = {"levels": list(options.grid(name)), "accuracy": accuracy}
    cells = [
        accuracy
        for name, result in results.items()
        if name in corruptions.CIFAR10C
        for level, accuracy in zip(result["levels"], result["accuracy"], strict=True)
        if level
    ]
    suite = {
        "corruptions": results,
        "clean": clean,
        "seeds": run.seeds,
        "seconds": time.perf_counter() - start,
        "test_images": len(test),
        "num_classes": run.num_classes,
        "seed": options.seed,
        "request": request(run, options),
    }
    if cells:
        suite["cifar10c_mean"] = np.mean(np.asarray(cells), axis=0).tolist()
        suite["cifar10c_cells"] = len(cells)
    return suite


def request(run: TrainedRun, options: SuiteOptions) -> dict:
    """What determines a suite's numbers: an earlier ``noise.json`` with the same one is reused."""
    return {
        "corruptions": list(options.names),
        "levels": None if options.levels is None else [float(x) for x in options.levels],
        "severities": None if options.severities is None else list(options.severities),
        "limit": int(options.limit),
        "seed": int(options.seed),
        "cifar10c_dir": options.cifar10c_dir,
        "checkpoint": run.checkpoint,
        "eval_batch_size": int(run.config.eval_batch_size),
        "batch_norm": "population" if run.population is not None else "batch",
        "seeds": run.seeds,
    }


def command(
    selection,
    options: SuiteOptions,
    out: pathlib.Path | None = None,
    recompute: bool = False,
    say: Callable[[str], None] = print,
) -> dict:
    """The suite on every run of ``selection``; the runs of one variant (seeds in one or more
    folders) make one curve of the pooled figure, JSON and table in ``out`` (default: the one
    workdir; for a single run only the table, beside the run's own ``eval/noise.json``).
    Returns the pooled curves."""
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
            suites.append((run.folder, _suite(run, options, recompute, say)))
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
    """``all``, ``reference``, ``cifar10c`` or names separated by commas."""
    groups = {
        "all": corruptions.CORRUPTIONS,
        "reference": corruptions.REFERENCE,
        "cifar10c": corruptions.CIFAR10C,
    }
    if text in groups:
        return list(groups[text])
    return [name.strip() for name in text.split(",") if name.strip()]


def numbers_from_text(text: str | None, flag: str, kind=float) -> tuple | None:
    """``"0,0.5"`` -> (0.0, 0.5); None for no text; one line for anything else."""
    if not text:
        return None
    try:
        return tuple(kind(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} must be numbers separated by commas, got {text!r}") from None


def _suite(run: TrainedRun, options: SuiteOptions, recompute, say) -> dict:
    """The run's suite: its earlier ``eval/noise.json`` if that was asked the same, else run now and
    saved there (the run's own figure beside it)."""
    path = run.folder / "eval" / "noise.json"
    wanted = request(run, options)
    if path.is_file() and not recompute:
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = {}
        if isinstance(earlier, dict) and earlier.get("request") == wanted:
            say(f"  reused {path} (same checkpoint and options; --recompute runs it again)")
            return earlier
    suite = run_suite(run, options, lambda line: say(f"  {line}"))
    suite.update(
        model=run.config.model.name,
        checkpoint=run.checkpoint,
        epoch=run.epoch,
        machine=machine.machine_info(),
    )
    path.parent.mkdir(exist_ok=True)
    workdir_lib.atomic_write_text(path, json.dumps(suite, indent=1))
    label = run.config.model.name
    noise_report.plot({label: suite}, path.with_suffix(".png"), f"{label} ({run.folder.name})")
    say(f"  {suite['seconds'] / 60:.1f} min for the suite; {path}")
    return suite
