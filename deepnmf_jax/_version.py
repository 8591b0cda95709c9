"""The package's version, read once from the installed metadata (its one source: pyproject.toml)."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("deepnmf-jax")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.2.0"`` -> (0, 2, 0); anything unreadable (``"0+unknown"``) -> (0,)."""
    parts = []
    for piece in text.split("+")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or (0,)
