"""Stopping a run cleanly: SIGINT, SIGTERM and SIGUSR2 become a flag the loop checks between steps."""

from __future__ import annotations

import contextlib
import signal

from tqdm import tqdm


class StopRequest:
    """Turns SIGINT, SIGTERM and SIGUSR2 (a cluster's preemption or time-limit notice, as SLURM
    and submitit send it) into a flag checked between steps; a second Ctrl-C interrupts at once
    (``KeyboardInterrupt``), wherever the run is."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.requested: str | None = None

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        with contextlib.suppress(OSError):  # a closed pipe (``... | tee log`` after Ctrl-C)
            tqdm.write(f"{self.requested} received: saving a checkpoint and stopping ...")

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a stop was asked for: for work before the first step
        (compiling, counting dead channels), which has nothing to save."""
        if self.requested is not None:
            raise KeyboardInterrupt(self.requested)

    @contextlib.contextmanager
    def installed(self):
        """Handles the signals for the duration, then restores the previous handlers."""
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        try:
            for s in previous:
                signal.signal(s, self._handler)
        except ValueError:  # not the main thread: no signal handling
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
