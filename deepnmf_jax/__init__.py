"""deepnmf-jax: deep non-negative matrix factorization networks in JAX/Flax."""

from deepnmf_jax import layers, losses, models, nmf, reference
from deepnmf_jax.models import build_model
from deepnmf_jax.nmf import nmf_fixed_point, normalize_weight

__version__ = "0.1.0"

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
