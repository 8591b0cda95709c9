"""mkdocs hook: the results tables are generated from ``benchmarks/results/*.json`` (and the released
weights' table from ``deepnmf_jax/pretrained/manifest.json``) at build time, never copied by hand.

A page asks for a table with a line ``<!-- table: NAME -->``; NAME is a key of ``TABLES``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_to_accuracy() -> str:
    data = _load("time_to_accuracy")
    module = _benchmark_module("time_to_accuracy")
    return module.table(module.labelled(data["variants"]), data["epochs"])


def backprop() -> str:
    rows = _load("backprop")["rows"]
    lines = [
        "| model | NMF gradient | backward (ms) | train step (ms) | backward / CNN's | "
        "XLA temp memory / CNN's |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['gradient']} | {1e3 * r['backward_s']:.1f} | "
            f"{1e3 * r['train_step_s']:.1f} | {r['backward_vs_cnn']:.2f} | "
            f"{r['xla_temp_vs_cnn']:.2f} |"
        )
    return "\n".join(lines)


def train_step_cpu() -> str:
    data = _load("train_step_cpu")
    lines = [
        "| model | seeds | batch | seed loop | images/s | GFLOP/s | fraction of matmul peak | "
        "CIFAR-10 epoch (min) | compile (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['model']} | {r['seeds']} | {r['batch']} | {r['seed_loop']} | "
            f"{r['images_per_s']:.0f} | {r['gflops']:.1f} | {r['fraction_of_peak']:.2f} | "
            f"{r['cifar10_epoch_min']:.1f} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def released_weights() -> str:
    manifest = json.loads((ROOT / "deepnmf_jax" / "pretrained" / "manifest.json").read_text())
    lines = [
        "| name | model | test accuracy (%) | population stats, batch 1 | population stats, "
        "batch 50 | batch stats, batch 50 | checkpoint | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}"

    for name, entry in sorted(manifest.items()):
        acc = entry.get("accuracy", {})
        lines.append(
            f"| `{name}` | {entry.get('model', {}).get('name', '?')} | "
            f"{pct(acc.get('cifar10_test'))} | {pct(acc.get('population_batch_1'))} | "
            f"{pct(acc.get('population_batch_50'))} | {pct(acc.get('batch_stats_batch_50'))} | "
            f"{entry.get('checkpoint', '-')} | `{entry.get('sha256', '-')[:12]}` |"
        )
    return "\n".join(lines)


def robustness() -> str:
    module = _benchmark_module("robustness_report")
    rows = _load("robustness")["rows"]

    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}"

    def robust(row, eps, gradient="unrolled"):
        return pct(module.robust_at(row, eps, gradient))

    lines = [
        "| model | clean | ECE | ECE, temperature-scaled | reference noise, mean | "
        "CIFAR-10-C, mean | PGD 2/255 | PGD 8/255 | PGD 8/255, approximate gradient | "
        "PGD 8/255, transfer from the CNN twin |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        noise = row.get("noise", {})
        ece = row.get("ece")
        scaled = row.get("ece_temperature_scaled")
        lines.append(
            f"| {module.MODEL_TITLES.get(row['model'], row['model'])} | "
            f"{pct(row.get('clean_accuracy'))} | "
            f"{'-' if ece is None else f'{ece:.3f}'} | "
            f"{'-' if scaled is None else f'{scaled:.3f}'} | "
            f"{pct(noise.get('reference_mean'))} | {pct(noise.get('cifar10c_mean'))} | "
            f"{robust(row, 2)} | {robust(row, 8)} | {robust(row, 8, 'approximate')} | "
            f"{robust(row, 8, 'transfer')} |"
        )
    return "\n".join(lines)


TABLES = {
    "robustness": robustness,
    "time_to_accuracy": time_to_accuracy,
    "backprop": backprop,
    "train_step_cpu": train_step_cpu,
    "released_weights": released_weights,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise KeyError(
                f"{page.file.src_path}: no generated table {name!r}; have {list(TABLES)}"
            )
        return TABLES[name]()

    return re.sub(r"^<!-- table: (\w+) -->$", generate, markdown, flags=re.M)
