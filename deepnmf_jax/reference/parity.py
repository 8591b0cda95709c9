"""Recomputing the reference fixtures (``tests/fixtures/README.md``) with this library, and the
fixtures' error measures: what the parity tests, ``scripts/parity_report.py`` and the GPU device
check compare against the PyTorch reference."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax.core import nmf
from deepnmf_jax.core.ops import l1_normalize
from deepnmf_jax.models import losses
from deepnmf_jax.models.presets import build_model
from deepnmf_jax.reference.weights import export_reference_params, load_reference_params


@functools.partial(jax.jit, static_argnames=("iterations", "precision"))
def _layer_outputs(x_raw, u, upstream, iterations, precision="float32"):
    def objective(x_raw, u):
        h = nmf.nmf_fixed_point(
            l1_normalize(x_raw),
            nmf.normalize_weight(u),
            iterations=iterations,
            precision=precision,
        )
        return jnp.sum(h * upstream), h

    (_, h), (grad_x_raw, grad_u) = jax.value_and_grad(objective, (0, 1), has_aux=True)(x_raw, u)
    x, w = l1_normalize(x_raw), nmf.normalize_weight(u)

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
    with the NMF loop's matrix products in ``precision`` (:func:`deepnmf_jax.nmf_fixed_point`).

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
    model = build_model(model_name, **dict(options))

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
    backward: str = "approximate",
    **model_options,
) -> dict:
    """Recomputes a ``model_<name>.npz`` fixture: the fixture's parameters and images, the reference
    loss and one backward pass. Returns numpy arrays under the fixture's keys and layouts:
    ``output/probs``, ``output/loss``, ``act/blockK.out`` (NCHW) and ``grad/<param>``.
    ``model_options`` go to :func:`deepnmf_jax.build_model` (e.g. ``precision``)."""
    params = load_reference_params(model_name, arrays, dtype=dtype)["params"]
    images = jnp.asarray(arrays["input/images"], dtype)
    labels = jnp.asarray(arrays["input/labels"], jnp.int32)
    options = tuple(sorted({"backward": backward, **model_options}.items()))
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
