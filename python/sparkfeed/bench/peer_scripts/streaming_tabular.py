"""MosaicML Streaming over an MDS copy of the bench's tabular data (run in build/peers/streaming).

The MDS copy is written once with `streaming.MDSWriter` from the Parquet files (read with this
venv's pyarrow) next to the Parquet dataset, `<tabular>-mds/`, and reused (`_done` marker).
"""

import warnings

import _peerlib

warnings.filterwarnings("ignore")


def main():
    a = _peerlib.args()
    import _torchvision_stub

    _torchvision_stub.install()  # the PyPI torchvision cannot load beside the CPU torch
    import streaming
    import torch.utils.data
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    mds = a["path"].rstrip("/") + "-mds"
    types = {"id": "int64", "label": "int32"}
    convert_s = _peerlib.parquet_to_mds(a["path"], mds, {c: types.get(c, "float32") for c in a["columns"]})
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
