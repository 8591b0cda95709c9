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


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: one header row, the separator, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value) -> str:
    """A fraction as a percentage with two decimals; ``-`` for a missing value."""
    return "-" if value is None else f"{100 * value:.2f}"


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def backprop() -> str:
    header = [
        "model",
        "NMF gradient",
        "backward (ms)",
        "train step (ms)",
        "backward / CNN's",
        "XLA temp memory / CNN's",
    ]
    rows = [
        [
            r["model"],
            r["gradient"],
            f"{1e3 * r['backward_s']:.1f}",
            f"{1e3 * r['train_step_s']:.1f}",
            f"{r['backward_vs_cnn']:.2f}",
            f"{r['xla_temp_vs_cnn']:.2f}",
        ]
        for r in _load("backprop")["rows"]
    ]
    return _markdown_table(header, rows)


def train_step_cpu() -> str:
    header = [
        "model",
        "seeds",
        "batch",
        "seed loop",
        "images/s",
        "GFLOP/s",
        "fraction of matmul peak",
        "CIFAR-10 epoch (min)",
        "compile (s)",
    ]
    rows = [
        [
            r["model"],
            str(r["seeds"]),
            str(r["batch"]),
            r["seed_loop"],
            f"{r['images_per_s']:.0f}",
            f"{r['gflops']:.1f}",
            f"{r['fraction_of_peak']:.2f}",
            f"{r['cifar10_epoch_min']:.1f}",
            f"{r['compile_s']:.1f}",
        ]
        for r in _load("train_step_cpu")["rows"]
    ]
    return _markdown_table(header, rows)


def side_by_side(name: str) -> str:
    return _benchmark_module("side_by_side").table(_load(name)["rows"])


def side_by_side_repeats(name: str) -> str:
    """One line per run of the same side-by-side configuration: how far one run decides a ratio."""
    header = [
        "run",
        "cpu",
        "model",
        "batch",
        "reference images/s",
        "ours images/s",
        "ours / reference",
    ]
    rows = []
    for number, run in enumerate(_load(name)["runs"], 1):
        by_code = {row["code"]: row for row in run["rows"]}
        ours, reference = by_code["ours"], by_code["reference"]
        rows.append(
            [
                str(number),
                run.get("machine", {}).get("cpu", "?"),
                ours["model"],
                str(ours["batch"]),
                f"{reference['images_per_s']:.0f}",
                f"{ours['images_per_s']:.0f}",
                f"{ours['vs_reference']:.2f}x",
            ]
        )
    return _markdown_table(header, rows)


def ffi_nmf_loop() -> str:
    """The fused C++ loop against XLA's, per NMF layer shape (``benchmarks/ffi_nmf_loop.py``)."""
    report = _load("ffi_nmf_loop")
    header = [
        "positions x inputs x codes",
        "XLA ms",
        "XLA GFLOP/s",
        "fused ms",
        "fused GFLOP/s",
        "largest difference",
    ]
    rows = [
        [
            f"{r['positions']:,} x {r['inputs']:,} x {r['codes']}",
            f"{r['xla_ms']:.2f}",
            f"{r['xla_gflops']:.0f}",
            f"{r['fused_ms']:.2f}",
            f"{r['fused_gflops']:.0f}",
            f"{r['difference']:.1e}",
        ]
        for r in report["rows"]
    ]
    return _markdown_table(header, rows)


def released_weights() -> str:
    manifest = json.loads((ROOT / "deepnmf_jax" / "pretrained" / "manifest.json").read_text())
    header = [
        "name",
        "model",
        "test accuracy (%)",
        "population stats, batch 1",
        "population stats, batch 50",
        "batch stats, batch 50",
        "checkpoint",
        "sha256",
    ]
    rows = []
    for name, entry in sorted(manifest.items()):
        acc = entry.get("accuracy", {})
        model = entry.get("model", {})
        rows.append(
            [
                f"`{name}`",
                model.get("name", "?")
                + (" (BatchNorm at 1x1)" if model.get("batch_norm_1x1") else ""),
                _pct(acc.get("cifar10_test")),
                _pct(acc.get("population_batch_1")),
                _pct(acc.get("population_batch_50")),
                _pct(acc.get("batch_stats_batch_50")),
                str(entry.get("checkpoint", "-")),
                f"`{entry.get('sha256', '-')[:12]}`",
            ]
        )
    return _markdown_table(header, rows)


def robustness() -> str:
    module = _benchmark_module("robustness_report")
    header = [
        "model",
        "clean",
        "ECE",
        "ECE, temperature-scaled",
        "reference noise, mean",
        "CIFAR-10-C, mean",
        "PGD 2/255",
        "PGD 8/255",
        "PGD 8/255, approximate gradient",
        "PGD 8/255, transfer from the CNN twin",
        "APGD-CE 8/255",
    ]
    rows = []
    for row in _load("robustness")["rows"]:
        noise = row.get("noise", {})
        rows.append(
            [
                module.MODEL_TITLES.get(row["model"], row["model"]),
                _pct(row.get("clean_accuracy")),
                _number(row.get("ece"), ".3f"),
                _number(row.get("ece_temperature_scaled"), ".3f"),
                _pct(noise.get("reference_mean")),
                _pct(noise.get("cifar10c_mean")),
                _pct(module.robust_at(row, 2, "unrolled")),
                _pct(module.robust_at(row, 8, "unrolled")),
                _pct(module.robust_at(row, 8, "approximate")),
                _pct(module.robust_at(row, 8, "transfer")),
                _pct(module.robust_at(row, 8, "unrolled", "attack_apgd")),
            ]
        )
    return _markdown_table(header, rows)


TABLES = {
    "robustness": robustness,
    "time_to_accuracy": time_to_accuracy,
    "backprop": backprop,
    "train_step_cpu": train_step_cpu,
    "side_by_side_cpu": lambda: side_by_side("side_by_side_cpu"),
    "ffi_nmf_loop": ffi_nmf_loop,
    "side_by_side_conv": lambda: side_by_side("side_by_side_conv"),
    "side_by_side_tcmalloc": lambda: side_by_side("side_by_side_tcmalloc"),
    "side_by_side_reference_tcmalloc": lambda: side_by_side("side_by_side_reference_tcmalloc"),
    "side_by_side_cnmf_1x1_repeats": lambda: side_by_side_repeats("side_by_side_cnmf_1x1_repeats"),
    "released_weights": released_weights,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generate(match: re.Match) -> str:
        indent, name = match.group(1), match.group(2)
        if name not in TABLES:
            raise KeyError(
                f"{page.file.src_path}: no generated table {name!r}; have {list(TABLES)}"
            )
        return "\n".join(indent + line for line in TABLES[name]().splitlines())

    # a marker may be indented (a table inside a list item): the table takes its indentation
    markdown = re.sub(r"^([ \t]*)<!-- table: (\w+) -->$", generate, markdown, flags=re.M)
    if "<!-- table:" in markdown:
        raise ValueError(f"{page.file.src_path}: a table marker not alone on its line")
    return markdown
