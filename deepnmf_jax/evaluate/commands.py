"""The evaluate commands (:mod:`deepnmf_jax.evaluate.cli`). Each computes everything first and writes
its files at the end, so an error leaves existing results as they were."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from deepnmf_jax import reporting
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluate import corruptions, metrics, noise_report, runs
from deepnmf_jax.evaluate import export as export_lib
from deepnmf_jax.evaluate import noise as noise_lib
from deepnmf_jax.evaluate.cli import run_folders


def _data_overrides(args) -> dict:
    overrides = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.source:
        overrides["source"] = args.source
    if args.test_limit is not None:
        overrides["test_limit"] = args.test_limit
    return overrides


def _open(folder, args) -> runs.TrainedRun:
    return runs.open_run(
        folder, args.checkpoint, args.eval_batch_size or None, _data_overrides(args)
    )


def batch_norm_note(run: runs.TrainedRun) -> str:
    if run.config.model.batch_norm == "running":
        return "BatchNorm: running averages (the run was trained with batch_norm=running)"
    return (
        f"BatchNorm: statistics of each evaluation batch of {run.config.eval_batch_size} images "
        "(the reference's protocol; predictions depend on the batch; --eval_batch_size changes it)"
    )


def evaluate(args) -> None:
    for folder in run_folders(pathlib.Path(args.workdir)):
        run = _open(folder, args)
        split = runs.evaluation_split(run, args.split)
        probs = run.predict(split.images)
        per_seed = [
            {"seed": seed, **metrics.classification_metrics(p, split.labels, run.num_classes)}
            for seed, p in zip(run.seeds, probs, strict=True)
        ]
        accuracy = [s["accuracy"] for s in per_seed]
        result = {
            "run": str(folder),
            "model": run.config.model.name,
            "checkpoint": run.checkpoint,
            "epoch": run.epoch,
            "split": args.split,
            "images": len(split),
            "batch_norm": batch_norm_note(run),
            "accuracy": reporting.mean_std(accuracy),
            "ece": reporting.mean_std([s["ece"] for s in per_seed]),
            "per_seed": per_seed,
        }
        out = folder / "eval"
        out.mkdir(exist_ok=True)
        workdir_lib.atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
        _plot_confusion(per_seed, run, out / "confusion.png")
        print(
            f"{folder}: {run.config.model.name} ({run.checkpoint}, epoch {run.epoch}) "
            f"{args.split} accuracy {100 * result['accuracy']['mean']:.2f} +/- "
            f"{100 * result['accuracy']['std']:.2f} % over {reporting.plural(len(accuracy), 'seed')}, "
            f"ECE {result['ece']['mean']:.3f}; {out / 'metrics.json'}"
        )
        print(f"  {result['batch_norm']}")


def _plot_confusion(per_seed: list[dict], run: runs.TrainedRun, path: pathlib.Path) -> None:
    from deepnmf_jax.plots import pyplot

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
        f"{run.config.model.name}: confusion ({reporting.plural(len(per_seed), 'seed')} summed, "
        f"{run.checkpoint})"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _corruption_names(text: str) -> list[str]:
    if text == "all":
        return list(corruptions.CORRUPTIONS)
    if text in ("reference", "standard"):
        return list(corruptions.REFERENCE if text == "reference" else corruptions.STANDARD)
    return [name.strip() for name in text.split(",") if name.strip()]


def _levels(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--levels must be numbers separated by commas, got {text!r}") from None


def noise(args) -> None:
    """The suite on every run under each ``--workdir``; the runs of one variant (seeds in one or more
    folders) make one curve of the pooled figure, JSON and table in ``--out`` (default: the one
    workdir; for a single run only the table, beside the run's own ``eval/noise.json``)."""
    names, levels = _corruption_names(args.corruptions), _levels(args.levels)
    noise_lib.check_request(names, levels)
    roots = [pathlib.Path(w) for w in args.workdir]
    if len(roots) > 1 and not args.out:
        raise ConfigError(
            "noise with several --workdir needs --out, the folder of the pooled results"
        )
    opened: dict[str, list] = {}  # label -> runs; every run is opened (and checked) first
    seen: dict[tuple[str, int], pathlib.Path] = {}
    for root in roots:
        folders = run_folders(root)
        for folder in folders:
            run = _open(folder, args)
            label = noise_report.curve_label(folder, run.config.model.name, folders != [root])
            for seed in run.seeds:
                if (label, seed) in seen:
                    raise ConfigError(
                        f"{label}: seed {seed} is in both {seen[label, seed]} and {folder}"
                    )
                seen[label, seed] = folder
            opened.setdefault(label, []).append(run)
    by_label = {}
    for label, trained in opened.items():
        suites = []
        for run in trained:
            print(f"{run.folder}: {label}, {reporting.plural(len(run.seeds), 'seed')}", flush=True)
            suites.append((run.folder, _suite(run, names, levels, args)))
        by_label[label] = suites
    curves = {label: noise_report.pool(label, suites) for label, suites in by_label.items()}
    table = noise_report.markdown(curves)
    single = len(roots) == 1 and (roots[0] / "config.json").is_file() and not args.out
    out = roots[0] / "eval" if single else pathlib.Path(args.out or roots[0])
    out.mkdir(parents=True, exist_ok=True)
    workdir_lib.atomic_write_text(out / "noise.md", table)
    written = [out / "noise.md"]
    if not single:
        workdir_lib.atomic_write_text(out / "noise.json", json.dumps(curves, indent=1))
        noise_report.plot(curves, out / "noise.png", out.resolve().name)
        written = [out / "noise.json", *written, out / "noise.png"]
    print(table)
    print(", ".join(map(str, written)))


def _suite(run: runs.TrainedRun, names, levels, args) -> dict:
    """The run's suite: its earlier ``eval/noise.json`` if that was asked the same, else run now and
    saved there (the run's own figure beside it)."""
    path = run.folder / "eval" / "noise.json"
    wanted = noise_lib.request(run, names, levels, args.limit, args.seed)
    if path.is_file() and not args.recompute:
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = {}
        if earlier.get("request") == wanted:
            print(f"  reused {path} (same checkpoint and options; --recompute runs it again)")
            return earlier
    suite = noise_lib.run_suite(
        run, names, levels, args.limit, args.seed, lambda line: print(f"  {line}", flush=True)
    )
    suite.update(model=run.config.model.name, checkpoint=run.checkpoint, epoch=run.epoch)
    path.parent.mkdir(exist_ok=True)
    workdir_lib.atomic_write_text(path, json.dumps(suite, indent=1))
    label = run.config.model.name
    noise_report.plot({label: suite}, path.with_suffix(".png"), f"{label} ({run.folder.name})")
    print(f"  {suite['seconds'] / 60:.1f} min for the suite; {path}", flush=True)
    return suite


def export(args) -> None:
    run = _open(pathlib.Path(args.workdir), args)
    if not 0 <= args.seed_index < len(run.seeds):
        raise ConfigError(f"--seed_index must be in [0, {len(run.seeds)}), got {args.seed_index}")
    out = pathlib.Path(args.out) if args.out else run.folder / "eval" / "export"
    test = runs.evaluation_split(run, "test")
    probs = run.predict(test.images)[args.seed_index]
    accuracy = float(np.mean(probs.argmax(-1) == test.labels))
    manifest = export_lib.export_seed(run, args.seed_index, out, accuracy)
    print(
        f"{out / 'model.jax_export'}: seed {manifest['seed']}, accuracy {100 * accuracy:.2f} % "
        f"on {len(test):,} test images, platforms {manifest['platforms']}"
    )
    if args.onnx:
        result = export_lib.export_onnx(
            run, args.seed_index, out, test.images[: run.config.eval_batch_size]
        )
        if result.ok:
            print(f"{result.detail}: onnxruntime agrees with JAX to {result.max_difference:.2e}")
        else:
            print(f"ONNX: {result.detail}", file=sys.stderr)


def import_reference(args) -> None:
    """A run folder (config, checkpoint) from a reference ``state_dict`` saved as ``.npz``."""
    from deepnmf_jax.evaluate import reference_import

    folder = reference_import.import_state_dict(
        pathlib.Path(args.state_dict), args.model, pathlib.Path(args.workdir), args.dataset
    )
    print(
        f"{folder}: {args.model} from {args.state_dict}; evaluate it with "
        f"python -m deepnmf_jax.evaluate --workdir {folder}"
    )


def import_pretrained(args) -> None:
    """A run folder (config, checkpoint) from a released model."""
    from deepnmf_jax.evaluate import reference_import

    folder, entry = reference_import.import_pretrained(args.name, pathlib.Path(args.workdir))
    print(
        f"{folder}: {args.name} ({entry['model']['name']}, seed {entry['seed']}, epoch "
        f"{entry['epoch']}); evaluate it with python -m deepnmf_jax.evaluate --workdir {folder} "
        "--data_dir DIR_WITH_THE_DATASET"
    )
