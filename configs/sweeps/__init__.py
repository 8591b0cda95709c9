"""Sweep files (``deepnmf sweep run --config sweeps/NAME``): the paper's experiments."""
