"""CIFAR-10-C (Hendrycks and Dietterich 2019): the 15 corruptions at their 5 CIFAR severities,
generated in memory from the test images, or read from the official ``.npy`` files.

The formulas and parameters are those of ``hendrycks/robustness:ImageNet-C/create_c/make_cifar_c.py``
(the CIFAR table of each corruption), applied to uint8 (N, 32, 32, 3) images and stored as the
published files are (``np.uint8`` of the result: truncated). Where that code calls OpenCV,
scikit-image or ImageMagick, :mod:`deepnmf_jax.evaluation._image_ops` computes the same operation
with numpy, scipy and Pillow (ours; the motion blur follows ``imagecorruptions``' reimplementation
of ImageMagick's). The frost photographs are ``imagecorruptions``' (the same six as the published
code's; ``pip install --no-deps imagecorruptions``: only its files are read). The random draws come
from a numpy generator seeded per corruption and severity, so every model sees the same images; they
are not the official files' draws, which ``cifar10c_dir`` reads instead.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from deepnmf_jax.errors import ConfigError, DataError
from deepnmf_jax.evaluation import _image_ops as ops

SEVERITIES = (1, 2, 3, 4, 5)


def _per_image(function) -> Callable:
    def batch(images, severity, rng):
        return np.stack([function(image, severity, rng) for image in images])

    return batch


def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity, rng):
    """scikit-image's ``random_noise(mode="s&p", amount=c)``: a fraction c of the values, half
    set to 1 and half to 0."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    x = x / 255.0
    flipped = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    x = np.where(flipped & salt, 1.0, np.where(flipped, 0.0, x))
    return np.clip(x, 0, 1) * 255


@_per_image
def defocus_blur(x, severity, rng):
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    kernel = ops.disk(radius, alias_blur)
    return np.clip(ops.filter2d(x / 255.0, kernel), 0, 1) * 255


@_per_image
def glass_blur(x, severity, rng):
    sigma, delta, iterations = [
        (0.05, 1, 1),
        (0.25, 1, 1),
        (0.4, 1, 1),
        (0.25, 1, 2),
        (0.4, 1, 2),
    ][severity - 1]
    x = (ops.gaussian(x / 255.0, sigma) * 255).astype(np.uint8)
    for _ in range(iterations):  # "locally shuffle pixels"
        for h in range(32 - delta, delta, -1):
            for w in range(32 - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                hp, wp = h + dy, w + dx
                # as published: the tuple holds views, so x[hp, wp] gets x[h, w]'s new value:
                # a copy of the neighbour, not a swap (the official files were made so)
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
    return np.clip(ops.gaussian(x / 255.0, sigma), 0, 1) * 255


@_per_image
def motion_blur(x, severity, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    blurred = ops.motion_blur(x.astype(np.float32), radius, sigma, rng.uniform(-45, 45))
    return np.clip(np.round(blurred), 0, 255)  # ImageMagick returns an 8-bit picture


def zoom_blur(x, severity, rng):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
    factors = np.arange(1, top, 0.01)
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += np.stack([ops.clipped_zoom(image, factor) for image in x])
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


@_per_image
def snow(x, severity, rng):
    c = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ][severity - 1]
    x = np.asarray(x, np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = ops.clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = ops.png_round_trip(layer[..., 0])[..., None]
    layer = ops.motion_blur(layer * 255, c[4], c[5], rng.uniform(-135, -45))
    layer = np.clip(np.round(layer), 0, 255) / 255.0
    x = c[6] * x + (1 - c[6]) * np.maximum(x, ops.rgb_to_gray(x) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost_pictures() -> list[np.ndarray]:
    """The first five of ``imagecorruptions``' frost photographs (RGB, uint8), as the published
    code draws among them."""
    spec = importlib.util.find_spec("imagecorruptions")  # located, not imported (it needs cv2)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the frost corruption needs the frost photographs of the imagecorruptions package: "
            "pip install --no-deps imagecorruptions"
        )
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "frost"
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in names]


def _resize_linear(image: np.ndarray, scale: float) -> np.ndarray:
    """OpenCV's ``resize(fx=fy=scale)`` with its default bilinear interpolation (no antialias)."""
    h, w = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    ys = (np.arange(h) + 0.5) / scale - 0.5
    xs = (np.arange(w) + 0.5) / scale - 0.5
    grid = np.meshgrid(ys, xs, indexing="ij")
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c].astype(np.float32), grid, order=1, mode="nearest")
            for c in range(image.shape[-1])
        ],
        -1,
    )


def frost(x, severity, rng, pictures=None):
    weight, frost_weight = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    resized = [np.round(_resize_linear(p, 0.2)) for p in (pictures or frost_pictures())]
    out = []
    for image in x:
        picture = resized[rng.integers(5)]
        top = rng.integers(0, picture.shape[0] - 32)
        left = rng.integers(0, picture.shape[1] - 32)
        patch = picture[top : top + 32, left : left + 32]
        out.append(np.clip(weight * image + frost_weight * patch, 0, 255))
    return np.stack(out)


@_per_image
def fog(x, severity, rng):
    c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = x / 255.0
    max_val = x.max()
    x = x + c[0] * ops.plasma_fractal(rng, 32, c[1])[:32, :32][..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _hsv(x):
    import matplotlib.colors

    return matplotlib.colors.rgb_to_hsv(x)


def _rgb(x):
    import matplotlib.colors

    return matplotlib.colors.hsv_to_rgb(x)


def brightness(x, severity, rng):
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    hsv = _hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(_rgb(hsv), 0, 1) * 255


def contrast(x, severity, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    x = x / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


@_per_image
def elastic_transform(x, severity, rng):
    size = 32
    c = [
        (size * 0, size * 0, size * 0.08),
        (size * 0.05, size * 0.2, size * 0.07),
        (size * 0.08, size * 0.06, size * 0.06),
        (size * 0.1, size * 0.04, size * 0.05),
        (size * 0.1, size * 0.03, size * 0.03),
    ][severity - 1]
    image = np.asarray(x, np.float32) / 255.0
    center = np.array([size, size], np.float32) // 2
    square = size // 3
    source = np.array(
        [center + square, [center[0] + square, center[1] - square], center - square], np.float32
    )
    target = source + rng.uniform(-c[2], c[2], size=source.shape).astype(np.float32)
    image = ops.warp_affine(image, ops.affine_matrix(source, target))
    dx = ops.gaussian(rng.uniform(-1, 1, size=(size, size)), c[1], "reflect", 3) * c[0]
    dy = ops.gaussian(rng.uniform(-1, 1, size=(size, size)), c[1], "reflect", 3) * c[0]
    ys, xs = np.mgrid[0:size, 0:size]
    warped = [
        ndimage.map_coordinates(image[..., k], [ys + dy, xs + dx], order=1, mode="reflect")
        for k in range(image.shape[-1])
    ]
    return np.clip(np.stack(warped, -1), 0, 1) * 255


@_per_image
def pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    small = ops.pil(x / 255.0).resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((32, 32), Image.Resampling.BOX))


@_per_image
def jpeg_compression(x, severity, rng):
    quality = [80, 65, 58, 50, 40][severity - 1]
    buffer = io.BytesIO()
    ops.pil(x / 255.0).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
"""The 15 corruptions of CIFAR-10-C, in the published order."""


def corrupt(name: str, images: np.ndarray, severity: int, seed) -> np.ndarray:
    """uint8 (N, 32, 32, 3) test images under corruption ``name`` at ``severity`` (1-5), as uint8;
    the draws come from ``seed`` (an int or a sequence of ints) alone."""
    if name not in CORRUPTIONS:
        raise ConfigError(
            f"unknown CIFAR-10-C corruption {name!r}; choose from {', '.join(CORRUPTIONS)}"
        )
    if severity not in SEVERITIES:
        raise ConfigError(f"CIFAR-10-C severities are 1 to 5, got {severity}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ConfigError(f"CIFAR-10-C corrupts 32 x 32 RGB images, got shape {images.shape}")
    rng = np.random.default_rng(seed)
    result = CORRUPTIONS[name](images.astype(np.float64), severity, rng)
    return np.clip(result, 0, 255).astype(np.uint8)  # truncated, as np.uint8() of the published


def read_official(folder: pathlib.Path, name: str, severity: int, limit: int = 0):
    """(images, labels) of severity ``severity`` from the official ``FOLDER/NAME.npy`` and
    ``labels.npy`` (each severity a block of the test set, in order); the first ``limit`` images."""
    folder = pathlib.Path(folder)
    path, labels_path = folder / f"{name}.npy", folder / "labels.npy"
    for needed in (path, labels_path):
        if not needed.is_file():
            raise DataError(
                f"{needed} is missing: the folder must hold the official CIFAR-10-C files"
            )
    images = np.load(path, mmap_mode="r", allow_pickle=False)
    labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
    if (
        images.ndim != 4
        or images.shape[1:] != (32, 32, 3)
        or len(images) % 5
        or len(labels) != len(images)
    ):
        raise DataError(
            f"{path}: expected 5 severities of (N, 32, 32, 3) uint8 images and N labels each"
        )
    block = len(images) // 5
    stop = block if not limit else min(limit, block)
    start = (severity - 1) * block
    return np.asarray(images[start : start + stop]), np.asarray(
        labels[start : start + stop], np.int32
    )
