"""Evaluating trained runs (deepnmf_jax.evaluation, deepnmf evaluate): metrics by hand, the commands on tiny runs
trained here, a run evaluated while it trains, export with jax.export (and ONNX), and a PyTorch
reference state_dict and a released model brought in as runs. The noise suite: test_noise.py."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import models, reference
from deepnmf_jax.evaluation import metrics, runs
from tests.conftest import FIXTURES
from tests.runners import ROOT, run_module, subprocess_env
from tests.test_train import _cli, _finish, _wait_for_epoch
from tests.test_workdir import _tamper

CNMF, CNN = "model=cnmf,seed=21", "model=cnn,seed=21"


SUBCOMMANDS = (
    "noise",
    "export",
    "attack",
    "population-stats",
    "import-reference",
    "import-pretrained",
)


def _evaluate(*args):
    """``deepnmf evaluate ARGS``, or ``deepnmf SUBCOMMAND ARGS``."""
    command = () if args and args[0] in SUBCOMMANDS else ("evaluate",)
    return run_module("deepnmf_jax", *command, *args)


# --- metrics by hand -------------------------------------------------------------------------------


def test_metrics_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1])
    result = metrics.classification_metrics(probs, labels, 2)
    assert result["accuracy"] == 0.75 and result["per_class_accuracy"] == [1.0, 2 / 3]
    assert result["confusion"] == [[1, 0], [1, 2]]
    # confidences 0.9, 0.6, 0.7, 0.8 fall in four bins of width 1/15, one image each:
    # |1 - 0.9| + |0 - 0.6| + |1 - 0.7| + |1 - 0.8| = 1.2, over 4 images
    np.testing.assert_allclose(result["ece"], 1.2 / 4)
    np.testing.assert_allclose(metrics.expected_calibration_error(probs, labels, bins=1), 0.0)


# --- the commands on runs trained here -------------------------------------------------------------


def test_evaluate_a_run_and_a_sweep(local_sweep):
    folder, _ = local_sweep
    code, output = _evaluate("--workdir", folder)
    assert code == 0, output
    for name in (CNMF, CNN, "model=cnn,seed=22", "model=cnmf,seed=22"):
        result = json.loads((folder / name / "eval" / "metrics.json").read_text())
        trained = json.loads((folder / name / "results.json").read_text())
        assert "population statistics" in result["batch_norm"], name
        seed = result["per_seed"][0]
        assert len(seed["confusion"]) == 10 and sum(map(sum, seed["confusion"])) == 50
        assert (folder / name / "eval" / "confusion.png").stat().st_size > 10_000
    assert "population statistics (every image alike" in output
    # with each batch's statistics, as in training: best/ holds the best epoch, and its test
    # accuracy is the one the training reported
    code, output = _evaluate("--workdir", folder, "--batch-stats")
    assert code == 0 and "statistics of each evaluation batch of 25 images" in output, output
    for name in (CNMF, CNN, "model=cnn,seed=22", "model=cnmf,seed=22"):
        result = json.loads((folder / name / "eval" / "metrics.json").read_text())
        trained = json.loads((folder / name / "results.json").read_text())
        assert result["accuracy"]["mean"] == trained["best_test_accuracy"]["mean"], name
    # a relative --workdir, as the README writes it (orbax wants absolute paths)
    relative = os.path.relpath(folder / CNMF, ROOT)
    code, output = _evaluate("--workdir", relative, "--eval-batch-size", "50", "--batch-stats")
    assert code == 0 and "batch of 50 images" in output, output


def test_bad_input_is_one_line_and_writes_nothing(local_sweep, tmp_path):
    folder, _ = local_sweep
    run = tmp_path / "run"
    shutil.copytree(folder / CNMF, run, ignore=shutil.ignore_patterns("eval"))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("earlier results")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    other = tmp_path / "other"  # a cnmf run holding a cnn checkpoint
    shutil.copytree(run, other)
    shutil.rmtree(other / "best")
    shutil.copytree(folder / CNN / "best", other / "best")
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    _tamper(next((damaged / "best").iterdir()))
    cases = [
        (("--workdir", empty), "has no best checkpoint"),
        (("--workdir", other), "is not a checkpoint of this run's model"),
        (("--workdir", damaged), "damaged (its arrays do not match their stored checksum)"),
        (("--workdir", tmp_path / "missing"), "does not exist"),
        (("noise", "--workdir", run, "--corruptions", "fgo"), "unknown corruption 'fgo'"),
        (
            ("noise", "--workdir", run, "--levels", "0,1.5"),
            "noise levels must be in [0, 1], got 1.5",
        ),
        (("noise", "--workdir", run, "--workdir", run), "needs --out"),
        (
            ("noise", "--workdir", run, "--workdir", run, "--out", tmp_path / "o"),
            "seed 21 is in both",
        ),
    ]
    for args, expected in cases:
        code, output = _evaluate(*args)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and expected in errors[0], (args, output)
        assert "Traceback" not in output
    assert (run / "eval" / "metrics.json").read_text() == "earlier results"
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["metrics.json"]


def test_a_run_is_evaluated_while_it_trains(tmp_path):
    """The newest complete checkpoint is read without the lock; the training goes on undisturbed."""
    process = _cli(tmp_path, "--config.num_epochs=1000")  # still training when evaluated
    try:
        _wait_for_epoch(tmp_path, 2, process)
        code, output = _evaluate("--workdir", tmp_path, "--checkpoint", "latest")
        assert code == 0, output
        assert process.poll() is None, "the training ended before the evaluation"
    finally:
        process.terminate()
        code, output = _finish(process)
    assert code == 130, output  # SIGTERM: saved and stopped, undisturbed until then
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["checkpoint"].startswith("checkpoints/") and result["epoch"] >= 2


# --- export and the reference's weights ------------------------------------------------------------

LOADER = """
import sys, jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
for path in sys.argv[2:]:
    np.save(path + ".out.npy", np.asarray(exported.call(np.load(path))))
print("deepnmf_jax" in sys.modules)
"""


def test_exported_inference_runs_without_the_library_at_any_batch_size(local_sweep, tmp_path):
    folder, _ = local_sweep
    code, output = _evaluate("export", "--workdir", folder / CNMF, "--out", tmp_path, "--onnx")
    assert code == 0, output
    manifest = json.loads((tmp_path / "model.json").read_text())
    assert manifest["input"] == {"shape": ["batch", 32, 32, 3], "dtype": "uint8", "layout": "NHWC"}
    assert manifest["classes"][0] == "airplane" and manifest["seed"] == 21
    run = runs.open_run(folder / CNMF)
    images = runs.evaluation_split(run, "test").images
    paths = []
    for size in (7, 25):  # two batch sizes through one artifact: the batch is symbolic
        paths.append(tmp_path / f"batch{size}.npy")
        np.save(paths[-1], images[:size])
    done = subprocess.run(
        [sys.executable, "-c", LOADER, tmp_path / "model.jax_export", *paths],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    model = models.build_model("cnmf", width=0.125, iterations=2)
    variables = run.variables(0)  # with the run's BatchNorm population statistics
    assert "population" in variables and "population statistics" in manifest["batch_norm"]
    for path, size in zip(paths, (7, 25), strict=True):
        expected = model.apply(
            variables, jnp.asarray(images[:size, 2:30, 2:30], jnp.float32) / 255, train=False
        )
        np.testing.assert_allclose(np.load(str(path) + ".out.npy"), expected, rtol=0, atol=1e-6)
    # batch-independent: the first 7 images get the same probabilities in a batch of 7 and of 25
    seven, twenty_five = (np.load(str(p) + ".out.npy") for p in paths)
    np.testing.assert_allclose(seven, twenty_five[:7], rtol=0, atol=1e-6)
    if importlib.util.find_spec("jax2onnx") is None:  # an optional extra; CI installs it
        pytest.skip("ONNX not checked here: jax2onnx is not installed")
    # installed, a failed conversion is a failure (a skip hid one: jax2onnx's loop lowering took
    # no ``unroll`` argument)
    assert "onnxruntime agrees with JAX to" in output and (tmp_path / "model.onnx").exists()


def test_a_reference_state_dict_becomes_an_evaluated_run(tmp_path):
    arrays = np.load(FIXTURES / "reference_state_dicts.npz")
    prefix = "cnmf_1x1/state_dict/"
    state_dict = {k[len(prefix) :]: arrays[k] for k in arrays if k.startswith(prefix)}
    np.savez(tmp_path / "model.npz", **state_dict)  # what the two lines of torch write
    run = tmp_path / "run"
    args = ("--state-dict", tmp_path / "model.npz", "--workdir", run)
    code, output = _evaluate("import-reference", *args, "--model", "cnmf_1x1")
    assert code == 0, output
    code, output = _evaluate("--workdir", run, "--source", "sample", "--test-limit", "100")
    assert code == 0 and "cnmf_1x1 (best/0, epoch 0) test accuracy" in output, output
    opened = runs.open_run(run, data_overrides={"source": "sample"})
    params = jax.tree_util.tree_map(lambda a: np.asarray(a)[0], jax.device_get(opened.state.params))
    back = reference.export_reference_params("cnmf_1x1", params)
    for position, name in reference.positional_names("cnmf_1x1").items():
        np.testing.assert_array_equal(back[name], state_dict[position])
    code, output = _evaluate("import-reference", *args, "--model", "cnn")
    assert code == 1 and "already holds a run" in output
    code, output = _evaluate(
        "import-reference",
        "--state-dict",
        tmp_path / "model.npz",
        "--workdir",
        tmp_path / "r2",
        "--model",
        "cnn",
    )
    assert code == 1 and "model.npz: " in output and "'cnn'" in output, output
    assert not (tmp_path / "r2").exists()


def test_a_released_model_becomes_a_run_with_its_stated_accuracy(tmp_path):
    from deepnmf_jax import pretrained

    name, run = "cnmf_1x1_cifar10_fast", tmp_path / "run"
    entry = pretrained.info(name)
    code, output = _evaluate("import-pretrained", "--name", name, "--workdir", run)
    assert code == 0 and f"seed {entry['seed']}, epoch {entry['epoch']}" in output, output
    code, output = _evaluate("--workdir", run, "--source", "sample")
    opened = f"cnmf_1x1 ({entry['checkpoint']}, epoch {entry['epoch']}) test accuracy"
    assert code == 0 and opened in output, output
    result = json.loads((run / "eval" / "metrics.json").read_text())
    stated = entry["accuracy"]["bundled_sample_test"]
    assert result["images"] == 500 and abs(result["accuracy"]["mean"] - stated) <= 1 / 500
    for args, expected in (
        (("--name", name, "--workdir", run), "already holds a run"),
        (("--name", "resnet", "--workdir", tmp_path / "r2"), "no released model 'resnet'"),
    ):
        code, output = _evaluate("import-pretrained", *args)
        assert code == 1 and output.startswith("error: ") and expected in output, output
    assert not (tmp_path / "r2").exists()


def test_latest_falls_back_when_the_newest_checkpoint_is_damaged(local_sweep, tmp_path):
    folder, _ = local_sweep
    run = tmp_path / "run"
    shutil.copytree(folder / CNMF, run, ignore=shutil.ignore_patterns("eval"))
    steps = sorted(
        (p for p in (run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    _tamper(steps[-1])
    opened = runs.open_run(run, "latest")
    assert opened.checkpoint == f"checkpoints/{steps[-2].name}"
    with pytest.raises(runs.CheckpointError, match="damaged"):
        runs.open_run(run, steps[-1].name)
    assert not (run / "eval").exists()
