"""Petastorm's batched reader over the bench's Parquet files (run in build/peers/petastorm)."""

import warnings

import _peerlib

warnings.filterwarnings("ignore")


def main():
    a = _peerlib.args()
    import petastorm
    import pyarrow
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    urls = ["file://" + p for p in _peerlib.parquet_files(a["path"])]

    def batches():
        with make_batch_reader(urls, schema_fields=a["columns"], num_epochs=1, shuffle_row_groups=False,
                               reader_pool_type="thread", workers_count=max(1, a["workers"])) as reader:
            for batch in BatchedDataLoader(reader, batch_size=a["batch_size"]):
                yield len(batch["id"])

    _peerlib.measure(batches(), versions=f"petastorm {petastorm.__version__}, pyarrow {pyarrow.__version__}")


if __name__ == "__main__":
    main()
