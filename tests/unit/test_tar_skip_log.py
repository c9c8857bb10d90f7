"""Under on_error="skip", the warning for an indexed shard that fails part-way, read in pieces
(`TarReader.chunks`), names the samples really skipped, and where (shard, tar offset): before,
it said "skipping 300 samples" where the pieces before the damage had been delivered and the
loader's `samples_skipped` counted 108."""

import re
import tarfile

import dsutil
import sparkfeed
from sparkfeed.read import tar


def _damaged(tmp_path, sample: int) -> tuple[str, int]:
    """A one-shard indexed dataset of 300 samples, the header of `sample`'s first member spoilt
    (bad checksum); (its root, that header's tar offset)."""
    root = str(tmp_path / "wds")
    dsutil.write_tar(root, dsutil.table(300, image_bytes=3000), 300)
    path = f"{root}/shard-00000.tar"
    with tarfile.open(path) as t:
        at = [m.offset for m in t.getmembers()][4 * sample]  # 4 members a sample
    raw = bytearray(open(path, "rb").read())
    raw[at + 2] ^= 0x01
    open(path, "wb").write(bytes(raw))
    return root, at


def test_the_skip_warning_names_the_samples_the_counter_counts(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)  # pieces of a few dozen samples
    monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    root, at = _damaged(tmp_path, 192)
    loader = sparkfeed.DataLoader(root, batch_size=50, on_error="skip")
    with caplog.at_level("WARNING", logger="sparkfeed"):
        ids = [i for b in loader for i in b["id"].tolist()]
    skipped = loader.stats()["samples_skipped"]
    said = [re.search(r"skipping (\d+) sample\(s\), (\d+)-(\d+) of the shard's 300", r.getMessage())
            for r in caplog.records if "skipping" in r.getMessage()]
    assert len(said) == 1 and said[0] is not None, caplog.text
    n, first, last = (int(x) for x in said[0].groups())
    assert 0 < n == skipped == 300 - len(ids), (n, skipped, len(ids))  # before: "skipping 300"
    assert sorted(ids) == list(range(first)) and last == 299  # what was delivered is what it says
    assert first <= 192 and f"samples 0-{first - 1} were read before, in pieces" in caplog.text
    assert f"shard 'shard-00000.tar', tar offset {at}" in caplog.text


def test_a_shard_read_whole_says_all_its_samples(tmp_path, caplog):
    root, at = _damaged(tmp_path, 10)  # pieces of 32 MiB: the shard is one piece
    loader = sparkfeed.DataLoader(root, batch_size=50, on_error="skip")
    with caplog.at_level("WARNING", logger="sparkfeed"):
        ids = [i for b in loader for i in b["id"].tolist()]
    assert ids == [] and loader.stats()["samples_skipped"] == 300
    assert "skipping 300 sample(s), 0-299 of the shard's 300: " in caplog.text
    assert f"tar offset {at}" in caplog.text
