"""Run under torchrun: for each job, each rank loads its share and writes the ids it saw to
OUT/JOB/rank-R.json. One torchrun runs every job (a process group and 2 ranks' start-up each).

usage: distributed_worker.py OUT JOBS  (JOBS: JSON {name: {"path", "workers", "drop_last"}})
"""

import functools
import json
import sys

import torch.distributed as dist

import dsutil
import sparkfeed


def load(path: str, workers: int, drop_last: bool) -> dict:
    loader = sparkfeed.DataLoader(path, batch_size=16, shuffle=True, seed=7, num_workers=workers,
                                  drop_last=drop_last)
    loader.set_epoch(1)
    ids, batches, state = [], 0, None
    for batch in loader:
        ids += batch["id"].tolist()
        batches += 1
        if batches == 3:
            state = loader.state_dict(all_ranks=True)  # a collective: every rank reaches it
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "ids": ids,
            "batches": batches, "state": state}


def main(out: str, jobs: dict) -> None:
    dsutil.run_rank_jobs(out, [(name, functools.partial(load, job["path"], job["workers"], job["drop_last"]))
                               for name, job in jobs.items()])


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
