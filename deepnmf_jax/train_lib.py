"""Training and evaluation of several seeds at once: ``train_and_evaluate(config, workdir)``.

Every leaf of the train state has a leading seed axis and the train and eval steps are ``jax.vmap``-ed
over it, so ``config.num_seeds`` replicas (seeds ``config.seed + k``) train together: each with its
own initialisation and augmentation stream, all on the same data order unless
``config.data.order = "per_seed"``. The recipe is the reference's (spec section 3): batch 50,
augmentation inside the jitted step, Adam per parameter group, reduce-on-plateau on the summed
training loss once per epoch, stop when every learning rate is below ``config.optim.stop_lr`` or after
``config.num_epochs`` epochs. The test set is evaluated after every epoch, in order, in batches of
``config.eval_batch_size`` (BatchNorm uses batch statistics in evaluation too, by default).

A run is resumable: checkpoints are written every ``config.checkpoint_every_epochs`` epochs and on
Ctrl-C or SIGTERM (mid-epoch, with the position in the epoch); rerunning with the same ``workdir``
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from tqdm import tqdm

import deepnmf_jax
from deepnmf_jax import (
    augment,
    checkpointing,
    input_pipeline,
    losses,
    models,
    optim,
    parallel,
    reporting,
)

log = logging.getLogger(__name__)

DATA_ORDERS = ("fixed", "per_seed")


class TrainingInterrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM after saving a checkpoint."""


class ConfigError(ValueError):
    """The configuration is invalid, or does not match the run being resumed."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
    """The state of one seed (under vmap) or of all seeds (a leading seed axis on every leaf)."""

    step: jax.Array  # int32: train steps taken
    params: Any
    batch_stats: Any  # {} with the reference's batch-statistics BatchNorm
    opt_state: Any  # Adam per parameter group
    plateau_state: Any  # optax reduce_on_plateau, advanced once per epoch
    augment_key: jax.Array  # raw uint32 key data; step k uses fold_in(key, k)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the choices that the config's types cannot, with messages that name the bad value."""

    def choose(value, allowed, name):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {tuple(allowed)}, got {value!r}")

    choose(config.model.name, models.PAPER_MODELS, "config.model.name")
    choose(config.model.gradient, deepnmf_jax.nmf.GRADIENT_MODES, "config.model.gradient")
    choose(config.model.batch_norm, ("batch", "running"), "config.model.batch_norm")
    choose(config.model.precision, deepnmf_jax.nmf.PRECISIONS, "config.model.precision")
    choose(
        config.model.patch_conv, deepnmf_jax.layers.PATCH_CONV_METHODS, "config.model.patch_conv"
    )
    choose(config.data.name, input_pipeline.DATASETS, "config.data.name")
    choose(config.data.source, input_pipeline.SOURCES, "config.data.source")
    choose(config.data.order, DATA_ORDERS, "config.data.order")
    choose(config.loss, losses.LOSSES, "config.loss")
    choose(config.augment.granularity, augment.GRANULARITIES, "config.augment.granularity")
    for name in (
        "num_seeds",
        "num_epochs",
        "batch_size",
        "eval_batch_size",
        "checkpoint_every_epochs",
    ):
        if config[name] < 1:
            raise ConfigError(f"config.{name} must be >= 1, got {config[name]}")


def _augment_config(config) -> augment.AugmentConfig:
    return augment.AugmentConfig(**config.augment.to_dict())


class Trainer:
    """The jitted, seed-vmapped, sharded functions of one run.

    Shardings (:mod:`deepnmf_jax.parallel`): every state leaf is split over the mesh axis ``"seed"``
    along its leading seed axis; the datasets are replicated on every device; inside the train step the
    augmented batch is split over ``"data"``. Metrics come back replicated, so every process can read
    them.
    """

    def __init__(self, config, num_classes: int, image_shape, steps_per_epoch: int, devices=None):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.model = models.build_model(
            config.model.name,
            width=config.model.width,
            groups=config.model.groups,
            num_classes=num_classes,
            iterations=config.model.iterations,
            epsilon=config.model.epsilon,
            gradient=config.model.gradient,
            remat=config.model.remat,
            batch_norm=config.model.batch_norm,
            chunk_bytes=config.model.chunk_bytes,
            precision=config.model.precision,
            patch_conv=config.model.patch_conv,
        )
        self.input_shape = (config.augment.crop_size, config.augment.crop_size, image_shape[-1])
        self.augment = _augment_config(config)
        self.tx = optim.make_optimizer(config.optim)
        self.plateau = optim.make_plateau(config.optim)
        self.loss_fn = losses.get_loss(config.loss)
        self.running_bn = config.model.batch_norm == "running"
        self.largest_base_lr = max(optim.group_learning_rates(config.optim).values())

        self.mesh = parallel.make_mesh(
            config.num_seeds,
            config.batch_size,
            config.mesh.seed_devices,
            config.mesh.data_devices,
            devices,
        )
        self.replicated = parallel.sharding(self.mesh)
        self.seed_sharded = parallel.sharding(self.mesh, parallel.SEED_AXIS)
        self.batch_sharded = parallel.sharding(self.mesh, parallel.DATA_AXIS)
        per_seed_order = config.data.order == "per_seed"
        self.order_sharding = self.seed_sharded if per_seed_order else self.replicated

        self.seed_loop = _seed_loop(config.seed_loop, self.mesh)

        def seed_vmap(fn, in_axes=0):
            if self.seed_loop == "map":
                return _map_over_seeds(fn, in_axes)
            return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=parallel.SEED_AXIS)

        state, repl = self.seed_sharded, self.replicated
        self.init = jax.jit(seed_vmap(self._init_one), in_shardings=state, out_shardings=state)
        self.train_step = jax.jit(
            seed_vmap(self._train_step_one, (0, None, None, 0 if per_seed_order else None)),
            in_shardings=(state, repl, repl, self.order_sharding),
            out_shardings=(state, repl),
            donate_argnums=0,
        )
        self.eval_all = jax.jit(
            seed_vmap(self._eval_all_one, (0, None, None)),
            in_shardings=(state, repl, repl),
            out_shardings=repl,
        )
        self.update_plateau = jax.jit(
            seed_vmap(self._update_plateau_one),
            in_shardings=(state, state),
            out_shardings=state,
            donate_argnums=0,
        )
        self.epoch_order = jax.jit(
            self._epoch_order, static_argnums=(2,), out_shardings=self.order_sharding
        )
        self._gather = jax.jit(lambda x: x, out_shardings=repl)

    # --- per-seed functions (vmapped above) ------------------------------------------------------

    def _init_one(self, seed_key_data):
        init_key, augment_key = jax.random.split(jax.random.wrap_key_data(seed_key_data), 2)
        images = jnp.zeros((2, *self.input_shape), jnp.float32)
        variables = self.model.init(init_key, images, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
            plateau_state=self.plateau.init(params),
            augment_key=jax.random.key_data(augment_key),
        )

    def _apply(self, params, batch_stats, images, train):
        variables = {"params": params}
        if not self.running_bn:
            return self.model.apply(variables, images, train=train), batch_stats
        variables["batch_stats"] = batch_stats
        if not train:
            return self.model.apply(variables, images, train=False), batch_stats
        probs, updates = self.model.apply(variables, images, train=True, mutable=["batch_stats"])
        return probs, updates["batch_stats"]

    def _train_step_one(self, state: TrainState, images, labels, order):
        batch_size = self.config.batch_size
        step_in_epoch = state.step % self.steps_per_epoch  # no host scalar per step
        index = jax.lax.dynamic_slice(order, (step_in_epoch * batch_size,), (batch_size,))
        key = jax.random.fold_in(jax.random.wrap_key_data(state.augment_key), state.step)
        batch = augment.preprocess_for_train(images[index], key, self.augment)
        batch = jax.lax.with_sharding_constraint(batch, self.batch_sharded)
        batch_labels = jax.lax.with_sharding_constraint(labels[index], self.batch_sharded)

        def objective(params):
            probs, batch_stats = self._apply(params, state.batch_stats, batch, train=True)
            return self.loss_fn(probs, batch_labels), (probs, batch_stats)

        (loss, (probs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        # The plateau scale; a seed whose learning rates all fell below stop_lr is finished (as its
        # own reference run would be) and stays frozen while the other seeds go on.
        scale = state.plateau_state.scale
        scale = jnp.where(scale * self.largest_base_lr < self.config.optim.stop_lr, 0.0, scale)
        updates = jax.tree_util.tree_map(lambda u: (scale * u).astype(u.dtype), updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        correct = jnp.sum(jnp.argmax(probs, -1).astype(batch_labels.dtype) == batch_labels)
        return new_state, {"loss": loss, "correct": correct}

    def _correct(self, state: TrainState, images, labels):
        batch = augment.preprocess_for_eval(images, self.config.augment.crop_size)
        probs, _ = self._apply(state.params, state.batch_stats, batch, train=False)
        return jnp.sum(jnp.argmax(probs, -1).astype(labels.dtype) == labels)

    def _eval_all_one(self, state: TrainState, images, labels):
        """Correct predictions on a whole split, in order, in batches of ``eval_batch_size``."""
        batch_size = self.config.eval_batch_size
        full = (images.shape[0] // batch_size) * batch_size
        batched = (
            images[:full].reshape(-1, batch_size, *images.shape[1:]),
            labels[:full].reshape(-1, batch_size),
        )
        correct = jnp.sum(jax.lax.map(lambda b: self._correct(state, *b), batched))
        if full < images.shape[0]:  # the last, smaller batch (BatchNorm statistics over it alone)
            correct = correct + self._correct(state, images[full:], labels[full:])
        return correct

    def _update_plateau_one(self, state: TrainState, epoch_loss):
        plateau_state = optim.plateau_update(self.plateau, state.plateau_state, epoch_loss)
        return state.replace(plateau_state=plateau_state)

    def _epoch_order(self, order_keys, epoch, num_examples):
        def one(key_data):
            return jax.random.permutation(
                jax.random.fold_in(jax.random.wrap_key_data(key_data), epoch), num_examples
            )

        return jax.vmap(one)(order_keys) if order_keys.ndim == 2 else one(order_keys)

    # --- host-side helpers -----------------------------------------------------------------------

    def put(self, host_array, target=None) -> jax.Array:
        """A host array (the same in every process) as a global array, replicated by default."""
        return parallel.global_array(host_array, target or self.replicated)

    def seed_keys(self, seeds: list[int]) -> jax.Array:
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in seeds])
        return self.put(keys, self.seed_sharded)

    def order_keys(self, seeds: list[int]) -> jax.Array:
        if self.config.data.order == "fixed":
            return self.put(jax.random.key_data(jax.random.key(self.config.data.order_seed)))
        keys = [jax.random.fold_in(jax.random.key(s), 0x0D0E) for s in seeds]
        return self.put(
            np.stack([np.asarray(jax.random.key_data(k)) for k in keys]), self.seed_sharded
        )

    def fetch(self, tree):
        """Device values (possibly spread over processes) as host numpy arrays."""
        return jax.device_get(self._gather(tree))

    def lr_scales(self, states: TrainState) -> np.ndarray:
        """Each seed's plateau scale (its learning rates are the base rates times it)."""
        return np.asarray(self.fetch(states.plateau_state.scale), np.float64)

    def learning_rates(self, states: TrainState) -> dict[str, float]:
        """Each group's learning rate for the seed with the largest scale (every seed has its own
        schedule, driven by its own loss)."""
        scale = float(np.max(self.lr_scales(states)))
        return {g: lr * scale for g, lr in optim.group_learning_rates(self.config.optim).items()}

    def evaluate(self, states: TrainState, images: jax.Array, labels: jax.Array) -> np.ndarray:
        """Accuracy per seed on a split already on the devices."""
        return np.asarray(jax.device_get(self.eval_all(states, images, labels))) / images.shape[0]


SEED_LOOPS = ("auto", "vmap", "map")


def _seed_loop(choice: str, mesh) -> str:
    """``"vmap"`` batches the seeds into one program (the design, and the fast form on GPUs and
    TPUs); ``"map"`` runs them one after another inside the same jitted step (``lax.map``). XLA's CPU
    backend runs the batched NMF matrix products 2-3x slower than the same products one seed at a
    time (measured: a 5-seed CNMF forward 0.86 s vmapped, 0.38 s mapped, 0.067 s for one seed), so
    ``"auto"`` maps on CPU when the seed axis is not split over devices, and vmaps otherwise."""
    if choice not in SEED_LOOPS:
        raise ConfigError(f"config.seed_loop must be one of {SEED_LOOPS}, got {choice!r}")
    if choice != "auto":
        return choice
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    return "map" if on_cpu and mesh.shape[parallel.SEED_AXIS] == 1 else "vmap"


def _map_over_seeds(fn, in_axes=0):
    """Like ``jax.vmap(fn, in_axes)`` over a leading seed axis, but a sequential ``lax.map``.

    A single seed is called directly (no loop): XLA's CPU backend runs some operations much slower
    inside a loop body (measured: the gradient of a 5x5 convolution 7-12x slower inside a one-trip
    ``lax.map`` than outside it).
    """

    def mapped(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        per_seed = tuple(arg for arg, axis in zip(args, axes, strict=True) if axis == 0)
        if jax.tree_util.tree_leaves(per_seed)[0].shape[0] == 1:
            squeezed = iter(jax.tree_util.tree_map(lambda a: a[0], per_seed))
            out = fn(
                *(next(squeezed) if axis == 0 else a for a, axis in zip(args, axes, strict=True))
            )
            return jax.tree_util.tree_map(lambda a: a[None], out)

        def body(seed_args):
            remaining = iter(seed_args)
            return fn(
                *(
                    next(remaining) if axis == 0 else arg
                    for arg, axis in zip(args, axes, strict=True)
                )
            )

        return jax.lax.map(body, per_seed)

    return mapped


@dataclasses.dataclass
class _Progress:
    """Where the run is: completed epochs, position in the current epoch and its running sums."""

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: list[float] | None = None
    correct: list[int] | None = None
    best_mean_accuracy: float = -1.0
    finished: bool = False
    stopped_because: str | None = None


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self):
        self.requested = None

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        tqdm.write(f"{self.requested} received: saving a checkpoint and stopping ...")

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, self._handler)
        except ValueError:  # not the main thread: no signal handling
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# Keys that may change between a run and its resumption (where the data comes from, how the run
# reports, how long it goes on).
_RESUMABLE_KEYS = {
    "num_epochs",
    "progress",
    "tensorboard",
    "log_every_steps",
    "checkpoint_every_epochs",
    "data.source",
    "data.data_dir",
    "data.cache_dir",
    "data.download_url",
    "seed_loop",  # vmap or map: the same computation
    "model.chunk_bytes",  # the same computation in other pieces (float rounding aside)
    "model.patch_conv",  # likewise
    "mesh.seed_devices",  # a run may resume on other devices: orbax reshards the checkpoint
    "mesh.data_devices",
    "distributed.coordinator_address",
    "distributed.num_processes",
    "distributed.process_id",
    "distributed.auto_detect",
}


def _check_config_matches(workdir: pathlib.Path, config, write: bool = True) -> None:
    path = workdir / "config.json"
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        saved = json.loads(path.read_text())
        saved = traverse_util.flatten_dict(saved, sep=".")
        current_flat = traverse_util.flatten_dict(current, sep=".")
        differ = sorted(
            k
            for k in saved.keys() | current_flat.keys()
            if k not in _RESUMABLE_KEYS and saved.get(k) != current_flat.get(k)
        )
        if differ:
            raise ConfigError(
                f"{workdir} holds a run with a different configuration (keys {differ}); resume "
                "with the same configuration or use another --workdir"
            )
    if write:
        path.write_text(json.dumps(current, indent=2, sort_keys=True))


def _load_data(config) -> input_pipeline.Dataset:
    data = input_pipeline.load_dataset(
        config.data.name,
        source=config.data.source,
        data_dir=config.data.data_dir or None,
        cache_dir=config.data.cache_dir,
        download_url=config.data.download_url or None,
        progress=config.progress,
    )
    return dataclasses.replace(
        data,
        train=data.train.take(config.data.train_limit),
        test=data.test.take(config.data.test_limit),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> dict | None:
    """Trains ``config.num_seeds`` seeds of ``config.model.name`` and returns the results dict.

    Writes to ``workdir``: ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``tensorboard/``, ``checkpoints/`` and ``best/``, and at the end ``results.json`` and
    ``learning_curves.png``. Rerunning with the same ``workdir`` resumes. In a multi-process run
    every process calls this; process 0 writes the logs and results and returns them, the others
    return None.

    Raises:
      TrainingInterrupted: Ctrl-C or SIGTERM; a checkpoint was saved first.
      NonFiniteLossError: the loss became NaN or inf (the message names the epoch and step).
      ConfigError: an invalid config, or one that differs from the run in ``workdir``.
    """
    validate_config(config)
    parallel.maybe_initialize_distributed(config.distributed)
    if not parallel.is_primary():
        log.setLevel(logging.WARNING)  # process 0 reports for everyone
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_config_matches(workdir, config, write=parallel.is_primary())
    data = _load_data(config)
    run = _Run(config, workdir, data)
    try:
        with run.stop.installed():
            while not run.progress.finished and run.progress.epoch < config.num_epochs:
                run.train_epoch()
                run.end_epoch()
    finally:
        run.close()
    return _finish(config, workdir, data, run.seeds, run.progress)


class _Run:
    """One training run's mutable state: the seed-stacked train state and where the run is."""

    def __init__(self, config, workdir: pathlib.Path, data: input_pipeline.Dataset):
        self.config, self.workdir, self.data = config, workdir, data
        self.steps_per_epoch = len(data.train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{len(data.train)} training images are fewer than one batch of {config.batch_size}"
            )
        log.info(
            "%s: %d train / %d test images from %s; %d steps per epoch; devices %s",
            data.name,
            len(data.train),
            len(data.test),
            data.source,
            self.steps_per_epoch,
            jax.devices(),
        )
        self.trainer = Trainer(
            config, data.num_classes, data.train.images.shape[1:], self.steps_per_epoch
        )
        self.seeds = [config.seed + k for k in range(config.num_seeds)]
        self.states = self.trainer.init(self.trainer.seed_keys(self.seeds))
        log.info(
            "model %s: %d parameters per seed",
            config.model.name,
            models.count_params(self.states.params) // len(self.seeds),
        )
        self.checkpoints = checkpointing.Checkpoints(workdir)
        self.progress = _Progress(loss_sum=[0.0] * len(self.seeds), correct=[0] * len(self.seeds))
        restored = self.checkpoints.restore_latest(checkpointing.abstract_like(self.states))
        if restored is not None:
            self.states, meta = restored
            self.progress = _Progress(**meta["progress"])
            log.info(
                "resumed from epoch %d, step %d of the next epoch",
                self.progress.epoch,
                self.progress.step_in_epoch,
            )
        reporting.truncate_history(
            workdir, self.progress.epoch
        )  # epochs logged after the checkpoint
        self.primary = parallel.is_primary()
        self.writer = reporting.MetricsWriter(
            workdir, enabled=self.primary, tensorboard=config.tensorboard
        )
        # Each split lives on the devices as uint8 (and int32 labels), placed once.
        self.train_images = self.trainer.put(data.train.images)
        self.train_labels = self.trainer.put(data.train.labels)
        self.test_images = self.trainer.put(data.test.images)
        self.test_labels = self.trainer.put(data.test.labels)
        self.order_keys = self.trainer.order_keys(self.seeds)
        self.stop = _StopRequest()

    def train_epoch(self) -> None:
        """Runs the remaining steps of the next epoch; on a stop request saves and raises."""
        config, progress = self.config, self.progress
        epoch, first_step = progress.epoch + 1, progress.step_in_epoch
        self.learning_rates = self.trainer.learning_rates(self.states)
        self.lr_scales = self.trainer.lr_scales(self.states)
        order = self.trainer.epoch_order(self.order_keys, epoch, len(self.data.train))
        self.start_time = time.perf_counter()
        self.loss_sum = np.asarray(progress.loss_sum, np.float64)
        self.correct = np.asarray(progress.correct, np.int64)
        pending = []
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=first_step,
            desc=f"epoch {epoch}/{config.num_epochs}",
            unit="step",
            disable=not config.progress,
            leave=False,
            dynamic_ncols=True,
        )
        with bar:
            for step in range(first_step, self.steps_per_epoch):
                self.states, metrics = self.trainer.train_step(
                    self.states, self.train_images, self.train_labels, order
                )
                pending.append(metrics)
                last = step == self.steps_per_epoch - 1
                if len(pending) == config.log_every_steps or last or self.stop.requested:
                    self._collect(pending, epoch, step + 1 - len(pending))
                    bar.update(len(pending))
                    images = (step + 1 - first_step) * config.batch_size * len(self.seeds)
                    bar.set_postfix(
                        img_s=f"{images / (time.perf_counter() - self.start_time):.0f}",
                        loss=f"{self.loss_sum.mean() / ((step + 1) * config.batch_size):.4f}",
                    )
                    pending = []
                if self.stop.requested and not last:
                    self.progress = dataclasses.replace(
                        progress,
                        step_in_epoch=step + 1,
                        loss_sum=self.loss_sum.tolist(),
                        correct=self.correct.tolist(),
                    )
                    self._save(epoch - 1)
                    raise TrainingInterrupted(
                        f"stopped by {self.stop.requested} at epoch {epoch}, step "
                        f"{step + 1}/{self.steps_per_epoch}; checkpoint saved in {self.workdir}: "
                        "rerun the same command to resume"
                    )
        self.train_images_per_s = (
            (self.steps_per_epoch - first_step)
            * config.batch_size
            * len(self.seeds)
            / (time.perf_counter() - self.start_time)
        )

    def _collect(self, pending, epoch, first_step) -> None:
        fetched = self.trainer.fetch(pending)
        losses_now = np.stack([np.asarray(m["loss"], np.float64) for m in fetched])
        _check_finite(losses_now, epoch, first_step, self.seeds)
        self.loss_sum += losses_now.sum(0)
        self.correct += np.stack([np.asarray(m["correct"]) for m in fetched]).sum(0)

    def end_epoch(self) -> None:
        """Evaluates, advances the schedule, decides whether to stop, saves, logs."""
        config, seeds = self.config, self.seeds
        epoch = self.progress.epoch + 1
        test_accuracy = self.trainer.evaluate(self.states, self.test_images, self.test_labels)
        epoch_loss = self.trainer.put(self.loss_sum.astype(np.float32), self.trainer.seed_sharded)
        self.states = self.trainer.update_plateau(self.states, epoch_loss)
        num_train = self.steps_per_epoch * config.batch_size
        record = {
            "epoch": epoch,
            "train_loss": (self.loss_sum / num_train).tolist(),
            "train_loss_sum": self.loss_sum.tolist(),
            "train_accuracy": (self.correct / num_train).tolist(),
            "test_accuracy": test_accuracy.tolist(),
            "learning_rates": self.learning_rates,
            "lr_scale": self.lr_scales.tolist(),
            "epoch_time_s": time.perf_counter() - self.start_time,
            "train_images_per_s": self.train_images_per_s,
        }
        mean_accuracy = float(np.mean(test_accuracy))
        is_best = mean_accuracy > self.progress.best_mean_accuracy
        stopped_because = None
        if max(self.trainer.learning_rates(self.states).values()) < config.optim.stop_lr:
            stopped_because = f"every learning rate below {config.optim.stop_lr:g}"
        elif epoch == config.num_epochs:
            stopped_because = f"num_epochs = {config.num_epochs} reached"
        self.progress = _Progress(
            epoch=epoch,
            loss_sum=[0.0] * len(seeds),
            correct=[0] * len(seeds),
            best_mean_accuracy=max(mean_accuracy, self.progress.best_mean_accuracy),
            finished=stopped_because is not None and stopped_because.startswith("every"),
            stopped_because=stopped_because,
        )
        if (
            epoch % config.checkpoint_every_epochs == 0
            or stopped_because
            or self.stop.requested
            or is_best
        ):
            self._save(epoch, best=is_best)
        self.writer.write(record)  # after the save: a logged epoch is always a resumable one
        log.info(
            "epoch %d: train loss %.4f, train acc %.2f %%, test acc %.2f +/- %.2f %% over %d "
            "seeds, lr %s, %.1f s",
            epoch,
            float(np.mean(record["train_loss"])),
            100 * float(np.mean(record["train_accuracy"])),
            100 * mean_accuracy,
            100 * reporting.mean_std(test_accuracy)["std"],
            len(seeds),
            ", ".join(f"{g} {lr:.3g}" for g, lr in self.learning_rates.items()),
            record["epoch_time_s"],
        )
        if self.stop.requested:
            raise TrainingInterrupted(
                f"stopped by {self.stop.requested} after epoch {epoch}; checkpoint saved in "
                f"{self.workdir}: rerun the same command to resume"
            )

    def _save(self, epoch: int, best: bool = False) -> None:
        step = epoch * self.steps_per_epoch + self.progress.step_in_epoch
        meta = {"progress": dataclasses.asdict(self.progress), "version": deepnmf_jax.__version__}
        self.checkpoints.save(step, self.states, meta, best=best)

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.writer.close()


def _check_finite(losses_now: np.ndarray, epoch: int, first_step: int, seeds: list[int]) -> None:
    bad = np.argwhere(~np.isfinite(losses_now))
    if bad.size:
        row, column = bad[0]
        raise NonFiniteLossError(
            f"training loss is {losses_now[row, column]} at epoch {epoch}, step {first_step + row + 1} "
            f"(seed {seeds[column]}); stopping. Rerunning resumes from the last checkpoint."
        )


def _finish(config, workdir: pathlib.Path, data, seeds, progress: _Progress) -> dict | None:
    """Writes results.json and the learning curves (process 0 only; the others return None)."""
    if not parallel.is_primary():
        return None
    history = reporting.read_history(workdir)
    if not history:
        raise RuntimeError(f"{workdir} has no metrics to report")
    results = {
        "model": config.model.name,
        "config": json.loads(config.to_json_best_effort()),
        "version": deepnmf_jax.__version__,
        "git_commit": reporting.git_commit(pathlib.Path(__file__).resolve().parent),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "train_size": len(data.train),
            "test_size": len(data.test),
        },
        "epochs_completed": progress.epoch,
        "stopped_because": progress.stopped_because or "unknown",
        **reporting.summarize(
            history,
            seeds,
            config.optim.stop_lr / max(optim.group_learning_rates(config.optim).values()),
        ),
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    reporting.plot_learning_curves(
        history, workdir / "learning_curves.png", title=f"{config.model.name} on {data.name}"
    )
    log.info("%s", reporting.format_summary(results))
    return results
