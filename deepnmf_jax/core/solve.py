"""The NMF fixed-point loop, and the one ``jax.custom_vjp`` around it.

:func:`iterate` runs the update (:func:`deepnmf_jax.core.ops.nmf_update`) from ``h_i = 1/I`` in a
``lax.fori_loop``; it is plain JAX, so autodiff through it is the :class:`Unrolled` gradient.
:func:`solve` wraps it in a ``custom_vjp`` whose backward is the options' rule
(:mod:`deepnmf_jax.core._rules`); its residuals are ``(x, W, h_final)`` only, no trajectory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from deepnmf_jax.core import _rules
from deepnmf_jax.core.ops import nmf_update
from deepnmf_jax.core.options import NMFOptions, Unrolled


def _iterate_all(x, w, options: NMFOptions):
    num_hidden = w.shape[-1]
    # h0 = 1/I everywhere, shaped by broadcasting (no shape argument: exporters with a symbolic
    # batch, such as jax2onnx, cannot build a constant of that shape)
    h0 = jnp.zeros_like(x[..., :1]) + jnp.full((1, num_hidden), 1.0 / num_hidden, x.dtype)
    # the rolled default is passed as no argument at all: a loop's lowering in other tools
    # (jax2onnx's fori_loop plugin) may not take ``unroll``
    loop = {} if options.unroll in (False, 0, 1) else {"unroll": options.unroll}

    if options.carry_inputs:  # the same loop with x and W in the carry (NMFOptions.carry_inputs)

        def carried(_, carry):
            h, x_, w_ = carry
            return nmf_update(h, x_, w_, options.epsilon, options.precision), x_, w_

        return lax.fori_loop(0, options.iterations, carried, (h0, x, w), **loop)[0]

    def body(_, h):
        return nmf_update(h, x, w, options.epsilon, options.precision)

    if isinstance(options.backward, Unrolled) and options.backward.remat:
        body = jax.checkpoint(body)
    return lax.fori_loop(0, options.iterations, body, h0, **loop)


def iterate(x: jax.Array, w: jax.Array, options: NMFOptions, chunks: int = 1) -> jax.Array:
    """The fixed-point loop on (P, S) inputs, in ``chunks`` pieces of positions one after another
    (``lax.map``; each piece runs all iterations while its working set stays in cache)."""
    if chunks <= 1:
        return _iterate_all(x, w, options)
    positions = x.shape[0]
    size = -(-positions // chunks)
    padded = jnp.pad(x, ((0, size * chunks - positions), (0, 0)))  # zero rows give h = 0
    pieces = padded.reshape(chunks, size, x.shape[-1])
    h = lax.map(lambda piece: _iterate_all(piece, w, options), pieces)
    return h.reshape(chunks * size, w.shape[-1])[:positions]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def solve(x: jax.Array, w: jax.Array, options: NMFOptions, chunks: int) -> jax.Array:
    """The loop on flat (P, S) inputs with the backward rule ``options.backward`` (any rule but
    :class:`Unrolled`). Returns h of shape (P, I)."""
    return iterate(x, w, options, chunks)


def _solve_fwd(x, w, options, chunks):
    h = iterate(x, w, options, chunks)
    return h, (x, w, h)


def _solve_bwd(options, chunks, residuals, g):
    del chunks  # every rule is one pass over all positions, in full precision
    x, w, h = residuals
    return _rules.custom_vjp(options.backward, x, w, h, g, options.epsilon)


solve.defvjp(_solve_fwd, _solve_bwd)
