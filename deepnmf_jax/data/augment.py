"""Data augmentation in JAX, inside the jitted step: crop, flip and torchvision's ColorJitter.

The reference (``mahbodnr/deep_nmf:tools/get_the_data.py:145``) applies torchvision v1 transforms to the
whole (N, C, H, W) batch tensor, so one set of random parameters is drawn per batch
(``granularity="batch"``); ``granularity="sample"`` draws them per image. Training chain:
RandomCrop (no padding) -> RandomHorizontalFlip(0.5) -> ColorJitter(brightness, contrast, saturation,
hue), the four jitter operations in a random order, each clipping to [0, 1] as torchvision does.
Evaluation: a centre crop. Images are NHWC floats in [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from deepnmf_jax._schema import field
from deepnmf_jax.errors import ConfigError

GRANULARITIES = ("batch", "sample")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The ``augment`` section of a training config: the training augmentation (defaults: the
    reference's CIFAR-10 chain, torchvision's ``ColorJitter(0.5, 0.1, 0.1, 0.15)``)."""

    crop_size: int = field(28)  # random crop in training, centre crop in evaluation
    flip: bool = field(True)
    brightness: float = field(0.5)
    contrast: float = field(0.1)
    saturation: float = field(0.1)
    hue: float = field(0.15)
    granularity: str = field("batch")  # "batch": one draw per batch (reference) | "sample"

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"config.augment.granularity must be one of {GRANULARITIES}, got "
                f"{self.granularity!r}"
            )
        if self.crop_size < 1:
            raise ConfigError(f"config.augment.crop_size must be >= 1, got {self.crop_size}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"config.augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.augment.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def jitter(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


def to_float(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 pixels -> floats in [0, 1] (the reference divides by the split's maximum, 255)."""
    return images.astype(dtype) / 255.0


def crop(images: jax.Array, top: jax.Array, left: jax.Array, size: int) -> jax.Array:
    """The ``size`` x ``size`` window at (top, left) of (..., H, W, C) images."""
    starts = (0,) * (images.ndim - 3) + (top, left, 0)
    sizes = (*images.shape[:-3], size, size, images.shape[-1])
    return jax.lax.dynamic_slice(images, starts, sizes)


def center_crop(images: jax.Array, size: int) -> jax.Array:
    """torchvision's CenterCrop: offset round((H - size) / 2) (2 for 32 -> 28)."""
    top = round((images.shape[-3] - size) / 2.0)
    left = round((images.shape[-2] - size) / 2.0)
    return images[..., top : top + size, left : left + size, :]


def _grayscale(images: jax.Array) -> jax.Array:
    r, g, b = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    return _GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b


def _blend(images: jax.Array, other: jax.Array, ratio: jax.Array) -> jax.Array:
    return jnp.clip(ratio * images + (1.0 - ratio) * other, 0.0, 1.0)


def adjust_brightness(images, factor):
    return _blend(images, jnp.zeros_like(images), factor)


def adjust_contrast(images, factor):
    """Blend with the mean grayscale of each image (over H, W)."""
    gray = _grayscale(images) if images.shape[-1] == 3 else images
    mean = jnp.mean(gray, axis=(-3, -2, -1), keepdims=True)
    return _blend(images, mean, factor)


def adjust_saturation(images, factor):
    if images.shape[-1] != 3:
        return images
    return _blend(images, _grayscale(images), factor)


def rgb_to_hsv(images: jax.Array) -> jax.Array:
    """torchvision's ``_rgb2hsv`` on (..., 3) RGB in [0, 1]."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    maxc = jnp.max(images, axis=-1)
    minc = jnp.min(images, axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = jnp.ones_like(maxc)
    s = cr / jnp.where(eqc, ones, maxc)
    cr_divisor = jnp.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return jnp.stack((h, s, maxc), axis=-1)


def hsv_to_rgb(images: jax.Array) -> jax.Array:
    """torchvision's ``_hsv2rgb`` on (..., 3) HSV."""
    h, s, v = images[..., 0], images[..., 1], images[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = [jnp.select([sector == k for k in range(6)], [row[c] for row in table]) for c in range(3)]
    return jnp.stack(rgb, axis=-1)


def adjust_hue(images, shift):
    if images.shape[-1] != 3:
        return images
    hsv = rgb_to_hsv(images)
    hue = jnp.mod(hsv[..., 0] + shift, 1.0)
    return hsv_to_rgb(jnp.stack((hue, hsv[..., 1], hsv[..., 2]), axis=-1))


def _jitter_params(key: jax.Array, config: AugmentConfig, dtype):
    """torchvision ColorJitter.get_params: an order of the four operations and their factors."""
    keys = jax.random.split(key, 5)
    order = jax.random.permutation(keys[0], 4)

    def factor(k, amount):
        return jax.random.uniform(k, (), dtype, max(0.0, 1.0 - amount), 1.0 + amount)

    return (
        order,
        factor(keys[1], config.brightness),
        factor(keys[2], config.contrast),
        factor(keys[3], config.saturation),
        jax.random.uniform(keys[4], (), dtype, -config.hue, config.hue),
    )


def color_jitter(images: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
    """ColorJitter with one draw for all of ``images`` (..., H, W, C)."""
    order, brightness, contrast, saturation, hue = _jitter_params(key, config, images.dtype)
    operations = [
        lambda x: adjust_brightness(x, brightness),
        lambda x: adjust_contrast(x, contrast),
        lambda x: adjust_saturation(x, saturation),
        lambda x: adjust_hue(x, hue),
    ]
    for position in range(4):
        images = jax.lax.switch(order[position], operations, images)
    return images


def _augment_one_draw(images: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
    """Crop, flip and jitter with one set of random parameters for all of ``images``."""
    crop_key, flip_key, jitter_key = jax.random.split(key, 3)
    height, width = images.shape[-3], images.shape[-2]
    top_key, left_key = jax.random.split(crop_key)
    top = jax.random.randint(top_key, (), 0, height - config.crop_size + 1)
    left = jax.random.randint(left_key, (), 0, width - config.crop_size + 1)
    images = crop(images, top, left, config.crop_size)
    if config.flip:
        images = jnp.where(jax.random.bernoulli(flip_key), images[..., :, ::-1, :], images)
    if config.jitter:
        images = color_jitter(images, jitter_key, config)
    return images


def preprocess_for_train(images: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
    """uint8 (N, H, W, C) -> augmented float32 (N, crop, crop, C) in [0, 1]."""
    images = to_float(images)
    if config.granularity == "batch":
        return _augment_one_draw(images, key, config)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda image, k: _augment_one_draw(image, k, config))(images, keys)


def preprocess_for_eval(images: jax.Array, crop_size: int) -> jax.Array:
    """uint8 (N, H, W, C) -> centre-cropped float32 (N, crop, crop, C) in [0, 1]. Float images
    (corrupted ones, say) are only cropped: every a-layer L1-normalises its patches, so the
    networks do not change when an input is scaled."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return center_crop(images.astype(jnp.float32), crop_size)
    return center_crop(to_float(images), crop_size)
