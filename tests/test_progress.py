"""Progress bars (deepnmf_jax._progress): redrawn freely on a terminal, at most once per
LOG_INTERVAL_S seconds in a log file, with the final count written either way."""

import io
import time

from deepnmf_jax._progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_few_redraws_and_the_final_count():
    log = io.StringIO()
    with progress_bar(total=500, desc="epoch 1/1", file=log, leave=True) as bar:
        for _ in range(500):  # one second of updates: tqdm alone redraws about 12 times
            bar.update(1)
            time.sleep(0.002)
    assert bar.mininterval == LOG_INTERVAL_S
    text = log.getvalue()
    assert "500/500" in text and text.count("\r") <= 3, repr(text)


def test_a_terminal_keeps_tqdm_defaults_and_an_explicit_interval_wins():
    assert progress_bar(total=1, file=_Terminal()).mininterval == 0.1  # tqdm's default
    assert progress_bar(total=1, file=io.StringIO(), mininterval=2.0).mininterval == 2.0
    assert progress_bar(range(3), file=io.StringIO(), disable=True).disable
