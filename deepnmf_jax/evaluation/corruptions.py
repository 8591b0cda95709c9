"""Image corruptions for the robustness suite, deterministic given a seed.

The reference's four (``mahbodnr/deep_nmf:noise_*.py``), applied to the 32 x 32 image before the
centre crop, each returning an image L1-normalised over (H, W, C) (+1e-20), as the reference does
(the networks do not change when an input is scaled), at eta from 0 to 1 (0 to 0.5 for picture):

* ``uniform``: ``(1 - eta) x^ + eta n^`` with uniform noise ``n``; ``^`` is L1 normalisation.
* ``picture``: ``(1 - eta) x^ + eta z^`` with a training image ``z``.
* ``holes``: each pixel-channel kept where ``U[0, 1) > eta``, else zeroed; then normalised.
* ``holes_w_noise``: the holes filled with L1-normalised uniform noise; then normalised (the image is
  not normalised first, so the fill is tiny beside it).

Because L1 normalisation turns each of these into a convex mixture of positive images, which suits
NMF-like models, the suite also has the community's convention: the 15 corruptions of CIFAR-10-C
at their 5 severities (:mod:`deepnmf_jax.evaluation.cifar10c`; level 0 is the clean image).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deepnmf_jax.evaluation import cifar10c

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


ETAS = tuple(round(k / 20, 4) for k in range(21))
SEVERITY_LEVELS = (0, 1, 2, 3, 4, 5)
REFERENCE = ("uniform", "picture", "holes", "holes_w_noise")
CIFAR10C = tuple(cifar10c.CORRUPTIONS)
CORRUPTIONS: dict[str, tuple[Callable | None, tuple[float, ...]]] = {
    # name: (function, levels); level 0 is the clean image (the L1-normalised one for the
    # reference's four)
    "uniform": (uniform, ETAS),
    "picture": (picture, tuple(round(k / 40, 4) for k in range(21))),
    "holes": (holes, ETAS),
    "holes_w_noise": (holes_w_noise, ETAS),
    **{name: (None, SEVERITY_LEVELS) for name in CIFAR10C},
}
"""Every corruption with its levels: eta for the reference's four, the severity for CIFAR-10-C."""


def corrupt(name: str, images: np.ndarray, level: float, seed, partners=None) -> np.ndarray:
    """uint8 (N, H, W, C) ``images`` under corruption ``name`` at ``level``: float images for the
    reference's four (L1-normalised), uint8 for CIFAR-10-C's (severity 0 is the clean image).
    The draws depend only on ``seed`` (an int or a sequence of ints), so every model is evaluated
    on the same corrupted images."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    images = np.asarray(images)
    if name in CIFAR10C:
        return images if level == 0 else cifar10c.corrupt(name, images, int(level), seed)
    function, _ = CORRUPTIONS[name]
    assert function is not None
    rng = np.random.default_rng(seed)
    floats = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    return function(floats, level, rng, partners).astype(np.float32)
