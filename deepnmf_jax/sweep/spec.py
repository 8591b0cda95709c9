"""A sweep file and its plan: the variants, each a complete training config, skipped or counted.

A sweep file is a Python config file (like the training configs) whose ``get_config(arg=None)``
returns a ``ConfigDict`` with:

* ``name``: the sweep's name;
* ``base``: a training config (``configs/cifar10.py``'s, say);
* ``points``: a list of flat override dicts (:mod:`deepnmf_jax.sweep.grid`), one per variant;
* optionally ``figures`` (``"fig5"``, ``"fig6"``, ``"curves"``: what ``report`` draws) and
  ``paper`` (the paper's accuracies by variant name, drawn beside ours).

``load("configs/sweeps/fig5.py:fashion_mnist")`` passes the text after ``:`` as ``arg``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from deepnmf_jax import param_counts, steps, validation
from deepnmf_jax.dataset_files import DATASETS
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.sweep import grid

FIGURES = ("fig5", "fig6", "curves")


def load(spec: str) -> ml_collections.ConfigDict:
    """Runs a sweep file's ``get_config`` (``PATH`` or ``PATH:ARG``) and checks what it returns."""
    path_text, _, arg = spec.partition(":")
    path = pathlib.Path(path_text).resolve()
    if not path.is_file():
        raise ConfigError(f"sweep file {path_text} does not exist")
    for parent in path.parents:  # so that the file can import the training configs
        if parent.name == "configs" and str(parent.parent) not in sys.path:
            sys.path.insert(0, str(parent.parent))
    module_spec = importlib.util.spec_from_file_location(f"_deepnmf_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sweep = module.get_config(arg) if arg else module.get_config()
    for key in ("name", "base", "points"):
        if key not in sweep:
            raise ConfigError(f"sweep file {path_text}: get_config() must set {key!r}")
    unknown = set(sweep.get("figures", ())) - set(FIGURES)
    if unknown:
        raise ConfigError(f"sweep {sweep.name}: unknown figures {sorted(unknown)}; use {FIGURES}")
    return sweep


def parse_sets(sets: Sequence[str], base: ml_collections.ConfigDict) -> dict[str, Any]:
    """``--set KEY=VALUE`` strings as overrides, each value read as the type of ``base``'s field."""
    overrides = {}
    for text in sets:
        key, equals, value = text.partition("=")
        if not equals:
            raise ConfigError(f"--set {text!r} is not KEY=VALUE")
        current = _get(base, key)
        overrides[key] = _parse(value, current, key)
    return overrides


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node = node[part]
    return node


def _parse(text: str, current, key: str):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        return None if text in ("None", "none") else ast.literal_eval(text)
    except (ValueError, SyntaxError):
        kind = type(current).__name__
        raise ConfigError(f"--set {key}={text}: not a {kind}") from None


def with_overrides(base: ml_collections.ConfigDict, overrides: dict[str, Any]):
    """A copy of ``base`` with dotted ``overrides`` applied; unknown keys are an error."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.lock()
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        target = _get(config, section) if section else config
        if leaf not in target:
            raise ConfigError(f"unknown config key {key!r}")
        with target.unlocked():
            target[leaf] = value
    return config


@dataclasses.dataclass(frozen=True)
class Planned:
    """One variant of a plan: its complete config, and either its parameters or why it is skipped."""

    name: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    parameters: dict | None  # param_counts.param_breakdown, None when skipped
    skipped: str | None = None


def plan(
    sweep: ml_collections.ConfigDict, only: Sequence[str] = (), sets: Sequence[str] = ()
) -> list[Planned]:
    """The variants of ``sweep`` matching ``only``, with ``sets`` applied to each.

    A variant whose model does not fit (groups that do not divide its channels) is planned as
    skipped, with the reason; any other invalid value is a :class:`ConfigError` for the sweep.
    """
    extra = parse_sets(sets, sweep.base)
    planned = []
    for variant in grid.select(grid.variants(list(sweep.points)), only):
        config = with_overrides(sweep.base, {**variant.overrides, **extra})
        try:
            validation.validate_config(config)
        except ConfigError as error:
            raise ConfigError(f"variant {variant.name}: {error}") from None
        spec = DATASETS[config.data.name]
        try:
            validation.check_model_fits(config, spec.num_classes, spec.image_shape)
        except ConfigError as error:
            planned.append(Planned(variant.name, variant.overrides, config, None, str(error)))
            continue
        parameters = count_parameters(config)
        planned.append(Planned(variant.name, variant.overrides, config, parameters))
    if not planned:
        raise ConfigError(f"no variant of sweep {sweep.name} matches --only {list(only)}")
    return planned


def count_parameters(config) -> dict:
    """One seed's parameters by kind for a training config (shapes only, nothing computed), and
    the hand-counted training work per image (``train_mflop_per_image``, :mod:`deepnmf_jax.flops`)."""
    from deepnmf_jax import flops

    spec = DATASETS[config.data.name]
    model = steps.model_from_config(config, spec.num_classes, spec.image_shape[-1])
    crop = config.augment.crop_size
    image_shape = (crop, crop, spec.image_shape[-1])
    shapes = param_counts.abstract_params(model, image_shape)
    mflop = flops.train_step_flops(model, image_shape) / 1e6
    return {**param_counts.param_breakdown(model, shapes), "train_mflop_per_image": round(mflop, 2)}
