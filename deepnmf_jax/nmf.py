"""Deprecated: the NMF layer's functions are in :mod:`deepnmf_jax.core` (and at the top level)."""

from deepnmf_jax._deprecated import moved
from deepnmf_jax.core import *  # noqa: F403
from deepnmf_jax.core import __all__  # noqa: F401

moved("deepnmf_jax.nmf", "deepnmf_jax.core (or deepnmf_jax.nmf_fixed_point, ...)")
