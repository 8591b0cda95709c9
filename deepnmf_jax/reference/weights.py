"""Parameters in the reference's (PyTorch, mahbodnr/deep_nmf) naming and layouts, both ways.

Names follow the fixtures (``tests/fixtures/README.md``; the paper's four models only): ``blockK.a.weight``, ``blockK.a.bias``,
``blockK.a_bn.scale``, ``blockK.a_bn.bias``, ``blockK.b.weight``, ``blockK.b.bias``, ``blockK.b_bn.scale``,
``blockK.b_bn.bias``. Layouts are torch's:

* NMF a-layer ``weight``: (out, in) = (F, S); ours is ``kernel`` (S, F). Grouped: (G, F/G, S/G) as
  davrot/nnmf_24b; ours (G, S/G, F/G).
* conv a-layer and b-layer ``weight``: (out, in/G, 1, 1); ours (S, F), grouped (G, S/G, F/G).
* biases and BatchNorm scale (torch's ``weight``) and bias: (C,) in both.

This is how weights trained with the PyTorch code are brought over, and how parity is tested.

A real reference network's ``state_dict()`` is keyed by module position in its ``nn.Sequential``
(``4.weight``, ``15.weight``, ...), which depends on the model type: :func:`positional_names` derives
that layout from the model definition, and :func:`load_reference_params` accepts either. To save a
trained reference model for this library (the reference pickles the whole module)::

    net = torch.load("Model_seed_21.pt", weights_only=False)
    numpy.savez("model.npz", **{k: v.cpu().numpy() for k, v in net.state_dict().items()})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from deepnmf_jax.models.deepnmf import DeepNMF
from deepnmf_jax.models.inspect import anatomy
from deepnmf_jax.models.presets import build_model

_PARAM_PREFIX = "param/"


def _template(model_name: str, image_size: int, **overrides) -> tuple[DeepNMF, dict]:
    model = build_model(model_name, **overrides)
    channels = overrides.get("input_channels") or 3
    images = jax.ShapeDtypeStruct((2, image_size, image_size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return model, shapes


def _nmf_kernels(model: DeepNMF, image_size: int, channels: int) -> set[tuple[str, ...]]:
    """The paths of the NMF layers' kernels (stored (out, in) by the reference)."""
    roles = anatomy(model, (image_size, image_size, channels)).param_roles()
    return {path for path, role in roles.items() if role == "nmf"}


def _flat(tree) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(tree)


def _torch_name(path: tuple[str, ...]) -> str:
    block, layer, leaf = path
    if leaf == "kernel":
        leaf = "weight"
    return f"{block}.{layer}.{leaf}"


def _to_ours(value: np.ndarray, shape: tuple[int, ...], nmf_layout: bool) -> np.ndarray:
    if len(shape) == 1:
        return value
    if value.ndim == 4:  # conv (out, in/G, 1, 1)
        value = value[:, :, 0, 0]
    if len(shape) == 2:
        return value.T
    groups, in_per_group, out_per_group = shape
    if not nmf_layout or value.ndim == 2:
        value = value.reshape(groups, out_per_group, in_per_group)
    return value.transpose(0, 2, 1)


def _to_torch(value: np.ndarray, nmf_layout: bool, is_kernel: bool) -> np.ndarray:
    if not is_kernel:
        return value
    if value.ndim == 2:
        torch_value = value.T
    else:
        torch_value = value.transpose(0, 2, 1)  # (G, F/G, S/G)
        if not nmf_layout:
            torch_value = torch_value.reshape(-1, torch_value.shape[-1])
    return torch_value if nmf_layout else torch_value[:, :, None, None]


MODULES_PER_PATCH_INPUT = 4  # ReLU, Unfold, Fold (a reshape), L1NormLayer
MODULES_PER_MIX_INPUT = 2  # ReLU, L1NormLayer


def positional_names(model_name: str, image_size: int = 28, **model_overrides) -> dict[str, str]:
    """The reference's ``nn.Sequential`` positions of a model's parameters: ``{"4.weight":
    "block1.a.weight", ...}``.

    The reference's ``append_block`` appends, per block: ReLU, Unfold, Fold, L1Norm, the a-layer,
    BatchNorm if the output is larger than 1x1, then for the +1x1 models ReLU, L1Norm, the 1x1 conv
    and BatchNorm if larger than 1x1, then the AvgPool if the block pools; ``make_network`` ends
    with Softmax and Flatten (the reference's make_network). Which of these a block has is read off this library's
    model (its BatchNorm layers exist exactly where the reference's do).
    """
    model, shapes = _template(model_name, image_size, **model_overrides)
    params = shapes["params"]
    names, position = {}, 0
    for index, spec in enumerate(model.blocks, start=1):
        block = params[f"block{index}"]
        position += MODULES_PER_PATCH_INPUT
        layers = [("a", position)]
        position += 1
        if "a_bn" in block:
            layers.append(("a_bn", position))
            position += 1
        if "b" in block:
            position += MODULES_PER_MIX_INPUT
            layers.append(("b", position))
            position += 1
            if "b_bn" in block:
                layers.append(("b_bn", position))
                position += 1
        position += int(spec.pool)
        for layer, at in layers:
            for leaf in block[layer]:
                torch_leaf = "weight" if leaf in ("kernel", "scale") else leaf
                names[f"{at}.{torch_leaf}"] = _torch_name((f"block{index}", layer, leaf))
    return names


def load_reference_params(
    model_name: str,
    arrays: Mapping[str, Any],
    *,
    dtype=jnp.float32,
    image_size: int = 28,
    **model_overrides,
) -> dict:
    """Turns reference-named parameters into this project's ``variables`` for ``build_model(...)``.

    Args:
      model_name: ``"cnn" | "cnmf" | "cnn_1x1" | "cnmf_1x1"``.
      arrays: a mapping from reference names (``"block1.a.weight"``, ...) to arrays in torch layouts.
        A fixture file (``np.load("model_cnn.npz")``) can be passed as is: when keys start with
        ``"param/"`` only those are read.
      dtype: dtype of the returned arrays (float64 needs ``jax_enable_x64``).
      image_size: side of the (square) training images the model sees: 28 for CIFAR (after the
        crop), 24 for Fashion-MNIST. It fixes the patch size of the "full" block.
      **model_overrides: passed to :func:`deepnmf_jax.build_model` (e.g. ``batch_norm``).

    Returns:
      ``{"params": ...}`` (plus ``"batch_stats"`` at torch's initial values, mean 0 and variance 1,
      when ``batch_norm="running"``).

    Raises:
      ValueError: a name is missing or unexpected, or an array has the wrong shape.
    """
    if any(key.startswith(_PARAM_PREFIX) for key in arrays):
        arrays = {k[len(_PARAM_PREFIX) :]: arrays[k] for k in arrays if k.startswith(_PARAM_PREFIX)}
    if arrays and all(key.split(".")[0].isdigit() for key in arrays):  # a real state_dict
        positions = positional_names(model_name, image_size, **model_overrides)
        unknown = sorted(set(arrays) - set(positions), key=lambda k: int(k.split(".")[0]))
        if unknown:
            raise ValueError(
                f"state_dict keys {unknown} are not parameters of a reference {model_name!r} "
                f"network, whose parameters sit at {sorted(positions, key=lambda k: int(k.split('.')[0]))}"
            )
        arrays = {positions[key]: value for key, value in arrays.items()}
    model, shapes = _template(model_name, image_size, **model_overrides)
    nmf_kernels = _nmf_kernels(model, image_size, model_overrides.get("input_channels") or 3)
    flat_shapes: dict[tuple[str, ...], Any] = traverse_util.flatten_dict(shapes["params"])
    expected = {_torch_name(path): path for path in flat_shapes}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"parameters do not match model {model_name!r}: missing {missing}, unexpected {unexpected}"
        )
    flat = {}
    for name, path in expected.items():
        shape = tuple(np.shape(flat_shapes[path]))
        value = _to_ours(np.asarray(arrays[name]), shape, path in nmf_kernels)
        if value.shape != shape:
            raise ValueError(
                f"{name}: got shape {np.shape(arrays[name])}, which does not convert to this "
                f"model's shape {shape}"
            )
        flat[path] = jnp.asarray(value, dtype=dtype)
    variables = {"params": traverse_util.unflatten_dict(flat)}
    if "batch_stats" in shapes:  # torch's initial running statistics
        variables["batch_stats"] = traverse_util.unflatten_dict(
            {
                path: (jnp.ones if path[-1] == "var" else jnp.zeros)(s.shape, s.dtype)
                for path, s in _flat(shapes["batch_stats"]).items()
            }
        )
    return variables


def export_reference_params(
    model_name: str, tree: Mapping[str, Any], image_size: int = 28, **model_overrides
) -> dict:
    """The inverse of :func:`load_reference_params`: reference names -> numpy arrays, torch layouts.

    Args:
      model_name: the model the tree belongs to.
      tree: ``variables`` (a dict with ``"params"``), or a tree shaped like ``variables["params"]``
        or like ``variables`` (e.g. gradients), so gradients can be compared name by name.
      **model_overrides: as for :func:`load_reference_params`.

    Returns:
      ``{name: np.ndarray}`` in the reference's names and layouts, dtypes unchanged.
    """
    params = tree["params"] if "params" in tree else tree
    model = build_model(model_name, **model_overrides)
    nmf_kernels = _nmf_kernels(model, image_size, model_overrides.get("input_channels") or 3)
    out = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        out[_torch_name(path)] = _to_torch(
            np.asarray(value), path in nmf_kernels, is_kernel=path[-1] == "kernel"
        )
    return out
