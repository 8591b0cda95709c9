"""Checks of a run's configuration and data, before anything is written: every message names the key,
the value and what is allowed."""

from __future__ import annotations

import ml_collections
import numpy as np

import deepnmf_jax.layers
import deepnmf_jax.nmf
from deepnmf_jax import augment, input_pipeline, losses, models
from deepnmf_jax.errors import ConfigError, DataError

DATA_ORDERS = ("fixed", "per_seed")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the choices that the config's types cannot, with messages that name the bad value."""

    def choose(value, allowed, name):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {tuple(allowed)}, got {value!r}")

    choose(config.model.name, models.PAPER_MODELS, "config.model.name")
    choose(config.model.gradient, deepnmf_jax.nmf.GRADIENT_MODES, "config.model.gradient")
    choose(config.model.batch_norm, ("batch", "running"), "config.model.batch_norm")
    choose(config.model.precision, deepnmf_jax.nmf.PRECISIONS, "config.model.precision")
    choose(
        config.model.patch_conv, deepnmf_jax.layers.PATCH_CONV_METHODS, "config.model.patch_conv"
    )
    choose(config.data.name, input_pipeline.DATASETS, "config.data.name")
    choose(config.data.source, input_pipeline.SOURCES, "config.data.source")
    choose(config.data.order, DATA_ORDERS, "config.data.order")
    choose(config.loss, losses.LOSSES, "config.loss")
    choose(config.augment.granularity, augment.GRANULARITIES, "config.augment.granularity")
    for name in (
        "num_seeds",
        "num_epochs",
        "batch_size",
        "eval_batch_size",
        "checkpoint_every_epochs",
    ):
        if config[name] < 1:
            raise ConfigError(f"config.{name} must be >= 1, got {config[name]}")
    at_least = {
        "model.iterations": (config.model.iterations, 1),
        "model.width": (config.model.width, 1e-9),
        "model.groups": (config.model.groups, 1),
        "data.train_limit": (config.data.train_limit, 0),
        "data.test_limit": (config.data.test_limit, 0),
        "data.validation_size": (config.data.validation_size, 0),
        "augment.crop_size": (config.augment.crop_size, 1),
        "log_every_steps": (config.log_every_steps, 1),
    }
    for name in ("lr_a", "lr_b", "lr_bn", "eps", "plateau_rtol", "stop_lr"):
        at_least[f"optim.{name}"] = (config.optim[name], 0.0)
    for name, (value, low) in at_least.items():
        if value < low:
            allowed = ">= 0" if low == 0 else "> 0" if low < 1 else f">= {low}"
            raise ConfigError(f"config.{name} must be {allowed}, got {value}")
    for name in ("b1", "b2", "plateau_factor"):
        if not 0 <= config.optim[name] < 1:
            raise ConfigError(f"config.optim.{name} must be in [0, 1), got {config.optim[name]}")


def validate_data(config: ml_collections.ConfigDict, data: input_pipeline.Dataset) -> None:
    """Checks the dataset against the config: enough images for a batch, labels in range, a crop
    that fits the images."""
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
