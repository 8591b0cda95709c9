"""Parameter counts of a model: in all, per kind (NMF, convolution, BatchNorm), and the CNN/NMF ratio
of the paper's Fig. 6b, from the parameter shapes alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from deepnmf_jax.models import DeepNMF


def count_params(params: Any) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


PARAM_KINDS = ("nmf", "conv", "batchnorm")


def param_breakdown(model: DeepNMF, params: Any) -> dict[str, int | float | None]:
    """Parameters per kind: ``nmf`` (the NMF layers' U), ``conv`` (the CNN a-layers and the 1x1
    b-layers, weights and biases), ``batchnorm`` (scales and biases), their ``total``, and
    ``cnn_nmf_ratio`` = conv / nmf (None without NMF parameters): the ratio of paper Fig. 6b."""
    counts = dict.fromkeys(PARAM_KINDS, 0)
    for path, leaf in traverse_util.flatten_dict(params).items():
        layer = path[1] if len(path) > 1 else path[0]
        if layer.endswith("_bn"):
            kind = "batchnorm"
        elif layer == "a" and model.a_layer == "nmf":
            kind = "nmf"
        else:
            kind = "conv"
        counts[kind] += int(leaf.size)
    total = sum(counts.values())
    ratio = counts["conv"] / counts["nmf"] if counts["nmf"] else None
    return {**counts, "total": total, "cnn_nmf_ratio": ratio}


def abstract_params(model: DeepNMF, image_shape: Sequence[int]) -> Any:
    """The parameter tree's shapes for (H, W, C) images, without computing anything."""
    images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return shapes["params"]
