"""Old module paths, kept for one minor version (0.2.x) with a DeprecationWarning (see
CHANGELOG.md, 0.2.0)."""

from __future__ import annotations

import warnings


def moved(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in 0.3: use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def old_command(old: str, new: str) -> None:
    import sys

    print(
        f"warning: `{old}` is deprecated and will be removed in 0.3: use `{new}`", file=sys.stderr
    )
