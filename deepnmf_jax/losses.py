"""Deprecated: the losses are in :mod:`deepnmf_jax.models.losses`."""

from deepnmf_jax._deprecated import moved
from deepnmf_jax.models.losses import *  # noqa: F403
from deepnmf_jax.models.losses import LOSSES, get_loss, paper_loss, reference_loss  # noqa: F401

moved("deepnmf_jax.losses", "deepnmf_jax.models.losses")
