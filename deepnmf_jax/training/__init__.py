"""The trainer: ``train_and_evaluate(config, workdir, model=None)``, its typed config, the optimiser
and schedule, checkpoints, and the per-seed steps compiled into one seed-mapped program."""

from deepnmf_jax.training import checkpoint, optim, parallel, population_stats, report, workdir
from deepnmf_jax.training.config import (
    DistributedConfig,
    MeshConfig,
    OptimConfig,
    TrainConfig,
    from_any,
)
from deepnmf_jax.training.loop import train_and_evaluate
from deepnmf_jax.training.program import Program
from deepnmf_jax.training.signals import StopRequest
from deepnmf_jax.training.state import EpochStats, Progress, TrainState

__all__ = [
    "DistributedConfig",
    "EpochStats",
    "MeshConfig",
    "OptimConfig",
    "Program",
    "Progress",
    "StopRequest",
    "TrainConfig",
    "TrainState",
    "checkpoint",
    "from_any",
    "optim",
    "parallel",
    "population_stats",
    "report",
    "train_and_evaluate",
    "workdir",
]
