"""The NMF layer's mathematics in pure JAX (no Flax, no configs): the options, the update, the loop
with its backward rules, and patches.

    import deepnmf_jax.core as core
    h = core.nmf_fixed_point(core.l1_normalize(x), core.normalize_weight(u))
"""

from deepnmf_jax.core.nmf import checked, nmf_fixed_point, normalize_weight
from deepnmf_jax.core.ops import (
    NORM_EPS,
    RECON_EPS,
    divide,
    l1_normalize,
    matmul,
    nmf_update,
    num_chunks,
)
from deepnmf_jax.core.options import (
    BACKWARD_NAMES,
    DEFAULT_CHUNK_BYTES,
    PRECISIONS,
    Approximate,
    Backward,
    Implicit,
    LocalRule,
    NMFOptions,
    Unrolled,
    backward_from_name,
)
from deepnmf_jax.core.patches import (
    KernelSize,
    PatchGeometry,
    extract_patches,
    group_l1_normalize,
    grouped_linear,
    patch_geometry,
    patch_sums,
)

__all__ = [
    "BACKWARD_NAMES",
    "DEFAULT_CHUNK_BYTES",
    "NORM_EPS",
    "PRECISIONS",
    "RECON_EPS",
    "Approximate",
    "Backward",
    "Implicit",
    "KernelSize",
    "LocalRule",
    "NMFOptions",
    "PatchGeometry",
    "Unrolled",
    "backward_from_name",
    "checked",
    "divide",
    "extract_patches",
    "group_l1_normalize",
    "grouped_linear",
    "l1_normalize",
    "matmul",
    "nmf_fixed_point",
    "nmf_update",
    "normalize_weight",
    "num_chunks",
    "patch_geometry",
    "patch_sums",
]
