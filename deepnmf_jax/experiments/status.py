"""What state each variant of a sweep is in, read from its folder (never from a scheduler alone).

* ``done``: ``results.json`` exists and the run reached its end (``num_epochs`` or the stop rule);
* ``running``: its work directory's lock is held (by a process on this machine or, on a shared
  file system, on another), or its SLURM job is RUNNING;
* ``pending``: its SLURM job is queued, not started;
* ``failed``: ``failed.json`` says how (the last error line);
* ``stopped``: it has checkpoints but is neither running nor failed (cancelled, Ctrl-C): ``run``
  resumes it;
* ``not started``, and ``skipped`` (the plan's reason: groups that do not divide the channels).
"""

from __future__ import annotations

import dataclasses
import fcntl
import pathlib

import numpy as np

from deepnmf_jax.experiments import launch, records
from deepnmf_jax.training import workdir as workdir_lib

STATES = ("done", "running", "pending", "failed", "stopped", "not started", "skipped")


@dataclasses.dataclass(frozen=True)
class VariantStatus:
    name: str
    state: str
    epochs: int  # completed epochs
    num_epochs: int
    test_accuracy: float | None  # mean over seeds, latest epoch
    error: str | None = None  # failed: the last error line; skipped: the reason
    job_id: str | None = None


def lock_held(folder: pathlib.Path) -> bool:
    """Whether another process holds the work directory's lock (taken and released at once)."""
    path = folder / workdir_lib.LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def variant_status(
    folder: pathlib.Path, name: str, num_epochs: int, queue: dict[str, str], skipped=None
) -> VariantStatus:
    """The state of the variant in ``folder`` (module docstring); ``queue`` is
    :func:`launch.slurm_queue`'s job states."""
    if skipped:
        return VariantStatus(name, "skipped", 0, num_epochs, None, skipped)
    history = records.read_history(folder)
    epochs = len(history)
    accuracy = float(np.mean(history[-1]["test_accuracy"])) if history else None
    job = records.read_json(launch.job_file(folder))
    job_id = str(job["job_id"]) if job and job.get("job_id") is not None else None
    results = records.read_results(folder)
    failed = records.read_json(folder / launch.FAILED_FILE)
    slurm = job is not None and job.get("executor") == "slurm"
    queued = queue.get(job_id) if slurm and job_id is not None else None

    def status(state, error=None):
        return VariantStatus(name, state, epochs, num_epochs, accuracy, error, job_id)

    if lock_held(folder) or queued in ("RUNNING", "COMPLETING"):
        return status("running")
    if queued is not None:
        return status("pending")
    if results and (
        results.get("epochs_completed", 0) >= num_epochs
        or str(results.get("stopped_because", "")).startswith("every learning rate")
    ):
        return status("done")
    if failed:
        return status("failed", failed.get("error"))
    if (folder / "checkpoints").is_dir() or results:
        return status("stopped")
    return status("not started")


def format_table(rows: list[VariantStatus]) -> str:
    """One line per variant, then the totals per state (pycls's ``sweep_collect`` in spirit)."""
    width = max([len(r.name) for r in rows] + [7])
    lines = [f"{'variant':<{width}}  {'state':<11}  {'epochs':>9}  {'test acc':>8}  note"]
    for r in rows:
        accuracy = "" if r.test_accuracy is None else f"{100 * r.test_accuracy:.2f} %"
        epochs = f"{r.epochs}/{r.num_epochs}"
        note = r.error or (f"job {r.job_id}" if r.state in ("running", "pending") else "")
        lines.append(f"{r.name:<{width}}  {r.state:<11}  {epochs:>9}  {accuracy:>8}  {note}")
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)}")
    return "\n".join(lines)
