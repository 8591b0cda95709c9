"""Sweeps (deepnmf_jax.experiments, deepnmf sweep): grids and names, plans, the Pareto front, and whole sweeps run by
submitit on this machine and on a real single-node SLURM cluster (scripts/slurm_local.sh)."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import time

import numpy as np
import pytest

from deepnmf_jax import _malloc
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.experiments import figures, grid, report, spec
from tests.conftest import SWEEP_EPOCHS
from tests.runners import ROOT, SMOKE, run_module
from tests.test_train import assert_trees_equal, final_state

EPOCHS = SWEEP_EPOCHS
# what the command line runs on here (deepnmf_jax._malloc): tcmalloc where it is installed
ALLOCATOR = "tcmalloc" if _malloc.find_tcmalloc() else "system"


# --- grids, names, plans ---------------------------------------------------------------------------


def test_grid_combinators_and_names():
    points = grid.product(
        grid.axis("model.name", ["cnn", "cnmf"]), grid.axis("model.width", [1.0, 0.5])
    )
    assert points[1] == {"model.name": "cnn", "model.width": 0.5}
    names = [v.name for v in grid.variants(points)]
    assert names == [
        "model=cnn,width=1",
        "model=cnn,width=0.5",
        "model=cnmf,width=1",
        "model=cnmf,width=0.5",
    ]
    both = grid.concat(points[:1], [{"model.name": "cnn", "optim.lr_a": 0.1}])
    assert [v.name for v in grid.variants(both)] == ["model=cnn,width=1", "model=cnn,lr_a=0.1"]
    # keys that would share a short name keep their whole name
    assert grid.short_names(["model.groups", "data.groups"]) == {
        "model.groups": "model.groups",
        "data.groups": "data.groups",
    }
    with pytest.raises(ValueError, match=r"set the same keys \['model.name'\]"):
        grid.product(grid.axis("model.name", ["cnn"]), grid.axis("model.name", ["cnmf"]))
    with pytest.raises(ValueError, match="repeated points"):
        grid.variants(grid.concat(points, points[:1]))
    with pytest.raises(ValueError, match="has no values"):
        grid.axis("seed", [])
    labelled = grid.variants([{grid.LABEL: "fast", "optim.lr_a": 0.05, "optim.schedule": "cosine"}])
    assert labelled == [grid.Variant("fast", {"optim.lr_a": 0.05, "optim.schedule": "cosine"})]
    selected = grid.select(grid.variants(points), ["model=cnmf*", "*width=1"])
    assert [v.name for v in selected] == ["model=cnmf,width=1"]


def test_config_overrides_take_the_type_of_the_config_field():
    sweep = spec.load(SMOKE)
    texts = {"num_epochs": "5", "optim.lr_a": "0.02", "progress": "false", "loss": "paper"}
    (planned,) = spec.plan(sweep, ["model=cnn", "seed=21"], texts)
    config = planned.config
    assert (config.num_epochs, config.optim.lr_a, config.progress, config.loss) == (
        5,
        0.02,
        False,
        "paper",
    )
    with pytest.raises(ConfigError, match=r"unknown config key model\.widht"):
        spec.plan(sweep, (), {"model.widht": "2"})
    with pytest.raises(ConfigError, match="num_epochs=five: not an int"):
        spec.plan(sweep, (), {"num_epochs": "five"})
    with pytest.raises(ConfigError, match=r"config\.num_epochs must be >= 1"):
        spec.plan(sweep, ["model=cnn", "seed=21"], {"num_epochs": "0"})


def test_plan_skips_variants_whose_groups_do_not_divide_with_the_reason():
    sweep = dataclasses.replace(spec.load(SMOKE), points=grid.axis("model.groups_nmf", [2, 3]))
    planned = spec.plan(sweep)
    assert [p.skipped is None for p in planned] == [True, False]
    assert "groups=3 must divide both the input channels (4)" in planned[1].skipped
    counts = planned[0].parameters
    assert counts["total"] == counts["nmf"] + counts["conv"] + counts["batchnorm"] > 0


def test_fig6_plan_counts_by_hand():
    """Fig. 6's grid has 4 x 5 x 5 variants; one of them counted by hand (see test_models)."""
    sweep = spec.load(str(ROOT / "configs" / "sweeps" / "fig6.py"))
    assert len(grid.variants(list(sweep.points))) == 100
    planned = spec.plan(sweep, ["width=1", "groups_nmf=16", "groups_mix=1"])
    assert [p.name for p in planned] == ["width=1,groups_nmf=16,groups_mix=1"]
    counts = planned[0].parameters
    assert counts["nmf"] == 12_704 and counts["conv"] == 14_638 and counts["batchnorm"] == 384
    fig5 = spec.load(str(ROOT / "configs" / "sweeps" / "fig5.py") + ":fashion_mnist")
    assert fig5.base.data.name == "fashion_mnist" and fig5.paper == {}


def test_recipes_sweep_puts_the_fast_recipe_beside_the_papers():
    """configs/sweeps/recipes.py: each model with the paper's recipe, the fast one (exactly the keys
    of configs/cifar10.py's FAST), the fast one with the linear head and with BatchNorm at 1x1."""
    from deepnmf_jax.configs import cifar10

    sweep = spec.load(str(ROOT / "configs" / "sweeps" / "recipes.py"))
    variants = {v.name: v.overrides for v in grid.variants(list(sweep.points))}
    assert sorted(variants) == sorted(
        f"{m},{r}"
        for m in ("cnmf_1x1", "cnn_1x1")
        for r in ("paper", "fast", "fast,linear_head", "fast,bn1x1")
    )
    assert variants["cnn_1x1,paper"] == {"model.name": "cnn_1x1"}
    assert variants["cnn_1x1,fast"] == {"model.name": "cnn_1x1", **cifar10.FAST}
    assert variants["cnmf_1x1,fast,linear_head"]["model.head"] == "linear"
    assert variants["cnn_1x1,fast,bn1x1"] == {
        "model.name": "cnn_1x1",
        **cifar10.FAST,
        "model.batch_norm_1x1": True,
    }
    fast = cifar10.get_config("fast")
    assert fast.data.validation_size == sweep.base.data.validation_size == 5_000
    assert fast.num_epochs == sweep.base.num_epochs == 40


def test_recipe_tuning_candidates_are_the_fast_recipe_and_changes_to_it():
    """configs/sweeps/recipe_tuning.py: the candidate named like the fast recipe is exactly
    configs/cifar10.py's FAST; CNN+1x1's rate candidates scale every group's rate around FAST with
    BatchNorm at 1x1; 10,000 training and 5,000 validation images, 4 epochs, one seed."""
    from deepnmf_jax.configs import cifar10

    sweep = spec.load(str(ROOT / "configs" / "sweeps" / "recipe_tuning.py") + ":cnn_1x1")
    variants = {v.name: v.overrides for v in grid.variants(list(sweep.points))}
    assert variants["cosine_sample"] == cifar10.FAST
    assert variants["cosine_sample_bn1x1_lr0.5"] == {
        **cifar10.FAST,
        "model.batch_norm_1x1": True,
        "optim.lr_a": 0.005,
        "optim.lr_b": 0.0005,
        "optim.lr_bn": 0.0005,
    }
    assert variants["cosine_sample_bn1x1_ema"]["optim.ema_decay"] == 0.998
    base = sweep.base
    assert base.model.name == "cnn_1x1" and base.num_epochs == 4 and base.num_seeds == 1
    assert (base.data.train_limit, base.data.validation_size) == (15_000, 5_000)
    planned = spec.plan(sweep, ["cosine_sample_bn1x1*"])  # every key exists in the config
    assert [p.name for p in planned] == [
        f"cosine_sample_bn1x1{s}" for s in ("", "_lr0.5", "_lr2", "_ls", "_ema", "_wd", "_batch100")
    ]
    batch100 = planned[-1].config
    assert (batch100.batch_size, batch100.optim.lr_batch_scaling) == (100, "sqrt")
    assert planned[-2].config.optim.weight_decay == 0.05 and planned[-2].config.batch_size == 50
    assert not [name for name in variants if "train_iter" in name]  # NMF models only
    nmf = spec.load(str(ROOT / "configs" / "sweeps" / "recipe_tuning.py"))
    planned = spec.plan(nmf, ["*train_iter*"])
    assert {p.name: p.config.model.train_iterations for p in planned} == {
        "cosine_sample_train_iter10": 10,
        "cosine_sample_train_iter5": 5,
    }


def test_pareto_front_on_hand_made_points():
    params = [100, 200, 200, 300, 50, 300, 400]
    accuracy = [0.5, 0.7, 0.6, 0.7, 0.4, 0.8, 0.8]
    # 200/0.6 loses to 200/0.7 (equal parameters); 300/0.7 to 200/0.7 (equal accuracy);
    # 400/0.8 to 300/0.8; the rest trade parameters for accuracy.
    np.testing.assert_array_equal(
        report.pareto_front(params, accuracy), [True, True, False, False, True, True, False]
    )
    np.testing.assert_array_equal(report.pareto_front([5, 5], [0.3, 0.3]), [True, True])  # a tie
    with pytest.raises(ValueError, match="1-d of one length"):
        report.pareto_front([1, 2], [0.1])


# --- whole sweeps ----------------------------------------------------------------------------------


def _sweep(*args, timeout=600):
    return run_module("deepnmf_jax", "sweep", *args, timeout=timeout)


def test_local_sweep_runs_reports_and_reruns_nothing(local_sweep):
    folder, output = local_sweep
    assert "starting 4" in output and "4 done of 4" in output
    plan = json.loads((folder / "sweep.json").read_text())
    names = [v["name"] for v in plan["variants"]]
    assert names == [
        "model=cnn,seed=21",
        "model=cnn,seed=22",
        "model=cnmf,seed=21",
        "model=cnmf,seed=22",
    ]
    for name in names:
        results = json.loads((folder / name / "results.json").read_text())
        assert results["epochs_completed"] == 30 and results["parameters"]["batchnorm"] == 24
        # the variants' processes inherit the allocator the command re-executed itself on
        assert results["machine"]["allocator"] == ALLOCATOR
    code, output = _sweep("run", "--config", SMOKE, "--workdir", str(folder), f"--config.{EPOCHS}")
    assert code == 0 and "(4 done); starting 0" in output, output
    code, output = _sweep("report", "--workdir", str(folder))
    assert code == 0, output
    for name in ("fig5.png", "fig5.svg", "learning_curves.png", "learning_curves.svg"):
        assert (folder / name).stat().st_size > 10_000, name
    table = (folder / "summary.md").read_text()
    assert "| model=cnmf,seed=22 | done | 30 | 1 | 2,780 (2,756 / 0 / 24) |" in table
    assert "4 of 4 variants done" in table
    assert table.startswith(
        "# sweep smoke (a test of the machinery: its accuracy is not meant to be"
    )
    csv_lines = (folder / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith(
        "variant,state,epochs,seeds,params_total"
    )


def test_a_failed_variant_is_reported_and_the_others_finish(tmp_path):
    sweep_file = tmp_path / "two.py"
    sweep_file.write_text(
        "from deepnmf_jax.configs.sweeps import smoke\n"
        "from deepnmf_jax.experiments import grid\n\n"
        "def get_config():\n"
        "    sweep = smoke.get_config()\n"
        "    sweep.points = grid.concat(\n"
        "        [{'model.name': 'cnn'}],\n"
        "        [{'model.name': 'cnmf', 'data.source': 'folder', 'data.data_dir': 'missing'}],\n"
        "    )\n"
        "    return sweep\n"
    )
    code, output = _sweep("run", "--config", str(sweep_file), "--workdir", str(tmp_path / "run"))
    assert code == 0, output
    code, output = _sweep("status", "--workdir", str(tmp_path / "run"))
    lines = {line.split()[0]: line for line in output.splitlines()[1:-1]}
    assert " done " in lines["model=cnn"]
    failed = lines["model=cnmf,source=folder,data_dir=missing"]
    assert (
        " failed " in failed and "DataNotFoundError: could not find the cifar10 dataset" in failed
    )
    assert "1 done, 1 failed of 2" in output
    code, output = _sweep("status", "--workdir", str(tmp_path / "nothing"))
    assert code == 1 and "holds no sweep" in output


def test_dry_run_lists_parameters_and_trains_nothing(tmp_path):
    code, output = _sweep("run", "--config", "sweeps/fig5", "--dry-run")
    assert code == 0, output
    assert "model=cnmf_1x1    167,886    152,864     14,638    384   0.09576        424" in output
    assert output.splitlines()[0].split()[-2:] == ["CNN/NMF", "MFLOP/img"]
    assert "4 variants, 0 skipped" in output
    code, output = _sweep(
        "run", "--config", SMOKE, "--workdir", str(tmp_path), "--config.model.nmae=cnn"
    )
    assert code == 1 and "error: unknown config key model.nmae" in output


# --- a real SLURM cluster --------------------------------------------------------------------------

needs_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None
    or subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0,
    reason="no SLURM cluster here (sbatch missing or slurmctld down): "
    "run `bash scripts/slurm_local.sh install && bash scripts/slurm_local.sh start` as root",
)


def _job_id(variant: pathlib.Path) -> str:
    return json.loads((variant / "job.json").read_text())["job_id"]


def _wait(condition, timeout=240, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def _epochs(variant: pathlib.Path) -> int:
    metrics = variant / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _queue_state(job: str) -> str:
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%T %r", "--jobs", job], capture_output=True, text=True
    )
    return listed.stdout.strip()


@needs_slurm
def test_slurm_preemption_requeues_and_a_cancelled_job_reruns_with_identical_results(
    local_sweep, tmp_path
):
    """On a real slurmctld/slurmd: one variant is preempted (SIGUSR2, as SLURM sends it before a
    time limit): it saves, submitit requeues it and it resumes. The other is cancelled (scancel);
    rerunning ``run`` resubmits it and it resumes. Both end bit-identical to the uninterrupted local
    runs of the same configs."""
    reference, _ = local_sweep
    folder = tmp_path / "slurm"
    args = (
        "run",
        "--config",
        SMOKE,
        "--workdir",
        str(folder),
        "--executor",
        "slurm",
        "--only",
        "model=cnmf",
    )
    code, output = _sweep(*args, "--slurm-cpus-per-task=1", f"--config.{EPOCHS}")
    assert code == 0 and "submitted 2 jobs" in output, output
    preempted, cancelled = folder / "model=cnmf,seed=21", folder / "model=cnmf,seed=22"
    _wait(lambda: _epochs(preempted) >= 1 and _epochs(cancelled) >= 1, what="first epochs")
    subprocess.run(["scancel", "--signal=USR2", _job_id(preempted)], check=True)
    subprocess.run(["scancel", _job_id(cancelled)], check=True)
    # SLURM holds a requeued job for two minutes; an administrator's "start now" skips the wait.
    _wait(lambda: "BeginTime" in _queue_state(_job_id(preempted)), what="the requeue")
    subprocess.run(
        ["scontrol", "update", f"jobid={_job_id(preempted)}", "StartTime=now"], check=True
    )
    _wait(lambda: not _queue_state(_job_id(cancelled)), what="the cancelled job to leave")
    code, output = _sweep("status", "--workdir", str(folder))
    assert "model=cnmf,seed=22" in output and " stopped " in output, output
    assert 0 < _epochs(cancelled) < 30
    code, output = _sweep(*args, "--slurm-cpus-per-task=1", f"--config.{EPOCHS}", "--wait")
    assert code == 0 and "starting 1" in output, output  # the preempted one is still queued/running
    _wait(lambda: not _queue_state(_job_id(preempted)), what="the requeued job to finish")
    log = next((folder / "logs").glob(f"{_job_id(preempted)}*_log.out")).read_text()
    assert "stopped by SIGUSR2" in log and "Requeued job" in log and "resumed from epoch" in log
    for variant in (preempted, cancelled):
        assert_trees_equal(final_state(reference / variant.name), final_state(variant))
        ours = json.loads((variant / "results.json").read_text())
        theirs = json.loads((reference / variant.name / "results.json").read_text())
        assert ours["per_seed"] == theirs["per_seed"] and ours["epochs_completed"] == 30
        assert ours["machine"]["allocator"] == ALLOCATOR  # sbatch passes on the preload


def test_fig6_draws_hand_made_rows_with_a_partial_one(tmp_path):
    def row(name, total, nmf, accuracy, partial=False):
        conv = total - nmf - 384
        return report.Row(
            name=name,
            model="cnmf_1x1",
            state="running" if partial else "done",
            partial=partial,
            epochs=3,
            seeds=2,
            parameters={
                "total": total,
                "nmf": nmf,
                "conv": conv,
                "batchnorm": 384,
                "cnn_nmf_ratio": conv / nmf,
            },
            final={"mean": accuracy, "std": 0.01},
            best={"mean": accuracy, "std": 0.01},
            val_final=None,
            val_best=None,
            train_hours=0.1,
            history=[],
        )

    rows = [row("a", 50_000, 40_000, 0.6), row("b", 170_000, 150_000, 0.7, partial=True)]
    rows += [
        row("c", 600_000, 500_000, 0.65),
        report.Row(
            "d", "cnmf_1x1", "not started", False, 0, 0, None, None, None, None, None, None, []
        ),
    ]
    paths = figures.fig6(rows, tmp_path, "hand-made")
    assert [p.name for p in paths] == ["fig6.png", "fig6.svg"]
    assert all(p.stat().st_size > 20_000 for p in paths)


def test_damaged_variant_files_are_one_warning_each_and_the_healthy_ones_reported(
    local_sweep, tmp_path
):
    """A results.json of the wrong shape, a truncated one, a NaN accuracy and a torn first line
    of metrics.jsonl: each named in one warning line, and the healthy variant still reported."""
    folder = tmp_path / "sweep"
    shutil.copytree(local_sweep[0], folder)
    wrong_shape = folder / "model=cnn,seed=21" / "results.json"
    wrong_shape.write_text(json.dumps({"final_test_accuracy": [0.5], "epochs_completed": "30"}))
    truncated = folder / "model=cnn,seed=22" / "results.json"
    truncated.write_text(truncated.read_text()[:40])
    nan = folder / "model=cnmf,seed=21" / "results.json"
    results = json.loads(nan.read_text())
    results["final_test_accuracy"]["mean"] = float("nan")
    nan.write_text(json.dumps(results))
    torn = folder / "model=cnn,seed=22" / "metrics.jsonl"
    lines = torn.read_text().splitlines()
    torn.write_text("\n".join([lines[0][:25], *lines[1:]]) + "\n")
    damaged = {wrong_shape, truncated, nan, torn}
    for command in ("status", "report"):
        code, output = _sweep(command, "--workdir", str(folder))
        assert code == 0 and "Traceback" not in output, output
        warnings_printed = [line for line in output.splitlines() if "warning" in line.lower()]
        for path in damaged:
            assert sum(str(path) in line for line in warnings_printed) == 1, (path, output)
        assert len(warnings_printed) == len(damaged), output
    table = (folder / "summary.md").read_text()
    healthy = json.loads((folder / "model=cnmf,seed=22" / "results.json").read_text())
    accuracy = f"{100 * healthy['final_test_accuracy']['mean']:.2f}"
    assert "| model=cnmf,seed=22 | done | 30 |" in table and accuracy in table, table
    assert "nan" not in table.lower(), table
