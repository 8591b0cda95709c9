"""Dead channels: the channels entering the last ReLU before the class scores that are <= 0 on
every image, so that ReLU passes them no gradient and they can stay dead (the CNN models' fault,
issue 14). Which channels those are depends on the model and its head; the trainer counts them per
seed at initialisation and every epoch (``metrics.jsonl``, ``results.json``) under :func:`key`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # for the annotations only
    import jax

    from deepnmf_jax import models


def rectified_channels(model: models.DeepNMF) -> Literal["class", "hidden"] | None:
    """Which channels pass the last ReLU before the class scores, where one that is <= 0 on every
    image gets no gradient and can stay dead: ``"class"`` (the class channels entering the last
    1x1 layer of a +1x1 model with the reference head), ``"hidden"`` (the previous block's outputs,
    at 1x1, entering the last block: models without b-layers, and +1x1 models with the linear
    head, whose last a-layer still rectifies its input), or None (the plain CNN's linear head
    rectifies nothing after block 2's BatchNorm; ``batch_norm_1x1`` puts a BatchNorm in front of
    every ReLU at 1x1)."""
    if model.batch_norm_1x1 or len(model.blocks) < 2:
        return None
    if model.mix:
        return "class" if model.head == "reference" else "hidden"
    if model.a_layer == "conv" and model.head == "linear":
        return None
    return "hidden"


def rectified_inputs(model: models.DeepNMF, intermediates: dict) -> jax.Array:
    """(N, H, W, C) values of the channels that :func:`rectified_channels` names, before the
    ReLU (the last a-layer's output where there is none)."""
    last = len(model.blocks)
    if rectified_channels(model) == "hidden":
        return intermediates[f"block{last - 1}"]["out"]
    return intermediates[f"block{last}"]["a"]


def key(kind: str | None) -> str:
    """The metric of the channels <= 0 on every test image before the last ReLU
    (:func:`rectified_channels`): ``dead_class_channels`` (+1x1 models) or
    ``dead_hidden_channels`` (models without b-layers)."""
    return f"dead_{kind or 'class'}_channels"
