"""Fault drill for the README's Reliability figures: a loader with 2 workers reads a Parquet and
a WebDataset dataset over a real, deliberately flaky HTTP server on 127.0.0.1 and we count what
was injected and what was lost.  Run: .venv/bin/python tests/fault_drill.py"""

import logging
import os
import sys
import tempfile

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))
import dsutil  # noqa: E402
from faulty_http import FaultPlan, FaultyServer  # noqa: E402

import sparkfeed  # noqa: E402


def main() -> None:
    logging.disable(logging.WARNING)
    d = tempfile.mkdtemp()
    dsutil.write_parquet(d + "/pq", dsutil.table(5000, image_bytes=256), 500, 100)
    dsutil.write_tar(d + "/wds", dsutil.table(2000, image_bytes=256), 250)
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=0.5, sock_connect=2)}}
    print("| format | samples | 503 answers | dropped connections | stalls | delivered | lost | duplicated |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n in (("pq", 5000), ("wds", 2000)):
        plan = FaultPlan(error_every=4, drop_every=5, stall_every=11, stall_s=1.0)
        with FaultyServer(d, plan) as url:
            loader = sparkfeed.DataLoader(f"{url}/{name}", batch_size=100, shuffle=True, num_workers=2,
                                          storage_options=opts)
            ids = [i for b in loader for i in b["id"].tolist()]
        f = plan.injected
        print(f"| {'parquet' if name == 'pq' else 'webdataset'} | {n} | {f['error']} | {f['drop']} | "
              f"{f['stall']} | {len(ids)} | {n - len(set(ids))} | {len(ids) - len(set(ids))} |")


if __name__ == "__main__":
    main()
