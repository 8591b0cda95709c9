"""What a model is made of, read from one abstract ``init`` (nothing is computed): every layer call
with its module, path and shapes, and which layer owns each parameter.

This is how the trainer serves any Flax Linen model: parameter groups (the NMF learning rate for
every NMF weight, wherever it sits), parameter counts and FLOP counts come from what each layer is
(its class attribute ``role``, :mod:`deepnmf_jax.nn.linen`; Flax's own normalisation layers count as
``"norm"``), not from layer names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

ROLES = ("nmf", "patch", "mix", "norm", "other")
_FLAX_NORMS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One call of a module during ``init``: its path (``("block1", "a")``), the module (with its
    fields), its role, and the shapes of its first input and its output."""

    path: tuple[str, ...]
    module: nn.Module
    role: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def role_of(module: nn.Module) -> str:
    """A module's role: its ``role`` attribute, ``"norm"`` for Flax's normalisation layers, else
    ``"other"``."""
    role = getattr(type(module), "role", None)
    if isinstance(role, str) and role in ROLES:
        return role
    return "norm" if isinstance(module, _FLAX_NORMS) else "other"


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """A model's layer calls (in call order) and its parameters' shapes."""

    calls: tuple[LayerCall, ...]
    params: Any  # the parameter tree of ShapeDtypeStructs

    def param_roles(self) -> dict[tuple[str, ...], str]:
        """``{parameter path: role of the layer that owns it}`` (the deepest module whose path is
        a prefix of the parameter's)."""
        owners = {call.path: call.role for call in self.calls}
        roles = {}
        for path in traverse_util.flatten_dict(self.params):
            prefixes = [path[:k] for k in range(len(path) - 1, -1, -1)]
            roles[path] = next((owners[p] for p in prefixes if p in owners), "other")
        return roles


def anatomy(model: nn.Module, image_shape: Sequence[int], batch: int = 2) -> Anatomy:
    """Traces ``model.init`` on (batch, *image_shape) float32 images with the method interceptor.

    Only calls of submodules' ``__call__`` are recorded (the model itself is not a layer).
    """
    calls: list[LayerCall] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and module.path and args:
            first = args[0]
            output = out[0] if isinstance(out, tuple) else out
            calls.append(
                LayerCall(
                    tuple(module.path),
                    module,
                    role_of(module),
                    tuple(getattr(first, "shape", ())),
                    tuple(getattr(output, "shape", ())),
                )
            )
        return out

    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)

    def init(x):
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), x, train=False)

    variables = jax.eval_shape(init, images)
    return Anatomy(tuple(calls), variables.get("params", {}))
