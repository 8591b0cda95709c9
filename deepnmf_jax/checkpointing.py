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

import pathlib
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp


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

    def restore_latest(self, abstract_state) -> tuple[Any, dict] | None:
        """The newest readable (state, meta), or None if there is no checkpoint.

        Raises:
          RuntimeError: checkpoints exist but none could be read.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                restored = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # orbax raises many types for damaged files
                errors.append(f"step {step}: {type(error).__name__}: {error}")
                warnings.warn(
                    f"checkpoint at step {step} in {self.latest.directory} could not be read "
                    f"({type(error).__name__}: {str(error)[:200]}); trying an older one",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            return restored["state"], dict(restored["meta"])
        if steps:
            raise RuntimeError(
                f"no checkpoint in {self.latest.directory} could be read:\n" + "\n".join(errors)
            )
        return None

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
