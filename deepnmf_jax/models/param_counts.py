"""Parameter counts of a model: in all, per kind (NMF, convolution, BatchNorm), and the CNN/NMF ratio
of the paper's Fig. 6b, from the parameter shapes and the layers that own them
(:mod:`deepnmf_jax.models.inspect`), for any model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from deepnmf_jax.models.inspect import anatomy

PARAM_KINDS = ("nmf", "conv", "batchnorm")
_KIND_OF_ROLE = {"nmf": "nmf", "norm": "batchnorm"}  # every other role counts as "conv"


def count_params(params: Any) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))


def param_breakdown(model: nn.Module, image_shape: Sequence[int]) -> dict[str, int | float | None]:
    """Parameters per kind for (H, W, C) images: ``nmf`` (the NMF layers' U), ``conv`` (every other
    weight and bias: the CNN a-layers, the 1x1 layers, a user's layers), ``batchnorm``
    (normalisation scales and biases), their ``total``, and ``cnn_nmf_ratio`` = conv / nmf (None
    without NMF parameters): the ratio of paper Fig. 6b."""
    parts = anatomy(model, image_shape)
    counts: dict[str, int] = dict.fromkeys(PARAM_KINDS, 0)
    roles = parts.param_roles()
    flat: dict[tuple[str, ...], Any] = traverse_util.flatten_dict(parts.params)
    for path, leaf in flat.items():
        counts[_KIND_OF_ROLE.get(roles[path], "conv")] += int(np.prod(np.shape(leaf)))
    total = sum(counts.values())
    ratio = counts["conv"] / counts["nmf"] if counts["nmf"] else None
    return {**counts, "total": total, "cnn_nmf_ratio": ratio}


def abstract_params(model: nn.Module, image_shape: Sequence[int]) -> Any:
    """The parameter tree's shapes for (H, W, C) images, without computing anything."""
    return anatomy(model, image_shape).params
