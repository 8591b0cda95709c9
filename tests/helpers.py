"""Comparison helpers shared by the tests."""

import numpy as np

from deepnmf_jax.reference.parity import out_of_fixture_bounds, scaled_error

__all__ = ["assert_close_to_reference", "scaled_error"]


def assert_close_to_reference(new, ref, dtype, name=""):
    """The fixtures README's per-element bound: float64 1e-9 rel + 1e-11 scaled, float32 1e-4 + 1e-4."""
    assert np.shape(new) == np.shape(ref), (name, np.shape(new), np.shape(ref))
    bad = out_of_fixture_bounds(new, ref, dtype)
    assert bad == 0, (
        f"{name}: {bad} entries out of bounds; scaled error {scaled_error(new, ref):.3g}"
    )
