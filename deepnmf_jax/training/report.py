"""What a run writes for people: per-epoch metrics (JSONL, TensorBoard), learning curves, results.json.

Every metric has one value per seed; summaries give mean and sample standard deviation (ddof=1, 0 for
a single seed) over the seeds.
"""

from __future__ import annotations

import json
import logging
import pathlib
import subprocess
from typing import Any

import numpy as np

from deepnmf_jax import machine
from deepnmf_jax._format import mean_std, plural
from deepnmf_jax._plotting import pyplot
from deepnmf_jax._version import __version__
from deepnmf_jax.models.dead_channels import key as dead_key
from deepnmf_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends one JSON line per epoch to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: pathlib.Path, enabled: bool = True, tensorboard: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            folder = pathlib.Path(workdir) / "tensorboard"
            try:
                self._tb = SummaryWriter(str(folder))
            except OSError as error:
                raise workdir_lib.write_error(folder, error) from None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        workdir_lib.append_text(self.path, json.dumps(record) + "\n")
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
    ``dead``: ``{metric: dead channels per seed}`` (:func:`deepnmf_jax.models.dead_channels.counts`)."""
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


def finish(
    config,
    workdir: pathlib.Path,
    data,
    history: list[dict],
    progress,
    *,
    parameters: dict[str, Any],
    dead_kinds: tuple[str, ...],
    finished,
    best_checkpoint: str | None,
    title: str,
) -> dict:
    """Writes ``results.json`` and the learning curves from the in-memory history.

    Args:
      parameters: the model's parameter counts (:func:`deepnmf_jax.models.param_counts.param_breakdown`).
      dead_kinds: the kinds of dead channels the model reports.
      finished: the schedule's stop rule (:meth:`deepnmf_jax.training.optim.Schedule.finished`).
      best_checkpoint: ``"best/STEP"``, the checkpoint ``best/`` holds now.
      title: names the run in the figure (``"cnmf_1x1, cifar10:sample"``).

    ``machine`` is the machine that wrote it (CPU model, devices, versions): training is bit-exact
    on one machine, but the same command has ended a few tenths of a point apart on two, so a number
    goes with its machine. A run resumed elsewhere trained its earlier epochs on another machine.
    """
    if not history:
        raise RuntimeError(f"{workdir} has no epochs to report")
    at_init = progress.dead_channels_at_init or {}
    metrics = [dead_key(kind) for kind in dead_kinds]
    dead = {k: {"at_init": at_init.get(k), "final": history[-1].get(k)} for k in metrics}
    results = {
        "model": config.model.name,
        "config": config.to_dict(),
        "version": __version__,
        "git_commit": git_commit(pathlib.Path(__file__).resolve().parent),
        "machine": machine.machine_info(),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "train_size": len(data.train),
            "validation_size": 0 if data.validation is None else len(data.validation),
            "test_size": len(data.test),
        },
        "parameters": parameters,
        "epochs_completed": progress.epoch,
        "stopped_because": progress.stopped_because or "unknown",
        "train_time_s": float(sum(r["epoch_time_s"] for r in history)),
        "compile_time_s": float(progress.compile_seconds),
        "best_checkpoint": best_checkpoint,
        **dead,
        **summarize(history, config.seeds, finished),
    }
    workdir_lib.atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    plot_learning_curves(history, workdir / "learning_curves.png", title=title)
    log.info("%s", format_summary(results))
    return results


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


def _band(ax, epochs, history, key, color, label, scale=1.0):
    values = scale * np.array([r[key] for r in history], np.float64)  # (epochs, seeds)
    ax.plot(epochs, values.mean(1), color=color, marker="o", ms=3, label=f"{label} (mean)")
    ax.fill_between(epochs, values.min(1), values.max(1), color=color, alpha=0.25, lw=0)
    return values


def plot_learning_curves(history: list[dict], path: pathlib.Path, title: str = "") -> None:
    """Training loss, and train, validation and test accuracy (%), against epoch: the seed mean
    with a min-max band. Points are marked, so a single epoch shows too; the loss axis is
    logarithmic only when the loss spans more than a decade."""
    plt = pyplot()
    import matplotlib.ticker

    epochs = np.array([r["epoch"] for r in history])
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    loss = _band(loss_ax, epochs, history, "train_loss", "C0", "training loss per image")
    if loss.min() > 0 and loss.max() / loss.min() > 10:
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss per image")
    _band(acc_ax, epochs, history, "train_accuracy", "C1", "train accuracy", 100)
    if all("val_accuracy" in r for r in history):
        _band(acc_ax, epochs, history, "val_accuracy", "C2", "validation accuracy", 100)
    _band(acc_ax, epochs, history, "test_accuracy", "C0", "test accuracy", 100)
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    seeds = len(history[0]["test_accuracy"]) if history else 0
    band = "; band: min to max over seeds" if seeds > 1 else ""
    fig.suptitle(f"{title} ({plural(seeds, 'seed')}, {plural(len(history), 'epoch')}{band})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
