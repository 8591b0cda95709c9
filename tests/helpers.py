"""Comparison helpers shared by the tests."""

import numpy as np


def scaled_error(new, ref) -> float:
    """max|new - ref| / max|ref| (the fixtures README's measure)."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(new - ref)) / np.max(np.abs(ref)))


def assert_close_to_reference(new, ref, dtype, name=""):
    """The fixtures README's per-element bound: float64 1e-9 rel + 1e-11 scaled, float32 1e-4 + 1e-4."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    assert new.shape == ref.shape, (name, new.shape, ref.shape)
    rel, scale = (1e-9, 1e-11) if np.dtype(dtype) == np.float64 else (1e-4, 1e-4)
    bound = rel * np.abs(ref) + scale * np.max(np.abs(ref))
    excess = np.abs(new - ref) - bound
    assert np.all(excess <= 0), (
        f"{name}: {int(np.sum(excess > 0))} entries out of bounds; scaled error "
        f"{scaled_error(new, ref):.3g}"
    )
