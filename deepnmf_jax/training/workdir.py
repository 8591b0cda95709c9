"""The work directory of a run: an exclusive lock, side files written safely, the resume check.

Nothing a run writes beside its checkpoints can leave the work directory unusable or write outside
it:

* side files (``config.json``, ``results.json``, ...) are written to a fresh temporary name (created
  exclusively, never through a link) and renamed into place, so a reader sees the old content or
  the new one; appended files (``metrics.jsonl``, ``config_changes.jsonl``) and the lock are opened
  with ``O_NOFOLLOW``: an entry that is a symbolic link where a file is expected is refused, never
  followed;
* a torn last line of ``metrics.jsonl`` (a kill in mid-write) is dropped with a warning;
* an exclusive ``fcntl`` lock (released by the OS when the process dies) keeps a second run out;
* a full disk is one :class:`~deepnmf_jax.errors.WorkdirError` line saying what could not be
  written and how much space is free; the temporary files a crash leaves are removed on the next
  start (:func:`clean_temporary_files`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import shutil
import socket
import warnings
from collections.abc import Iterator
from typing import Any

from flax import traverse_util

from deepnmf_jax.errors import ConfigError, WorkdirError
from deepnmf_jax.training.config import RESUMABLE_KEYS, TrainConfig, from_json_text

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CONFIG_CHANGES = "config_changes.jsonl"


class WorkdirInUse(WorkdirError):
    """Another process holds the work directory's lock."""


def free_space(path: pathlib.Path) -> str:
    """The free space of the file system holding ``path``, e.g. ``"1.2 GB free"``."""
    try:
        free = shutil.disk_usage(path if path.is_dir() else path.parent).free
    except OSError:
        return "free space unknown"
    return f"{free / 1e9:.1f} GB free" if free >= 1e8 else f"{free / 1e6:.1f} MB free"


def write_error(path: pathlib.Path, error: OSError, keeps: str = "") -> WorkdirError:
    """One line for a failed write: what, why (a full disk says how much is free), what is kept."""
    path = pathlib.Path(path)
    if error.errno == errno.ENOSPC:
        why = f"the disk is full ({free_space(path)})"
    elif error.errno == errno.ELOOP:
        why = "it is a symbolic link, which a run never writes through"
    else:
        why = error.strerror or str(error)
    return WorkdirError(f"cannot write {path}: {why}{'; ' + keeps if keeps else ''}")


def prepare(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates ``workdir`` (and its parents) and checks that it is a writable directory."""
    path = pathlib.Path(workdir)
    if path.is_symlink() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} is a symbolic link to no directory")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create --workdir {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {path} is not writable")
    return path


def clean_temporary_files(workdir: pathlib.Path) -> list[pathlib.Path]:
    """Removes what a crash or a full disk left half-written: orbax's ``*.orbax-checkpoint-tmp*``
    folders in ``checkpoints/`` and ``best/``, and this module's ``.NAME.tmpPID`` files. Call it
    holding the lock. Returns what was removed."""
    removed = []
    for folder in (workdir, workdir / "checkpoints", workdir / "best", workdir / "eval"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            temporary = ".orbax-checkpoint-tmp" in entry.name or (
                entry.name.startswith(".") and ".tmp" in entry.name
            )
            if not temporary:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("%s: removed %d half-written files of an earlier crash", workdir, len(removed))
    return removed


def _open_no_follow(path: pathlib.Path, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise WorkdirError(
                f"{path} is a symbolic link; a run writes only regular files in its folder: "
                "remove the link"
            ) from None
        raise


@contextlib.contextmanager
def exclusive(workdir: pathlib.Path) -> Iterator[None]:
    """Holds the exclusive lock of ``workdir`` for the duration; another holder is named in the
    error (``RUN is in use by process PID on HOST``)."""
    import fcntl

    lock_path = pathlib.Path(workdir) / LOCK_NAME
    try:
        descriptor = _open_no_follow(lock_path, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise write_error(lock_path, error) from None
    try:  # the descriptor itself, unbuffered: a full disk fails the write, not a later close
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            raise WorkdirInUse(f"{workdir} is in use by {holder or 'another process'}") from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as error:
            raise write_error(lock_path, error) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def atomic_write_text(path: pathlib.Path, text: str, keeps: str = "") -> None:
    """Writes ``text`` to ``path`` through a fresh temporary file and a rename: a reader (or a
    resume after a kill) sees the old content or the new one, never a part. A link at ``path`` is
    replaced, not followed. A failed write (a full disk) removes the temporary file and raises one
    :class:`WorkdirError` line (``keeps`` says what is kept)."""
    atomic_write_bytes(path, text.encode(), keeps)


def atomic_write_bytes(path: pathlib.Path, data: bytes, keeps: str = "") -> None:
    """:func:`atomic_write_text` for bytes."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        descriptor = _open_no_follow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_error(path, error, keeps) from None


def append_text(path: pathlib.Path, text: str) -> None:
    """Appends ``text`` to ``path`` (created if missing), never through a symbolic link."""
    path = pathlib.Path(path)
    try:
        descriptor = _open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(descriptor, "a") as f:
            f.write(text)
    except OSError as error:
        raise write_error(path, error) from None


def read_jsonl(path: pathlib.Path, repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file. A last line that is not valid JSON (a write cut short by a
    kill) is dropped with a warning, and removed from the file when ``repair``; a bad line anywhere
    else, or a line that is not a JSON object, is a :class:`WorkdirError` naming the file."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number != len(lines):
                raise WorkdirError(f"{path}: line {number} is not valid JSON") from None
            warnings.warn(
                f"{path}: dropped a torn last line ({len(line)} characters)", stacklevel=2
            )
            if repair:
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
            continue
        if not isinstance(record, dict):
            raise WorkdirError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_config(workdir: pathlib.Path) -> TrainConfig:
    """The config a run was written with (``config.json``; keys added since read as defaults).

    Raises:
      ConfigError: no ``config.json``, or one that is not a valid config (one line naming it).
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{workdir} is not a training run (no config.json)")
    return from_json_text(path.read_text(errors="replace"), str(path))


def _flat(config: TrainConfig) -> dict[str, Any]:
    return traverse_util.flatten_dict(config.to_dict(), sep=".")


def check_config_matches(workdir: pathlib.Path, current: TrainConfig) -> dict[str, list] | None:
    """Raises if ``workdir`` holds a run with another configuration (keys outside
    ``RESUMABLE_KEYS`` that differ). Returns None when ``config.json`` must be written (it is
    missing, or an unreadable file from a crash, in which case a warning says so), else the
    resumable keys whose value changed, ``{key: [saved, current]}`` (empty when none did)."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    if not text.strip():
        warnings.warn(
            f"{path} is empty (a crash while writing it?); rewriting it from the current "
            "configuration",
            stacklevel=2,
        )
        return None
    saved_flat, current_flat = _flat(from_json_text(text, str(path))), _flat(current)
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


def record_config_change(
    workdir: pathlib.Path, current: TrainConfig, changed: dict[str, list]
) -> None:
    """A run resumed with other values of resumable keys (``changed``, from
    :func:`check_config_matches`): ``config.json`` becomes ``current``, and a line of
    ``config_changes.jsonl`` keeps the old values and how many epochs were logged under them."""
    with warnings.catch_warnings():  # a torn last line is reported when the run reads the file
        warnings.simplefilter("ignore")
        epochs = len(read_jsonl(workdir / "metrics.jsonl"))
    log.info(
        "%s: resumed after %d epochs with %s",
        workdir,
        epochs,
        ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()),
    )
    append_text(
        workdir / CONFIG_CHANGES, json.dumps({"after_epochs": epochs, "changed": changed}) + "\n"
    )
    write_config(workdir, current)


def write_config(workdir: pathlib.Path, current: TrainConfig) -> None:
    atomic_write_text(
        workdir / "config.json", json.dumps(current.to_dict(), indent=2, sort_keys=True)
    )


def check_writable(folder: pathlib.Path) -> None:
    """Raises a one-line :class:`WorkdirError` unless files can be created in ``folder`` (or, if
    it does not exist yet, in its nearest existing parent), before any work is done."""
    target = pathlib.Path(folder)
    while not target.exists() and target != target.parent:
        target = target.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise WorkdirError(f"{target} is not writable: nothing can be saved there")
