"""Trained weights released with the package, checked against their sha256 when loaded.

    from deepnmf_jax import pretrained
    model, variables = pretrained.load("cnmf_1x1_cifar10_fast")
    probs = model.apply(variables, pretrained.preprocess(images), train=False)  # uint8 NHWC 32x32

``available()`` lists the names; ``info(name)`` gives the manifest entry: the config, the accuracy
(CIFAR-10 test set, and the bundled sample's 500 test images), the sha256 of the weights and the
command that reproduces them.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from deepnmf_jax import augment, models, steps, workdir

_FOLDER = importlib.resources.files("deepnmf_jax") / "pretrained"


def _manifest() -> dict:
    return json.loads((_FOLDER / "manifest.json").read_text())


def available() -> list[str]:
    """The names of the released models."""
    return sorted(_manifest())


def info(name: str) -> dict:
    """A released model's manifest entry (config, accuracy, sha256, command)."""
    manifest = _manifest()
    if name not in manifest:
        raise KeyError(f"no released model {name!r}; available: {', '.join(sorted(manifest))}")
    return manifest[name]


def load(name: str) -> tuple[models.DeepNMF, dict]:
    """``(model, variables)`` of a released model; evaluate with ``train=False``.

    Raises:
      KeyError: an unknown name.
      ValueError: the weights file does not match its sha256 (damaged).
    """
    entry = info(name)
    data = (_FOLDER / entry["file"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(
            f"{entry['file']} is damaged: sha256 {digest} is not the released {entry['sha256']}"
        )
    with np.load(io.BytesIO(data)) as arrays:
        flat = {tuple(key.split("/")): jnp.asarray(arrays[key]) for key in arrays.files}
    variables = traverse_util.unflatten_dict(flat)
    # the config it was trained with, as a run's config.json is read (keys added since filled in)
    config = ml_collections.ConfigDict(workdir.complete_config(entry["config"]))
    model = steps.model_from_config(config, len(entry["classes"]), input_channels=None)
    return model, variables


def preprocess(images, crop_size: int = 28):
    """uint8 (N, 32, 32, C) images -> the centre-cropped float inputs the models take."""
    return augment.preprocess_for_eval(jnp.asarray(images), crop_size)
