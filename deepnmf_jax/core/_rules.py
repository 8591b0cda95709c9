"""The formulas of the custom backward rules (:mod:`deepnmf_jax.core.options`), with
``g = dL/dh`` at the final code ``h`` and ``R = W h`` recomputed WITHOUT the forward's 1e-20:

* :class:`~deepnmf_jax.core.options.Approximate`, the reference's one-step rule
  (``mahbodnr/deep_nmf:tools/NNMF2d.py``, paper eqs. 18-19)::

      dL/dx_s  = Phi_s = sum_i W_si h_i g_i / (R_s + 1e-20)
      dL/dW_si = sum_positions h_i x_s / (R_s + 1e-20) * (g_i - Phi_s)

* :class:`~deepnmf_jax.core.options.LocalRule`: the same ``dL/dx``; ``dL/dW`` is
  ``-sum h_i x_s / (R_s + 1e-20)`` (``"kl"``) or ``-sum h_i 2 (x_s - R_s)`` (``"mse"``).
* :class:`~deepnmf_jax.core.options.Implicit`: per position solve ``(I - dF/dh)^T v = g`` and
  return ``v^T dF/d(x, W)`` at the final ``h``.

Shapes: x (P, S), w (S, I), h and g (P, I); each returns (dL/dx (P, S), dL/dW (S, I)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deepnmf_jax.core.ops import RECON_EPS, matmul, nmf_update
from deepnmf_jax.core.options import Backward, Implicit, LocalRule


def one_step_vjp(x, w, h, g, local: str | None = None):
    """The reference's backward, transcribed; ``local`` = ``"kl"`` / ``"mse"`` replaces dL/dW by
    that local rule. Depends neither on the iterations nor on epsilon (no epsilon factor)."""
    reconstruction = matmul(h, w.T)  # no +1e-20 here, as in the reference
    inv_reconstruction = 1.0 / (reconstruction + RECON_EPS)
    x_over_r = x * inv_reconstruction
    hg = h * g
    grad_x = matmul(hg, w.T) * inv_reconstruction  # Phi
    if local is None:
        grad_w = matmul(x_over_r.T, hg) - matmul((x_over_r * grad_x).T, h)
    elif local == "kl":
        grad_w = -matmul(x_over_r.T, h)
    else:
        grad_w = -matmul((2 * (x - reconstruction)).T, h)
    return grad_x, grad_w


def implicit_vjp(x, w, h, g, epsilon):
    """``v = (I - dF/dh)^-T g`` per position, then ``v^T dF/d(x, W)`` at the final h."""
    num_hidden = h.shape[-1]

    def solve_one(h_p, x_p, g_p):
        jac_h = jax.jacfwd(nmf_update, argnums=0)(h_p, x_p, w, epsilon)  # (I, I)
        system = jnp.eye(num_hidden, dtype=h_p.dtype) - jac_h
        return jnp.linalg.solve(system.T, g_p)

    v = jax.vmap(solve_one)(h, x, g)
    _, update_vjp = jax.vjp(lambda x_, w_: nmf_update(h, x_, w_, epsilon), x, w)
    return update_vjp(v)


def custom_vjp(rule: Backward, x, w, h, g, epsilon):
    """(dL/dx, dL/dW) of a custom rule (any rule but Unrolled, which is plain autodiff)."""
    if isinstance(rule, Implicit):
        return implicit_vjp(x, w, h, g, epsilon)
    return one_step_vjp(x, w, h, g, rule.kind if isinstance(rule, LocalRule) else None)
