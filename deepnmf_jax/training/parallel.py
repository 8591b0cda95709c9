"""Devices: a (seed, data) mesh, shardings, global arrays, and multi-process start-up.

The train state has a leading seed axis; it is sharded over the mesh axis ``"seed"`` (each device
group trains its own seeds, with no communication at all). The batch is sharded over ``"data"``
(gradients and BatchNorm statistics are then reduced across those devices by XLA, so BatchNorm still
sees the statistics of the whole batch, as on one device). The same jitted step runs on one CPU, eight
GPUs, or several hosts.

Multi-process runs (``jax.distributed``) start from ``config.distributed`` or, when that is empty,
from the environment: ``JAX_COORDINATOR_ADDRESS`` (host:port), ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``, or a cluster JAX detects by itself (SLURM, Open MPI, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepnmf_jax.errors import ConfigError
from deepnmf_jax.training.config import SEED_LOOPS

log = logging.getLogger(__name__)

SEED_AXIS, DATA_AXIS = "seed", "data"


def _largest_divisor_at_most(value: int, limit: int) -> int:
    return max(d for d in range(1, min(value, limit) + 1) if value % d == 0)


def mesh_shape(num_seeds: int, batch_size: int, num_devices: int, seed_devices=0, data_devices=0):
    """(seed devices, data devices). 0 means automatic: seeds first, then the batch.

    Automatic: the largest divisor of ``num_seeds`` that fits the devices shards the seeds; the rest
    of the devices shard the batch with the largest divisor of ``batch_size`` that fits. Devices that
    divide neither stay unused (e.g. 5 seeds on 8 GPUs use 5).
    """
    if seed_devices < 0 or data_devices < 0:
        raise ConfigError(
            f"mesh sizes must be >= 0 (0: automatic), got {seed_devices}, {data_devices}"
        )
    if not seed_devices:
        seed_devices = _largest_divisor_at_most(num_seeds, num_devices)
    if not data_devices:
        data_devices = _largest_divisor_at_most(batch_size, max(num_devices // seed_devices, 1))
    if num_seeds % seed_devices:
        raise ConfigError(f"{seed_devices} seed devices do not divide num_seeds = {num_seeds}")
    if batch_size % data_devices:
        raise ConfigError(f"{data_devices} data devices do not divide batch_size = {batch_size}")
    if seed_devices * data_devices > num_devices:
        raise ConfigError(
            f"a mesh of {seed_devices} x {data_devices} devices needs more than the {num_devices} available"
        )
    return seed_devices, data_devices


def make_mesh(
    num_seeds: int, batch_size: int, seed_devices=0, data_devices=0, devices=None
) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(num_seeds, batch_size, len(devices), seed_devices, data_devices)
    used = np.array(devices[: shape[0] * shape[1]]).reshape(shape)
    return Mesh(used, (SEED_AXIS, DATA_AXIS))


def sharding(mesh: Mesh, *spec) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(*spec))


def global_array(host_array, target: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (each process places only
    the pieces that belong to its own devices)."""
    host_array = np.asarray(host_array)
    return jax.make_array_from_callback(host_array.shape, target, lambda index: host_array[index])


def is_primary() -> bool:
    """Process 0 writes logs, metrics and results; every process takes part in checkpoints."""
    return jax.process_index() == 0


def maybe_initialize_distributed(distributed_config) -> bool:
    """Starts ``jax.distributed`` if the config or the environment asks for it; returns whether it did.

    Must run before anything touches a JAX device.
    """
    address = distributed_config.coordinator_address or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", ""
    )
    num_processes = distributed_config.num_processes or int(
        os.environ.get("JAX_NUM_PROCESSES", "0")
    )
    process_id = distributed_config.process_id
    if process_id < 0:
        process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if not (address or distributed_config.auto_detect):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(
        coordinator_address=address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
    )
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def seed_loop(choice: str, mesh: Mesh) -> str:
    """``"vmap"`` batches the seeds into one program (the design, and the fast form on GPUs and
    TPUs); ``"map"`` runs them one after another inside the same jitted step (``lax.map``). XLA's CPU
    backend runs the batched NMF matrix products 2-3x slower than the same products one seed at a
    time (measured: a 5-seed CNMF forward 0.86 s vmapped, 0.38 s mapped, 0.067 s for one seed), so
    ``"auto"`` maps on CPU when the seed axis is not split over devices, and vmaps otherwise.
    ``"unroll"`` puts one copy of the step per seed in the program: no loop, so the CNN layers stay
    convolutions (:func:`deepnmf_jax.models.config.resolve_patch_conv`), at a compile time that
    grows with the seed count (``docs/guide/training.md`` has the measurements)."""
    if choice not in SEED_LOOPS:
        raise ConfigError(f"config.seed_loop must be one of {SEED_LOOPS}, got {choice!r}")
    if choice != "auto":
        return choice
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    return "map" if on_cpu and mesh.shape[SEED_AXIS] == 1 else "vmap"


def map_over_seeds(fn, in_axes=0, unroll: bool = False):
    """Like ``jax.vmap(fn, in_axes)`` over a leading seed axis, but the seeds one after another:
    a ``lax.map``, or with ``unroll`` one copy of ``fn`` per seed in the program (no loop; the
    compile grows with the seed count).

    A single seed is called directly (no loop): XLA's CPU backend runs some operations much slower
    inside a loop body (measured: the gradient of a 5x5 convolution 7-12x slower inside a one-trip
    ``lax.map`` than outside it; ``benchmarks/conv_grad_in_loop.py``).
    """

    def mapped(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)

        def call(per_seed):
            remaining = iter(per_seed)
            return fn(
                *(next(remaining) if axis == 0 else a for a, axis in zip(args, axes, strict=True))
            )

        per_seed = tuple(arg for arg, axis in zip(args, axes, strict=True) if axis == 0)
        num_seeds = jax.tree_util.tree_leaves(per_seed)[0].shape[0]
        if num_seeds == 1 or unroll:
            outs = [
                call(jax.tree_util.tree_map(lambda a, k=k: a[k], per_seed))
                for k in range(num_seeds)
            ]
            return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *outs)
        return jax.lax.map(call, per_seed)

    return mapped


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's arrays live: the (seed, data) mesh, its shardings, and how the per-seed
    functions run over the seed axis (``config.seed_loop``)."""

    mesh: Mesh
    loop: str  # "vmap" or "map"

    @classmethod
    def create(cls, config, devices=None) -> Placement:
        mesh = make_mesh(
            config.num_seeds,
            config.batch_size,
            config.mesh.seed_devices,
            config.mesh.data_devices,
            devices,
        )
        return cls(mesh, seed_loop(config.seed_loop, mesh))

    @property
    def replicated(self) -> NamedSharding:
        return sharding(self.mesh)

    @property
    def seeds(self) -> NamedSharding:
        """The leading (seed) axis split over the mesh axis ``seed``."""
        return sharding(self.mesh, SEED_AXIS)

    @property
    def batch(self) -> NamedSharding:
        """A batch split over the mesh axis ``data``."""
        return sharding(self.mesh, DATA_AXIS)

    def over_seeds(self, fn, in_axes=0):
        """``fn`` of one seed as a function of all seeds (the arguments at ``in_axes`` 0)."""
        if self.loop in ("map", "unroll"):
            return map_over_seeds(fn, in_axes, unroll=self.loop == "unroll")
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=SEED_AXIS)

    def put(self, host_array, target: NamedSharding | None = None) -> jax.Array:
        """A host array (the same in every process) as a global array, replicated by default."""
        return global_array(host_array, target or self.replicated)

    def put_tree(self, tree, target: NamedSharding | None = None):
        """Every host array of ``tree`` placed as :meth:`put` places one."""
        return jax.tree_util.tree_map(lambda leaf: self.put(leaf, target), tree)

    def fetch(self, tree):
        """Device values (possibly spread over processes) as host numpy arrays."""
        if jax.process_count() > 1:  # another process holds some shards: replicate first
            tree = _gather(tree, self.replicated)
        return jax.device_get(tree)

    def seed_keys(self, seeds: list[int]) -> jax.Array:
        """Each seed's raw key data, split over the seed axis."""
        return self.put(_key_data([jax.random.key(s) for s in seeds]), self.seeds)

    def order_keys(self, data_config, seeds: list[int]) -> jax.Array:
        """The data-order key: one for every seed (``data.order="fixed"``, the reference) or one
        per seed (``"per_seed"``)."""
        if data_config.order == "fixed":
            return self.put(_key_data([jax.random.key(data_config.order_seed)])[0])
        keys = [jax.random.fold_in(jax.random.key(s), 0x0D0E) for s in seeds]
        return self.put(_key_data(keys), self.seeds)


def _key_data(keys) -> np.ndarray:
    return np.stack([np.asarray(jax.random.key_data(k)) for k in keys])


@functools.partial(jax.jit, static_argnums=1)
def _gather(tree, target):
    """Every array of ``tree`` replicated (so that each process can read all of it)."""
    return jax.lax.with_sharding_constraint(tree, target)
