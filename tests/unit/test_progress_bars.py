"""Progress bars: tqdm's refresh on a terminal; in a log file (CI) an update every few seconds,
not several a second (a 10-minute index wrote about 600 KB of bar updates to a CI log)."""

import io
import time

from sparkfeed.index import gather


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_to_a_log_file_updates_every_few_seconds_and_to_a_terminal_as_tqdm_does():
    assert gather.bar_options(True, io.StringIO())["mininterval"] == gather.LOG_BAR_INTERVAL_S >= 5
    assert "mininterval" not in gather.bar_options(True, _Terminal())
    assert gather.bar_options(False, io.StringIO())["disable"] is True


def test_a_local_index_job_writes_its_bar_to_a_log_file_at_most_twice(capsys):
    """A job shorter than the interval: the bar's first and last states only."""
    def slow(i: int) -> int:
        time.sleep(0.02)  # a footer read's wait, so the job spans several of tqdm's usual refreshes
        return i

    assert gather.run_local(slow, list(range(120)), "reading footers", "ds") == list(range(120))
    bar = capsys.readouterr().err
    assert bar.count("reading footers") <= 2, bar
