"""Declaring a grid of training configs: small combinators over lists of flat override dicts.

A *point* is a flat dict of dotted config keys (``{"model.name": "cnmf_1x1", "model.width": 2}``);
a grid is a list of points. ``axis`` makes one point per value, ``product`` combines grids
(every point of one with every point of the others), ``concat`` lists grids one after another (for
the explicit lists a product cannot express). Two parts of a product may not set the same key.
This is the shape of Google's ``hyper`` module (big_vision, distribution_shift_framework), in a
few lines.

Each point becomes a :class:`Variant` with a readable, stable name made of its keys' last parts and
its values, in the order the axes were declared: ``model=cnmf_1x1,width=2,groups_nmf=4,groups_mix=1``.
A point that sets the reserved key ``variant`` is named by that value instead (for explicit lists of
many keys, e.g. training recipes), and ``variant`` is not applied to the config.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from deepnmf_jax.errors import ConfigError

Point = dict[str, Any]
LABEL = "variant"  # a point's own name, not a config key


def axis(key: str, values: Iterable[Any]) -> list[Point]:
    """One point per value of ``key``."""
    values = list(values)
    if not values:
        raise ValueError(f"axis {key!r} has no values")
    return [{key: value} for value in values]


def product(*grids: Sequence[Point]) -> list[Point]:
    """Every combination of one point from each grid (the first grid varies slowest)."""
    points = []
    for combination in itertools.product(*grids):
        merged: Point = {}
        for part in combination:
            twice = set(merged) & set(part)
            if twice:
                raise ValueError(f"two parts of a product set the same keys {sorted(twice)}")
            merged.update(part)
        points.append(merged)
    return points


def concat(*grids: Sequence[Point]) -> list[Point]:
    """The points of each grid, one grid after another."""
    return [dict(point) for grid in grids for point in grid]


def format_value(value: Any) -> str:
    """A value as it appears in a variant's name: ``2`` for 2.0, ``0.5``, ``true``, ``cnmf_1x1``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _short(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's last part (``model.name`` -> ``model``), or the whole key where two keys
    would share a short name."""
    last = [_short(k) for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of a sweep: its name and the overrides (dotted keys) that make its config."""

    name: str
    overrides: dict[str, Any]

    def matches(self, pattern: str) -> bool:
        """Whether ``pattern`` (shell-style, e.g. ``model=cnmf*`` or ``*width=2*``) matches one
        ``key=value`` part of the name, or the whole name."""
        return fnmatch.fnmatchcase(self.name, pattern) or any(
            fnmatch.fnmatchcase(part, pattern) for part in self.name.split(",")
        )


def variants(points: Sequence[Point]) -> list[Variant]:
    """Named variants of a grid; names must come out unique (they are folder names)."""
    keys: list[str] = []
    for point in points:
        keys += [k for k in point if k not in keys and k != LABEL]
    names = short_names(keys)
    result = []
    for point in points:
        overrides = {k: v for k, v in point.items() if k != LABEL}
        if LABEL in point:
            name = str(point[LABEL])
        else:
            name = ",".join(f"{names[k]}={format_value(point[k])}" for k in keys if k in point)
        if not is_folder_name(name):
            raise ConfigError(
                f"variant name {name!r} cannot be a folder name (one path component: no '/', "
                "no '.' or '..', not empty)"
            )
        result.append(Variant(name, overrides))
    counts = {}
    for variant in result:
        counts[variant.name] = counts.get(variant.name, 0) + 1
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"the grid has repeated points: {repeated}")
    return result


def is_folder_name(name: str) -> bool:
    """Whether ``name`` is one path component inside the sweep's folder (so a variant can never
    write outside it)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def select(all_variants: Sequence[Variant], only: Sequence[str]) -> list[Variant]:
    """The variants matching every ``--only`` pattern (all of them without patterns)."""
    return [v for v in all_variants if all(v.matches(pattern) for pattern in only)]
