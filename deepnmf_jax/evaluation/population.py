"""``deepnmf population-stats``: BatchNorm population statistics for a checkpoint of a run trained
without them (or for another checkpoint than ``best/``), over the run's own training images."""

from __future__ import annotations

import pathlib
import time

from deepnmf_jax.data.pipeline import load_for_config
from deepnmf_jax.training import population_stats
from deepnmf_jax.training import workdir as workdir_lib


def gather(folder: pathlib.Path, selection) -> tuple[pathlib.Path | None, float]:
    """Gathers and saves the statistics of ``selection.checkpoint`` of the run in ``folder``.
    Returns (the file, or None for a model without BatchNorm; the seconds it took)."""
    workdir_lib.check_writable(folder / population_stats.FOLDER)
    run = selection.open(folder)
    start = time.perf_counter()
    data = load_for_config(run.config.data, run.config.progress)
    placement = run.program.placement
    images = placement.put(data.train.images)
    description = (
        f"BatchNorm statistics ({len(data.train)} images)" if run.config.progress else None
    )
    stats = population_stats.compute(
        run.program, run.state, images, run.config.batch_size, description=description
    )
    if not stats:
        return None, time.perf_counter() - start
    seconds = time.perf_counter() - start
    path = population_stats.path_for(folder, run.checkpoint)
    batches = len(data.train) // run.config.batch_size
    population_stats.save(
        path,
        stats,
        {
            "checkpoint": run.checkpoint,
            "state_checksum": run.checksum,
            "images": batches * run.config.batch_size,
            "batch_size": run.config.batch_size,
            "seconds": seconds,
        },
    )
    return path, seconds
