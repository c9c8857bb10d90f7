"""`python -m sparkfeed.bench.remote_epochs PATH`: epochs of the loader over PATH served by the
bench's `LatencyServer` in a process of its own (so this process is the loader alone), each with
its time, first batch, minor page faults, the process's CPU, the busiest threads' CPU and the
server process's CPU: what the `remote` scenario's rows cannot separate (its server shares the
bench process).
docs/deploy.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import time

from .remote import LATENCY_S, LatencyServer


def _serve_in_child(root: str, latency_s: float, conn) -> None:
    server = LatencyServer(root, latency_s)
    conn.send(server.url)
    try:
        conn.recv()  # until the parent says stop, or ends (EOFError)
    except EOFError:
        pass
    server.close()


def _stat_cpu(path: str) -> float:
    """User plus system CPU seconds in a `/proc/.../stat` file (a process's or a thread's)."""
    with open(path) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[tuple[int, str], float]:
    """CPU seconds per live thread of this process, keyed by (native id, Python name)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[(int(tid), names.get(int(tid), "(ended)"))] = _stat_cpu(f"/proc/self/task/{tid}/stat")
        except OSError:
            continue
    return out


def _epoch(path: str, workers: int, batch_size: int, server_pid: int | None = None) -> dict:
    import resource

    import sparkfeed

    before, cpu = resource.getrusage(resource.RUSAGE_SELF), _thread_cpu()
    server_before = _stat_cpu(f"/proc/{server_pid}/stat") if server_pid else 0.0
    loader = sparkfeed.DataLoader(path, batch_size=batch_size, columns=["id", "label", "image"],
                                  num_workers=workers)
    start, first, n = time.perf_counter(), None, 0
    for batch in loader:
        n += len(batch["id"])
        first = time.perf_counter() - start if first is None else first
    took = time.perf_counter() - start
    after, usage = _thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    busy = sorted(((after[k] - cpu.get(k, 0.0), k[1]) for k in after), reverse=True)[:3]
    row = {"samples": n, "seconds": took, "first_batch_s": first,
           "page_faults": usage.ru_minflt - before.ru_minflt,
           "cpu_user_s": usage.ru_utime - before.ru_utime,
           "cpu_system_s": usage.ru_stime - before.ru_stime,
           "busiest_threads_cpu_s": [(name, round(s, 3)) for s, name in busy]}
    if server_pid:  # the server process's CPU: with the loader's, the machine's whole cost
        row["server_cpu_s"] = _stat_cpu(f"/proc/{server_pid}/stat") - server_before
    return row


def _number(kind: type, low: float, strict: bool):
    """An argparse type: a `kind` (int or float) above `low` (at least `low` unless `strict`),
    else argparse's one-line usage error (exit 2) before any epoch runs."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value < float("inf") or (strict and value == low):
            bound = f"{'>' if strict else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"should be a{'n integer' if kind is int else ' number'} "
                                             f"{bound}, but got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    import multiprocessing
    import statistics

    p = argparse.ArgumentParser(prog="python -m sparkfeed.bench.remote_epochs", description=(
        "Epochs of sparkfeed's DataLoader over a dataset served by the bench's latency server "
        "(Range support, a fixed delay per request) in a process of its own, or read locally: "
        "time, first batch, minor page faults, the process's user and system CPU, the "
        "busiest threads' CPU and the server process's CPU per epoch."))
    p.add_argument("path", help="dataset directory (e.g. one under ~/.cache/sparkfeed-bench)")
    p.add_argument("--latency-ms", type=_number(float, 0, False), default=LATENCY_S * 1000,
                   help="delay per request")
    p.add_argument("--epochs", type=_number(int, 0, True), default=5,
                   help="timed epochs, after one warm-up epoch")
    p.add_argument("--workers", type=_number(int, 0, False), default=2)
    p.add_argument("--batch-size", type=_number(int, 0, True), default=256)
    p.add_argument("--local", action="store_true", help="read the files directly, no server")
    args = p.parse_args(argv)
    path, child = os.path.realpath(args.path), None
    if not os.path.isdir(path):
        p.error(f"{args.path}: no such dataset directory")
    if not args.local:
        ctx = multiprocessing.get_context("spawn")
        conn, theirs = ctx.Pipe()
        child = ctx.Process(target=_serve_in_child, daemon=True,
                            args=(os.path.dirname(path), args.latency_ms / 1000, theirs))
        child.start()
        path = f"{conn.recv()}/{os.path.basename(path)}"
    try:
        server_pid = child.pid if child is not None else None
        _epoch(path, args.workers, args.batch_size, server_pid)
        rows = [_epoch(path, args.workers, args.batch_size, server_pid) for _ in range(args.epochs)]
    finally:
        if child is not None:
            conn.send("stop")
            child.join(5)
    for row in rows:
        print(row)
    for key in [k for k in rows[0] if k not in ("samples", "busiest_threads_cpu_s")]:
        print(f"median {key}: {statistics.median(r[key] for r in rows):.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
