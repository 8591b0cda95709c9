"""The released weights (deepnmf_jax.pretrained): they load, match their sha256, reproduce the
accuracy their manifest states on the bundled sample's 500 test images, and classify an image the
same way alone as in a batch (BatchNorm population statistics)."""

import json
import shutil

import jax
import numpy as np
import pytest

from deepnmf_jax import pretrained
from deepnmf_jax.data import pipeline as input_pipeline

RELEASED = {
    "cnmf_1x1_cifar10_fast",
    "cnn_1x1_cifar10_fast",
    "cnmf_cifar10_fast",
    "cnn_cifar10_fast",
    "cnn_1x1_cifar10_paper",
}


def _accuracy(name: str) -> float:
    """Accuracy on the sample's test images in batches of the evaluation's size, as the release
    script measured it."""
    entry = pretrained.info(name)
    model, variables = pretrained.load(name)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    sample = input_pipeline.load_sample().test
    size = entry["accuracy"]["eval_batch_size"]
    correct = 0
    for start in range(0, len(sample), size):
        images = pretrained.preprocess(sample.images[start : start + size])
        probs = apply(variables, images)
        correct += int(np.sum(np.asarray(probs).argmax(-1) == sample.labels[start : start + size]))
    return correct / len(sample)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_a_released_model_reproduces_its_stated_accuracy(name):
    assert set(pretrained.available()) == RELEASED
    entry = pretrained.info(name)
    assert entry["model"]["name"] == name.split("_cifar10")[0]
    # one image of 500 either way: float32 rounding differs between CPUs (AVX2, AVX-512)
    assert abs(_accuracy(name) - entry["accuracy"]["bundled_sample_test"]) <= 1 / 500
    # far above chance (10 %), whatever the run's length
    assert entry["accuracy"]["cifar10_test"] > 0.25 and entry["command"]
    # nothing from the machine that trained it: the data folder is the user's to give
    assert entry["config"]["data"]["data_dir"] == "" and "/work/" not in str(entry)


def test_a_damaged_file_is_refused_and_an_unknown_name_is_named(tmp_path, monkeypatch):
    name = sorted(RELEASED)[0]
    for file in ("manifest.json", pretrained.info(name)["file"]):
        shutil.copy(pretrained._FOLDER / file, tmp_path / file)
    damaged = tmp_path / pretrained.info(name)["file"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "_FOLDER", tmp_path)
    with pytest.raises(ValueError, match=r"is damaged: sha256 [0-9a-f]{64} is not the released"):
        pretrained.load(name)
    with pytest.raises(KeyError, match="no released model 'resnet'; available: "):
        pretrained.info("resnet")


def test_a_manifest_from_before_an_added_config_key_still_loads(tmp_path, monkeypatch):
    """A manifest written before ``model.batch_norm_1x1`` existed reads as the run that trained it
    (training.config.ADDED_KEYS, the mechanism that reads an old run's config.json), in load and import."""
    from deepnmf_jax.evaluation import run_import as reference_import

    manifest = json.loads((pretrained._FOLDER / "manifest.json").read_text())
    name = "cnmf_1x1_cifar10_fast"
    entry = manifest[name]
    del entry["model"]["batch_norm_1x1"], entry["config"]["model"]["batch_norm_1x1"]
    (tmp_path / "manifest.json").write_text(json.dumps({name: entry}))
    shutil.copy(pretrained._FOLDER / entry["file"], tmp_path / entry["file"])
    monkeypatch.setattr(pretrained, "_FOLDER", tmp_path)
    model, _ = pretrained.load(name)
    assert model.block_cls.keywords["batch_norm_1x1"] is False
    folder, _ = reference_import.import_pretrained(name, tmp_path / "run")
    assert json.loads((folder / "config.json").read_text())["model"]["batch_norm_1x1"] is False


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_a_released_model_classifies_one_image_as_it_does_in_a_batch(name):
    model, variables = pretrained.load(name)
    assert "population" in variables  # released with its population statistics
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images = pretrained.preprocess(input_pipeline.load_sample().test.images[:50])
    batched = np.asarray(apply(variables, images))
    alone = np.concatenate([np.asarray(apply(variables, images[i : i + 1])) for i in range(50)])
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    accuracy = pretrained.info(name)["accuracy"]
    # the manifest's measurement on the 10,000 test images: batch 1 and 50 agree to 0.1 point
    assert abs(accuracy["population_batch_1"] - accuracy["population_batch_50"]) <= 0.001
    assert accuracy["bundled_sample_same_class_batch_1_and_50"] == 500
    # the reference's evaluation (each batch's own statistics) stays available
    _, batch_variables = pretrained.load(name, population=False)
    assert "population" not in batch_variables
