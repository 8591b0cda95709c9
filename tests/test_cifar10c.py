"""CIFAR-10-C (deepnmf_jax.evaluation.cifar10c): each corruption against the published formula with
the same draws, or a case worked out by hand; the official files read; the suite's mean."""

import json

import numpy as np
import pytest

from deepnmf_jax.data import load_sample
from deepnmf_jax.errors import ConfigError, DataError
from deepnmf_jax.evaluation import _image_ops, cifar10c
from tests.test_evaluate import CNMF, _evaluate

NAMES = list(cifar10c.CORRUPTIONS)


@pytest.fixture(scope="module")
def images():
    return load_sample().test.images[:3]  # real CIFAR-10 images, 32 x 32 x 3


def test_the_fifteen_in_the_published_order():
    assert NAMES == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_is_deterministic_uint8_and_stronger_at_severity_5(name, images):
    one = cifar10c.corrupt(name, images, 1, [4, 2])
    five = cifar10c.corrupt(name, images, 5, [4, 2])
    assert one.dtype == np.uint8 and one.shape == images.shape
    np.testing.assert_array_equal(five, cifar10c.corrupt(name, images, 5, [4, 2]))
    change = [np.abs(c.astype(float) - images).mean() for c in (one, five)]
    assert 0 < change[1], name
    if name != "elastic_transform":  # its table weakens the affine part as the severity grows
        assert change[0] <= change[1] + 1.0, (name, change)  # severity 5 is at least as strong


def test_noises_against_the_published_formula(images):
    x = images / 255.0
    rng = np.random.default_rng(9)
    expected = np.uint8(np.clip(x + rng.normal(size=x.shape, scale=0.08), 0, 1) * 255)
    np.testing.assert_array_equal(cifar10c.corrupt("gaussian_noise", images, 3, 9), expected)
    rng = np.random.default_rng(9)
    expected = np.uint8(np.clip(rng.poisson(x * 100) / 100, 0, 1) * 255)
    np.testing.assert_array_equal(cifar10c.corrupt("shot_noise", images, 3, 9), expected)
    impulse = cifar10c.corrupt("impulse_noise", images, 5, 9)  # 7 % of the values: 0 or 255
    changed = impulse != images
    assert 0.04 < changed.mean() < 0.10 and set(np.unique(impulse[changed])) <= {0, 255}


def test_photometric_ones_by_hand():
    gray = np.full((1, 32, 32, 3), 128, np.uint8)  # 0.50196 in [0, 1]
    # brightness, severity 1: HSV value + 0.05 -> 0.55196 -> floor(140.75) = 140
    assert np.all(cifar10c.corrupt("brightness", gray, 1, 0) == 140)
    # contrast on a two-valued image: (x - mean) c + mean, c = 0.15 at severity 5
    halves = np.zeros((1, 32, 32, 3), np.uint8)
    halves[:, :16] = 200
    out = cifar10c.corrupt("contrast", halves, 5, 0).astype(float)
    mean = 100 / 255
    np.testing.assert_array_equal(
        out[0, 0, 0], np.floor(((200 / 255 - mean) * 0.15 + mean) * 255).repeat(3)
    )
    np.testing.assert_array_equal(
        out[0, -1, 0], np.floor(((0 - mean) * 0.15 + mean) * 255).repeat(3)
    )


@pytest.mark.parametrize(
    "name", ["defocus_blur", "zoom_blur", "motion_blur", "pixelate", "elastic_transform"]
)
def test_a_constant_image_stays_constant_under_blurs_and_warps(name):
    constant = np.full((2, 32, 32, 3), 90, np.uint8)
    out = cifar10c.corrupt(name, constant, 5, 1).astype(int)
    assert np.abs(out - 90).max() <= 1, name  # kernels sum to 1; borders repeat the image


def test_kernels_sum_to_one():
    for radius, blur in ((0.3, 0.4), (1.5, 0.1)):
        np.testing.assert_allclose(_image_ops.disk(radius, blur).sum(), 1.0, rtol=1e-6)
    impulse = np.zeros((32, 32, 1), np.float32)
    impulse[16, 16] = 1.0
    blurred = _image_ops.motion_blur(impulse, 6, 2, 30.0)
    np.testing.assert_allclose(blurred.sum(), 1.0, rtol=1e-5)


def test_bad_requests_are_one_line(images):
    with pytest.raises(ConfigError, match="severities are 1 to 5, got 6"):
        cifar10c.corrupt("fog", images, 6, 0)
    with pytest.raises(ConfigError, match="unknown CIFAR-10-C corruption 'smog'"):
        cifar10c.corrupt("smog", images, 1, 0)
    with pytest.raises(ConfigError, match="32 x 32 RGB"):
        cifar10c.corrupt("fog", np.zeros((1, 28, 28, 1), np.uint8), 1, 0)


def _official_folder(folder, images, labels):
    """A tiny folder in the official layout: 5 severities of the same N images, and labels."""
    stacked = np.concatenate([np.clip(images.astype(int) + 10 * s, 0, 255) for s in range(5)])
    np.save(folder / "gaussian_noise.npy", stacked.astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))


def test_official_files_are_read_by_severity(tmp_path, images):
    _official_folder(tmp_path, images, np.array([3, 1, 4]))
    read, labels = cifar10c.read_official(tmp_path, "gaussian_noise", 3, limit=2)
    np.testing.assert_array_equal(read, np.clip(images[:2].astype(int) + 20, 0, 255))
    np.testing.assert_array_equal(labels, [3, 1])
    with pytest.raises(DataError, match=r"fog\.npy is missing"):
        cifar10c.read_official(tmp_path, "fog", 1)


def test_suite_reads_official_files_and_reports_the_mean(local_sweep, tmp_path):
    folder, _ = local_sweep
    from deepnmf_jax.evaluation import runs

    run = runs.open_run(folder / CNMF)
    test = runs.evaluation_split(run, "test").take(10)
    official = tmp_path / "cifar10c"
    official.mkdir()
    _official_folder(official, test.images, test.labels)
    args = ["--corruptions", "gaussian_noise", "--severities", "1,5", "--limit", "10"]
    code, output = _evaluate(
        "noise", "--workdir", folder / CNMF, *args, "--cifar10c-dir", official, "--recompute"
    )
    assert code == 0, output
    suite = json.loads((folder / CNMF / "eval" / "noise.json").read_text())
    result = suite["corruptions"]["gaussian_noise"]
    assert result["levels"] == [0, 1, 5] and suite["cifar10c_cells"] == 2
    np.testing.assert_allclose(suite["cifar10c_mean"], np.mean(result["accuracy"][1:], axis=0))
    # severity 1 of the fake files is the clean image: the clean accuracy
    assert result["accuracy"][1] == suite["clean"]
    assert suite["request"]["cifar10c_dir"] == str(official)
    code, output = _evaluate("noise", "--workdir", folder / CNMF, "--severities", "0,6")
    assert code == 1 and "severities are 1 to 5, got 0" in output, output
