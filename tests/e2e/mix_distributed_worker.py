"""Run under torchrun: each rank loads its share of a two-source mix (Parquet + tar) and writes
the (id, source) pairs it saw, and the gathered state after 3 batches, to OUT/rank-R.json."""

import json
import os
import sys

import torch.distributed as dist

import sparkfeed


def main(pq: str, wds: str, out: str, workers: int) -> None:
    dist.init_process_group("gloo")
    loader = sparkfeed.DataLoader([sparkfeed.Source(pq, weight=0.75), sparkfeed.Source(wds, weight=0.25)],
                                  batch_size=16, shuffle=True, seed=7, num_workers=workers, drop_last=True,
                                  columns=["id", "label"], with_source=True)
    loader.set_epoch(1)
    rows, batches, state = [], 0, None
    for batch in loader:
        rows += list(zip(batch["id"].tolist(), batch["__source__"].tolist()))
        batches += 1
        if batches == 3:
            state = loader.state_dict(all_ranks=True)  # a collective: every rank reaches it
    rank = dist.get_rank()
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": dist.get_world_size(), "rows": rows, "batches": batches,
                   "state": state, "stats": loader.stats()}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
