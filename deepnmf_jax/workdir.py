"""The work directory of a run: an exclusive lock, side files written atomically, the resume check.

Nothing a run writes beside its checkpoints can leave the work directory unusable: side files
(``config.json``, ``results.json``) are written to a temporary name and renamed into place, a torn
last line of ``metrics.jsonl`` (a kill in mid-write) is dropped with a warning, and an exclusive
``fcntl`` lock (released by the OS when the process dies, however it dies) keeps a second run out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
import warnings

from flax import traverse_util

from deepnmf_jax.errors import ConfigError, WorkdirError
from deepnmf_jax.validation import INCIDENTAL_KEYS

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CONFIG_CHANGES = "config_changes.jsonl"

# Keys that may change between a run and its resumption (where the data comes from, how the run
# reports, how long it goes on, how the same computation is laid out).
RESUMABLE_KEYS = INCIDENTAL_KEYS | {
    "num_epochs",
    "optim.lr_a",  # learning rates may be lowered on resume (e.g. after a NaN loss)
    "optim.lr_b",
    "optim.lr_bn",
    "seed_loop",  # vmap or map: the same computation
    "model.chunk_bytes",  # the same computation in other pieces (float rounding aside)
    "model.patch_conv",  # likewise
    "mesh.seed_devices",  # a run may resume on other devices: orbax reshards the checkpoint
    "mesh.data_devices",
    "distributed.coordinator_address",
    "distributed.num_processes",
    "distributed.process_id",
    "distributed.auto_detect",
}


class WorkdirInUse(WorkdirError):
    """Another process holds the work directory's lock."""


def prepare(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates ``workdir`` (and its parents) and checks that it is a writable directory."""
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create --workdir {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {path} is not writable")
    return path


@contextlib.contextmanager
def exclusive(workdir: pathlib.Path):
    """Holds the exclusive lock of ``workdir`` for the duration; another holder is named in the
    error (``RUN is in use by process PID on HOST``)."""
    lock_path = pathlib.Path(workdir) / LOCK_NAME
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkdirInUse(f"{workdir} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a reader (or a resume
    after a kill) sees the old content or the new one, never a part."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with temporary.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_jsonl(path: pathlib.Path, repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file. A last line that is not valid JSON (a write cut short by a
    kill) is dropped with a warning, and removed from the file when ``repair``; a bad line anywhere
    else is an error."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise WorkdirError(f"{path}: line {number} is not valid JSON") from None
            warnings.warn(
                f"{path}: dropped a torn last line ({len(line)} characters)", stacklevel=2
            )
            if repair:
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


ADDED_KEYS = {
    "model.batch_norm_1x1": False,
    "model.train_iterations": 0,
    "model.train_iterations_epochs": 0,
}
"""Config keys added after runs were written, each with the value every earlier run had (a new
option's default keeps the old computation): a saved config without one is read as having it."""


def complete_config(saved: dict) -> dict:
    """``saved`` (a run's ``config.json``) with the missing :data:`ADDED_KEYS` filled in."""
    flat = traverse_util.flatten_dict(saved, sep=".")
    flat.update({k: v for k, v in ADDED_KEYS.items() if k not in flat})
    return traverse_util.unflatten_dict(flat, sep=".")


def check_config_matches(workdir: pathlib.Path, current: dict) -> dict[str, list] | None:
    """Raises if ``workdir`` holds a run with another configuration (keys outside
    ``RESUMABLE_KEYS`` that differ). Returns None when ``config.json`` must be written (it is
    missing, or unreadable, an empty file from a crash, in which case a warning says so), else the
    resumable keys whose value changed, ``{key: [saved, current]}`` (empty when none did)."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        warnings.warn(
            f"{path} is unreadable (a crash while writing it?); rewriting it from the current "
            "configuration",
            stacklevel=2,
        )
        return None
    saved_flat = traverse_util.flatten_dict(complete_config(saved), sep=".")
    current_flat = traverse_util.flatten_dict(current, sep=".")
    resumable = set(RESUMABLE_KEYS)
    if saved_flat.get("optim.schedule", "plateau") != "plateau":
        resumable.discard("num_epochs")  # it sets the length of the optax schedules
    differ = sorted(
        k
        for k in saved_flat.keys() | current_flat.keys()
        if saved_flat.get(k) != current_flat.get(k)
    )
    refused = [k for k in differ if k not in resumable]
    if refused:
        shown = ", ".join(f"{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}" for k in refused)
        why = ""
        if "num_epochs" in refused:
            why = " (num_epochs sets the length of this run's learning-rate schedule)"
        raise ConfigError(
            f"{workdir} holds a run with a different configuration ({shown}){why}; resume with "
            "the same configuration or use another --workdir"
        )
    return {k: [saved_flat.get(k), current_flat.get(k)] for k in differ}


def record_config_change(workdir: pathlib.Path, current: dict, changed: dict[str, list]) -> None:
    """A run resumed with other values of resumable keys (``changed``, from
    :func:`check_config_matches`): ``config.json`` becomes ``current``, the configuration the run
    goes on with, and a line of ``config_changes.jsonl`` keeps the old values and how many epochs
    were logged under them."""
    with warnings.catch_warnings():  # a torn last line is reported when the run reads the file
        warnings.simplefilter("ignore")
        epochs = len(read_jsonl(workdir / "metrics.jsonl"))
    log.info(
        "%s: resumed after %d epochs with %s",
        workdir,
        epochs,
        ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()),
    )
    line = json.dumps({"after_epochs": epochs, "changed": changed}) + "\n"
    with open(workdir / CONFIG_CHANGES, "a") as file:
        file.write(line)
    write_config(workdir, current)


def write_config(workdir: pathlib.Path, current: dict) -> None:
    atomic_write_text(workdir / "config.json", json.dumps(current, indent=2, sort_keys=True))
