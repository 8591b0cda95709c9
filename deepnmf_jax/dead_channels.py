"""Dead channels: channels that pass a ReLU at 1x1 (blocks 3-4, where the reference has no
BatchNorm) and are <= 0 on every image, so the ReLU passes them no gradient and they can stay dead
(the CNN models' fault, issue 14). Which channels can die depends on the model and its head
(:func:`rectified_kinds`); the trainer counts them per seed at initialisation and every epoch
(``metrics.jsonl``, ``results.json``) under :func:`key`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # for the annotations only
    import jax

    from deepnmf_jax import models


Kind = Literal["hidden", "class"]


def rectified_kinds(model: models.DeepNMF) -> tuple[Kind, ...]:
    """Which channels pass a ReLU at 1x1 with no BatchNorm in front, where one that is <= 0 on
    every image gets no gradient and can stay dead:

    - ``"hidden"``: the previous block's outputs entering the last block, whose input ReLU (or,
      with the +1x1 linear head, whose a-layer's rectified input) they pass. Not for the plain
      CNN's linear head, which rectifies nothing after block 2's BatchNorm.
    - ``"class"``: the class channels entering the last 1x1 layer of a +1x1 model with the
      reference head.

    None of them with ``batch_norm_1x1``, which puts a BatchNorm in front of every ReLU at 1x1.
    """
    if model.batch_norm_1x1 or len(model.blocks) < 2:
        return ()
    if model.mix:
        return ("hidden", "class") if model.head == "reference" else ("hidden",)
    if model.a_layer == "conv" and model.head == "linear":
        return ()
    return ("hidden",)


def rectified_inputs(model: models.DeepNMF, intermediates: dict) -> dict[Kind, jax.Array]:
    """Per kind of :func:`rectified_kinds`, the (N, H, W, C) values of those channels before
    their ReLU."""
    last = len(model.blocks)
    where = {"hidden": (f"block{last - 1}", "out"), "class": (f"block{last}", "a")}
    return {kind: intermediates[where[kind][0]][where[kind][1]] for kind in rectified_kinds(model)}


def counts(maxima: dict) -> dict[str, list[int]]:
    """``{key(kind): dead channels per seed}`` from ``{kind: (seeds, C) largest value of each
    channel over the images}``: a channel is dead where its largest value is <= 0."""
    return {
        key(kind): np.sum(np.asarray(m) <= 0, axis=-1).astype(int).tolist()
        for kind, m in maxima.items()
    }


def key(kind: Kind) -> str:
    """The metric of one kind of :func:`rectified_kinds`: ``dead_hidden_channels`` or
    ``dead_class_channels``."""
    return f"dead_{kind}_channels"
