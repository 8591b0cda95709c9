"""A run's session: what stays fixed while it trains (:class:`Run`), opening it, resuming it, and
evaluating a split in chunks that a Ctrl-C can stop between."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import time
import warnings
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np

from deepnmf_jax._progress import progress_bar
from deepnmf_jax.data.pipeline import Dataset
from deepnmf_jax.errors import CheckpointError, TrainingInterrupted
from deepnmf_jax.models import dead_channels, param_counts
from deepnmf_jax.training import checkpoint, parallel, program, report
from deepnmf_jax.training import workdir as workdir_lib
from deepnmf_jax.training.config import TrainConfig
from deepnmf_jax.training.signals import StopRequest
from deepnmf_jax.training.state import Progress, TrainState

log = logging.getLogger(__name__)

RESTARTS = ("best", "scratch")
CHUNK_IMAGES = 1000  # evaluation runs in chunks of about this many images (a stop is seen between)


class Run(NamedTuple):
    """What stays fixed during a run: its config, program, data on the devices, outputs."""

    config: TrainConfig
    workdir: pathlib.Path
    data: Dataset
    program: program.Program
    splits: dict[str, tuple[jax.Array, np.ndarray]]  # name -> (images on device, labels on host)
    train_arrays: tuple[jax.Array, jax.Array]
    order_keys: jax.Array
    checkpoints: checkpoint.Checkpoints
    writer: report.MetricsWriter
    parameters: dict
    dead_kinds: tuple[str, ...]

    @property
    def steps_per_epoch(self) -> int:
        return self.program.ctx.steps_per_epoch


def open_run(config: TrainConfig, workdir: pathlib.Path, data: Dataset, model: nn.Module | None):
    """Builds (or reuses) the run's program and places its data on the devices."""
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
    built = program.build(
        config, data.num_classes, data.train.images.shape[1:], steps_per_epoch, model=model
    )
    placement = built.placement
    splits = {"test": data.test}
    if data.validation is not None:
        splits["validation"] = data.validation
    input_shape = built.ctx.input_shape
    model = built.ctx.model
    dead_kinds = dead_channels.kinds(model, input_shape)
    if not dead_channels.reports_intermediates(model):
        log.info(
            "dead channels: not counted (%s.__call__ takes no return_intermediates)",
            type(model).__name__,
        )
    return Run(
        config=config,
        workdir=workdir,
        data=data,
        program=built,
        # each split lives on the devices as uint8, placed once; labels stay on the host
        splits={k: (placement.put(s.images), np.asarray(s.labels)) for k, s in splits.items()},
        train_arrays=(placement.put(data.train.images), placement.put(data.train.labels)),
        order_keys=placement.order_keys(config.data, config.seeds),
        checkpoints=checkpoint.Checkpoints(workdir),
        writer=report.MetricsWriter(
            workdir, enabled=parallel.is_primary(), tensorboard=config.tensorboard
        ),
        parameters=param_counts.param_breakdown(model, input_shape),
        dead_kinds=dead_kinds,
    )


def _stop_if_requested(stop: StopRequest | None) -> None:
    if stop is not None and stop.requested:
        raise TrainingInterrupted(
            f"stopped by {stop.requested} before training started; nothing to save",
            signal=stop.requested,
            before_training=True,
        )


def _wait_for(tree, stop: StopRequest | None, poll_s: float = 0.05) -> None:
    """Waits for a dispatched computation, checking ``stop`` while it runs: a Ctrl-C during a long
    pass before training (a huge ``model.iterations``, say) stops the run at once instead of when
    the device is done (a blocking fetch would not return to Python before)."""
    if stop is None:
        return
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "is_ready")]
    while not all(leaf.is_ready() for leaf in leaves):
        _stop_if_requested(stop)
        time.sleep(poll_s)


def predict(
    built: program.Program,
    state: TrainState,
    images: jax.Array,
    population=None,
    stop: StopRequest | None = None,
    description: str | None = None,
):
    """(probs (seeds, N, classes), dead-channel maxima) of a split on the devices, in chunks of
    whole evaluation batches; a stop request between chunks raises :class:`TrainingInterrupted`."""
    size = built.ctx.eval_batch_size
    chunk = max(1, CHUNK_IMAGES // size) * size
    fetch = built.placement.fetch
    probs, maxima = [], None
    starts = range(0, images.shape[0], chunk)
    for start in progress_bar(starts, desc=description, disable=description is None, leave=False):
        _stop_if_requested(stop)
        piece = images[start : start + chunk]
        if population is None:
            out = built.predict(state, piece)
        else:
            out = built.predict_population(state, piece, population)
        _wait_for(out, stop)
        p, m = fetch(out)
        probs.append(np.asarray(p))
        maxima = m if maxima is None else jax.tree_util.tree_map(np.maximum, maxima, m)
    return np.concatenate(probs, axis=1), maxima or {}


def evaluate(run: Run, state, split: str, stop: StopRequest | None = None, description=None):
    """(accuracy per seed, {kind: (seeds, C) largest value of each channel before its ReLU at
    1x1}) on a split already on the devices."""
    images, labels = run.splits[split]
    probs, maxima = predict(run.program, state, images, stop=stop, description=description)
    return np.mean(np.argmax(probs, -1) == labels, axis=-1), maxima


def resume_or_start(run: Run, stop: StopRequest):
    """The newest readable checkpoint's (state, progress, history), or a fresh start.

    A folder that holds a run's records but no ``checkpoints/`` (deleted, or lost) is not
    restarted silently: :class:`CheckpointError` says what is missing and how to go on
    (:func:`restart`).
    """
    built, placement = run.program, run.program.placement
    state = built.init(placement.seed_keys(run.config.seeds))
    log.info(
        "model %s: %s parameters per seed",
        run.config.model.name,
        ", ".join(f"{k} {v}" for k, v in run.parameters.items()),
    )
    restored = checkpoint.restore_run(run.checkpoints, state, placement.fetch, run.workdir)
    if restored is not None:
        state, progress, history = restored
        log.info(
            "resumed from epoch %d, step %d of the next epoch",
            progress.epoch,
            progress.step_in_epoch,
        )
    else:
        _refuse_silent_restart(run)
        progress, history = Progress.start(run.config.num_seeds), []
        if run.dead_kinds:
            test_images = run.splits["test"][0]
            _, maxima = evaluate(
                run,
                state,
                "test",
                stop,
                f"dead channels at init ({test_images.shape[0]} test images)"
                if run.config.progress
                else None,
            )
            progress = dataclasses.replace(
                progress, dead_channels_at_init=dead_channels.counts(maxima)
            )
    if parallel.is_primary():  # metrics.jsonl mirrors the history: later or torn lines go
        report.rewrite_history(run.workdir, history)
    return state, progress, history


def _refuse_silent_restart(run: Run) -> None:
    best = run.checkpoints.best.latest_step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logged = len(workdir_lib.read_jsonl(run.workdir / "metrics.jsonl"))
    if best is None and not logged and not (run.workdir / "results.json").exists():
        return
    found = ", ".join(
        part
        for part in (
            f"{logged} logged epochs" if logged else "",
            f"best/{best}" if best is not None else "",
            "results.json" if (run.workdir / "results.json").exists() else "",
        )
        if part
    )
    options = "--restart-from best (go on from best/) or " if best is not None else ""
    raise CheckpointError(
        f"{run.workdir} holds a run ({found}) but no checkpoint in checkpoints/; nothing was "
        f"changed. Rerun with {options}--restart-from scratch (remove its records and start over)"
    )


def _steps(folder: pathlib.Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def restart(workdir: pathlib.Path, how: str) -> None:
    """Prepares ``workdir`` to go on without ``checkpoints/``: ``"best"`` copies the best
    checkpoint into ``checkpoints/``, ``"scratch"`` removes every record of the earlier run. Call it
    holding the lock, before the run opens its files."""
    if how not in RESTARTS:
        raise CheckpointError(f"--restart-from must be one of {RESTARTS}, got {how!r}")
    latest, best_dir = workdir / "checkpoints", workdir / "best"
    if how == "best":
        best = _steps(best_dir)
        if not best:
            raise CheckpointError(f"{workdir} has no best/ checkpoint to restart from")
        if _steps(latest):
            raise CheckpointError(
                f"{latest} still holds checkpoints: the run resumes from them without "
                "--restart-from"
            )
        shutil.copytree(best_dir / str(best[-1]), latest / str(best[-1]))
        log.info("%s: restarting from best/%d", workdir, best[-1])
        return
    for name in ("metrics.jsonl", "results.json", "learning_curves.png", "config_changes.jsonl"):
        (workdir / name).unlink(missing_ok=True)
    for folder in (latest, best_dir, workdir / "tensorboard"):
        if folder.is_dir():
            shutil.rmtree(folder)
    log.info("%s: the earlier records were removed; starting from scratch", workdir)
