"""Flax Linen layers of the deep NMF networks: patch NMF, its CNN counterpart, the 1x1 mixer, BatchNorm.

All layers take and return NHWC arrays. Parameters are stored in float32 (``param_dtype``) and cast to
the input's dtype when used, so float64 inputs with float64 variables compute in float64 throughout.
The computations are :mod:`deepnmf_jax.nn._functional`'s, shared with the NNX layers.

Each layer says what it is in its class attribute ``role`` (``"nmf"``, ``"patch"``, ``"mix"``,
``"norm"``): the trainer's parameter groups, the parameter and FLOP counts
(:mod:`deepnmf_jax.models.inspect`) read it, wherever the layer sits in a model and whatever its
name. Groups (``groups=G``) split the channels into G contiguous groups, as a grouped convolution
does; ``groups=1`` is the paper's layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepnmf_jax.core import patches
from deepnmf_jax.core.options import NMFOptions
from deepnmf_jax.core.patches import KernelSize
from deepnmf_jax.nn import _batch_norm as BN
from deepnmf_jax.nn import _functional as F

BATCH_NORM_MODES = ("batch", "running")
PATCH_CONV_METHODS = F.PATCH_CONV_METHODS
POPULATION = "population"
"""The variable collection of BatchNorm's population statistics (``mean``, ``var`` per layer)."""
MOMENTS = "batch_moments"
"""The collection where BatchNorm puts its batch's (mean, var) when it is mutable (calibration)."""

avg_pool = F.avg_pool
uniform = F.uniform


class NMFConv(nn.Module):
    """Convolutional NMF: patches, L1 normalisation of each patch, the NMF fixed point per position.

    The parameter ``kernel`` is the raw U, of shape (S, F) or (G, S/G, F/G) with S = C*kh*kw,
    initialised U[0, 1) and read as ``W = normalize_weight(U)``.

    Attributes:
      features: number of NMF hidden units F (output channels).
      kernel_size, strides, padding: as :func:`deepnmf_jax.core.extract_patches` (``"full"``: the
        whole input).
      options: how the fixed point runs (:class:`deepnmf_jax.NMFOptions`), passed whole.
      groups: grouped NMF (:mod:`deepnmf_jax.nn._functional`); 1 is the paper's layer.
      probes: add zero "perturbations" to the NMF input x and the codes h (``nn.Module.perturb``),
        so that ``jax.grad`` with respect to the ``perturbations`` collection returns dL/dx and
        dL/dh of this layer (for gradient studies; adds activation-sized variables at ``init``).

    With ``mutable=["intermediates"]`` the layer also sows its NMF input ``x`` (the L1-normalised
    patches) under ``intermediates/.../nmf_input``.
    """

    features: int
    kernel_size: KernelSize
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    options: NMFOptions = NMFOptions()
    groups: int = 1
    probes: bool = False
    param_dtype: Any = jnp.float32
    role: ClassVar[str] = "nmf"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) non-negative inputs to codes (N, H', W', F) that sum to 1 over F."""
        name = "/".join(self.path) or "nmf"  # e.g. "block2/a", for messages
        in_features = F.patch_features(x, self.kernel_size, self.strides, self.padding)
        patches.check_groups(self.groups, x.shape[-1], self.features, f"NMFConv {name}")
        u = self.param(
            "kernel",
            F.uniform(0.0, 1.0),
            patches.kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        )
        probe = self.perturb if self.probes else None
        codes, inputs = F.nmf_conv(
            x,
            u,
            self.kernel_size,
            self.strides,
            self.padding,
            self.options,
            self.groups,
            name,
            probe,
        )
        if self.is_mutable_collection("intermediates"):  # the reference's channel-major order
            channels = x.shape[-1]
            self.sow(
                "intermediates", "nmf_input", patches.pixel_major_to_channel_major(inputs, channels)
            )
        return codes


class PatchConv(nn.Module):
    """The CNN counterpart of :class:`NMFConv`: a linear map (with bias) of the L1-normalised patches.

    The reference's ``Conv2d(C*k*k -> F, 1x1)`` on the unfolded, per-patch normalised input,
    initialised like torch's Conv2d: weight and bias ~ U(+-1/sqrt(fan_in)), fan_in = S/G.

    Attributes:
      method: how the map is computed, all equal up to rounding (tested in float64): ``"matmul"``
        (the raw patches times the kernel, divided by the patch sums), ``"conv"`` (a convolution
        divided by the patch sums) or ``"patches"`` (the reference's order).
      normalize: L1-normalise each patch (the reference; needs a non-negative input). False makes
        it a plain convolution of the raw patches; ``method`` is then ignored.
    """

    features: int
    kernel_size: KernelSize
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    groups: int = 1
    use_bias: bool = True
    method: Literal["matmul", "conv", "patches"] = "matmul"
    normalize: bool = True
    param_dtype: Any = jnp.float32
    role: ClassVar[str] = "patch"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (N, H, W, C) to (N, H', W', F)."""
        if self.method not in PATCH_CONV_METHODS:
            raise ValueError(f"method must be one of {PATCH_CONV_METHODS}, got {self.method!r}")
        in_features = F.patch_features(x, self.kernel_size, self.strides, self.padding)
        patches.check_groups(
            self.groups, x.shape[-1], self.features, f"PatchConv {'/'.join(self.path)}"
        )
        bound = (self.groups / in_features) ** 0.5
        kernel = self.param(
            "kernel",
            F.uniform(-bound, bound),
            patches.kernel_shape(in_features, self.features, self.groups),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", F.uniform(-bound, bound), (self.features,), self.param_dtype)
        return F.patch_conv(
            x,
            kernel,
            bias,
            self.kernel_size,
            self.strides,
            self.padding,
            self.groups,
            self.method,
            self.normalize,
        )


class Mix1x1(nn.Module):
    """The "+1x1" layer (cortical hyper-columns): ReLU, L1 normalisation over channels, 1x1 conv + bias.

    Weights of both signs mix the features. Initialised to the identity (rectangular when
    ``features`` changes the width) plus U(-0.5, 0.5) * 1e-4 noise, weight and bias, as the
    reference (``append_block.py:194``): at the start it passes the L1-normalised, rectified input
    through almost unchanged.

    Attributes:
      features: output channels; None keeps the input's.
      groups: grouped 1x1 convolution (torch-style: channel groups map to themselves).
      normalize_input: ReLU and L1 normalisation over channels before the convolution (the
        reference). False makes it a plain 1x1 convolution of the input.
    """

    features: int | None = None
    groups: int = 1
    normalize_input: bool = True
    noise_scale: float = 1e-4
    param_dtype: Any = jnp.float32
    role: ClassVar[str] = "mix"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (..., C) to (..., features)."""
        channels = x.shape[-1]
        features = channels if self.features is None else self.features
        patches.check_groups(self.groups, channels, features, f"Mix1x1 {'/'.join(self.path)}")
        shape = patches.kernel_shape(channels, features, self.groups)
        kernel = self.param(
            "kernel", F.identity_plus_noise(self.noise_scale), shape, self.param_dtype
        )
        bias = self.param("bias", F.uniform_noise(self.noise_scale), (features,), self.param_dtype)
        return F.mix_1x1(x, kernel, bias, self.normalize_input)


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (torch's ``BatchNorm2d`` on NHWC), eps 1e-5, biased variance.

    Which statistics normalise:

    * in training: the batch's;
    * in evaluation (``train=False``): the layer's population statistics where the variables hold
      them (the ``population`` collection, :func:`deepnmf_jax.models.population_statistics`: every
      image then gets the same prediction whatever else is in its batch); else, with
      ``mode="batch"``, the batch's again (the reference: ``track_running_stats=False``); with
      ``mode="running"``, the running averages of the ``batch_stats`` collection (torch's momentum
      0.1, unbiased running variance; pass ``mutable=["batch_stats"]`` to ``apply`` in training).

    Where the ``batch_moments`` collection is mutable, the layer puts the (mean, var) it
    normalised with there (how population statistics are gathered).
    """

    mode: Literal["batch", "running"] = "batch"
    momentum: float = 0.1
    epsilon: float = BN.BATCH_NORM_EPS
    param_dtype: Any = jnp.float32
    role: ClassVar[str] = "norm"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.mode not in BATCH_NORM_MODES:
            raise ValueError(f"BatchNorm mode must be one of {BATCH_NORM_MODES}, got {self.mode!r}")
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        running = None
        if self.mode == "running":
            running = (
                self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32),
                self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32),
            )
        if not train and self.has_variable(POPULATION, "mean"):
            mean = self.get_variable(POPULATION, "mean")
            var = self.get_variable(POPULATION, "var")
        elif self.mode == "batch" or train:
            y, mean, var = BN.batch_normalize(
                x, scale.astype(x.dtype), bias.astype(x.dtype), self.epsilon
            )
            if self.is_mutable_collection(MOMENTS) and not self.is_initializing():
                self.put_variable(MOMENTS, "mean", mean)
                self.put_variable(MOMENTS, "var", var)
            if running is not None and not self.is_initializing():
                running_mean, running_var = running
                count = x.size // channels
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean.astype(jnp.float32)
                running_var.value = (1 - m) * running_var.value + m * unbiased.astype(jnp.float32)
            return y
        else:
            assert running is not None  # mode "running" in evaluation
            mean, var = running[0].value, running[1].value
        return BN.normalize(x, mean, var, scale, bias, self.epsilon)
