"""Checks of a run's configuration and data, before anything is written: every message names the key,
the value and what is allowed."""

from __future__ import annotations

import ml_collections
import numpy as np

import deepnmf_jax.layers
import deepnmf_jax.nmf
from deepnmf_jax import augment, input_pipeline, losses, models, optim
from deepnmf_jax.errors import ConfigError, DataError

DATA_ORDERS = ("fixed", "per_seed")

INCIDENTAL_KEYS = frozenset(
    {
        "progress",
        "tensorboard",
        "log_every_steps",
        "checkpoint_every_epochs",
        "data.source",
        "data.data_dir",
        "data.cache_dir",
        "data.download_url",
    }
)
"""Config keys that say where the data comes from and how a run reports: they change neither what
is computed nor its results (a run may resume with others; the compiled steps do not depend on
them)."""


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
    choose(config.model.head, models.HEADS, "config.model.head")
    choose(config.model.batch_norm_1x1, (False, True), "config.model.batch_norm_1x1")
    choose(config.optim.schedule, optim.SCHEDULES, "config.optim.schedule")
    choose(config.optim.lr_batch_scaling, optim.LR_BATCH_SCALINGS, "config.optim.lr_batch_scaling")
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
        "model.train_iterations": (config.model.train_iterations, 0),
        "model.train_iterations_epochs": (config.model.train_iterations_epochs, 0),
        "model.width": (config.model.width, 1e-9),
        "model.groups": (config.model.groups, 1),
        "data.train_limit": (config.data.train_limit, 0),
        "data.test_limit": (config.data.test_limit, 0),
        "data.validation_size": (config.data.validation_size, 0),
        "augment.crop_size": (config.augment.crop_size, 1),
        "log_every_steps": (config.log_every_steps, 1),
        "optim.reference_batch_size": (config.optim.reference_batch_size, 1),
    }
    for name in ("groups_nmf", "groups_mix"):
        if config.model[name] is not None:
            at_least[f"model.{name}"] = (config.model[name], 1)
    if config.model.epsilon is not None:
        at_least["model.epsilon"] = (config.model.epsilon, 1e-30)
    for name in ("lr_a", "lr_b", "lr_bn", "eps", "plateau_rtol", "stop_lr"):
        at_least[f"optim.{name}"] = (config.optim[name], 0.0)
    for name in ("warmup_epochs", "weight_decay"):
        at_least[f"optim.{name}"] = (config.optim[name], 0.0)
    for name, (value, low) in at_least.items():
        if value < low:
            allowed = ">= 0" if low == 0 else "> 0" if low < 1 else f">= {low}"
            raise ConfigError(f"config.{name} must be {allowed}, got {value}")
    within = {
        "optim.b1": (config.optim.b1, 0, 1),
        "optim.b2": (config.optim.b2, 0, 1),
        "optim.plateau_factor": (config.optim.plateau_factor, 0, 1),
        "optim.ema_decay": (config.optim.ema_decay, 0, 1),
        "label_smoothing": (config.label_smoothing, 0, 1),
    }
    for name, (value, low, high) in within.items():
        if not low <= value < high:
            raise ConfigError(f"config.{name} must be in [{low}, {high}), got {value}")
    optim_config = config.optim
    if optim_config.schedule != "plateau":
        if not 0 < optim_config.initial_lr_fraction <= 1:
            raise ConfigError(
                "config.optim.initial_lr_fraction must be in (0, 1], got "
                f"{optim_config.initial_lr_fraction}"
            )
        low = 0 if optim_config.schedule == "cosine" else 1e-30
        if not low <= optim_config.final_lr_fraction <= 1:
            allowed = "[0, 1]" if low == 0 else "(0, 1] for onecycle"
            raise ConfigError(
                f"config.optim.final_lr_fraction must be in {allowed}, got "
                f"{optim_config.final_lr_fraction}"
            )
        if optim_config.warmup_epochs >= config.num_epochs:
            raise ConfigError(
                f"config.optim.warmup_epochs = {optim_config.warmup_epochs} must be less than "
                f"num_epochs = {config.num_epochs} (the schedule spans num_epochs)"
            )
    _check_train_iterations(config.model)
    if config.model.head == "linear" and not models.has_linear_head(config.model.name):
        raise ConfigError(
            f"config.model.head = 'linear' makes the last layer a plain convolution, but model "
            f"{config.model.name!r} ends with an NMF layer (non-negative inputs only); use "
            "head = 'reference'"
        )


def _check_train_iterations(model: ml_collections.ConfigDict) -> None:
    """``model.train_iterations`` needs NMF layers, and ``train_iterations_epochs`` needs it."""
    if model.train_iterations and models.PAPER_MODELS[model.name]["a_layer"] != "nmf":
        raise ConfigError(
            f"config.model.train_iterations = {model.train_iterations} sets the NMF iterations "
            f"of training steps, but model {model.name!r} has no NMF layer; leave it 0"
        )
    if model.train_iterations_epochs and not model.train_iterations:
        raise ConfigError(
            f"config.model.train_iterations_epochs = {model.train_iterations_epochs} needs "
            "config.model.train_iterations > 0 (the iterations of those epochs)"
        )


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
    check_model_fits(config, data.num_classes, (height, width, data.train.images.shape[-1]))
    for split_name, split in (("train", data.train), ("test", data.test)):
        labels = np.asarray(split.labels)
        bad = (labels < 0) | (labels >= data.num_classes)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{data.name} ({data.source}): {int(bad.sum())} {split_name} labels outside "
                f"[0, {data.num_classes}), e.g. label {int(labels[first])} at index {first}"
            )


def check_model_fits(config, num_classes: int, image_shape) -> None:
    """Builds the model's parameter shapes for the cropped images (nothing is computed), so that
    groups that do not divide their channels, or a crop the blocks cannot reduce to 1x1, are one
    ConfigError naming the keys."""
    from deepnmf_jax import param_counts, steps

    crop = config.augment.crop_size
    try:
        model = steps.model_from_config(config, num_classes, image_shape[-1])
        param_counts.abstract_params(model, (crop, crop, image_shape[-1]))
    except ValueError as error:
        m = config.model
        raise ConfigError(
            f"model {m.name} (width {m.width}, groups {m.groups}, groups_nmf {m.groups_nmf}, "
            f"groups_mix {m.groups_mix}) does not fit {crop} x {crop} x {image_shape[-1]} "
            f"images: {error}"
        ) from None
