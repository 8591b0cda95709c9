"""The NMF fixed-point loop and its backward rules (the machinery behind :mod:`deepnmf_jax.nmf`).

One update (paper eqs. 6 and 20; ``mahbodnr/deep_nmf:tools/NNMF2d.py``)::

    R_s = sum_j W_sj h_j + 1e-20,   h_i <- h_i * sum_s W_si x_s / R_s,   h <- h / (sum_j h_j + 1e-19)

is iterated from ``h_i = 1/I`` in a ``lax.fori_loop``. :func:`solve` wraps the loop in ONE
``jax.custom_vjp`` whose backward rule is a static choice (``NMFOptions.gradient``):

* ``"approximate"``: the reference's one-step rule, the VJP of one multiplicative update at the final
  ``h`` without the renormalisation (paper eqs. 18-19), with ``g = dL/dh``::

      dL/dx_s  = Phi_s = sum_i W_si h_i g_i / (R_s + 1e-20)
      dL/dW_si = sum_positions h_i x_s / (R_s + 1e-20) * (g_i - Phi_s)

  where ``R = W h`` is recomputed from the final ``h`` WITHOUT the forward's 1e-20.
* ``"local_kl"`` / ``"local_mse"``: the same ``dL/dx``; ``dL/dW`` is the reference's unsupervised
  rule ``-sum h_i x_s / (R_s + 1e-20)`` or ``-sum h_i 2 (x_s - R_s)`` (spec 2.6), ignoring ``g``.
* ``"implicit"``: the implicit-function-theorem derivative of the fixed point ``h* = F(h*)``: per
  position solve ``(I - dF/dh)^T v = g`` and return ``v^T dF/d(x, W)``.

``"unrolled"`` (autodiff through every iteration) needs no custom rule: :func:`iterate` is plain JAX.
Residuals of the custom rule are ``(x, W, h_final)`` only; no trajectory is kept.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:  # pragma: no cover
    from deepnmf_jax.nmf import NMFOptions

NORM_EPS = 1e-19
"""Added to every L1 sum that normalises (patches, weight columns, codes); the reference's ``10e-20``."""

RECON_EPS = 1e-20
"""Added to the reconstruction ``R = W h`` before dividing by it."""

_HIGHEST = lax.Precision.HIGHEST


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def l1_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``y = x / (sum(x, axis) + 1e-19)`` without absolute values (the reference's ``L1NormLayer``).

    Its derivative is written as ``dy = (dx - y * sum(dx)) / (sum(x) + 1e-19)``, the same as autodiff
    of the division in exact arithmetic, but without the squared denominator: for an all-zero input
    ``(1e-19)**2`` is below float32's normal range and flushed to 0, which made autodiff return NaN.
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
    """``x / reconstruction`` whose derivative never squares the denominator.

    Autodiff of a division computes ``x / r**2``: for an all-zero input, ``r = 1e-20`` and ``r**2``
    underflows to 0 in float32, so unrolled gradients became 0/0 = NaN. Here
    ``d(x/r) = (dx - (x/r) dr) / r``, exact and finite. Shapes broadcast as in ``x / r``.
    """
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
        reference's ``h * (1 + epsilon * W^T (x/R))`` variant (not paper eq. 6; see spec 2.5).
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
    number of chunks of at most about ``chunk_bytes`` (1 = no split), of near-equal size. Measured
    on a 2-core Xeon (2 MiB L2 per core), the 800 -> 64 layer of CNMF+1x1 at batch 256 (16,384
    positions): 62 GFLOP/s in one piece, 166-171 GFLOP/s in 7-8 chunks; at batch 50 (3,200) no split
    was best, and the 75 -> 32 layer gained little either way.

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


def _iterate_all(x, w, options: NMFOptions):
    num_hidden = w.shape[-1]
    # h0 = 1/I everywhere, shaped by broadcasting (no shape argument: exporters with a symbolic
    # batch, such as jax2onnx, cannot build a constant of that shape)
    h0 = jnp.zeros_like(x[..., :1]) + jnp.full((1, num_hidden), 1.0 / num_hidden, x.dtype)

    if options.carry_inputs:  # the same loop with x and W in the carry (NMFOptions.carry_inputs)

        def carried(_, carry):
            h, x_, w_ = carry
            return nmf_update(h, x_, w_, options.epsilon, options.precision), x_, w_

        return lax.fori_loop(0, options.iterations, carried, (h0, x, w))[0]

    def body(_, h):
        return nmf_update(h, x, w, options.epsilon, options.precision)

    if options.remat:
        body = jax.checkpoint(body)
    return lax.fori_loop(0, options.iterations, body, h0)


def iterate(x: jax.Array, w: jax.Array, options: NMFOptions, chunks: int = 1) -> jax.Array:
    """The fixed-point loop on (P, S) inputs, in ``chunks`` pieces of positions one after another
    (``lax.map``; each piece runs all iterations while its working set stays in cache). Plain JAX:
    autodiff through it is the ``"unrolled"`` gradient."""
    if chunks <= 1:
        return _iterate_all(x, w, options)
    positions = x.shape[0]
    size = -(-positions // chunks)
    padded = jnp.pad(x, ((0, size * chunks - positions), (0, 0)))  # zero rows give h = 0
    pieces = padded.reshape(chunks, size, x.shape[-1])
    h = lax.map(lambda piece: _iterate_all(piece, w, options), pieces)
    return h.reshape(chunks * size, w.shape[-1])[:positions]


# --- the one custom_vjp ------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def solve(x: jax.Array, w: jax.Array, options: NMFOptions, chunks: int) -> jax.Array:
    """The loop on flat (P, S) inputs with the backward rule ``options.gradient`` (module
    docstring; any mode but ``"unrolled"``). Returns h of shape (P, I)."""
    return iterate(x, w, options, chunks)


def _solve_fwd(x, w, options, chunks):
    h = iterate(x, w, options, chunks)
    return h, (x, w, h)


def _solve_bwd(options, chunks, residuals, g):
    del chunks  # every rule is one pass over all positions, in full precision
    x, w, h = residuals
    if options.gradient == "implicit":
        return _implicit_vjp(x, w, h, g, options.epsilon)
    return _one_step_vjp(x, w, h, g, options.gradient)


solve.defvjp(_solve_fwd, _solve_bwd)


def _one_step_vjp(x, w, h, g, rule):
    """The reference's backward (``NNMF2d.py`` ``FunctionalNNMF2d.backward``), transcribed.

    Shapes: x (P, S), w (S, I), h and g (P, I). Returns (dL/dx of shape (P, S), dL/dW (S, I)).
    The rule depends neither on the iterations nor on epsilon (no epsilon factor, spec 2.5).
    """
    reconstruction = matmul(h, w.T)  # no +1e-20 here, as in the reference
    inv_reconstruction = 1.0 / (reconstruction + RECON_EPS)
    x_over_r = x * inv_reconstruction
    hg = h * g
    grad_x = matmul(hg, w.T) * inv_reconstruction  # Phi
    if rule == "approximate":
        grad_w = matmul(x_over_r.T, hg) - matmul((x_over_r * grad_x).T, h)
    elif rule == "local_kl":
        grad_w = -matmul(x_over_r.T, h)
    elif rule == "local_mse":
        grad_w = -matmul((2 * (x - reconstruction)).T, h)
    else:  # pragma: no cover - NMFOptions validates the rule
        raise ValueError(rule)
    return grad_x, grad_w


def _implicit_vjp(x, w, h, g, epsilon):
    """``v = (I - dF/dh)^-T g`` per position, then ``v^T dF/d(x, W)`` at the final h."""
    num_hidden = h.shape[-1]

    def solve_one(h_p, x_p, g_p):
        jac_h = jax.jacfwd(nmf_update, argnums=0)(h_p, x_p, w, epsilon)  # (I, I)
        system = jnp.eye(num_hidden, dtype=h_p.dtype) - jac_h
        return jnp.linalg.solve(system.T, g_p)

    v = jax.vmap(solve_one)(h, x, g)
    _, update_vjp = jax.vjp(lambda x_, w_: nmf_update(h, x_, w_, epsilon), x, w)
    return update_vjp(v)
