"""The machinery of the typed configs: frozen dataclass sections whose fields say, in their metadata,
how a value behaves, and the conversions from dicts, ``ConfigDict``s and ``--config.KEY=VALUE`` text.

Per field (:func:`field`):

* ``compiled``: whether the value changes the compiled programs (False: the same jitted functions
  serve another value, e.g. the seed or where the data lies);
* ``resume``: ``"fixed"`` (a run must resume with the same value), ``"may_change"`` (a resume may
  change it, e.g. the learning rates after a NaN loss) or ``"incidental"`` (it changes neither
  what is computed nor its results: paths, logging);
* ``since``: the version that added the key. A saved config without it (a run written before)
  reads as having the default, which keeps that run's computation.

The key sets a trainer needs (the incidental keys, the keys that may change on resume, those that do
not compile, those added since) are derived from this metadata (:func:`keys_where`), never kept by
hand.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from deepnmf_jax.errors import ConfigError

Resume = Literal["fixed", "may_change", "incidental"]


def field(
    default: Any = dataclasses.MISSING,
    *,
    compiled: bool = True,
    resume: Resume = "fixed",
    since: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its behaviour in the metadata (module docstring)."""
    metadata = {"compiled": compiled, "resume": resume, "since": since}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(hint: Any) -> type | None:
    """The dataclass type of a nested section, or None for a leaf."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def flat_fields(cls, prefix: str = "") -> dict[str, tuple[dataclasses.Field, Any]]:
    """``{"model.width": (field, type hint), ...}`` over every leaf of a config class."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        section = _section_type(hints[f.name])
        if section is not None:
            out.update(flat_fields(section, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (f, hints[f.name])
    return out


def keys_where(cls, predicate) -> frozenset[str]:
    """The dotted keys whose field metadata satisfies ``predicate(metadata)``."""
    return frozenset(k for k, (f, _) in flat_fields(cls).items() if predicate(f.metadata))


def to_dict(config) -> dict[str, Any]:
    """A config as nested plain dicts (what ``config.json`` holds)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def from_dict(cls, data: Mapping[str, Any], where: str = "config", complete: bool = False):
    """Builds a config class from nested dicts, checking every key and value type.

    Args:
      data: nested dicts (a ``config.json``, ``ConfigDict.to_dict()``).
      where: the prefix of keys in messages.
      complete: a saved config: keys added later (``since``) may be missing and read as their
        default; otherwise every key not given takes its default.

    Raises:
      ConfigError: an unknown key (with the known ones of that section), or a value of the wrong
        type; the message names the key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key {where}.{unknown[0]}; {where} has {', '.join(sorted(known))}"
        )
    values = {}
    for name, f in known.items():
        key = f"{where}.{name}"
        section = _section_type(hints[name])
        if name not in data:
            if complete and section is None and f.metadata.get("since") is None:
                raise ConfigError(f"{key} is missing (the saved config is incomplete)")
            continue
        if section is not None:
            values[name] = from_dict(section, data[name] or {}, key, complete)
        else:
            values[name] = check_type(data[name], hints[name], key)
    try:
        return cls(**values)
    except TypeError as error:  # a required field missing
        raise ConfigError(f"{where}: {error}") from None


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against a leaf's type hint (ints accepted for floats, lists for tuples)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if _is_union(hint):
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config.{key.removeprefix('config.')} = {value!r}: not {_a(hint)}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(
                f"config.{key.removeprefix('config.')} must be one of "
                f"{typing.get_args(hint)}, got {value!r}"
            )
        return value
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            (item,) = typing.get_args(hint)[:1]
            return tuple(check_type(v, item, key) for v in value)
    raise ConfigError(f"config.{key.removeprefix('config.')} = {value!r}: not {_a(hint)}")


def _a(hint) -> str:
    """The type's name with its article: ``an int``, ``a float or None``."""
    name = _name(hint)
    return (
        f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if not name.startswith("one of") else name
    )


def _name(hint) -> str:
    if _is_union(hint):
        return " or ".join(_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def parse_text(text: str, hint: Any, key: str) -> Any:
    """A ``--config.KEY=VALUE`` value read as the field's type: ``5`` for an int, ``true`` or
    ``1`` for a bool, ``None`` for an optional field, strings as they are."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if type(None) in options and text in ("None", "none", "null"):
        return None
    for option in options:
        try:
            if option is bool:
                if text.lower() in ("true", "1"):
                    return True
                if text.lower() in ("false", "0"):
                    return False
                continue
            if option is int:
                return int(text)
            if option is float:
                return float(text)
            if option is str or typing.get_origin(option) is Literal:
                return check_type(text, option, key)
            if typing.get_origin(option) is tuple:
                return check_type(ast.literal_eval(text), option, key)
        except (ValueError, SyntaxError, ConfigError):
            continue
    raise ConfigError(f"--config.{key}={text}: not {_a(hint)}")


def replace(config, overrides: Mapping[str, Any], texts: bool = False):
    """A copy of ``config`` with dotted ``overrides`` (``{"model.width": 2}``) applied; with
    ``texts``, the values are ``--config.KEY=VALUE`` strings read as the fields' types. The new
    config is validated as a whole (its ``__post_init__`` checks)."""
    fields = flat_fields(type(config))
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1) or [
                k for k in fields if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]
            ]
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {key}{hint}")
        field_hint = fields[key][1]
        value = parse_text(value, field_hint, key) if texts else check_type(value, field_hint, key)
        node = nested
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return _apply(config, nested)


def _apply(config, nested: Mapping[str, Any]):
    changes = {}
    for name, value in nested.items():
        current = getattr(config, name)
        changes[name] = _apply(current, value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **changes)


def get(config, key: str) -> Any:
    """The value at a dotted key."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node
