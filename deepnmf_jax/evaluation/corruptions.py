"""Image corruptions for the robustness suite, on float (N, H, W, C) images in [0, 1], deterministic
given a numpy ``Generator``.

The reference's four (``mahbodnr/deep_nmf:noise_*.py``, spec section 4), applied to the 32 x 32
image before the centre crop, each returning an image L1-normalised over (H, W, C) (+1e-20), as the
reference does (the networks do not change when an input is scaled):

* ``uniform``: ``(1 - eta) x^ + eta n^`` with uniform noise ``n``; ``^`` is L1 normalisation.
* ``picture``: ``(1 - eta) x^ + eta z^`` with a training image ``z``; eta from 0 to 0.5.
* ``holes``: each pixel-channel kept where ``U[0, 1) > eta``, else zeroed; then normalised.
* ``holes_w_noise``: the holes filled with L1-normalised uniform noise; then normalised (the image is
  not normalised first, so the fill is tiny beside it).

Because L1 normalisation turns each of these into a convex mixture of positive images, which suits
NMF-like models, four standard ones follow CIFAR-10-C (Hendrycks & Dietterich 2019,
``hendrycks/robustness:ImageNet-C/create_c/make_cifar_c.py``) at its five CIFAR severities, written
here with numpy and scipy (images stay in [0, 1], unnormalised):

* ``gaussian_noise``: ``clip(x + N(0, s^2))``, s = 0.04, 0.06, 0.08, 0.09, 0.10;
* ``impulse_noise``: salt-and-pepper (skimage's ``s&p``): each pixel-channel replaced with
  probability a = 0.01, 0.02, 0.03, 0.05, 0.07, by 1 or 0 with equal odds;
* ``contrast``: ``clip((x - m) c + m)`` with the per-image, per-channel mean m, c = 0.75, 0.5, 0.4,
  0.3, 0.15;
* ``gaussian_blur``: a Gaussian filter over H and W (``scipy.ndimage``, ``mode="nearest"``, truncated
  at 4 sigma, as skimage's), sigma = 0.4, 0.6, 0.7, 0.8, 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPS = 1e-20


def l1_normalize_images(x: np.ndarray) -> np.ndarray:
    """Each image divided by its sum over (H, W, C) (+1e-20)."""
    return x / (x.sum(axis=(1, 2, 3), keepdims=True) + EPS)


def _random(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


def uniform(x, eta, rng, partners=None):
    noise = _random(rng, x.shape)
    return (1.0 - eta) * l1_normalize_images(x) + eta * l1_normalize_images(noise)


def picture(x, eta, rng, partners=None):
    if partners is None:
        raise ValueError("the picture corruption needs training images (partners)")
    return (1.0 - eta) * l1_normalize_images(x) + eta * l1_normalize_images(partners)


def holes(x, eta, rng, partners=None):
    keep = _random(rng, x.shape) > eta
    return l1_normalize_images(x * keep)


def holes_w_noise(x, eta, rng, partners=None):
    keep = _random(rng, x.shape) > eta
    fill = l1_normalize_images(_random(rng, x.shape))
    return l1_normalize_images(np.where(keep, x, fill))


def gaussian_noise(x, sigma, rng, partners=None):
    return np.clip(x + rng.normal(0.0, sigma, x.shape).astype(x.dtype), 0.0, 1.0)


def impulse_noise(x, amount, rng, partners=None):
    flipped = _random(rng, x.shape) < amount
    salted = _random(rng, x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def contrast(x, factor, rng, partners=None):
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * factor + means, 0.0, 1.0)


def gaussian_blur(x, sigma, rng, partners=None):
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    return np.clip(blurred, 0.0, 1.0).astype(x.dtype)


ETAS = tuple(round(k / 20, 4) for k in range(21))
CORRUPTIONS: dict[str, tuple[Callable, tuple[float, ...]]] = {
    # name: (function, levels); level 0 is the clean image for every corruption
    "uniform": (uniform, ETAS),
    "picture": (picture, tuple(round(k / 40, 4) for k in range(21))),
    "holes": (holes, ETAS),
    "holes_w_noise": (holes_w_noise, ETAS),
    "gaussian_noise": (gaussian_noise, (0.0, 0.04, 0.06, 0.08, 0.09, 0.10)),
    "impulse_noise": (impulse_noise, (0.0, 0.01, 0.02, 0.03, 0.05, 0.07)),
    "contrast": (contrast, (1.0, 0.75, 0.5, 0.4, 0.3, 0.15)),
    "gaussian_blur": (gaussian_blur, (0.0, 0.4, 0.6, 0.7, 0.8, 1.0)),
}
"""Every corruption with its levels: eta for the reference's four (the x axis of their plots), the
CIFAR-10-C parameter of severities 0 (clean) to 5 for the standard ones."""
REFERENCE = ("uniform", "picture", "holes", "holes_w_noise")
STANDARD = ("gaussian_noise", "impulse_noise", "contrast", "gaussian_blur")


def corrupt(name: str, images: np.ndarray, level: float, seed, partners=None) -> np.ndarray:
    """``images`` (N, H, W, C) float in [0, 1] under corruption ``name`` at ``level``.

    The draws depend only on ``seed`` (an int or a sequence of ints), so every model is evaluated
    on the same corrupted images. A level of 0 (1 for contrast, whose level is a factor) leaves a
    standard corruption's images unchanged; the reference corruptions at eta 0 give the
    L1-normalised image.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    function, _ = CORRUPTIONS[name]
    rng = np.random.default_rng(seed)
    images = np.asarray(images, np.float32)
    if name == "gaussian_blur" and level == 0:
        return images
    return function(images, level, rng, partners).astype(np.float32)
