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
      groups: grouped a- and b-layers (see :mod:`deepnmf_jax.layers`).
    """

    features: int
    kernel_size: layers.KernelSize
    pool: bool = False
    strides: int = 1
    padding: int = 0
    groups: int = 1


A_LAYERS = ("nmf", "conv")


@dataclasses.dataclass(frozen=True)
class NMFOptions:
    """How every NMF layer of a network runs (see :class:`deepnmf_jax.layers.NMFConv`)."""

    iterations: int = 20
    epsilon: float | None = None
    gradient: nmf.Gradient = "approximate"
    remat: bool = False
    check_inputs: bool = False
    probes: bool = False
    chunk_bytes: int | None = None  # None: automatic (nmf.nmf_fixed_point); 0: no chunking
    precision: nmf.Precision = "float32"  # of the NMF loops' matrix products


class Block(nn.Module):
    """One block of the network (module docstring). Returns (output, intermediates)."""

    spec: BlockSpec
    a_layer: Literal["nmf", "conv"]
    mix: bool
    nmf_options: NMFOptions = NMFOptions()
    batch_norm: Literal["batch", "running"] = "batch"
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        spec = self.spec
        x = nn.relu(x)
        if self.a_layer == "nmf":
            a = layers.NMFConv(
                spec.features,
                spec.kernel_size,
                spec.strides,
                spec.padding,
                groups=spec.groups,
                name="a",
                **dataclasses.asdict(self.nmf_options),
            )(x)
        elif self.a_layer == "conv":
            a = layers.PatchConv(
                spec.features,
                spec.kernel_size,
                spec.strides,
                spec.padding,
                groups=spec.groups,
                method=self.patch_conv,
                name="a",
            )(x)
        else:
            raise ValueError(f"a_layer must be one of {A_LAYERS}, got {self.a_layer!r}")
        with_bn = a.shape[1] * a.shape[2] > 1  # the reference's "no BatchNorm at 1x1" rule
        y = layers.BatchNorm(self.batch_norm, name="a_bn")(a, train) if with_bn else a
        if self.mix:
            y = layers.Mix1x1(groups=spec.groups, name="b")(y)
            if with_bn:
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

    Computation runs in the images' dtype (float32 by default; float64 throughout for float64 images
    and variables).
    """

    blocks: Sequence[BlockSpec]
    a_layer: Literal["nmf", "conv"]
    mix: bool
    nmf_options: NMFOptions = NMFOptions()
    batch_norm: Literal["batch", "running"] = "batch"
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul"
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
        x = images
        intermediates = {}
        for index, spec in enumerate(self.blocks, start=1):
            x, intermediates[f"block{index}"] = Block(
                spec,
                self.a_layer,
                self.mix,
                self.nmf_options,
                self.batch_norm,
                self.patch_conv,
                name=f"block{index}",
            )(x, train)
        if x.shape[1:3] != (1, 1):
            raise ValueError(
                f"the last block must reduce the image to 1x1, got output shape {x.shape} for "
                f"images of shape {images.shape}; check the input size and the kernel sizes"
            )
        probs = nn.softmax(x.reshape(x.shape[0], x.shape[-1]), axis=-1)
        return (probs, intermediates) if return_intermediates else probs


PAPER_MODELS = {
    "cnn": {"a_layer": "conv", "mix": False},
    "cnmf": {"a_layer": "nmf", "mix": False},
    "cnn_1x1": {"a_layer": "conv", "mix": True},
    "cnmf_1x1": {"a_layer": "nmf", "mix": True},
}
"""The paper's models (Fig. 3 b-e) by name."""

PAPER_WIDTHS = (32, 64, 96)


def paper_blocks(width: float = 1, groups: int = 1, num_classes: int = 10) -> tuple[BlockSpec, ...]:
    """The paper's four blocks: 5x5 -> 32, pool; 5x5 -> 64, pool; full -> 96; 1x1 -> classes.

    ``width`` multiplies the hidden widths (32, 64, 96). ``groups`` applies to the a- and b-layers of
    blocks 2 and 3: block 1 sees the image's 1 or 3 channels and block 4 produces the classes.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width!r}")
    f1, f2, f3 = (round(width * f) for f in PAPER_WIDTHS)
    return (
        BlockSpec(f1, 5, pool=True),
        BlockSpec(f2, 5, pool=True, groups=groups),
        BlockSpec(f3, "full", groups=groups),
        BlockSpec(num_classes, 1),
    )


def build_model(
    name: str,
    *,
    width: float = 1,
    groups: int = 1,
    num_classes: int = 10,
    input_channels: int | None = None,
    iterations: int = 20,
    epsilon: float | None = None,
    gradient: nmf.Gradient = "approximate",
    remat: bool = False,
    batch_norm: Literal["batch", "running"] = "batch",
    check_inputs: bool = False,
    probes: bool = False,
    chunk_bytes: int | None = None,
    precision: nmf.Precision = "float32",
    patch_conv: Literal["matmul", "conv", "patches"] = "matmul",
) -> DeepNMF:
    """Builds one of the paper's models by name: ``"cnn" | "cnmf" | "cnn_1x1" | "cnmf_1x1"``.

    Args:
      name: the model (``PAPER_MODELS``).
      width: multiplier of the hidden widths 32, 64, 96.
      groups: groups of blocks 2 and 3 (:func:`paper_blocks`).
      num_classes: 10 (CIFAR-10, Fashion-MNIST) or 100 (CIFAR-100).
      input_channels: if given, images with another channel count are rejected (3 for CIFAR,
        1 for Fashion-MNIST, whose images are 24 x 24 after cropping in the reference).
      iterations, epsilon, gradient, remat: of every NMF layer
        (:func:`deepnmf_jax.nmf.nmf_fixed_point`; ``remat`` with ``gradient="unrolled"`` only).
      batch_norm: ``"batch"`` (the reference's batch statistics everywhere) or ``"running"``.
      check_inputs: checkify checks in every NMF layer (see :func:`deepnmf_jax.nmf.checked`).
      probes: gradient probes in every NMF layer (:class:`deepnmf_jax.layers.NMFConv`).
      chunk_bytes: working set per chunk of positions of the NMF loops
        (:func:`deepnmf_jax.nmf.nmf_fixed_point`; None: automatic, 0: no chunking).
      precision: of the NMF loops' matrix products: ``"float32"``, ``"bfloat16"`` (mixed) or
        ``"tf32"`` (:func:`deepnmf_jax.nmf.nmf_fixed_point`).
      patch_conv: how the CNN a-layers compute (:class:`deepnmf_jax.layers.PatchConv`).

    Returns:
      the :class:`DeepNMF` module; ``model.apply(variables, images, train=bool)`` -> probabilities.
    """
    if name not in PAPER_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PAPER_MODELS)}")
    if gradient not in nmf.GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {nmf.GRADIENT_MODES}, got {gradient!r}")
    if remat and gradient != "unrolled":
        raise ValueError(f"remat=True only applies to gradient='unrolled', got {gradient!r}")
    if precision not in nmf.PRECISIONS:
        raise ValueError(f"precision must be one of {nmf.PRECISIONS}, got {precision!r}")
    if patch_conv not in layers.PATCH_CONV_METHODS:
        raise ValueError(
            f"patch_conv must be one of {layers.PATCH_CONV_METHODS}, got {patch_conv!r}"
        )
    if batch_norm not in layers.BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {layers.BATCH_NORM_MODES}, got {batch_norm!r}")
    return DeepNMF(
        blocks=paper_blocks(width, groups, num_classes),
        nmf_options=NMFOptions(
            iterations, epsilon, gradient, remat, check_inputs, probes, chunk_bytes, precision
        ),
        patch_conv=patch_conv,
        batch_norm=batch_norm,
        input_channels=input_channels,
        **PAPER_MODELS[name],
    )


def count_params(params: Any) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
