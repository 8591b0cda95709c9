"""Reading what a sweep's variants wrote (``results.json``, ``metrics.jsonl``, ``failed.json``,
``job.json``), checked: a file that is damaged or has the wrong shape gives one warning naming it
and counts as absent, so one bad variant never stops ``status`` or ``report`` for the others."""

from __future__ import annotations

import json
import math
import pathlib
import warnings
from typing import Any

from deepnmf_jax.errors import WorkdirError
from deepnmf_jax.training import workdir as workdir_lib


class DamagedRecordWarning(UserWarning):
    """A variant's file could not be used; the variant is reported without it."""


_WARNED: set[str] = set()  # one warning per damaged file and reason per process (a report reads
# each variant's files more than once)


def _warn(path: pathlib.Path, why: str) -> None:
    message = f"{path}: {why}; ignored"
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, DamagedRecordWarning, stacklevel=3)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _accuracies(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(_finite(v) for v in values)


def read_json(path: pathlib.Path) -> dict | None:
    """A JSON object, or None if the file is missing (silently) or damaged (with a warning)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError) as error:
        _warn(path, f"not valid JSON ({' '.join(str(error).split())[:80]})")
        return None
    if not isinstance(value, dict):
        _warn(path, f"not a JSON object but {type(value).__name__}")
        return None
    return value


def read_results(folder: pathlib.Path) -> dict | None:
    """``results.json`` if it has the shape the trainer writes (finite accuracies, epochs)."""
    path = folder / "results.json"
    results = read_json(path)
    if results is None:
        return None
    for key in ("final_test_accuracy", "best_test_accuracy"):
        summary = results.get(key)
        if not (
            isinstance(summary, dict)
            and _finite(summary.get("mean"))
            and _finite(summary.get("std"))
        ):
            _warn(path, f"{key} is not a mean and std")
            return None
    if not isinstance(results.get("epochs_completed"), int):
        _warn(path, "epochs_completed is not a number")
        return None
    return results


def read_history(folder: pathlib.Path) -> list[dict]:
    """The epochs of ``metrics.jsonl`` up to the first damaged one (which is warned about)."""
    path = folder / "metrics.jsonl"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torn-last-line warning: said below instead
            records = workdir_lib.read_jsonl(path)
    except (WorkdirError, OSError) as error:
        _warn(path, " ".join(str(error).split()).removeprefix(f"{path}: "))
        return []
    lines = (
        sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
        if path.exists()
        else 0
    )
    if len(records) < lines:
        _warn(path, "its last line is torn (a write cut short)")
    good = []
    for number, record in enumerate(records, start=1):
        if not (isinstance(record.get("epoch"), int) and _accuracies(record.get("test_accuracy"))):
            _warn(path, f"line {number} is not an epoch record with finite test accuracies")
            break
        good.append(record)
    return good
