"""MosaicML Streaming downloading an MDS copy of the bench's image dataset over the `remote`
scenario's latency server into a fresh local cache (run in build/peers/streaming).

Streaming has no http(s) downloader: `Stream(remote="http://...")` fails in
`CloudDownloader.get` with `ValueError: Unsupported remote path: http://...` (0.13: the schemes
are s3, gs, oci, azure, azure-dl, hf, sftp, dbfs, alipan and local paths). So it reads the same
server through its S3 downloader (boto3 with `S3_ENDPOINT_URL`, path-style: GET/HEAD
/<bucket>/<key>, which the server answers as files; it ignores the request signature). The MDS
copy (`<images>-mds/`, id/label/image bytes, written once next to the Parquet dataset, so the
server serves it) is the bucket. Every timed run starts with an empty local cache: a fresh
training node downloading the dataset.
"""

import os
import shutil
import tempfile
import warnings

import _peerlib

warnings.filterwarnings("ignore")


def main():
    a = _peerlib.args()
    import _torchvision_stub

    _torchvision_stub.install()  # the PyPI torchvision cannot load beside the CPU torch
    mds = a["path"].rstrip("/") + "-mds"
    convert_s = _peerlib.parquet_to_mds(a["path"], mds, {"id": "int64", "label": "int32", "image": "bytes"})
    # boto3's settings for the S3 downloader: the latency server, any credentials
    os.environ.update(S3_ENDPOINT_URL=a["endpoint"], AWS_ACCESS_KEY_ID="sparkfeed",
                      AWS_SECRET_ACCESS_KEY="sparkfeed", AWS_DEFAULT_REGION="us-east-1")
    import streaming
    import torch.utils.data
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    cache = tempfile.mkdtemp(prefix="sparkfeed-mds-cache-")
    try:
        dataset = StreamingDataset(remote=f"s3://{os.path.basename(mds)}", local=cache,
                                   batch_size=a["batch_size"], shuffle=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=a["batch_size"],
                                             num_workers=a["workers"])

        def batches():
            for batch in loader:
                yield len(batch["id"])

        _peerlib.measure(batches(), steady=True, versions=f"mosaicml-streaming {streaming.__version__}",
                         mds_convert_s=round(convert_s, 1))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
