"""Patches of NHWC images and channel groups: where patches lie, their extraction, their sums, and the
CNN a-layer (a linear map of L1-normalised patches) computed without normalising them.

Patch features are channel-major ``(c, ki, kj)``, as torch's ``Unfold`` and the reference's weights;
a group of G contiguous channels is then a contiguous block of S/G features. The layers compute with
pixel-major patches ``(ki, kj, c)`` per group instead (:func:`pixel_major_patches`, the image's own
order, much cheaper to form on a CPU) and move their weights' rows to match
(:func:`pixel_major_kernel`); parameters stay channel-major.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from deepnmf_jax.core.ops import NORM_EPS, divide, l1_normalize

KernelSize = int | Sequence[int] | Literal["full"]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
        raise ValueError(f"{what} must be a non-negative int or a pair of them, got {value!r}")
    return pair


class PatchGeometry(NamedTuple):
    """Where the patches of an input lie: kernel, strides, zero padding and the output grid."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int]
    out_shape: tuple[int, int]


def patch_geometry(
    image_shape: Sequence[int],
    kernel_size: KernelSize,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> PatchGeometry:
    """Checks a patch layout against an NHWC shape and returns its :class:`PatchGeometry`."""
    if len(image_shape) != 4:
        raise ValueError(f"patches need NHWC images of rank 4, got shape {tuple(image_shape)}")
    pad_h, pad_w = _pair(padding, "padding")
    height, width = image_shape[1] + 2 * pad_h, image_shape[2] + 2 * pad_w
    kh, kw = (height, width) if kernel_size == "full" else _pair(kernel_size, "kernel_size")
    sh, sw = _pair(strides, "strides")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"kernel_size and strides must be >= 1, got {kernel_size!r}, {strides!r}")
    if kh > height or kw > width:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {height}x{width} "
            f"(input {tuple(image_shape)})"
        )
    out_shape = ((height - kh) // sh + 1, (width - kw) // sw + 1)
    return PatchGeometry((kh, kw), (sh, sw), (pad_h, pad_w), out_shape)


def extract_patches(
    x: jax.Array,
    kernel_size: KernelSize,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    method: Literal["slices", "conv"] = "slices",
) -> jax.Array:
    """Extracts every kh x kw patch of an NHWC image, as torch's ``Unfold`` does.

    Args:
      x: images of shape (N, H, W, C).
      kernel_size: an int, a pair, or ``"full"`` for the whole (padded) input (the reference's -1).
      strides: an int or a pair.
      padding: zero padding on each side, an int or a pair.
      method: ``"slices"`` stacks kh*kw strided slices (its transpose is padding and adds, which is
        much cheaper on CPU than the transpose of a convolution); ``"conv"`` uses
        ``jax.lax.conv_general_dilated_patches``. Both give identical values.

    Returns:
      patches of shape (N, H', W', C*kh*kw), features ordered channel-major (c, ki, kj).
    """
    geometry = patch_geometry(x.shape, kernel_size, strides, padding)
    (kh, kw), (sh, sw), (pad_h, pad_w), (out_h, out_w) = geometry
    channels = x.shape[-1]
    if method == "conv":
        patches = lax.conv_general_dilated_patches(
            x,
            (kh, kw),
            (sh, sw),
            ((pad_h, pad_h), (pad_w, pad_w)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )
        return patches
    if method != "slices":
        raise ValueError(f"method must be 'slices' or 'conv', got {method!r}")
    stacked = jnp.stack(_window_slices(x, geometry), axis=-1)  # (N, H', W', C, kh*kw)
    return stacked.reshape(x.shape[0], out_h, out_w, channels * kh * kw)


def _window_slices(x: jax.Array, geometry: PatchGeometry) -> list[jax.Array]:
    """The kh*kw strided slices of the zero-padded ``x`` (N, H, W, ...), window offset by window
    offset ``(ki, kj)`` row-major: slice k holds pixel k of every patch, (N, H', W', ...)."""
    (kh, kw), (sh, sw), (pad_h, pad_w), (out_h, out_w) = geometry
    widths = [(0, 0), (pad_h, pad_h), (pad_w, pad_w)] + [(0, 0)] * (x.ndim - 3)
    x = jnp.pad(x, widths)
    return [
        x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


def pixel_major_patches(x: jax.Array, geometry: PatchGeometry, groups: int = 1) -> jax.Array:
    """The patches of :func:`extract_patches`, each group's features reordered pixel-major.

    Within each of the G channel groups the S/G features are ordered ``(ki, kj, c)``: the window's
    pixels one after another, each with its C/G channels contiguous, as they lie in an NHWC image.
    The numbers are those of :func:`extract_patches`, moved; :func:`pixel_major_kernel` moves a
    kernel's rows the same way, so ``pixel_major_patches @ pixel_major_kernel`` is the channel-major
    product up to the order of its sums. On XLA's CPU backend the copy is runs of C/G contiguous
    floats instead of single floats, and the patches' sums and their gradient fuse far better.

    Args:
      x: images (N, H, W, C).
      geometry: from :func:`patch_geometry`.
      groups: G contiguous channel groups.

    Returns:
      patches of shape (N, H', W', G, S/G), S = C*kh*kw.
    """
    (kh, kw), _, _, (out_h, out_w) = geometry
    n, height, width, channels = x.shape
    grouped = x.reshape(n, height, width, groups, channels // groups)
    stacked = jnp.stack(_window_slices(grouped, geometry), axis=-2)  # (N, H', W', G, kh*kw, C/G)
    return stacked.reshape(n, out_h, out_w, groups, kh * kw * (channels // groups))


def pixel_major_kernel(kernel: jax.Array, channels: int, kernel_hw: tuple[int, int]) -> jax.Array:
    """A kernel (S, F) or grouped (G, S/G, F/G) with channel-major rows ``(c, ki, kj)``, its rows
    reordered to :func:`pixel_major_patches`' ``(ki, kj, c)`` within each group (same shape)."""
    grouped = kernel if kernel.ndim == 3 else kernel[None]
    groups, _, out_per_group = grouped.shape
    blocks = grouped.reshape(groups, channels // groups, kernel_hw[0] * kernel_hw[1], out_per_group)
    return jnp.swapaxes(blocks, 1, 2).reshape(kernel.shape)


def pixel_major_to_channel_major(features: jax.Array, channels: int) -> jax.Array:
    """(..., G, S/G) pixel-major patch features -> (..., S) channel-major (:func:`extract_patches`)."""
    groups, per_group = features.shape[-2:]
    per_channel = per_group * groups // channels  # kh * kw
    blocks = features.reshape(features.shape[:-1] + (per_channel, channels // groups))
    return jnp.swapaxes(blocks, -1, -2).reshape(features.shape[:-2] + (groups * per_group,))


def channel_major_to_pixel_major(features: jax.Array, channels: int, groups: int) -> jax.Array:
    """(..., S) channel-major patch features -> (..., G, S/G) pixel-major."""
    per_channel = features.shape[-1] // channels  # kh * kw
    blocks = features.reshape(features.shape[:-1] + (groups, channels // groups, per_channel))
    return jnp.swapaxes(blocks, -1, -2).reshape(features.shape[:-1] + (groups, -1))


def patch_sums(x: jax.Array, geometry: PatchGeometry, groups: int = 1) -> jax.Array:
    """The sum of every patch over its kh x kw window and the channels of each group.

    Equals ``extract_patches(x, ...)`` summed over each group's S/G features, without forming the
    patches: a channel sum followed by a windowed sum (``lax.reduce_window``).

    Args:
      x: images (N, H, W, C).
      geometry: from :func:`patch_geometry`.
      groups: G contiguous channel groups.

    Returns:
      sums of shape (N, H', W', G).
    """
    n, height, width, channels = x.shape
    per_group = jnp.sum(x.reshape(n, height, width, groups, channels // groups), axis=-1)
    (kh, kw), (sh, sw), (pad_h, pad_w) = geometry.kernel, geometry.strides, geometry.padding
    return lax.reduce_window(
        per_group,
        np.zeros((), x.dtype),  # a concrete 0: lax recognises the sum and differentiates it
        lax.add,
        (1, kh, kw, 1),
        (1, sh, sw, 1),
        ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)),
    )


def patch_kernel_to_hwio(kernel: jax.Array, channels: int, kernel_hw: tuple[int, int]) -> jax.Array:
    """A patch kernel (S, F) or grouped (G, S/G, F/G), S ordered (c, ki, kj), as a conv kernel.

    Returns the HWIO kernel (kh, kw, C/G, F) of ``lax.conv_general_dilated`` with
    ``feature_group_count=G`` (output channels of group g are the g-th contiguous block of F/G).
    """
    kh, kw = kernel_hw
    grouped = kernel if kernel.ndim == 3 else kernel[None]
    groups, _, out_per_group = grouped.shape
    blocks = grouped.reshape(groups, channels // groups, kh, kw, out_per_group)
    hwio = jnp.transpose(blocks, (2, 3, 1, 0, 4))  # (kh, kw, C/G, G, F/G)
    return hwio.reshape(kh, kw, channels // groups, groups * out_per_group)


LINEAR_MAPS = ("matmul", "conv")


def normalized_patch_map(
    x: jax.Array,
    kernel: jax.Array,
    geometry: PatchGeometry,
    groups: int = 1,
    product: Literal["matmul", "conv"] = "matmul",
) -> jax.Array:
    """``grouped_linear(group_l1_normalize(patches), kernel)`` without normalising the patches.

    A linear map of an L1-normalised patch is the map of the patch divided by its sum,
    ``W . (p / (sum p + 1e-19)) = (W . p) / (sum p + 1e-19)``: the map of the raw patches (or a
    convolution of the image) divided by a box sum of the image (:func:`patch_sums`), so neither the
    forward nor the backward touches the S-wide normalised patches. The division never squares its
    denominator in the derivative (:func:`deepnmf_jax.core.divide`), so all-zero patches give 0 and
    finite gradients.

    Args:
      x: images (N, H, W, C).
      kernel: (S, F) or grouped (G, S/G, F/G), S = C*kh*kw ordered (c, ki, kj).
      geometry: from :func:`patch_geometry`.
      groups: G.
      product: ``"matmul"``: raw patches (strided slices, pixel-major) times the kernel (its rows
        moved to match), the fast form on XLA's CPU backend; ``"conv"``:
        ``lax.conv_general_dilated``, no patches at all (the natural form for cuDNN; on XLA's CPU
        backend its gradient measured 2-5x slower than the matmul form).

    Returns:
      (N, H', W', F).
    """
    if product == "conv":
        (pad_h, pad_w) = geometry.padding
        mapped = lax.conv_general_dilated(
            x,
            patch_kernel_to_hwio(kernel, x.shape[-1], geometry.kernel),
            geometry.strides,
            ((pad_h, pad_h), (pad_w, pad_w)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
            precision=lax.Precision.HIGHEST,
        )
    elif product == "matmul":
        raw = pixel_major_patches(x, geometry, groups)
        raw = raw.reshape(raw.shape[:3] + (-1,))  # (N, H', W', S), groups contiguous
        mapped = grouped_linear(raw, pixel_major_kernel(kernel, x.shape[-1], geometry.kernel))
    else:
        raise ValueError(f"product must be one of {LINEAR_MAPS}, got {product!r}")
    sums = patch_sums(x, geometry, groups) + NORM_EPS  # (N, H', W', G)
    grouped = split_groups(mapped, groups)  # (N, H', W', G, F/G)
    return merge_groups(divide(grouped, sums[..., None]))


def check_groups(groups: int, in_channels: int, out_features: int, layer: str) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{layer}: groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_features % groups:
        raise ValueError(
            f"{layer}: groups={groups} must divide both the input channels ({in_channels}) and "
            f"the output features ({out_features})"
        )


def split_groups(x: jax.Array, groups: int) -> jax.Array:
    """(..., S) -> (..., G, S/G)."""
    return x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))


def merge_groups(x: jax.Array) -> jax.Array:
    """(..., G, F/G) -> (..., F)."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def kernel_shape(in_features: int, out_features: int, groups: int) -> tuple[int, ...]:
    if groups == 1:
        return (in_features, out_features)
    return (groups, in_features // groups, out_features // groups)


def grouped_linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for a kernel (S, F), or block-diagonal for a grouped kernel (G, S/G, F/G)."""
    batch_shape = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # flat positions: much faster on CPU, above all under vmap
    if kernel.ndim == 2:
        out = jnp.matmul(x, kernel, precision=lax.Precision.HIGHEST)
    else:
        out = jnp.einsum(
            "pgs,gsf->pgf", split_groups(x, kernel.shape[0]), kernel, precision="highest"
        )
    return out.reshape(*batch_shape, -1)


def group_l1_normalize(x: jax.Array, groups: int) -> jax.Array:
    """L1-normalises each of the G contiguous groups of the last axis on its own."""
    if groups == 1:
        return l1_normalize(x)
    return merge_groups(l1_normalize(split_groups(x, groups)))
