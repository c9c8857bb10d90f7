"""One sparkfeed pass in a fresh process, for the scaling study (run with sparkfeed's python).

A process per dataset size so that peak RSS is not carried over from smaller sizes or from the
benchmark's other scenarios. Peak RSS is the kernel's high-water mark of this process's memory
(`VmHWM` in /proc/self/status), not `ru_maxrss`: Linux carries `ru_maxrss` over exec from the
forked parent (the benchmark process), so every size would read the parent's ~750 MB.
Prints one JSON line.
"""

import json
import resource
import sys
import time


def vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # may include the parent's


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
           # the loader process over its whole life (imports included); thread workers are in it
           "peak_rss_mb": vm_hwm_mb(),
           # worker processes together, sampled (0 where the workers are threads, as for Parquet)
           "worker_peak_rss_mb": round(peak[0] / 2**20, 1),
           "bytes_read": int(loader.stats()["bytes_read"])}
    print("SPARKFEED_PEER_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
