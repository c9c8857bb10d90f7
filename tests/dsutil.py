"""Tiny datasets made on the fly without Spark, for the fast unit tests.

Parquet shards are written with pyarrow and described with the same footer code the Spark
writer runs on executors (`sparkfeed.writefooters._footer_entry`, `sparkfeed.footer.entry`); tar shards follow the member layout
of the JVM writer (`<key>.<ext>`, scalars in `.json`).
"""

from __future__ import annotations

import io
import json
import signal
import os
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkfeed import storage
from sparkfeed.manifest import Manifest, parse_manifest, write_manifest
from sparkfeed.writefooters import _footer_entry


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers and process groups told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank_jobs(out: str, jobs) -> None:
    """A torchrun worker's loop: in a gloo process group, run each (name, job) of `jobs` and write
    its result as OUT/NAME/rank-R.json, the ranks in step between jobs."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    for name, job in jobs:
        result = job()
        os.makedirs(os.path.join(out, name), exist_ok=True)
        with open(os.path.join(out, name, f"rank-{dist.get_rank()}.json"), "w") as f:
            json.dump(result, f)
        dist.barrier()
    dist.destroy_process_group()


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    """Poll for a state that threads or worker processes reach on their own (nothing is timed;
    the time-out only turns a hang into a failure naming `what`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.01)


def child_exit_code(pid: int, hung: str, timeout: float = 60.0) -> int:
    """A forked child's exit code; one still running after `timeout` (a hang, not a slow child:
    the bound only turns it into a failure) is killed and the test fails saying `hung`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(hung)


def sigint_once_exists(path: str, timeout: float = 120.0) -> None:
    """Send this process SIGINT, as Ctrl-C does, once `path` exists (a held Spark task made it),
    from a thread of its own; never a stray Ctrl-C into the rest of the run if it never does."""
    import signal
    import threading

    def interrupt():
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(path):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()


def table(n: int, seed: int = 0, image_bytes: int = 0) -> pa.Table:
    """n rows: id (int64, unique), label (int32, 0..9), score (double), caption, feature (list)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    cols = {
        "id": ids,
        "label": (ids % 10).astype(np.int32),
        "score": rng.random(n),
        "caption": [f"caption {i}" for i in range(n)],
        "feature": pa.array([[float(i), float(i) + 0.5] for i in range(n)], pa.list_(pa.float32())),
    }
    if image_bytes:
        cols["image"] = [bytes([i % 251]) * image_bytes for i in range(n)]
    return pa.table(cols)


def write_parquet(root: str, data: pa.Table, rows_per_shard: int, rows_per_group: int,
                  codecs: dict | None = None, sort_by: str | None = None) -> Manifest:
    """Write `data` as Parquet shards plus a manifest; returns the manifest."""
    os.makedirs(root, exist_ok=True)
    if sort_by:
        data = data.sort_by(sort_by)
    fs, froot = storage.resolve(root)
    entries, schema = [], None
    for k, start in enumerate(range(0, data.num_rows, rows_per_shard)):
        rel = f"part-{k:05d}.parquet"
        full = os.path.join(root, rel)
        pq.write_table(data.slice(start, rows_per_shard), full, row_group_size=rows_per_group)
        entry = _footer_entry(fs, full, rel, os.path.getsize(full))
        schema = entry.pop("schema")
        entries.append(entry)
    codecs = codecs or {}
    doc = {"sparkfeed_manifest": 1, "format": "parquet", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": n, "type": t, **({"codec": codecs[n]} if n in codecs else {})}
                      for n, t in schema],
           "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries), "shards": entries}
    m = parse_manifest(doc, dataset=root)
    write_manifest(m, root)
    return m


def write_tar(root: str, data: pa.Table, rows_per_shard: int, image_ext: str = "jpg",
              index: bool = True) -> Manifest:
    """Write `data` (id, label, score, caption, feature[, image]) as WebDataset tars + manifest,
    each tar with its DALI index (made by the indexer's own scan) unless `index=False`."""
    os.makedirs(root, exist_ok=True)
    rows = data.to_pylist()
    shards = []
    for k, start in enumerate(range(0, len(rows), rows_per_shard)):
        rel = f"shard-{k:05d}.tar"
        part = rows[start:start + rows_per_shard]
        with tarfile.open(os.path.join(root, rel), "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in part:
                key = f"s{r['id']:08d}"
                members = {"cls": str(r["label"]).encode(), "txt": r["caption"].encode(),
                           "json": json.dumps({"id": r["id"], "score": r["score"],
                                               "feature": r["feature"]}).encode()}
                if "image" in r:
                    members[image_ext] = r["image"]
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        ids = [r["id"] for r in part]
        labels = [r["label"] for r in part]
        shards.append({"path": rel, "num_samples": len(part),
                       "num_bytes": os.path.getsize(os.path.join(root, rel)),
                       "members": sorted(members), **(_dali_index(root, rel) if index else {}),
                       "stats": {"id": {"min": min(ids), "max": max(ids), "null_count": 0},
                                 "label": {"min": min(labels), "max": max(labels), "null_count": 0}}})
    schema = [{"name": "key", "type": "string", "member": "__key__"},
              {"name": "id", "type": "int64", "member": "json"},
              {"name": "label", "type": "int32", "member": "cls"},
              {"name": "score", "type": "double", "member": "json"},
              {"name": "caption", "type": "string", "member": "txt"},
              {"name": "feature", "type": "list<item: float>", "member": "json"}]
    if "image" in data.column_names:
        schema.append({"name": "image", "type": "binary", "codec": "jpeg", "member": image_ext})
    doc = {"sparkfeed_manifest": 1, "format": "webdataset", "created_by": {"sparkfeed": "test"},
           "schema": schema, "num_samples": len(rows),
           "num_bytes": sum(s["num_bytes"] for s in shards), "shards": shards}
    m = parse_manifest(doc, dataset=root)
    write_manifest(m, root)
    return m


def rewrite_tar(root: str, shard: str, members) -> dict[str, list[int]]:
    """Rewrite tar `shard` of the dataset at `root` as ustar, each member in turn replaced by what
    `members(info, data)` returns (a list of (info, data): none drops it, two add one), and its
    manifest entry's size made to match. The tar offset of every header written, by name."""
    path, out, offsets = os.path.join(root, shard), io.BytesIO(), {}
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src.getmembers():
            for new, data in members(info, src.extractfile(info).read()):
                offsets.setdefault(new.name, []).append(out.tell())
                new.size = len(data)
                dst.addfile(new, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(out.getvalue())
    manifest = os.path.join(root, "_sparkfeed.json")
    with open(manifest) as f:
        doc = json.load(f)
    for entry in doc["shards"]:
        if entry["path"] == shard:
            entry["num_bytes"] = len(out.getvalue())
    doc["num_bytes"] = sum(entry["num_bytes"] for entry in doc["shards"])
    with open(manifest, "w") as f:
        json.dump(doc, f)
    return offsets


def _dali_index(root: str, rel: str) -> dict:
    """Write the tar's DALI index beside it (what `sparkfeed.write` and `sparkfeed.index` do) and
    return the manifest field naming it."""
    import fsspec

    from sparkfeed.index.tar import scan_tar

    full = os.path.join(root, rel)
    scan = scan_tar(fsspec.filesystem("file"), full, rel, os.path.getsize(full), root)
    with open(full + ".idx", "w") as f:
        f.write(scan["dali_index"])
    return {"index": rel + ".idx"}


def spark_jobs_started(spark, fn) -> list[int]:
    """Run `fn` and return the ids of the Spark jobs it started, in any job group (a check that
    runs before Spark must start none). Before, only the jobs of a probe group were counted, and
    sparkfeed.write puts its jobs in a group of its own: a write running every job was seen to
    start none."""
    scheduler = spark.sparkContext._jsc.sc().dagScheduler()  # numbers jobs as they are submitted
    before = scheduler.nextJobId()
    fn()
    return list(range(before, scheduler.nextJobId()))


def run_script(source: str, where, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`source` saved as `script.py` under `where` and run in a fresh interpreter that imports
    what this one does (its `sys.path`), for what only a process of its own shows (exit codes,
    signals, interpreter teardown); output captured as text."""
    script = os.path.join(str(where), "script.py")
    with open(script, "w") as f:
        f.write(source)
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
