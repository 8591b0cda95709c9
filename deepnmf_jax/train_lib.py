"""Training and evaluation of several seeds at once: ``train_and_evaluate(config, workdir)``.

Every leaf of the train state has a leading seed axis and the steps (:mod:`deepnmf_jax.steps`) run over
it, so ``config.num_seeds`` replicas (seeds ``config.seed + k``) train together: each with its own
initialisation and augmentation stream, all on the same data order unless ``config.data.order =
"per_seed"``. The default recipe is the reference's (spec section 3): batch 50, augmentation inside the
jitted step, Adam per parameter group, reduce-on-plateau on the summed training loss once per epoch,
stop when every learning rate is below ``config.optim.stop_lr`` or after ``config.num_epochs`` epochs.
The test set (and the validation split, if any) is evaluated after every epoch, in order, in batches
of ``config.eval_batch_size`` (BatchNorm uses batch statistics in evaluation too, by default).

The loop is plain data flow: :func:`deepnmf_jax.epoch.train_epoch` returns the new state and its
:class:`~deepnmf_jax.epoch.EpochStats`,
:func:`end_epoch` evaluates and returns the new state, :class:`Progress` and the epoch's record, and
the history of records (kept in every checkpoint) gives the final report. A run is resumable:
checkpoints are written every ``config.checkpoint_every_epochs`` epochs and on Ctrl-C or SIGTERM
(mid-epoch, with the position in the epoch); rerunning with the same ``workdir`` continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from deepnmf_jax import (
    checkpointing,
    compiled,
    dead_channels,
    input_pipeline,
    parallel,
    param_counts,
    reporting,
)
from deepnmf_jax import epoch as epoch_lib
from deepnmf_jax import steps as steps_lib
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.checkpointing import Progress
from deepnmf_jax.epoch import EpochStats  # noqa: F401
from deepnmf_jax.errors import ConfigError, NonFiniteLossError, TrainingInterrupted  # noqa: F401
from deepnmf_jax.validation import validate_config, validate_data

log = logging.getLogger(__name__)


class Run(NamedTuple):
    """What stays fixed during a run: its config, compiled steps, data on the devices, outputs."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    data: input_pipeline.Dataset
    steps: compiled.Steps
    seeds: list[int]
    splits: dict[str, tuple[jax.Array, np.ndarray]]  # name -> (images on device, labels on host)
    train_arrays: tuple[jax.Array, jax.Array]
    order_keys: jax.Array
    checkpoints: checkpointing.Checkpoints
    writer: reporting.MetricsWriter

    @property
    def steps_per_epoch(self) -> int:
        return self.steps.ctx.steps_per_epoch


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> dict | None:
    """Trains ``config.num_seeds`` seeds of ``config.model.name`` and returns the results dict.

    Writes to ``workdir``: ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``tensorboard/``, ``checkpoints/`` and ``best/``, and at the end ``results.json`` and
    ``learning_curves.png``. Rerunning with the same ``workdir`` resumes; a resume with other values
    of keys that may change (``workdir.RESUMABLE_KEYS``: num_epochs, learning rates, paths) rewrites
    ``config.json`` and keeps the old values in ``config_changes.jsonl``. In a multi-process run
    every process calls this; process 0 writes the logs and results and returns them, the others
    return None.

    Raises:
      TrainingInterrupted: Ctrl-C or SIGTERM (or SIGUSR2, a cluster's preemption notice); a
        checkpoint was saved first.
      NonFiniteLossError: the loss became NaN or inf (the message names the epoch and step).
      ConfigError: an invalid config, or one that differs from the run in ``workdir``.
    """
    # Everything is checked before anything is written, so a rejected start leaves no trace.
    validate_config(config)
    parallel.maybe_initialize_distributed(config.distributed)
    primary = parallel.is_primary()
    if not primary:  # process 0 reports for everyone
        logging.getLogger("deepnmf_jax").setLevel(logging.WARNING)
    data = input_pipeline.load_for_config(config)
    validate_data(config, data)
    current = json.loads(config.to_json_best_effort())
    workdir = pathlib.Path(workdir)
    changed = workdir_lib.check_config_matches(workdir, current)
    workdir = workdir_lib.prepare(workdir)
    with workdir_lib.exclusive(workdir) if primary else contextlib.nullcontext():
        if primary and changed is None:
            workdir_lib.write_config(workdir, current)
        elif primary and changed:
            workdir_lib.record_config_change(workdir, current, changed)
        run = _open(config, workdir, data)
        try:
            state, progress, history = _resume_or_start(run)
            stop = checkpointing.StopRequest()
            with stop.installed():
                while not progress.finished and progress.epoch < config.num_epochs:
                    state, stats = epoch_lib.train_epoch(run, state, progress, stop)
                    if stats.next_step < run.steps_per_epoch:  # stopped mid-epoch
                        _save(run, state, progress.within_epoch(stats), history)
                        raise TrainingInterrupted(
                            f"stopped by {stop.requested} at epoch {progress.epoch + 1}, step "
                            f"{stats.next_step}/{run.steps_per_epoch}; checkpoint saved in "
                            f"{workdir}: rerun the same command to resume",
                            signal=stop.requested,
                        )
                    state, progress, record, is_best = end_epoch(run, state, progress, stats)
                    history = [*history, record]
                    if _should_save(config, progress, is_best, stop):
                        _save(run, state, progress, history, best=is_best)
                    run.writer.write(record)  # after the save: a logged epoch is resumable
                    reporting.log_epoch(record, run.seeds)
                    if stop.requested:
                        raise TrainingInterrupted(
                            f"stopped by {stop.requested} after epoch {progress.epoch}; "
                            f"checkpoint saved in {workdir}: rerun the same command to resume",
                            signal=stop.requested,
                        )
        finally:
            run.checkpoints.wait()
            run.checkpoints.close()
            run.writer.close()
        if not primary:
            return None
        return reporting.finish(config, workdir, data, run.steps.ctx.model, history, progress)


def _open(config, workdir: pathlib.Path, data: input_pipeline.Dataset) -> Run:
    steps_per_epoch = len(data.train) // config.batch_size
    log.info(
        "%s: %d train / %d test images from %s; %d steps per epoch; devices %s",
        data.name,
        len(data.train),
        len(data.test),
        data.source,
        steps_per_epoch,
        jax.devices(),
    )
    steps = compiled.make_steps(
        config, data.num_classes, data.train.images.shape[1:], steps_per_epoch
    )
    placement = steps.placement
    splits = {"test": data.test}
    if data.validation is not None:
        splits["validation"] = data.validation
    seeds = [config.seed + k for k in range(config.num_seeds)]
    primary = parallel.is_primary()
    return Run(
        config=config,
        workdir=workdir,
        data=data,
        steps=steps,
        seeds=seeds,
        # Each split lives on the devices as uint8, placed once; labels stay on the host.
        splits={k: (placement.put(s.images), np.asarray(s.labels)) for k, s in splits.items()},
        train_arrays=(placement.put(data.train.images), placement.put(data.train.labels)),
        order_keys=placement.order_keys(config.data, seeds),
        checkpoints=checkpointing.Checkpoints(workdir),
        writer=reporting.MetricsWriter(workdir, enabled=primary, tensorboard=config.tensorboard),
    )


def _resume_or_start(run: Run) -> tuple[steps_lib.TrainState, Progress, list[dict]]:
    """The newest readable checkpoint's (state, progress, history), or a fresh start."""
    steps, placement = run.steps, run.steps.placement
    state = steps.init(placement.seed_keys(run.seeds))
    log.info("model %s: %s parameters per seed", run.config.model.name, _count(steps, state))
    restored = checkpointing.restore_run(run.checkpoints, state, placement.fetch, run.workdir)
    if restored is not None:
        state, progress, history = restored
        log.info(
            "resumed from epoch %d, step %d of the next epoch",
            progress.epoch,
            progress.step_in_epoch,
        )
    else:
        progress, history = Progress.start(len(run.seeds)), []
        dead = _dead_channels(run, state)
        progress = dataclasses.replace(progress, dead_channels_at_init=dead)
    if parallel.is_primary():  # metrics.jsonl mirrors the history: later or torn lines go
        reporting.rewrite_history(run.workdir, history)
    return state, progress, history


def _count(steps: compiled.Steps, state) -> str:
    one_seed = jax.tree_util.tree_map(lambda leaf: leaf[0], state.params)
    return ", ".join(
        f"{k} {v}" for k, v in param_counts.param_breakdown(steps.ctx.model, one_seed).items()
    )


def _dead_channels(run: Run, state) -> dict[str, list[int]]:
    """``{metric: per seed, the channels of that kind (:func:`dead_channels.rectified_kinds`) <= 0
    on every test image}``; empty where the model has no ReLU at 1x1 without BatchNorm."""
    if not dead_channels.rectified_kinds(run.steps.ctx.model):
        return {}
    _, maxima = run.steps.placement.fetch(run.steps.predict(state, run.splits["test"][0]))
    return dead_channels.counts(maxima)


def evaluate(run: Run, state, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy per seed, {kind: (seeds, C) largest value of each channel before its ReLU at
    1x1}) on a split already on the devices."""
    images, labels = run.splits[split]
    probs, maxima = run.steps.placement.fetch(run.steps.predict(state, images))
    return np.mean(np.argmax(probs, -1) == labels, axis=-1), maxima


def end_epoch(run: Run, state, progress: Progress, stats: epoch_lib.EpochStats):
    """Evaluates, advances the schedule and decides whether to stop.

    Returns:
      (state, the progress after this epoch, the epoch's record, whether it is the best so far).
    """
    config, epoch = run.config, progress.epoch + 1
    steps, placement = run.steps, run.steps.placement
    scales = np.asarray(placement.fetch(state.plateau_state.scale), np.float64)
    test_accuracy, maxima = evaluate(run, state, "test")
    val_accuracy = evaluate(run, state, "validation")[0] if "validation" in run.splits else None
    epoch_loss = placement.put(stats.loss_sum.astype(np.float32), placement.seeds)
    state = steps.end_epoch(state, epoch_loss)
    schedule = steps.ctx.schedule
    first_step = (epoch - 1) * run.steps_per_epoch
    record = reporting.epoch_record(
        epoch=epoch,
        stats=stats,
        num_train=run.steps_per_epoch * config.batch_size,
        test_accuracy=test_accuracy,
        val_accuracy=val_accuracy,
        learning_rates=schedule.rates(float(np.max(scales)) * _multiplier(schedule, first_step)),
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


def _multiplier(schedule, step: int) -> float:
    return 1.0 if schedule.multiplier is None else float(schedule.multiplier(step))


def _should_save(config, progress: Progress, is_best: bool, stop) -> bool:
    periodic = progress.epoch % config.checkpoint_every_epochs == 0
    return periodic or bool(progress.stopped_because) or bool(stop.requested) or is_best


def _save(run: Run, state, progress: Progress, history: list[dict], best: bool = False) -> None:
    step = progress.epoch * run.steps_per_epoch + progress.step_in_epoch
    checkpointing.save_run(
        run.checkpoints, step, state, progress, history, run.steps.placement.fetch, best=best
    )
