"""Small text and number formats shared by the reports."""

from __future__ import annotations

import numpy as np


def plural(count: int, noun: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def mean_std(values) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std}


def one_line(text: str) -> str:
    """Every run of whitespace (newlines too) as one space."""
    return " ".join(str(text).split())
