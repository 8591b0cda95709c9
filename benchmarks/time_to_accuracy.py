"""Time to accuracy of training recipes: test accuracy at given epochs, with the wall-clock minutes
to get there, for every variant of one or more sweep folders (e.g. ``configs/sweeps/recipes.py``).

    python benchmarks/time_to_accuracy.py runs/recipes --epochs 5 10 20 40 \\
        --out benchmarks/results/time_to_accuracy.json

Writes the JSON (per variant: the run's length in epochs, accuracy mean/std over seeds and the
per-seed values at each epoch, the cumulative training minutes of all seeds (evaluation not
counted), the CPU of each run, the dead channels at init and at the end), prints a markdown table,
and draws the test-accuracy curves of all variants (``--figure``, PNG and SVG). Seeds of one variant
trained as separate runs (same folder name, same config but for ``seed``, e.g. a second seed added
later with ``--set seed=22 --set num_seeds=1 --workdir OTHER``) are pooled into one row, their
minutes added. Folders of runs of different lengths go in one table: epoch 5 of a 10-epoch cosine
schedule is not the end of a 5-epoch one, so each row names its budget. Minutes are the machine's:
compare only numbers from one run on one machine. Rows of one variant name and budget that are
different recipes (the variant retrained with a ``--set``, in another folder) are labelled with
their folders' parents, e.g. ``cnmf_1x1,fast (recipes20_cnmf_iter10)``.

``--keep OLD.json`` adds to the table the rows of an earlier ``--out`` whose runs are not among the
folders given now (run folders that are gone, or on another machine), their numbers as they were
measured; a row whose run is given again is measured again. The committed results grow this way:

    python benchmarks/time_to_accuracy.py runs/recipes40 --epochs 1 5 10 20 40 \
        --keep benchmarks/results/time_to_accuracy.json --out benchmarks/results/time_to_accuracy.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import pathlib
import sys

import numpy as np

from deepnmf_jax import _format as reporting
from deepnmf_jax._plotting import pyplot
from deepnmf_jax.training import workdir as workdir_lib


def variant_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    plan = folder / "sweep.json"
    if plan.is_file():
        names = [v["name"] for v in json.loads(plan.read_text())["variants"]]
        return [folder / n for n in names if (folder / n / "metrics.jsonl").is_file()]
    return [folder] if (folder / "metrics.jsonl").is_file() else []


# Settings that say how or where the seeds ran, not what was trained: runs that differ only in
# these are one variant's seeds.
NOT_THE_RECIPE = ("seed", "num_seeds", "seed_loop", "mesh", "progress", "tensorboard")


def sweep_name(folder: pathlib.Path) -> str:
    """A sweep folder's name; a single run's, or its sweep's where it is one of a sweep's runs."""
    folder = folder.resolve()  # "." or a bare run name has no name or parent of its own
    in_sweep = not (folder / "sweep.json").is_file() and (folder.parent / "sweep.json").is_file()
    return folder.parent.name if in_sweep else folder.name


def load_run(folder: pathlib.Path) -> dict:
    # a run saved before a config key was added lacks it: read as the value it ran with, so that
    # an older seed pools with a newer one of the same recipe
    config = workdir_lib.read_config(folder).to_dict()
    results_path = folder / "results.json"
    history = workdir_lib.read_jsonl(folder / "metrics.jsonl")
    return {
        "folder": folder,
        "config": config,
        # the run's length: a cosine schedule decays over it, so epoch 5 of a 10-epoch run is not a
        # 5-epoch run. config.json keeps the num_epochs a run started with: a plateau-schedule run
        # continued with a larger one (a resume may change it there) is as long as it went on.
        "budget": max(config["num_epochs"], len(history)),
        "seeds": [config["seed"] + k for k in range(config["num_seeds"])],
        "history": history,
        "results": json.loads(results_path.read_text()) if results_path.is_file() else {},
    }


def group_seeds(runs: list[dict]) -> list[list[dict]]:
    """Runs of one variant (same name, same config but for the seeds) trained apart, e.g. a second
    seed as its own job (``--set seed=22 --set num_seeds=1``) in another folder, as one group;
    each other run alone. Raises ValueError if two runs of a group share a seed."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        # num_epochs: the budget stands for it (a continued run's config.json has the old one)
        ignored = {*NOT_THE_RECIPE, "num_epochs"}
        recipe = {k: v for k, v in run["config"].items() if k not in ignored}
        key = f"{run['folder'].name} {run['budget']} {json.dumps(recipe, sort_keys=True)}"
        group = groups.setdefault(key, [])
        for other in group:
            shared = sorted(set(other["seeds"]) & set(run["seeds"]))
            if shared:
                raise ValueError(
                    f"{other['folder']} and {run['folder']} both trained seed {shared[0]} of "
                    f"variant {run['folder'].name}; pass only one of them"
                )
        group.append(run)
    return list(groups.values())


def concat(lists) -> list:
    return list(itertools.chain.from_iterable(lists))


def pooled_dead_channels(runs: list[dict], key: str) -> dict | None:
    """The runs' per-seed counts of results.json's ``key`` (``{"at_init": [...], "final": [...]}``)
    end to end; None where a run has none (older runs, or a model without such channels)."""
    counts = [run["results"].get(key) for run in runs]
    if len(counts) == 1 or any(c is None for c in counts):
        return counts[0] if len(counts) == 1 else None
    return {
        when: None if any(c.get(when) is None for c in counts) else concat(c[when] for c in counts)
        for when in ("at_init", "final")
    }


def summarize(runs: list[dict], epochs: list[int]) -> dict:
    """One variant, its seeds from one or more runs (``group_seeds``): accuracy at each of
    ``epochs`` that every run reached, and the training minutes of all its seeds to get there."""
    length = min(len(run["history"]) for run in runs)
    records = [[run["history"][e] for run in runs] for e in range(length)]  # [epoch][run]
    per_seed = [concat(r["test_accuracy"] for r in rs) for rs in records]  # [epoch][seed]
    minutes = np.cumsum([sum(r["epoch_time_s"] for r in rs) for rs in records]) / 60
    points = {}
    for epoch in epochs:
        if 1 <= epoch <= length and all(r["epoch"] == epoch for r in records[epoch - 1]):
            point = {
                "test_accuracy": reporting.mean_std(per_seed[epoch - 1]),
                "per_seed": per_seed[epoch - 1],
                "train_minutes": float(minutes[epoch - 1]),
            }
            if all("val_accuracy" in r for r in records[epoch - 1]):
                val = concat(r["val_accuracy"] for r in records[epoch - 1])
                point["val_accuracy"] = reporting.mean_std(val)
            points[str(epoch)] = point
    config = runs[0]["config"]
    return {
        "variant": runs[0]["folder"].name,
        "runs": [str(run["folder"]) for run in runs],
        # the folders the runs lie in (a sweep's), to tell rows of one variant name apart
        "parents": [run["folder"].resolve().parent.name for run in runs],
        "model": config["model"]["name"],
        "schedule": config["optim"]["schedule"],
        "budget_epochs": runs[0]["budget"],
        "epochs_done": length,
        "seeds": sum(len(run["seeds"]) for run in runs),
        "seed_values": concat(run["seeds"] for run in runs),
        # minutes are this CPU's (results.json's; None where a run has not finished)
        "machines": [run["results"].get("machine", {}).get("cpu") for run in runs],
        "at_epoch": points,
        "dead_class_channels": pooled_dead_channels(runs, "dead_class_channels"),
        "dead_hidden_channels": pooled_dead_channels(runs, "dead_hidden_channels"),
        "curve": [float(np.mean(s)) for s in per_seed],
        "curve_min": [float(np.min(s)) for s in per_seed],
        "curve_max": [float(np.max(s)) for s in per_seed],
    }


def kept_rows(path: pathlib.Path, runs: list[dict]) -> tuple[list[dict], list[str], list[int]]:
    """The rows of an earlier output at ``path`` none of whose runs is among ``runs`` (a row whose
    run is read again is replaced by the new measurement), that output's sweep names and the
    epochs it was measured at."""
    if not path.is_file():
        raise ValueError(f"--keep {path}: no such file")
    try:
        earlier = json.loads(path.read_text())
        rows, measured = earlier["variants"], earlier["epochs"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"--keep {path}: not a time_to_accuracy output ({error})") from None
    again = {run["folder"].resolve() for run in runs}
    kept = [row for row in rows if again.isdisjoint(pathlib.Path(r).resolve() for r in row["runs"])]
    # outputs written before "sweeps" was recorded: a run's sweep is its parent folder
    names = earlier.get("sweeps") or [
        pathlib.Path(r).parent.name for row in rows for r in row["runs"]
    ]
    return kept, names, measured


def labelled(rows: list[dict]) -> list[dict]:
    """The rows, each with a ``label``: its variant's name, and where another row has the same name
    and budget, the folders its runs lie in (rows kept from an older output: their runs' parents)."""
    clashes = collections.Counter((row["variant"], row["budget_epochs"]) for row in rows)
    out = []
    for row in rows:
        label = row["variant"]
        if clashes[row["variant"], row["budget_epochs"]] > 1:
            parents = row.get("parents") or [pathlib.Path(r).parent.name for r in row["runs"]]
            label += f" ({' + '.join(dict.fromkeys(parents))})"
        out.append({**row, "label": label})
    return out


def table(rows: list[dict], epochs: list[int]) -> str:
    head = ["variant", "budget (epochs)", "seeds"] + [
        f"epoch {e}: test acc % (minutes)" for e in epochs
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], str(row["budget_epochs"]), str(row["seeds"])]
        for epoch in epochs:
            point = row["at_epoch"].get(str(epoch))
            if point is None:
                cells.append("-")
                continue
            acc = point["test_accuracy"]
            cells.append(
                f"{100 * acc['mean']:.2f} +/- {100 * acc['std']:.2f} ({point['train_minutes']:.0f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LINE_STYLES = ("-", "--", ":", "-.")
PAPER_ACCURACY = {"cnn": 81.0, "cnmf": 81.5, "cnn_1x1": 82.8, "cnmf_1x1": 83.7}
"""The paper's CIFAR-10 test accuracy in % (5 seeds, its recipe: ~370 epochs), per model."""
MODEL_TITLES = {"cnn": "CNN", "cnmf": "CNMF", "cnn_1x1": "CNN+1x1", "cnmf_1x1": "CNMF+1x1"}


def recipe_label(row: dict) -> str:
    """A row's recipe: its variant's name without the model (``cnmf_1x1,fast`` -> ``fast``)."""
    parts = row["label"].split(",", 1)
    return parts[1] if len(parts) > 1 and parts[0] == row["model"] else row["label"]


def figure(rows: list[dict], path: pathlib.Path, title: str) -> None:
    """One panel per model: test accuracy by epoch, one colour per recipe, one line style per
    budget, the seeds' min-max band, and the paper's accuracy for that model as a dashed line."""
    plt = pyplot()
    models = [m for m in MODEL_TITLES if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    fig, axes = plt.subplots(
        1, len(models), figsize=(5.5 * len(models), 4.8), sharey=True, constrained_layout=True
    )
    axes = np.atleast_1d(axes)
    recipes = list(dict.fromkeys(recipe_label(row) for row in rows))
    budgets = sorted({int(row["budget_epochs"]) for row in rows})
    for ax, model in zip(axes, models, strict=True):
        for row in (r for r in rows if r["model"] == model):
            x = np.arange(1, len(row["curve"]) + 1)
            color = f"C{recipes.index(recipe_label(row)) % 10}"
            ax.plot(
                x,
                100 * np.asarray(row["curve"]),
                marker="o",
                ms=2,
                color=color,
                ls=LINE_STYLES[budgets.index(int(row["budget_epochs"])) % len(LINE_STYLES)],
                label=f"{recipe_label(row)}, {row['budget_epochs']} epochs "
                f"({reporting.plural(row['seeds'], 'seed')})",
            )
            ax.fill_between(
                x,
                100 * np.asarray(row["curve_min"]),
                100 * np.asarray(row["curve_max"]),
                color=color,
                alpha=0.15,
                lw=0,
            )
        if model in PAPER_ACCURACY:
            ax.axhline(
                PAPER_ACCURACY[model],
                color="k",
                ls="--",
                lw=1,
                label=f"paper: {PAPER_ACCURACY[model]} % (~370 epochs)",
            )
        ax.set_title(MODEL_TITLES.get(model, model), fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", handlelength=3.5)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("folders", nargs="*", help="sweep folders (or single runs)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument(
        "--out",
        default="runs/benchmarks/time_to_accuracy.json",
        help="the JSON (benchmarks/results/ holds the committed one)",
    )
    parser.add_argument(
        "--figure", default="", help="PNG path of the curves (default: next to --out)"
    )
    parser.add_argument(
        "--keep",
        default="",
        metavar="OLD.json",
        help="an earlier --out: its rows of runs not given now stay in the table as measured",
    )
    args = parser.parse_args(argv)
    runs = [load_run(f) for folder in args.folders for f in variant_folders(pathlib.Path(folder))]
    if not runs and not args.keep:
        parser.error(f"no training runs in {args.folders}")
    sweeps = [sweep_name(pathlib.Path(f)) for f in args.folders]
    try:
        kept, kept_sweeps, measured = (
            kept_rows(pathlib.Path(args.keep), runs) if args.keep else ([], [], [])
        )
        rows = labelled(kept + [summarize(group, args.epochs) for group in group_seeds(runs)])
    except ValueError as error:
        parser.error(str(error))
    sweeps = list(dict.fromkeys(kept_sweeps + sweeps))
    if kept:
        missing = [e for e in args.epochs if e not in measured]
        if missing:
            print(
                f"note: the rows kept from {args.keep} were measured at epochs {measured} only; "
                f"they show '-' at {missing}",
                file=sys.stderr,
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"epochs": args.epochs, "sweeps": sweeps, "variants": rows}, indent=1)
    )
    print(table(rows, args.epochs))
    print("(in brackets: cumulative training minutes on this machine, evaluation not counted)")
    figure(
        rows,
        pathlib.Path(args.figure) if args.figure else out.with_suffix(".png"),
        "CIFAR-10 test accuracy by epoch: the fast recipe against the paper's "
        "(seed mean, min-max band)",
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
