"""The NMF layer as pure functions: weight normalisation and the fixed-point iteration.

A non-negative input ``x`` (length S, summing to 1) is explained as a mixture of the I columns of a
non-negative weight ``W`` (S x I, each column summing to 1). The code ``h`` (length I, summing to 1) is
the fixed point of the multiplicative update of Lee & Seung for the KL divergence,

    h_i  <-  h_i * sum_s W_si x_s / R_s,      R_s = sum_j W_sj h_j + 1e-20,

followed by ``h <- h / (sum_j h_j + 1e-19)``, started at ``h_i = 1/I`` and iterated a fixed number of
times (paper eqs. 6 and 20; ``mahbodnr/deep_nmf:tools/NNMF2d.py``).

How a layer runs is one record, :class:`NMFOptions` (iterations, the backward rule, precision, ...),
validated once and passed whole from the config to the layer and to :func:`nmf_fixed_point`.

Backward passes (``NMFOptions.gradient``; formulas in :mod:`deepnmf_jax.fixed_point`):

* ``"approximate"`` (the paper's and the reference's): one ``jax.custom_vjp`` with residuals
  ``(x, W, h_final)``: the VJP of ONE multiplicative update at the final ``h`` (paper eqs. 18-19).
  Not the derivative of the computed ``h`` (about 1/N of its scale per layer) but roughly aligned.
* ``"unrolled"``: autodiff through every iteration (the paper's "full BP"), optionally
  rematerialised per iteration (``remat=True``).
* ``"implicit"``: the exact derivative of the fixed point by the implicit function theorem.
* ``"local_kl"`` / ``"local_mse"``: the reference's unsupervised local rules for ``dL/dW`` (spec 2.6),
  with the approximate ``dL/dx``.

Precision: the loop runs in ``float32`` for inputs of lower precision (bfloat16, float16) and in the
input's dtype otherwise (float32, float64); the output is cast back to the input's dtype. Matrix
products use ``Precision.HIGHEST`` by default so that GPUs and TPUs do not silently drop to TF32.

Layout: ``W`` is (S, I) = (inputs, outputs), the paper's and Flax's kernel layout. The reference stores
its transpose (I, S).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from deepnmf_jax import fixed_point
from deepnmf_jax.fixed_point import (
    NORM_EPS,
    RECON_EPS,
    divide,
    l1_normalize,
    nmf_update,
    num_chunks,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GRADIENT_MODES",
    "NORM_EPS",
    "PRECISIONS",
    "RECON_EPS",
    "NMFOptions",
    "checked",
    "divide",
    "l1_normalize",
    "nmf_fixed_point",
    "nmf_update",
    "normalize_weight",
    "num_chunks",
]

GRADIENT_MODES = ("approximate", "unrolled", "implicit", "local_kl", "local_mse")
Gradient = Literal["approximate", "unrolled", "implicit", "local_kl", "local_mse"]

PRECISIONS = ("float32", "bfloat16", "tf32")
"""How the matrix products of the NMF loop run (see :class:`NMFOptions`)."""
Precision = Literal["float32", "bfloat16", "tf32"]

DEFAULT_CHUNK_BYTES = 16 * 2**20
"""The per-chunk working set that :func:`num_chunks` aims at on a CPU."""


@dataclasses.dataclass(frozen=True)
class NMFOptions:
    """How an NMF layer runs; validated once, here. Hashable, so it is a static argument of jit.

    Attributes:
      iterations: number of updates N (>= 0; 20 in the paper's models).
      epsilon: None (the paper's update) or the reference's epsilon variant (:func:`nmf_update`).
      gradient: the backward pass, one of ``GRADIENT_MODES`` (module docstring). ``"implicit"`` is
        meaningful only where the loop has converged (the residual ``|F(h) - h|`` is small): it
        differentiates the limit, not the computed iterate. The multiplicative update converges
        slowly, codes heading for zero give ``dF/dh`` eigenvalues near 1, and ``I - dF/dh`` is then
        ill-conditioned: on real CIFAR-10 patches (75 -> 32, float64) the implicit dL/dx was 500x
        the unrolled one after 20 iterations, and agreed to 4 % after 2,000. It is undefined where
        ``I - dF/dh`` is singular (e.g. two identical columns of W: inf/NaN). One I x I Jacobian
        and solve per position.
      remat: with ``gradient="unrolled"``: rematerialise each iteration (``jax.checkpoint``), so the
        backward stores one h per iteration instead of every intermediate.
      check_inputs: ``checkify`` checks that x and W are finite and non-negative, naming the layer;
        the function must then run under :func:`checked` (``config.model.check_inputs`` does this
        for the train and eval steps).
      chunk_bytes: run the loop over chunks of positions whose working set is about this many bytes
        (:func:`num_chunks`), one after another, so that each stays in cache; 0: one piece; None:
        ``DEFAULT_CHUNK_BYTES`` on a CPU and one piece on accelerators. Same values up to rounding.
      carry_inputs: pass x and W through the loop's carry instead of closing over them: the same
        values, and what jax2onnx's ``fori_loop`` lowering needs (it cannot convert a loop body that
        closes over a computed array). Only for inference: under ``gradient="unrolled"`` autodiff
        would store x and W at every iteration.
      precision: the loop's matrix products (``PRECISIONS``): ``"float32"`` (``Precision.HIGHEST``),
        ``"bfloat16"`` (bf16 inputs, float32 accumulation: mixed precision) or ``"tf32"``
        (``Precision.DEFAULT``). The codes, normalisations, divisions and every backward stay in the
        compute dtype.
    """

    iterations: int = 20
    epsilon: float | None = None
    gradient: Gradient = "approximate"
    remat: bool = False
    check_inputs: bool = False
    chunk_bytes: int | None = None
    precision: Precision = "float32"
    carry_inputs: bool = False

    def __post_init__(self):
        iterations = self.iterations
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
        if self.gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {self.gradient!r}")
        if self.remat and self.gradient != "unrolled":
            raise ValueError(
                f"remat=True only applies to gradient='unrolled', got {self.gradient!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"epsilon must be None or > 0, got {self.epsilon!r}")
        if self.carry_inputs and self.gradient == "unrolled":
            raise ValueError("carry_inputs=True is for inference; it does not go with 'unrolled'")
        if self.chunk_bytes is not None and self.chunk_bytes < 0:
            raise ValueError(f"chunk_bytes must be None or >= 0, got {self.chunk_bytes!r}")


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


def nmf_fixed_point(
    x: jax.Array,
    w: jax.Array,
    options: NMFOptions | None = None,
    *,
    name: str = "nmf",
    **overrides,
) -> jax.Array:
    """Runs the NMF fixed-point iteration: the code ``h`` that explains ``x`` with the columns of ``W``.

    Fixed-point equation (paper eq. 6 with epsilon = 1, renormalised as in the reference)::

        h = F(h; x, W),   F(h)_i = h_i (W^T (x / (W h + 1e-20)))_i / (sum_j [same]_j + 1e-19)

    started at ``h_i = 1/I`` and applied ``options.iterations`` times in a ``lax.fori_loop``. With
    ``sum(x) = 1`` and columns of ``W`` summing to 1 each step keeps ``sum(h) = 1``; an all-zero
    input gives ``h = 0`` and zero, finite gradients.

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
    # backend, above all under vmap (17x for a vmapped (5, 50, 24, 24, 75) input, 5x when flat).
    x = x.astype(compute_dtype).reshape(-1, x.shape[-1])
    w = w.astype(compute_dtype)
    chunk_bytes = options.chunk_bytes
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES if jax.default_backend() == "cpu" else 0
    chunks = num_chunks(x.shape[0], *w.shape, x.dtype.itemsize, chunk_bytes)

    if options.gradient == "unrolled":
        h = fixed_point.iterate(x, w, options, chunks)
    else:
        h = fixed_point.solve(x, w, options, chunks)
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
