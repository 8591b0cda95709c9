"""The jitted, seed-vmapped, sharded functions of a run, built once from its config:
:func:`make_steps` turns the per-seed functions of :mod:`deepnmf_jax.steps` into :class:`Steps`."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
from jax.experimental import checkify

from deepnmf_jax import augment, losses, optim, parallel
from deepnmf_jax.steps import (
    StepContext,
    end_epoch,
    epoch_order,
    init_state,
    model_from_config,
    predict,
    train_step,
)
from deepnmf_jax.validation import INCIDENTAL_KEYS


class Steps(NamedTuple):
    """The jitted, sharded functions of one run (all seeds at once) and how its arrays are placed."""

    ctx: StepContext
    init: Callable  # (seed key data (seeds, 2)) -> TrainState
    train: Callable  # (state, images, labels, order) -> (state, metrics per seed)
    predict: Callable  # (state, images) -> (probs (seeds, N, C), rectified maxima (seeds, C'))
    end_epoch: Callable  # (state, epoch losses (seeds,)) -> state
    order: Callable  # (order key data, epoch, num_examples) -> permutation(s)
    placement: parallel.Placement
    # the train step of the first early_epochs epochs (model.train_iterations_epochs), or None
    train_early: Callable | None = None
    early_epochs: int = 0

    def train_for(self, epoch: int) -> Callable:
        """The train step of ``epoch`` (counted from 1)."""
        if self.train_early is not None and epoch <= self.early_epochs:
            return self.train_early
        return self.train


# Config keys that do not change the compiled functions: besides the incidental ones, the seed and
# how much data there is (shapes retrace inside the same jitted functions).
_NOT_COMPILED = INCIDENTAL_KEYS | {
    "seed",
    "data.train_limit",
    "data.test_limit",
    "data.validation_size",
}


def make_steps(config, num_classes: int, image_shape, steps_per_epoch: int, devices=None) -> Steps:
    """Builds the model, optimiser and schedule from ``config`` and the jitted functions over a
    (seed, data) device mesh (:mod:`deepnmf_jax.parallel`): the state is split over ``seed`` and
    donated, datasets are replicated, the augmented batch is split over ``data``, and metrics come
    back replicated (every process can read them).

    Built once per process for each config that compiles differently: a second run with such a
    config (in a notebook, a test suite, an in-process sweep) reuses the traced and compiled
    functions instead of tracing them again.
    """
    if devices is not None:
        return _build(config, num_classes, image_shape, steps_per_epoch, devices)
    flat = json.loads(config.to_json_best_effort())
    if config.optim.schedule == "plateau":  # num_epochs is the optax schedules' length alone
        flat["num_epochs"] = 1
    for key in _NOT_COMPILED:
        section, _, leaf = key.rpartition(".")
        (flat[section] if section else flat).pop(leaf, None)
    return _build_cached(
        json.dumps(flat, sort_keys=True), num_classes, tuple(image_shape), steps_per_epoch
    )


@functools.lru_cache(maxsize=16)
def _build_cached(config_json: str, num_classes, image_shape, steps_per_epoch) -> Steps:
    config = ml_collections.ConfigDict(json.loads(config_json))
    return _build(config, num_classes, image_shape, steps_per_epoch, None)


def _build(config, num_classes: int, image_shape, steps_per_epoch: int, devices) -> Steps:
    model = model_from_config(config, num_classes, image_shape[-1])
    placement = parallel.Placement.create(config, devices)
    crop = config.augment.crop_size
    ctx = StepContext(
        model=model,
        tx=optim.make_optimizer(config.optim, config.batch_size, model.a_layer == "nmf"),
        schedule=optim.Schedule(
            config.optim, steps_per_epoch, config.num_epochs, config.batch_size
        ),
        loss_fn=functools.partial(
            losses.get_loss(config.loss), label_smoothing=config.label_smoothing
        ),
        augment=augment.AugmentConfig(**config.augment.to_dict()),
        input_shape=(crop, crop, image_shape[-1]),
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        steps_per_epoch=steps_per_epoch,
        ema_decay=config.optim.ema_decay,
        batch_sharding=placement.batch,
    )
    # the training steps' model: the same parameters, model.train_iterations NMF iterations
    fewer = config.model.train_iterations not in (0, config.model.iterations)
    train_ctx = ctx
    if fewer:
        iterations = config.model.train_iterations
        train_model = model_from_config(config, num_classes, image_shape[-1], iterations)
        train_ctx = dataclasses.replace(ctx, model=train_model)
    early_epochs = config.model.train_iterations_epochs if fewer else 0
    over_seeds = placement.over_seeds
    state, repl = placement.seeds, placement.replicated
    per_seed_order = config.data.order == "per_seed"
    order_sharding = state if per_seed_order else repl
    check = config.model.check_inputs

    def jitted(fn, in_axes, in_shardings, out_shardings, donate=()):
        mapped = over_seeds(fn, in_axes)
        if check:  # the NMF layers' checkify checks, raised on the host after each call
            mapped = checkify.checkify(mapped, errors=checkify.user_checks)
            out_shardings = (repl, out_shardings)
        compiled = jax.jit(
            mapped, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate
        )
        return _checked_output(compiled, check)

    def train(context):
        return jitted(
            functools.partial(train_step, context),
            (0, None, None, 0 if per_seed_order else None),
            (state, repl, repl, order_sharding),
            (state, repl),
            donate=0,
        )

    return Steps(
        ctx=ctx,
        init=jitted(functools.partial(init_state, ctx), 0, state, state),
        train=train(ctx if early_epochs else train_ctx),
        predict=jitted(functools.partial(predict, ctx), (0, None), (state, repl), repl),
        end_epoch=jitted(functools.partial(end_epoch, ctx), 0, (state, state), state, donate=0),
        order=jax.jit(epoch_order, static_argnums=(2,), out_shardings=order_sharding),
        placement=placement,
        train_early=train(train_ctx) if early_epochs else None,
        early_epochs=early_epochs,
    )


def _checked_output(compiled, enabled: bool):
    """Splits a checkified function's ``(error, out)`` and raises the error on the host."""
    if not enabled:
        return compiled

    @functools.wraps(compiled)
    def run(*args):
        error, out = compiled(*args)
        error.throw()
        return out

    run._cache_size = compiled._cache_size  # for the no-recompilation tests
    return run
