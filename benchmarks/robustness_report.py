"""The robustness report: released models side by side, from their runs' ``eval/`` files.

    deepnmf import-pretrained --name cnmf_1x1_cifar10_fast --workdir runs/rel/cnmf_1x1
    deepnmf evaluate --workdir runs/rel/cnmf_1x1 --data-dir DIR
    deepnmf noise --workdir runs/rel/cnmf_1x1 --data-dir DIR --corruptions all --limit 300
    deepnmf attack --workdir runs/rel/cnmf_1x1 --data-dir DIR --limit 100 \\
        --gradient unrolled,approximate --source-run runs/rel/cnn_1x1
    python benchmarks/robustness_report.py runs/rel/cnn_1x1 runs/rel/cnmf_1x1 \\
        --out benchmarks/results/robustness.json

Per model: clean test accuracy and expected calibration error (15 bins) before and after temperature
scaling (``evaluate``, the full test set), the mean accuracy over the reference's four corruptions at
every level above 0 and over CIFAR-10-C's 15 corruptions x 5 severities (``noise``), and PGD robust
accuracy per eps and gradient (``attack``), each with its image count and seconds, and the CPU
each part ran on (None for eval files written before they recorded it). Writes the JSON
(the docs' table is generated from it) and a figure beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from deepnmf_jax.evaluation import corruptions

MODEL_TITLES = {"cnn": "CNN", "cnmf": "CNMF", "cnn_1x1": "CNN+1x1", "cnmf_1x1": "CNMF+1x1"}


def _read(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run: pathlib.Path) -> dict:
    """One model's row from ``run/eval/*.json`` (missing parts are None)."""
    metrics, noise, attack, apgd = (
        _read(run / "eval" / f)
        for f in ("metrics.json", "noise.json", "attack.json", "attack_apgd.json")
    )
    config = json.loads((run / "config.json").read_text())
    row: dict = {"run": run.name, "model": config["model"]["name"]}
    if metrics:
        row["clean_accuracy"] = metrics["accuracy"]["mean"]
        row["test_images"] = metrics.get("test_images")
        row["ece"] = metrics["ece"]["mean"]
        row["ece_temperature_scaled"] = metrics.get("ece_temperature_scaled", {}).get("mean")
    if noise:
        reference = [
            float(np.mean(accuracy))
            for name, result in noise["corruptions"].items()
            if name in corruptions.REFERENCE
            for level, accuracy in zip(result["levels"], result["accuracy"], strict=True)
            if level
        ]
        row["noise"] = {
            "test_images": noise["test_images"],
            "clean_accuracy": float(np.mean(noise["clean"])),
            "reference_mean": float(np.mean(reference)) if reference else None,
            "cifar10c_mean": float(np.mean(noise["cifar10c_mean"]))
            if "cifar10c_mean" in noise
            else None,
            "per_corruption": {
                name: float(
                    np.mean(
                        [np.mean(a) for lv, a in zip(r["levels"], r["accuracy"], strict=True) if lv]
                    )
                )
                for name, r in noise["corruptions"].items()
            },
            "seconds": noise["seconds"],
        }
    for key, report in (("attack", attack), ("attack_apgd", apgd)):
        if report:
            row[key] = _attack_summary(report)
    # Where each part ran: an attack's images can differ between CPUs by floating-point rounding.
    row["cpu"] = {
        key: report.get("machine", {}).get("cpu")
        for key, report in (
            ("evaluate", metrics),
            ("noise", noise),
            ("attack", attack),
            ("attack_apgd", apgd),
        )
        if report
    }
    return row


def _attack_summary(report: dict) -> dict:
    """An ``attack`` report's images, steps and, per gradient, seed-mean accuracies and seconds."""
    return {
        "test_images": report["images"],
        "steps": report["steps"],
        "gradients": {
            r["gradient"]: {
                "clean_accuracy": float(np.mean(r["clean_accuracy"])),
                "robust_accuracy": {
                    eps: float(np.mean(v)) for eps, v in r["robust_accuracy"].items()
                },
                "seconds": r["seconds"],
            }
            for r in report["results"]
        },
    }


def robust_at(
    row: dict, eps255: float, gradient: str = "unrolled", attack: str = "attack"
) -> float | None:
    """Robust accuracy at ``eps255``/255 through ``gradient`` under ``attack`` (``"attack"``:
    PGD, ``"attack_apgd"``: APGD-CE; a CNN's only gradient counts as unrolled: its backward is
    exact)."""
    gradients = row.get(attack, {}).get("gradients", {})
    found = gradients.get(gradient) or (gradients.get("exact") if gradient == "unrolled" else None)
    if found is None and gradient == "unrolled" and len(gradients) == 1:
        found = next(iter(gradients.values()))
    if not found:
        return None
    for eps, value in found["robust_accuracy"].items():
        # keys carry 6 significant digits ("0.0313725" x 255 = 7.99999); radii are 1/255 apart or more
        if abs(float(eps) * 255 - eps255) < 1e-3:
            return value
    return None


def figure(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13.5, 4.6), constrained_layout=True)
    measures = [
        ("clean", lambda r: r.get("clean_accuracy")),
        ("reference noise\n(mean)", lambda r: r.get("noise", {}).get("reference_mean")),
        ("CIFAR-10-C\n(mean, 15 x 5)", lambda r: r.get("noise", {}).get("cifar10c_mean")),
        ("PGD 2/255", lambda r: robust_at(r, 2)),
        ("PGD 8/255", lambda r: robust_at(r, 8)),
    ]
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        values = [fn(row) for _, fn in measures]
        x = np.arange(len(measures)) + (i - (len(rows) - 1) / 2) * width
        bars.bar(
            x,
            [100 * v if v is not None else 0 for v in values],
            width,
            label=MODEL_TITLES.get(row["model"], row["model"]),
            color=f"C{i}",
        )
    bars.set_xticks(np.arange(len(measures)), [m for m, _ in measures], fontsize=8)
    bars.set_ylabel("test accuracy (%)")
    bars.set_title("Accuracy under corruption and attack")
    bars.legend(fontsize=8)
    bars.grid(axis="y", alpha=0.3)
    styles = {"unrolled": "-", "exact": "-", "approximate": "--", "transfer": ":"}
    for i, row in enumerate(rows):
        for gradient, result in row.get("attack", {}).get("gradients", {}).items():
            eps = [0.0, *(float(e) * 255 for e in result["robust_accuracy"])]
            acc = [result["clean_accuracy"], *result["robust_accuracy"].values()]
            curves.plot(
                eps,
                100 * np.asarray(acc),
                marker="o",
                color=f"C{i}",
                ls=styles.get(gradient, "-."),
                label=f"{MODEL_TITLES.get(row['model'], row['model'])}, {gradient}",
            )
    curves.set_xlabel("eps (x 1/255), L-infinity")
    curves.set_ylabel("robust accuracy (%)")
    curves.set_title("PGD, 20 steps, by the gradient it follows")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders with eval/ results")
    parser.add_argument("--out", default="runs/benchmarks/robustness.json")
    args = parser.parse_args(argv)
    rows = [summarize(pathlib.Path(run)) for run in args.runs]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    figure(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
