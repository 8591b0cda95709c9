"""Losses on class probabilities (the networks end with a softmax).

* :func:`reference_loss` is the reference's ``loss_function`` with ``loss_mode=0`` exactly
  (``mahbodnr/deep_nmf:tools/loss_function.py``; decision 3 of the docs' "where the paper and
  its code differ"), a **sum** over the batch::

      KL  = (1/C) sum_{n,c} y_nc log((y_nc + 1e-20) / (p_nc + 1e-20))   (= (1/C) sum_n -log(p_{n,y_n} + 1e-20))
      MSE = (1/C) sum_{n,c} (p_nc - y_nc)^2
      L   = (1.0 KL + 0.5 MSE) / (1.0 + 0.5)

* :func:`paper_loss` is the paper's eq. 21, cross-entropy plus 0.5 squared error per sample, averaged
  over the batch: ``mean_n [-log(p_{n,y_n} + 1e-20) + 0.5 sum_c (p_nc - y_nc)^2]``. With the default
  coefficients, ``paper_loss = reference_loss * 1.5 C / N`` for C classes and N samples.

Both take ``label_smoothing`` (alpha, default 0): the one-hot targets become
``y = (1 - alpha) onehot + alpha / C``, and every term above uses that ``y`` as written (the KL term
keeps its ``y log y`` part, so the loss is still 0 at ``p = y``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOG_EPS = 1e-20


def _targets(probs: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"expected probs (N, C) and integer labels (N,), got shapes {probs.shape} and "
            f"{labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    if label_smoothing:
        targets = (1 - label_smoothing) * targets + label_smoothing / probs.shape[-1]
    return targets


def reference_loss(
    probs: jax.Array,
    labels: jax.Array,
    kl_coeff: float = 1.0,
    mse_coeff: float = 0.5,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """The reference loss (module docstring), summed over the batch. probs (N, C), labels (N,)."""
    targets = _targets(probs, labels, label_smoothing)
    num_classes = probs.shape[-1]
    kl = jnp.sum(targets * jnp.log((targets + LOG_EPS) / (probs + LOG_EPS))) / num_classes
    mse = jnp.sum(jnp.square(probs - targets)) / num_classes
    return (kl_coeff * kl + mse_coeff * mse) / (kl_coeff + mse_coeff)


def paper_loss(
    probs: jax.Array, labels: jax.Array, mse_coeff: float = 0.5, label_smoothing: float = 0.0
) -> jax.Array:
    """The paper's eq. 21 (module docstring), averaged over the batch. probs (N, C), labels (N,).
    With label smoothing the cross-entropy is ``-sum_c y_c log(p_c + 1e-20)``."""
    targets = _targets(probs, labels, label_smoothing)
    cross_entropy = -jnp.sum(targets * jnp.log(probs + LOG_EPS), axis=-1)
    squared_error = jnp.sum(jnp.square(probs - targets), axis=-1)
    return jnp.mean(cross_entropy + mse_coeff * squared_error)


LOSSES = {"reference": reference_loss, "paper": paper_loss}


def get_loss(name: str):
    """The loss function by name: ``"reference"`` (default of the configs) or ``"paper"``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
