"""BatchNorm population statistics: each BatchNorm's mean and variance over a whole dataset.

The reference normalises with the statistics of whatever batch it is given, in evaluation too, so a
prediction depends on the other images of its batch (a single image is classified near chance).
Population statistics fix that: gathered once over the training images with the trained weights
(evaluation mode, no augmentation, each batch normalised by its own statistics as in training: the
"precise BatchNorm" of Wu and Johnson, 2021), stored in the ``population`` collection, and used by
every :class:`deepnmf_jax.BatchNorm` with ``train=False`` from then on.

Pooled over B equal batches with means m_b and (biased) variances v_b, by the law of total variance::

    mean = (1/B) sum_b m_b,      var = (1/B) sum_b v_b + (1/B) sum_b (m_b - mean)^2
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from deepnmf_jax.nn.linen import MOMENTS, POPULATION


def batch_moments(model: nn.Module, variables: dict, images: jax.Array) -> Any:
    """The (mean, var) every BatchNorm normalises one batch with: a tree like the ``population``
    collection, ``{..., "mean": (C,), "var": (C,)}``. Population statistics already in
    ``variables`` are ignored (the batch's own are what is measured)."""
    variables = {k: v for k, v in variables.items() if k != POPULATION}
    _, state = model.apply(variables, images, train=False, mutable=[MOMENTS])
    return state.get(MOMENTS, {})


class MomentPool:
    """Pools per-batch moments (module docstring) as they come, in float64 on the host."""

    def __init__(self):
        self.batches = 0
        self._sums: dict[tuple[str, ...], np.ndarray] = {}

    def add(self, moments: Any) -> None:
        """Adds one batch's moments (a :func:`batch_moments` tree; leaves may carry leading axes,
        e.g. seeds, kept as they are)."""
        for path, value in traverse_util.flatten_dict(moments).items():
            value = np.asarray(value, np.float64)
            terms = {path: value}
            if path[-1] == "mean":
                terms[path[:-1] + ("mean_square",)] = value**2
            for key, term in terms.items():
                self._sums[key] = self._sums[key] + term if key in self._sums else term
        self.batches += 1

    def result(self) -> Any:
        """The ``population`` collection (float32), ``{}`` if nothing was added."""
        out = {}
        for path, total in self._sums.items():
            if path[-1] != "mean":
                continue
            mean = total / self.batches
            spread = self._sums[path[:-1] + ("mean_square",)] / self.batches - mean**2
            var = self._sums[path[:-1] + ("var",)] / self.batches + np.maximum(spread, 0.0)
            out[path], out[path[:-1] + ("var",)] = mean.astype(np.float32), var.astype(np.float32)
        return traverse_util.unflatten_dict(out) if out else {}


def with_population(variables: dict, population: Any) -> dict:
    """``variables`` whose BatchNorms use ``population`` in evaluation."""
    return {**variables, POPULATION: population}


def without_population(variables: dict) -> dict:
    """``variables`` whose BatchNorms use each batch's statistics (the reference's evaluation)."""
    return {k: v for k, v in variables.items() if k != POPULATION}
