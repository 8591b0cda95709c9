"""Orbax checkpoints of the seed-stacked train state, with run metadata, resumable after any stop.

Layout in ``workdir``::

    checkpoints/<step>/   the latest two saves (the older one is the fallback if the newest is damaged)
    best/<step>/          the save with the best mean test accuracy so far

Each save holds ``state`` (the :class:`~deepnmf_jax.steps.TrainState` pytree, every leaf with a
leading seed axis) and ``meta`` (JSON: the :class:`Progress`, the history of epoch records, the
version, and a sha256 of the state's arrays, checked on restore). Orbax writes
into a temporary folder and renames it when complete, so a process killed while saving leaves no
partial checkpoint under a step's name; one that is damaged afterwards is detected on restore and the
previous one is used, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import signal
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

import deepnmf_jax
from deepnmf_jax import dead_channels
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.errors import CheckpointError


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
    # before training, {metric: dead channels per seed} (deepnmf_jax.dead_channels.counts)
    dead_channels_at_init: dict[str, list[int]] | None = None

    @classmethod
    def start(cls, num_seeds: int) -> Progress:
        return cls(loss_sum=[0.0] * num_seeds, correct=[0] * num_seeds)

    def within_epoch(self, stats) -> Progress:
        """Mid-epoch, after the steps that ``stats`` (an ``EpochStats``) counted."""
        return dataclasses.replace(
            self,
            step_in_epoch=stats.next_step,
            loss_sum=[float(v) for v in stats.loss_sum],
            correct=[int(v) for v in stats.correct],
            seconds=float(stats.seconds),
        )

    def after_epoch(self, epoch, selection, finished, stopped_because) -> Progress:
        return dataclasses.replace(
            Progress.start(len(self.loss_sum)),
            epoch=epoch,
            best_mean_accuracy=max(selection, self.best_mean_accuracy),
            finished=finished,
            stopped_because=stopped_because,
            dead_channels_at_init=self.dead_channels_at_init,
        )


def save_run(checkpoints, step, state, progress, history, fetch, best=False) -> None:
    """Saves a run's state with its progress, history and a checksum of the state's arrays.
    ``fetch`` brings device arrays to the host (:meth:`deepnmf_jax.parallel.Placement.fetch`)."""
    meta = {
        "progress": dataclasses.asdict(progress),
        "history": history,
        "version": deepnmf_jax.__version__,
        "checksum": tree_checksum(fetch(state)),
    }
    checkpoints.save(step, state, meta, best=best)


def restore_run(checkpoints, like_state, fetch, workdir) -> tuple[Any, Progress, list] | None:
    """The newest readable (state, progress, history), or None without a checkpoint.

    A checkpoint whose arrays do not match the checksum stored with them counts as unreadable (the
    next older one is tried). Checkpoints written before the history was kept in them take it
    from ``workdir/metrics.jsonl``, up to their epoch.
    """

    def verify(state, meta: dict) -> None:
        expected = meta.get("checksum")
        if expected is not None and tree_checksum(fetch(state)) != expected:
            raise ChecksumMismatch("its arrays do not match their stored checksum")

    restored = checkpoints.restore_latest(abstract_like(like_state), verify=verify)
    if restored is None:
        return None
    state, meta = restored
    known = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in meta["progress"].items() if k in known})
    history = meta.get("history")
    if history is None:
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        history = [r for r in workdir_lib.read_jsonl(metrics) if r["epoch"] <= progress.epoch]
    legacy = meta["progress"].get("dead_class_channels_at_init")
    if legacy is not None and progress.dead_channels_at_init is None:
        progress = dataclasses.replace(
            progress, dead_channels_at_init=_legacy_dead(legacy, history)
        )
    return state, progress, history


def _legacy_dead(counts: list[int], history: list[dict]) -> dict[str, list[int]]:
    """A checkpoint written when one kind of dead channel was counted per model kept its counts
    at initialisation as a bare list; its kind is the one its epochs' records name."""
    named = [dead_channels.key(k) for k in ("class", "hidden")]
    metric = next((k for k in named if history and k in history[0]), None)
    return {metric: counts} if metric else {}


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one was used."""


class Checkpoints:
    """The latest-two and best checkpoints of one run."""

    def __init__(self, workdir: str | pathlib.Path):
        workdir = pathlib.Path(workdir).absolute()
        # Synchronous: the state is small, and the train step donates its buffers right after a save.
        options = dict(create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2, **options)
        )
        self.best = ocp.CheckpointManager(
            workdir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
        )

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, meta: dict, best: bool = False) -> None:
        """Saves ``state`` and ``meta`` under ``step`` (and as the best, if ``best``).

        A checkpoint already at ``step`` (an unreadable one that a resume fell back from) is replaced.
        """
        managers = [self.latest, self.best] if best else [self.latest]
        for manager in managers:
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=self._args(state, meta), force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def restore_latest(
        self, abstract_state, verify: Callable[[Any, dict], None] | None = None
    ) -> tuple[Any, dict] | None:
        """The newest readable (state, meta), or None if there is no checkpoint.

        ``verify(state, meta)`` raises for a checkpoint that loads but is damaged (a checksum
        mismatch); it then counts as unreadable. Each unreadable checkpoint gives one warning line.

        Raises:
          CheckpointError: checkpoints exist but none could be read; the message names each one
            tried and how to restart from ``best/`` or from scratch.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                with _quiet_orbax():
                    restored = self.latest.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state),
                            meta=ocp.args.JsonRestore(),
                        ),
                    )
                state, meta = restored["state"], dict(restored["meta"])
                if verify is not None:
                    verify(state, meta)
            except Exception as error:  # orbax raises many types for damaged files
                reason = f"{type(error).__name__}: {_first_line(error)}"
                errors.append(f"step {step}: {reason}")
                warnings.warn(
                    f"checkpoint at step {step} in {self.latest.directory} could not be read "
                    f"({reason}); trying an older one",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            return state, meta
        if steps:
            raise CheckpointError(
                f"no checkpoint in {self.latest.directory} could be read ({'; '.join(errors)}). "
                + self._restart_advice()
            )
        return None

    def _restart_advice(self) -> str:
        directory = self.latest.directory
        best = self.best.latest_step()
        scratch = f"to start from scratch: rm -r {directory} {self.best.directory}"
        if best is None:
            return scratch.capitalize()
        return (
            f"To restart from the best checkpoint (step {best}): "
            f"rm -r {directory}/* && cp -r {self.best.directory}/{best} {directory}/; {scratch}"
        )

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:limit]


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a whole traceback for a damaged file before it raises; the caller says it in
    one line instead."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def tree_checksum(tree) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order (host arrays)."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class ChecksumMismatch(ValueError):
    """A checkpoint's arrays differ from the checksum stored with them (a damaged file)."""


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class StopRequest:
    """Turns SIGINT, SIGTERM and SIGUSR2 (a cluster's preemption or time-limit notice, as SLURM
    and submitit send it) into a flag checked between steps; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.requested = None

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        with contextlib.suppress(OSError):  # a closed pipe (``... | tee log`` after Ctrl-C)
            tqdm.write(f"{self.requested} received: saving a checkpoint and stopping ...")

    @contextlib.contextmanager
    def installed(self):
        """Handles the signals for the duration, then restores the previous handlers."""
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
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
