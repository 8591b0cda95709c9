"""What a run writes for people: per-epoch metrics (JSONL, TensorBoard), learning curves, results.json.

Every metric has one value per seed; summaries give mean and sample standard deviation (ddof=1, 0 for
a single seed) over the seeds.
"""

from __future__ import annotations

import json
import logging
import pathlib
import subprocess

import numpy as np

from deepnmf_jax import dead_channels
from deepnmf_jax import workdir as workdir_lib

log = logging.getLogger(__name__)


def mean_std(values) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std}


class MetricsWriter:
    """Appends one JSON line per epoch to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: pathlib.Path, enabled: bool = True, tensorboard: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            epoch = record["epoch"]
            for name in ("train_loss", "train_accuracy", "test_accuracy"):
                for seed, value in enumerate(record[name]):
                    self._tb.add_scalar(f"{name}/seed{seed}", value, epoch)
                self._tb.add_scalar(f"{name}/mean", float(np.mean(record[name])), epoch)
            for group, lr in record["learning_rates"].items():
                self._tb.add_scalar(f"learning_rate/{group}", lr, epoch)
            self._tb.add_scalar("epoch_time_s", record["epoch_time_s"], epoch)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_history(workdir: pathlib.Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl`` (a torn last line dropped with a warning)."""
    return workdir_lib.read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")


def rewrite_history(workdir: pathlib.Path, history: list[dict]) -> None:
    """Makes ``metrics.jsonl`` hold exactly ``history`` (after a resume: epochs logged after the
    restored checkpoint, and a torn last line, go)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    logged = read_history(workdir)  # warns about a torn last line
    later = [r["epoch"] for r in logged if r.get("epoch", 0) > len(history)]
    if later:
        log.warning(
            "%s: dropped epochs %s, logged after the checkpoint the run resumes from",
            path,
            ", ".join(map(str, later)),
        )
    if path.exists() or history:
        workdir_lib.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def epoch_record(
    *,
    epoch,
    stats,
    num_train,
    test_accuracy,
    val_accuracy,
    learning_rates,
    lr_scale,
    dead,
) -> dict:
    """One line of ``metrics.jsonl``: every metric per seed (``stats`` is an ``EpochStats``).
    ``dead``: ``{metric: dead channels per seed}`` (:func:`deepnmf_jax.dead_channels.counts`)."""
    record = {
        "epoch": epoch,
        "train_loss": (stats.loss_sum / num_train).tolist(),
        "train_loss_sum": stats.loss_sum.tolist(),
        "train_accuracy": (stats.correct / num_train).tolist(),
        "test_accuracy": np.asarray(test_accuracy, np.float64).tolist(),
        "learning_rates": learning_rates,
        "lr_scale": np.asarray(lr_scale, np.float64).tolist(),
        "epoch_time_s": stats.seconds,
        "train_images_per_s": stats.images_per_s,
    }
    if val_accuracy is not None:
        record["val_accuracy"] = np.asarray(val_accuracy, np.float64).tolist()
    return {**record, **dead}


def log_epoch(record: dict, seeds: list[int]) -> None:
    test = np.asarray(record["test_accuracy"])
    validation = ""
    if "val_accuracy" in record:
        validation = f"val acc {100 * float(np.mean(record['val_accuracy'])):.2f} %, "
    log.info(
        "epoch %d: train loss %.4f, train acc %.2f %%, %stest acc %.2f +/- %.2f %% over %s, "
        "lr %s, %.1f s",
        record["epoch"],
        float(np.mean(record["train_loss"])),
        100 * float(np.mean(record["train_accuracy"])),
        validation,
        100 * float(np.mean(test)),
        100 * mean_std(test)["std"],
        plural(len(seeds), "seed"),
        ", ".join(f"{g} {lr:.3g}" for g, lr in record["learning_rates"].items()),
        record["epoch_time_s"],
    )


def finish(config, workdir: pathlib.Path, data, model, history: list[dict], progress) -> dict:
    """Writes ``results.json`` and the learning curves from the in-memory history.

    ``machine`` is the machine that wrote it (CPU model, devices, versions): training is bit-exact
    on one machine, but the same command has ended a few tenths of a point apart on two, so a number
    goes with its machine. A run resumed elsewhere trained its earlier epochs on another machine.
    """
    from deepnmf_jax import benchmarking, optim, param_counts, plots

    if not history:
        raise RuntimeError(f"{workdir} has no epochs to report")
    seeds = [config.seed + k for k in range(config.num_seeds)]
    schedule = optim.Schedule(config.optim, 1, config.num_epochs, config.batch_size)
    image_shape = (config.augment.crop_size, config.augment.crop_size, data.train.images.shape[-1])
    at_init = progress.dead_channels_at_init or {}
    metrics = [dead_channels.key(kind) for kind in dead_channels.rectified_kinds(model)]
    dead = {k: {"at_init": at_init.get(k), "final": history[-1].get(k)} for k in metrics}
    results = {
        "model": config.model.name,
        "config": json.loads(config.to_json_best_effort()),
        "version": _version(),
        "git_commit": git_commit(pathlib.Path(__file__).resolve().parent),
        "machine": benchmarking.machine_info(),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "train_size": len(data.train),
            "validation_size": 0 if data.validation is None else len(data.validation),
            "test_size": len(data.test),
        },
        "parameters": param_counts.param_breakdown(
            model, param_counts.abstract_params(model, image_shape)
        ),
        "epochs_completed": progress.epoch,
        "stopped_because": progress.stopped_because or "unknown",
        "train_time_s": float(sum(r["epoch_time_s"] for r in history)),
        **dead,
        **summarize(history, seeds, schedule.finished),
    }
    workdir_lib.atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    plots.plot_learning_curves(
        history, workdir / "learning_curves.png", title=f"{config.model.name} on {data.name}"
    )
    log.info("%s", format_summary(results))
    return results


def _version() -> str:
    import deepnmf_jax

    return deepnmf_jax.__version__


def plural(count: int, noun: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def git_commit(directory: pathlib.Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def summarize(history: list[dict], seeds: list[int], finished=None) -> dict:
    """Per-seed final and best test accuracy, and their mean and std over seeds.

    ``finished(scales) -> bools`` (:meth:`deepnmf_jax.optim.Schedule.finished`): a seed whose
    plateau scale was finished in an epoch was frozen in it; its trained epochs are reported as
    ``epochs_trained`` (every epoch, without ``finished``).
    """
    accuracy = np.array([r["test_accuracy"] for r in history], np.float64)  # (epochs, seeds)
    on_validation = all("val_accuracy" in r for r in history)
    chooser = (
        np.array([r["val_accuracy"] for r in history], np.float64) if on_validation else accuracy
    )
    scales = np.array([r["lr_scale"] for r in history], np.float64)  # scale in force each epoch
    frozen = finished(scales) if finished is not None else np.zeros(scales.shape, bool)
    trained = [int(np.sum(~frozen[:, k])) for k in range(len(seeds))]
    best_index = chooser.argmax(0)  # per seed: the best epoch by validation (else test) accuracy
    best = accuracy[best_index, np.arange(len(seeds))]
    per_seed = [
        {
            "seed": seed,
            "final_test_accuracy": float(accuracy[-1, k]),
            "best_test_accuracy": float(best[k]),
            **({"best_val_accuracy": float(chooser[best_index[k], k])} if on_validation else {}),
            "best_epoch": int(history[best_index[k]]["epoch"]),
            "final_train_loss": float(history[-1]["train_loss"][k]),
            "epochs_trained": trained[k],
        }
        for k, seed in enumerate(seeds)
    ]
    return {
        "per_seed": per_seed,
        "final_test_accuracy": mean_std(accuracy[-1]),
        "best_test_accuracy": mean_std(best),
        "best_selected_on": "validation" if on_validation else "test",
    }


def format_summary(results: dict) -> str:
    final, best = results["final_test_accuracy"], results["best_test_accuracy"]
    return (
        f"{results['model']} on {results['dataset']['name']}: final test accuracy "
        f"{100 * final['mean']:.2f} +/- {100 * final['std']:.2f} %, best "
        f"{100 * best['mean']:.2f} +/- {100 * best['std']:.2f} % (best epoch chosen on "
        f"{results.get('best_selected_on', 'test')} accuracy) over "
        f"{plural(len(results['per_seed']), 'seed')} after "
        f"{plural(results['epochs_completed'], 'epoch')} ({results['stopped_because']})"
    )
