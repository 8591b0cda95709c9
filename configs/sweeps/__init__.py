"""Sweep files (``python -m deepnmf_jax.sweep run configs/sweeps/NAME.py``): the paper's experiments."""
