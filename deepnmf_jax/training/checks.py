"""Checks of a config against its data and its model, before anything is written: every message
names the key, the value and what is allowed. (The config's own values are checked when it is built:
:mod:`deepnmf_jax.training.config`.)"""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from deepnmf_jax.data.pipeline import Dataset
from deepnmf_jax.errors import ConfigError, DataError
from deepnmf_jax.models import config as model_config
from deepnmf_jax.models.param_counts import abstract_params
from deepnmf_jax.training.config import TrainConfig


def check_data(config: TrainConfig, data: Dataset) -> None:
    """Enough images for a batch, a crop that fits the images, labels in range."""
    if len(data.train) < config.batch_size:
        raise ConfigError(
            f"config.batch_size = {config.batch_size} is larger than the {len(data.train)} "
            "training images"
        )
    height, width = data.train.images.shape[1:3]
    if config.augment.crop_size > min(height, width):
        raise ConfigError(
            f"config.augment.crop_size = {config.augment.crop_size} is larger than the "
            f"{height} x {width} images of {data.name}"
        )
    for split_name, split in (("train", data.train), ("test", data.test)):
        labels = np.asarray(split.labels)
        bad = (labels < 0) | (labels >= data.num_classes)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{data.name} ({data.source}): {int(bad.sum())} {split_name} labels outside "
                f"[0, {data.num_classes}), e.g. label {int(labels[first])} at index {first}"
            )


def build_checked(
    config: TrainConfig, num_classes: int, image_shape, model: nn.Module | None = None
) -> nn.Module:
    """The run's model (``model``, or the one ``config.model`` names), with its parameter shapes
    traced for the cropped (H, W, C) images (nothing is computed): groups that do not divide their
    channels, or a crop the blocks cannot reduce to 1x1, are one ConfigError naming the keys."""
    crop = config.augment.crop_size
    channels = image_shape[-1]
    if model is None:
        model = model_config.build(config.model, num_classes, channels)
    try:
        abstract_params(model, (crop, crop, channels))
    except (ValueError, TypeError) as error:
        m = config.model
        what = (
            f"model {m.name} (width {m.width}, groups {m.groups}, groups_nmf {m.groups_nmf}, "
            f"groups_mix {m.groups_mix})"
            if m.is_preset
            else f"model {m.name}"
        )
        raise ConfigError(
            f"{what} does not fit {crop} x {crop} x {channels} images: "
            f"{' '.join(str(error).split())}"
        ) from None
    return model
