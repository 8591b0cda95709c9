"""Deprecated: the Linen layers are in :mod:`deepnmf_jax.nn` (and at the top level)."""

from deepnmf_jax._deprecated import moved
from deepnmf_jax.nn.linen import *  # noqa: F403
from deepnmf_jax.nn.linen import BATCH_NORM_MODES, PATCH_CONV_METHODS  # noqa: F401

moved("deepnmf_jax.layers", "deepnmf_jax.nn (or deepnmf_jax.NMFConv, ...)")
