"""Parameters in the reference's (PyTorch, mahbodnr/deep_nmf) naming and layouts, both ways.

Names follow the fixtures (``tests/fixtures/README.md``): ``blockK.a.weight``, ``blockK.a.bias``,
``blockK.a_bn.scale``, ``blockK.a_bn.bias``, ``blockK.b.weight``, ``blockK.b.bias``, ``blockK.b_bn.scale``,
``blockK.b_bn.bias``. Layouts are torch's:

* NMF a-layer ``weight``: (out, in) = (F, S); ours is ``kernel`` (S, F). Grouped: (G, F/G, S/G) as
  davrot/nnmf_24b; ours (G, S/G, F/G).
* conv a-layer and b-layer ``weight``: (out, in/G, 1, 1); ours (S, F), grouped (G, S/G, F/G).
* biases and BatchNorm scale (torch's ``weight``) and bias: (C,) in both.

This is how weights trained with the PyTorch code are brought over, and how parity is tested.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from deepnmf_jax import losses, models, nmf

_PARAM_PREFIX = "param/"


def _template(model_name: str, image_size: int, **overrides) -> tuple[models.DeepNMF, dict]:
    model = models.build_model(model_name, **overrides)
    channels = overrides.get("input_channels") or 3
    images = jax.ShapeDtypeStruct((2, image_size, image_size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return model, shapes


def _torch_name(path: tuple[str, ...]) -> str:
    block, layer, leaf = path
    if leaf == "kernel":
        leaf = "weight"
    return f"{block}.{layer}.{leaf}"


def _is_nmf(model: models.DeepNMF, path: tuple[str, ...]) -> bool:
    return model.a_layer == "nmf" and path[1] == "a"


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
      **model_overrides: passed to :func:`deepnmf_jax.models.build_model` (e.g. ``batch_norm``).

    Returns:
      ``{"params": ...}`` (plus ``"batch_stats"`` at torch's initial values, mean 0 and variance 1,
      when ``batch_norm="running"``).

    Raises:
      ValueError: a name is missing or unexpected, or an array has the wrong shape.
    """
    if any(key.startswith(_PARAM_PREFIX) for key in arrays):
        arrays = {k[len(_PARAM_PREFIX) :]: arrays[k] for k in arrays if k.startswith(_PARAM_PREFIX)}
    model, shapes = _template(model_name, image_size, **model_overrides)
    flat_shapes = traverse_util.flatten_dict(shapes["params"])
    expected = {_torch_name(path): path for path in flat_shapes}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"parameters do not match model {model_name!r}: missing {missing}, unexpected {unexpected}"
        )
    flat = {}
    for name, path in expected.items():
        shape = flat_shapes[path].shape
        value = _to_ours(np.asarray(arrays[name]), shape, _is_nmf(model, path))
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
                for path, s in traverse_util.flatten_dict(shapes["batch_stats"]).items()
            }
        )
    return variables


def export_reference_params(model_name: str, tree: Mapping[str, Any], **model_overrides) -> dict:
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
    model = models.build_model(model_name, **model_overrides)
    out = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        out[_torch_name(path)] = _to_torch(
            np.asarray(value), _is_nmf(model, path), is_kernel=path[-1] == "kernel"
        )
    return out


# --- evaluating the reference fixtures (tests/fixtures/README.md) ------------------------------------


@functools.partial(jax.jit, static_argnames=("iterations", "precision"))
def _layer_outputs(x_raw, u, upstream, iterations, precision="float32"):
    def objective(x_raw, u):
        h = nmf.nmf_fixed_point(
            nmf.l1_normalize(x_raw),
            nmf.normalize_weight(u),
            iterations=iterations,
            precision=precision,
        )
        return jnp.sum(h * upstream), h

    (_, h), (grad_x_raw, grad_u) = jax.value_and_grad(objective, (0, 1), has_aux=True)(x_raw, u)
    x, w = nmf.l1_normalize(x_raw), nmf.normalize_weight(u)

    def objective_xw(x, w):
        return jnp.sum(
            upstream * nmf.nmf_fixed_point(x, w, iterations=iterations, precision=precision)
        )

    grad_x, grad_w = jax.grad(objective_xw, (0, 1))(x, w)
    return {
        "x": x,
        "W": w,
        "h": h,
        "grad_x": grad_x,
        "grad_x_raw": grad_x_raw,
        "grad_W": grad_w,
        "grad_U": grad_u,
    }


def layer_fixture_outputs(
    arrays: Mapping[str, Any], case: str, dtype=jnp.float64, precision: str = "float32"
) -> dict:
    """Recomputes one case of ``nnmf_layer.npz`` (L1 norm, W = normalize_weight(U), NMF, L = sum(h g)),
    with the NMF loop's matrix products in ``precision`` (:func:`deepnmf_jax.nmf.nmf_fixed_point`).

    Returns ``x, W, h, grad_x, grad_x_raw, grad_W, grad_U`` as numpy arrays in the fixture's (torch)
    layouts, for comparison with ``arrays[f"{case}/{name}"]``.
    """
    nhwc = lambda a: jnp.asarray(np.moveaxis(np.asarray(a), 1, -1), dtype)
    out = _layer_outputs(
        nhwc(arrays[f"{case}/x_raw"]),
        jnp.asarray(np.asarray(arrays[f"{case}/U"]).T, dtype),
        nhwc(arrays[f"{case}/g"]),
        iterations=int(arrays[f"{case}/iterations"]),
        precision=precision,
    )
    return {
        name: np.asarray(value).T
        if name in ("W", "grad_W", "grad_U")
        else np.moveaxis(np.asarray(value), -1, 1)
        for name, value in out.items()
    }


@functools.cache
def _model_outputs_fn(model_name: str, options: tuple):
    model = models.build_model(model_name, **dict(options))

    @jax.jit
    def outputs(params, images, labels):
        def objective(params):
            probs, intermediates = model.apply(
                {"params": params}, images, train=True, return_intermediates=True
            )
            return losses.reference_loss(probs, labels), (probs, intermediates)

        (loss, (probs, intermediates)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, probs, {k: v["out"] for k, v in intermediates.items()}, grads

    return outputs


def model_fixture_outputs(
    model_name: str,
    arrays: Mapping[str, Any],
    dtype=jnp.float64,
    gradient: str = "approximate",
    **model_options,
) -> dict:
    """Recomputes a ``model_<name>.npz`` fixture: the fixture's parameters and images, the reference
    loss and one backward pass. Returns numpy arrays under the fixture's keys and layouts:
    ``output/probs``, ``output/loss``, ``act/blockK.out`` (NCHW) and ``grad/<param>``.
    ``model_options`` go to :func:`deepnmf_jax.models.build_model` (e.g. ``precision``)."""
    params = load_reference_params(model_name, arrays, dtype=dtype)["params"]
    images = jnp.asarray(arrays["input/images"], dtype)
    labels = jnp.asarray(arrays["input/labels"], jnp.int32)
    options = tuple(sorted({"gradient": gradient, **model_options}.items()))
    loss, probs, acts, grads = _model_outputs_fn(model_name, options)(params, images, labels)
    out = {"output/probs": np.asarray(probs), "output/loss": np.asarray(loss)}
    out.update({f"act/{block}.out": np.moveaxis(np.asarray(a), -1, 1) for block, a in acts.items()})
    out.update(
        {f"grad/{name}": g for name, g in export_reference_params(model_name, grads).items()}
    )
    return out


def scaled_error(new, ref) -> float:
    """``max|new - ref| / max|ref|``, the fixtures README's measure."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(new - ref)) / np.max(np.abs(ref)))


def out_of_fixture_bounds(new, ref, dtype) -> int:
    """How many entries break the fixtures README's per-element bound: ``|new - ref| <= rel |ref| +
    scale max|ref|`` with (rel, scale) = (1e-9, 1e-11) for float64 and (1e-4, 1e-4) for float32."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    if new.shape != ref.shape:
        raise ValueError(f"shapes differ: {new.shape} vs {ref.shape}")
    rel, scale = (1e-9, 1e-11) if np.dtype(dtype) == np.float64 else (1e-4, 1e-4)
    bound = rel * np.abs(ref) + scale * np.max(np.abs(ref))
    return int(np.sum(np.abs(new - ref) > bound))


LAYER_CASES = (
    "s75_i32_3x3_it20",
    "s75_i32_3x3_it5",
    "s10_i7_1x1_it20",
    "s10_i7_1x1_it5",
    "s75_i32_3x3_it20_zeropatch",
    "s10_i7_1x1_it20_uzero",
)
"""The cases of ``tests/fixtures/nnmf_layer.npz``."""
