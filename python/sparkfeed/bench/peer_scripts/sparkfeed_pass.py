"""One sparkfeed pass in a fresh process, for the scaling study (run with sparkfeed's python).

A process per dataset size so that peak RSS (`ru_maxrss`, which only grows) is not carried
over from smaller sizes or from the benchmark's other scenarios. Prints one JSON line.
"""

import json
import resource
import sys
import time


def main():
    a = json.loads(sys.argv[1])
    import threading

    import psutil

    import sparkfeed

    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample_workers():  # workers' RSS summed, every 20 ms (ru_maxrss sees only reaped ones)
        while not stop.wait(0.02):
            total = 0
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample_workers, daemon=True)
    sampler.start()

    loader = sparkfeed.DataLoader(a["path"], batch_size=a["batch_size"], columns=a["columns"],
                                  num_workers=a["workers"])
    cpu = lambda: sum(getattr(resource.getrusage(w), f) for w in (  # noqa: E731
        resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    cpu0, samples, ttfb = cpu(), 0, None
    start = time.perf_counter()
    for batch in loader:
        if ttfb is None:
            ttfb = time.perf_counter() - start
        samples += len(batch["id"])
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    out = {"samples": samples, "seconds": seconds, "ttfb_s": ttfb, "cpu_s": cpu() - cpu0,
           # ru_maxrss is in KiB on Linux: the loader process over its whole life (imports included)
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "worker_peak_rss_mb": round(peak[0] / 2**20, 1),  # all workers together, sampled
           "bytes_read": int(loader.stats()["bytes_read"])}
    print("SPARKFEED_PEER_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
