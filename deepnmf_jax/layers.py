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

from deepnmf_jax import nmf

KernelSize = int | Sequence[int] | Literal["full"]
BATCH_NORM_MODES = ("batch", "running")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
        raise ValueError(f"{what} must be a non-negative int or a pair of them, got {value!r}")
    return pair


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
    if x.ndim != 4:
        raise ValueError(f"extract_patches expects NHWC images of rank 4, got shape {x.shape}")
    pad_h, pad_w = _pair(padding, "padding")
    height, width = x.shape[1] + 2 * pad_h, x.shape[2] + 2 * pad_w
    kh, kw = (height, width) if kernel_size == "full" else _pair(kernel_size, "kernel_size")
    sh, sw = _pair(strides, "strides")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"kernel_size and strides must be >= 1, got {kernel_size!r}, {strides!r}")
    if kh > height or kw > width:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {height}x{width} (input {x.shape})"
        )
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
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
    x = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    slices = [
        x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    stacked = jnp.stack(slices, axis=-1)  # (N, H', W', C, kh*kw)
    return stacked.reshape(x.shape[0], out_h, out_w, channels * kh * kw)


def _check_groups(groups: int, in_channels: int, out_features: int, layer: str) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{layer}: groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_features % groups:
        raise ValueError(
            f"{layer}: groups={groups} must divide both the input channels ({in_channels}) and "
            f"the output features ({out_features})"
        )


def _split_groups(x: jax.Array, groups: int) -> jax.Array:
    """(..., S) -> (..., G, S/G)."""
    return x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))


def _merge_groups(x: jax.Array) -> jax.Array:
    """(..., G, F/G) -> (..., F)."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def _kernel_shape(in_features: int, out_features: int, groups: int) -> tuple[int, ...]:
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
            "pgs,gsf->pgf", _split_groups(x, kernel.shape[0]), kernel, precision="highest"
        )
    return out.reshape(*batch_shape, -1)


def group_l1_normalize(x: jax.Array, groups: int) -> jax.Array:
    """L1-normalises each of the G contiguous groups of the last axis on its own."""
    if groups == 1:
        return nmf.l1_normalize(x)
    return _merge_groups(nmf.l1_normalize(_split_groups(x, groups)))


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
      iterations, epsilon, gradient, remat, check_inputs: passed to :func:`nmf.nmf_fixed_point`.
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
    iterations: int = 20
    epsilon: float | None = None
    gradient: nmf.Gradient = "approximate"
    remat: bool = False
    groups: int = 1
    check_inputs: bool = False
    probes: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) non-negative inputs to codes (N, H', W', F) that sum to 1 over F."""
        patches = extract_patches(x, self.kernel_size, self.strides, self.padding)
        in_features = patches.shape[-1]
        _check_groups(self.groups, x.shape[-1], self.features, f"NMFConv {self.name}")
        u = self.param(
            "kernel",
            uniform(0.0, 1.0),
            _kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        )
        w = nmf.normalize_weight(u).astype(x.dtype)
        run = lambda inputs, weight: nmf.nmf_fixed_point(
            inputs,
            weight,
            iterations=self.iterations,
            epsilon=self.epsilon,
            gradient=self.gradient,
            remat=self.remat,
            check_inputs=self.check_inputs,
            name=self.name or "nmf",
        )
        inputs = group_l1_normalize(patches, self.groups)
        if self.probes:
            inputs = self.perturb("nmf_input", inputs)
        self.sow("intermediates", "nmf_input", inputs)
        if self.groups == 1:
            codes = run(inputs, w)
        else:
            grouped = jax.vmap(run, in_axes=(-2, 0), out_axes=-2)
            codes = nmf.l1_normalize(_merge_groups(grouped(_split_groups(inputs, self.groups), w)))
        return self.perturb("codes", codes) if self.probes else codes


class PatchConv(nn.Module):
    """The CNN counterpart of :class:`NMFConv`: a linear map (with bias) of the L1-normalised patches.

    Equivalent to the reference's ``Conv2d(C*k*k -> F, 1x1)`` on the unfolded, per-patch normalised
    input, initialised like torch's Conv2d: weight and bias ~ U(+-1/sqrt(fan_in)), fan_in = S/G.
    """

    features: int
    kernel_size: KernelSize
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    groups: int = 1
    use_bias: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) to (N, H', W', F)."""
        patches = extract_patches(x, self.kernel_size, self.strides, self.padding)
        in_features = patches.shape[-1]
        _check_groups(self.groups, x.shape[-1], self.features, f"PatchConv {self.name}")
        bound = (self.groups / in_features) ** 0.5
        kernel = self.param(
            "kernel",
            uniform(-bound, bound),
            _kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        )
        y = grouped_linear(group_l1_normalize(patches, self.groups), kernel.astype(x.dtype))
        if self.use_bias:
            bias = self.param("bias", uniform(-bound, bound), (self.features,), self.param_dtype)
            y = y + _per_channel(bias, y)
        return y


class Mix1x1(nn.Module):
    """The "+1x1" layer (cortical hyper-columns): ReLU, L1 normalisation over channels, 1x1 conv + bias.

    Weights of both signs mix the features. Initialised to the identity plus U(-0.5, 0.5) * 1e-4 noise
    (weight and bias), as the reference (``append_block.py:194``), so at the start it passes the
    L1-normalised, rectified input through almost unchanged.
    """

    groups: int = 1
    noise_scale: float = 1e-4
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (..., C) to (..., C)."""
        channels = x.shape[-1]
        _check_groups(self.groups, channels, channels, f"Mix1x1 {self.name}")
        shape = _kernel_shape(channels, channels, self.groups)

        def kernel_init(key, shape, dtype):
            eye = jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)
            return eye + self.noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

        def bias_init(key, shape, dtype):
            return self.noise_scale * jax.random.uniform(key, shape, dtype, -0.5, 0.5)

        kernel = self.param("kernel", kernel_init, shape, self.param_dtype)
        bias = self.param("bias", bias_init, (channels,), self.param_dtype)
        y = nmf.l1_normalize(nn.relu(x))
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
