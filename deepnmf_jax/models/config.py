"""The ``model`` section of a training config, and the one place that builds a model from it.

``name`` is one of the paper's models (``"cnn" | "cnmf" | "cnn_1x1" | "cnmf_1x1"``) or an import
string ``"package.module:attribute"`` naming a user's model: a Flax Linen module instance, or a
callable returning one (a class, a ``functools.partial``, a function), called with those of
``num_classes``, ``input_channels`` and ``nmf_options`` that it accepts. The other keys
(``width``, ``groups``, ``head``, ...) shape the paper's models; ``iterations``, ``epsilon``,
``gradient`` and the execution keys make the :class:`~deepnmf_jax.NMFOptions` passed to either.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import flax.linen as nn

from deepnmf_jax import _schema
from deepnmf_jax._schema import field
from deepnmf_jax.core.options import BACKWARD_NAMES, PRECISIONS, NMFOptions, backward_from_name
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.models.deepnmf import HEADS
from deepnmf_jax.models.presets import PAPER_MODELS, build_model, has_linear_head
from deepnmf_jax.nn.linen import BATCH_NORM_MODES, PATCH_CONV_METHODS


def _choose(value: Any, allowed, key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config.{key} must be one of {tuple(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What model a run trains and how its NMF layers run (module docstring)."""

    name: str = field("cnmf_1x1")  # a paper model, or "package.module:attribute"
    width: float = field(1.0)  # multiplies the hidden widths 32, 64, 96
    groups: int = field(1)  # groups of blocks 2 and 3 (a-layers and 1x1 layers alike)
    groups_nmf: int | None = field(None)  # a-layer groups (None: groups)
    groups_mix: int | None = field(None)  # 1x1-layer groups (None: groups)
    iterations: int = field(20)  # NMF fixed-point iterations
    # training steps may run fewer NMF iterations (0: iterations), in the first
    # train_iterations_epochs epochs (0: in every one); the model and its evaluation keep iterations
    train_iterations: int = field(0, since="0.1.0")
    train_iterations_epochs: int = field(0, since="0.1.0")
    epsilon: float | None = field(None)  # None: the paper's update
    gradient: str = field("approximate")  # the NMF backward (BACKWARD_NAMES)
    remat: bool = field(False)  # with gradient="unrolled": rematerialise each iteration
    batch_norm: str = field("batch")  # "batch" (reference) | "running"
    # the NMF loops run over chunks of positions of about this many bytes (None: automatic)
    chunk_bytes: int | None = field(None, resume="may_change")
    # the NMF loops pad S with zero inputs to a multiple of this (None: automatic)
    pad_inputs: int | None = field(None, resume="may_change", since="0.3.0")
    precision: str = field("float32")  # the NMF loops' products: float32 | bfloat16 | tf32
    # the NMF loops' unrolling: 0 rolled, -1 fully unrolled, k: k iterations per trip
    unroll: int = field(0, resume="may_change", since="0.2.0")
    # CNN a-layers: auto | matmul | conv | patches (auto: see resolve_patch_conv)
    patch_conv: str = field("auto", resume="may_change")
    head: str = field("reference")  # the last layer: "reference" | "linear"
    batch_norm_1x1: bool = field(False, since="0.1.0")  # BatchNorm in front of every ReLU at 1x1
    check_inputs: bool = field(False)  # checkify: NaN/negative NMF inputs stop the step, named

    def __post_init__(self):
        if not is_preset(self.name) and ":" not in self.name:
            raise ConfigError(
                f"config.model.name must be one of {tuple(PAPER_MODELS)} or an import string "
                f"'package.module:attribute', got {self.name!r}"
            )
        _choose(self.gradient, BACKWARD_NAMES, "model.gradient")
        _choose(self.batch_norm, BATCH_NORM_MODES, "model.batch_norm")
        _choose(self.precision, PRECISIONS, "model.precision")
        _choose(self.patch_conv, ("auto", *PATCH_CONV_METHODS), "model.patch_conv")
        _choose(self.head, HEADS, "model.head")
        if self.remat and self.gradient != "unrolled":
            raise ConfigError(
                f"config.model.remat = True only applies to gradient = 'unrolled', got "
                f"{self.gradient!r}"
            )
        lows = {
            "iterations": 1,
            "train_iterations": 0,
            "train_iterations_epochs": 0,
            "groups": 1,
            "unroll": -1,
        }
        for name, low in lows.items():
            if getattr(self, name) < low:
                raise ConfigError(
                    f"config.model.{name} must be >= {low}, got {getattr(self, name)}"
                )
        for name in ("groups_nmf", "groups_mix"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"config.model.{name} must be >= 1, got {value} (None: groups)")
        if not self.width > 0:
            raise ConfigError(f"config.model.width must be > 0, got {self.width}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"config.model.epsilon must be None or > 0, got {self.epsilon}")
        if self.chunk_bytes is not None and self.chunk_bytes < 0:
            raise ConfigError(
                f"config.model.chunk_bytes must be None or >= 0, got {self.chunk_bytes}"
            )
        if self.pad_inputs is not None and self.pad_inputs < 0:
            raise ConfigError(
                f"config.model.pad_inputs must be None or >= 0, got {self.pad_inputs}"
            )
        if is_preset(self.name):
            if self.head == "linear" and not has_linear_head(self.name):
                raise ConfigError(
                    f"config.model.head = 'linear' makes the last layer a plain convolution, but "
                    f"model {self.name!r} ends with an NMF layer (non-negative inputs only); use "
                    "head = 'reference'"
                )
            if self.train_iterations and PAPER_MODELS[self.name]["a_layer"] != "nmf":
                raise ConfigError(
                    f"config.model.train_iterations = {self.train_iterations} sets the NMF "
                    f"iterations of training steps, but model {self.name!r} has no NMF layer; "
                    "leave it 0"
                )
        if self.train_iterations_epochs and not self.train_iterations:
            raise ConfigError(
                f"config.model.train_iterations_epochs = {self.train_iterations_epochs} needs "
                "config.model.train_iterations > 0 (the iterations of those epochs)"
            )

    def nmf_options(self, iterations: int | None = None, **overrides: Any) -> NMFOptions:
        """The NMF options this config describes (``iterations`` replaces ``self.iterations``)."""
        unroll = {0: False, -1: True}.get(self.unroll, self.unroll)
        options = NMFOptions(
            iterations=iterations or self.iterations,
            epsilon=self.epsilon,
            backward=backward_from_name(self.gradient, self.remat),
            precision=self.precision,  # type: ignore[arg-type]
            chunk_bytes=self.chunk_bytes,
            pad_inputs=self.pad_inputs,
            unroll=unroll,
            check_inputs=self.check_inputs,
        )
        return dataclasses.replace(options, **overrides) if overrides else options

    @property
    def is_preset(self) -> bool:
        return is_preset(self.name)

    @property
    def has_nmf(self) -> bool | None:
        """Whether the model has NMF layers (None for a user's model: unknown until built)."""
        return PAPER_MODELS[self.name]["a_layer"] == "nmf" if self.is_preset else None


def is_preset(name: str) -> bool:
    return name in PAPER_MODELS


def resolve(import_string: str) -> Any:
    """The object an import string ``"package.module:attribute"`` names.

    Raises:
      ConfigError: the module or the attribute does not exist (one line naming which).
    """
    module_name, _, attribute = import_string.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model name {import_string!r} is not 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"model {import_string!r}: cannot import {module_name}: {error}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model {import_string!r}: {module_name} has no {attribute}")
        target = getattr(target, part)
    return target


def resolve_patch_conv(method: str, seeds_in_a_loop: bool) -> str:
    """``model.patch_conv`` as the layers take it: ``"auto"`` is ``"conv"`` (one convolution, the
    fastest form measured on XLA:CPU of JAX 0.12 and the natural one for cuDNN) unless the program
    runs several seeds one after another in a loop (``lax.map``, the CPU's seed loop), where XLA:CPU
    computes a convolution's weight gradient far slower than outside a loop (26x for 5 seeds in
    ``benchmarks/conv_grad_in_loop.py``): there, and
    wherever no training program decides (``seeds_in_a_loop=True``), ``"matmul"``. The forms are
    equal up to rounding (tested in float64)."""
    if method != "auto":
        return method
    return "matmul" if seeds_in_a_loop else "conv"


def build(
    config: ModelConfig,
    num_classes: int,
    input_channels: int | None = None,
    iterations: int | None = None,
    **nmf_overrides: Any,
) -> nn.Module:
    """The model ``config`` describes, its NMF options passed whole; ``iterations`` replaces
    ``config.iterations`` (the training steps' model with ``train_iterations``)."""
    options = config.nmf_options(iterations, **nmf_overrides)
    if config.is_preset:
        return build_model(
            config.name,
            width=config.width,
            groups=config.groups,
            groups_nmf=config.groups_nmf,
            groups_mix=config.groups_mix,
            num_classes=num_classes,
            input_channels=input_channels,
            nmf_options=options,
            batch_norm=config.batch_norm,  # type: ignore[arg-type]
            patch_conv=resolve_patch_conv(config.patch_conv, seeds_in_a_loop=True),  # type: ignore[arg-type]
            head=config.head,  # type: ignore[arg-type]
            batch_norm_1x1=config.batch_norm_1x1,
        )
    target = resolve(config.name)
    if isinstance(target, nn.Module):
        return target
    if not callable(target):
        raise ConfigError(f"model {config.name!r} is neither a Flax module nor a callable")
    offered = {"num_classes": num_classes, "input_channels": input_channels, "nmf_options": options}
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    keywords = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    model = target(**{k: v for k, v in offered.items() if keywords or k in parameters})
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {config.name!r} returned {type(model).__name__}, not a Flax module"
        )
    return model


def from_dict(data: dict) -> ModelConfig:
    """A model section from a dict (``config.json``'s ``model``), keys checked."""
    return _schema.from_dict(ModelConfig, data, "config.model")
