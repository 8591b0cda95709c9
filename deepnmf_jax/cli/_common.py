"""What every ``deepnmf`` subcommand shares: the error policy, ``--config`` with its
``--config.KEY=VALUE`` overrides, logging, and output that survives a closed pipe.

Error policy: every error a user can cause (a :class:`~deepnmf_jax.errors.UserError`, a bad flag, an
unknown subcommand) is one ``error: ...`` line on stderr and exit status 1; ``--verbose`` (or
``DEEPNMF_VERBOSE=1``) adds the traceback. Ctrl-C or SIGTERM: exit status 130 (a training run saves
a checkpoint first). Anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from deepnmf_jax._format import one_line
from deepnmf_jax.errors import TrainingInterrupted, UserError

VERBOSE_ENV = "DEEPNMF_VERBOSE"


class UsageError(UserError):
    """A bad command line: an unknown subcommand or flag, a missing or malformed value."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (one line, exit 1, with "did you mean")."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice:" in message:
            chosen = message.split("invalid choice:", 1)[1].split("(", 1)[0].strip().strip("'")
            choices = [
                c for action in self._actions for c in (getattr(action, "choices", None) or ())
            ]
            close = difflib.get_close_matches(chosen, [str(c) for c in choices], n=1)
            if close:
                message = f"{message}; did you mean {close[0]}?"
        if "unrecognized arguments:" in message:
            flags = [o for action in self._actions for o in action.option_strings]
            wrong = message.split(":", 1)[1].split()
            close = difflib.get_close_matches(wrong[0].split("=")[0], flags, n=1) if wrong else []
            if close:
                message = f"{message}; did you mean {close[0]}?"
        raise UsageError(f"{self.prog}: {message}")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose", action="store_true", help=f"print the traceback of errors (or {VERBOSE_ENV}=1)"
    )


def add_config(parser: argparse.ArgumentParser, what: str = "a training config") -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE_OR_NAME[:ARG]",
        help=f"{what}: a packaged name (cifar10, cifar10:fast, sweeps/fig5, ...) or a .py file; "
        "override any value with --config.KEY=VALUE (e.g. --config.data.data_dir=DIR)",
    )


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, ``{KEY: VALUE}`` of every ``--config.KEY=VALUE`` or
    ``--config.KEY VALUE``), in order; a repeated key keeps its last value."""
    rest, overrides, args = [], {}, list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config."):
            key, equals, value = arg[len("--config.") :].partition("=")
            if not equals:
                if not args:
                    raise UsageError(f"{arg} needs a value: --config.{key}=VALUE")
                value = args.pop(0)
            if not key:
                raise UsageError(f"{arg}: give a key, e.g. --config.num_epochs=5")
            overrides[key] = value
        else:
            rest.append(arg)
    return rest, overrides


def load_train_config(spec: str, overrides: dict[str, str]):
    """The :class:`~deepnmf_jax.training.config.TrainConfig` of ``--config`` with the overrides
    applied, each read as its key's type."""
    from deepnmf_jax import _schema, config_files
    from deepnmf_jax.training.config import TrainConfig, from_any

    config = from_any(config_files.load(spec))
    if not overrides:
        return config
    keys = list(_schema.flat_fields(TrainConfig))
    for key in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"unknown config key {key}{hint}")
    return _schema.replace(config, overrides, texts=True)


class _PipeSafe:
    """A stream that goes quiet instead of raising once its reader is gone (``| head`` killed by
    the same Ctrl-C), so that a run can still save its checkpoint and exit 130."""

    def __init__(self, stream):
        self._stream, self._broken = stream, False

    def write(self, text):
        if self._broken:
            return len(text)
        try:
            return self._stream.write(text)
        except (BrokenPipeError, ValueError):
            self._broken = True
            return len(text)

    def flush(self):
        if not self._broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._broken = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {one_line(message)}\n"


def _setup_logging() -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    library = logging.getLogger("deepnmf_jax")
    if not library.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        library.propagate = False


def error_line(error: BaseException) -> str:
    """A user error's message as one line (a KeyError's repr quotes unwrapped)."""
    text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    return one_line(text) or type(error).__name__


def run(command: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Runs ``command(argv)`` under the error policy (module docstring); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    _setup_logging()
    try:
        status = command(argv)
        return 0 if status is None else int(status)
    except TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        if stopped.before_training:
            # Nothing to save, and a device computation already dispatched (a long pass before
            # the first step) would hold up the interpreter's exit until it is done: exit now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", file=sys.stderr)
        return 130
    except UserError as error:
        if verbose:
            traceback.print_exception(error)
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format
