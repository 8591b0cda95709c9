"""The errors a user can cause, each reported by ``train.py`` as one line (``error: ...``, exit 1).

Every class here derives from :class:`UserError`; ``train.py`` prints those without a traceback
(``--verbose`` or ``DEEPNMF_VERBOSE=1`` shows it) and lets anything else propagate as a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """Raised for a problem the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
    """The configuration is invalid, or does not match the run being resumed."""


class DataError(UserError, ValueError):
    """A dataset is damaged, incomplete or inconsistent with the configuration."""


class WorkdirError(UserError, OSError):
    """The work directory cannot be used: in use by another run, not a directory, read-only."""


class CheckpointError(UserError, RuntimeError):
    """No checkpoint of a run could be read."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGUSR2) after saving a checkpoint.

    Attributes:
      signal: the signal's name (``"SIGINT"``, ...), or None.
      before_training: stopped before the first step (loading, compiling, counting dead
        channels): nothing was saved because there was nothing to save, and the device may still
        be busy with a pass whose result is no longer wanted.
    """

    def __init__(self, message: str, signal: str | None = None, before_training: bool = False):
        super().__init__(message)
        self.signal = signal
        self.before_training = before_training
