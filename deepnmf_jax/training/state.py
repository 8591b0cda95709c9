"""A run's state: the seed-stacked :class:`TrainState` on the devices, and on the host where the run
is (:class:`Progress`) and what an epoch measured (:class:`EpochStats`)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import struct


@struct.dataclass
class TrainState:
    """The state of one seed (under vmap) or of all seeds (a leading seed axis on every leaf)."""

    step: jax.Array  # int32: train steps taken
    params: Any
    batch_stats: Any  # {} unless the model keeps running BatchNorm statistics
    opt_state: Any  # Adam per parameter group
    plateau_state: Any  # optax reduce_on_plateau, advanced once per epoch
    augment_key: jax.Array  # raw uint32 key data; step k uses fold_in(key, k)
    ema_params: Any  # {} unless optim.ema_decay > 0: the parameters evaluation uses


class EpochStats(NamedTuple):
    """What an epoch's training measured: per-seed sums over its steps so far (a resumed epoch
    includes the sums saved with its checkpoint)."""

    loss_sum: np.ndarray  # (seeds,) float64: per-batch training losses, each before its update
    correct: np.ndarray  # (seeds,) int64: correct training predictions
    next_step: int  # where the epoch stopped: steps_per_epoch when it is complete
    images_per_s: float  # training throughput of this call, all seeds together
    seconds: float  # training time of the epoch so far, the saved part of a resumed one included


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run is: completed epochs, the position in the current epoch and its running sums,
    the best selection accuracy so far, and whether (and why) it has finished."""

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: list[float] | None = None  # per seed, over the current epoch's steps so far
    correct: list[int] | None = None
    # training seconds of the current epoch so far: a resumed epoch's time counts them too
    seconds: float = 0.0
    best_mean_accuracy: float = -1.0  # mean over seeds, on validation (else test) accuracy
    finished: bool = False
    stopped_because: str | None = None
    # before training, {metric: dead channels per seed} (deepnmf_jax.models.dead_channels.counts)
    dead_channels_at_init: dict[str, list[int]] | None = None
    # seconds spent compiling (the first step of each process), kept apart from training time
    compile_seconds: float = 0.0

    @classmethod
    def start(cls, num_seeds: int) -> Progress:
        return cls(loss_sum=[0.0] * num_seeds, correct=[0] * num_seeds)

    def within_epoch(self, stats: EpochStats) -> Progress:
        """Mid-epoch, after the steps that ``stats`` counted."""
        return dataclasses.replace(
            self,
            step_in_epoch=stats.next_step,
            loss_sum=[float(v) for v in stats.loss_sum],
            correct=[int(v) for v in stats.correct],
            seconds=float(stats.seconds),
        )

    def after_epoch(self, epoch, selection, finished, stopped_because) -> Progress:
        return dataclasses.replace(
            Progress.start(len(self.loss_sum or [])),
            epoch=epoch,
            best_mean_accuracy=max(selection, self.best_mean_accuracy),
            finished=finished,
            stopped_because=stopped_because,
            dead_channels_at_init=self.dead_channels_at_init,
            compile_seconds=self.compile_seconds,
        )
