"""Trained weights released with the package, checked against their sha256 when loaded.

    from deepnmf_jax import pretrained
    model, variables = pretrained.load("cnmf_1x1_cifar10_fast")
    probs = model.apply(variables, pretrained.preprocess(images), train=False)  # uint8 NHWC 32x32

Every released model carries BatchNorm population statistics (the ``population`` collection of
``variables``): a prediction does not depend on the other images of its batch, one image at a time
included. ``load(name, population=False)`` gives the reference's evaluation instead (each batch's
own statistics: classify in batches of 50 for the manifest's ``batch_stats`` accuracy).

``available()`` lists the names; ``info(name)`` gives the manifest entry: the config, the
accuracies, the sha256 of the weights and the command that reproduces them.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from deepnmf_jax.data import archives
from deepnmf_jax.data.augment import preprocess_for_eval
from deepnmf_jax.models import config as model_config
from deepnmf_jax.nn.linen import POPULATION
from deepnmf_jax.training.config import from_any

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


def load(name: str, population: bool = True) -> tuple[nn.Module, dict]:
    """``(model, variables)`` of a released model; evaluate with ``train=False``.

    Args:
      population: keep the BatchNorm population statistics (batch-independent predictions);
        False drops them, for the reference's per-batch statistics.

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
    arrays = archives.read_npz(io.BytesIO(data), entry["file"])
    flat = {tuple(key.split("/")): jnp.asarray(value) for key, value in arrays.items()}
    variables = traverse_util.unflatten_dict(flat)
    if not population:
        variables.pop(POPULATION, None)
    # the config it was trained with, as a run's config.json is read (keys added since filled in)
    config = from_any(entry["config"], complete=True)
    model = model_config.build(config.model, len(entry["classes"]), input_channels=None)
    return model, variables


def preprocess(images, crop_size: int = 28):
    """uint8 (N, 32, 32, C) images -> the centre-cropped float inputs the models take."""
    return preprocess_for_eval(jnp.asarray(images), crop_size)
