"""The noise suite's results read together: runs pooled into one curve per variant (its seeds from
one or more runs, e.g. seed 21 in one sweep folder and seed 22 in another), the figure, and a
Markdown table at chosen levels.

A curve's label is the run's variant name in its sweep without its ``seed=`` part (``model=cnn,seed=21``
and ``model=cnn,seed=22`` are one curve), or ``model=<name>`` for a run outside a sweep.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from deepnmf_jax._format import mean_std, plural
from deepnmf_jax._plotting import pyplot
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import corruptions


def curve_label(folder: pathlib.Path, model_name: str, in_sweep: bool) -> str:
    """``model=cnmf,seed=21`` -> ``model=cnmf``; outside a sweep ``model=<its model>``, as a Fig. 5
    sweep names its variants (so a run trained or imported on its own pools with them)."""
    parts = [part for part in folder.name.split(",") if not part.startswith("seed=")]
    return ",".join(parts) if in_sweep and parts else f"model={model_name}"


_SAME = ("test_images", "seed", "num_classes")
_POOLED_PER_SEED = ("clean", "cifar10c_mean")


def pool(label: str, suites: Sequence[tuple[pathlib.Path, dict]]) -> dict:
    """One suite holding the seeds of every ``(folder, suite)`` pair, in order.

    Raises:
      ConfigError: the suites were run differently (corruptions, levels, images, noise seed), or a
        seed appears twice.
    """
    (first_folder, first), *rest = suites
    seen = {seed: first_folder for seed in first["seeds"]}
    for folder, suite in rest:
        for key in _SAME:
            if suite[key] != first[key]:
                raise ConfigError(
                    f"{label}: {folder} and {first_folder} differ in {key} ({suite[key]} vs "
                    f"{first[key]}); run the suite on both with the same options"
                )
        levels = {n: r["levels"] for n, r in suite["corruptions"].items()}
        if levels != {n: r["levels"] for n, r in first["corruptions"].items()}:
            raise ConfigError(
                f"{label}: {folder} and {first_folder} ran different corruptions or levels; "
                "run the suite on both with the same --corruptions and --levels"
            )
        for seed in suite["seeds"]:
            if seed in seen:
                raise ConfigError(f"{label}: seed {seed} is in both {seen[seed]} and {folder}")
            seen[seed] = folder
    pooled = {key: first[key] for key in _SAME}
    pooled["corruptions"] = {
        name: {
            "levels": result["levels"],
            "accuracy": [
                [a for _, s in suites for a in s["corruptions"][name]["accuracy"][i]]
                for i in range(len(result["levels"]))
            ],
        }
        for name, result in first["corruptions"].items()
    }
    for key in _POOLED_PER_SEED:
        if all(key in s for _, s in suites):
            pooled[key] = [a for _, s in suites for a in s[key]]
    pooled["seeds"] = [seed for _, s in suites for seed in s["seeds"]]
    pooled["seconds"] = sum(s["seconds"] for _, s in suites)
    pooled["runs"] = [str(folder) for folder, _ in suites]
    return pooled


def _cell(values) -> str:
    stats = mean_std(100 * np.asarray(values, np.float64))
    if len(values) == 1:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} +/- {stats['std']:.1f}"


def _at(result: dict, level: float | None = None, index: int | None = None):
    """The per-seed accuracies at ``level`` (or at position ``index``), None where not run."""
    levels = np.asarray(result["levels"], np.float64)
    if index is None and level is not None:
        matches = np.flatnonzero(np.abs(levels - level) < 1e-9)
        index = int(matches[0]) if matches.size else None
    if index is None or index >= len(levels):
        return None
    return result["accuracy"][index]


def markdown(curves: dict[str, dict], etas: Sequence[float] = (0.25, 0.5)) -> str:
    """A table in %, mean +/- std over seeds: clean accuracy, each reference corruption at ``etas``,
    each CIFAR-10-C corruption as its mean over the severities run, the CIFAR-10-C mean over every
    corruption and severity (RobustBench's convention), and the suite's minutes."""
    names = list(next(iter(curves.values()))["corruptions"])
    cifar10c = [n for n in names if n in corruptions.CIFAR10C]
    header = ["variant", "seeds", "clean"]
    for name in names:
        if name in corruptions.CIFAR10C:
            header.append(f"{name} (severities)")
        else:
            header.append(f"{name} eta {' / '.join(f'{eta:g}' for eta in etas)}")
    if cifar10c:
        header.append(f"CIFAR-10-C mean ({len(cifar10c)} corruptions)")
    header.append("suite minutes")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, suite in curves.items():
        cells = [label, ", ".join(map(str, suite["seeds"])), _cell(suite["clean"])]
        for name in names:
            result = suite["corruptions"][name]
            if name in corruptions.CIFAR10C:
                severe = [
                    a
                    for level, a in zip(result["levels"], result["accuracy"], strict=True)
                    if level
                ]
                cells.append(_cell(np.mean(severe, axis=0)) if severe else "-")
            else:
                values = [_at(result, level=eta) for eta in etas]
                cells.append(" / ".join("-" if v is None else _cell(v) for v in values))
        if cifar10c:
            cells.append(_cell(suite["cifar10c_mean"]) if "cifar10c_mean" in suite else "-")
        cells.append(f"{suite['seconds'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    images = {suite["test_images"] for suite in curves.values()}
    lines.append("")
    lines.append(
        f"Test accuracy in % (mean +/- std over seeds) on the first {max(images):,} test images; "
        "'-' where that level was not run."
    )
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict], path, title: str) -> None:
    """One panel per corruption, one line per model (name -> suite result) with its seed band."""
    plt = pyplot()
    names = list(next(iter(curves.values()))["corruptions"])
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.3 * rows), squeeze=False, constrained_layout=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for index, (label, suite) in enumerate(curves.items()):
            result = suite["corruptions"].get(name)
            if result is None:
                continue
            x = np.asarray(result["levels"])
            accuracy = 100 * np.asarray(result["accuracy"])  # (levels, seeds)
            color = f"C{index % 10}"
            ax.plot(x, accuracy.mean(1), marker="o", ms=3, color=color, label=label)
            ax.fill_between(x, accuracy.min(1), accuracy.max(1), color=color, alpha=0.2, lw=0)
        classes = {int(n) for suite in curves.values() if (n := suite.get("num_classes"))}
        if classes:
            ax.axhline(100 / max(classes), color="0.5", ls=":", lw=1, label="chance")
        standard = name in corruptions.CIFAR10C
        ax.set_xlabel(_axis_label(name))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name + (" (CIFAR-10-C)" if standard else " (reference)"))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    seeds = {len(s["corruptions"][names[0]]["accuracy"][0]) for s in curves.values()}
    images = {s["test_images"] for s in curves.values()}
    counts = plural(min(seeds), "seed") if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)} seeds"
    fig.suptitle(
        f"{title}: accuracy under corruption ({counts} per model, "
        f"band min-max; {max(images):,} test images)"
    )
    fig.savefig(path, dpi=110)
    if str(path).endswith(".png"):
        fig.savefig(str(path)[:-4] + ".svg")
    plt.close(fig)


def _axis_label(name: str) -> str:
    return {
        "uniform": "eta (share of uniform noise)",
        "picture": "eta (share of another image)",
        "holes": "eta (share of pixels zeroed)",
        "holes_w_noise": "eta (share of pixels replaced)",
    }.get(name, "severity (0: clean)")
