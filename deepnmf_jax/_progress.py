"""Progress bars that stay short in a log file.

On a terminal a bar redraws itself about ten times a second. Written to a file (``nohup ... >
log``, SLURM's output file) every redraw stays in it, joined by carriage returns: a 40-epoch run
left lines of ~150 KB there. Away from a terminal the bar redraws at most once per
``LOG_INTERVAL_S`` seconds instead; its last state is still written when it closes.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, throttled to one redraw per ``LOG_INTERVAL_S`` seconds when
    its output (``file``, default ``sys.stderr``) is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)
