"""The bench's peak memory of a run with worker processes: the sum of RSS counts a forked child's
copy-on-write pages of the parent twice; the summed PSS beside it counts them once."""

import os
import signal

import pytest

from sparkfeed.bench import timing

MB = 2**20


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/smaps_rollup"), reason="Linux's smaps_rollup")
def test_a_forked_childs_shared_pages_count_once_in_the_peak_pss():
    held = bytearray(os.urandom(1)) * (200 * MB)  # touched: resident, then shared with the child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: holds the parent's pages, copy-on-write, until killed
        os.close(read)
        os.write(write, b"x")
        signal.pause()
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"x"
        sampler = timing._PeakRss()
        sampler._before = set()  # (the child was started before the sampler: count it as the run's)
        with sampler:
            sampler._sample()
        assert sampler.peak_mb > 2 * 200, "the RSS sum counts the shared pages in both"
        assert sampler.peak_pss_mb is not None
        assert sampler.peak_pss_mb < sampler.peak_mb - 150, (sampler.peak_pss_mb, sampler.peak_mb)
        assert sampler.peak_pss_mb > 200
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        del held
