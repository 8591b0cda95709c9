"""The evaluation commands, with typed arguments (:class:`Selection`): what ``deepnmf evaluate``,
``noise``, ``export``, ``population-stats``, ``import-reference`` and ``import-pretrained`` do. Each
computes everything first and writes its files at the end, so an error leaves existing results as
they were; each prints one summary line per run (``say``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable

import numpy as np

from deepnmf_jax import machine
from deepnmf_jax._format import mean_std, plural
from deepnmf_jax._plotting import pyplot
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import export as export_lib
from deepnmf_jax.evaluation import metrics, runs
from deepnmf_jax.evaluation.runs import run_folders
from deepnmf_jax.training import workdir as workdir_lib

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which runs, which checkpoint, and how to evaluate them on this machine.

    Attributes:
      workdirs: training runs or sweep folders (each sweep's variants are all taken).
      checkpoint: ``"best"``, ``"latest"`` or a step number.
      eval_batch_size: replaces the run's evaluation batch (0: the run's).
      data_dir, source: where the dataset is here (default: the run's own).
      test_limit: only the first N test images.
      batch_stats: BatchNorm with each batch's statistics instead of the population's.
    """

    workdirs: tuple[pathlib.Path, ...]
    checkpoint: str = "best"
    eval_batch_size: int = 0
    data_dir: str | None = None
    source: str | None = None
    test_limit: int | None = None
    batch_stats: bool = False

    def data_overrides(self) -> dict:
        overrides = {}
        if self.data_dir:
            overrides["data_dir"] = self.data_dir
        if self.source:
            overrides["source"] = self.source
        if self.test_limit is not None:
            overrides["test_limit"] = self.test_limit
        return overrides

    def open(self, folder: pathlib.Path, require_population: bool = False) -> runs.TrainedRun:
        return runs.open_run(
            folder,
            self.checkpoint,
            self.eval_batch_size or None,
            self.data_overrides(),
            batch_stats=self.batch_stats,
            require_population=require_population,
        )

    def folders(self) -> list[pathlib.Path]:
        return [f for w in self.workdirs for f in run_folders(pathlib.Path(w))]


def evaluate(selection: Selection, split: str = "test", say: Say = print) -> list[dict]:
    """Accuracy, per-class accuracy, confusion, and calibration (ECE in 15 bins, before and after
    temperature scaling fit on the validation split where the run has one) of every seed; writes
    ``eval/metrics.json`` and ``eval/confusion.png`` per run."""
    results = []
    for folder in selection.folders():
        workdir_lib.check_writable(folder / "eval")
        run = selection.open(folder)
        evaluated = runs.evaluation_split(run, split)
        probs = run.predict(evaluated.images)
        temperatures = _temperatures(run, split)
        per_seed = []
        for k, (seed, p) in enumerate(zip(run.seeds, probs, strict=True)):
            entry = {
                "seed": seed,
                **metrics.classification_metrics(p, evaluated.labels, run.num_classes),
            }
            if temperatures is not None:
                scaled = metrics.temperature_scaled(p, temperatures[k])
                entry["temperature"] = temperatures[k]
                entry["ece_temperature_scaled"] = metrics.expected_calibration_error(
                    scaled, evaluated.labels
                )
            per_seed.append(entry)
        accuracy = [s["accuracy"] for s in per_seed]
        result = {
            "run": str(folder),
            "model": run.config.model.name,
            "checkpoint": run.checkpoint,
            "epoch": run.epoch,
            "split": split,
            "images": len(evaluated),
            "batch_norm": run.note or "no BatchNorm",
            "accuracy": mean_std(accuracy),
            "ece": mean_std([s["ece"] for s in per_seed]),
            "per_seed": per_seed,
            "machine": machine.machine_info(),
        }
        calibrated = ""
        if temperatures is not None:
            result["ece_temperature_scaled"] = mean_std(
                [s["ece_temperature_scaled"] for s in per_seed]
            )
            calibrated = (
                f" ({result['ece_temperature_scaled']['mean']:.3f} after temperature scaling, "
                f"T = {np.mean(temperatures):.2f}, fit on validation)"
            )
        out = folder / "eval"
        out.mkdir(exist_ok=True)
        workdir_lib.atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
        _plot_confusion(per_seed, run, out / "confusion.png")
        say(
            f"{folder}: {run.config.model.name} ({run.checkpoint}, epoch {run.epoch}) {split} "
            f"accuracy {100 * result['accuracy']['mean']:.2f} +/- "
            f"{100 * result['accuracy']['std']:.2f} % over {plural(len(accuracy), 'seed')}, "
            f"ECE {result['ece']['mean']:.3f}{calibrated}; {out / 'metrics.json'}"
        )
        if run.note:
            say(f"  {run.note}")
        results.append(result)
    return results


def _temperatures(run: runs.TrainedRun, split: str) -> list[float] | None:
    """Per seed, the temperature fit on the validation split (None without one, or when the
    validation split is what is evaluated)."""
    if split != "test" or not run.config.data.validation_size:
        return None
    validation = runs.evaluation_split(run, "validation")
    probs = run.predict(validation.images)
    return [metrics.fit_temperature(p, validation.labels) for p in probs]


def _plot_confusion(per_seed: list[dict], run: runs.TrainedRun, path: pathlib.Path) -> None:
    plt = pyplot()
    matrix = np.sum([np.asarray(s["confusion"], np.float64) for s in per_seed], axis=0)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    names = export_lib.class_names(run.config.data.name)
    size = 0.55 * len(names) + 2.5
    fig, ax = plt.subplots(figsize=(size, size * 0.85), constrained_layout=True)
    image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class")
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    f"{100 * rates[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{run.config.model.name}: confusion ({plural(len(per_seed), 'seed')} summed, "
        f"{run.checkpoint})"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export(
    selection: Selection,
    seed_index: int = 0,
    out: pathlib.Path | None = None,
    onnx: bool = False,
    say: Say = print,
) -> dict:
    """One seed's inference (``model.jax_export`` and ``model.json``; ``onnx``: also ONNX)."""
    (folder,) = selection.workdirs
    workdir_lib.check_writable(pathlib.Path(out) if out else pathlib.Path(folder) / "eval")
    run = selection.open(pathlib.Path(folder))
    if not 0 <= seed_index < len(run.seeds):
        raise ConfigError(f"--seed-index must be in [0, {len(run.seeds)}), got {seed_index}")
    target = pathlib.Path(out) if out else run.folder / "eval" / "export"
    test = runs.evaluation_split(run, "test")
    probs = run.predict(test.images)[seed_index]
    accuracy = float(np.mean(probs.argmax(-1) == test.labels))
    manifest = export_lib.export_seed(run, seed_index, target, accuracy)
    say(
        f"{target / 'model.jax_export'}: seed {manifest['seed']}, accuracy {100 * accuracy:.2f} % "
        f"on {len(test):,} test images, platforms {manifest['platforms']}"
    )
    if onnx:
        result = export_lib.export_onnx(
            run, seed_index, target, test.images[: run.config.eval_batch_size]
        )
        if result.ok:
            say(f"{result.detail}: onnxruntime agrees with JAX to {result.max_difference:.2e}")
        else:
            print(f"ONNX: {result.detail}", file=sys.stderr)
    return manifest


def population(selection: Selection, say: Say = print) -> list[pathlib.Path]:
    """BatchNorm population statistics of the chosen checkpoint of every run, over its training
    images (:mod:`deepnmf_jax.training.population_stats`)."""
    from deepnmf_jax.evaluation import population as population_lib

    written = []
    for folder in selection.folders():
        path, seconds = population_lib.gather(folder, selection)
        say(
            f"{path}: BatchNorm population statistics of {folder} "
            f"({selection.checkpoint}) in {seconds:.0f} s"
            if path
            else f"{folder}: the model has no BatchNorm; nothing to gather"
        )
        if path:
            written.append(path)
    return written


def import_reference(
    state_dict: pathlib.Path, model: str, workdir: pathlib.Path, dataset: str, say: Say = print
) -> pathlib.Path:
    """A run folder (config, checkpoint) from a reference ``state_dict`` saved as ``.npz``."""
    from deepnmf_jax.evaluation import run_import

    folder = run_import.import_state_dict(state_dict, model, workdir, dataset)
    say(
        f"{folder}: {model} from {state_dict}; evaluate it with deepnmf evaluate --workdir {folder}"
    )
    return folder


def import_pretrained(name: str, workdir: pathlib.Path, say: Say = print) -> pathlib.Path:
    """A run folder (config, checkpoint, population statistics) from a released model."""
    from deepnmf_jax.evaluation import run_import

    folder, entry = run_import.import_pretrained(name, workdir)
    say(
        f"{folder}: {name} ({entry['model']['name']}, seed {entry['seed']}, epoch "
        f"{entry['epoch']}); evaluate it with deepnmf evaluate --workdir {folder} "
        "--data-dir DIR_WITH_THE_DATASET"
    )
    return folder
