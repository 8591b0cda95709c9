"""Nothing lost and nothing written where it should not be: the trainer under faults, with real
processes killed for real, real symbolic links, a real full disk (a small tmpfs) and hostile files.

Point 1 (a kill during the ``best/`` save) is in tests/test_train.py, beside the uninterrupted run it
compares with; the sweep's damaged records (point 6) are in tests/test_sweep.py, on its trained
sweep.
"""

import gzip
import hashlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile

import pytest

from deepnmf_jax.experiments import grid, runner
from tests import runners
from tests.runners import ROOT, subprocess_env
from tests.test_train import _cli, _finish, _wait_for_epoch

SMALL = ["--config.num_seeds=1", "--config.data.train_limit=60"]


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their target) with its sha256; the lock file's
    content is who holds the folder now, so only its presence counts."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.name == ".lock":
            out[".lock"] = "present"
            continue
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def _one_error(code: int, output: str) -> str:
    """The one ``error:`` line of a failed command (printed: ``pytest -rP`` shows what users see)."""
    errors = _lines(output, "error:")
    assert code == 1 and len(errors) == 1 and "Traceback" not in output, output
    print(errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run (copied by the tests that change it)."""
    workdir = tmp_path_factory.mktemp("finished")
    code, output = _finish(_cli(workdir, "--config.num_epochs=2", *SMALL))
    assert code == 0, output
    return workdir


def _copy(run: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    subprocess.run(["cp", "-a", str(run), str(to)], check=True)
    return to


# --- 2: a finished run whose checkpoints/ is gone -------------------------------------------------


def test_a_run_without_its_checkpoints_is_not_restarted_silently(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    subprocess.run(["rm", "-r", str(run / "checkpoints")], check=True)
    before = _snapshot(run)
    line = _one_error(*_finish(_cli(run, "--config.num_epochs=2", *SMALL)))
    assert "no checkpoint in checkpoints/" in line and "nothing was changed" in line, line
    assert "--restart-from best" in line and "--restart-from scratch" in line, line
    assert _snapshot(run) == before
    code, output = _finish(_cli(run, "--config.num_epochs=2", "--restart-from", "scratch", *SMALL))
    assert code == 0, output
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_completed"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


# --- 3: symbolic links are never written through -------------------------------------------------


def test_a_planted_lock_link_is_refused_and_its_target_untouched(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(target)
    line = _one_error(*_finish(_cli(run, "--config.num_epochs=3", *SMALL)))
    assert ".lock" in line and "symbolic link" in line, line
    assert target.read_text() == "keep me\n"


def test_a_metrics_file_swapped_for_a_link_mid_run_stops_the_run(tmp_path):
    run, target = tmp_path / "run", tmp_path / "precious.txt"
    target.write_text("keep me\n")
    process = _cli(run, "--config.num_epochs=4", *SMALL)
    _wait_for_epoch(run, 1, process)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(target)
    code, output = _finish(process)
    line = _one_error(code, output)
    assert "metrics.jsonl" in line and "symbolic link" in line, line
    assert target.read_text() == "keep me\n"


def test_a_config_changes_link_is_refused_on_a_resume_that_records_a_change(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / "config_changes.jsonl").unlink(missing_ok=True)
    (run / "config_changes.jsonl").symlink_to(target)
    # log_every_steps may change on a resume, and the change is recorded
    code, output = _finish(_cli(run, "--config.num_epochs=3", "--config.log_every_steps=2", *SMALL))
    line = _one_error(code, output)
    assert "config_changes.jsonl" in line and "symbolic link" in line, line
    assert target.read_text() == "keep me\n"


def test_atomic_writes_replace_a_link_and_never_touch_its_target(tmp_path):
    from deepnmf_jax.training import workdir

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    for name in ("results.json", "job.json", "failed.json"):
        link = tmp_path / name
        link.symlink_to(target)
        workdir.atomic_write_text(link, "{}")
        assert not link.is_symlink() and link.read_text() == "{}"
    with pytest.raises(OSError, match="symbolic link"):
        (tmp_path / "log.jsonl").symlink_to(target)
        workdir.append_text(tmp_path / "log.jsonl", "{}\n")
    assert target.read_text() == "keep me\n"


# --- 4: a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB file system (tmpfs); skipped where mounting is not allowed."""
    with runners.mounted_tmpfs(tmp_path / "disk", "8m") as mount_point:
        yield mount_point


def _fill(disk: pathlib.Path) -> pathlib.Path:
    """Fills the file system to the last byte; returns the filler file."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 1):
            while True:
                try:
                    os.write(descriptor, bytes(size))
                except OSError:
                    break
    finally:
        os.close(descriptor)
    return filler


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_cleans_up_after(small_disk):
    run = small_disk / "run"
    # full before the start
    filler = _fill(small_disk)
    line = _one_error(*_finish(_cli(run, "--config.num_epochs=3", *SMALL)))
    assert "disk is full" in line or "No space left" in line, line
    filler.unlink()
    # full in the middle of the run
    process = _cli(run, "--config.num_epochs=3", *SMALL)
    _wait_for_epoch(run, 1, process)
    filler = _fill(small_disk)
    code, output = _finish(process)
    line = _one_error(code, output)
    assert "the disk is full" in line and "free)" in line, line
    assert "last complete checkpoint" in line and "is kept" in line, line
    assert len(output.splitlines()) < 40, output
    filler.unlink()
    # with space again, the same command cleans what the failure left and finishes
    code, output = _finish(_cli(run, "--config.num_epochs=3", *SMALL))
    assert code == 0, output
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert not leftovers
    assert json.loads((run / "results.json").read_text())["epochs_completed"] == 3


# --- 5: a damaged checkpoint is one warning line --------------------------------------------------


def test_a_damaged_latest_checkpoint_is_one_warning_line(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    latest = max((run / "checkpoints").iterdir(), key=lambda d: int(d.name))
    for path in latest.rglob("*"):
        if path.is_file() and "ocdbt" in str(path) and path.stat().st_size > 16:
            path.write_bytes(path.read_bytes()[:8])
    code, output = _finish(_cli(run, "--config.num_epochs=3", *SMALL))
    assert code == 0, output
    warnings_printed = _lines(output, "warning:")
    assert len(warnings_printed) == 1, output
    assert "Traceback" not in output and "Event loop" not in output, output
    assert "TensorStore details" not in warnings_printed[0], warnings_printed[0]
    print(warnings_printed[0])


# --- 7, 8: the sweep's plan ------------------------------------------------------------------------

MERGER = """
import dataclasses, pathlib, sys
from deepnmf_jax.experiments import runner, spec
folder, who, count = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sweep = spec.load({smoke!r})
first = spec.plan(sweep)[0]
for i in range(count):
    runner.merge_plan(folder, sweep, "smoke.py", [dataclasses.replace(first, name=f"{{who}}-{{i}}")])
"""


def test_concurrent_sweep_runs_lose_no_variant_of_the_plan(tmp_path):
    from tests.runners import SMOKE

    code = MERGER.format(smoke=SMOKE)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), who, "40"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for who in ("a", "b", "c")
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    names = {v["name"] for v in runner.load_plan(tmp_path)["variants"]}
    assert {f"{who}-{i}" for who in "abc" for i in range(40)} <= names


SWEEP_FILE = """
from deepnmf_jax.configs.sweeps import smoke


def get_config():
    config = smoke.get_config()
    config.points = [{{"variant": {name!r}, "seed": 1}}]
    return config
"""


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "../../escape"])
def test_a_variant_name_that_is_not_one_folder_is_refused_at_plan_time(tmp_path, name):
    assert not grid.is_folder_name(name)
    sweep_file = tmp_path / "bad_sweep.py"
    sweep_file.write_text(SWEEP_FILE.format(name=name))
    code, output, _ = _run_measured(
        "sweep", "run", "--config", sweep_file, "--workdir", tmp_path / "sweep", "--dry-run"
    )
    line = _one_error(code, output)
    assert "cannot be a folder name" in line, line
    assert not (tmp_path / "sweep").exists() or not any((tmp_path / "sweep").iterdir())


# --- 9: size caps on untrusted files ---------------------------------------------------------------


MEASURED = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(done.returncode)"
)


def _run_measured(*args) -> tuple[int, str, float]:
    """A ``deepnmf`` command in a real process: (exit status, its output, its peak memory in MB)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, sys.executable, "-m", "deepnmf_jax", *map(str, args)],
        cwd=ROOT,
        env=subprocess_env(DEEPNMF_NO_DOWNLOAD="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output, _, peak = done.stdout.rpartition("peak_kb ")
    return done.returncode, output + done.stderr, int(peak) / 1024


def _tar_gz_with_a_member_claiming(path: pathlib.Path, member: str, size: int) -> None:
    info = tarfile.TarInfo(member)
    info.size = size
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096))


def test_archives_declaring_more_than_their_format_holds_are_refused_before_reading(tmp_path):
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    _tar_gz_with_a_member_claiming(
        cifar / "cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1", 2 * 2**30
    )
    fmnist = tmp_path / "fmnist"
    fmnist.mkdir()
    header = (2051).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (1_000_000, 1000, 1000)
    )  # 931 GiB of images declared
    for prefix in ("train", "t10k"):
        (fmnist / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
        labels = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3)
        (fmnist / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    state_dict = tmp_path / "model.npz"
    state_dict.write_bytes(_zip_claiming(2 * 2**30))
    for args, what in (
        (
            [
                "train",
                "--config",
                "cifar10",
                "--workdir",
                tmp_path / "r1",
                f"--config.data.data_dir={cifar}",
            ],
            "refusing it",
        ),
        (
            [
                "train",
                "--config",
                "fashion_mnist",
                "--workdir",
                tmp_path / "r2",
                f"--config.data.data_dir={fmnist}",
            ],
            "",
        ),
        (
            [
                "import-reference",
                "--state-dict",
                state_dict,
                "--model",
                "cnmf_1x1",
                "--workdir",
                tmp_path / "r3",
            ],
            "declares",
        ),
    ):
        code, output, peak_mb = _run_measured(*args)
        line = _one_error(code, output)
        assert what in line, line
        assert peak_mb < 1500, (peak_mb, line)


def _zip_claiming(size: int) -> bytes:
    """A zip whose one member's header declares ``size`` bytes (it holds a few)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("conv.weight.npy", b"\x93NUMPY" + b"\0" * 64)
    data = bytearray(buffer.getvalue())
    # the central directory's uncompressed size (offset 24 in its record) and the local header's
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (size % 2**32).to_bytes(4, "little")
    data[22:26] = (size % 2**32).to_bytes(4, "little")
    return bytes(data)


# --- 10: Ctrl-C before the first step ---------------------------------------------------------------


def test_ctrl_c_during_a_long_pass_before_training_exits_at_once(tmp_path):
    process = _cli(
        tmp_path / "run",
        "--config.num_epochs=1",
        "--config.model.iterations=100000",
        "--config.progress=True",
        *SMALL,
    )
    received: list[str] = []  # the output so far, character by character (progress bars use \r)
    reader = threading.Thread(
        target=lambda: received.extend(iter(lambda: process.stdout.read(1), ""))
    )
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while "dead channels at init" not in "".join(received):
            assert time.monotonic() < deadline and process.poll() is None, "".join(received)
            time.sleep(0.1)
        time.sleep(1)  # inside the pass: one evaluation batch at 100,000 iterations takes minutes
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        process.kill()
        reader.join()
        process.stdout.close()
    output = "".join(received)
    assert process.returncode == 130, output
    assert "nothing to save" in output and "Traceback" not in output, output
    assert "model.iterations = 100000" in output and "5000x the paper's" in output, output


# --- 11: evaluate's one-line errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: {**c, "data": {**c["data"], "name": "cifar11"}}, "config.data.name must be"),
        (lambda c: {**c, "eval_batch_size": 0}, "config.eval_batch_size must be >= 1, got 0"),
        (lambda c: [c], "config must be a mapping"),
    ],
)
def test_evaluate_with_a_hand_edited_config_is_one_line(finished_run, tmp_path, edit, expected):
    run = _copy(finished_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(edit(config)))
    code, output, _ = _run_measured("evaluate", "--workdir", run)
    assert expected in _one_error(code, output)


def test_evaluate_on_a_read_only_run_is_one_line_before_any_work(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    subprocess.run(["chmod", "-R", "a-w", str(run)], check=True)
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(run), str(run)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot bind-mount read-only here: {mounted.stderr.decode().strip()}")
    try:
        code, output, _ = _run_measured("evaluate", "--workdir", run)
    finally:
        subprocess.run(["umount", str(run)], check=True)
        subprocess.run(["chmod", "-R", "u+w", str(run)], check=True)
    line = _one_error(code, output)
    assert "not writable" in line, line
    assert "accuracy" not in output  # nothing was computed first


def test_compile_time_is_recorded_apart_from_the_epochs(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    history = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert results["compile_time_s"] > 0
    # the training time is the epochs' own times, which count steps only
    assert results["train_time_s"] == pytest.approx(sum(e["epoch_time_s"] for e in history))
