"""The paper's four networks (Fig. 3 b-e) as presets of :class:`~deepnmf_jax.models.DeepNMF`:
``functools.partial`` of its block, by name (``build_model("cnmf_1x1")``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

from deepnmf_jax.core.options import NMFOptions
from deepnmf_jax.models.deepnmf import HEADS, Block, BlockSpec, DeepNMF
from deepnmf_jax.nn.linen import BATCH_NORM_MODES, PATCH_CONV_METHODS

PAPER_MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"a_layer": "conv", "mix": False},
    "cnmf": {"a_layer": "nmf", "mix": False},
    "cnn_1x1": {"a_layer": "conv", "mix": True},
    "cnmf_1x1": {"a_layer": "nmf", "mix": True},
}
"""The paper's models (Fig. 3 b-e) by name: what their block is."""

PAPER_WIDTHS = (32, 64, 96)


def has_linear_head(name: str) -> bool:
    """Whether ``head="linear"`` is defined for a paper model: not for the plain CNMF, whose last
    layer is an NMF layer (non-negative inputs only)."""
    kind = PAPER_MODELS[name]
    return bool(kind["mix"]) or kind["a_layer"] == "conv"


def paper_blocks(
    width: float = 1, groups: int = 1, num_classes: int = 10, mix_groups: int | None = None
) -> tuple[BlockSpec, ...]:
    """The paper's four blocks: 5x5 -> 32, pool; 5x5 -> 64, pool; full -> 96; 1x1 -> classes.

    ``width`` multiplies the hidden widths (32, 64, 96). ``groups`` applies to the a-layers and
    ``mix_groups`` (default: ``groups``) to the 1x1 b-layers of blocks 2 and 3: block 1 sees the
    image's 1 or 3 channels and block 4 produces the classes.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width!r}")
    mix_groups = groups if mix_groups is None else mix_groups
    f1, f2, f3 = (round(width * f) for f in PAPER_WIDTHS)
    return (
        BlockSpec(f1, 5, pool=True),
        BlockSpec(f2, 5, pool=True, groups=groups, mix_groups=mix_groups),
        BlockSpec(f3, "full", groups=groups, mix_groups=mix_groups),
        BlockSpec(num_classes, 1),
    )


def build_model(
    name: str,
    *,
    width: float = 1,
    groups: int = 1,
    groups_nmf: int | None = None,
    groups_mix: int | None = None,
    num_classes: int = 10,
    input_channels: int | None = None,
    nmf_options: NMFOptions | None = None,
    batch_norm: Literal["batch", "running"] = "batch",
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul",
    head: Literal["reference", "linear"] = "reference",
    batch_norm_1x1: bool = False,
    probes: bool = False,
    **nmf_overrides: Any,
) -> DeepNMF:
    """Builds one of the paper's models by name: ``"cnn" | "cnmf" | "cnn_1x1" | "cnmf_1x1"``.

    Args:
      name: the model (``PAPER_MODELS``).
      width: multiplier of the hidden widths 32, 64, 96.
      groups: groups of blocks 2 and 3, for the a-layers and the 1x1 layers alike
        (:func:`paper_blocks`); ``groups_nmf`` (the a-layers) and ``groups_mix`` (the 1x1 layers)
        set them apart.
      num_classes: 10 (CIFAR-10, Fashion-MNIST) or 100 (CIFAR-100).
      input_channels: if given, images with another channel count are rejected.
      nmf_options: how every NMF layer runs (:class:`deepnmf_jax.NMFOptions`), passed whole.
      batch_norm: ``"batch"`` (the reference's batch statistics) or ``"running"``.
      patch_conv: how the CNN a-layers compute (:class:`deepnmf_jax.PatchConv`).
      head: ``"reference"`` or ``"linear"`` (:class:`deepnmf_jax.models.Block`).
      batch_norm_1x1: a BatchNorm in front of every ReLU at 1x1 too.
      probes: gradient probes in every NMF layer.
      **nmf_overrides: fields of ``nmf_options`` to replace, e.g. ``iterations=5``,
        ``backward="unrolled"``.

    Returns:
      the :class:`DeepNMF` module; ``model.apply(variables, images, train=bool)`` -> probabilities.
    """
    if name not in PAPER_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PAPER_MODELS)}")
    unknown = set(nmf_overrides) - {f.name for f in dataclasses.fields(NMFOptions)}
    if unknown:
        raise TypeError(f"build_model() got unexpected keyword arguments {sorted(unknown)}")
    options = dataclasses.replace(nmf_options or NMFOptions(), **nmf_overrides)
    if patch_conv not in PATCH_CONV_METHODS:
        raise ValueError(f"patch_conv must be one of {PATCH_CONV_METHODS}, got {patch_conv!r}")
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "linear" and not has_linear_head(name):
        raise ValueError(
            "head='linear' is not defined for 'cnmf': its last layer is an NMF layer, which needs "
            "a non-negative input"
        )
    a_groups = groups if groups_nmf is None else groups_nmf
    mix_groups = groups if groups_mix is None else groups_mix
    block = functools.partial(
        Block,
        nmf_options=options,
        batch_norm=batch_norm,
        patch_conv=patch_conv,
        head=head,
        batch_norm_1x1=batch_norm_1x1,
        probes=probes,
        **PAPER_MODELS[name],
    )
    return DeepNMF(
        blocks=paper_blocks(width, a_groups, num_classes, mix_groups),
        block_cls=block,
        input_channels=input_channels,
    )
