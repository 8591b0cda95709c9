"""A sweep file and its plan: the variants, each a complete training config, skipped or counted.

A sweep file is a Python config file (like the training configs) whose ``get_config(arg=None)``
returns a ``ConfigDict`` with:

* ``name``: the sweep's name;
* ``base``: a training config (``configs/cifar10.py``'s, say);
* ``points``: a list of flat override dicts (:mod:`deepnmf_jax.experiments.grid`), one per variant;
* optionally ``figures`` (``"fig5"``, ``"fig6"``, ``"curves"``: what ``report`` draws) and
  ``paper`` (the paper's accuracies by variant name, drawn beside ours).

``load("sweeps/fig5:fashion_mnist")`` (a packaged sweep) or ``load("my_sweep.py:ARG")`` passes the
text after ``:`` as ``arg``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from deepnmf_jax import _schema, config_files
from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.experiments import grid
from deepnmf_jax.models import config as model_config
from deepnmf_jax.models import flops
from deepnmf_jax.models.param_counts import param_breakdown
from deepnmf_jax.training.checks import build_checked
from deepnmf_jax.training.config import TrainConfig, from_any

FIGURES = ("fig5", "fig6", "curves")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep file."""

    name: str
    base: TrainConfig
    points: list[dict[str, Any]]
    figures: tuple[str, ...] = ("curves",)
    paper: dict[str, float] = dataclasses.field(default_factory=dict)
    note: str = ""  # what a reader of its tables and figures must know (e.g. a smoke test's)


def load(spec: str) -> Sweep:
    """Runs a sweep file's ``get_config`` and checks what it returns."""
    sweep = config_files.load(spec)
    for key in ("name", "base", "points"):
        if key not in sweep:
            raise ConfigError(f"sweep {spec}: get_config() must set {key!r}")
    unknown = set(sweep.get("figures", ())) - set(FIGURES)
    if unknown:
        raise ConfigError(f"sweep {sweep.name}: unknown figures {sorted(unknown)}; use {FIGURES}")
    return Sweep(
        name=sweep.name,
        base=from_any(sweep.base),
        points=[dict(point) for point in sweep.points],
        figures=tuple(sweep.get("figures", ("curves",))),
        paper=dict(sweep.get("paper", {}) or {}),
        note=str(sweep.get("note", "") or ""),
    )


@dataclasses.dataclass(frozen=True)
class Planned:
    """One variant of a plan: its complete config, and either its parameters or why it is skipped."""

    name: str
    overrides: dict[str, Any]
    config: TrainConfig
    parameters: dict | None  # param_breakdown and training MFLOP, None when skipped
    skipped: str | None = None


def plan(
    sweep: Sweep, only: Sequence[str] = (), overrides: Mapping[str, str] | None = None
) -> list[Planned]:
    """The variants of ``sweep`` matching ``only``, with the ``--config.KEY=VALUE`` texts of
    ``overrides`` applied to each.

    A variant whose model does not fit (groups that do not divide its channels) is planned as
    skipped, with the reason; any other invalid value is a :class:`ConfigError` for the sweep.
    """
    base = _schema.replace(sweep.base, overrides, texts=True) if overrides else sweep.base
    planned = []
    for variant in grid.select(grid.variants(sweep.points), only):
        try:
            config = base.replace(variant.overrides)
        except ConfigError as error:
            raise ConfigError(f"variant {variant.name}: {error}") from None
        spec = DATASETS[config.data.name]
        try:
            model = build_checked(config, spec.num_classes, spec.image_shape)
        except ConfigError as error:
            planned.append(Planned(variant.name, variant.overrides, config, None, str(error)))
            continue
        planned.append(
            Planned(variant.name, variant.overrides, config, count_parameters(config, model))
        )
    if not planned:
        raise ConfigError(f"no variant of sweep {sweep.name} matches --only {list(only)}")
    return planned


def count_parameters(config: TrainConfig, model=None) -> dict:
    """One seed's parameters by kind for a training config (shapes only, nothing computed), and
    the hand-counted training work per image (``train_mflop_per_image``,
    :mod:`deepnmf_jax.models.flops`)."""
    spec = DATASETS[config.data.name]
    if model is None:
        model = model_config.build(config.model, spec.num_classes, spec.image_shape[-1])
    crop = config.augment.crop_size
    image_shape = (crop, crop, spec.image_shape[-1])
    mflop = flops.train_step_flops(model, image_shape) / 1e6
    return {**param_breakdown(model, image_shape), "train_mflop_per_image": round(mflop, 2)}
