"""Training end to end (deepnmf_jax.train_and_evaluate and train.py) on tiny data: outputs, seeds, resume, errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deepnmf_jax import _malloc, errors
from deepnmf_jax.configs import cifar10, cifar100, default, fashion_mnist
from deepnmf_jax.data import pipeline as input_pipeline
from deepnmf_jax.evaluation import export
from deepnmf_jax.models import config as model_config
from deepnmf_jax.models import losses
from deepnmf_jax.training import checkpoint as checkpointing
from deepnmf_jax.training import loop as train_lib
from deepnmf_jax.training import parallel, program, steps
from deepnmf_jax.training.config import TrainConfig, from_any
from tests.runners import cache_dir, xla_flags
from tests.test_input_pipeline import _idx, make_cifar_archive

ROOT = pathlib.Path(__file__).resolve().parent.parent

TINY = {
    "num_seeds": 1,
    "num_epochs": 1,
    "batch_size": 10,
    "eval_batch_size": 25,
    "model.width": 0.125,
    "model.iterations": 2,
    "data.train_limit": 60,
    "data.test_limit": 50,
    "progress": False,
    "mesh.seed_devices": 1,  # one device (the tests see 8 fake ones; the sharding tests choose)
    "mesh.data_devices": 1,
}


def with_overrides(config, overrides) -> TrainConfig:
    """A config (a ConfigDict from a config file) with dotted keys ("model.name") set, like
    --config.KEY=VALUE flags, as the typed config the library takes."""
    return from_any(config).replace(overrides)


def tiny_config(**overrides) -> TrainConfig:
    return with_overrides(cifar10.get_config("sample"), {**TINY, **overrides})


def build_program(config: TrainConfig, steps_per_epoch: int = 6) -> program.Program:
    return program.build(config, 10, (32, 32, 3), steps_per_epoch)


def final_state(workdir):
    """The newest checkpoint's state as a tree of numpy arrays (whatever devices saved it)."""
    manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints")
    path = manager.directory / str(manager.latest_step()) / "state"
    manager.close()
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["cnn", "cnmf", "cnn_1x1", "cnmf_1x1"])
def test_smoke_every_model(tmp_path, name):
    results = train_lib.train_and_evaluate(tiny_config(**{"model.name": name}), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == name and saved["epochs_completed"] == 1
    assert saved["version"] and saved["config"]["model"]["name"] == name
    cpu_models = {
        line.split(":", 1)[1].strip()
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    }
    machine = saved["machine"]
    assert machine["cpu"] in cpu_models and machine["jax"] == jax.__version__
    assert machine["devices"] == [str(d) for d in jax.devices()]
    accuracy = saved["per_seed"][0]["final_test_accuracy"]
    assert 0 <= accuracy <= 1 and saved["final_test_accuracy"]["mean"] == accuracy
    assert results["per_seed"] == saved["per_seed"]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["train_loss"][0]) and record["learning_rates"]["a"] == 0.01
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
    assert any((tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "best").is_dir()
    # channels <= 0 on every test image before a ReLU at 1x1, counted again here with model.apply
    config = tiny_config(**{"model.name": name})
    keys = (["dead_class_channels"] if name.endswith("_1x1") else []) + ["dead_hidden_channels"]
    assert [k for k in saved if k.startswith("dead_")] == keys
    for key in keys:
        assert saved[key]["final"] == record[key] == [_dead_channels(config, tmp_path, key)]
        assert len(saved[key]["at_init"]) == 1


def _dead_channels(config, workdir, key) -> int:
    """Channels before a ReLU at 1x1 (the last block's class channels in +1x1 models, the
    previous block's outputs entering the last block) that are <= 0 on all test images, in the
    run's evaluation batches (BatchNorm uses each batch's statistics)."""
    from deepnmf_jax.data import augment

    model = model_config.build(config.model, 10, 3)
    params = jax.tree_util.tree_map(lambda a: a[0], final_state(workdir)["params"])
    test = input_pipeline.load_for_config(config.data).test
    images = augment.preprocess_for_eval(jnp.asarray(test.images), config.augment.crop_size)
    apply = jax.jit(
        lambda x: model.apply({"params": params}, x, train=False, return_intermediates=True)[1]
    )
    last = len(model.blocks)
    maxima = []
    for start in range(0, len(images), config.eval_batch_size):
        inter = apply(images[start : start + config.eval_batch_size])
        block, value = (last, "a") if key == "dead_class_channels" else (last - 1, "out")
        x = inter[f"block{block}"][value]
        maxima.append(np.max(np.asarray(x).reshape(-1, x.shape[-1]), axis=0))
    return int(np.sum(np.max(maxima, axis=0) <= 0))


def test_two_seeds_equal_two_single_seed_runs(tmp_path):
    overrides = {"model.name": "cnmf", "num_epochs": 1, "tensorboard": False}
    train_lib.train_and_evaluate(tiny_config(num_seeds=2, **overrides), tmp_path / "both")
    train_lib.train_and_evaluate(tiny_config(seed=21, **overrides), tmp_path / "first")
    train_lib.train_and_evaluate(tiny_config(seed=22, **overrides), tmp_path / "second")
    both = final_state(tmp_path / "both")
    for index, single in enumerate(("first", "second")):
        one = final_state(tmp_path / single)
        for x, y in zip(
            jax.tree_util.tree_leaves(both), jax.tree_util.tree_leaves(one), strict=True
        ):
            # A seed axis of 2 or 1 can change XLA's summation order, so results agree to float32
            # rounding (which Adam's g / sqrt(v) amplifies in tiny entries), not bit for bit.
            x, y = np.asarray(x)[index], np.asarray(y)[0]
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-4 * np.max(np.abs(y)))
    history = [
        json.loads(line) for line in (tmp_path / "both" / "metrics.jsonl").read_text().splitlines()
    ]
    singles = [
        json.loads((tmp_path / s / "metrics.jsonl").read_text().splitlines()[0])
        for s in ("first", "second")
    ]
    np.testing.assert_allclose(
        history[0]["train_loss"], [s["train_loss"][0] for s in singles], rtol=1e-5
    )


def test_data_order_fixed_or_per_seed():
    for order, shared in (("fixed", True), ("per_seed", False)):
        config = tiny_config(num_seeds=2, **{"data.order": order})
        placement = parallel.Placement.create(config)
        keys = placement.order_keys(config.data, [21, 22])
        orders = np.asarray(steps.epoch_order(keys, 1, 60))
        if shared:
            assert orders.shape == (60,)
        else:
            assert orders.shape == (2, 60) and not np.array_equal(orders[0], orders[1])
        assert not np.array_equal(np.asarray(steps.epoch_order(keys, 2, 60)), orders)


def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(tmp_path):
    overrides = {"model.name": "cnmf", "tensorboard": False}
    train_lib.train_and_evaluate(tiny_config(num_epochs=3, **overrides), tmp_path / "straight")
    train_lib.train_and_evaluate(tiny_config(num_epochs=2, **overrides), tmp_path / "resumed")
    checkpoints = tmp_path / "resumed" / "checkpoints"
    latest = max(checkpoints.iterdir(), key=lambda p: int(p.name))
    for file in (latest / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    # A save cut short by a kill leaves orbax's temporary folder, which must be ignored.
    partial = checkpoints / "999.orbax-checkpoint-tmp-1"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"partial")
    with pytest.warns(checkpointing.CheckpointWarning, match="could not be read"):
        train_lib.train_and_evaluate(tiny_config(num_epochs=3, **overrides), tmp_path / "resumed")
    assert_trees_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "resumed"))
    epochs = [
        json.loads(line)["epoch"]
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]
    # config.json is what the run went on with; the old budget is kept beside it
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["num_epochs"] == 3
    changes = (tmp_path / "resumed" / "config_changes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in changes] == [
        {"after_epochs": 2, "changed": {"num_epochs": [2, 3]}}
    ]


def test_running_batch_norm_keeps_statistics(tmp_path):
    train_lib.train_and_evaluate(
        tiny_config(**{"model.batch_norm": "running", "tensorboard": False}), tmp_path
    )
    stats = final_state(tmp_path)["batch_stats"]["block1"]["a_bn"]
    assert stats["mean"].shape == (1, 4) and np.any(np.asarray(stats["mean"]) != 0)


def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path, monkeypatch):
    monkeypatch.setitem(
        losses.LOSSES,
        "nan",
        lambda probs, labels, **_: losses.reference_loss(probs, labels) * jnp.nan,
    )
    with pytest.raises(errors.NonFiniteLossError, match=r"nan at epoch 1, step 1 \(seed 21\)"):
        train_lib.train_and_evaluate(tiny_config(loss="nan", tensorboard=False), tmp_path)


def test_fashion_mnist_config_on_generated_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            _idx(rng.integers(0, 10, n, dtype=np.uint8), 2049)
        )
    overrides = {"data.source": "folder", "data.data_dir": str(tmp_path), "model.name": "cnn"}
    config = with_overrides(fashion_mnist.get_config(), {**TINY, **overrides, "tensorboard": False})
    results = train_lib.train_and_evaluate(config, tmp_path / "run")
    assert results["dataset"]["train_size"] == 40 and results["dataset"]["name"] == "fashion_mnist"


def _write_cifar10_binary(folder: pathlib.Path, batches) -> None:
    """The batches in the official *binary* layout (cifar-10-binary.tar.gz, what TFDS's builder
    reads): per image one label byte, then the 3,072 bytes of the python layout's row."""
    inner = folder / "cifar-10-batches-bin"
    inner.mkdir(parents=True)
    (inner / "batches.meta.txt").write_text("\n".join(export.CIFAR10_CLASSES) + "\n")
    for member, batch in batches.items():
        labels = np.asarray(batch[b"labels"], np.uint8)[:, None]
        (inner / f"{member}.bin").write_bytes(np.concatenate([labels, batch[b"data"]], 1).tobytes())


def test_tfds_source_prepares_reads_the_folder_images_and_trains(tmp_path, monkeypatch):
    """TensorFlow Datasets for real: its own CIFAR-10 builder prepares a tiny copy (only the
    download is replaced, by the folder it would have extracted), our reader reads it back equal to
    the folder reader's arrays, and a run trains on it for one epoch."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    (tmp_path / "folder").mkdir()
    batches = make_cifar_archive(tmp_path / "folder" / "cifar-10-python.tar.gz", n=12, seed=3)
    _write_cifar10_binary(tmp_path / "extracted", batches)
    requested = []

    def download_and_extract(manager, url):
        requested.append(url)
        return str(tmp_path / "extracted")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    tfds_dir = str(tmp_path / "tfds")
    # "auto" never asks TFDS to download: nothing prepared yet is "not found", with where it looked
    with pytest.raises(input_pipeline.DataNotFoundError, match="cifar10 not prepared in"):
        input_pipeline.load_dataset("cifar10", source="auto", data_dir=tfds_dir)
    assert requested == []
    from_tfds = input_pipeline.load_dataset("cifar10", source="tfds", data_dir=tfds_dir)
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    from_folder = input_pipeline.load_dataset(
        "cifar10", source="folder", data_dir=str(tmp_path / "folder")
    )
    assert from_tfds.source == "tfds:cifar10" and from_tfds.train.images.shape == (60, 32, 32, 3)
    for split in ("train", "test"):
        for field in ("images", "labels"):
            tfds_array = getattr(getattr(from_tfds, split), field)
            folder_array = getattr(getattr(from_folder, split), field)
            assert tfds_array.dtype == folder_array.dtype
            np.testing.assert_array_equal(tfds_array, folder_array)
    # prepared now, so "auto" finds it without a download
    auto = input_pipeline.load_dataset("cifar10", source="auto", data_dir=tfds_dir)
    np.testing.assert_array_equal(auto.test.images, from_folder.test.images)
    assert len(requested) == 1

    config = tiny_config(**{"data.source": "tfds", "data.data_dir": tfds_dir, "tensorboard": False})
    results = train_lib.train_and_evaluate(config, tmp_path / "run")
    assert results["dataset"]["source"] == "tfds:cifar10"
    assert results["dataset"]["train_size"] + results["dataset"]["validation_size"] == 60
    assert results["epochs_completed"] == 1
    assert 0 <= results["per_seed"][0]["final_test_accuracy"] <= 1


def test_config_errors(tmp_path):
    with pytest.raises(errors.ConfigError, match=r"config\.model\.name must be one of"):
        tiny_config(**{"model.name": "resnet"})
    with pytest.raises(errors.ConfigError, match=r"config\.data\.order"):
        tiny_config(**{"data.order": "random"})
    with pytest.raises(errors.ConfigError, match="num_seeds must be >= 1"):
        tiny_config(num_seeds=0)
    with pytest.raises(errors.ConfigError, match=r"unknown config key config\.model\.nmae"):
        from_any({"model": {"nmae": "cnn"}})
    with pytest.raises(errors.ConfigError, match=r"config\.num_epochs = 'ten': not a"):
        from_any({"num_epochs": "ten"})
    for module in (default, fashion_mnist, cifar100):
        from_any(module.get_config())
    from_any(cifar10.get_config())
    # the fast recipe is derived: the default's model and data with FAST's keys and a budget
    fast, paper = (cifar10.get_config(arg).to_dict() for arg in ("fast", None))
    from_any(cifar10.get_config("fast"))
    changed = {
        f"{section}.{key}"
        for section, values in paper.items()
        if isinstance(values, dict)
        for key in values
        if fast[section][key] != values[key]
    }
    assert changed == {*cifar10.FAST, "data.validation_size"} and fast["num_epochs"] == 40
    with pytest.raises(ValueError, match="unknown variant"):
        cifar10.get_config("smaple")
    (tmp_path / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(
        errors.ConfigError, match=r"different configuration \(model\.name: 'cnmf_1x1' -> 'cnn'\)"
    ):
        train_lib.train_and_evaluate(tiny_config(**{"model.name": "cnn"}), tmp_path)


# --- the command line, in subprocesses -------------------------------------------------------------

CLI_FLAGS = [
    "--config.num_seeds=2",
    "--config.batch_size=10",
    "--config.eval_batch_size=25",
    "--config.model.name=cnmf",
    "--config.model.width=0.125",
    "--config.model.iterations=2",
    "--config.data.train_limit=200",
    "--config.data.test_limit=50",
    "--config.progress=False",
    "--config.tensorboard=False",
]


def _cli(workdir, *flags, base_flags=CLI_FLAGS, devices=None):
    """``python train.py`` on the sample in a subprocess (sharing the compilation cache)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir()),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
    )
    env["XLA_FLAGS"] = xla_flags(devices or 1)
    command = [
        sys.executable,
        "train.py",
        "--config=configs/cifar10.py:sample",
        f"--workdir={workdir}",
    ]
    return subprocess.Popen(
        [*command, *base_flags, *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def _wait_for_epoch(workdir, epoch, process, timeout=300):
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epoch:
            return
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.02)
    raise TimeoutError(f"epoch {epoch} never finished")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code, output = _finish(_cli(workdir, "--config.num_epochs=5"))
    assert code == 0, output
    return workdir


def test_the_command_line_trains_on_tcmalloc_where_it_is_installed(uninterrupted_run):
    """``python train.py`` re-executes itself with tcmalloc preloaded (deepnmf_jax._malloc) and
    the results record the allocator it ran on; CI installs tcmalloc, so there it is tcmalloc."""
    machine = json.loads((uninterrupted_run / "results.json").read_text())["machine"]
    wanted = os.environ.get(_malloc.MALLOC_ENV, "tcmalloc") != "system"
    assert machine["allocator"] == ("tcmalloc" if wanted and _malloc.find_tcmalloc() else "system")


def test_cli_resume_after_sigkill_is_bit_exact(uninterrupted_run, tmp_path):
    process = _cli(tmp_path, "--config.num_epochs=5")
    _wait_for_epoch(tmp_path, 1, process)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (tmp_path / "results.json").exists()
    code, output = _finish(_cli(tmp_path, "--config.num_epochs=5"))
    assert code == 0, output
    assert "resumed from epoch" in output
    assert_trees_equal(final_state(uninterrupted_run), final_state(tmp_path))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


def test_a_kill_during_the_best_save_leaves_results_that_name_existing_weights(
    uninterrupted_run, tmp_path
):
    """SIGKILL at the instant the best epoch's save into best/ would complete (orbax's rename of
    its temporary folder): the resume trains that epoch again, saves best/ again, removes the
    half-written folder, and ends as the uninterrupted run did."""
    done = json.loads((uninterrupted_run / "results.json").read_text())
    best = done["best_checkpoint"]  # "best/STEP"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir()),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        XLA_FLAGS=xla_flags(1),
    )
    killed = subprocess.run(
        [sys.executable, "-m", "tests.fault_driver", "--kill-at-rename", best, "--", "train"]
        + ["--config=configs/cifar10.py:sample", f"--workdir={tmp_path}", "--config.num_epochs=5"]
        + CLI_FLAGS,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert list((tmp_path / "best").glob("*.orbax-checkpoint-tmp*"))  # cut short mid-save
    code, output = _finish(_cli(tmp_path, "--config.num_epochs=5"))
    assert code == 0, output
    assert not list(tmp_path.rglob("*.orbax-checkpoint-tmp*"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {
        **done,
        "config": results["config"],
        "train_time_s": results["train_time_s"],
        "compile_time_s": results["compile_time_s"],
    }
    assert (tmp_path / best).is_dir()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == sorted(
        p.name for p in (uninterrupted_run / "best").iterdir()
    )


def test_cli_ctrl_c_saves_and_exits_cleanly_then_resumes(uninterrupted_run, tmp_path):
    process = _cli(tmp_path, "--config.num_epochs=5")
    _wait_for_epoch(tmp_path, 1, process)
    process.send_signal(signal.SIGINT)
    code, output = _finish(process)
    assert code == 130, output
    assert "checkpoint saved" in output and "Traceback" not in output
    newest = max((tmp_path / "checkpoints").iterdir(), key=lambda d: int(d.name))
    saved = json.loads((newest / "meta" / "metadata").read_text())["progress"]
    code, output = _finish(_cli(tmp_path, "--config.num_epochs=5"))
    assert code == 0, output
    assert_trees_equal(final_state(uninterrupted_run), final_state(tmp_path))
    if saved["step_in_epoch"]:  # stopped mid-epoch (not in the instant after an epoch's end)
        # the resumed epoch's time counts the part trained before the stop
        epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[saved["epoch"]])
        assert 0 < saved["seconds"] <= epoch["epoch_time_s"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {  # everything but the config (num_epochs may differ) and the times
        **json.loads((uninterrupted_run / "results.json").read_text()),
        "config": results["config"],
        "train_time_s": results["train_time_s"],
        "compile_time_s": results["compile_time_s"],
    }


def test_cli_errors_are_clear(tmp_path):
    code, output = _finish(_cli(tmp_path, "--config.model.nmae=cnn"))
    assert code != 0 and "nmae" in output
    code, output = _finish(
        _cli(tmp_path, "--config.data.source=folder", f"--config.data.data_dir={tmp_path}/none")
    )
    assert code == 1 and "Provide it in one of three ways" in output and "Traceback" not in output


def test_finished_seeds_are_frozen_and_the_run_stops(tmp_path):
    """A seed whose every learning rate is below optim.stop_lr takes no more steps; once all seeds
    are there the run ends (here from the start: stop_lr above the base learning rates). Its whole
    state is frozen: parameters, running BatchNorm statistics and Adam's moments."""
    config = tiny_config(
        num_seeds=2,
        num_epochs=3,
        tensorboard=False,
        **{"model.name": "cnmf", "model.batch_norm": "running", "optim.stop_lr": 1.0},
    )
    results = train_lib.train_and_evaluate(config, tmp_path)
    assert results["epochs_completed"] == 1 and results["stopped_because"].startswith("every")
    assert [s["epochs_trained"] for s in results["per_seed"]] == [0, 0]
    run = build_program(config)
    initial = jax.device_get(run.init(run.placement.seed_keys([21, 22])))
    final = final_state(tmp_path)
    for part in ("params", "batch_stats", "opt_state"):
        assert_trees_equal(final[part], getattr(initial, part))
    assert int(np.asarray(final["step"])[0]) == 6


def test_check_inputs_names_the_nmf_layer_inside_the_train_step():
    """model.check_inputs runs the jitted steps under checkify: a NaN reaching an NMF layer stops
    the step with the layer's name (here block 1's BatchNorm scale is NaN, so block 2's input is)."""
    from jax.experimental import checkify

    config = tiny_config(**{"model.name": "cnmf", "model.check_inputs": True})
    run = build_program(config)
    placement = run.placement
    state = run.init(placement.seed_keys([21]))
    rng = np.random.default_rng(0)
    images = placement.put(rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    labels = placement.put(rng.integers(0, 10, 60, dtype=np.int32))
    order = run.order(placement.order_keys(config.data, [21]), 1, 60)
    state, metrics = run.train(state, images, labels, order)  # a healthy step passes
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    scale = state.params["block1"]["a_bn"]["scale"]
    params = {**state.params, "block1": {**state.params["block1"]}}
    params["block1"]["a_bn"] = {**params["block1"]["a_bn"], "scale": scale * np.nan}
    with pytest.raises(checkify.JaxRuntimeError, match="NMF layer 'block2/a': input x has non"):
        run.train(state.replace(params=params), images, labels, order)


@pytest.mark.parametrize(
    ("seeds", "seed_loop", "expected"),
    [(1, "auto", "conv"), (2, "map", "matmul"), (2, "vmap", "conv"), (2, "unroll", "conv")],
)
def test_auto_patch_conv_is_a_convolution_unless_seeds_run_in_a_loop(seeds, seed_loop, expected):
    """models.config.resolve_patch_conv, decided by the training program: XLA:CPU's convolution
    weight gradient is far slower inside lax.map's loop, so mapped seeds use slices and a matmul."""
    config = tiny_config(**{"model.name": "cnn_1x1", "num_seeds": seeds, "seed_loop": seed_loop})
    assert config.model.patch_conv == "auto"
    block = build_program(config).ctx.model.block_cls  # functools.partial(Block, ...)
    assert block.keywords["patch_conv"] == expected
    assert model_config.resolve_patch_conv("patches", seeds_in_a_loop=False) == "patches"
