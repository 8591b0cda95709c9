"""One epoch of training on the host side: the loop over the jitted train step, the running sums of
the epoch's losses and correct predictions, the NaN check, and the progress bar."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from deepnmf_jax.checkpointing import Progress, StopRequest
from deepnmf_jax.errors import NonFiniteLossError
from deepnmf_jax.steps import TrainState

if TYPE_CHECKING:  # pragma: no cover
    from deepnmf_jax import train_lib


class EpochStats(NamedTuple):
    """What :func:`train_epoch` measured: per-seed sums over the steps of the epoch so far (a
    resumed epoch includes the sums saved with its checkpoint)."""

    loss_sum: np.ndarray  # (seeds,) float64: per-batch training losses, each before its update
    correct: np.ndarray  # (seeds,) int64: correct training predictions
    next_step: int  # where the epoch stopped: steps_per_epoch when it is complete
    images_per_s: float  # training throughput of this call, all seeds together
    seconds: float  # training time of the epoch so far, the saved part of a resumed one included


def train_epoch(
    run: train_lib.Run, state: TrainState, progress: Progress, stop: StopRequest
) -> tuple[TrainState, EpochStats]:
    """Runs the remaining steps of epoch ``progress.epoch + 1``; returns early (``next_step`` short
    of the epoch) on a stop request."""
    config, epoch, first = run.config, progress.epoch + 1, progress.step_in_epoch
    images, labels = run.train_arrays
    order = run.steps.order(run.order_keys, epoch, len(run.data.train))
    train = run.steps.train_for(epoch)
    loss_sum = np.asarray(progress.loss_sum, np.float64)
    correct = np.asarray(progress.correct, np.int64)
    start, pending, step = time.perf_counter(), [], first
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=first,
        desc=f"epoch {epoch}/{config.num_epochs}",
        unit="step",
        disable=not config.progress,
        leave=False,
        dynamic_ncols=True,
    )
    with bar:
        while step < run.steps_per_epoch and not (stop.requested and step > first):
            state, metrics = train(state, images, labels, order)
            pending.append(metrics)
            step += 1
            if (
                len(pending) == config.log_every_steps
                or step == run.steps_per_epoch
                or stop.requested
            ):
                fetched = jax.device_get(pending)  # replicated: every process holds all of it
                losses = np.stack([np.asarray(m["loss"], np.float64) for m in fetched])
                _check_finite(losses, epoch, step - len(pending), run.seeds, config)
                loss_sum += losses.sum(0)
                correct += np.stack([np.asarray(m["correct"]) for m in fetched]).sum(0)
                bar.update(len(pending))
                images_done = (step - first) * config.batch_size * len(run.seeds)
                bar.set_postfix(
                    img_s=f"{images_done / (time.perf_counter() - start):.0f}",
                    loss=f"{loss_sum.mean() / (step * config.batch_size):.4f}",
                )
                pending = []
    seconds = time.perf_counter() - start
    images_per_s = (step - first) * config.batch_size * len(run.seeds) / max(seconds, 1e-9)
    return state, EpochStats(loss_sum, correct, step, images_per_s, progress.seconds + seconds)


def _check_finite(
    losses_now: np.ndarray, epoch: int, first_step: int, seeds: list[int], config
) -> None:
    bad = np.argwhere(~np.isfinite(losses_now))
    if bad.size:
        row, column = bad[0]
        raise NonFiniteLossError(
            f"training loss is {losses_now[row, column]} at epoch {epoch}, step "
            f"{first_step + row + 1} (seed {seeds[column]}); stopping. Rerunning the same command "
            "resumes from the last checkpoint with the same data and augmentation, so it would "
            "most likely diverge again: rerun with lower learning rates (they may change on "
            f"resume), e.g. --config.optim.lr_a={config.optim.lr_a / 2:g}, or use another --workdir"
        )
