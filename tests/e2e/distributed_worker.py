"""Run under torchrun: each rank loads its share and writes the ids it saw to OUT/rank-R.json."""

import json
import os
import sys

import torch.distributed as dist

import sparkfeed


def main(path: str, out: str, workers: int, drop_last: bool) -> None:
    dist.init_process_group("gloo")
    loader = sparkfeed.DataLoader(path, batch_size=16, shuffle=True, seed=7, num_workers=workers,
                                  drop_last=drop_last)
    loader.set_epoch(1)
    ids, batches, state = [], 0, None
    for batch in loader:
        ids += batch["id"].tolist()
        batches += 1
        if batches == 3:
            state = loader.state_dict(all_ranks=True)  # a collective: every rank reaches it
    rank = dist.get_rank()
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": dist.get_world_size(), "ids": ids, "batches": batches,
                   "state": state}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
