"""The layers: Flax Linen (:mod:`deepnmf_jax.nn.linen`, what the models and the trainer use) and
Flax NNX (:mod:`deepnmf_jax.nn.nnx`), both on the same computations."""

from deepnmf_jax.nn import nnx
from deepnmf_jax.nn.linen import (
    BATCH_NORM_MODES,
    MOMENTS,
    PATCH_CONV_METHODS,
    POPULATION,
    BatchNorm,
    Mix1x1,
    NMFConv,
    PatchConv,
    avg_pool,
)

__all__ = [
    "BATCH_NORM_MODES",
    "MOMENTS",
    "PATCH_CONV_METHODS",
    "POPULATION",
    "BatchNorm",
    "Mix1x1",
    "NMFConv",
    "PatchConv",
    "avg_pool",
    "nnx",
]
