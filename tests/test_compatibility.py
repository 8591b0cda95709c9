"""The redesign changed no number: the paper's four models train bit-identically to version 0.1 for the
same seed, and a run written by 0.1 (its ``config.json`` and checkpoint) resumes.

``tests/fixtures/v0_1_runs.json`` holds, per model, the sha256 of the state after one epoch of a tiny
run and its training loss, written by 0.1.0 (commit 6628618) on the JAX of this suite with the
command recorded in the file; ``tests/fixtures/v0_1_run/`` is that 0.1 run of CNMF+1x1 itself.
"""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES
from tests.runners import ROOT, subprocess_env

FIXTURE = json.loads((FIXTURES / "v0_1_runs.json").read_text())
FLAGS = [
    "--config",
    "cifar10:sample",
    "--config.num_seeds=1",
    "--config.batch_size=10",
    "--config.eval_batch_size=25",
    "--config.model.width=0.125",
    "--config.model.iterations=2",
    "--config.data.train_limit=60",
    "--config.data.test_limit=50",
    "--config.progress=False",
    "--config.tensorboard=False",
]
TRAIN_ALL = """
import sys
from deepnmf_jax.cli import main
folder, *flags = sys.argv[1:]
for model in ("cnn", "cnmf", "cnn_1x1", "cnmf_1x1"):
    args = ["train", *flags, "--config.num_epochs=1", f"--config.model.name={model}"]
    assert main([*args, "--workdir", f"{folder}/{model}"]) == 0
"""


def _checkpoint(run, step):
    return json.loads((run / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def _train_all(folder):
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ALL, str(folder), *FLAGS],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_paper_models_train_bit_identically_to_version_0_1(tmp_path):
    _train_all(tmp_path)
    for model, expected in FIXTURE["runs"].items():
        meta = _checkpoint(tmp_path / model, 6)
        assert meta["checksum"] == expected["state_checksum"], model
        record = json.loads((tmp_path / model / "metrics.jsonl").read_text().splitlines()[0])
        assert record["train_loss"] == expected["train_loss"], model
        assert record["test_accuracy"] == expected["test_accuracy"], model
        assert meta["version"] == "0.2.0"  # checkpoints record the version that wrote them


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "deepnmf_jax", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_run_written_by_version_0_1_resumes_exactly(tmp_path):
    """The 0.1 run (1 epoch) goes on to 2 epochs under 0.2 and ends where a fresh 0.2 run of 2
    epochs does: its config.json (without the keys added since) and its checkpoint are read."""
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "v0_1_run", old)
    saved = json.loads((old / "config.json").read_text())
    assert "unroll" not in saved["model"]  # written before the key existed
    common = [*FLAGS, "--config.model.name=cnmf_1x1", "--config.num_epochs=2"]
    resumed = _cli("train", *common, "--workdir", str(old))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 1" in resumed.stderr
    fresh = _cli("train", *common, "--workdir", str(tmp_path / "fresh"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _checkpoint(old, 12)["checksum"] == _checkpoint(tmp_path / "fresh", 12)["checksum"]
    changes = (old / "config_changes.jsonl").read_text().splitlines()
    assert json.loads(changes[0])["changed"] == {"num_epochs": [1, 2]}
