"""Figures of one run: learning curves (training loss and accuracies against epoch, seed bands)."""

from __future__ import annotations

import pathlib

import numpy as np

from deepnmf_jax.reporting import plural


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
