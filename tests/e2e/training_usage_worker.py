"""Run under torchrun: training-loop habits across real ranks (gloo). Each job writes
OUT/JOB/rank-R.json.

usage: training_usage_worker.py OUT PATH [STATE]

* seed_by_rank: `seed=7 + rank` (the habit of seeding each rank's RNG apart) makes the ranks read
  different orders; `state_dict(all_ranks=True)` names it on every rank instead of saving a state
  that no loader can load.
* resume_loop: a state gathered after 3 batches of epoch 1, loaded into fresh loaders that then run
  the usual `for epoch in range(saved_epoch, 3): loader.set_epoch(epoch)` loop; the gathered state
  is kept in the result.
* elastic (with STATE, a saved state of another world size): the rest of its epoch on these ranks.
"""

import functools
import json
import sys

import torch.distributed as dist

import dsutil
import sparkfeed


def ids(loader) -> list[int]:
    return [i for b in loader for i in b["id"].tolist()]


def seed_by_rank(path: str) -> dict:
    loader = sparkfeed.DataLoader(path, batch_size=16, shuffle=True, seed=7 + dist.get_rank(), num_workers=2)
    loader.set_epoch(1)
    it = iter(loader)
    next(it)
    try:
        loader.state_dict(all_ranks=True)
        error = None
    except ValueError as exc:
        error = str(exc)
    it.close()
    return {"error": error}


def resume_loop(path: str) -> dict:
    kw = dict(batch_size=16, shuffle=True, seed=7, num_workers=2)
    first = sparkfeed.DataLoader(path, **kw)
    first.set_epoch(1)
    it = iter(first)
    head = [i for _ in range(3) for i in next(it)["id"].tolist()]
    saved = {"epoch": 1, "loader": first.state_dict(all_ranks=True)}
    it.close()
    again = sparkfeed.DataLoader(path, **kw)
    again.load_state_dict(saved["loader"])
    epochs = []
    for epoch in range(saved["epoch"], 3):
        again.set_epoch(epoch)
        epochs.append(ids(again))
    return {"head": head, "epochs": epochs, "state": saved["loader"]}


def elastic(path: str, state_file: str) -> dict:
    loader = sparkfeed.DataLoader(path, batch_size=16, shuffle=True, seed=7, num_workers=2)
    with open(state_file) as f:
        loader.load_state_dict(json.load(f))
    return {"epoch": loader.dataset.epoch, "batches": len(loader), "ids": [b["id"].tolist() for b in loader]}


def main(out: str, path: str, state_file: str | None = None) -> None:
    jobs = [("seed_by_rank", seed_by_rank), ("resume_loop", resume_loop)] if state_file is None else \
        [("elastic", lambda p: elastic(p, state_file))]
    dsutil.run_rank_jobs(out, [(name, functools.partial(job, path)) for name, job in jobs])


if __name__ == "__main__":
    main(*sys.argv[1:])
