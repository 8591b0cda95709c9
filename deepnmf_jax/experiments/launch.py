"""Running a sweep's variants with submitit: on this machine (``local``) or as SLURM jobs (``slurm``).

Each variant is one submitit job running :class:`TrainVariant`, a callable that holds only plain data
(its config as JSON and its work directory), so nothing jitted is pickled and the code that runs is
the installed package's. The job calls ``train_and_evaluate(config, DIR/<variant>)``, which resumes
from its work directory, so every way a job can end is recoverable:

* a SLURM preemption or time limit (submitit's USR2 notice): the trainer saves a mid-epoch checkpoint,
  then submitit requeues the job (:meth:`TrainVariant.checkpoint`), which continues exactly;
* a cancelled job (``scancel``: SIGTERM) or Ctrl-C: the trainer saves and the job stops; rerunning
  ``run`` resumes it;
* an error: the job writes ``DIR/<variant>/failed.json`` (the last error line) and the others go on.

A variant that is done is skipped by ``run``, one that is running (its work directory's lock is held,
or its SLURM job is still queued) is left alone, so a variant never runs twice at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

JOB_FILE, FAILED_FILE = "job.json", "failed.json"


class TrainVariant:
    """What a submitit job runs: one variant's training (plain data only: picklable and cheap)."""

    def __init__(self, config_json: str, workdir: str):
        self.config_json, self.workdir = config_json, workdir

    def __call__(self) -> dict | None:
        from deepnmf_jax.errors import TrainingInterrupted
        from deepnmf_jax.training import config as config_lib
        from deepnmf_jax.training import loop, workdir

        _log_to_stderr()
        folder = pathlib.Path(self.workdir)
        failed = folder / FAILED_FILE
        # a log file is no terminal: no progress bars
        config = config_lib.from_any(json.loads(self.config_json)).replace(progress=False)
        try:
            failed.unlink(missing_ok=True)
            return loop.train_and_evaluate(config, folder, title=folder.name)
        except workdir.WorkdirInUse as error:  # it runs elsewhere: not a failure of this variant
            print(f"not started: {error}", file=sys.stderr)
            return None
        except TrainingInterrupted as stopped:
            print(stopped, file=sys.stderr)
            if stopped.signal == "SIGUSR2":  # preempted or timed out: let submitit requeue us
                handler = signal.getsignal(signal.SIGUSR2)
                if callable(handler):
                    handler(signal.SIGUSR2, None)  # calls self.checkpoint(), requeues, exits
            raise
        except Exception as error:
            last = " ".join(str(error).split()) or type(error).__name__
            record = {
                "error": f"{type(error).__name__}: {last}",
                "traceback": traceback.format_exc()[-4000:],
                "time": time.time(),
            }
            folder.mkdir(parents=True, exist_ok=True)
            workdir.atomic_write_text(failed, json.dumps(record, indent=2))
            raise

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook on preemption or time-out: resubmit the same call, which resumes."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainVariant(self.config_json, self.workdir))


def _log_to_stderr() -> None:
    logger = logging.getLogger("deepnmf_jax")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def job_file(variant_dir: pathlib.Path) -> pathlib.Path:
    return variant_dir / JOB_FILE


def record_job(variant_dir: pathlib.Path, executor: str, job_id: str) -> None:
    variant_dir.mkdir(parents=True, exist_ok=True)
    record = {"executor": executor, "job_id": str(job_id), "submitted": time.time()}
    from deepnmf_jax.training.workdir import atomic_write_text

    atomic_write_text(job_file(variant_dir), json.dumps(record))


def gpu_count() -> int:
    """GPUs on this machine (``nvidia-smi -L``; 0 without NVIDIA's tools)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def local_executors(logs: pathlib.Path, slots: int, gpus: int, timeout_min: float) -> list:
    """One submitit LocalExecutor per slot; with GPUs, slot k sees GPU k alone.

    Each job's controller starts behind ``trap '' INT``: it ignores Ctrl-C (which would make it
    kill the job a second later), while the training process handles it and saves a checkpoint.
    """
    import submitit

    executors = []
    for slot in range(slots):
        executor = submitit.LocalExecutor(folder=logs, max_num_timeout=30)
        executor.update_parameters(
            timeout_min=timeout_min,
            gpus_per_node=1 if gpus else 0,
            visible_gpus=(slot,) if gpus else (),
            setup=["trap '' INT"],
            stderr_to_stdout=True,
        )
        executors.append(executor)
    return executors


def run_local(
    todo: Sequence[tuple[str, str, pathlib.Path]],
    logs: pathlib.Path,
    max_parallel: int,
    timeout_min: float,
    on_done: Callable[[str], None],
    poll_s: float = 0.5,
) -> None:
    """Runs ``(name, config_json, workdir)`` variants here, ``max_parallel`` at a time (one per
    GPU on a GPU machine), until all are done; ``on_done(name)`` after each. On Ctrl-C every running
    variant saves a checkpoint and stops (their controllers ignore the signal); then it re-raises."""
    gpus = gpu_count()
    slots = max(1, max_parallel or gpus or 1)
    if gpus:
        slots = min(slots, gpus)
    executors = local_executors(logs, slots, gpus, timeout_min)
    queue = list(todo)
    running: dict[int, tuple[str, Any]] = {}
    try:
        while queue or running:
            for slot in range(slots):
                if slot not in running and queue:
                    name, config_json, workdir = queue.pop(0)
                    job = executors[slot].submit(TrainVariant(config_json, str(workdir)))
                    record_job(workdir, "local", job.job_id)
                    running[slot] = (name, job)
            time.sleep(poll_s)
            for slot, (name, job) in list(running.items()):
                if job.done():
                    del running[slot]
                    on_done(name)
    except KeyboardInterrupt:
        print(
            "stopping: each running variant saves a checkpoint (rerun to resume) ...",
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while any(not job.done() for _, job in running.values()):
                time.sleep(poll_s)
        raise


def submit_slurm(
    todo: Sequence[tuple[str, str, pathlib.Path]],
    logs: pathlib.Path,
    options: dict[str, Any],
    job_name: str,
) -> list[str]:
    """Submits the variants as one SLURM job array; returns the job ids (``ARRAY_TASK`` form)."""
    import submitit

    executor = submitit.SlurmExecutor(
        folder=logs, max_num_timeout=options.get("max_num_timeout", 30)
    )
    parameters = {
        "time": int(options["timeout_min"]),
        "job_name": job_name,
        "array_parallelism": options.get("max_parallel") or 256,
        "stderr_to_stdout": True,
        "additional_parameters": dict(options.get("additional_parameters") or {}),
    }
    for key in ("partition", "gpus_per_node", "cpus_per_task", "mem"):
        if options.get(key) is not None:
            parameters[key] = options[key]
    executor.update_parameters(**parameters)
    with executor.batch():
        jobs = [executor.submit(TrainVariant(c, str(w))) for _, c, w in todo]
    for (_, _, workdir), job in zip(todo, jobs, strict=True):
        record_job(workdir, "slurm", job.job_id)
    return [job.job_id for job in jobs]


def slurm_queue() -> dict[str, str]:
    """Job id (``ARRAY_TASK`` for array tasks) -> SLURM state, of this user's queued jobs."""
    if shutil.which("squeue") is None:
        return {}
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %T", "--array"],
        capture_output=True,
        text=True,
        check=False,
    )
    queue = {}
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            queue[parts[0]] = parts[1]
    return queue
