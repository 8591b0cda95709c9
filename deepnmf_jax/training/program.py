"""The jitted, seed-mapped, sharded functions of a run, built once: :func:`build` turns the per-seed
functions of :mod:`deepnmf_jax.training.steps` into a :class:`Program`.

Programs built from a config alone (no ``model=`` object) are cached per process by the config's
compile-relevant keys (:data:`~deepnmf_jax.training.config.NOT_COMPILED_KEYS` are left out): a
second run with such a config in the same process (a notebook, an in-process sweep, a test suite)
reuses the traced and compiled functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
from jax.experimental import checkify

from deepnmf_jax import _schema
from deepnmf_jax.data.augment import preprocess_for_eval
from deepnmf_jax.models import config as model_config
from deepnmf_jax.models import dead_channels, losses, population
from deepnmf_jax.models.inspect import anatomy
from deepnmf_jax.training import optim, parallel
from deepnmf_jax.training.config import NOT_COMPILED_KEYS, TrainConfig, from_any
from deepnmf_jax.training.steps import (
    StepContext,
    end_epoch,
    epoch_order,
    eval_params,
    init_state,
    predict,
    train_step,
)


class Program(NamedTuple):
    """The jitted, sharded functions of one run (all seeds at once) and how its arrays are placed."""

    ctx: StepContext
    init: Callable  # (seed key data (seeds, 2)) -> TrainState
    train: Callable  # (state, images, labels, order) -> (state, metrics per seed)
    predict: Callable  # (state, images) -> (probs (seeds, N, C), dead-channel maxima)
    predict_population: Callable  # (state, images, population) -> the same, population statistics
    moments: Callable  # (state, images of one batch) -> every BatchNorm's (mean, var) per seed
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


def build(
    config: TrainConfig,
    num_classes: int,
    image_shape,
    steps_per_epoch: int,
    devices=None,
    model: nn.Module | None = None,
) -> Program:
    """Builds the model (or takes ``model``), optimiser and schedule, and the jitted functions over
    a (seed, data) device mesh (:mod:`deepnmf_jax.training.parallel`): the state is split over
    ``seed`` and donated, datasets are replicated, the augmented batch is split over ``data``, and
    metrics come back replicated (every process can read them)."""
    if devices is not None or model is not None:
        return _build(config, num_classes, tuple(image_shape), steps_per_epoch, devices, model)
    return _build_cached(compile_key(config), num_classes, tuple(image_shape), steps_per_epoch)


def compile_key(config: TrainConfig) -> str:
    """The config with the keys that leave the compiled functions as they are set to their
    defaults (JSON): configs with the same key compile to the same functions."""
    defaults = {key: _schema.get(TrainConfig(), key) for key in NOT_COMPILED_KEYS}
    if config.optim.schedule == "plateau":  # num_epochs is the optax schedules' length alone
        defaults["num_epochs"] = 1
    return config.replace(defaults).to_json()


@functools.lru_cache(maxsize=16)
def _build_cached(key: str, num_classes, image_shape, steps_per_epoch) -> Program:
    return _build(from_any(json.loads(key)), num_classes, image_shape, steps_per_epoch, None, None)


def _build(config: TrainConfig, num_classes, image_shape, steps_per_epoch, devices, model):
    channels = image_shape[-1]
    crop = config.augment.crop_size
    input_shape = (crop, crop, channels)
    placement = parallel.Placement.create(config, devices)
    # the one training program decides how a CNN a-layer computes (models.config.resolve_patch_conv)
    m = dataclasses.replace(
        config.model,
        patch_conv=model_config.resolve_patch_conv(
            config.model.patch_conv, placement.loop == "map" and config.num_seeds > 1
        ),
    )
    if model is None:
        model = model_config.build(m, num_classes, channels)
    parts = anatomy(model, input_shape)
    ctx = StepContext(
        model=model,
        tx=optim.make_optimizer(config.optim, parts.param_roles(), config.batch_size),
        schedule=optim.Schedule(
            config.optim, steps_per_epoch, config.num_epochs, config.batch_size
        ),
        loss_fn=functools.partial(
            losses.get_loss(config.loss), label_smoothing=config.label_smoothing
        ),
        augment=config.augment,
        input_shape=input_shape,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        steps_per_epoch=steps_per_epoch,
        ema_decay=config.optim.ema_decay,
        running_bn=_keeps_batch_stats(model, input_shape),
        reports_taps=dead_channels.reports_intermediates(model),
        batch_sharding=placement.batch,
    )
    # the training steps' model: the same parameters, model.train_iterations NMF iterations
    fewer = m.is_preset and m.train_iterations not in (0, m.iterations)
    train_ctx = ctx
    if fewer:
        train_model = model_config.build(m, num_classes, channels, m.train_iterations)
        train_ctx = dataclasses.replace(ctx, model=train_model)
    early_epochs = m.train_iterations_epochs if fewer else 0
    over_seeds = placement.over_seeds
    state, repl = placement.seeds, placement.replicated
    per_seed_order = config.data.order == "per_seed"
    order_sharding = state if per_seed_order else repl
    check = m.check_inputs

    def jitted(fn, in_axes, in_shardings, out_shardings, donate=()):
        mapped = over_seeds(fn, in_axes)
        if check:  # the NMF layers' checkify checks, raised on the host after each call
            mapped = checkify.checkify(mapped, errors=checkify.user_checks)
            out_shardings = (repl, out_shardings)
        compiled = jax.jit(
            mapped, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate
        )
        return _checked_output(compiled) if check else compiled

    def train(context):
        return jitted(
            functools.partial(train_step, context),
            (0, None, None, 0 if per_seed_order else None),
            (state, repl, repl, order_sharding),
            (state, repl),
            donate=0,
        )

    def moments(one_state, images):
        variables = {"params": eval_params(ctx, one_state)}
        if ctx.running_bn:
            variables["batch_stats"] = one_state.batch_stats
        batch = preprocess_for_eval(images, crop)
        return population.batch_moments(ctx.model, variables, batch)

    return Program(
        ctx=ctx,
        init=jitted(functools.partial(init_state, ctx), 0, state, state),
        train=train(ctx if early_epochs else train_ctx),
        predict=jitted(functools.partial(predict, ctx), (0, None), (state, repl), repl),
        predict_population=jitted(
            functools.partial(predict, ctx), (0, None, 0), (state, repl, state), repl
        ),
        moments=jitted(moments, (0, None), (state, repl), state),
        end_epoch=jitted(functools.partial(end_epoch, ctx), 0, (state, state), state, donate=0),
        order=jax.jit(epoch_order, static_argnums=(2,), out_shardings=order_sharding),
        placement=placement,
        train_early=train(train_ctx) if early_epochs else None,
        early_epochs=early_epochs,
    )


def _keeps_batch_stats(model: nn.Module, input_shape) -> bool:
    images = jax.ShapeDtypeStruct((2, *input_shape), "float32")
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return bool(shapes.get("batch_stats"))


def _checked_output(compiled):
    """Splits a checkified function's ``(error, out)`` and raises the error on the host."""

    @functools.wraps(compiled)
    def run(*args):
        error, out = compiled(*args)
        error.throw()
        return out

    return run
