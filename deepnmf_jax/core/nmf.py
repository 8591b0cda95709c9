"""The NMF layer as pure functions: the weight normalisation and the fixed-point iteration.

A non-negative input ``x`` (length S, summing to 1) is explained as a mixture of the I columns of a
non-negative weight ``W`` (S x I, each column summing to 1). The code ``h`` (length I, summing to 1)
is the fixed point of Lee and Seung's multiplicative update for the KL divergence (paper eqs. 6 and
20; ``mahbodnr/deep_nmf:tools/NNMF2d.py``), iterated a fixed number of times from ``h_i = 1/I``.

Precision: the loop runs in ``float32`` for inputs of lower precision (bfloat16, float16) and in the
input's dtype otherwise (float32, float64); the output is cast back to the input's dtype. Matrix
products use ``Precision.HIGHEST`` by default, so that GPUs and TPUs do not silently drop to TF32.

Layout: ``W`` is (S, I) = (inputs, outputs), the paper's and Flax's kernel layout. The reference
stores its transpose (I, S).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from deepnmf_jax.core import solve as solve_lib
from deepnmf_jax.core.ops import l1_normalize, num_chunks
from deepnmf_jax.core.options import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_PAD_INPUTS,
    NMFOptions,
    Unrolled,
)


def _abs_torch_grad(u: jax.Array) -> jax.Array:
    """``|u|`` whose derivative at exactly 0 is 0 (as torch's), not 1 (as ``jnp.abs``)."""
    return jnp.sign(u) * u


def normalize_weight(u: jax.Array) -> jax.Array:
    """Turns the raw parameter U into the NMF weight W (paper eq. 20).

    ``W[s, i] = |U[s, i]| / (sum_s |U[s, i]| + 1e-19)``: each column (one hidden unit) sums to 1 over
    its S inputs. The derivative of ``|U|`` at an exact 0 is 0, as in the reference.

    Args:
      u: raw weight of shape (..., S, I); leading axes (e.g. groups) are kept.

    Returns:
      W with the shape and dtype of ``u``.
    """
    if u.ndim < 2:
        raise ValueError(f"normalize_weight expects U of shape (..., S, I), got shape {u.shape}")
    return l1_normalize(_abs_torch_grad(u), axis=-2)


def _check_inputs(x: jax.Array, w: jax.Array, name: str) -> None:
    checkify.check(
        jnp.all(jnp.isfinite(x)), f"NMF layer '{name}': input x has non-finite entries (NaN or inf)"
    )
    checkify.check(
        jnp.all(x >= 0), f"NMF layer '{name}': input x has negative entries (min {{}})", jnp.min(x)
    )
    checkify.check(jnp.all(jnp.isfinite(w)), f"NMF layer '{name}': weight W has non-finite entries")
    checkify.check(
        jnp.all(w >= 0), f"NMF layer '{name}': weight W has negative entries (min {{}})", jnp.min(w)
    )


def _pad_inputs(x, w, multiple: int | None, on_cpu: bool):
    """x (P, S) and W (S, I) with S padded by zero inputs / zero rows to a multiple of ``multiple``
    (None: ``DEFAULT_PAD_INPUTS`` on a CPU, none elsewhere). A zero input has ``x / R = 0`` and a
    zero row of W adds nothing to ``R`` or to ``W^T (x / R)``: the codes are unchanged, and the
    gradients of the padding are sliced off by autodiff of ``jnp.pad``."""
    multiple = (DEFAULT_PAD_INPUTS if on_cpu else 0) if multiple is None else multiple
    extra = -w.shape[0] % multiple if multiple > 1 else 0
    if not extra:
        return x, w
    return jnp.pad(x, ((0, 0), (0, extra))), jnp.pad(w, ((0, extra), (0, 0)))


def nmf_fixed_point(
    x: jax.Array,
    w: jax.Array,
    options: NMFOptions | None = None,
    *,
    name: str = "nmf",
    **overrides: Any,
) -> jax.Array:
    """The code ``h`` that explains ``x`` with the columns of ``W``: the NMF fixed point.

    Fixed-point equation (paper eq. 6 with epsilon = 1, renormalised as in the reference)::

        h = F(h; x, W),   F(h)_i = h_i (W^T (x / (W h + 1e-20)))_i / (sum_j [same]_j + 1e-19)

    started at ``h_i = 1/I`` and applied ``options.iterations`` times in a ``lax.fori_loop``. With
    ``sum(x) = 1`` and columns of ``W`` summing to 1 each step keeps ``sum(h) = 1``; an all-zero
    input gives ``h = 0`` and zero, finite gradients. The backward is ``options.backward``: by
    default the paper's approximate one-step rule, an approximation of the derivative of ``h``.

    Args:
      x: non-negative input of shape (..., S), normally L1-normalised over its last axis. Not checked
        unless ``options.check_inputs``: negative entries give meaningless (possibly negative) codes
        and non-finite entries propagate NaN.
      w: normalised weight of shape (S, I), non-negative, columns summing to 1
        (see :func:`normalize_weight`).
      options: how the layer runs (:class:`NMFOptions`; default: the paper's layer).
      name: the layer's name, used in the messages of ``check_inputs``.
      **overrides: fields of :class:`NMFOptions` replaced for this call (``iterations=5``, ...).

    Returns:
      h of shape (..., I) and the dtype of ``x``.
    """
    options = options or NMFOptions()
    if overrides:
        options = dataclasses.replace(options, **overrides)
    if w.ndim != 2:
        raise ValueError(f"NMF layer '{name}': w must have shape (S, I), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"NMF layer '{name}': the last axis of x (shape {x.shape}) must equal the first axis "
            f"S of w (shape {w.shape})"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"NMF layer '{name}': x must be a floating array, got dtype {x.dtype}")
    if options.check_inputs:
        _check_inputs(x, w, name)

    out_dtype = x.dtype
    # bf16/f16 run in float32; float32 and float64 run in their own precision.
    compute_dtype = out_dtype if jnp.finfo(out_dtype).bits >= 32 else jnp.dtype(jnp.float32)
    batch_shape = x.shape[:-1]
    # One (positions, S) matrix: matrix products with several free axes are much slower on XLA's CPU
    # backend, above all under vmap.
    x = x.astype(compute_dtype).reshape(-1, x.shape[-1])
    w = w.astype(compute_dtype)
    on_cpu = jax.default_backend() == "cpu"
    x, w = _pad_inputs(x, w, options.pad_inputs, on_cpu)
    chunk_bytes = options.chunk_bytes
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES if on_cpu else 0
    if not isinstance(x.shape[0], int):  # a symbolic batch (jax.export): the loop in one piece
        chunk_bytes = 0
    chunks = num_chunks(x.shape[0], w.shape[0], w.shape[1], x.dtype.itemsize, chunk_bytes)

    if isinstance(options.backward, Unrolled):
        h = solve_lib.iterate(x, w, options, chunks)
    else:
        h = solve_lib.solve(x, w, options, chunks)
    return h.reshape(*batch_shape, w.shape[-1]).astype(out_dtype)


def checked(fn: Callable) -> Callable:
    """Wraps ``fn`` so that ``check_inputs=True`` NMF layers inside it raise on bad input.

    ``checked(fn)(*args)`` returns ``fn(*args)`` or raises ``checkify.JaxRuntimeError`` naming the
    layer that received a negative or non-finite input. For speed pass a jitted function,
    ``checked(jax.jit(fn))``: checkify transforms through the jit and the error is raised outside it.
    """
    checked_fn = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        error, out = checked_fn(*args, **kwargs)
        error.throw()
        return out

    return wrapper
