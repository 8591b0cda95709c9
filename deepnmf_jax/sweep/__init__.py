"""Deprecated: ``python -m deepnmf_jax.sweep`` is ``deepnmf sweep``; the modules are in
:mod:`deepnmf_jax.experiments`."""
