"""Deprecated: ``train_and_evaluate`` is :func:`deepnmf_jax.train_and_evaluate`."""

from deepnmf_jax._deprecated import moved
from deepnmf_jax.training import train_and_evaluate  # noqa: F401

moved("deepnmf_jax.train_lib", "deepnmf_jax.train_and_evaluate")
