"""The deep NMF network: a stack of blocks, then a softmax over the channels of the last (1x1) block.

:class:`DeepNMF` takes its block as a module class (``block_cls``, flax imagenet's pattern), called
once per :class:`BlockSpec` as ``block_cls(spec, index=k, num_blocks=n, name=f"block{k}")`` and
returning ``(output, intermediates)``. :class:`Block` is the paper's block (the docs' "where the
paper and its code differ", decision 4; ``mahbodnr/deep_nmf:tools/append_block.py``), in order::

    ReLU -> patches -> L1 per patch -> a-layer (NMF or linear)      -> BN if spatial > 1x1
         [-> ReLU -> L1 over channels -> 1x1 conv + bias ("+1x1")  -> BN if spatial > 1x1]
         [-> AvgPool 2x2/2]

A new block order is a new block class (see the docs' "Writing your own model").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepnmf_jax.core.options import NMFOptions
from deepnmf_jax.core.patches import KernelSize
from deepnmf_jax.nn import linen as layers

TAPS = "dead_channel_taps"
"""The key of a block's intermediates holding ``{kind: values before a ReLU at 1x1 with no
BatchNorm in front}`` (:mod:`deepnmf_jax.models.dead_channels`)."""


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
    kernel_size: KernelSize
    pool: bool = False
    strides: int = 1
    padding: int = 0
    groups: int = 1
    mix_groups: int = 1


A_LAYERS = ("nmf", "conv")
HEADS = ("reference", "linear")


class Block(nn.Module):
    """The paper's block (module docstring). Returns ``(output, intermediates)``.

    Attributes:
      spec: the block's geometry.
      index, num_blocks: where the block sits (1-based), which decides the head's details.
      a_layer: ``"nmf"`` (:class:`NMFConv`) or ``"conv"`` (:class:`PatchConv`).
      mix: the "+1x1" b-layer (:class:`Mix1x1`) after the a-layer.
      nmf_options: how the NMF layers run.
      batch_norm: BatchNorm's mode (:class:`deepnmf_jax.BatchNorm`).
      patch_conv: how a CNN a-layer computes.
      head: ``"reference"``: the last layer rectifies and L1-normalises its input, as every layer
        does; ``"linear"``: a plain convolution there (the last 1x1 layer of a +1x1 model, or the
        plain CNN's last a-layer). With the reference head a class channel of CNN+1x1 that is
        negative on every image gets no gradient through the ReLU and can stay dead; NMF codes are
        non-negative and sum to 1, so CNMF+1x1's two heads compute the same function. The plain
        CNMF has no linear head (its last layer is an NMF layer: non-negative inputs only).
      batch_norm_1x1: a BatchNorm in front of every ReLU at 1x1 too (blocks 3-4 of the paper's
        models, where the reference has none): a channel at 1x1 that is <= 0 on every image then
        still gets gradient. The class scores get none.
      probes: gradient probes in every NMF layer (:class:`deepnmf_jax.NMFConv`).
    """

    spec: BlockSpec
    index: int = 1
    num_blocks: int = 1
    a_layer: Literal["nmf", "conv"] = "nmf"
    mix: bool = True
    nmf_options: NMFOptions = NMFOptions()
    batch_norm: Literal["batch", "running"] = "batch"
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul"
    head: Literal["reference", "linear"] = "reference"
    batch_norm_1x1: bool = False
    probes: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        spec = self.spec
        if self.a_layer not in A_LAYERS:
            raise ValueError(f"a_layer must be one of {A_LAYERS}, got {self.a_layer!r}")
        last = self.index == self.num_blocks
        linear_head = last and self.head == "linear"
        plain_a = linear_head and not self.mix  # the plain CNN's linear head
        if plain_a and self.a_layer != "conv":
            raise ValueError("a linear head needs a convolutional a-layer (NMF needs inputs >= 0)")
        a_relu, b_relu = self._relu_after()
        taps = {}
        if not plain_a:
            if last and self.index > 1 and not self.batch_norm_1x1 and _is_1x1(x):
                taps["hidden"] = x  # the previous block's outputs, entering this ReLU
            x = nn.relu(x)
        geometry = (spec.features, spec.kernel_size, spec.strides, spec.padding)
        if self.a_layer == "nmf":
            a = layers.NMFConv(
                *geometry, self.nmf_options, groups=spec.groups, probes=self.probes, name="a"
            )(x)
        else:
            a = layers.PatchConv(
                *geometry,
                groups=spec.groups,
                method=self.patch_conv,
                normalize=not plain_a,
                name="a",
            )(x)
        with_bn = not _is_1x1(a)  # the reference's "no BatchNorm at 1x1" rule
        norm = lambda name: layers.BatchNorm(self.batch_norm, name=name)
        y = norm("a_bn")(a, train) if with_bn or (self.batch_norm_1x1 and a_relu) else a
        if self.mix:
            if last and not linear_head and not self.batch_norm_1x1:
                taps["class"] = y  # the class channels, entering the last 1x1 layer's ReLU
            y = layers.Mix1x1(groups=spec.mix_groups, normalize_input=not linear_head, name="b")(y)
            if with_bn or (self.batch_norm_1x1 and b_relu):
                y = norm("b_bn")(y, train)
        if spec.pool:
            y = layers.avg_pool(y, 2)
        intermediates: dict[str, Any] = {"a": a, "out": y}
        if taps:
            intermediates[TAPS] = taps
        return y, intermediates

    def _relu_after(self) -> tuple[bool, bool]:
        """Whether a ReLU follows the a-layer and the b-layer (the next block's input ReLU, or
        the b-layer's own), given the head."""
        linear = self.head == "linear"
        last = self.index == self.num_blocks
        next_is_last = self.index + 1 == self.num_blocks
        if self.mix:  # a -> ReLU -> b (but the linear head's last b-layer); b -> next block's ReLU
            return not (last and linear), not last
        # a -> the next block's ReLU, which the plain CNN's linear head drops
        return not last and not (next_is_last and linear), False


def _is_1x1(x: jax.Array) -> bool:
    return x.shape[1] * x.shape[2] == 1


class DeepNMF(nn.Module):
    """A deep NMF (or CNN) network: blocks, then a softmax over the channels of the 1x1 output.

    ``apply(variables, images, train=bool)`` maps NHWC images (N, H, W, C) in [0, 1] to class
    probabilities (N, classes). With ``return_intermediates=True`` it returns
    ``(probs, intermediates)``: ``intermediates["blockK"]`` is what block K returned (for the paper's
    block: ``"a"``, the a-layer's output, for an NMF layer the final codes h; ``"out"``, the block's
    output after pooling).

    Attributes:
      blocks: one :class:`BlockSpec` per block.
      block_cls: the block module, called as ``block_cls(spec, index=k, num_blocks=n)``; the
        paper's models are ``functools.partial(Block, a_layer=..., mix=...)``.
      input_channels: if given, images with another channel count are rejected.

    Computation runs in the images' dtype (float32 by default; float64 throughout for float64
    images and variables).
    """

    blocks: Sequence[BlockSpec]
    block_cls: Callable[..., nn.Module] = Block
    input_channels: int | None = None

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
        x, intermediates = images, {}
        for index, spec in enumerate(self.blocks, start=1):
            block = self.block_cls(
                spec, index=index, num_blocks=len(self.blocks), name=f"block{index}"
            )
            x, intermediates[f"block{index}"] = block(x, train)
        if x.shape[1:3] != (1, 1):
            raise ValueError(
                f"the last block must reduce the image to 1x1, got output shape {x.shape} for "
                f"images of shape {images.shape}; check the input size and the kernel sizes"
            )
        probs = nn.softmax(x.reshape(x.shape[0], x.shape[-1]), axis=-1)
        return (probs, intermediates) if return_intermediates else probs
