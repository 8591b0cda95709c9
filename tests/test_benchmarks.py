"""The benchmark scripts run (at a tiny size) and write what they promise. Numbers are not checked."""

import json
import subprocess
import sys

from tests.test_train import ROOT


def _run(script, *args):
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_train_step_benchmark_runs(tmp_path):
    out = tmp_path / "train_step.json"
    stdout = _run(
        "train_step.py",
        "--models",
        "cnmf",
        "--seeds",
        "2",
        "--batch",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--width",
        "0.125",
        "--iterations",
        "2",
        "--out",
        str(out),
    )
    assert "img/s" in stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["seeds"]) for r in rows] == [("cnmf", 2)] and rows[0]["images_per_s"] > 0


def test_backprop_benchmark_runs(tmp_path):
    out = tmp_path / "backprop.json"
    stdout = _run(
        "backprop.py",
        "--configs",
        "cnn",
        "cnmf:unrolled_remat",
        "--batches",
        "2",
        "--steps",
        "1",
        "--width",
        "0.125",
        "--iterations",
        "2",
        "--out",
        str(out),
    )
    assert "bwd/CNN" in stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["cnn", "cnmf:unrolled_remat"]
    assert rows[0]["backward_vs_cnn"] == 1.0 and rows[1]["peak_rss_mib"] > 0
