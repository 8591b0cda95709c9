"""The paper's four networks (CNN, CNMF, CNN+1x1, CNMF+1x1) as one Flax module and named presets.

One block (spec 1.3, ``mahbodnr/deep_nmf:tools/append_block.py``), in order::

    ReLU -> patches -> L1 per patch -> a-layer (NMF or linear)      -> BN if spatial > 1x1
         [-> ReLU -> L1 over channels -> 1x1 conv + bias ("+1x1")  -> BN if spatial > 1x1]
         [-> AvgPool 2x2/2]

and the network ends with a softmax over the channels of the last (1x1) block. BatchNorm defaults to
the reference's batch statistics in training and evaluation (``batch_norm="batch"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepnmf_jax import layers, nmf


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block: ``features`` output channels of the a-layer over ``kernel_size`` patches.

    Attributes:
      features: output channels of the a-layer (and of the b-layer, which keeps the width).
      kernel_size: an int, a pair, or ``"full"`` (the whole input of the block).
      pool: whether an AvgPool 2x2 / stride 2 follows the block.
      strides, padding: of the patch extraction.
      groups: groups of the a-layer (the NMF layer, or its CNN counterpart).
      mix_groups: groups of the "+1x1" b-layer.
    """

    features: int
    kernel_size: layers.KernelSize
    pool: bool = False
    strides: int = 1
    padding: int = 0
    groups: int = 1
    mix_groups: int = 1


A_LAYERS = ("nmf", "conv")
HEADS = ("reference", "linear")


class Block(nn.Module):
    """One block of the network (module docstring). Returns (output, intermediates).

    ``normalize_mix_input=False`` makes the b-layer a plain 1x1 convolution, ``plain_a=True`` the
    a-layer (CNN only) a plain convolution of the un-rectified input (see ``head``).
    ``a_bn_1x1`` / ``b_bn_1x1`` add the BatchNorm after the a- / b-layer at 1x1 too (see
    ``DeepNMF.batch_norm_1x1``)."""

    spec: BlockSpec
    a_layer: Literal["nmf", "conv"]
    mix: bool
    nmf_options: nmf.NMFOptions = nmf.NMFOptions()
    batch_norm: Literal["batch", "running"] = "batch"
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul"
    normalize_mix_input: bool = True
    plain_a: bool = False
    a_bn_1x1: bool = False
    b_bn_1x1: bool = False
    probes: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        spec = self.spec
        if self.plain_a and self.a_layer != "conv":
            raise ValueError(
                "plain_a needs a convolutional a-layer (an NMF layer needs inputs >= 0)"
            )
        if not self.plain_a:
            x = nn.relu(x)
        geometry = (spec.features, spec.kernel_size, spec.strides, spec.padding)
        if self.a_layer == "nmf":
            a = layers.NMFConv(
                *geometry, self.nmf_options, groups=spec.groups, probes=self.probes, name="a"
            )(x)
        elif self.a_layer == "conv":
            a = layers.PatchConv(
                *geometry,
                groups=spec.groups,
                method=self.patch_conv,
                normalize=not self.plain_a,
                name="a",
            )(x)
        else:
            raise ValueError(f"a_layer must be one of {A_LAYERS}, got {self.a_layer!r}")
        with_bn = a.shape[1] * a.shape[2] > 1  # the reference's "no BatchNorm at 1x1" rule
        a_bn = with_bn or self.a_bn_1x1
        y = layers.BatchNorm(self.batch_norm, name="a_bn")(a, train) if a_bn else a
        if self.mix:
            y = layers.Mix1x1(
                groups=spec.mix_groups, normalize_input=self.normalize_mix_input, name="b"
            )(y)
            if with_bn or self.b_bn_1x1:
                y = layers.BatchNorm(self.batch_norm, name="b_bn")(y, train)
        if spec.pool:
            y = layers.avg_pool(y, 2)
        return y, {"a": a, "out": y}


class DeepNMF(nn.Module):
    """A deep NMF (or CNN) network: blocks, then a softmax over the channels of the 1x1 output.

    ``apply(variables, images, train=bool)`` maps NHWC images (N, H, W, C) in [0, 1] to class
    probabilities (N, num_classes). With ``return_intermediates=True`` it returns
    ``(probs, intermediates)`` where ``intermediates["blockK"]["a"]`` is the a-layer's output (for an
    NMF layer the final codes h, NHWC) and ``["out"]`` the block's output (after pooling).

    Attributes:
      head: ``"reference"``: the last layer rectifies and L1-normalises its input, as every layer
        does; ``"linear"``: a plain convolution there. With b-layers that is the last 1x1 layer:
        in CNN+1x1 a class channel that is negative on every image gets no gradient through the
        ReLU and can stay dead; NMF codes are non-negative and sum to 1, so for CNMF+1x1 the two
        heads compute the same function. In the plain CNN it is the last block's a-layer, whose
        input channels (the previous block's outputs) die the same way. The plain CNMF has no
        linear head: its last layer is an NMF layer, which needs a non-negative input.
      batch_norm_1x1: also a BatchNorm at 1x1 (blocks 3 and 4), in front of every ReLU there
        (the reference has none at 1x1). Without it a channel at 1x1 that is <= 0 on every image
        passes no gradient through the next ReLU and can stay dead, with either head: in CNN+1x1,
        block 3's channels (measured: 92-95 of 96 dead after 3-4 epochs); with it each channel
        is centred over every batch. The outputs (class scores) get none.

    Computation runs in the images' dtype (float32 by default; float64 throughout for float64 images
    and variables).
    """

    blocks: Sequence[BlockSpec]
    a_layer: Literal["nmf", "conv"]
    mix: bool
    nmf_options: nmf.NMFOptions = nmf.NMFOptions()
    batch_norm: Literal["batch", "running"] = "batch"
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul"
    head: Literal["reference", "linear"] = "reference"
    batch_norm_1x1: bool = False
    input_channels: int | None = None
    probes: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool, return_intermediates: bool = False) -> Any:
        if images.ndim != 4:
            raise ValueError(f"images must be NHWC of rank 4, got shape {images.shape}")
        if self.input_channels is not None and images.shape[-1] != self.input_channels:
            raise ValueError(
                f"the model expects {self.input_channels} input channels (NHWC), got images of "
                f"shape {images.shape}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"images must be floating point in [0, 1], got dtype {images.dtype}; "
                "convert uint8 images with images / 255"
            )
        x = images
        intermediates = {}
        relu_after = _relu_after(len(self.blocks), self.mix, self.head)
        for index, spec in enumerate(self.blocks, start=1):
            last = index == len(self.blocks)
            a_relu, b_relu = relu_after[index - 1]
            x, intermediates[f"block{index}"] = Block(
                spec,
                self.a_layer,
                self.mix,
                self.nmf_options,
                self.batch_norm,
                self.patch_conv,
                normalize_mix_input=not (last and self.head == "linear"),
                plain_a=last and self.head == "linear" and not self.mix,
                a_bn_1x1=self.batch_norm_1x1 and a_relu,
                b_bn_1x1=self.batch_norm_1x1 and b_relu,
                probes=self.probes,
                name=f"block{index}",
            )(x, train)
        if x.shape[1:3] != (1, 1):
            raise ValueError(
                f"the last block must reduce the image to 1x1, got output shape {x.shape} for "
                f"images of shape {images.shape}; check the input size and the kernel sizes"
            )
        probs = nn.softmax(x.reshape(x.shape[0], x.shape[-1]), axis=-1)
        return (probs, intermediates) if return_intermediates else probs


def _relu_after(num_blocks: int, mix: bool, head: str) -> list[tuple[bool, bool]]:
    """Per block, whether a ReLU follows its a-layer and its b-layer (the next block's input ReLU,
    or the b-layer's own), given the ``head``."""
    linear = head == "linear"
    flags = []
    for index in range(1, num_blocks + 1):
        last, next_is_last = index == num_blocks, index + 1 == num_blocks
        if mix:  # a -> ReLU -> b (but the linear head's last b-layer); b -> next block's ReLU
            flags.append((not (last and linear), not last))
        else:  # a -> the next block's ReLU, which the plain CNN's linear head drops
            flags.append((not last and not (next_is_last and linear), False))
    return flags


def has_linear_head(name: str) -> bool:
    """Whether ``head="linear"`` is defined for a paper model: not for the plain CNMF, whose last
    layer is an NMF layer (non-negative inputs only)."""
    kind = PAPER_MODELS[name]
    return kind["mix"] or kind["a_layer"] == "conv"


PAPER_MODELS = {
    "cnn": {"a_layer": "conv", "mix": False},
    "cnmf": {"a_layer": "nmf", "mix": False},
    "cnn_1x1": {"a_layer": "conv", "mix": True},
    "cnmf_1x1": {"a_layer": "nmf", "mix": True},
}
"""The paper's models (Fig. 3 b-e) by name."""

PAPER_WIDTHS = (32, 64, 96)


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
    nmf_options: nmf.NMFOptions | None = None,
    batch_norm: Literal["batch", "running"] = "batch",
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul",
    head: Literal["reference", "linear"] = "reference",
    batch_norm_1x1: bool = False,
    probes: bool = False,
    **nmf_overrides,
) -> DeepNMF:
    """Builds one of the paper's models by name: ``"cnn" | "cnmf" | "cnn_1x1" | "cnmf_1x1"``.

    Args:
      name: the model (``PAPER_MODELS``).
      width: multiplier of the hidden widths 32, 64, 96.
      groups: groups of blocks 2 and 3, for the a-layers and the 1x1 layers alike
        (:func:`paper_blocks`); ``groups_nmf`` (the a-layers: NMF, or its CNN counterpart) and
        ``groups_mix`` (the 1x1 layers) set them separately.
      num_classes: 10 (CIFAR-10, Fashion-MNIST) or 100 (CIFAR-100).
      input_channels: if given, images with another channel count are rejected (3 for CIFAR,
        1 for Fashion-MNIST, whose images are 24 x 24 after cropping in the reference).
      nmf_options: how every NMF layer runs (:class:`deepnmf_jax.nmf.NMFOptions`), passed whole.
      batch_norm: ``"batch"`` (the reference's batch statistics everywhere) or ``"running"``.
      patch_conv: how the CNN a-layers compute (:class:`deepnmf_jax.layers.PatchConv`).
      head: ``"reference"`` or ``"linear"`` (:class:`DeepNMF`).
      batch_norm_1x1: a BatchNorm in front of every ReLU at 1x1 too (:class:`DeepNMF`).
      probes: gradient probes in every NMF layer (:class:`deepnmf_jax.layers.NMFConv`).
      **nmf_overrides: fields of ``nmf_options`` to replace, e.g. ``iterations=5``,
        ``gradient="unrolled"``.

    Returns:
      the :class:`DeepNMF` module; ``model.apply(variables, images, train=bool)`` -> probabilities.
    """
    if name not in PAPER_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PAPER_MODELS)}")
    unknown = set(nmf_overrides) - {f.name for f in dataclasses.fields(nmf.NMFOptions)}
    if unknown:
        raise TypeError(f"build_model() got unexpected keyword arguments {sorted(unknown)}")
    options = dataclasses.replace(nmf_options or nmf.NMFOptions(), **nmf_overrides)
    if patch_conv not in layers.PATCH_CONV_METHODS:
        raise ValueError(
            f"patch_conv must be one of {layers.PATCH_CONV_METHODS}, got {patch_conv!r}"
        )
    if batch_norm not in layers.BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {layers.BATCH_NORM_MODES}, got {batch_norm!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "linear" and not has_linear_head(name):
        raise ValueError(
            "head='linear' is not defined for 'cnmf': its last layer is an NMF layer, which needs "
            "a non-negative input"
        )
    a_groups = groups if groups_nmf is None else groups_nmf
    mix_groups = groups if groups_mix is None else groups_mix
    return DeepNMF(
        blocks=paper_blocks(width, a_groups, num_classes, mix_groups),
        nmf_options=options,
        patch_conv=patch_conv,
        batch_norm=batch_norm,
        head=head,
        batch_norm_1x1=batch_norm_1x1,
        input_channels=input_channels,
        probes=probes,
        **PAPER_MODELS[name],
    )
