"""A sweep's tables: one row per variant from its ``results.json`` (or, for a run still going or
stopped, its ``metrics.jsonl`` so far, marked partial), as ``summary.csv`` and ``summary.md``."""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib

import numpy as np

from deepnmf_jax._format import mean_std
from deepnmf_jax.experiments import records
from deepnmf_jax.experiments.status import VariantStatus


@dataclasses.dataclass(frozen=True)
class Row:
    """One variant in the report. Accuracies are fractions; None where nothing was measured."""

    name: str
    model: str
    state: str
    partial: bool  # the numbers are from an unfinished run
    epochs: int
    seeds: int
    parameters: dict | None  # total, nmf, conv, batchnorm, cnn_nmf_ratio
    final: dict | None  # {"mean", "std"} over seeds
    best: dict | None
    val_final: dict | None  # validation accuracy (runs with a validation split), last epoch
    val_best: dict | None  # best validation accuracy over the epochs
    train_hours: float | None
    history: list[dict]  # the per-epoch records (for the learning curves)
    note: str = ""


def pareto_front(parameters, accuracy) -> np.ndarray:
    """Which points are Pareto-optimal for fewer parameters and higher accuracy.

    A point is on the front unless another has no more parameters and no lower accuracy, and is
    strictly better in one of them. Identical points are both on the front; of two with equal
    parameters the less accurate one is not.

    Args:
      parameters, accuracy: (n,) arrays.

    Returns:
      (n,) bool.
    """
    p, a = np.asarray(parameters, np.float64), np.asarray(accuracy, np.float64)
    if p.shape != a.shape or p.ndim != 1:
        raise ValueError(
            f"parameters and accuracy must be 1-d of one length, got {p.shape}, {a.shape}"
        )
    no_worse = (p[None, :] <= p[:, None]) & (a[None, :] >= a[:, None])  # [i, j]: j no worse than i
    better = (p[None, :] < p[:, None]) | (a[None, :] > a[:, None])
    return ~np.any(no_worse & better, axis=1)


def collect(sweep_dir: pathlib.Path, plan: list[dict], statuses: list[VariantStatus]) -> list[Row]:
    """A row per planned variant (``sweep.json``'s entries), in plan order."""
    rows = []
    for entry, status in zip(plan, statuses, strict=True):
        folder = sweep_dir / entry["name"]
        results = records.read_results(folder)
        history = records.read_history(folder)
        finished = status.state == "done" and results is not None
        final = best = None
        seeds = len(history[-1]["test_accuracy"]) if history else 0
        if finished and results is not None:
            final, best = results["final_test_accuracy"], results["best_test_accuracy"]
        elif history:
            accuracy = np.array([r["test_accuracy"] for r in history], np.float64)
            final = mean_std(accuracy[-1])
            best = mean_std(accuracy.max(axis=0))
        hours = sum(r.get("epoch_time_s", 0.0) for r in history) / 3600 if history else None
        val_final = val_best = None
        if history and all("val_accuracy" in r for r in history):
            val = np.array([r["val_accuracy"] for r in history], np.float64)
            val_final = mean_std(val[-1])
            val_best = mean_std(val.max(axis=0))
        rows.append(
            Row(
                name=entry["name"],
                model=entry["config"]["model"]["name"],
                state=status.state,
                partial=bool(history) and not finished,
                epochs=len(history),
                seeds=seeds,
                parameters=entry.get("parameters"),
                final=final,
                best=best,
                val_final=val_final,
                val_best=val_best,
                train_hours=hours,
                history=history,
                note=status.error or "",
            )
        )
    return rows


COLUMNS = (
    "variant",
    "state",
    "epochs",
    "seeds",
    "params_total",
    "params_nmf",
    "params_conv",
    "params_batchnorm",
    "cnn_nmf_ratio",
    "final_acc_mean",
    "final_acc_std",
    "best_acc_mean",
    "best_acc_std",
    "val_final_mean",
    "val_best_mean",
    "train_hours",
    "note",
)


def _cells(row: Row) -> dict:
    params = row.parameters or {}

    def pct(stat, key):
        return None if stat is None else round(100 * stat[key], 3)

    ratio = params.get("cnn_nmf_ratio")
    state = f"{row.state} (partial)" if row.partial and row.state != "running" else row.state
    return {
        "variant": row.name,
        "state": state,
        "epochs": row.epochs,
        "seeds": row.seeds,
        "params_total": params.get("total"),
        "params_nmf": params.get("nmf"),
        "params_conv": params.get("conv"),
        "params_batchnorm": params.get("batchnorm"),
        "cnn_nmf_ratio": None if ratio is None else round(ratio, 4),
        "final_acc_mean": pct(row.final, "mean"),
        "final_acc_std": pct(row.final, "std"),
        "best_acc_mean": pct(row.best, "mean"),
        "best_acc_std": pct(row.best, "std"),
        "val_final_mean": pct(row.val_final, "mean"),
        "val_best_mean": pct(row.val_best, "mean"),
        "train_hours": None if row.train_hours is None else round(row.train_hours, 3),
        "note": row.note,
    }


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in _cells(row).items()})
    return out.getvalue()


def to_markdown(rows: list[Row], title: str, paper: dict | None = None) -> str:
    """The table a person reads: accuracies in % as mean +/- std over seeds, X where missing."""

    def acc(stat):
        return "X" if stat is None else f"{100 * stat['mean']:.2f} +/- {100 * stat['std']:.2f}"

    header = ["variant", "state", "epochs", "seeds", "parameters (NMF / conv / BN)", "CNN/NMF"]
    header += ["final test acc (%)", "best test acc (%)"]
    with_val = any(r.val_final is not None for r in rows)
    if with_val:
        header += ["final val acc (%)", "best val acc (%)"]
    header.append("hours")
    if paper:
        header.append("paper (%)")
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        params = row.parameters
        counts = (
            "X"
            if not params
            else (
                f"{params['total']:,} ({params['nmf']:,} / {params['conv']:,} / {params['batchnorm']:,})"
            )
        )
        ratio = (
            "-"
            if not params or params.get("cnn_nmf_ratio") is None
            else f"{params['cnn_nmf_ratio']:.3f}"
        )
        state = f"{row.state} (partial)" if row.partial and row.state != "running" else row.state
        cells = [row.name, state, str(row.epochs), str(row.seeds), counts, ratio]
        cells += [acc(row.final), acc(row.best)]
        if with_val:
            cells += [acc(row.val_final), acc(row.val_best)]
        cells.append("-" if row.train_hours is None else f"{row.train_hours:.2f}")
        if paper:
            value = paper.get(row.name)
            cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(r.state == "done" for r in rows)
    lines += [
        "",
        f"{done} of {len(rows)} variants done; X: not measured yet. Accuracy: mean +/- "
        "standard deviation over seeds; final = last epoch, best = best epoch (chosen on "
        "validation accuracy where the runs have a validation split, else on test).",
    ]
    return "\n".join(lines) + "\n"
