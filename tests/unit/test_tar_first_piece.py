"""A WebDataset shard's first piece over HTTP is asked for beside its index, not after it: the
first batch waits for one round trip, not two (`read.tarahead._guess_head`: the bytes the
first piece likely takes, by sample count, an eighth more). Later pieces take what that fetch
brought beyond the first piece: every byte of the tar is still served once. Real server on
127.0.0.1."""

import threading

import dsutil
import sparkfeed
from sparkfeed.bench.remote import LatencyServer
from sparkfeed.read import tar


def test_the_first_piece_is_asked_for_while_the_index_is_on_the_way(tmp_path, monkeypatch):
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)  # pieces of a few samples
    monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    data = dsutil.table(400, image_bytes=3000)
    m = dsutil.write_tar(str(tmp_path / "wds"), data, 200)
    tar_asked, before_index = threading.Event(), []

    def hold(method, path, range_header):
        """The index of shard 0 is answered only once a GET of its tar has come (or 5 s)."""
        if method == "GET" and path.endswith("shard-00000.tar"):
            tar_asked.set()
        if method == "GET" and path.endswith("shard-00000.tar.idx"):
            before_index.append(tar_asked.wait(5))

    server = LatencyServer(str(tmp_path), latency_s=0.0, hold=hold)
    try:
        loader = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=50, columns=["id", "image"])
        got = [(i, bytes(img)) for b in loader for i, img in zip(b["id"].tolist(), b["image"])]
        server.settled()
    finally:
        server.close()
    assert before_index == [True]  # the tar's bytes were asked for before the index was answered
    images = data.column("image").to_pylist()
    assert sorted(i for i, _ in got) == list(range(400)) and all(img == images[i] for i, img in got)
    ranges: dict[str, list[tuple[int, int]]] = {}
    for _, _, method, what, _ in server.log:
        path, _, rng = what.partition(" ")
        if method == "GET" and path.endswith(".tar"):
            a, b = rng.removeprefix("bytes=").split("-")
            ranges.setdefault(path, []).append((int(a), int(b) + 1))
    for s in m.shards:  # each shard's bytes served once: its ranges tile the file
        got_ranges = sorted(ranges[f"wds/{s.path}"])
        assert got_ranges[0][0] == 0 and got_ranges[-1][1] == s.num_bytes, got_ranges
        assert all(b == a for (_, b), (a, _) in zip(got_ranges, got_ranges[1:])), got_ranges
