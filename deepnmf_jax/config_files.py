"""Loading config files: by name from the packaged configs (``deepnmf_jax.configs``: ``"cifar10"``,
``"cifar10:fast"``, ``"sweeps/fig5:cifar100"``) or by path (``"configs/cifar10.py"``,
``"my_config.py:ARG"``); the text after ``:`` goes to the file's ``get_config(arg)``.

The configs sit at the top of the package's layers (they import the experiments' grid); this loader
sits at the bottom and finds them by name when it runs, so the layers below them can load them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pathlib
from typing import Any

from deepnmf_jax.errors import ConfigError

PACKAGE = "deepnmf_jax.configs"


def _folder() -> pathlib.Path:
    """Where the packaged configs are (``configs/`` of the repository, installed under the name
    ``deepnmf_jax.configs``)."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    return pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()


def names() -> list[str]:
    """The packaged configs by name: ``cifar10``, ``sweeps/fig5``, ..."""
    found, here = [], _folder()
    for path in sorted(here.rglob("*.py")):
        relative = path.relative_to(here).with_suffix("")
        if relative.name != "__init__" and relative.name != "default":
            found.append(relative.as_posix())
    return found


def load(spec: str) -> Any:
    """Runs a config file's ``get_config`` (``NAME[:ARG]`` or ``PATH[:ARG]``) and returns what it
    returns (a training ``ConfigDict``, or a sweep's).

    Raises:
      ConfigError: no such config, a file without ``get_config``, or an argument the file refuses
        (one line, naming the file and what it accepts).
    """
    target, _, arg = spec.partition(":")
    if target.endswith(".py"):
        module = _module_from_path(pathlib.Path(target))
    else:
        module = _module_from_name(target)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {target} has no get_config()")
    try:
        return module.get_config(arg) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as error:
        text = " ".join(str(error).split()).strip("'\"")
        raise ConfigError(f"config {target}: {text}") from None


def _module_from_name(name: str):
    dotted = name.replace("/", ".").removesuffix(".py")
    if name.replace(".", "/") not in names() and name not in names():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = (
            f"; did you mean {close[0]}?" if close else f"; packaged configs: {', '.join(names())}"
        )
        raise ConfigError(f"no config named {name!r} and no file {name!r}{hint}")
    return importlib.import_module(f"{PACKAGE}.{dotted}")


def _module_from_path(path: pathlib.Path):
    if not path.is_file():
        close = difflib.get_close_matches(path.stem, names(), n=1)
        hint = f" (the packaged config {close[0]!r}?)" if close else ""
        raise ConfigError(f"config file {path} does not exist{hint}")
    resolved, here = path.resolve(), _folder()
    if resolved.is_relative_to(here):  # a packaged config given by its path: one module for it
        return importlib.import_module(
            f"{PACKAGE}.{'.'.join(resolved.relative_to(here).with_suffix('').parts)}"
        )
    module_spec = importlib.util.spec_from_file_location(f"_deepnmf_config_{path.stem}", resolved)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
