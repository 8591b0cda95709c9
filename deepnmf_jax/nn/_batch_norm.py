"""BatchNorm's arithmetic: batch moments, the normalisation, and its one-pass backward.

:func:`batch_normalize` normalises with the batch's own statistics; its ``jax.custom_vjp`` is
autodiff's derivative written as two per-channel sums and one elementwise pass, where autodiff of
:func:`moments` and :func:`normalize` makes several passes over x and sums three cotangents (x enters
the mean, the variance and the normalisation). The forward is the same expression either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

BATCH_NORM_EPS = 1e-5


def per_channel(v: jax.Array, like: jax.Array) -> jax.Array:
    """A (C,) vector reshaped to broadcast against (..., C) explicitly (no implicit rank promotion)."""
    return v.astype(like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, biased variance) over every axis but the last, each (C,)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - per_channel(mean, x)), axis=axes)


def normalize(x, mean, var, scale, bias, epsilon: float = BATCH_NORM_EPS) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` per channel (all (C,) vectors)."""
    normalized = (x - per_channel(mean, x)) * lax.rsqrt(per_channel(var, x) + epsilon)
    return normalized * per_channel(scale, x) + per_channel(bias, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_normalize(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = BATCH_NORM_EPS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm with the batch's statistics: ``(normalize(x, mean, var, scale, bias), mean, var)``.

    Args:
      x: (..., C).
      scale, bias: (C,), in x's dtype.
      epsilon: added to the variance.

    Returns:
      (y of x's shape, mean (C,), biased var (C,)) as :func:`moments` and :func:`normalize` give
      them. The derivative, with n = x.size / C, ``xhat = (x - mean) / sqrt(var + eps)`` and
      ``g``, ``g_mean``, ``g_var`` the cotangents of the three outputs::

          dx     = scale / sqrt(var + eps) * (g - sum(g) / n - xhat * sum(g xhat) / n)
                   + g_mean / n + g_var * 2 (x - mean) / n
          dscale = sum(g xhat),   dbias = sum(g)

      (sums over every axis but the last): autodiff's, up to rounding.
    """
    mean, var = moments(x)
    return normalize(x, mean, var, scale, bias, epsilon), mean, var


def _batch_normalize_fwd(x, scale, bias, epsilon):
    y, mean, var = batch_normalize(x, scale, bias, epsilon)
    return (y, mean, var), (x, mean, var, scale)


def _batch_normalize_bwd(epsilon, residuals, cotangents):
    x, mean, var, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    centred = x - per_channel(mean, x)
    inv_std = lax.rsqrt(var + epsilon)
    xhat = centred * per_channel(inv_std, x)
    g_bias = jnp.sum(g, axis=axes)
    g_scale = jnp.sum(g * xhat, axis=axes)
    g_x = per_channel(scale * inv_std, x) * (
        g - per_channel(g_bias / count, x) - xhat * per_channel(g_scale / count, x)
    )
    g_x = g_x + per_channel(g_mean / count, x) + centred * per_channel(2 * g_var / count, x)
    return g_x, g_scale, g_bias


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)
