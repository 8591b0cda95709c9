"""Models: the deep NMF network and its blocks, the paper's presets, building a model from a config,
the losses, and what can be read off any model (parameter and FLOP counts, dead channels, BatchNorm
population statistics)."""

from deepnmf_jax.models import dead_channels, flops, losses, param_counts, population
from deepnmf_jax.models.config import ModelConfig, build, resolve
from deepnmf_jax.models.deepnmf import A_LAYERS, HEADS, TAPS, Block, BlockSpec, DeepNMF
from deepnmf_jax.models.inspect import Anatomy, LayerCall, anatomy
from deepnmf_jax.models.presets import (
    PAPER_MODELS,
    PAPER_WIDTHS,
    build_model,
    has_linear_head,
    paper_blocks,
)

__all__ = [
    "A_LAYERS",
    "HEADS",
    "PAPER_MODELS",
    "PAPER_WIDTHS",
    "TAPS",
    "Anatomy",
    "Block",
    "BlockSpec",
    "DeepNMF",
    "LayerCall",
    "ModelConfig",
    "anatomy",
    "build",
    "build_model",
    "dead_channels",
    "flops",
    "has_linear_head",
    "losses",
    "paper_blocks",
    "param_counts",
    "population",
    "resolve",
]
