"""Flax NNX layers of the deep NMF networks, on the same computations as the Linen layers
(:mod:`deepnmf_jax.nn._functional`): the same weights give the same outputs and gradients.

    from flax import nnx
    import deepnmf_jax as dnmf

    layer = dnmf.nnx.NMFConv(3, 32, kernel_size=5, rngs=nnx.Rngs(0))   # (N, 28, 28, 3) -> (N, 24, 24, 32)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

NNX modules know their shapes when they are built, so the patch layers take ``in_features`` and an
explicit ``kernel_size`` (an int or a pair; the Linen layers' ``"full"`` is the input's size, e.g. 4
for the paper's third block). The NMF layer's raw weight U is an :class:`NMFKernel`, a subclass of
``nnx.Param``: ``nnx.state(model, NMFKernel)`` selects every NMF weight, for their own learning rate
(the reference trains them at 0.01 and the rest at 0.001).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from deepnmf_jax.core import patches
from deepnmf_jax.core.options import NMFOptions
from deepnmf_jax.nn import _batch_norm as BN
from deepnmf_jax.nn import _functional as F


class NMFKernel(nnx.Param):
    """The raw parameter U of an NMF layer (read as ``W = normalize_weight(U)``)."""


class PopulationStat(nnx.Variable):
    """A BatchNorm population statistic (mean or variance over the training images)."""


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, str):
        raise ValueError(
            "NNX layers need the kernel size when they are built: give an int or a pair "
            "(the input's height and width for a patch of the whole input)"
        )
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"kernel_size must be an int or a pair, got {value!r}")
    return pair  # type: ignore[return-value]


class NMFConv(nnx.Module):
    """Convolutional NMF (:class:`deepnmf_jax.NMFConv` in NNX): patches, their L1 normalisation,
    the NMF fixed point per position. Maps (N, H, W, in_features) to codes (N, H', W',
    out_features) that sum to 1 over the features."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        options: NMFOptions = NMFOptions(),
        groups: int = 1,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size)
        patches.check_groups(groups, in_features, out_features, "NMFConv")
        shape = patches.kernel_shape(in_features * kh * kw, out_features, groups)
        self.kernel = NMFKernel(F.uniform(0.0, 1.0)(rngs.params(), shape, param_dtype))
        self.kernel_size, self.strides, self.padding = (kh, kw), strides, padding
        self.options, self.groups = options, groups

    def __call__(self, x: jax.Array) -> jax.Array:
        codes, _ = F.nmf_conv(
            x,
            self.kernel[...],
            self.kernel_size,
            self.strides,
            self.padding,
            self.options,
            self.groups,
            "NMFConv",
        )
        return codes


class PatchConv(nnx.Module):
    """A linear map with bias of the L1-normalised patches (:class:`deepnmf_jax.PatchConv` in NNX),
    initialised like torch's Conv2d."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        groups: int = 1,
        use_bias: bool = True,
        method: Literal["matmul", "conv", "patches"] = "matmul",
        normalize: bool = True,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size)
        patches.check_groups(groups, in_features, out_features, "PatchConv")
        fan_in = in_features * kh * kw
        bound = (groups / fan_in) ** 0.5
        shape = patches.kernel_shape(fan_in, out_features, groups)
        self.kernel = nnx.Param(F.uniform(-bound, bound)(rngs.params(), shape, param_dtype))
        self.bias = (
            nnx.Param(F.uniform(-bound, bound)(rngs.params(), (out_features,), param_dtype))
            if use_bias
            else None
        )
        self.kernel_size, self.strides, self.padding = (kh, kw), strides, padding
        self.groups, self.normalize = groups, normalize
        self.method: Literal["matmul", "conv", "patches"] = method

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        return F.patch_conv(
            x,
            self.kernel[...],
            bias,
            self.kernel_size,
            self.strides,
            self.padding,
            self.groups,
            self.method,
            self.normalize,
        )


class Mix1x1(nnx.Module):
    """The "+1x1" layer (:class:`deepnmf_jax.Mix1x1` in NNX): ReLU, L1 over channels, 1x1 conv +
    bias, initialised to the identity plus 1e-4 noise."""

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        *,
        groups: int = 1,
        normalize_input: bool = True,
        noise_scale: float = 1e-4,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_features = in_features if out_features is None else out_features
        patches.check_groups(groups, in_features, out_features, "Mix1x1")
        shape = patches.kernel_shape(in_features, out_features, groups)
        self.kernel = nnx.Param(
            F.identity_plus_noise(noise_scale)(rngs.params(), shape, param_dtype)
        )
        self.bias = nnx.Param(
            F.uniform_noise(noise_scale)(rngs.params(), (out_features,), param_dtype)
        )
        self.normalize_input = normalize_input

    def __call__(self, x: jax.Array) -> jax.Array:
        return F.mix_1x1(x, self.kernel[...], self.bias[...], self.normalize_input)


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last, eps 1e-5, biased variance (the reference's).

    Normalises with the batch's statistics, in training and in evaluation (the reference), unless
    ``use_running_average`` is set and the layer holds population statistics
    (:meth:`set_population`): then every image is normalised alike, whatever else is in its batch.
    ``model.eval()`` / ``model.train()`` set and clear ``use_running_average``, as for NNX's own
    BatchNorm.
    """

    def __init__(self, num_features: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        del rngs  # no random initialisation; accepted for a uniform constructor
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.population_mean = PopulationStat(jnp.zeros((num_features,), jnp.float32))
        self.population_var = PopulationStat(jnp.ones((num_features,), jnp.float32))
        self.has_population = False
        self.use_running_average = False

    def set_population(self, mean: jax.Array, var: jax.Array) -> None:
        """Stores population statistics (e.g. from a Linen model's ``population`` collection)."""
        self.population_mean[...] = jnp.asarray(mean, jnp.float32)
        self.population_var[...] = jnp.asarray(var, jnp.float32)
        self.has_population = True

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = self.scale[...], self.bias[...]
        if self.use_running_average and self.has_population:
            mean, var = self.population_mean[...], self.population_var[...]
            return BN.normalize(x, mean, var, scale, bias)
        return BN.batch_normalize(x, scale.astype(x.dtype), bias.astype(x.dtype))[0]
