"""The noise suite (deepnmf_jax.evaluation.corruptions, noise, noise_report): the reference's
corruptions against a tiny image worked by hand, seeds pooled by hand, and the command on the
trained smoke sweep. CIFAR-10-C's corruptions: test_cifar10c.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import models
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import corruptions, noise_report, runs
from tests.test_evaluate import CNMF, CNN, _evaluate


def _image():
    """One 2 x 2 RGB image (sum 3.0) and a partner image."""
    x = np.array([[[[0.5, 0.25, 0.0], [0.25, 0.5, 0.0]], [[0.0, 0.5, 0.25], [0.25, 0.0, 0.5]]]])
    return x.astype(np.float32), np.full_like(x, 0.5, dtype=np.float32)


def test_reference_corruptions_by_hand():
    x, partner = _image()
    normalized = x / 3.0
    for name in corruptions.REFERENCE:
        np.testing.assert_allclose(
            corruptions.corrupt(name, x, 0.0, 7, partner), normalized, rtol=1e-6, err_msg=name
        )
    # uniform, eta = 1: pure noise, the same draws as the generator's first
    noise = np.random.default_rng(7).random(x.shape, dtype=np.float32)
    np.testing.assert_allclose(
        corruptions.corrupt("uniform", x, 1.0, 7), noise / noise.sum(), rtol=1e-6
    )
    # picture, eta = 0.5: half the image, half the partner, each normalised
    np.testing.assert_allclose(
        corruptions.corrupt("picture", x, 0.5, 7, partner),
        0.5 * normalized + 0.5 * partner / partner.sum(),
        rtol=1e-6,
    )
    assert not np.any(corruptions.corrupt("holes", x, 1.0, 7))  # every pixel-channel gone
    filled = corruptions.corrupt("holes_w_noise", x, 1.0, 7)  # every pixel-channel replaced
    rng = np.random.default_rng(7)
    rng.random(x.shape, dtype=np.float32)  # the mask's draw
    fill = rng.random(x.shape, dtype=np.float32)
    np.testing.assert_allclose(filled, fill / fill.sum(), rtol=1e-5)
    half = corruptions.corrupt("holes", x, 0.5, 3)
    kept = np.random.default_rng(3).random(x.shape, dtype=np.float32) > 0.5
    np.testing.assert_allclose(half, x * kept / (x * kept).sum(), rtol=1e-6)


def test_an_all_zero_image_gives_finite_probabilities(getkey):
    """``holes`` at eta = 1 leaves nothing; every model still returns finite probabilities."""
    zeros = jnp.asarray(corruptions.corrupt("holes", np.ones((2, 32, 32, 3), np.float32), 1.0, 0))
    crop = zeros[:, 2:30, 2:30]
    for name in ("cnn_1x1", "cnmf_1x1"):
        model = models.build_model(name, width=0.125, iterations=2)
        variables = jax.jit(lambda key, m=model: m.init(key, crop, train=False))(getkey())
        probs = jax.jit(lambda v, m=model: m.apply(v, crop, train=False))(variables)
        assert np.all(np.isfinite(probs)), name


def _suite(seeds, uniform, clean, levels=(0.0, 0.25, 0.5)):
    """A noise suite by hand: ``uniform`` is (levels, seeds) accuracy; contrast at severities 0-5."""
    contrast = [[0.6 - 0.1 * s] * len(seeds) for s in range(6)]
    return {
        "corruptions": {
            "uniform": {"levels": list(levels), "accuracy": uniform},
            "contrast": {"levels": [0, 1, 2, 3, 4, 5], "accuracy": contrast},
        },
        "clean": clean,
        "seeds": list(seeds),
        "seconds": 60.0,
        "test_images": 4,
        "seed": 0,
        "num_classes": 10,
    }


def test_noise_results_pool_seeds_of_a_variant_by_hand(tmp_path):
    assert noise_report.curve_label(tmp_path / "model=cnn,seed=21", "cnn", True) == "model=cnn"
    assert noise_report.curve_label(tmp_path / "seed=3", "cnmf", True) == "model=cnmf"
    assert noise_report.curve_label(tmp_path / "run_a", "cnmf", False) == "model=cnmf"
    a = _suite([21], [[0.5], [0.25], [0.0]], [0.5])
    b = _suite([22, 23], [[0.75, 1.0], [0.5, 0.5], [0.25, 0.0]], [0.75, 1.0])
    pooled = noise_report.pool("cnn", [(tmp_path / "a", a), (tmp_path / "b", b)])
    assert pooled["seeds"] == [21, 22, 23] and pooled["clean"] == [0.5, 0.75, 1.0]
    assert pooled["corruptions"]["uniform"]["accuracy"] == [
        [0.5, 0.75, 1.0],
        [0.25, 0.5, 0.5],
        [0.0, 0.25, 0.0],
    ]
    assert pooled["seconds"] == 120.0 and pooled["runs"] == [
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    table = noise_report.markdown({"cnn": pooled, "cnmf": a})
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()[2:4]}
    # clean 50, 75, 100 %: mean 75, sample std 25; uniform at 0.25: 25, 50, 50 -> 41.7 +/- 14.4
    assert rows["cnn"][1:4] == ["21, 22, 23", "75.0 +/- 25.0", "41.7 +/- 14.4 / 8.3 +/- 14.4"]
    # contrast (CIFAR-10-C): the mean over severities 1-5 (0.5 ... 0.1), the same for every seed;
    # no CIFAR-10-C mean in these hand-made suites
    assert rows["cnn"][4] == "30.0 +/- 0.0" and rows["cnmf"][4] == "30.0"
    assert rows["cnn"][5] == "-" and "CIFAR-10-C mean (1 corruptions)" in table
    assert rows["cnmf"][1:4] == ["21", "50.0", "25.0 / 0.0"] and rows["cnn"][6] == "2.0 |"
    missing = noise_report.markdown({"x": _suite([1], [[0.5], [0.4]], [0.5], levels=(0.0, 1.0))})
    assert "| - / - |" in missing  # eta 0.25 and 0.5 were not run
    with pytest.raises(ConfigError, match="seed 21 is in both"):
        noise_report.pool("cnn", [(tmp_path / "a", a), (tmp_path / "c", a)])
    other = _suite([24], [[0.5], [0.5]], [0.5], levels=(0.0, 1.0))
    with pytest.raises(ConfigError, match="different corruptions or levels"):
        noise_report.pool("cnn", [(tmp_path / "a", a), (tmp_path / "d", other)])
    fewer = {**_suite([25], [[0.5], [0.25], [0.0]], [0.5]), "test_images": 2}
    with pytest.raises(ConfigError, match="differ in test_images"):
        noise_report.pool("cnn", [(tmp_path / "a", a), (tmp_path / "e", fewer)])


def test_noise_suite_on_a_sweep_draws_the_same_noise_for_every_model(local_sweep):
    folder, _ = local_sweep
    options = ("noise", "--corruptions", "uniform,holes,contrast", "--levels", "0,1")
    code, output = _evaluate(*options, "--workdir", folder, "--limit", "25")
    assert code == 0, output
    suites = {
        name: json.loads((folder / name / "eval" / "noise.json").read_text())
        for name in (CNMF, CNN)
    }
    for suite in suites.values():
        assert suite["test_images"] == 25 and suite["corruptions"]["uniform"]["levels"] == [
            0.0,
            1.0,
        ]
        assert len(suite["corruptions"]["contrast"]["accuracy"]) == 6  # severities 0-5
    assert (folder / "noise.png").stat().st_size > 20_000 and (folder / "noise.svg").exists()
    # At eta = 0 uniform noise gives the clean image (normalised): the clean accuracy on 25 images.
    run = runs.open_run(folder / CNMF)
    images = runs.evaluation_split(run, "test").take(25)
    clean = np.mean(run.predict(images.images).argmax(-1) == images.labels, axis=-1)
    assert suites[CNMF]["corruptions"]["uniform"]["accuracy"][0] == pytest.approx(clean.tolist())
    assert suites[CNMF]["clean"] == pytest.approx(clean.tolist()) and suites[CNMF]["seeds"] == [21]
    # the sweep's seeds (a seed axis) are pooled into one curve per model
    pooled = json.loads((folder / "noise.json").read_text())
    assert sorted(pooled) == ["model=cnmf", "model=cnn"] and pooled["model=cnn"]["seeds"] == [
        21,
        22,
    ]
    assert pooled["model=cnmf"]["clean"] == suites[CNMF]["clean"] + [
        json.loads((folder / "model=cnmf,seed=22" / "eval" / "noise.json").read_text())["clean"][0]
    ]
    table = (folder / "noise.md").read_text()
    assert "| model=cnmf | 21, 22 |" in table and "uniform eta 0.25 / 0.5" in table
    # runs in separate folders pool the same way (outside a sweep: by model name); a suite
    # asked the same is reused, not run again
    pooled_dir = folder.parent / "pooled_noise"
    runs_args = ("--workdir", folder / CNMF, "--workdir", folder / "model=cnmf,seed=22")
    code, output = _evaluate(*options, "--limit", "25", *runs_args, "--out", pooled_dir)
    assert code == 0 and output.count("reused") == 2 and "uniform level" not in output, output
    again = json.loads((pooled_dir / "noise.json").read_text())
    assert (
        list(again) == ["model=cnmf"]
        and again["model=cnmf"]["corruptions"] == pooled["model=cnmf"]["corruptions"]
    )
    code, output = _evaluate(
        *options, "--limit", "20", "--workdir", folder / CNMF
    )  # asked otherwise
    assert code == 0 and "reused" not in output and "uniform level 1" in output, output
    assert json.loads((folder / CNMF / "eval" / "noise.json").read_text())["test_images"] == 20
    assert (folder / CNMF / "eval" / "noise.md").is_file()
