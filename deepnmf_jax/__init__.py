"""deepnmf-jax: deep non-negative matrix factorization networks in JAX/Flax."""

import importlib.metadata

from deepnmf_jax import layers, losses, models, nmf, reference
from deepnmf_jax.models import build_model
from deepnmf_jax.nmf import nmf_fixed_point, normalize_weight

try:
    __version__ = importlib.metadata.version("deepnmf-jax")  # one source: pyproject.toml
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "build_model",
    "layers",
    "losses",
    "models",
    "nmf",
    "nmf_fixed_point",
    "normalize_weight",
    "reference",
]
