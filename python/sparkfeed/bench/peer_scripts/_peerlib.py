"""Shared by the peer scripts (run with a peer venv's python, never imported by sparkfeed).

`measure(batches)` times an iterator of batch sizes the way the bench harness does and prints
one JSON line: samples, seconds, ttfb_s, peak_rss_mb (this process plus its children, sampled
every 20 ms), cpu_s (this process and its reaped children).
"""

import json
import os
import resource
import sys
import threading
import time


def _rss_sampler():
    try:
        import psutil
    except ImportError:  # fall back to VmHWM (self only; ru_maxrss would carry the parent's)
        return None
    proc = psutil.Process()
    state = {"peak": 0, "stop": threading.Event()}

    def sample():
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        state["peak"] = max(state["peak"], total)

    def loop():
        while not state["stop"].wait(0.02):
            sample()

    sample()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    state["thread"] = thread
    return state


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def measure(batches, steady=False, **extra):
    """`steady`: also the rate after the first batch (`steady_samples_per_s`, as the `remote`
    scenario reports for every loader)."""
    rss = _rss_sampler()
    cpu0, samples, ttfb, first = _cpu(), 0, None, 0
    start = time.perf_counter()
    for n in batches:
        if ttfb is None:
            ttfb, first = time.perf_counter() - start, int(n)
        samples += int(n)
    seconds = time.perf_counter() - start
    if steady and ttfb is not None and samples > first and seconds > ttfb:
        extra["steady_samples_per_s"] = round((samples - first) / (seconds - ttfb))
    cpu = _cpu() - cpu0
    if rss is not None:
        rss["stop"].set()
        rss["thread"].join()
        peak = rss["peak"] / 2**20
    else:
        with open("/proc/self/status") as f:
            peak = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024
    out = {"samples": samples, "seconds": seconds, "ttfb_s": ttfb if ttfb is not None else seconds,
           "peak_rss_mb": peak, "cpu_s": cpu, **extra}
    print("SPARKFEED_PEER_RESULT " + json.dumps(out), flush=True)


def args():
    return json.loads(sys.argv[1])


def parquet_files(path):
    out = []
    for root, _dirs, names in os.walk(path):
        out += [os.path.join(root, n) for n in names if n.endswith(".parquet") and n[0] not in "_."]
    return sorted(out)


def parquet_to_mds(parquet, mds, spec):
    """Write the Parquet dataset's columns `spec` ({name: MDS type}) as an MDS copy at `mds`,
    once (a `_done` marker); the seconds it took, 0 when the copy was already there."""
    if os.path.exists(os.path.join(mds, "_done")):
        return 0.0
    import shutil

    import pyarrow.parquet as pq
    from streaming import MDSWriter

    started = time.perf_counter()
    shutil.rmtree(mds, ignore_errors=True)
    with MDSWriter(out=mds, columns=spec, compression=None, size_limit="64mb") as writer:
        for path in parquet_files(parquet):
            table = pq.read_table(path, columns=list(spec))
            cols = [table.column(c).to_pylist() if spec[c] == "bytes" else table.column(c).to_numpy()
                    for c in spec]
            for i in range(table.num_rows):
                writer.write({c: v[i] for c, v in zip(spec, cols)})
    with open(os.path.join(mds, "_done"), "w") as f:
        json.dump({"from": parquet}, f)
    return time.perf_counter() - started
