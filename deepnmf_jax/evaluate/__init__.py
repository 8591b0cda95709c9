"""Deprecated: ``python -m deepnmf_jax.evaluate`` is ``deepnmf evaluate`` (and the other
evaluation subcommands); the modules are in :mod:`deepnmf_jax.evaluation`."""
