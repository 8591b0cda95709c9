"""Training and evaluation of several seeds at once: ``train_and_evaluate(config, workdir)``.

Every leaf of the train state has a leading seed axis and the steps run over it, so
``config.num_seeds`` replicas (seeds ``config.seed + k``) train together, each with its own
initialisation and augmentation stream. The default recipe is the reference's: batch 50,
augmentation inside the jitted step, Adam per parameter group, reduce-on-plateau on the summed
training loss once per epoch, stop when every learning rate is below ``optim.stop_lr`` or after
``num_epochs``. The test set (and the validation split, if any) is evaluated after every epoch.

The loop is plain data flow: :func:`train_epoch` returns the new state and its
:class:`~deepnmf_jax.training.state.EpochStats`, :func:`end_epoch` evaluates and returns the new
state, progress and record. Checkpoints are written every ``checkpoint_every_epochs`` epochs and
on Ctrl-C or SIGTERM (mid-epoch, with the position in the epoch); rerunning with the same
``workdir`` continues exactly. A Ctrl-C before the first step (loading, compiling, counting dead
channels) stops at once: there is nothing to save yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from deepnmf_jax._progress import progress_bar
from deepnmf_jax.data.pipeline import load_for_config
from deepnmf_jax.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from deepnmf_jax.models import dead_channels
from deepnmf_jax.training import checkpoint, parallel, population_stats, report, session
from deepnmf_jax.training import workdir as workdir_lib
from deepnmf_jax.training.checks import build_checked, check_data
from deepnmf_jax.training.config import TrainConfig, from_any
from deepnmf_jax.training.signals import StopRequest
from deepnmf_jax.training.state import EpochStats, Progress

log = logging.getLogger(__name__)

PAPER_ITERATIONS = 20


def train_and_evaluate(
    config: Any,
    workdir: str | pathlib.Path,
    model: nn.Module | None = None,
    *,
    restart_from: str | None = None,
    title: str | None = None,
) -> dict | None:
    """Trains ``config.num_seeds`` seeds and returns the results dict.

    Args:
      config: a :class:`~deepnmf_jax.training.config.TrainConfig`, or an ``ml_collections``
        ``ConfigDict`` / nested dicts of the same keys (turned into one, checked, here).
      workdir: where the run lives: ``config.json``, ``metrics.jsonl`` (one line per epoch),
        ``tensorboard/``, ``checkpoints/``, ``best/``, ``population/``, and at the end
        ``results.json`` and ``learning_curves.png``. Rerunning with it resumes.
      model: any Flax Linen module with ``model.apply(variables, images, train=bool)`` returning
        class probabilities, trained instead of the one ``config.model.name`` names (which must then
        be an import string that builds it, or any other non-preset name if the run is only ever
        reopened from Python with the same ``model``).
      restart_from: ``"best"`` or ``"scratch"``, for a folder that lost its ``checkpoints/``.
      title: names the run in its figure (e.g. ``"cifar10:sample"``).

    In a multi-process run every process calls this; process 0 writes the logs and results and
    returns them, the others return None.

    Raises:
      TrainingInterrupted: Ctrl-C, SIGTERM or SIGUSR2; a checkpoint was saved first (once training
        has started).
      NonFiniteLossError: the loss became NaN or inf (the message names the epoch and step).
      ConfigError: an invalid config, or one that differs from the run in ``workdir``.
    """
    config = from_any(config)
    if model is not None and config.model.is_preset:
        raise ConfigError(
            f"model= was given, but config.model.name is the preset {config.model.name!r}: set it "
            "to an import string 'package.module:attribute' that builds the model (so evaluate "
            "can reopen the run), or to another name such as 'custom'"
        )
    if config.model.iterations > 5 * PAPER_ITERATIONS:
        log.warning(
            "model.iterations = %d: every NMF layer costs about %.0fx the paper's %d iterations",
            config.model.iterations,
            config.model.iterations / PAPER_ITERATIONS,
            PAPER_ITERATIONS,
        )
    stop = StopRequest()
    with stop.installed():
        return _train(config, pathlib.Path(workdir), model, stop, restart_from, title)


def _train(config: TrainConfig, workdir, model, stop, restart_from, title) -> dict | None:
    # Everything is checked before anything is written, so a rejected start leaves no trace.
    parallel.maybe_initialize_distributed(config.distributed)
    primary = parallel.is_primary()
    if not primary:  # process 0 reports for everyone
        logging.getLogger("deepnmf_jax").setLevel(logging.WARNING)
    data = load_for_config(config.data, config.progress)
    check_data(config, data)
    model = build_checked(config, data.num_classes, data.train.images.shape[1:], model)
    changed = workdir_lib.check_config_matches(workdir, config)
    workdir = workdir_lib.prepare(workdir)
    with workdir_lib.exclusive(workdir) if primary else contextlib.nullcontext():
        if primary:
            workdir_lib.clean_temporary_files(workdir)
            if restart_from is not None:
                session.restart(workdir, restart_from)
            if changed is None:
                workdir_lib.write_config(workdir, config)
            elif changed:
                workdir_lib.record_config_change(workdir, config, changed)
        _check_stop(stop)
        run = session.open_run(config, workdir, data, model)
        try:
            state, progress, history = session.resume_or_start(run, stop)
            state, progress, history = _epochs(run, state, progress, history, stop)
            population_stats.for_checkpoint(run, "best", stop)
        finally:
            run.checkpoints.wait()
            run.checkpoints.close()
            run.writer.close()
        if not primary:
            return None
        best = run.checkpoints.best.latest_step()
        return report.finish(
            config,
            workdir,
            data,
            history,
            progress,
            parameters=run.parameters,
            dead_kinds=run.dead_kinds,
            finished=run.program.ctx.schedule.finished,
            best_checkpoint=None if best is None else f"best/{best}",
            title=title or f"{config.model.name} on {data.name}",
        )


def _check_stop(stop: StopRequest) -> None:
    if stop.requested:
        raise TrainingInterrupted(
            f"stopped by {stop.requested} before training started; nothing to save",
            signal=stop.requested,
            before_training=True,
        )


def _epochs(run: session.Run, state, progress: Progress, history: list[dict], stop: StopRequest):
    config, workdir = run.config, run.workdir
    warmed: set[int] = set()  # the train functions this call has run once (compiled)
    while not progress.finished and progress.epoch < config.num_epochs:
        state, stats, progress = train_epoch(run, state, progress, stop, warmed)
        if stats.next_step < run.steps_per_epoch:  # stopped mid-epoch
            _save(run, state, progress.within_epoch(stats), history)
            raise TrainingInterrupted(
                f"stopped by {stop.requested} at epoch {progress.epoch + 1}, step "
                f"{stats.next_step}/{run.steps_per_epoch}; checkpoint saved in {workdir}: rerun "
                "the same command to resume",
                signal=stop.requested,
            )
        state, progress, record, is_best = end_epoch(run, state, progress, stats)
        history = [*history, record]
        periodic = progress.epoch % config.checkpoint_every_epochs == 0
        if periodic or progress.stopped_because or stop.requested or is_best:
            _save(run, state, progress, history, best=is_best)
        run.writer.write(record)  # after the save: a logged epoch is resumable
        report.log_epoch(record, config.seeds)
        if stop.requested:
            raise TrainingInterrupted(
                f"stopped by {stop.requested} after epoch {progress.epoch}; checkpoint saved in "
                f"{workdir}: rerun the same command to resume",
                signal=stop.requested,
            )
    return state, progress, history


def train_epoch(
    run: session.Run, state, progress: Progress, stop: StopRequest, warmed: set[int] | None = None
):
    """Runs the remaining steps of epoch ``progress.epoch + 1``; returns early (``next_step`` short
    of the epoch) on a stop request. The first step of each train function in ``warmed``'s session
    (its compile included) counts as compile time, not training time. Returns (state, stats,
    progress with the compile time added)."""
    warmed = set() if warmed is None else warmed
    config, epoch, first = run.config, progress.epoch + 1, progress.step_in_epoch
    images, labels = run.train_arrays
    order = run.program.order(run.order_keys, epoch, len(run.data.train))
    train = run.program.train_for(epoch)
    loss_sum = np.asarray(progress.loss_sum, np.float64)
    correct = np.asarray(progress.correct, np.int64)
    pending, step, compile_seconds, timed_steps = [], first, 0.0, 0
    bar = progress_bar(
        total=run.steps_per_epoch,
        initial=first,
        desc=f"epoch {epoch}/{config.num_epochs}",
        unit="step",
        disable=not config.progress,
        leave=False,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    with bar:
        while step < run.steps_per_epoch and not (stop.requested and step > first):
            if id(train) not in warmed:
                warmed.add(id(train))
                before = time.perf_counter()
                state, metrics = train(state, images, labels, order)
                jax.block_until_ready(metrics)
                compile_seconds = time.perf_counter() - before
                start = time.perf_counter()
            else:
                state, metrics = train(state, images, labels, order)
                timed_steps += 1
            pending.append(metrics)
            step += 1
            if (
                len(pending) == config.log_every_steps
                or step == run.steps_per_epoch
                or stop.requested
            ):
                fetched = jax.device_get(pending)  # replicated: every process holds all of it
                losses = np.stack([np.asarray(m["loss"], np.float64) for m in fetched])
                _check_finite(losses, epoch, step - len(pending), config)
                loss_sum += losses.sum(0)
                correct += np.stack([np.asarray(m["correct"]) for m in fetched]).sum(0)
                bar.update(len(pending))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    img_s=f"{timed_steps * config.batch_size * config.num_seeds / elapsed:.0f}",
                    loss=f"{loss_sum.mean() / (step * config.batch_size):.4f}",
                )
                pending = []
    seconds = time.perf_counter() - start
    images_per_s = timed_steps * config.batch_size * config.num_seeds / max(seconds, 1e-9)
    stats = EpochStats(loss_sum, correct, step, images_per_s, progress.seconds + seconds)
    progress = dataclasses.replace(
        progress, compile_seconds=progress.compile_seconds + compile_seconds
    )
    return state, stats, progress


def _check_finite(losses_now: np.ndarray, epoch: int, first_step: int, config) -> None:
    bad = np.argwhere(~np.isfinite(losses_now))
    if bad.size:
        row, column = bad[0]
        raise NonFiniteLossError(
            f"training loss is {losses_now[row, column]} at epoch {epoch}, step "
            f"{first_step + row + 1} (seed {config.seeds[column]}); stopping. Rerunning the same "
            "command resumes from the last checkpoint with the same data and augmentation, so it "
            "would most likely diverge again: rerun with lower learning rates (they may change "
            f"on resume), e.g. --config.optim.lr_a={config.optim.lr_a / 2:g}, or use another "
            "--workdir"
        )


def end_epoch(run: session.Run, state, progress: Progress, stats: EpochStats):
    """Evaluates, advances the schedule and decides whether to stop.

    Returns:
      (state, the progress after this epoch, the epoch's record, whether it is the best so far).
    """
    config, epoch = run.config, progress.epoch + 1
    built, placement = run.program, run.program.placement
    scales = np.asarray(placement.fetch(state.plateau_state.scale), np.float64)
    test_accuracy, maxima = session.evaluate(run, state, "test")
    val_accuracy = (
        session.evaluate(run, state, "validation")[0] if "validation" in run.splits else None
    )
    epoch_loss = placement.put(stats.loss_sum.astype(np.float32), placement.seeds)
    state = built.end_epoch(state, epoch_loss)
    schedule = built.ctx.schedule
    first_step = (epoch - 1) * run.steps_per_epoch
    multiplier = (
        1.0 if schedule.multiplier is None else float(np.asarray(schedule.multiplier(first_step)))
    )
    record = report.epoch_record(
        epoch=epoch,
        stats=stats,
        num_train=run.steps_per_epoch * config.batch_size,
        test_accuracy=test_accuracy,
        val_accuracy=val_accuracy,
        learning_rates=schedule.rates(float(np.max(scales)) * multiplier),
        lr_scale=scales,
        dead=dead_channels.counts(maxima),
    )
    # best/ is chosen on validation accuracy where there is a validation split
    selection = float(np.mean(val_accuracy if val_accuracy is not None else test_accuracy))
    new_scales = np.asarray(placement.fetch(state.plateau_state.scale), np.float64)
    finished = bool(np.all(schedule.finished(new_scales)))
    stopped_because = None
    if finished:
        stopped_because = f"every learning rate below {schedule.stop_lr:g}"
    elif epoch == config.num_epochs:
        stopped_because = f"num_epochs = {config.num_epochs} reached"
    is_best = selection > progress.best_mean_accuracy
    progress = progress.after_epoch(epoch, selection, finished, stopped_because)
    return state, progress, record, is_best


def _save(run: session.Run, state, progress: Progress, history: list[dict], best=False) -> None:
    step = progress.epoch * run.steps_per_epoch + progress.step_in_epoch
    checkpoint.save_run(
        run.checkpoints, step, state, progress, history, run.program.placement.fetch, best=best
    )
