"""A workdir that nothing can corrupt, and one-line errors for what a user can get wrong."""

import dataclasses
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deepnmf_jax import errors
from deepnmf_jax.data import pipeline as input_pipeline
from deepnmf_jax.training import checkpoint as checkpointing
from deepnmf_jax.training import checks, workdir
from deepnmf_jax.training import loop as train_lib
from deepnmf_jax.training.config import from_any
from deepnmf_jax.training.state import Progress
from tests import runners
from tests.test_train import ROOT, _cli, _finish, _wait_for_epoch, tiny_config

QUIET = {"tensorboard": False, "model.name": "cnmf"}


# --- the lock -------------------------------------------------------------------------------------


def test_a_second_run_in_the_same_workdir_is_refused_naming_the_holder(tmp_path):
    with workdir.exclusive(tmp_path):
        with pytest.raises(workdir.WorkdirInUse, match=rf"in use by process {os.getpid()} on "):
            with workdir.exclusive(tmp_path):
                pass
        code, output = _finish(_cli(tmp_path, "--config.num_epochs=1"))
    assert code == 1 and f"is in use by process {os.getpid()}" in output
    assert "Traceback" not in output and not (tmp_path / "metrics.jsonl").exists()
    with workdir.exclusive(tmp_path):  # released on exit
        pass


# --- checkpoints: checksums, damage, advice -------------------------------------------------------


def _tamper(step_dir: pathlib.Path, delta: float = 1.0) -> None:
    """Rewrites a checkpoint with one parameter changed, through orbax itself: it loads without
    error, as a flipped bit in a data file can, but no longer matches its stored checksum."""
    checkpointer = ocp.PyTreeCheckpointer()
    path = step_dir / "state"
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, restore_args=as_numpy)
    state["params"]["block1"]["a"]["kernel"] = state["params"]["block1"]["a"]["kernel"] + delta
    checkpointer.save(path, state, force=True)


def _steps(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def test_a_checkpoint_that_loads_but_is_damaged_is_caught_by_its_checksum(tmp_path):
    train_lib.train_and_evaluate(tiny_config(num_epochs=2, **QUIET), tmp_path)
    latest = _steps(tmp_path / "checkpoints")[-1]
    _tamper(latest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = train_lib.train_and_evaluate(tiny_config(num_epochs=3, **QUIET), tmp_path)
    messages = [str(w.message) for w in caught if w.category is checkpointing.CheckpointWarning]
    assert len(messages) == 1 and "do not match their stored checksum" in messages[0]
    assert "\n" not in messages[0]
    assert results["epochs_completed"] == 3  # resumed from epoch 1, the older checkpoint


def test_every_checkpoint_damaged_is_one_line_offering_best(tmp_path):
    train_lib.train_and_evaluate(tiny_config(num_epochs=2, **QUIET), tmp_path)
    for step_dir in _steps(tmp_path / "checkpoints"):
        _tamper(step_dir)
    code, output = _finish(
        _cli(tmp_path, "--config.num_epochs=3", base_flags=_flags_of(tiny_config(**QUIET)))
    )
    assert code == 1, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in output
    line = error_lines[0]
    assert "no checkpoint in" in line and "step 12" in line and "step 6" in line
    assert "--restart-from best" in line and "rm -r" in line
    warning_lines = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 2, output  # one line for each checkpoint tried
    # the advice works: without checkpoints/, --restart-from best goes on from best/
    shutil.rmtree(tmp_path / "checkpoints")
    flags = _flags_of(tiny_config(**QUIET))
    code, output = _finish(_cli(tmp_path, "--config.num_epochs=3", base_flags=flags))
    assert code == 1 and "--restart-from best" in output and "nothing was changed" in output
    code, output = _finish(
        _cli(tmp_path, "--config.num_epochs=3", "--restart-from", "best", base_flags=flags)
    )
    assert code == 0, output
    assert "restarting from best/" in output and "resumed from epoch" in output


def _flags_of(config) -> list[str]:
    """``--config.KEY=VALUE`` flags that reproduce ``tiny_config`` overrides on the sample config."""
    flat = {
        "num_seeds": config.num_seeds,
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "model.name": config.model.name,
        "model.width": config.model.width,
        "model.iterations": config.model.iterations,
        "data.train_limit": config.data.train_limit,
        "data.test_limit": config.data.test_limit,
        "progress": config.progress,
        "tensorboard": config.tensorboard,
    }
    return [f"--config.{k}={v}" for k, v in flat.items()]


# --- side files and failed starts -----------------------------------------------------------------


def test_a_rejected_start_writes_nothing_and_the_corrected_command_runs(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match=r"batch_size = 100 is larger than the 60"):
        train_lib.train_and_evaluate(tiny_config(batch_size=100, **QUIET), run)
    assert not run.exists()
    results = train_lib.train_and_evaluate(tiny_config(**QUIET), run)
    assert results["epochs_completed"] == 1


def test_damaged_side_files_do_not_block_a_resume(tmp_path):
    train_lib.train_and_evaluate(tiny_config(num_epochs=2, **QUIET), tmp_path)
    (tmp_path / "config.json").write_text("")  # a crash while writing it (before: not atomic)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "train_lo')  # a torn last line
    with pytest.warns(UserWarning) as caught:
        results = train_lib.train_and_evaluate(tiny_config(num_epochs=3, **QUIET), tmp_path)
    texts = " ".join(str(w.message) for w in caught)
    assert "config.json is empty" in texts and "torn last line" in texts
    assert results["epochs_completed"] == 3
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "cnmf"


def test_num_epochs_may_change_on_resume_only_under_the_plateau_schedule(tmp_path):
    saved = json.loads(tiny_config(num_epochs=3).to_json())
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir.check_config_matches(tmp_path, from_any({**saved, "num_epochs": 50})) == {
        "num_epochs": [3, 50]
    }
    assert workdir.check_config_matches(tmp_path, from_any(saved)) == {}
    cosine = json.loads(tiny_config(num_epochs=3, **{"optim.schedule": "cosine"}).to_json())
    (tmp_path / "config.json").write_text(json.dumps(cosine))
    with pytest.raises(errors.ConfigError, match=r"num_epochs: 3 -> 50\) \(num_epochs sets the"):
        workdir.check_config_matches(tmp_path, from_any({**cosine, "num_epochs": 50}))


def test_a_run_written_before_a_key_existed_resumes_and_opens_with_its_old_value(tmp_path):
    current = json.loads(tiny_config().to_json())
    older = json.loads(json.dumps(current))
    del older["model"]["batch_norm_1x1"]  # a run from before the option
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert workdir.check_config_matches(tmp_path, from_any(current)) == {}
    assert workdir.read_config(tmp_path).model.batch_norm_1x1 is False
    changed = json.loads(json.dumps(current))
    changed["model"]["batch_norm_1x1"] = True
    with pytest.raises(errors.ConfigError, match=r"model.batch_norm_1x1: False -> True"):
        workdir.check_config_matches(tmp_path, from_any(changed))


def test_a_checkpoint_from_when_one_kind_of_dead_channel_was_counted_keeps_its_init_counts(
    tmp_path,
):
    """Checkpoints used to store the dead channels at initialisation as a bare list of the one
    kind each model counted; they resume with that list under the metric their epochs name."""
    state = {"w": np.arange(3.0, dtype=np.float32)}
    checkpoints = checkpointing.Checkpoints(tmp_path)
    progress = dataclasses.asdict(Progress.start(2))
    del progress["dead_channels_at_init"]
    history = [{"epoch": 1, "dead_class_channels": [7, 6]}]
    meta = {"progress": {**progress, "epoch": 1, "dead_class_channels_at_init": [7, 5]}}
    checkpoints.save(100, state, {**meta, "history": history})
    checkpoints.wait()
    _, restored, _ = checkpointing.restore_run(checkpoints, state, lambda x: x, tmp_path)
    assert restored.epoch == 1 and restored.dead_channels_at_init == {"dead_class_channels": [7, 5]}


def test_atomic_write_and_torn_line_rules(tmp_path):
    path = tmp_path / "a.json"
    workdir.atomic_write_text(path, "one")
    workdir.atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    lines = tmp_path / "m.jsonl"
    lines.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')  # a bad line in the middle is an error
    with pytest.raises(errors.WorkdirError, match="line 2 is not valid JSON"):
        workdir.read_jsonl(lines)


# --- Ctrl-C with a piped output --------------------------------------------------------------------


def test_ctrl_c_with_the_output_pipe_closed_still_saves_and_exits_130(tmp_path):
    """``train.py ... | tee log`` and Ctrl-C: the pipe's reader dies first, then SIGINT arrives."""
    process = _cli(tmp_path, "--config.num_epochs=50", "--config.progress=True")
    _wait_for_epoch(tmp_path, 1, process)
    process.stdout.close()  # the reader is gone: every later write gets EPIPE
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    progress = json.loads((_steps(tmp_path / "checkpoints")[-1] / "meta" / "metadata").read_text())[
        "progress"
    ]
    assert progress["epoch"] >= 1


# --- values and inputs a user can get wrong --------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"optim.lr_a": -0.01}, r"config\.optim\.lr_a must be >= 0, got -0\.01"),
        ({"model.iterations": 0}, r"config\.model\.iterations must be >= 1, got 0"),
        ({"data.train_limit": -5}, r"config\.data\.train_limit must be >= 0, got -5"),
        ({"optim.b2": 1.5}, r"config\.optim\.b2 must be in \[0, 1\), got 1\.5"),
        ({"data.validation_size": -1}, r"config\.data\.validation_size must be >= 0"),
        ({"label_smoothing": 1.0}, r"config\.label_smoothing must be in \[0, 1\), got 1\.0"),
        ({"optim.ema_decay": -0.1}, r"config\.optim\.ema_decay must be in \[0, 1\)"),
        ({"optim.schedule": "linear"}, r"config\.optim\.schedule must be one of"),
        (
            {"optim.schedule": "cosine", "optim.warmup_epochs": 1.0},
            r"warmup_epochs = 1\.0 must be less than num_epochs = 1",
        ),
        (
            {"optim.schedule": "onecycle", "num_epochs": 4},
            r"final_lr_fraction must be in \(0, 1\] for onecycle, got 0\.0",
        ),
        ({"model.groups_mix": 0}, r"config\.model\.groups_mix must be >= 1, got 0"),
        ({"model.name": "cnmf", "model.head": "linear"}, r"'cnmf' ends with an NMF layer"),
    ],
)
def test_bad_values_are_named_with_their_allowed_range(overrides, message):
    with pytest.raises(errors.ConfigError, match=message):
        from_any(tiny_config(**overrides))


def test_bad_data_is_named(tmp_path):
    sample = input_pipeline.load_sample()
    with pytest.raises(errors.ConfigError, match=r"crop_size = 40 is larger than the 32 x 32"):
        checks.check_data(tiny_config(**{"augment.crop_size": 40}), sample)
    bad_labels = input_pipeline.Split(sample.train.images[:20], np.full(20, 10, np.int32))
    data = input_pipeline.Dataset("cifar10", bad_labels, sample.test, 10, "test")
    with pytest.raises(errors.DataError, match=r"20 train labels outside \[0, 10\), e.g. label 10"):
        checks.check_data(tiny_config(batch_size=10), data)
    with pytest.raises(
        errors.ConfigError, match=r"groups_nmf 3, .*NMFConv block2/a: groups=3 must divide"
    ):
        checks.build_checked(tiny_config(**{"model.groups_nmf": 3}), 10, (32, 32, 3))


def _write_folder(folder: pathlib.Path, members: list[str]) -> None:
    sample = input_pipeline.load_sample()
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True)
    data = sample.train.images[:10].transpose(0, 3, 1, 2).reshape(10, 3072)
    for member in members:
        batch = {b"data": np.ascontiguousarray(data), b"labels": sample.train.labels[:10].tolist()}
        (target / member).write_bytes(pickle.dumps(batch))


def test_cli_one_line_errors_for_what_a_user_can_get_wrong(tmp_path):
    """Each case: exit status 1, one ``error:`` line, no traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    archive = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"
    head = archive.read_bytes()[:50_000] if archive.exists() else b"\x1f\x8b\x08" + b"0" * 500
    (truncated / "cifar-10-python.tar.gz").write_bytes(head)
    not_gzip = tmp_path / "not_gzip"
    not_gzip.mkdir()
    (not_gzip / "cifar-10-python.tar.gz").write_bytes(b"this is not an archive")
    missing = tmp_path / "missing"
    _write_folder(missing, ["data_batch_1", "data_batch_2", "test_batch"])
    cases = {
        "unknown key": (
            ["--config.model.nmae=cnn"],
            "unknown config key model.nmae; did you mean model.name?",
        ),
        "workdir a file": ([], "is a file, not a directory"),
        "truncated": (
            ["--config.data.source=folder", f"--config.data.data_dir={truncated}"],
            "is not the official c58f30108f718f92721af3b95e74349a",
        ),
        "not gzip": (
            ["--config.data.source=folder", f"--config.data.data_dir={not_gzip}"],
            "cannot read",
        ),
        "missing batches": (
            ["--config.data.source=folder", f"--config.data.data_dir={missing}"],
            "is incomplete or damaged",
        ),
        "mesh": (["--config.mesh.seed_devices=3"], "seed"),
    }
    for name, (flags, expected) in cases.items():
        run = a_file if name == "workdir a file" else tmp_path / f"run_{name.replace(' ', '_')}"
        code, output = _finish(_cli(run, *flags))
        errors_printed = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors_printed) == 1, (name, output)
        assert expected in errors_printed[0] and "Traceback" not in output, (name, output)
    code, output = _finish(
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                "--config=configs/cifar10.py:sample",
                f"--workdir={a_file}",
            ],
            cwd=ROOT,
            env={**os.environ, "DEEPNMF_VERBOSE": "1", "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    assert code == 1 and "Traceback" in output  # asked for


@pytest.fixture
def read_only_filesystem(tmp_path):
    """A real read-only file system (a tmpfs remounted read-only) holding an empty folder ``run``;
    even root cannot write there."""
    with runners.mounted_tmpfs(tmp_path / "ro", "1m", read_only_folder="run") as mount_point:
        yield mount_point


def test_a_read_only_workdir_is_one_line(read_only_filesystem):
    for run, expected in (
        (read_only_filesystem / "run", "run is not writable"),
        (read_only_filesystem / "new", "cannot create --workdir"),
    ):
        code, output = _finish(_cli(run, "--config.num_epochs=1"))
        errors_printed = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors_printed) == 1, output
        assert expected in errors_printed[0] and "Traceback" not in output, output
    assert "Read-only file system" in errors_printed[0]


# --- validation split ------------------------------------------------------------------------------


def test_split_off_is_fixed_disjoint_and_keeps_order():
    sample = input_pipeline.load_sample().train
    rest, held = sample.split_off(100)
    _, again_held = sample.split_off(100)
    assert len(rest) == 900 and len(held) == 100
    np.testing.assert_array_equal(held.images, again_held.images)
    ids = {img.tobytes() for img in held.images}
    assert not ids & {img.tobytes() for img in rest.images}
    first_kept = int(np.flatnonzero([img.tobytes() not in ids for img in sample.images])[0])
    np.testing.assert_array_equal(rest.images[0], sample.images[first_kept])


def test_best_is_chosen_on_validation_when_there_is_one(tmp_path):
    results = train_lib.train_and_evaluate(
        tiny_config(num_epochs=2, **QUIET, **{"data.validation_size": 20}), tmp_path
    )
    assert results["best_selected_on"] == "validation"
    assert results["dataset"]["train_size"] == 40
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = np.array([r["val_accuracy"] for r in history])
    test = np.array([r["test_accuracy"] for r in history])
    best_epoch = int(val[:, 0].argmax())
    assert results["per_seed"][0]["best_test_accuracy"] == test[best_epoch, 0]
    assert results["per_seed"][0]["best_val_accuracy"] == val[best_epoch, 0]
    plain = train_lib.train_and_evaluate(tiny_config(**QUIET), tmp_path / "plain")
    assert plain["best_selected_on"] == "test"
