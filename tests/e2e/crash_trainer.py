"""A training loop that checkpoints loader state with every batch; the test kills it with
SIGKILL at an arbitrary point and starts it again. The checkpoint (state + ids seen) is written
atomically, the way a real trainer must write one."""

import json
import os
import sys
import time

import sparkfeed


def main(path: str, ckpt: str, workers: int) -> None:
    loader = sparkfeed.DataLoader(path, batch_size=10, shuffle=True, seed=4, num_workers=workers)
    seen = []
    if os.path.exists(ckpt):
        saved = json.load(open(ckpt))
        loader.load_state_dict(saved["loader"])
        seen = saved["seen"]
    for batch in loader:
        seen += batch["id"].tolist()
        tmp = ckpt + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"loader": loader.state_dict(), "seen": seen}, f)
        os.replace(tmp, ckpt)
        print("batch", len(seen), flush=True)
        time.sleep(0.02)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
