"""Hand count of the floating-point work of a train step, for benchmarks that report a fraction of peak.

XLA's ``compiled.cost_analysis()`` counts the body of a while loop once, so for the NMF layers
(a ``lax.fori_loop`` of N iterations) it is off by about N. This module counts the matrix products
of every NMF, patch and 1x1 layer by hand instead (2 flops per multiply-add), from the layer calls
of :mod:`deepnmf_jax.models.inspect`; elementwise work (normalisations, BatchNorm, ReLU,
augmentation) is not counted, as is usual for "model FLOPs". Layers of other kinds are listed in
:attr:`FlopCount.uncounted`.

Per image and per layer, with P output positions, S = C*kh*kw inputs per patch and F outputs:

* NMF layer, forward: ``P * N * 2 * (2 S F / G)`` (per iteration ``R = W h`` and ``W^T (x / R)``);
  approximate backward: ``P * 4 * (2 S F / G)`` (``R`` again, ``dL/dx`` and the two products of
  ``dL/dW``); the unrolled backward is not counted here.
* patch (CNN a-) layer and 1x1 layers: forward ``P * 2 S F / G``, backward twice that (``dL/dx``
  and ``dL/dW``), except that the first layer needs no ``dL/dx``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
from flax import traverse_util

from deepnmf_jax.core.patches import patch_geometry
from deepnmf_jax.models.inspect import anatomy


class LayerFlops(NamedTuple):
    """Matrix-product flops of one layer for one image."""

    name: str
    positions: int
    inputs: int
    outputs: int
    forward: int
    backward: int


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Per-layer flops of one image, and the layer types that were not counted."""

    layers: tuple[LayerFlops, ...]
    uncounted: tuple[str, ...] = ()

    @property
    def forward(self) -> int:
        return sum(row.forward for row in self.layers)

    @property
    def train_step(self) -> int:
        return sum(row.forward + row.backward for row in self.layers)


def count(model: nn.Module, image_shape: Sequence[int]) -> FlopCount:
    """The flops of one image of HWC ``image_shape`` (e.g. (28, 28, 3)) through ``model``."""
    parts = anatomy(model, image_shape)
    owners = {path[:-1] for path in traverse_util.flatten_dict(parts.params)}
    rows, uncounted, first = [], set(), True
    for call in parts.calls:
        module, name = call.module, ".".join(call.path)
        if call.role not in ("nmf", "patch", "mix"):
            if call.role == "other" and call.path in owners:  # a layer with weights of its own
                uncounted.add(type(module).__name__)
            continue
        positions = (
            call.output_shape[1] * call.output_shape[2] if len(call.output_shape) == 4 else 1
        )
        outputs = call.output_shape[-1]
        inputs = call.input_shape[-1]
        if call.role in ("nmf", "patch"):
            kh, kw = _kernel(module, call.input_shape)
            inputs *= kh * kw
        per_product = positions * 2 * inputs * outputs // module.groups
        if call.role == "nmf":
            forward, backward = module.options.iterations * 2 * per_product, 4 * per_product
        else:
            forward, backward = per_product, per_product * (1 if first else 2)
        rows.append(LayerFlops(name, positions, inputs, outputs, forward, backward))
        first = False
    return FlopCount(tuple(rows), tuple(sorted(uncounted)))


def _kernel(module, input_shape) -> tuple[int, int]:
    geometry = patch_geometry(input_shape, module.kernel_size, module.strides, module.padding)
    return geometry.kernel


def layer_flops(model: nn.Module, image_shape: Sequence[int]) -> list[LayerFlops]:
    """Per-layer flops of one image (:func:`count`'s layers)."""
    return list(count(model, image_shape).layers)


def train_step_flops(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Flops of forward + backward for one image (the optimiser's few flops per parameter aside)."""
    return count(model, image_shape).train_step


def forward_flops(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Flops of the forward pass alone (evaluation) for one image."""
    return count(model, image_shape).forward
