"""Hand count of the floating-point work of a train step, for benchmarks that report a fraction of peak.

XLA's ``compiled.cost_analysis()`` counts the body of a while loop once, so for the NMF layers
(a ``lax.fori_loop`` of N iterations) it is off by about N. This module counts the matrix products
by hand instead (2 flops per multiply-add); elementwise work (normalisations, BatchNorm, ReLU,
augmentation) is not counted, as is usual for "model FLOPs".

Per image and per layer, with P output positions, S = C*kh*kw inputs per patch and F outputs:

* NMF a-layer, forward: ``P * N * 2 * (2 S F)`` (per iteration ``R = W h`` and ``W^T (x / R)``);
  approximate backward: ``P * 4 * (2 S F)`` (``R`` again, ``dL/dx`` and the two products of
  ``dL/dW``); the unrolled backward is not counted here.
* CNN a-layer (a linear map of the patches) and the 1x1 layers: forward ``P * 2 S F``, backward twice
  that (``dL/dx`` and ``dL/dW``), except that the first layer needs no ``dL/dx``.
"""

from __future__ import annotations

from typing import NamedTuple

from deepnmf_jax import models, patches


class LayerFlops(NamedTuple):
    """Matrix-product flops of one layer for one image."""

    name: str
    positions: int
    inputs: int
    outputs: int
    forward: int
    backward: int


def _linear(name, positions, inputs, outputs, groups, first):
    forward = positions * 2 * inputs * outputs // groups
    return LayerFlops(name, positions, inputs, outputs, forward, forward * (1 if first else 2))


def layer_flops(model: models.DeepNMF, image_shape: tuple[int, int, int]) -> list[LayerFlops]:
    """Per-layer flops of one image through ``model`` (HWC ``image_shape``, e.g. (28, 28, 3))."""
    height, width, channels = image_shape
    iterations = model.nmf_options.iterations
    rows = []
    for index, spec in enumerate(model.blocks, start=1):
        geometry = patches.patch_geometry(
            (1, height, width, channels), spec.kernel_size, spec.strides, spec.padding
        )
        positions = geometry.out_shape[0] * geometry.out_shape[1]
        inputs = channels * geometry.kernel[0] * geometry.kernel[1]
        name = f"block{index}.a"
        if model.a_layer == "nmf":
            per_product = positions * 2 * inputs * spec.features // spec.groups
            rows.append(
                LayerFlops(
                    name,
                    positions,
                    inputs,
                    spec.features,
                    iterations * 2 * per_product,
                    4 * per_product,
                )
            )
        else:
            rows.append(_linear(name, positions, inputs, spec.features, spec.groups, index == 1))
        if model.mix:
            rows.append(
                _linear(
                    f"block{index}.b", positions, spec.features, spec.features, spec.groups, False
                )
            )
        height, width, channels = *geometry.out_shape, spec.features
        if spec.pool:
            height, width = height // 2, width // 2
    return rows


def train_step_flops(model: models.DeepNMF, image_shape: tuple[int, int, int]) -> int:
    """Flops of forward + backward for one image (the optimiser's few flops per parameter aside)."""
    return sum(row.forward + row.backward for row in layer_flops(model, image_shape))


def forward_flops(model: models.DeepNMF, image_shape: tuple[int, int, int]) -> int:
    """Flops of the forward pass alone (evaluation) for one image."""
    return sum(row.forward for row in layer_flops(model, image_shape))
