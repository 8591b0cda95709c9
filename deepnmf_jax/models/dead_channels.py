"""Dead channels: channels that pass a ReLU at 1x1 with no BatchNorm in front and are <= 0 on every
image, so the ReLU passes them no gradient and they can stay dead (the CNN models' fault).

A model reports them through its intermediates: ``apply(..., return_intermediates=True)`` returns
``(probs, intermediates)``, and wherever a block puts ``{kind: values before such a ReLU}`` under
the key :data:`~deepnmf_jax.models.deepnmf.TAPS`, those channels are counted (the paper's block
names ``"hidden"``, block 3's outputs entering block 4, and ``"class"``, the class channels entering
the last 1x1 layer). A model without ``return_intermediates`` has none counted. The trainer counts
them per seed at initialisation and every epoch, as ``dead_<kind>_channels``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax.models.deepnmf import TAPS


def reports_intermediates(model: nn.Module) -> bool:
    """Whether ``model.__call__`` takes ``return_intermediates`` (the dead-channel protocol)."""
    try:
        return "return_intermediates" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False


def collect(intermediates: Any) -> dict[str, Any]:
    """Every ``{kind: values}`` found under a :data:`TAPS` key, anywhere in ``intermediates``."""
    found: dict[str, Any] = {}
    if isinstance(intermediates, Mapping):
        for key, value in intermediates.items():
            if key == TAPS and isinstance(value, Mapping):
                found.update(value)
            else:
                found.update(collect(value))
    return found


def kinds(model: nn.Module, image_shape: Sequence[int]) -> tuple[str, ...]:
    """The kinds of dead channels ``model`` reports for (H, W, C) images (nothing computed)."""
    if not reports_intermediates(model):
        return ()
    images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)

    def taps(x):
        variables = model.init(jax.random.key(0), x, train=False)
        _, intermediates = model.apply(variables, x, train=False, return_intermediates=True)
        return collect(intermediates)

    return tuple(sorted(jax.eval_shape(taps, images)))


def channel_maxima(intermediates: Any) -> dict[str, jax.Array]:
    """Per kind, the largest value of each channel over a batch: (C,)."""
    return {
        kind: jnp.max(v.reshape(-1, v.shape[-1]), axis=0)
        for kind, v in collect(intermediates).items()
    }


def counts(maxima: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{key(kind): dead channels per seed}`` from ``{kind: (seeds, C) largest value of each
    channel over the images}``: a channel is dead where its largest value is <= 0."""
    return {
        key(kind): np.sum(np.asarray(m) <= 0, axis=-1).astype(int).tolist()
        for kind, m in maxima.items()
    }


def key(kind: str) -> str:
    """The metric of one kind: ``dead_hidden_channels``, ``dead_class_channels``, ..."""
    return f"dead_{kind}_channels"
