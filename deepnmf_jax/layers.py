"""Flax Linen layers of the deep NMF networks: patch NMF, its CNN counterpart, the 1x1 mixer, BatchNorm.

All layers take and return NHWC arrays. Parameters are stored in float32 (``param_dtype``) and cast to
the input's dtype when used, so float64 inputs with float64 variables compute in float64 throughout.

Groups (``groups=G``) split the channels of the input into G contiguous groups, as a grouped convolution
does. Because patch features are channel-major ``(c, ki, kj)``, a group of channels is a contiguous block
of S/G patch features. Each group is L1-normalised on its own and mapped to F/G output features
(davrot/nnmf_24b's grouped NMF; for NMF each group runs its own dynamics and the concatenated codes are
renormalised to sum to 1). ``groups=1`` is the paper model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from deepnmf_jax import nmf, patches
from deepnmf_jax.patches import KernelSize, extract_patches, group_l1_normalize, grouped_linear

BATCH_NORM_MODES = ("batch", "running")
PATCH_CONV_METHODS = ("matmul", "conv", "patches")


def _per_channel(v: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes a (C,) vector to broadcast against (..., C) explicitly (no implicit rank promotion)."""
    return v.astype(like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def avg_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Average pooling of (N, H, W, C) over non-overlapping ``window x window`` tiles (torch's AvgPool2d)."""
    n, height, width, channels = x.shape
    out_h, out_w = height // window, width // window  # a trailing odd row/column is dropped
    tiles = x[:, : out_h * window, : out_w * window].reshape(
        n, out_h, window, out_w, window, channels
    )
    return jnp.mean(tiles, axis=(2, 4))


def uniform(low: float, high: float):
    """Initializer drawing from U[low, high)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init


class NMFConv(nn.Module):
    """Convolutional NMF: patches, L1 normalisation of each patch, then the NMF fixed point per position.

    The parameter ``kernel`` is the raw U, of shape (S, F) or (G, S/G, F/G) with S = C*kh*kw, initialised
    U[0, 1) and read as ``W = normalize_weight(U)``.

    Attributes:
      features: number of NMF hidden units F (output channels).
      kernel_size, strides, padding: as :func:`extract_patches` (``"full"``: the whole input).
      options: how the fixed point runs (:class:`deepnmf_jax.nmf.NMFOptions`), passed whole to
        :func:`nmf.nmf_fixed_point`.
      groups: grouped NMF (module docstring); 1 is the paper's layer.
      probes: add zero "perturbations" to the NMF input x and the codes h (``nn.Module.perturb``),
        so that ``jax.grad`` with respect to the ``perturbations`` collection returns dL/dx and
        dL/dh of this layer (for gradient studies; off by default, as it adds activation-sized
        variables at ``init``).

    With ``mutable=["intermediates"]`` the layer also sows its NMF input ``x`` (the L1-normalised
    patches) under ``intermediates/.../nmf_input``.
    """

    features: int
    kernel_size: KernelSize
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    options: nmf.NMFOptions = nmf.NMFOptions()
    groups: int = 1
    probes: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) non-negative inputs to codes (N, H', W', F) that sum to 1 over F."""
        name = "/".join(self.path) or "nmf"  # e.g. "block2/a", for the messages below
        patch_features = extract_patches(x, self.kernel_size, self.strides, self.padding)
        in_features = patch_features.shape[-1]
        patches.check_groups(self.groups, x.shape[-1], self.features, f"NMFConv {name}")
        u = self.param(
            "kernel",
            uniform(0.0, 1.0),
            patches.kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        )
        w = nmf.normalize_weight(u).astype(x.dtype)
        run = lambda inputs, weight: nmf.nmf_fixed_point(inputs, weight, self.options, name=name)
        inputs = group_l1_normalize(patch_features, self.groups)
        if self.probes:
            inputs = self.perturb("nmf_input", inputs)
        self.sow("intermediates", "nmf_input", inputs)
        if self.groups == 1:
            codes = run(inputs, w)
        else:
            grouped = jax.vmap(run, in_axes=(-2, 0), out_axes=-2)
            codes = nmf.l1_normalize(
                patches.merge_groups(grouped(patches.split_groups(inputs, self.groups), w))
            )
        return self.perturb("codes", codes) if self.probes else codes


class PatchConv(nn.Module):
    """The CNN counterpart of :class:`NMFConv`: a linear map (with bias) of the L1-normalised patches.

    Equivalent to the reference's ``Conv2d(C*k*k -> F, 1x1)`` on the unfolded, per-patch normalised
    input, initialised like torch's Conv2d: weight and bias ~ U(+-1/sqrt(fan_in)), fan_in = S/G.

    Attributes:
      method: how the map is computed, all equal up to rounding (tested in float64):
        ``"matmul"`` (default): the raw patches times the kernel, divided by the patch sums
        (:func:`deepnmf_jax.patches.normalized_patch_map`); ``"conv"``: a convolution of the image
        divided by the patch sums, no patches at all; ``"patches"``: the reference's order,
        normalise every patch, then the linear map.
      normalize: L1-normalise each patch (the reference; needs a non-negative input). False makes
        it a plain convolution of the raw patches (the CNN's ``head="linear"``, on an input of both
        signs); ``method`` is then ignored.
    """

    features: int
    kernel_size: KernelSize
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    groups: int = 1
    use_bias: bool = True
    method: Literal["matmul", "conv", "patches"] = "matmul"
    normalize: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) to (N, H', W', F)."""
        if self.method not in PATCH_CONV_METHODS:
            raise ValueError(f"method must be one of {PATCH_CONV_METHODS}, got {self.method!r}")
        geometry = patches.patch_geometry(x.shape, self.kernel_size, self.strides, self.padding)
        in_features = x.shape[-1] * geometry.kernel[0] * geometry.kernel[1]
        patches.check_groups(
            self.groups, x.shape[-1], self.features, f"PatchConv {'/'.join(self.path)}"
        )
        bound = (self.groups / in_features) ** 0.5
        kernel = self.param(
            "kernel",
            uniform(-bound, bound),
            patches.kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        ).astype(x.dtype)
        if not self.normalize:
            patch_features = extract_patches(x, self.kernel_size, self.strides, self.padding)
            y = grouped_linear(patch_features, kernel)
        elif self.method in patches.LINEAR_MAPS:
            y = patches.normalized_patch_map(x, kernel, geometry, self.groups, self.method)
        else:
            patch_features = extract_patches(x, self.kernel_size, self.strides, self.padding)
            y = grouped_linear(group_l1_normalize(patch_features, self.groups), kernel)
        if self.use_bias:
            bias = self.param("bias", uniform(-bound, bound), (self.features,), self.param_dtype)
            y = y + _per_channel(bias, y)
        return y


class Mix1x1(nn.Module):
    """The "+1x1" layer (cortical hyper-columns): ReLU, L1 normalisation over channels, 1x1 conv + bias.

    Weights of both signs mix the features. Initialised to the identity plus U(-0.5, 0.5) * 1e-4 noise
    (weight and bias), as the reference (``append_block.py:194``), so at the start it passes the
    L1-normalised, rectified input through almost unchanged.

    Attributes:
      groups: grouped 1x1 convolution (torch-style: channel groups map to themselves).
      normalize_input: ReLU and L1 normalisation over channels before the convolution (the
        reference). False makes it a plain 1x1 convolution of the input: a channel that is negative
        on every image then still passes gradient (the ``head="linear"`` option of the models).
    """

    groups: int = 1
    normalize_input: bool = True
    noise_scale: float = 1e-4
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (..., C) to (..., C)."""
        channels = x.shape[-1]
        patches.check_groups(self.groups, channels, channels, f"Mix1x1 {'/'.join(self.path)}")
        shape = patches.kernel_shape(channels, channels, self.groups)

        def kernel_init(key, shape, dtype):
            eye = jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)
            return eye + self.noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

        def bias_init(key, shape, dtype):
            return self.noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

        kernel = self.param("kernel", kernel_init, shape, self.param_dtype)
        bias = self.param("bias", bias_init, (channels,), self.param_dtype)
        y = nmf.l1_normalize(nn.relu(x)) if self.normalize_input else x
        y = grouped_linear(y, kernel.astype(x.dtype))
        return y + _per_channel(bias, y)


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (torch's ``BatchNorm2d`` on NHWC), eps 1e-5, biased variance.

    Attributes:
      mode: ``"batch"`` normalises with the current batch's statistics in training AND evaluation and
        keeps no state (the reference: ``track_running_stats=False``; no mutable collection needed).
        ``"running"`` keeps running averages in the ``batch_stats`` collection (torch's momentum 0.1,
        unbiased running variance) and uses them when ``train=False``; pass
        ``mutable=["batch_stats"]`` to ``apply`` when training.
    """

    mode: Literal["batch", "running"] = "batch"
    momentum: float = 0.1
    epsilon: float = 1e-5
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.mode not in BATCH_NORM_MODES:
            raise ValueError(f"BatchNorm mode must be one of {BATCH_NORM_MODES}, got {self.mode!r}")
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        axes = tuple(range(x.ndim - 1))
        if self.mode == "running":
            running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
            running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        if self.mode == "batch" or train:
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
            if self.mode == "running" and not self.is_initializing():
                count = x.size // channels
                unbiased = var.reshape(channels) * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean.reshape(
                    channels
                ).astype(jnp.float32)
                running_var.value = (1 - m) * running_var.value + m * unbiased.astype(jnp.float32)
        else:
            mean = _per_channel(running_mean.value, x)
            var = _per_channel(running_var.value, x)
        normalized = (x - mean) * lax.rsqrt(var + self.epsilon)
        return normalized * _per_channel(scale, x) + _per_channel(bias, x)
