"""The benchmark scripts run (at a tiny size) and write what they promise. Numbers are not checked.

The scripts run with the suite's compilation cache, and the train-step and backprop runs use the
shapes of the device check's smoke size, so that its speed section compiles little of its own."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from flax import traverse_util

from deepnmf_jax import _malloc
from deepnmf_jax.training.config import ADDED_KEYS
from tests.runners import ROOT, subprocess_env


def _run(script, *args):
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        env=subprocess_env(),
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
        "cnmf_1x1",
        "--seed-loop",
        "map",
        "--seeds",
        "2",
        "--batches",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--width",
        "0.125",
        "--iterations",
        "2",
        "--peak-size",
        "256",
        "--out",
        str(out),
    )
    assert "img/s" in stdout and "of peak" in stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["model"], r["seeds"]) for r in rows] == [("cnmf_1x1", 2)] and rows[0][
        "images_per_s"
    ] > 0
    assert report["peak_gflops"] > 0 and report["machine"]["cpu_count"] >= 1
    assert 0 < rows[0]["fraction_of_peak"] and rows[0]["mflop_per_image"] > 0
    assert report["peak_gflops"] == max(report["peak_gflops_measured"])  # before and after
    assert rows[0]["fraction_of_peak"] == pytest.approx(rows[0]["gflops"] / report["peak_gflops"])


def test_benchmark_default_output_is_not_the_committed_results():
    help_text = _run("train_step.py", "--help")
    assert "runs/benchmarks/train_step.json" in help_text and "(default:" in help_text


def test_backprop_benchmark_runs(tmp_path):
    out = tmp_path / "backprop.json"
    stdout = _run(
        "backprop.py",
        "--configs",
        "cnn",
        "cnmf_1x1:unrolled",
        "--batches",
        "4",
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
    assert [r["config"] for r in rows] == ["cnn", "cnmf_1x1:unrolled"]
    # At this size the backward (value-and-grad minus forward) can time as 0, and 0/0 is NaN.
    assert rows[0]["backward_vs_cnn"] == 1.0 or rows[0]["backward_s"] == 0.0
    assert rows[1]["peak_rss_mib"] > 0


def test_the_device_report_checker_names_what_is_wrong():
    """CI runs the device check's smoke size outside the suite (scripts/device_check_smoke.sh, on
    each JAX) and checks its report with benchmarks/check_device_report.py: here, that the checker
    fails on a report missing a section or with failed parity."""
    checker = _benchmark_module("check_device_report")
    with pytest.raises(AssertionError, match="section 'epoch' missing"):
        checker.check({"machine": {}, "parity": {}, "loop_variants": {}, "speed": {}})
    broken = {
        "machine": {"devices": ["cpu"]},
        "parity": {"passed": False, "failures": ["model/cnn"]},
        "loop_variants": {},
        "speed": {},
        "epoch": {},
    }
    with pytest.raises(AssertionError, match=r"parity failed: \['model/cnn'\]"):
        checker.check(broken)


def _benchmark_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _time_to_accuracy():
    return _benchmark_module("time_to_accuracy")


def test_time_to_accuracy_reads_a_sweep(local_sweep, tmp_path, capsys):
    """The time-to-accuracy table and curves of the smoke sweep: accuracy, seeds and cumulative
    minutes at the asked epochs, '-' where a run did not get there."""
    script = _time_to_accuracy()
    folder, _ = local_sweep
    out = tmp_path / "tta.json"
    assert script.main([str(folder), "--epochs", "1", "2", "1000", "--out", str(out)]) == 0
    rows = {row["variant"]: row for row in json.loads(out.read_text())["variants"]}
    assert sorted(rows) == [
        "model=cnmf,seed=21",
        "model=cnmf,seed=22",
        "model=cnn,seed=21",
        "model=cnn,seed=22",
    ]
    row = rows["model=cnmf,seed=21"]
    lines = (folder / row["variant"] / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert row["at_epoch"]["2"]["per_seed"] == history[1]["test_accuracy"]
    minutes = (history[0]["epoch_time_s"] + history[1]["epoch_time_s"]) / 60
    assert row["at_epoch"]["2"]["train_minutes"] == pytest.approx(minutes)
    assert "1000" not in row["at_epoch"] and row["curve"][0] == history[0]["test_accuracy"][0]
    budget = json.loads((folder / row["variant"] / "config.json").read_text())["num_epochs"]
    assert row["budget_epochs"] == budget and row["model"] == "cnmf"
    assert row["label"] == row["variant"]  # no other row of its name and budget
    results = json.loads((folder / row["variant"] / "results.json").read_text())
    assert row["machines"] == [results["machine"]["cpu"]] and results["machine"]["cpu"]
    table = capsys.readouterr().out
    assert table.count("| model=") == 4 and "| - |" in table
    assert out.with_suffix(".png").is_file() and out.with_suffix(".svg").is_file()


def test_time_to_accuracy_pools_seeds_trained_apart(local_sweep, tmp_path, capsys):
    """A variant's second seed trained as its own run in another folder joins the first one's row:
    per-seed accuracies end to end, their mean, minutes added; a seed given twice is an error."""
    script = _time_to_accuracy()
    folder, _ = local_sweep
    # the smoke sweep's seed-22 run, filed as if `--set seed=22` had rerun variant model=cnmf,seed=21
    second = tmp_path / "second_seed" / "model=cnmf,seed=21"
    shutil.copytree(folder / "model=cnmf,seed=22", second)
    # ... saved before the newest config keys existed (ADDED_KEYS): the same recipe still
    json_path = second / "config.json"
    saved = traverse_util.flatten_dict(json.loads(json_path.read_text()), sep=".")
    old = {k: v for k, v in saved.items() if k not in ADDED_KEYS}
    assert len(old) < len(saved)
    json_path.write_text(json.dumps(traverse_util.unflatten_dict(old, sep=".")))
    out = tmp_path / "tta.json"
    runs = [str(folder / "model=cnmf,seed=21"), str(second)]
    assert script.main([*runs, "--epochs", "2", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["variants"]
    histories = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (folder / "model=cnmf,seed=21", second)
    ]
    assert row["seeds"] == 2 and row["seed_values"] == [21, 22]
    at_2 = row["at_epoch"]["2"]
    assert at_2["per_seed"] == histories[0][1]["test_accuracy"] + histories[1][1]["test_accuracy"]
    assert at_2["test_accuracy"]["mean"] == pytest.approx(sum(at_2["per_seed"]) / 2)
    minutes = sum(h[0]["epoch_time_s"] + h[1]["epoch_time_s"] for h in histories) / 60
    assert at_2["train_minutes"] == pytest.approx(minutes)
    # a run continued past its config.json's num_epochs (plateau schedule) is as long as it went on
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "num_epochs": 1}))
    assert script.load_run(second)["budget"] == len(histories[1]) > 1
    # dead channels: each run's per-seed counts end to end, None where a run has no count
    counts = [{"at_init": [7], "final": [5]}, {"at_init": [4, 6], "final": None}]
    pooled = script.pooled_dead_channels([{"results": {"dead": c}} for c in counts], "dead")
    assert pooled == {"at_init": [7, 4, 6], "final": None}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        script.main([str(folder / "model=cnmf,seed=21"), str(folder / "model=cnmf,seed=21")])
    assert "both trained seed 21 of variant model=cnmf,seed=21" in capsys.readouterr().err


def test_time_to_accuracy_labels_a_variant_retrained_with_another_recipe(
    local_sweep, tmp_path, capsys
):
    """A variant retrained in another folder with a changed setting (``--set``) is its own row, and
    both rows of that name and budget are labelled with their folders, in the table and the JSON."""
    script = _time_to_accuracy()
    folder, _ = local_sweep
    other = tmp_path / "recipes_ls" / "model=cnmf,seed=21"
    shutil.copytree(folder / "model=cnmf,seed=21", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "label_smoothing": 0.1}))
    out = tmp_path / "tta.json"
    runs = [str(folder / "model=cnmf,seed=21"), str(other), str(folder / "model=cnn,seed=21")]
    assert script.main([*runs, "--epochs", "1", "--out", str(out)]) == 0
    labels = [row["label"] for row in json.loads(out.read_text())["variants"]]
    assert labels == [
        f"model=cnmf,seed=21 ({folder.name})",
        "model=cnmf,seed=21 (recipes_ls)",
        "model=cnn,seed=21",
    ]
    table = capsys.readouterr().out
    assert all(f"| {label} |" in table for label in labels)


def test_time_to_accuracy_keeps_rows_of_runs_no_longer_here(
    local_sweep, tmp_path, capsys, monkeypatch
):
    """--keep: an earlier output's rows stay (as measured) when their run folders are gone; a row
    whose run is given again is measured again, not doubled; the sweep names carry over."""
    script = _time_to_accuracy()
    folder, _ = local_sweep
    gone = tmp_path / "gone_sweep"
    shutil.copytree(folder, gone)
    first = tmp_path / "first.json"
    assert script.main([str(gone / "model=cnn,seed=21"), "--epochs", "1", "--out", str(first)]) == 0
    (old_row,) = json.loads(first.read_text())["variants"]
    shutil.rmtree(gone)
    out = tmp_path / "both.json"
    again = str(folder / "model=cnmf,seed=21")
    argv = [again, "--epochs", "1", "2", "--keep", str(first), "--out", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["runs"] for row in result["variants"]] == [old_row["runs"], [again]]
    assert result["variants"][0] == old_row and result["sweeps"] == ["gone_sweep", folder.name]
    captured = capsys.readouterr()
    assert "measured at epochs [1] only; they show '-' at [2]" in captured.err
    # the new output kept again with the same run (given by another path): replaced, not doubled
    monkeypatch.chdir(folder)
    argv = ["model=cnmf,seed=21", "--epochs", "1", "--keep", str(out), "--out", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["runs"] for row in result["variants"]] == [old_row["runs"], ["model=cnmf,seed=21"]]
    assert result["sweeps"] == ["gone_sweep", folder.name]
    with pytest.raises(SystemExit):
        script.main(["--keep", str(tmp_path / "nothing.json"), "--out", str(out)])
    assert "nothing.json: no such file" in capsys.readouterr().err


def test_side_by_side_runs_our_code_trees_and_refuses_a_folder_without_the_package(tmp_path):
    """Ours only (torch is not a test dependency): two labelled code trees, each in its own worker."""
    out = tmp_path / "side_by_side.json"
    small = ["--set=model.width=0.125", "--set=model.iterations=2", "--peak-size=256"]
    stdout = _run(
        "side_by_side.py",
        "--models=cnmf_1x1",
        "--batches=4",
        "--seeds=1",
        "--rounds=2",
        "--steps=1",
        f"--ours=a={ROOT}",
        f"--ours=b={ROOT}",
        "--env=a:DEEPNMF_MALLOC=system",  # a on glibc's malloc; b as the command line runs
        *small,
        f"--out={out}",
    )
    assert "| cnmf_1x1 | 4 | 1 | a |" in stdout and "| cnmf_1x1 | 4 | 1 | b |" in stdout
    report = json.loads(out.read_text())
    assert [r["code"] for r in report["rows"]] == ["a", "b"]
    tcmalloc = "tcmalloc" if _malloc.find_tcmalloc() else "system"
    assert [r["allocator"] for r in report["rows"]] == ["system", tcmalloc]
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and row["max_rss_mib"] > 0 and 0 < row["fraction_of_peak"]
        assert str(ROOT / "deepnmf_jax") in row["software"]  # imported from the tree named
        assert "vs_reference" not in row  # no reference asked for
    assert report["peak_gflops"] > 0 and report["machine"]["backend"] == "cpu"
    # the peak, measured alone before the workers and after them; the fraction is of the higher
    assert len(report["peak_gflops_measured"]) == 2
    assert report["peak_gflops"] == max(report["peak_gflops_measured"])
    row = report["rows"][0]
    fraction = row["mflop_per_image"] * row["images_per_s"] / 1e3 / report["peak_gflops"]
    assert row["fraction_of_peak"] == pytest.approx(fraction)
    # the peak also took its turn in each of the 2 rounds; each round's steps against its peak
    assert len(row["round_peak_gflops"]) == 2 and min(row["round_peak_gflops"]) > 0
    per_round = [
        row["mflop_per_image"] * 4 / step / 1e3 / peak
        for step, peak in zip(row["round_step_s"], row["round_peak_gflops"], strict=True)
    ]
    assert row["fraction_of_round_peak"] == pytest.approx(sum(per_round) / 2)
    refused = subprocess.run(
        [sys.executable, "benchmarks/side_by_side.py", f"--ours=old={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "no deepnmf_jax package in" in refused.stderr


def test_conv_grad_in_loop_repro_runs(tmp_path):
    out = tmp_path / "conv.json"
    stdout = _run(
        "conv_grad_in_loop.py",
        *("--seeds", "2", "--batch", "2", "--size", "8", "--features", "4", "--kernel", "3"),
        *("--repeats", "1", "--out", str(out)),
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["form"] for row in rows] == ["one seed at a time", "vmap", "lax.map", "python loop"]
    assert rows[0]["vs_one_at_a_time"] == 1.0 and "lax.map" in stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="the fused-kernel experiment needs g++")
def test_ffi_nmf_loop_kernel_builds_and_gives_the_xla_loop_codes(tmp_path):
    """The fused C++ loop (an XLA FFI custom call) against ``nmf_fixed_point``, at odd shapes: rows
    that are not a multiple of the kernel's 4-row tile, S and I that are not multiples of 16."""
    out = tmp_path / "ffi.json"
    _run(
        "ffi_nmf_loop.py",
        *("--shapes", "37,20,5", "130,75,32", "9,40,17"),
        *("--iterations", "3", "--repeats", "1", "--threads", "2", "--out", str(out)),
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["positions"], r["inputs"], r["codes"]) for r in rows] == [
        (37, 20, 5),
        (130, 75, 32),
        (9, 40, 17),
    ]
    for row in rows:
        assert row["difference"] < 1e-5 and row["xla_ms"] > 0 and row["fused_ms"] > 0


def test_the_worker_reads_the_default_config_of_the_tree_under_test(tmp_path):
    """An older tree's workers must not get this tree's defaults (an editable install maps
    ``deepnmf_jax.configs`` to this tree's ``configs/`` whatever PYTHONPATH says): a key added since
    would be unknown there."""
    (tmp_path / "deepnmf_jax").symlink_to(ROOT / "deepnmf_jax")
    (tmp_path / "configs").mkdir()
    own = (ROOT / "configs" / "default.py").read_text()
    (tmp_path / "configs" / "default.py").write_text(
        own + "\n\n_get = get_config\n\n\ndef get_config():\n    c = _get()\n"
        "    c.batch_size = 7\n    return c\n"
    )
    code = "import step_worker_jax as w; print(w.default_config().batch_size)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "benchmarks",  # beside the worker script
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "7"


def test_side_by_side_table_has_a_column_per_reference_copy():
    """``--reference-also LABEL`` rows carry ``vs_LABEL``; the table shows it after ``vs reference``,
    and rows without it (older JSON) read "-"."""
    table = _benchmark_module("side_by_side").table
    base = {"model": "cnn", "batch": 50, "seeds": 1, "max_rss_mib": 500.0}
    rows = [
        {**base, "code": "reference", "images_per_s": 100.0, "vs_reference": 1.0},
        {**base, "code": "tc", "images_per_s": 150.0, "vs_reference": 1.5, "vs_tc": 1.0},
        {
            **base,
            "code": "after",
            "images_per_s": 300.0,
            "vs_reference": 3.0,
            "vs_tc": 2.0,
            "fraction_of_peak": 0.6,
            "fraction_of_round_peak": 0.625,
        },
    ]
    lines = table(rows).splitlines()
    assert lines[0].startswith("| model | batch | seeds | code | images/s | vs reference | vs tc |")
    assert lines[2] == "| cnn | 50 | 1 | reference | 100 | 1.00x | - | - | - | 500 |"
    assert lines[4] == "| cnn | 50 | 1 | after | 300 | 3.00x | 2.00x | 60 % | 62 % | 500 |"
