"""The PyTorch reference (mahbodnr/deep_nmf): its parameter names and layouts both ways, and the
parity computations checked against its fixtures."""

from deepnmf_jax.reference import parity
from deepnmf_jax.reference.weights import (
    export_reference_params,
    load_reference_params,
    positional_names,
)

__all__ = ["export_reference_params", "load_reference_params", "parity", "positional_names"]
