"""Orbax checkpoints of the seed-stacked train state, with run metadata, resumable after any stop.

Layout in ``workdir``::

    checkpoints/<step>/   the latest two saves (the older one is the fallback if the newest is damaged)
    best/<step>/          the save with the best mean test accuracy so far

Each save holds ``state`` (the :class:`~deepnmf_jax.training.state.TrainState` pytree, every leaf
with a leading seed axis) and ``meta`` (JSON: the :class:`~deepnmf_jax.training.state.Progress`, the
history of epoch records, the package version that wrote it, and a sha256 of the state's arrays,
checked on restore). Compatibility with older checkpoints keys on that version. Orbax writes
into a temporary folder and renames it when complete, so a process killed while saving leaves no
partial checkpoint under a step's name; one that is damaged afterwards is detected on restore and the
previous one is used, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import pathlib
import sys
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from deepnmf_jax._version import __version__, version_tuple
from deepnmf_jax.errors import CheckpointError
from deepnmf_jax.models.dead_channels import key as dead_key
from deepnmf_jax.training import workdir as workdir_lib
from deepnmf_jax.training.state import Progress
from deepnmf_jax.training.workdir import write_error


def save_run(checkpoints, step, state, progress, history, fetch, best=False) -> None:
    """Saves a run's state with its progress, history and a checksum of the state's arrays.
    ``fetch`` brings device arrays to the host (:meth:`deepnmf_jax.parallel.Placement.fetch`)."""
    meta = {
        "progress": dataclasses.asdict(progress),
        "history": history,
        "version": __version__,
        "checksum": tree_checksum(fetch(state)),
    }
    checkpoints.save(step, state, meta, best=best)


def restore_run(checkpoints, like_state, fetch, workdir) -> tuple[Any, Progress, list] | None:
    """The newest readable (state, progress, history), or None without a checkpoint.

    A checkpoint whose arrays do not match the checksum stored with them counts as unreadable (the
    next older one is tried). Checkpoints of version 0.1 may lack the history (read from
    ``workdir/metrics.jsonl`` up to their epoch) or hold the dead channels at initialisation as a
    bare list; both are read as such (to be dropped in 0.3).
    """

    restored = checkpoints.restore_latest(like_state, fetch)
    if restored is None:
        return None
    state, meta = restored
    known = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in meta["progress"].items() if k in known})
    history = meta.get("history")
    if version_tuple(meta.get("version", "0")) < (0, 2):
        if history is None:
            metrics = pathlib.Path(workdir) / "metrics.jsonl"
            history = [r for r in workdir_lib.read_jsonl(metrics) if r["epoch"] <= progress.epoch]
        legacy = meta["progress"].get("dead_class_channels_at_init")
        if legacy is not None and progress.dead_channels_at_init is None:
            progress = dataclasses.replace(
                progress, dead_channels_at_init=_legacy_dead(legacy, history)
            )
    return state, progress, history or []


def _legacy_dead(counts: list[int], history: list[dict]) -> dict[str, list[int]]:
    """A checkpoint written when one kind of dead channel was counted per model kept its counts
    at initialisation as a bare list; its kind is the one its epochs' records name."""
    named = [dead_key(k) for k in ("class", "hidden")]
    metric = next((k for k in named if history and k in history[0]), None)
    return {metric: counts} if metric else {}


def restore_step(manager, step: int, like_state, fetch=jax.device_get) -> tuple[Any, dict]:
    """(state, meta) of one checkpoint of ``manager``, restored into ``like_state``'s structure
    and shardings and checked against the checksum stored with it.

    Raises:
      ChecksumMismatch: the arrays differ from their checksum (a damaged file).
      Exception: whatever orbax raises for an unreadable or foreign checkpoint.
    """
    with _quiet_orbax():
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(like_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
    state, meta = restored["state"], dict(restored["meta"])
    expected = meta.get("checksum")
    if expected is not None and tree_checksum(fetch(state)) != expected:
        raise ChecksumMismatch("its arrays do not match their stored checksum")
    return state, meta


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one was used."""


class Checkpoints:
    """The latest-two and best checkpoints of one run."""

    def __init__(self, workdir: str | pathlib.Path):
        workdir = pathlib.Path(workdir).absolute()

        # Synchronous: the state is small, and the train step donates its buffers right after a save.
        def options(keep: int) -> ocp.CheckpointManagerOptions:
            return ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            )

        self.latest = ocp.CheckpointManager(workdir / "checkpoints", options=options(2))
        self.best = ocp.CheckpointManager(workdir / "best", options=options(1))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, meta: dict, best: bool = False) -> None:
        """Saves ``state`` and ``meta`` under ``step`` (and first as the best, if ``best``).

        ``best/`` is written before ``checkpoints/``: a run killed between the two resumes from
        the previous checkpoint and writes both again, so ``best/`` never lags behind what the
        run's records call its best. A checkpoint already at ``step`` (an unreadable one that a
        resume fell back from) is replaced.

        Raises:
          WorkdirError: the save failed on a full disk or a read-only folder (one line; the
            last complete checkpoint is kept and orbax's half-written folder is removed on the
            next start).
        """
        managers = [self.best, self.latest] if best else [self.latest]
        for manager in managers:
            try:
                with _quiet_orbax():
                    if step in manager.all_steps():
                        manager.delete(step)
                    manager.save(step, args=self._args(state, meta), force=True)
            except Exception as error:
                os_error = _os_error(error)
                if os_error is None:
                    raise
                kept = self.latest.latest_step()
                keeps = (
                    f"the last complete checkpoint (step {kept}) is kept"
                    if kept is not None and kept != step
                    else "no complete checkpoint is kept"
                )
                raise write_error(
                    pathlib.Path(manager.directory) / str(step), os_error, keeps
                ) from None

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def restore_latest(self, like_state, fetch=jax.device_get) -> tuple[Any, dict] | None:
        """The newest readable (state, meta) of ``checkpoints/``, or None if there is none.

        A checkpoint that does not load, or loads with arrays that differ from their checksum,
        counts as unreadable: one warning line, and the next older one is tried.

        Raises:
          CheckpointError: checkpoints exist but none could be read; the message names each one
            tried and how to go on.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                return restore_step(self.latest, step, like_state, fetch)
            except Exception as error:  # orbax raises many types for damaged files
                reason = f"{type(error).__name__}: {_first_line(error)}"
                errors.append(f"step {step}: {reason}")
                warnings.warn(
                    f"checkpoint at step {step} in {self.latest.directory} could not be read "
                    f"({reason}); trying an older one",
                    CheckpointWarning,
                    stacklevel=2,
                )
        if steps:
            raise CheckpointError(
                f"no checkpoint in {self.latest.directory} could be read ({'; '.join(errors)}). "
                + self._restart_advice()
            )
        return None

    def _restart_advice(self) -> str:
        best = self.best.latest_step()
        scratch = f"rm -r {self.latest.directory}, then rerun with --restart-from scratch"
        if best is None:
            return f"To start from scratch: {scratch}"
        return (
            f"To go on from the best checkpoint (step {best}): rm -r {self.latest.directory}, then "
            f"rerun with --restart-from best; to start from scratch: {scratch}"
        )

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _os_error(error: BaseException | None) -> OSError | None:
    """The ``OSError`` behind an orbax failure (a full disk, a read-only folder), if any: orbax
    wraps it, or reports only its text (``RESOURCE_EXHAUSTED ... No space left on device``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        text = str(error)
        if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
            return OSError(errno.ENOSPC, "No space left on device")
        if "Read-only file system" in text or "Permission denied" in text:
            return OSError(errno.EACCES, "Permission denied")
        error = error.__cause__ or error.__context__
    return None


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()
    # TensorStore appends the repr of a bound method ("See full TensorStore details: <bound ...")
    line = (text[0] if text else "").split(" See full TensorStore details")[0].rstrip(" .;")
    return line[:limit]


def _is_closed_loop_error(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


def _drop_closed_loop_tracebacks() -> None:
    """Wraps ``sys.unraisablehook`` (once), where TensorStore's callbacks report errors they cannot
    raise, so that ``RuntimeError: Event loop is closed`` prints nothing; every other unraisable
    error is shown as before."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_error(unraisable.exc_type, unraisable.exc_value):
            previous(unraisable)

    hook._drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a whole traceback for a damaged file before it raises; the caller says it in
    one line instead. A failed restore also leaves TensorStore callbacks that fire into orbax's
    closed event loop later and print a traceback each (``RuntimeError: Event loop is closed``,
    through ``sys.unraisablehook``): those are dropped too, from then on."""
    _drop_closed_loop_tracebacks()
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
