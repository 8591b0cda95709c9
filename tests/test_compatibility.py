"""Version 0.1's paper models and runs under this version: they train alike for the same seed, and a run
written by 0.1 (its ``config.json`` and checkpoint) resumes.

Version 0.1.0 is taken from the repository's own history (commit 6628618, ``git archive``) and run
here, on this machine's JAX, beside the current code: float results may differ between CPUs (vector
widths), so the comparison is made on one machine, not against numbers stored from another. Without
the history (a shallow copy) the tests are skipped with that reason.

0.2 trained bit for bit as 0.1. 0.3 sums in other orders (pixel-major patches and their box sums, the
padded first NMF layer, BatchNorm's one-pass backward), so losses and accuracies agree to float32
rounding and the weights after an epoch to about 1e-6 of their scale, except one kind of parameter:
a bias in front of a BatchNorm, whose gradient is zero in exact arithmetic (the BatchNorm subtracts
every constant). There both versions feed Adam rounding noise of about 1e-10, which Adam scales up to
steps of the learning rate, so those biases wander apart; they change no output.
"""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.runners import ROOT, subprocess_env

V0_1 = "6628618"  # deepnmf-jax 0.1.0
MODELS = ("cnn", "cnmf", "cnn_1x1", "cnmf_1x1")
FLAGS = [
    # 0.1's computation of the CNN a-layers (today's "auto" picks a convolution for one seed: equal
    # up to rounding, tests/test_layers.py)
    "--config.model.patch_conv=matmul",
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
TRAIN_ALL = f"""
import sys
from deepnmf_jax.cli import main
folder, *flags = sys.argv[1:]
for model in {MODELS!r}:
    args = ["train", "--config", "cifar10:sample", *flags, "--config.num_epochs=1"]
    assert main([*args, f"--config.model.name={{model}}", "--workdir", f"{{folder}}/{{model}}"]) == 0
"""


@pytest.fixture(scope="module")
def v0_1_runs(tmp_path_factory):
    """One epoch of each paper model trained by 0.1.0's own ``train.py`` on this machine."""
    code = tmp_path_factory.mktemp("v0_1_code")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", V0_1], capture_output=True)
    if archive.returncode:
        reason = archive.stderr.decode(errors="replace").strip().splitlines()[-1:]
        pytest.skip(f"needs the repository's history (0.1.0 is commit {V0_1}): {reason}")
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    runs = tmp_path_factory.mktemp("v0_1_runs")
    for model in MODELS:
        done = subprocess.run(
            [sys.executable, "train.py", "--config=configs/cifar10.py:sample", *FLAGS]
            + [
                "--config.num_epochs=1",
                f"--config.model.name={model}",
                f"--workdir={runs / model}",
            ],
            cwd=code,  # its train.py imports its own deepnmf_jax, beside this one's
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # 0.1 ran (not this code): it gathered no BatchNorm population statistics (its version
        # string comes from the installed package's metadata, so it cannot tell)
        assert not (runs / model / "population").exists()
    return runs


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


def _params(run):
    from flax import traverse_util

    from deepnmf_jax.evaluation.runs import open_run

    state = open_run(run, "latest", batch_stats=True).state
    return traverse_util.flatten_dict(jax.device_get(state.params))


def assert_trained_alike(new_run, old_run, weights_rtol=1e-3):
    """The last epoch's records and the latest weights of two runs, to float32 rounding amplified by
    training: weights within ``weights_rtol`` of each layer's largest (module docstring: biases in
    front of a BatchNorm excepted)."""
    records = [
        json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        for run in (old_run, new_run)
    ]
    np.testing.assert_allclose(records[1]["train_loss"], records[0]["train_loss"], rtol=1e-5)
    assert records[1]["test_accuracy"] == records[0]["test_accuracy"]
    old, new = _params(old_run), _params(new_run)
    assert old.keys() == new.keys()
    for path, value in new.items():
        *layer, name = path
        if name == "bias" and (*layer[:-1], f"{layer[-1]}_bn") in {k[:-1] for k in new}:
            continue  # a bias in front of a BatchNorm: gradient zero in exact arithmetic
        scale = float(np.max(np.abs(old[path])))
        np.testing.assert_allclose(
            value, old[path], rtol=0, atol=weights_rtol * scale, err_msg=str(path)
        )


def test_paper_models_train_like_version_0_1(v0_1_runs, tmp_path):
    _train_all(tmp_path)
    for model in MODELS:
        assert_trained_alike(tmp_path / model, v0_1_runs / model)
        assert _checkpoint(tmp_path / model, 6)["version"] == "0.2.0"  # the version that wrote it


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
def test_a_run_written_by_version_0_1_resumes(v0_1_runs, tmp_path):
    """The 0.1 run (1 epoch) goes on to 2 epochs under this version and ends where a fresh run of 2
    epochs does, to rounding (the first epochs were summed in other orders): its config.json
    (without the keys added since) and its checkpoint are read."""
    old = tmp_path / "old"
    shutil.copytree(v0_1_runs / "cnmf_1x1", old)
    saved = json.loads((old / "config.json").read_text())
    assert "unroll" not in saved["model"] and "pad_inputs" not in saved["model"]  # written before
    common = ["--config", "cifar10:sample", *FLAGS, "--config.model.name=cnmf_1x1"]
    common.append("--config.num_epochs=2")
    resumed = _cli("train", *common, "--workdir", str(old))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 1" in resumed.stderr
    fresh = _cli("train", *common, "--workdir", str(tmp_path / "fresh"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _checkpoint(old, 12)["progress"]["epoch"] == 2
    # 12 Adam steps from weights that differ by rounding: up to 1e-2 of a layer's scale (7e-3 for
    # the first BatchNorm's bias on an AMD EPYC); the losses still agree to 1e-5
    assert_trained_alike(old, tmp_path / "fresh", weights_rtol=2e-2)
    changes = (old / "config_changes.jsonl").read_text().splitlines()
    assert json.loads(changes[0])["changed"] == {"num_epochs": [1, 2]}
