"""Trains the paper's models: ``python train.py --config configs/cifar10.py --workdir DIR``.

Flags only; the work is done by :func:`deepnmf_jax.train_lib.train_and_evaluate`. Override any config
value with ``--config.KEY=VALUE`` (e.g. ``--config.model.name=cnn --config.num_seeds=1``); unknown keys
are an error. Rerunning with the same ``--workdir`` resumes.

Exit status: 0 done, 1 an error a user can fix (printed as one ``error: ...`` line; ``--verbose`` or
``DEEPNMF_VERBOSE=1`` adds the traceback), 130 stopped by Ctrl-C or SIGTERM after a checkpoint.
"""

import ast
import logging
import os
import re
import sys
import traceback
import warnings

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("verbose", False, "Print the traceback of errors (also DEEPNMF_VERBOSE=1).")
flags.mark_flags_as_required(["config", "workdir"])


class _PipeSafe:
    """A stream that goes quiet instead of raising once its reader is gone (``| tee`` or ``| head``
    killed by the same Ctrl-C), so that the run can still save its checkpoint and exit 130."""

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


def _verbose() -> bool:
    return os.environ.get("DEEPNMF_VERBOSE", "") not in ("", "0") or (
        FLAGS.is_parsed() and FLAGS.verbose
    )


def _fail(error: BaseException) -> int:
    if _verbose():
        traceback.print_exception(error)
    text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    text = text.strip()
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # reprs of reprs
        try:
            text = str(ast.literal_eval(text)).strip()
        except (ValueError, SyntaxError):
            break
    # a KeyError's text is its repr: "'modle'\nDid you mean ...?"
    text = re.sub(r"^'([^']*)'\s*", r"unknown config key '\1'; ", text)
    message = " ".join(text.split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    library_log = logging.getLogger("deepnmf_jax")
    library_log.addHandler(handler)
    library_log.setLevel(logging.INFO)
    library_log.propagate = False
    from deepnmf_jax import errors, train_lib

    try:
        results = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except errors.TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        return 130
    except errors.UserError as error:
        return _fail(error)
    if results is not None:
        print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}", file=sys.stderr)
    return 0


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override as one ``error:`` line."""
    try:
        return FLAGS(argv)
    except Exception as error:
        sys.exit(_fail(error))


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {' '.join(str(message).split())}\n"


def run(argv=None) -> int:
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    warnings.formatwarning = _one_line_warning
    try:
        app.run(main, argv=argv, flags_parser=_parse_flags)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
