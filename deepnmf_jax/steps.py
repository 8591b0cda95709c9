"""The jitted, seed-vmapped, sharded functions of a run: init, train step, evaluation, plateau update.

Every leaf of the :class:`TrainState` has a leading seed axis and the per-seed functions are
``jax.vmap``-ed over it (or run one seed after another with ``lax.map`` on a CPU, ``seed_loop``), so
``config.num_seeds`` replicas train together in one program.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepnmf_jax import augment, losses, models, optim, parallel
from deepnmf_jax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
    """The state of one seed (under vmap) or of all seeds (a leading seed axis on every leaf)."""

    step: jax.Array  # int32: train steps taken
    params: Any
    batch_stats: Any  # {} with the reference's batch-statistics BatchNorm
    opt_state: Any  # Adam per parameter group
    plateau_state: Any  # optax reduce_on_plateau, advanced once per epoch
    augment_key: jax.Array  # raw uint32 key data; step k uses fold_in(key, k)


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
        self.schedule = optim.Schedule(config.optim)

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
        scale = state.plateau_state.scale
        updates = jax.tree_util.tree_map(lambda u: (scale * u).astype(u.dtype), updates)
        trained = (optax.apply_updates(state.params, updates), batch_stats, opt_state)
        # A seed whose learning rates all fell below stop_lr is finished (as its own reference run
        # would be) and its whole state stays frozen while the other seeds go on: parameters,
        # BatchNorm statistics and Adam moments (only the step counter moves).
        finished = self.schedule.finished(scale)
        params, batch_stats, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finished, old, new),
            trained,
            (state.params, state.batch_stats, state.opt_state),
        )
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
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
        return self.schedule.rates(np.max(self.lr_scales(states)))

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
