"""What a run writes for people: per-epoch metrics (JSONL, TensorBoard), learning curves, results.json.

Every metric has one value per seed; summaries give mean and sample standard deviation (ddof=1, 0 for
a single seed) over the seeds.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np


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
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_history(workdir: pathlib.Path, epochs: int) -> None:
    """Drops records after ``epochs`` (after a resume from an older checkpoint)."""
    history = [r for r in read_history(workdir) if r["epoch"] <= epochs]
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in history))


def _band(ax, epochs, history, key, color, label):
    values = np.array([r[key] for r in history], np.float64)  # (epochs, seeds)
    ax.plot(epochs, values.mean(1), color=color, label=f"{label} (mean)")
    ax.fill_between(epochs, values.min(1), values.max(1), color=color, alpha=0.25, lw=0)


def plot_learning_curves(history: list[dict], path: pathlib.Path, title: str = "") -> None:
    """Training loss, and train and test accuracy, against epoch: the seed mean with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = np.array([r["epoch"] for r in history])
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    _band(loss_ax, epochs, history, "train_loss", "C0", "training loss per image")
    loss_ax.set_yscale("log")
    _band(acc_ax, epochs, history, "train_accuracy", "C1", "train accuracy")
    _band(acc_ax, epochs, history, "test_accuracy", "C0", "test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    seeds = len(history[0]["test_accuracy"]) if history else 0
    fig.suptitle(f"{title} ({seeds} seeds; band: min to max over seeds)")
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


def summarize(history: list[dict], seeds: list[int], stop_scale: float = 0.0) -> dict:
    """Per-seed final and best test accuracy, and their mean and std over seeds.

    ``stop_scale``: a seed whose plateau scale fell below it had finished (its parameters stay
    frozen from then on); its last trained epoch is reported as ``epochs_trained``.
    """
    accuracy = np.array([r["test_accuracy"] for r in history], np.float64)  # (epochs, seeds)
    scales = np.array([r["lr_scale"] for r in history], np.float64)  # scale in force each epoch
    trained = [int(np.sum(scales[:, k] >= stop_scale)) for k in range(len(seeds))]
    best_index = accuracy.argmax(0)
    per_seed = [
        {
            "seed": seed,
            "final_test_accuracy": float(accuracy[-1, k]),
            "best_test_accuracy": float(accuracy[best_index[k], k]),
            "best_epoch": int(history[best_index[k]]["epoch"]),
            "final_train_loss": float(history[-1]["train_loss"][k]),
            "epochs_trained": trained[k],
        }
        for k, seed in enumerate(seeds)
    ]
    return {
        "per_seed": per_seed,
        "final_test_accuracy": mean_std(accuracy[-1]),
        "best_test_accuracy": mean_std(accuracy.max(0)),
    }


def format_summary(results: dict) -> str:
    final, best = results["final_test_accuracy"], results["best_test_accuracy"]
    return (
        f"{results['model']} on {results['dataset']['name']}: final test accuracy "
        f"{100 * final['mean']:.2f} +/- {100 * final['std']:.2f} %, best "
        f"{100 * best['mean']:.2f} +/- {100 * best['std']:.2f} % over {len(results['per_seed'])} "
        f"seeds after {results['epochs_completed']} epochs ({results['stopped_because']})"
    )
