"""The layers' computations as pure functions of arrays, shared by the Linen layers
(:mod:`deepnmf_jax.nn.linen`) and the NNX layers (:mod:`deepnmf_jax.nn.nnx`): each front-end only
owns its parameters and calls these.

All take and return NHWC (or (..., C)) arrays. Groups split the channels into G contiguous groups,
as a grouped convolution does; patch features are channel-major ``(c, ki, kj)``, so a group of
channels is a contiguous block of S/G patch features. Each group is L1-normalised on its own and
mapped to F/G outputs (davrot/nnmf_24b's grouped NMF: each group runs its own dynamics and the
concatenated codes are renormalised to sum to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from deepnmf_jax.core import nmf as nmf_lib
from deepnmf_jax.core import patches
from deepnmf_jax.core.ops import NORM_EPS, divide, l1_normalize
from deepnmf_jax.core.options import NMFOptions
from deepnmf_jax.core.patches import KernelSize
from deepnmf_jax.nn._batch_norm import per_channel

PATCH_CONV_METHODS = ("matmul", "conv", "patches")


def uniform(low: float, high: float):
    """Initializer drawing from U[low, high)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init


def identity_plus_noise(noise_scale: float):
    """The 1x1 layers' initializer: the identity (rectangular when the width changes, per group
    for a grouped kernel) plus U(-0.5, 0.5) * noise_scale, as the reference's ``append_block.py:194``."""

    def init(key, shape, dtype=jnp.float32):
        eye = jnp.broadcast_to(jnp.eye(shape[-2], shape[-1], dtype=dtype), shape)
        return eye + noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

    return init


def uniform_noise(noise_scale: float):
    """U(-0.5, 0.5) * noise_scale: the 1x1 layers' bias initializer."""

    def init(key, shape, dtype=jnp.float32):
        return noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

    return init


def patch_features(x: jax.Array, kernel_size: KernelSize, strides, padding) -> int:
    """S = C * kh * kw of a patch layout on the NHWC input ``x``."""
    geometry = patches.patch_geometry(x.shape, kernel_size, strides, padding)
    return x.shape[-1] * geometry.kernel[0] * geometry.kernel[1]


def nmf_conv(
    x: jax.Array,
    u: jax.Array,
    kernel_size: KernelSize,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    options: NMFOptions,
    groups: int,
    name: str,
    probe=None,
) -> tuple[jax.Array, jax.Array]:
    """Convolutional NMF: patches, L1 normalisation of each patch, the NMF fixed point per position.

    The patches are formed pixel-major (:func:`~deepnmf_jax.core.patches.pixel_major_patches`, with
    W's rows moved to match) and normalised by their box sums
    (:func:`~deepnmf_jax.core.patches.patch_sums`): the reference's numbers up to the order of float
    sums, and on CPUs a much cheaper copy and gradient than channel-major patches.

    Args:
      x: (N, H, W, C) non-negative inputs.
      u: the raw parameter U, (S, F) or (G, S/G, F/G), read as ``W = normalize_weight(U)``.
      probe: ``probe(tag, value) -> value``, applied to the NMF input (``"nmf_input"``, channel-major)
        and the codes (``"codes"``); the Linen layer's gradient probes (identity by default).

    Returns:
      (codes (N, H', W', F) summing to 1 over F, the NMF input: the L1-normalised patches
      (N, H', W', G, S/G), pixel-major; :func:`~deepnmf_jax.core.patches.pixel_major_to_channel_major`
      gives them in the order of :func:`~deepnmf_jax.core.patches.extract_patches`).
    """
    geometry = patches.patch_geometry(x.shape, kernel_size, strides, padding)
    channels = x.shape[-1]
    features = patches.pixel_major_patches(x, geometry, groups)  # (N, H', W', G, S/G)
    sums = patches.patch_sums(x, geometry, groups)[..., None] + NORM_EPS  # (N, H', W', G, 1)
    inputs = divide(features, sums)
    if probe is not None:  # probes see the reference's channel-major features
        perturbed = probe("nmf_input", patches.pixel_major_to_channel_major(inputs, channels))
        inputs = patches.channel_major_to_pixel_major(perturbed, channels, groups)
    w = nmf_lib.normalize_weight(u).astype(x.dtype)
    w = patches.pixel_major_kernel(w, channels, geometry.kernel)

    def run(inputs_, weight):
        return nmf_lib.nmf_fixed_point(inputs_, weight, options, name=name)

    if groups == 1:
        codes = run(inputs[..., 0, :], w)
    else:
        grouped = jax.vmap(run, in_axes=(-2, 0), out_axes=-2)
        codes = l1_normalize(patches.merge_groups(grouped(inputs, w)))
    if probe is not None:
        codes = probe("codes", codes)
    return codes, inputs


def patch_conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    kernel_size: KernelSize,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    groups: int,
    method: Literal["matmul", "conv", "patches"] = "matmul",
    normalize: bool = True,
) -> jax.Array:
    """The CNN a-layer: a linear map (with bias) of the L1-normalised patches (or, with
    ``normalize=False``, of the raw patches). ``method`` chooses the computation, all equal up to
    rounding: ``"matmul"`` (raw patches times the kernel, divided by the patch sums), ``"conv"``
    (a convolution divided by the patch sums) or ``"patches"`` (the reference's order)."""
    if method not in PATCH_CONV_METHODS:
        raise ValueError(f"method must be one of {PATCH_CONV_METHODS}, got {method!r}")
    geometry = patches.patch_geometry(x.shape, kernel_size, strides, padding)
    kernel = kernel.astype(x.dtype)
    if not normalize:
        y = patches.grouped_linear(
            patches.extract_patches(x, kernel_size, strides, padding), kernel
        )
    elif method in patches.LINEAR_MAPS:
        y = patches.normalized_patch_map(x, kernel, geometry, groups, method)
    else:
        features = patches.extract_patches(x, kernel_size, strides, padding)
        y = patches.grouped_linear(patches.group_l1_normalize(features, groups), kernel)
    return y if bias is None else y + per_channel(bias, y)


def mix_1x1(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, normalize_input: bool = True
) -> jax.Array:
    """The "+1x1" layer: ReLU and L1 normalisation over channels (``normalize_input``), then a 1x1
    convolution with bias (``kernel`` (C, F) or grouped (G, C/G, F/G))."""
    y = l1_normalize(jax.nn.relu(x)) if normalize_input else x
    y = patches.grouped_linear(y, kernel.astype(x.dtype))
    return y + per_channel(bias, y)


def avg_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Average pooling of (N, H, W, C) over non-overlapping ``window x window`` tiles (torch's
    AvgPool2d); a trailing odd row or column is dropped."""
    n, height, width, channels = x.shape
    out_h, out_w = height // window, width // window
    tiles = x[:, : out_h * window, : out_w * window].reshape(
        n, out_h, window, out_w, window, channels
    )
    return jnp.mean(tiles, axis=(2, 4))
