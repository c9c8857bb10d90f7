"""MosaicML Streaming over an MDS copy of the bench's tabular data (run in build/peers/streaming).

The MDS copy is written once with `streaming.MDSWriter` from the Parquet files (read with this
venv's pyarrow) next to the Parquet dataset, `<tabular>-mds/`, and reused (`_done` marker).
"""

import json
import os
import shutil
import time
import warnings

import _peerlib

warnings.filterwarnings("ignore")


def convert(parquet: str, mds: str, columns: list[str]) -> float:
    if os.path.exists(os.path.join(mds, "_done")):
        return 0.0
    import pyarrow.parquet as pq
    from streaming import MDSWriter

    started = time.perf_counter()
    shutil.rmtree(mds, ignore_errors=True)
    types = {"id": "int64", "label": "int32"}
    spec = {c: types.get(c, "float32") for c in columns}
    with MDSWriter(out=mds, columns=spec, compression=None, size_limit="64mb") as writer:
        for path in _peerlib.parquet_files(parquet):
            table = pq.read_table(path, columns=columns)
            cols = [table.column(c).to_numpy() for c in columns]
            for i in range(table.num_rows):
                writer.write({c: v[i] for c, v in zip(columns, cols)})
    with open(os.path.join(mds, "_done"), "w") as f:
        json.dump({"from": parquet}, f)
    return time.perf_counter() - started


def main():
    a = _peerlib.args()
    import _torchvision_stub

    _torchvision_stub.install()  # the PyPI torchvision cannot load beside the CPU torch
    import streaming
    import torch.utils.data
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    mds = a["path"].rstrip("/") + "-mds"
    convert_s = convert(a["path"], mds, a["columns"])
    clean_stale_shared_memory()
    dataset = StreamingDataset(local=mds, batch_size=a["batch_size"], shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=a["batch_size"], num_workers=a["workers"])

    def batches():
        for batch in loader:
            yield len(batch["id"])

    _peerlib.measure(batches(), versions=f"mosaicml-streaming {streaming.__version__}",
                     mds_convert_s=round(convert_s, 1))


if __name__ == "__main__":
    main()
