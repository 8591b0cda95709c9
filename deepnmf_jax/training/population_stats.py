"""BatchNorm population statistics of a run's checkpoints (:mod:`deepnmf_jax.models.population`).

After training, the trainer gathers them for ``best/`` over the run's training images (no
augmentation, in batches of ``batch_size`` normalised by their own statistics, as in training) and
writes ``population/best-STEP.npz`` beside the checkpoint: per BatchNorm layer its ``mean`` and
``var`` with a leading seed axis, and the sha256 of the checkpoint's arrays they belong to.
Evaluation, prediction and export use them by default; ``deepnmf population-stats`` makes them for
any checkpoint (and for runs trained before they existed).
"""

from __future__ import annotations

import io
import json
import logging
import pathlib
import time

import jax
import numpy as np
from flax import traverse_util

from deepnmf_jax._progress import progress_bar
from deepnmf_jax.errors import CheckpointError, TrainingInterrupted
from deepnmf_jax.models import population
from deepnmf_jax.training import checkpoint
from deepnmf_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)

FOLDER = "population"
_META = "__meta__"


def path_for(workdir: pathlib.Path, checkpoint_name: str) -> pathlib.Path:
    """``population/best-STEP.npz`` for ``"best/STEP"`` (or ``checkpoints-STEP.npz``)."""
    kind, _, step = checkpoint_name.partition("/")
    return pathlib.Path(workdir) / FOLDER / f"{kind}-{step}.npz"


def compute(program, state, images: jax.Array, batch_size: int, stop=None, description=None):
    """Every BatchNorm's population (mean, var) per seed over ``images`` (uint8 on the devices),
    pooled over batches of ``batch_size`` (a trailing partial batch is left out). Returns the
    ``population`` collection with a leading seed axis, or ``{}`` for a model without BatchNorm."""
    batches = images.shape[0] // batch_size
    pool = population.MomentPool()
    fetch = program.placement.fetch
    for index in progress_bar(
        range(batches), desc=description, disable=description is None, leave=False
    ):
        if stop is not None and stop.requested:
            raise TrainingInterrupted(
                f"stopped by {stop.requested} while gathering BatchNorm statistics (the "
                "checkpoints are saved: rerun the same command)",
                signal=stop.requested,
            )
        moments = fetch(
            program.moments(state, images[index * batch_size : (index + 1) * batch_size])
        )
        if not moments:
            return {}
        pool.add(moments)
    return pool.result()


def save(path: pathlib.Path, stats, meta: dict) -> None:
    """Writes the statistics and ``meta`` (JSON) as one ``.npz``, atomically."""
    arrays = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(stats).items()}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.atomic_write_bytes(path, buffer.getvalue())


def load(path: pathlib.Path) -> tuple[dict, dict]:
    """(statistics with a leading seed axis, meta) of a file :func:`save` wrote."""
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(bytes(arrays[_META]).decode())
        flat = {tuple(k.split("/")): arrays[k] for k in arrays.files if k != _META}
    return traverse_util.unflatten_dict(flat), meta


def for_checkpoint(run, which: str, stop=None) -> pathlib.Path | None:
    """Gathers and saves the statistics of the run's ``best`` (or latest) checkpoint, unless
    they exist for its arrays already or the model has no BatchNorm. Returns the file."""
    manager = run.checkpoints.best if which == "best" else run.checkpoints.latest
    step = manager.latest_step()
    if step is None:
        return None
    name = f"{'best' if which == 'best' else 'checkpoints'}/{step}"
    path = path_for(run.workdir, name)
    like = run.program.init(run.program.placement.seed_keys(run.config.seeds))
    state, meta = checkpoint.restore_step(manager, step, like, run.program.placement.fetch)
    if path.is_file():
        try:
            if load(path)[1].get("state_checksum") == meta.get("checksum"):
                return path
        except (OSError, ValueError, KeyError):
            pass  # damaged: gathered again
    images = run.train_arrays[0]
    start = time.perf_counter()
    description = (
        f"BatchNorm statistics ({images.shape[0]} images)" if run.config.progress else None
    )
    stats = compute(run.program, state, images, run.config.batch_size, stop, description)
    if not stats:
        return None
    seconds = time.perf_counter() - start
    if jax.process_index() == 0:
        save(
            path,
            stats,
            {
                "checkpoint": name,
                "state_checksum": meta.get("checksum"),
                "images": int(images.shape[0] // run.config.batch_size * run.config.batch_size),
                "batch_size": run.config.batch_size,
                "seconds": seconds,
            },
        )
        log.info("BatchNorm population statistics of %s in %.0f s: %s", name, seconds, path)
    return path


def matching(workdir: pathlib.Path, checkpoint_name: str, state_checksum: str | None):
    """The statistics saved for a checkpoint whose arrays have ``state_checksum``, or None."""
    path = path_for(workdir, checkpoint_name)
    if not path.is_file():
        return None
    try:
        stats, meta = load(path)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error}); remove it and gather it again"
        ) from None
    if state_checksum is not None and meta.get("state_checksum") != state_checksum:
        return None
    return stats
