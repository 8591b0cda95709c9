"""What a run writes for people: per-epoch metrics (JSONL, TensorBoard), learning curves, results.json.

Every metric has one value per seed; summaries give mean and sample standard deviation (ddof=1, 0 for
a single seed) over the seeds.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np

from deepnmf_jax import workdir as workdir_lib


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


def truncate_history(workdir: pathlib.Path, epochs: int) -> None:
    """Drops records after ``epochs`` (after a resume from an older checkpoint)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if path.exists():
        history = [r for r in read_history(workdir) if r["epoch"] <= epochs]
        workdir_lib.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def _band(ax, epochs, history, key, color, label, scale=1.0):
    values = scale * np.array([r[key] for r in history], np.float64)  # (epochs, seeds)
    ax.plot(epochs, values.mean(1), color=color, marker="o", ms=3, label=f"{label} (mean)")
    ax.fill_between(epochs, values.min(1), values.max(1), color=color, alpha=0.25, lw=0)
    return values


def plural(count: int, noun: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def plot_learning_curves(history: list[dict], path: pathlib.Path, title: str = "") -> None:
    """Training loss, and train, validation and test accuracy (%), against epoch: the seed mean
    with a min-max band. Points are marked, so a single epoch shows too; the loss axis is
    logarithmic only when the loss spans more than a decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
