"""The paper's figures from a sweep's rows (:mod:`deepnmf_jax.sweep.report`), as PNG and SVG.

* Fig. 5: test accuracy per model as bars with the seeds' standard deviation, parameter counts
  under the names, the paper's values beside ours.
* Fig. 6a: accuracy against total parameters (log axis), colour = CNN/NMF parameter ratio, the
  Pareto front as a line and its members with a red edge; Fig. 6b: accuracy against the ratio (log
  axis), colour = total parameters, a dashed line at the best variant's ratio.
* Learning curves of every variant in one figure: test accuracy against epoch, seed mean and band.

A partial sweep draws what it has; unfinished runs are drawn hollow, with "(partial)" in the legend.
"""

from __future__ import annotations

import pathlib

import numpy as np

from deepnmf_jax._format import plural
from deepnmf_jax._plotting import pyplot
from deepnmf_jax.experiments.report import Row, pareto_front


def _save(fig, folder: pathlib.Path, stem: str) -> list[pathlib.Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return paths


def _measured(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.final is not None]


def _final(row: Row) -> dict:
    assert row.final is not None  # a measured row (_measured)
    return row.final


def fig5(rows: list[Row], folder: pathlib.Path, title: str, paper: dict | None = None):
    """Bars: final test accuracy per variant, mean +/- std over seeds, the paper's beside."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 1.5), 4.2), constrained_layout=True)
    x = np.arange(len(rows))
    width = 0.38 if paper else 0.6
    means = [100 * r.final["mean"] if r.final else np.nan for r in rows]
    stds = [100 * r.final["std"] if r.final else 0.0 for r in rows]
    bars = ax.bar(
        x - (width / 2 if paper else 0),
        means,
        width,
        yerr=stds,
        capsize=4,
        color="C0",
        label="ours (final epoch, mean +/- std over seeds)",
    )
    for bar, row in zip(bars, rows, strict=True):
        if row.partial:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    for xi, mean, std in zip(x, means, stds, strict=True):
        label = "not run" if np.isnan(mean) else f"{mean:.1f}"
        y = 0 if np.isnan(mean) else mean + std  # above the error bar
        ax.annotate(
            label,
            (xi - (width / 2 if paper else 0), y),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    values: list[float] = []
    if paper:
        values = [100 * paper[r.name] if r.name in paper else np.nan for r in rows]
        ax.bar(x + width / 2, values, width, color="C7", label="paper (5 seeds, up to ~370 epochs)")
        for xi, value in zip(x, values, strict=True):
            if not np.isnan(value):
                ax.annotate(
                    f"{value:.1f}",
                    (xi + width / 2, value),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
    labels = []
    for row in rows:
        count = f"{row.parameters['total'] / 1000:.1f}k params" if row.parameters else ""
        note = f"{plural(row.epochs, 'epoch')}, {plural(row.seeds, 'seed')}" if row.epochs else "-"
        labels.append(f"{row.name}\n{count}\n{note}")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    top = np.nanmax([*means, *values, 10.0])
    ax.set_ylim(0, min(100, top * 1.15 + 2))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: test accuracy per variant")
    return _save(fig, folder, "fig5")


def fig6(rows: list[Row], folder: pathlib.Path, title: str):
    """Fig. 6a (accuracy vs parameters, Pareto front) and 6b (accuracy vs CNN/NMF ratio)."""
    plt = pyplot()
    import matplotlib.cm
    import matplotlib.colors

    measured = [r for r in _measured(rows) if r.parameters and r.parameters.get("cnn_nmf_ratio")]
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    if not measured:
        for ax in (ax_a, ax_b):
            ax.text(0.5, 0.5, "no finished variant yet", ha="center", transform=ax.transAxes)
        fig.suptitle(title)
        return _save(fig, folder, "fig6")
    counts = [r.parameters or {} for r in measured]
    params = np.array([c["total"] for c in counts], np.float64)
    ratio = np.array([c["cnn_nmf_ratio"] for c in counts], np.float64)
    accuracy = np.array([100 * _final(r)["mean"] for r in measured])
    errors = np.array([100 * _final(r)["std"] for r in measured])
    partial = np.array([r.partial for r in measured])
    front = pareto_front(params, accuracy)

    def scatter(ax, x, color, norm, label):
        widths = np.where(front, 1.8, 0.0)  # a red edge on the Pareto front, none elsewhere
        for hollow in (False, True):
            keep = partial == hollow
            ax.errorbar(
                x[keep],
                accuracy[keep],
                yerr=errors[keep],
                fmt="none",
                ecolor="0.6",
                lw=0.8,
                zorder=1,
            )
            ax.scatter(
                x[keep],
                accuracy[keep],
                c=color[keep],
                cmap="viridis",
                norm=norm,
                edgecolors="red",
                linewidths=widths[keep],
                s=45,
                zorder=2,
                alpha=0.45 if hollow else 1.0,
            )
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(mappable, ax=ax).set_label(label)
        ax.set_xscale("log")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")

    scatter(
        ax_a,
        params,
        ratio,
        matplotlib.colors.LogNorm(ratio.min(), max(ratio.max(), ratio.min() * 1.01)),
        "CNN / NMF parameter ratio",
    )
    order = np.argsort(params[front])
    ax_a.plot(
        params[front][order], accuracy[front][order], "r-", lw=1, label="Pareto front", zorder=0
    )
    ax_a.set_xlabel("parameters (total, log scale)")
    ax_a.legend(loc="lower right", fontsize=8)
    ax_a.set_title("a: accuracy vs parameters")
    scatter(
        ax_b,
        ratio,
        params,
        matplotlib.colors.LogNorm(params.min(), max(params.max(), params.min() * 1.01)),
        "parameters (total)",
    )
    best = int(np.argmax(accuracy))
    ax_b.axvline(
        ratio[best],
        color="k",
        ls="--",
        lw=1,
        label=f"best variant ({measured[best].name}): ratio {ratio[best]:.3g}",
    )
    ax_b.set_xlabel("CNN / NMF parameter ratio (log scale)")
    ax_b.legend(loc="lower right", fontsize=7)
    ax_b.set_title("b: accuracy vs CNN/NMF ratio")
    hollow = " (faded: unfinished runs)" if partial.any() else ""
    fig.suptitle(f"{title}: {plural(len(measured), 'variant')}; red edge: Pareto front{hollow}")
    return _save(fig, folder, "fig6")


def learning_curves(rows: list[Row], folder: pathlib.Path, title: str):
    """Test accuracy against epoch for every variant: seed mean, min-max band."""
    plt = pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    drawn = [r for r in rows if r.history]
    for index, row in enumerate(drawn):
        epochs = np.array([h["epoch"] for h in row.history])
        accuracy = 100 * np.array([h["test_accuracy"] for h in row.history], np.float64)
        color = f"C{index % 10}"
        label = row.name + (" (partial)" if row.partial else "")
        ax.plot(epochs, accuracy.mean(1), marker="o", ms=3, color=color, label=label)
        ax.fill_between(epochs, accuracy.min(1), accuracy.max(1), color=color, alpha=0.2, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(drawn) <= 16:
        ax.legend(fontsize=7, loc="lower right")
    if not drawn:
        ax.text(0.5, 0.5, "no epoch finished yet", ha="center", transform=ax.transAxes)
    ax.set_title(f"{title}: test accuracy, seed mean and min-max band")
    return _save(fig, folder, "learning_curves")
