"""Augmentation (deepnmf_jax.augment): torchvision's semantics, checked by hand and against colorsys."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax.data import augment


def test_rgb_to_hsv_matches_colorsys_and_round_trips(getkey):
    rgb = jax.random.uniform(getkey(), (200, 3), jnp.float64)
    rgb = rgb.at[:5].set(jnp.array([[0.3, 0.3, 0.3], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0.0]]))
    hsv = np.asarray(augment.rgb_to_hsv(rgb))
    expected = np.array([colorsys.rgb_to_hsv(*px) for px in np.asarray(rgb)])
    np.testing.assert_allclose(hsv, expected, atol=1e-12)
    np.testing.assert_allclose(augment.hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-12)


def test_hue_shift_by_hand():
    red = jnp.array([[[[1.0, 0.0, 0.0]]]])
    np.testing.assert_allclose(augment.adjust_hue(red, 1 / 3), [[[[0.0, 1.0, 0.0]]]], atol=1e-12)
    np.testing.assert_allclose(augment.adjust_hue(red, -1 / 3), [[[[0.0, 0.0, 1.0]]]], atol=1e-12)
    gray = jnp.full((1, 1, 1, 3), 0.4)
    np.testing.assert_allclose(augment.adjust_hue(gray, 0.15), gray, atol=1e-15)


def test_brightness_contrast_saturation_by_hand():
    x = jnp.array([[[[0.2, 0.4, 0.6], [0.8, 0.9, 1.0]]]])  # one image of 1 x 2 pixels
    np.testing.assert_allclose(augment.adjust_brightness(x, 1.5), jnp.clip(1.5 * x, 0, 1))
    gray = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # (1, 1, 2)
    mean = float(jnp.mean(gray))
    np.testing.assert_allclose(
        augment.adjust_contrast(x, 1.1), jnp.clip(1.1 * x - 0.1 * mean, 0, 1), rtol=1e-14
    )
    np.testing.assert_allclose(
        augment.adjust_saturation(x, 0.9),
        jnp.clip(0.9 * x + 0.1 * gray[..., None], 0, 1),
        rtol=1e-14,
    )


def test_contrast_uses_each_images_own_mean():
    dark, bright = jnp.full((1, 2, 2, 3), 0.1), jnp.full((1, 2, 2, 3), 0.9)
    both = augment.adjust_contrast(jnp.concatenate([dark, bright]), 0.5)
    # Each image is blended with its own mean grey; torchvision's weights sum to 0.9999, not 1.
    expected = jnp.concatenate([dark, bright]) * (0.5 + 0.5 * 0.9999)
    np.testing.assert_allclose(both, expected, rtol=1e-6)


def test_jitter_parameters_follow_torchvision_ranges(getkey):
    config = augment.AugmentConfig()
    draws = [augment._jitter_params(getkey(), config, jnp.float32) for _ in range(200)]
    order = np.array([d[0] for d in draws])
    assert all(sorted(o) == [0, 1, 2, 3] for o in order)
    assert len({tuple(o) for o in order}) > 10  # random orders, not a fixed one
    for index, (low, high) in enumerate(
        [(0.5, 1.5), (0.9, 1.1), (0.9, 1.1), (-0.15, 0.15)], start=1
    ):
        values = np.array([d[index] for d in draws])
        assert values.min() >= low and values.max() <= high
        assert values.max() - values.min() > 0.8 * (high - low)


def _coordinate_images(n, size=32):
    """uint8 images whose red channel is the row and green the column: crops can be read back."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return jnp.asarray(np.broadcast_to(image, (n, size, size, 3)))


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_crop_and_flip_granularity(getkey, granularity):
    config = augment.AugmentConfig(
        brightness=0, contrast=0, saturation=0, hue=0, granularity=granularity
    )
    images = _coordinate_images(50)
    out = np.asarray(augment.preprocess_for_train(images, getkey(), config)) * 255
    assert out.shape == (50, 28, 28, 3)
    top = np.rint(out[:, 0, :, 0].min(-1)).astype(int)
    left = np.rint(out[:, 0, :, 1].min(-1)).astype(int)
    flipped = out[:, 0, 0, 1] > out[:, 0, -1, 1]
    assert top.min() >= 0 and top.max() <= 4 and left.max() <= 4
    if granularity == "batch":  # one draw for the whole batch, as torchvision on a batch tensor
        assert len(set(top)) == len(set(left)) == len(set(flipped)) == 1
    else:
        assert len(set(zip(top, left, strict=True))) > 5 and len(set(flipped)) == 2


def test_eval_center_crop_offset_two():
    out = np.asarray(augment.preprocess_for_eval(_coordinate_images(2), 28)) * 255
    np.testing.assert_allclose(out[0, 0, 0, :2], [2, 2], atol=1e-4)
    np.testing.assert_allclose(out[0, -1, -1, :2], [29, 29], atol=1e-4)


def test_jitter_stays_in_unit_range_and_changes_images(getkey):
    images = jax.random.randint(getkey(), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
    out = augment.preprocess_for_train(
        images, getkey(), augment.AugmentConfig(granularity="sample")
    )
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and out.dtype == jnp.float32


def test_bad_config():
    with pytest.raises(ValueError, match="granularity"):
        augment.AugmentConfig(granularity="pixel")
    with pytest.raises(ValueError, match="hue"):
        augment.AugmentConfig(hue=0.7)
