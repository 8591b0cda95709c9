"""The per-seed pure functions of training: init, train step, prediction, the epoch's schedule update
(:mod:`deepnmf_jax.training.program` builds them once into jitted, seed-vmapped, sharded functions).

Every leaf of a :class:`TrainState` has a leading seed axis in a run; the per-seed functions here see
one seed and are ``jax.vmap``-ed over it (or run one seed after another, ``parallel.seed_loop``), so
``config.num_seeds`` replicas train together in one program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from deepnmf_jax.data import augment
from deepnmf_jax.models import dead_channels
from deepnmf_jax.training import optim
from deepnmf_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What the per-seed functions need besides their arguments; built once by
    :func:`deepnmf_jax.training.program.build`."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optim.Schedule
    loss_fn: Callable
    augment: augment.AugmentConfig
    input_shape: tuple[int, int, int]  # (H, W, C) after cropping
    batch_size: int
    eval_batch_size: int
    steps_per_epoch: int
    ema_decay: float
    running_bn: bool = False  # the model keeps running BatchNorm statistics (batch_stats)
    reports_taps: bool = False  # apply(..., return_intermediates=True) gives dead-channel taps
    batch_sharding: Any = None  # where the augmented batch lives (mesh axis "data")


def init_state(ctx: StepContext, seed_key_data: jax.Array) -> TrainState:
    """A fresh state of one seed from its raw key data."""
    init_key, augment_key = jax.random.split(jax.random.wrap_key_data(seed_key_data), 2)
    images = jnp.zeros((2, *ctx.input_shape), jnp.float32)
    variables = ctx.model.init(init_key, images, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=ctx.tx.init(params),
        plateau_state=ctx.schedule.init(params),
        augment_key=jax.random.key_data(augment_key),
        ema_params=params if ctx.ema_decay > 0 else {},
    )


def _apply(ctx: StepContext, params, batch_stats, images, train: bool, population=None):
    """(probs, intermediates ({} for a model without them), new batch_stats)."""
    variables = {"params": params}
    if ctx.running_bn:
        variables["batch_stats"] = batch_stats
    if population is not None:
        variables["population"] = population
    extra: dict[str, Any] = {"return_intermediates": True} if ctx.reports_taps else {}
    if ctx.running_bn and train:
        out, updates = ctx.model.apply(
            variables, images, train=True, mutable=["batch_stats"], **extra
        )
        batch_stats = updates["batch_stats"]
    else:
        out = ctx.model.apply(variables, images, train=train, **extra)
    probs, inter = out if ctx.reports_taps else (out, {})
    return probs, inter, batch_stats


def train_step(ctx: StepContext, state: TrainState, images, labels, order):
    """One step of one seed: the batch at its position in ``order``, augmented on the device.

    Args:
      state: one seed's state.
      images: (N, H, W, C) uint8, the whole training split; labels: (N,) int32.
      order: (N,) the epoch's permutation (the position in it comes from ``state.step``).

    Returns:
      (new state, {"loss": scalar, "correct": int32 scalar}).
    """
    step_in_epoch = state.step % ctx.steps_per_epoch  # no host scalar per step
    index = jax.lax.dynamic_slice(order, (step_in_epoch * ctx.batch_size,), (ctx.batch_size,))
    key = jax.random.fold_in(jax.random.wrap_key_data(state.augment_key), state.step)
    batch = augment.preprocess_for_train(images[index], key, ctx.augment)
    chex.assert_shape(batch, (ctx.batch_size, *ctx.input_shape))
    batch_labels = labels[index]
    if ctx.batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, ctx.batch_sharding)
        batch_labels = jax.lax.with_sharding_constraint(batch_labels, ctx.batch_sharding)

    def objective(params):
        probs, _, batch_stats = _apply(ctx, params, state.batch_stats, batch, train=True)
        return ctx.loss_fn(probs, batch_labels), (probs, batch_stats)

    (loss, (probs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
    scale = ctx.schedule.scale(state.plateau_state, state.step)
    updates = jax.tree_util.tree_map(lambda u: (scale * u).astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ctx.ema_decay > 0:
        ema = optim.ema_update(ema, params, ctx.ema_decay, state.step)
    # A seed whose learning rates all fell below stop_lr is finished (as its own reference run
    # would be) and its whole state stays frozen while the other seeds go on: parameters,
    # BatchNorm statistics, Adam moments and the average (only the step counter moves).
    finished = ctx.schedule.finished(state.plateau_state.scale)
    params, batch_stats, opt_state, ema = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finished, old, new),
        (params, batch_stats, opt_state, ema),
        (state.params, state.batch_stats, state.opt_state, state.ema_params),
    )
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema,
    )
    correct = jnp.sum(jnp.argmax(probs, -1).astype(batch_labels.dtype) == batch_labels)
    return new_state, {"loss": loss, "correct": correct}


def eval_params(ctx: StepContext, state: TrainState):
    """The parameters evaluation uses: the moving average where there is one."""
    return state.ema_params if ctx.ema_decay > 0 else state.params


def _predict_batch(ctx: StepContext, state: TrainState, images, population=None):
    batch = augment.preprocess_for_eval(images, ctx.input_shape[0])
    probs, inter, _ = _apply(
        ctx, eval_params(ctx, state), state.batch_stats, batch, False, population
    )
    # per kind, (B, H, W, C) before their ReLU -> (C,) largest value over the batch
    return probs, dead_channels.channel_maxima(inter)


def predict(ctx: StepContext, state: TrainState, images, population=None):
    """Class probabilities of a whole split, in order, in batches of ``eval_batch_size``; the last
    batch may be smaller. BatchNorm uses ``population`` statistics where given (every image alike),
    else each batch's statistics (the reference's evaluation).

    Returns:
      (probs (N, classes), {kind: (C,)}): per kind of dead channel the model reports
      (:mod:`deepnmf_jax.models.dead_channels`), the largest value over the split of each channel
      that passes a ReLU at 1x1 (a channel <= 0 everywhere is dead behind it).
    """
    size = ctx.eval_batch_size
    full = (images.shape[0] // size) * size
    probs, maxima = [], []
    if full:
        batched = images[:full].reshape(-1, size, *images.shape[1:])
        p, m = jax.lax.map(lambda b: _predict_batch(ctx, state, b, population), batched)
        probs.append(p.reshape(full, -1))
        maxima.append(jax.tree_util.tree_map(lambda v: jnp.max(v, axis=0), m))
    if full < images.shape[0]:  # the last, smaller batch (BatchNorm statistics over it alone)
        p, m = _predict_batch(ctx, state, images[full:], population)
        probs.append(p)
        maxima.append(m)
    largest = functools.reduce(lambda a, b: jax.tree_util.tree_map(jnp.maximum, a, b), maxima)
    return jnp.concatenate(probs), largest


def end_epoch(ctx: StepContext, state: TrainState, epoch_loss):
    """Advances one seed's schedule with its epoch's summed training loss."""
    plateau_state = ctx.schedule.advance(state.plateau_state, epoch_loss)
    return dataclasses.replace(state, plateau_state=plateau_state)


def epoch_order(order_key_data, epoch, num_examples: int):
    """The permutation of epoch ``epoch`` for one order key (or a stack of them, one per seed)."""

    def one(key_data):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data), epoch)
        return jax.random.permutation(key, num_examples)

    return jax.vmap(one)(order_key_data) if order_key_data.ndim == 2 else one(order_key_data)
