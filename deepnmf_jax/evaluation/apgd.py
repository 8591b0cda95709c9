"""APGD-CE: Croce and Hein's step-size-free PGD (ICML 2020), L-infinity, as AutoAttack runs it.

From a random start on the eps-ball's surface (uniform noise scaled so that its largest entry is
eps), each step moves by ``step * sign(grad)``, projects, and mixes in momentum 0.75 of the last
move (the first step has none); the step starts at ``2 eps``. At checkpoints (AutoAttack's: the
first window max(0.22 N, 1) steps, each next one shorter by max(0.03 N, 1) down to max(0.06 N, 1);
for N = 100 after steps 22, 41, 57, 70, 80, 87, 93, 99, the paper's p_j) an image's step is halved
and its iterate reset to its best point when the loss rose in at most 75 % of the window's steps,
or when its step was not halved at the last checkpoint and its best loss has not grown since. The
image counts as broken if any iterate is misclassified; the attack returns, per image, the last
misclassified iterate (or the start if none was), so classifying the returned images gives the
robust accuracy. The loss is the same cross-entropy ``-log p_y`` PGD follows.

Ours: the first window's count of rising steps compares the first step with the start's loss
(AutoAttack's indexing compares it with a zero); everything runs per image inside one jitted loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MOMENTUM = 0.75
RHO = 0.75  # a window whose loss rose in at most RHO of its steps halves the step


class APGDResult(NamedTuple):
    adversarial: jax.Array  # (N, ...) the last misclassified iterate, or the start
    best: jax.Array  # (N, ...) the iterate of the highest loss
    best_loss: jax.Array  # (N,)
    fooled: jax.Array  # (N,) bool: some iterate was misclassified
    step: jax.Array  # (N,) the step size at the end


def checkpoints(steps: int) -> np.ndarray:
    """(steps,) bool: after which steps (0-based) the step sizes are reviewed."""
    window = max(int(0.22 * steps), 1)
    shrink, smallest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks = np.zeros(steps, bool)
    since = 0
    for step in range(steps):
        since += 1
        if since == window:
            marks[step] = True
            window, since = max(window - shrink, smallest), 0
    return marks


def apgd(
    loss_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    images: jax.Array,
    key: jax.Array,
    eps: jax.Array,
    steps: int,
) -> APGDResult:
    """APGD (module docstring) on a batch.

    Args:
      loss_fn: images (N, ...) -> (loss per image (N,), correctly classified (N,) bool); one
        image's loss must not depend on the others (BatchNorm with population statistics).
      images: (N, ...) in [0, 1].
      key: the random start.
      eps: the L-infinity radius.
      steps: gradient steps after the start's.
    """
    per_image = (-1,) + (1,) * (images.ndim - 1)
    marks = jnp.asarray(checkpoints(steps))

    def project(x):
        return jnp.clip(jnp.clip(x, images - eps, images + eps), 0.0, 1.0)

    def total(x):
        loss, correct = loss_fn(x)
        return jnp.sum(loss), (loss, correct)

    def evaluate(x):
        (_, (loss, correct)), grad = jax.value_and_grad(total, has_aux=True)(x)
        return loss, correct, grad

    noise = jax.random.uniform(key, images.shape, images.dtype, -1.0, 1.0)
    largest = jnp.max(jnp.abs(noise.reshape(noise.shape[0], -1)), axis=1).reshape(per_image)
    start = jnp.clip(images + eps * noise / largest, 0.0, 1.0)
    loss, correct, grad = evaluate(start)
    count = loss.shape[0]
    initial = {
        "x": start,
        "previous": start,
        "grad": grad,
        "step": jnp.full(count, 2.0, images.dtype) * eps,
        "best": start,
        "best_grad": grad,
        "best_loss": loss,
        "last_loss": loss,
        "rises": jnp.zeros(count, jnp.int32),
        "window": jnp.zeros(count, jnp.int32),
        "best_loss_at_check": loss,
        "halved_at_check": jnp.ones(count, bool),
        "adversarial": start,
        "fooled": ~correct,
    }

    def body(index, s):
        weight = jnp.where(index > 0, MOMENTUM, 1.0)
        moved = project(s["x"] + s["step"].reshape(per_image) * jnp.sign(s["grad"]))
        x = project(s["x"] + (moved - s["x"]) * weight + (s["x"] - s["previous"]) * (1 - weight))
        loss, correct, grad = evaluate(x)
        wrong = ~correct
        better = loss > s["best_loss"]
        best_loss = jnp.where(better, loss, s["best_loss"])
        best = jnp.where(better.reshape(per_image), x, s["best"])
        best_grad = jnp.where(better.reshape(per_image), grad, s["best_grad"])
        rises = s["rises"] + (loss > s["last_loss"]).astype(jnp.int32)
        window = s["window"] + 1
        # the review at a checkpoint
        check = marks[index]
        oscillating = rises.astype(loss.dtype) <= RHO * window.astype(loss.dtype)
        stalled = ~s["halved_at_check"] & (s["best_loss_at_check"] >= best_loss)
        halve = check & (oscillating | stalled)
        return {
            "x": jnp.where(halve.reshape(per_image), best, x),
            "previous": s["x"],
            "grad": jnp.where(halve.reshape(per_image), best_grad, grad),
            "step": jnp.where(halve, s["step"] / 2, s["step"]),
            "best": best,
            "best_grad": best_grad,
            "best_loss": best_loss,
            "last_loss": loss,
            "rises": jnp.where(check, 0, rises),
            "window": jnp.where(check, 0, window),
            "best_loss_at_check": jnp.where(check, best_loss, s["best_loss_at_check"]),
            "halved_at_check": jnp.where(check, halve, s["halved_at_check"]),
            "adversarial": jnp.where(wrong.reshape(per_image), x, s["adversarial"]),
            "fooled": s["fooled"] | wrong,
        }

    s = jax.lax.fori_loop(0, steps, body, initial)
    return APGDResult(s["adversarial"], s["best"], s["best_loss"], s["fooled"], s["step"])
