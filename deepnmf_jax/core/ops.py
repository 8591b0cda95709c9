"""The NMF layer's arithmetic: the L1 normalisation, the division by the reconstruction, the matrix
product at a chosen precision, and one multiplicative update (paper eqs. 6 and 20)::

    R_s = sum_j W_sj h_j + 1e-20,   h_i <- h_i * sum_s W_si x_s / R_s,   h <- h / (sum_j h_j + 1e-19)

Both divisions are ``jax.custom_jvp``s whose derivatives never square a denominator: for an all-zero
input the squared ``1e-19`` or ``1e-20`` is below float32's normal range, which made plain autodiff
return NaN where the reference returns 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NORM_EPS = 1e-19
"""Added to every L1 sum that normalises (patches, weight columns, codes); the reference's ``10e-20``."""

RECON_EPS = 1e-20
"""Added to the reconstruction ``R = W h`` before dividing by it."""

_HIGHEST = lax.Precision.HIGHEST


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def l1_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``y = x / (sum(x, axis) + 1e-19)`` without absolute values (the reference's ``L1NormLayer``).

    Its derivative is written as ``dy = (dx - y * sum(dx)) / (sum(x) + 1e-19)``: the same as
    autodiff of the division in exact arithmetic, without the squared denominator.
    """
    return x / (jnp.sum(x, axis=axis, keepdims=True) + NORM_EPS)


@l1_normalize.defjvp
def _l1_normalize_jvp(axis, primals, tangents):
    (x,), (dx,) = primals, tangents
    denominator = jnp.sum(x, axis=axis, keepdims=True) + NORM_EPS
    y = x / denominator
    dy = (dx - y * jnp.sum(dx, axis=axis, keepdims=True)) / denominator
    return y, dy


@jax.custom_jvp
def divide(x: jax.Array, reconstruction: jax.Array) -> jax.Array:
    """``x / reconstruction`` whose derivative is ``(dx - (x/r) dr) / r``: exact and finite where
    ``r**2`` would underflow. Shapes broadcast as in ``x / r``."""
    return x / reconstruction


@divide.defjvp
def _divide_jvp(primals, tangents):
    (x, reconstruction), (dx, dr) = primals, tangents
    quotient = x / reconstruction
    return quotient, (dx - quotient * dr) / reconstruction


def matmul(a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``a @ b``: HIGHEST precision (``"float32"``), or bfloat16 inputs / ``Precision.DEFAULT``
    (``"tf32"``: TF32 on NVIDIA GPUs) with accumulation and result in the inputs' dtype."""
    if precision == "float32":
        return jnp.matmul(a, b, precision=_HIGHEST)
    out_dtype = jnp.result_type(a, b)
    if precision == "bfloat16":
        a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    return jnp.matmul(a, b, precision=lax.Precision.DEFAULT, preferred_element_type=out_dtype)


def nmf_update(
    h: jax.Array,
    x: jax.Array,
    w: jax.Array,
    epsilon: float | None = None,
    precision: str = "float32",
) -> jax.Array:
    """One renormalised multiplicative update ``F(h, x, W)``, exactly as the reference writes it.

    Args:
      h: current code, shape (..., I).
      x: input, shape (..., S).
      w: normalised weight, shape (S, I).
      epsilon: None for ``h * (W^T (x/R))`` (paper eq. 6 with its epsilon = 1), or a float for the
        reference's ``h * (1 + epsilon * W^T (x/R))`` variant (which is not eq. 6; see the docs'
        "Where the paper and its code differ").
      precision: of the two matrix products; everything else stays in h's dtype.

    Returns:
      the next code, shape (..., I), summing to 1 (or 0 where ``x`` is 0).
    """
    reconstruction = matmul(h, w.T, precision) + RECON_EPS
    drive = matmul(divide(x, reconstruction), w, precision)
    h = h * drive if epsilon is None else h * (1 + epsilon * drive)
    return l1_normalize(h)


def num_chunks(positions: int, inputs: int, hidden: int, itemsize: int, chunk_bytes: int) -> int:
    """How many chunks the positions of one NMF layer are split into, so each fits ``chunk_bytes``.

    One iteration over a chunk of c positions touches x and x / R (c x S each) and h and the drive
    (c x I each): ``c (2 S + 2 I) itemsize`` bytes. The positions are split into the nearest whole
    number of chunks of at most about ``chunk_bytes`` (1 = no split), of near-equal size.

    Args:
      positions: P, the rows of the flattened input.
      inputs, hidden: S and I of the layer.
      itemsize: bytes per element of the compute dtype.
      chunk_bytes: target working set; 0 disables chunking.

    Returns:
      the number of chunks, >= 1.
    """
    if chunk_bytes <= 0:
        return 1
    per_position = (2 * inputs + 2 * hidden) * itemsize
    return max(1, min(positions, round(positions * per_position / chunk_bytes)))
