"""NpyDecode: `.npy` bytes -> one tensor per batch, from Parquet binary columns and tar members;
bad rows are failures that `on_error` names or skips; nothing is unpickled."""

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sparkfeed
from sparkfeed.arrays import NpyDecode, NpyDecoder
from sparkfeed.binarycols import BinaryChunks, BinaryColumn
from sparkfeed.errors import CorruptSampleError


def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def test_a_batch_of_one_header_is_one_tensor_of_the_arrays_own_dtype_and_shape():
    arrays = [np.arange(6, dtype=np.int16).reshape(2, 3) * k for k in range(5)]
    blobs = [npy(a) for a in arrays]
    column = BinaryColumn(torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8),
                          torch.tensor(np.cumsum([0] + [len(b) for b in blobs]), dtype=torch.int64))
    res = NpyDecoder(NpyDecode()).decode(column)
    assert res.images.dtype == torch.int16 and res.images.shape == (5, 2, 3)
    assert torch.equal(res.images, torch.from_numpy(np.stack(arrays)))
    assert res.ok_rows.tolist() == [0, 1, 2, 3, 4] and res.failures == ()
    cast = NpyDecoder(NpyDecode(dtype=torch.float32)).decode([npy(a) for a in arrays])
    assert cast.images.dtype == torch.float32 and torch.equal(cast.images, res.images.float())


def test_a_batch_cut_across_row_groups_converts_from_its_parts():
    arrays = [np.full(3, k, np.float64) for k in range(10)]
    parts = [BinaryColumn(torch.frombuffer(bytearray(b"".join(p)), dtype=torch.uint8),
                          torch.tensor(np.cumsum([0] + [len(b) for b in p]), dtype=torch.int64))
             for p in ([npy(a) for a in arrays[:4]], [npy(a) for a in arrays[4:]])]
    res = NpyDecoder(NpyDecode()).decode(BinaryChunks(tuple(parts)))
    assert torch.equal(res.images, torch.from_numpy(np.stack(arrays)))


def test_rows_with_other_headers_convert_one_by_one_to_the_same_values():
    plain = np.arange(6, dtype=np.int32).reshape(2, 3)
    rows = [npy(plain), npy(plain.astype(">i4")), npy(np.asfortranarray(plain)), npy(plain.copy())]
    res = NpyDecoder(NpyDecode()).decode(rows)
    assert res.failures == () and res.images.dtype == torch.int32
    assert all(torch.equal(t, torch.from_numpy(plain)) for t in res.images)


def test_bad_rows_are_failures_with_their_reason_and_the_good_rows_stay_in_order():
    good = npy(np.ones(3, np.float32))
    rows = [good, b"", b"not an array", npy(np.array([1, None], dtype=object)), npy(np.ones(4, np.float32)),
            npy(np.ones(3, np.float64)), good[:-2], npy(np.array(["a", "b"])), good]
    res = NpyDecoder(NpyDecode()).decode(rows)
    reasons = dict(res.failures)
    assert res.ok_rows.tolist() == [0, 8] and res.images.shape == (2, 3)
    assert "no value" in reasons[1]
    assert "not a .npy array" in reasons[2]
    assert "Python objects" in reasons[3] and "never" in reasons[3]
    assert "shape (4,)" in reasons[4] and "shape (3,)" in reasons[4]
    assert "float64" in reasons[5]
    assert "cut short" in reasons[6]
    assert "not a number type" in reasons[7]
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7]


def test_the_spec_checks_its_dtype():
    with pytest.raises(ValueError, match="`dtype` should be None or a torch dtype .* but got dtype='float32'"):
        NpyDecode(dtype="float32")


def _parquet(tmp_path, rows):
    root = tmp_path / "pq"
    root.mkdir()
    pq.write_table(pa.table({"id": np.arange(len(rows)), "emb": pa.array(rows, pa.binary())}),
                   root / "a.parquet", row_group_size=50)  # batches of 64 span row groups
    return str(root)


def test_a_parquet_column_of_arrays_loads_as_tensors_exactly_once_shuffled(tmp_path):
    path = _parquet(tmp_path, [npy(np.full(4, k, np.float32)) for k in range(300)])
    loader = sparkfeed.DataLoader(path, batch_size=64, shuffle=True, num_workers=2,
                                  decode={"emb": sparkfeed.NpyDecode()})
    ids = []
    for batch in loader:
        assert batch["emb"].shape == (len(batch["id"]), 4)
        assert torch.equal(batch["emb"][:, 0], batch["id"].float())
        ids += batch["id"].tolist()
    assert sorted(ids) == list(range(300))


def test_a_bad_array_is_named_or_skipped_and_counted(tmp_path):
    rows = [npy(np.full(2, k, np.int64)) for k in range(100)]
    rows[37] = b"\x93NUMPY garbage"
    path = _parquet(tmp_path, rows)
    raising = sparkfeed.DataLoader(path, batch_size=16, decode={"emb": sparkfeed.NpyDecode()})
    with pytest.raises(CorruptSampleError, match=r"shard 'a.parquet'.*sample 'row 37': cannot decode: \.npy format version"):
        list(raising)
    skipping = sparkfeed.DataLoader(path, batch_size=16, on_error="skip",
                                    decode={"emb": sparkfeed.NpyDecode()})
    got = [i for b in skipping for i in b["emb"][:, 0].tolist()]
    assert got == [k for k in range(100) if k != 37]
    assert skipping.stats()["samples_skipped"] == 1


def test_npy_members_of_foreign_tars_are_indexed_with_their_codec_and_decode(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    for s in range(2):
        with tarfile.open(root / f"shard-{s}.tar", "w") as tar:
            for k in range(40):
                for ext, data in (("npy", npy(np.arange(3, dtype=np.float32) + 100 * s + k)),
                                  ("cls", str(k % 4).encode())):
                    info = tarfile.TarInfo(f"{s:02d}{k:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    m = sparkfeed.index(str(root), progress=False)
    assert m.column("npy").type == "binary" and m.column("npy").codec == "npy"
    loader = sparkfeed.DataLoader(str(root), batch_size=32, num_workers=2, shuffle=True,
                                  columns=["key", "npy", "cls"], decode={"npy": sparkfeed.NpyDecode()})
    firsts = []
    for batch in loader:
        assert batch["npy"].shape == (len(batch["cls"]), 3)
        assert torch.equal(batch["npy"][:, 1] - batch["npy"][:, 0], torch.ones(len(batch["cls"])))
        firsts += batch["npy"][:, 0].tolist()
    assert sorted(firsts) == sorted(float(100 * s + k) for s in range(2) for k in range(40))
    assert os.path.exists(root / "_sparkfeed.json")


def test_decode_refuses_a_spec_of_another_kind_by_name(tmp_path):
    path = _parquet(tmp_path, [npy(np.zeros(1))])
    with pytest.raises(ValueError, match=r"`decode\['emb'\]` should be a sparkfeed.ImageDecode or sparkfeed.NpyDecode"):
        sparkfeed.DataLoader(path, batch_size=1, decode={"emb": "npy"})


def test_a_loader_decoding_only_arrays_never_imports_pil(tmp_path):
    """Array decoding needs numpy alone: PIL (and DALI) load only for images."""
    import subprocess
    import sys

    path = _parquet(tmp_path, [npy(np.full(2, k, np.int32)) for k in range(20)])
    code = ("import sys, sparkfeed\n"
            f"L = sparkfeed.DataLoader({path!r}, batch_size=8, decode={{'emb': sparkfeed.NpyDecode()}})\n"
            "n = sum(len(b['emb']) for b in L)\n"
            "print(n, 'PIL' in sys.modules, 'nvidia.dali' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20", "False", "False"]


def test_rows_out_of_order_in_their_buffer_are_copied_in_row_order():
    from sparkfeed.arrays import _rows_as_table

    data = np.arange(100, dtype=np.uint8)
    assert _rows_as_table(data, np.array([10, 15, 20]), 5).base is not None  # back to back: a view
    assert _rows_as_table(data, np.array([50, 10, 30]), 5).tolist() == [list(range(50, 55)),
                                                                        list(range(10, 15)),
                                                                        list(range(30, 35))]
