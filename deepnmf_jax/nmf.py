"""The NMF layer as pure functions: weight normalisation and the fixed-point iteration.

A non-negative input ``x`` (length S, summing to 1) is explained as a mixture of the I columns of a
non-negative weight ``W`` (S x I, each column summing to 1). The code ``h`` (length I, summing to 1) is
the fixed point of the multiplicative update of Lee & Seung for the KL divergence,

    h_i  <-  h_i * sum_s W_si x_s / R_s,      R_s = sum_j W_sj h_j + 1e-20,

followed by ``h <- h / (sum_j h_j + 1e-19)``, started at ``h_i = 1/I`` and iterated a fixed number of
times (paper eqs. 6 and 20; ``mahbodnr/deep_nmf:tools/NNMF2d.py``).

Three backward passes are offered (``gradient=``):

* ``"approximate"`` (the paper's and the reference's): a ``jax.custom_vjp`` whose residuals are only
  ``(x, W, h_final)``. It is the VJP of ONE multiplicative update taken at the final ``h``, without the
  derivative of the renormalisation (paper eqs. 18-19), with ``g = dL/dh``:

      dL/dx_s  = Phi_s = sum_i W_si h_i g_i / (R_s + 1e-20)
      dL/dW_si = sum_positions h_i x_s / (R_s + 1e-20) * (g_i - Phi_s)

  where ``R = W h`` is recomputed from the final ``h`` WITHOUT the 1e-20 of the forward. It is not the
  derivative of the computed ``h`` (about 1/N of its scale per layer) but points roughly the same way.
* ``"unrolled"``: ordinary reverse-mode autodiff through every iteration (the paper's "full BP"),
  optionally rematerialised per iteration with ``jax.checkpoint`` (``remat=True``).
* ``"implicit"``: the exact derivative of the fixed point ``h* = F(h*, x, W)`` of the renormalised update
  map ``F`` by the implicit function theorem: per position solve ``(I - dF/dh)^T v = g`` (an I x I system)
  and return ``v^T dF/d(x, W)``. See :func:`nmf_fixed_point` for when that is meaningful.
* ``"local_kl"`` / ``"local_mse"``: the reference's unsupervised local learning rules (spec 2.6).
  ``dL/dx`` is the approximate one (errors still reach lower layers) but ``dL/dW`` ignores ``g``:
  ``-sum h_i x_s / (R_s + 1e-20)`` (KL) or ``-sum h_i 2 (x_s - R_s)`` (squared error).

Precision: the loop runs in ``float32`` for inputs of lower precision (bfloat16, float16) and in the
input's dtype otherwise (float32, float64); the output is cast back to the input's dtype. Matrix
products use ``Precision.HIGHEST`` so that GPUs and TPUs do not silently drop to TF32/bfloat16 passes.

Layout: ``W`` is (S, I) = (inputs, outputs), the paper's and Flax's kernel layout. The reference stores
its transpose (I, S).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GRADIENT_MODES",
    "NORM_EPS",
    "PRECISIONS",
    "RECON_EPS",
    "checked",
    "divide",
    "l1_normalize",
    "nmf_fixed_point",
    "nmf_update",
    "normalize_weight",
    "num_chunks",
]

NORM_EPS = 1e-19
"""Added to every L1 sum that normalises (patches, weight columns, codes); the reference's ``10e-20``."""

RECON_EPS = 1e-20
"""Added to the reconstruction ``R = W h`` before dividing by it."""

GRADIENT_MODES = ("approximate", "unrolled", "implicit", "local_kl", "local_mse")
Gradient = Literal["approximate", "unrolled", "implicit", "local_kl", "local_mse"]

_HIGHEST = lax.Precision.HIGHEST


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


PRECISIONS = ("float32", "bfloat16", "tf32")
"""How the matrix products of the NMF loop run (see :func:`nmf_fixed_point`)."""
Precision = Literal["float32", "bfloat16", "tf32"]


def _matmul(a: jax.Array, b: jax.Array, precision: Precision = "float32") -> jax.Array:
    """``a @ b``: HIGHEST precision, or bfloat16 inputs / ``Precision.DEFAULT`` (TF32 on NVIDIA
    GPUs) with accumulation and result in the inputs' dtype."""
    if precision == "float32":
        return jnp.matmul(a, b, precision=_HIGHEST)
    out_dtype = jnp.result_type(a, b)
    if precision == "bfloat16":
        a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    return jnp.matmul(a, b, precision=lax.Precision.DEFAULT, preferred_element_type=out_dtype)


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


def nmf_update(
    h: jax.Array,
    x: jax.Array,
    w: jax.Array,
    epsilon: float | None = None,
    precision: Precision = "float32",
) -> jax.Array:
    """One renormalised multiplicative update ``F(h, x, W)``, exactly as the reference writes it.

    Args:
      h: current code, shape (..., I).
      x: input, shape (..., S).
      w: normalised weight, shape (S, I).
      epsilon: None for ``h * (W^T (x/R))`` (paper eq. 6 with its epsilon = 1), or a float for the
        reference's ``h * (1 + epsilon * W^T (x/R))`` variant (not paper eq. 6; see spec 2.5).
      precision: of the two matrix products (``PRECISIONS``); everything else stays in h's dtype.

    Returns:
      the next code, shape (..., I), summing to 1 (or 0 where ``x`` is 0).
    """
    reconstruction = _matmul(h, w.T, precision) + RECON_EPS
    drive = _matmul(divide(x, reconstruction), w, precision)
    h = h * drive if epsilon is None else h * (1 + epsilon * drive)
    return l1_normalize(h)


def _iterate_all(x, w, iterations, epsilon, remat=False, precision="float32"):
    num_hidden = w.shape[-1]
    h0 = jnp.full(x.shape[:-1] + (num_hidden,), 1.0 / num_hidden, dtype=x.dtype)

    def body(_, h):
        return nmf_update(h, x, w, epsilon, precision)

    if remat:
        body = jax.checkpoint(body)
    return lax.fori_loop(0, iterations, body, h0)


DEFAULT_CHUNK_BYTES = 16 * 2**20
"""The per-chunk working set that :func:`num_chunks` aims at on a CPU (see there)."""


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


def _iterate(x, w, iterations, epsilon, remat=False, chunks=1, precision="float32"):
    """The fixed-point loop on (P, S) inputs, in ``chunks`` pieces of positions one after another
    (``lax.map``; each piece runs all iterations while its working set stays in cache)."""
    if chunks <= 1:
        return _iterate_all(x, w, iterations, epsilon, remat, precision)
    positions = x.shape[0]
    size = -(-positions // chunks)
    padded = jnp.pad(x, ((0, size * chunks - positions), (0, 0)))  # zero rows give h = 0
    pieces = padded.reshape(chunks, size, x.shape[-1])
    h = lax.map(lambda piece: _iterate_all(piece, w, iterations, epsilon, remat, precision), pieces)
    return h.reshape(chunks * size, w.shape[-1])[:positions]


def _flatten_positions(a: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


# --- approximate (reference) backward --------------------------------------------------------------


def _one_step_vjp(x, w, h, g, rule):
    """The reference's backward (``NNMF2d.py`` ``FunctionalNNMF2d.backward``), transcribed.

    Shapes: x (..., S), w (S, I), h and g (..., I). Returns (dL/dx of shape (..., S), dL/dW (S, I)).
    """
    reconstruction = _matmul(h, w.T)  # no +1e-20 here, as in the reference
    inv_reconstruction = 1.0 / (reconstruction + RECON_EPS)
    x_over_r = x * inv_reconstruction
    hg = h * g
    grad_x = _matmul(hg, w.T) * inv_reconstruction  # Phi
    h_flat = _flatten_positions(h)
    if rule == "approximate":
        grad_w = _matmul(_flatten_positions(x_over_r).T, _flatten_positions(hg)) - _matmul(
            _flatten_positions(x_over_r * grad_x).T, h_flat
        )
    elif rule == "local_kl":
        grad_w = -_matmul(_flatten_positions(x_over_r).T, h_flat)
    elif rule == "local_mse":
        grad_w = -_matmul(_flatten_positions(2 * (x - reconstruction)).T, h_flat)
    else:  # pragma: no cover - validated by the caller
        raise ValueError(rule)
    return grad_x, grad_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _nmf_one_step(x, w, iterations, epsilon, rule, chunks, precision):
    return _iterate(x, w, iterations, epsilon, chunks=chunks, precision=precision)


def _nmf_one_step_fwd(x, w, iterations, epsilon, rule, chunks, precision):
    h = _iterate(x, w, iterations, epsilon, chunks=chunks, precision=precision)
    return h, (x, w, h)


def _nmf_one_step_bwd(iterations, epsilon, rule, chunks, precision, residuals, g):
    # The one-step rule depends neither on the iterations nor on epsilon (no epsilon factor, spec
    # 2.5); it is one pass, so it runs unchunked and in full precision.
    del iterations, epsilon, chunks, precision
    x, w, h = residuals
    return _one_step_vjp(x, w, h, g, rule)


_nmf_one_step.defvjp(_nmf_one_step_fwd, _nmf_one_step_bwd)


# --- implicit (exact fixed-point) backward ----------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _nmf_implicit(x, w, iterations, epsilon, chunks, precision):
    return _iterate(x, w, iterations, epsilon, chunks=chunks, precision=precision)


def _nmf_implicit_fwd(x, w, iterations, epsilon, chunks, precision):
    h = _iterate(x, w, iterations, epsilon, chunks=chunks, precision=precision)
    return h, (x, w, h)


def _nmf_implicit_bwd(iterations, epsilon, chunks, precision, residuals, g):
    del iterations, chunks, precision
    x, w, h = residuals
    batch_shape = h.shape[:-1]
    h_flat, x_flat, g_flat = (_flatten_positions(a) for a in (h, x, g))
    num_hidden = h.shape[-1]

    def solve_one(h_p, x_p, g_p):
        jac_h = jax.jacfwd(nmf_update, argnums=0)(h_p, x_p, w, epsilon)  # (I, I)
        system = jnp.eye(num_hidden, dtype=h_p.dtype) - jac_h
        return jnp.linalg.solve(system.T, g_p)

    v = jax.vmap(solve_one)(h_flat, x_flat, g_flat)
    _, update_vjp = jax.vjp(lambda x_, w_: nmf_update(h_flat, x_, w_, epsilon), x_flat, w)
    grad_x, grad_w = update_vjp(v)
    return grad_x.reshape(batch_shape + (x.shape[-1],)), grad_w


_nmf_implicit.defvjp(_nmf_implicit_fwd, _nmf_implicit_bwd)


# --- public entry point -----------------------------------------------------------------------------


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


def nmf_fixed_point(
    x: jax.Array,
    w: jax.Array,
    *,
    iterations: int = 20,
    epsilon: float | None = None,
    gradient: Gradient = "approximate",
    remat: bool = False,
    check_inputs: bool = False,
    chunk_bytes: int | None = None,
    precision: Precision = "float32",
    name: str = "nmf",
) -> jax.Array:
    """Runs the NMF fixed-point iteration: the code ``h`` that explains ``x`` with the columns of ``W``.

    Fixed-point equation (paper eq. 6 with epsilon = 1, renormalised as in the reference)::

        h = F(h; x, W),   F(h)_i = h_i (W^T (x / (W h + 1e-20)))_i / (sum_j [same]_j + 1e-19)

    started at ``h_i = 1/I`` and applied ``iterations`` times in a ``lax.fori_loop``. With
    ``sum(x) = 1`` and columns of ``W`` summing to 1 each step keeps ``sum(h) = 1``; an all-zero
    input gives ``h = 0`` and zero, finite gradients.

    Args:
      x: non-negative input of shape (..., S), normally L1-normalised over its last axis. Not checked
        unless ``check_inputs``: negative entries give meaningless (possibly negative) codes and
        non-finite entries propagate NaN.
      w: normalised weight of shape (S, I), non-negative, columns summing to 1
        (see :func:`normalize_weight`).
      iterations: number of updates N (>= 0; 20 in the paper's models).
      epsilon: None (the paper) or the reference's epsilon variant, see :func:`nmf_update`.
      gradient: the backward pass, one of ``GRADIENT_MODES`` (module docstring):

        * ``"approximate"``: the reference's one-step rule (custom_vjp; residuals x, W, h).
        * ``"unrolled"``: autodiff through all iterations; exact derivative of the computed h.
        * ``"implicit"``: exact derivative of the true fixed point, by the implicit function theorem.
          Meaningful only where the loop has converged (the residual ``|F(h) - h|`` is small): it
          differentiates the limit, not the computed iterate, so for a short, unconverged loop it
          differs from ``"unrolled"``, and can be far off: the multiplicative update converges
          slowly, codes that head for zero give ``dF/dh`` eigenvalues close to 1, and ``I - dF/dh``
          is then ill-conditioned. Measured on real CIFAR-10 patches (75 -> 32, float64): after
          20 iterations the implicit dL/dx was 500x the size of the unrolled one; after 2,000
          (residual 2e-6, largest eigenvalue 0.998) they agreed to 4 %. On a well-posed problem
          that converges to machine precision it matches finite differences to 1e-10
          (``tests/test_nmf.py``). All-zero inputs are fine (h = 0 gives zero gradients). It is
          undefined where ``I - dF/dh`` is singular (non-isolated fixed points, e.g. two identical
          columns of W); ``jnp.linalg.solve`` then returns inf/NaN. It costs one I x I Jacobian and
          solve per position.
        * ``"local_kl"``, ``"local_mse"``: the reference's local learning rules for dL/dW, with the
          approximate dL/dx.
      remat: with ``gradient="unrolled"``, rematerialise each iteration (``jax.checkpoint``) so the
        backward stores only one h per iteration instead of every intermediate.
      check_inputs: add ``checkify`` checks that x and W are finite and non-negative. The function
        must then be wrapped with :func:`checked` (or ``checkify.checkify``), also under ``jit``.
      chunk_bytes: run the loop over chunks of positions whose working set is about this many
        bytes (:func:`num_chunks`), one chunk after another, so that it stays in cache; 0: in one
        piece; None (default): ``DEFAULT_CHUNK_BYTES`` on a CPU and one piece on accelerators. The
        values are the same up to float rounding (every position is independent).
      precision: the matrix products of the loop (``PRECISIONS``): ``"float32"`` (default,
        ``Precision.HIGHEST``), ``"bfloat16"`` (inputs rounded to bfloat16, float32 accumulation and
        result: mixed precision) or ``"tf32"`` (``Precision.DEFAULT``: TF32 on NVIDIA GPUs, bfloat16
        passes on TPUs, float32 on CPUs). The codes h, the normalisations, the division by the
        reconstruction and every backward stay in the compute dtype.
      name: the layer's name, used in the messages of ``check_inputs``.

    Returns:
      h of shape (..., I) and the dtype of ``x``.
    """
    if w.ndim != 2:
        raise ValueError(f"NMF layer '{name}': w must have shape (S, I), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"NMF layer '{name}': the last axis of x (shape {x.shape}) must equal the first axis "
            f"S of w (shape {w.shape})"
        )
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
    if remat and gradient != "unrolled":
        raise ValueError(f"remat=True only applies to gradient='unrolled', got {gradient!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if check_inputs:
        _check_inputs(x, w, name)

    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"NMF layer '{name}': x must be a floating array, got dtype {x.dtype}")
    out_dtype = x.dtype
    # bf16/f16 run in float32; float32 and float64 run in their own precision.
    compute_dtype = out_dtype if jnp.finfo(out_dtype).bits >= 32 else jnp.dtype(jnp.float32)
    batch_shape = x.shape[:-1]
    # One (positions, S) matrix: matrix products with several free axes are much slower on XLA's CPU
    # backend, above all under vmap (17x for a vmapped (5, 50, 24, 24, 75) input, 5x when flat).
    x = _flatten_positions(x.astype(compute_dtype))
    w = w.astype(compute_dtype)
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES if jax.default_backend() == "cpu" else 0
    chunks = num_chunks(x.shape[0], *w.shape, x.dtype.itemsize, chunk_bytes)

    if gradient == "unrolled":
        h = _iterate(x, w, iterations, epsilon, remat, chunks, precision)
    elif gradient == "implicit":
        h = _nmf_implicit(x, w, iterations, epsilon, chunks, precision)
    else:
        h = _nmf_one_step(x, w, iterations, epsilon, gradient, chunks, precision)
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
