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

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepnmf_jax.errors import ConfigError

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
