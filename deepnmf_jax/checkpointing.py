"""Orbax checkpoints of the seed-stacked train state, with run metadata, resumable after any stop.

Layout in ``workdir``::

    checkpoints/<step>/   the latest two saves (the older one is the fallback if the newest is damaged)
    best/<step>/          the save with the best mean test accuracy so far

Each save holds ``state`` (the :class:`~deepnmf_jax.train_lib.TrainState` pytree, every leaf with a
leading seed axis) and ``meta`` (JSON: epoch, position in the epoch, metric history, ...). Orbax writes
into a temporary folder and renames it when complete, so a process killed while saving leaves no
partial checkpoint under a step's name; one that is damaged afterwards is detected on restore and the
previous one is used, with a warning.
"""

from __future__ import annotations

import contextlib
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

from deepnmf_jax.errors import CheckpointError


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
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second Ctrl-C interrupts at once)."""

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
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
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
