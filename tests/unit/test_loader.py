"""The loader core: exactly once, determinism, resume, pushdown, errors. No Spark needed."""

import json
import os
import re
import shutil
import threading
import time

import pyarrow.compute as pc
import pytest
import torch

import dsutil
import sparkfeed
from sparkfeed import ManifestError, ShardReadError

N_PQ, N_TAR = 2000, 600


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pq") / "ds")
    dsutil.write_parquet(root, dsutil.table(N_PQ, image_bytes=16), 400, 64, sort_by="label")
    return root


@pytest.fixture(scope="module")
def tar_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tar") / "ds")
    dsutil.write_tar(root, dsutil.table(N_TAR, image_bytes=8), 150)
    return root


@pytest.fixture(params=["parquet", "webdataset"])
def any_path(request, pq_path, tar_path):
    return (pq_path, N_PQ) if request.param == "parquet" else (tar_path, N_TAR)


def ids_of(loader):
    return [i for b in loader for i in b["id"].tolist()]


def ids_by_rank(path, world, workers, **kw):
    return [ids_of(sparkfeed.DataLoader(path, rank=r, world_size=world, num_workers=workers, **kw))
            for r in range(world)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1)])
def test_each_sample_once_across_ranks_and_workers(any_path, shuffle, world, workers):
    path, n = any_path
    per_rank = ids_by_rank(path, world, workers, batch_size=32, shuffle=shuffle, seed=5)
    everything = [i for ids in per_rank for i in ids]
    assert sorted(everything) == list(range(n))


@pytest.mark.parametrize("filter_", [None, [("label", "<", 3)], [[("label", "==", 1)], [("score", ">", 0.9)]]])
def test_drop_last_gives_equal_full_batches_per_rank(any_path, filter_):
    path, n = any_path
    loaders = [sparkfeed.DataLoader(path, batch_size=16, drop_last=True, shuffle=True, filter=filter_,
                                    rank=r, world_size=3, num_workers=2) for r in range(3)]
    batches = [[len(b["id"]) for b in L] for L in loaders]
    assert len({len(b) for b in batches}) == 1
    assert all(size == 16 for b in batches for size in b)
    assert len(loaders[0]) == len(batches[0])


def test_same_seed_same_order_other_epoch_other_order(pq_path):
    make = lambda: sparkfeed.DataLoader(pq_path, batch_size=50, shuffle=True, seed=1, num_workers=2)
    a, b = make(), make()
    assert ids_of(a) == ids_of(b)
    b.set_epoch(1)
    assert ids_of(b) != ids_of(a)
    assert sorted(ids_of(b)) == list(range(N_PQ))


def reference(path, columns, expr):
    import pyarrow.parquet as pq

    files = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
    t = pq.read_table([os.path.join(path, f) for f in files] if len(files) > 1 else os.path.join(path, files[0]))
    return sorted(t.filter(expr).column("id").to_pylist()) if expr is not None else sorted(t.column("id").to_pylist())


FILTERS = [
    [("label", "<", 3)], [("label", "==", 9)], [("label", "in", {2, 7})], [("score", ">", 0.5)],
    [[("label", "==", 0)], [("id", ">=", 1990)]], [("caption", "==", "caption 17")],
    pc.equal(pc.bit_wise_and(pc.field("id"), 7), 0), (pc.field("label") > 4) & (pc.field("score") < 0.3), [("label", ">", 100)],
]


@pytest.mark.parametrize("filter_", FILTERS, ids=str)
def test_pushdown_equals_reading_everything_then_filtering(pq_path, tar_path, filter_):
    expr = sparkfeed.filters.to_expression(filter_)
    got = sorted(ids_of(sparkfeed.DataLoader(pq_path, batch_size=64, filter=filter_, columns=["id"])))
    assert got == reference(pq_path, ["id"], expr)
    full = dsutil.table(N_TAR, image_bytes=8)
    want = sorted(full.filter(expr).column("id").to_pylist())
    assert sorted(ids_of(sparkfeed.DataLoader(tar_path, batch_size=64, filter=filter_))) == want


def test_selective_filter_on_clustered_column_reads_few_bytes(tmp_path):
    root = str(tmp_path / "big")
    data = dsutil.table(20_000, image_bytes=200)
    data = data.set_column(1, "label", pc.cast(pc.divide(data.column("id"), 200), "int32"))  # 0..99
    dsutil.write_parquet(root, data, 2000, 200, sort_by="label")
    full = sparkfeed.DataLoader(root, batch_size=256)
    assert len(ids_of(full)) == 20_000
    sel = sparkfeed.DataLoader(root, batch_size=256, filter=[("label", "==", 42)])
    assert len(ids_of(sel)) == 200
    ratio = sel.stats()["bytes_read"] / full.stats()["bytes_read"]
    assert ratio < 0.05, ratio
    assert sel.stats()["shards_pruned"] == 9 and sel.stats()["row_groups_pruned"] >= 99


def test_heavy_columns_not_read_when_no_row_survives(tmp_path):
    root = str(tmp_path / "d")
    dsutil.write_parquet(root, dsutil.table(1000, image_bytes=1000), 1000, 1000)
    # score is random: stats cannot prune, but no row has score > 2
    L = sparkfeed.DataLoader(root, batch_size=100, filter=[("score", ">", 2.0)])
    assert ids_of(L) == []
    assert L.stats()["bytes_read"] < 100_000  # the 1 MB image column was never read


@pytest.mark.parametrize("workers_before,workers_after,world_before,world_after",
                         [(0, 0, 1, 1), (2, 2, 1, 1), (2, 1, 1, 1), (0, 2, 2, 2), (1, 2, 2, 3), (2, 0, 3, 1)])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_delivers_exactly_the_rest(any_path, workers_before, workers_after, world_before,
                                          world_after, stop_after):
    path, n = any_path
    kw = dict(batch_size=20, shuffle=True, seed=3)
    seen, states = [], []
    for r in range(world_before):
        L = sparkfeed.DataLoader(path, rank=r, world_size=world_before, num_workers=workers_before, **kw)
        L.set_epoch(2)
        it = iter(L)
        for _ in range(stop_after):
            seen += next(it)["id"].tolist()
        states.append(json.loads(json.dumps(L.state_dict())))  # plain values survive JSON
        it.close()
    rest = []
    for r in range(world_after):
        L = sparkfeed.DataLoader(path, rank=r, world_size=world_after, num_workers=workers_after, **kw)
        L.load_state_dict(states if world_before != world_after else states[r])
        assert L.dataset.epoch == 2
        rest += ids_of(L)
    assert len(seen) + len(rest) == n
    assert sorted(seen + rest) == list(range(n))


def _head_and_state(path: str, batches: int, **kw) -> tuple[list[int], dict]:
    """The ids of a new loader's first `batches` batches, and its state after them."""
    L = sparkfeed.DataLoader(path, **kw)
    it = iter(L)
    head = [i for _ in range(batches) for i in next(it)["id"].tolist()]
    state = L.state_dict()
    it.close()
    return head, state


def _resumed(path: str, state: dict, **kw) -> list[int]:
    """The ids a new loader delivers from `state`."""
    L = sparkfeed.DataLoader(path, **kw)
    L.load_state_dict(state)
    return ids_of(L)


def test_resume_continues_the_same_order(pq_path):
    kw = dict(batch_size=25, shuffle=True, seed=9, num_workers=2)
    full = ids_of(sparkfeed.DataLoader(pq_path, **kw))
    head, state = _head_and_state(pq_path, 5, **kw)
    assert head + _resumed(pq_path, state, **kw) == full


def test_state_after_a_full_epoch_is_empty_and_set_epoch_starts_over(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=500)
    assert len(ids_of(L)) == N_PQ
    assert L.state_dict()["remaining"] == []
    L.set_epoch(1)
    assert len(ids_of(L)) == N_PQ


def test_torchs_loader_attributes_read_as_torch_gives_them(pq_path):
    """Training code and tools read a loader's settings as torch's DataLoader holds them."""
    for drop_last in (True, False):
        L = sparkfeed.DataLoader(pq_path, batch_size=7, num_workers=2, drop_last=drop_last)
        assert (L.batch_size, L.num_workers, L.drop_last) == (7, 2, drop_last)
        assert len(L) == (N_PQ // 7 if drop_last else -(-N_PQ // 7))


def test_state_from_other_settings_is_refused(pq_path):
    state = sparkfeed.DataLoader(pq_path, batch_size=10).state_dict()
    with pytest.raises(ValueError, match="other settings"):  # (another batch_size loads: test_resume_batch_size.py)
        sparkfeed.DataLoader(pq_path, batch_size=10, drop_last=True).load_state_dict(state)


def test_run_cap_of_the_default_block_resumes_exactly_and_refuses_uncapped_states(tmp_path, monkeypatch):
    """Where the default block's run cap cuts the epoch into more blocks (many tiny shards), a
    state resumes exactly under it, and a state saved without the cap (an older sparkfeed: other
    blocks, another order) is refused rather than delivering other rows."""
    from sparkfeed import shuffle

    root = str(tmp_path / "tiny")
    dsutil.write_parquet(root, dsutil.table(200), 5, 5)  # 40 shards: 40 runs
    kw = dict(batch_size=10, shuffle=True, seed=3, num_workers=0)
    monkeypatch.setattr(shuffle, "MAX_BLOCK_RUNS", 1000)  # not binding: one block of 40 runs
    _, uncapped = _head_and_state(root, 1, **kw)
    monkeypatch.setattr(shuffle, "MAX_BLOCK_RUNS", 8)  # five blocks of 8 runs
    full = ids_of(sparkfeed.DataLoader(root, **kw))
    assert sparkfeed.DataLoader(root, **kw)._engine.stream(0).max_block <= 8 * 5
    assert sorted(full) == list(range(200))
    head, state = _head_and_state(root, 7, **kw)
    assert head + _resumed(root, state, **kw) == full
    with pytest.raises(ValueError, match="other settings"):
        sparkfeed.DataLoader(root, **kw).load_state_dict(uncapped)


def test_dataset_in_plain_torch_dataloader(any_path):
    path, n = any_path
    ds = sparkfeed.Dataset(path, columns=["id", "label"])
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    ids = [i for b in loader for i in b["id"].tolist()]
    assert sorted(ids) == list(range(n))
    fast = torch.utils.data.DataLoader(sparkfeed.Dataset(path, batch_size=64), batch_size=None, num_workers=2)
    batches = list(fast)
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(n))
    assert all(not k.startswith("__") for b in batches for k in b)
    if "image" in batches[0]:  # binary columns arrive as bytes, as from sparkfeed.DataLoader
        assert all(isinstance(x, bytes) for b in batches for x in b["image"])


def test_a_dataset_given_to_the_loader_refuses_the_arguments_that_would_change_it(pq_path):
    ds = sparkfeed.Dataset(pq_path, columns=["id"])
    with pytest.raises(ValueError, match=r"keeps its own .*\(got filter=, rank=, world_size=\)"):
        sparkfeed.DataLoader(ds, batch_size=8, rank=1, world_size=2, filter=[("id", "<", 5)])
    with pytest.raises(ValueError, match=r"got shuffle="):
        sparkfeed.DataLoader(ds, batch_size=8, shuffle=True)
    same = sparkfeed.DataLoader(ds, batch_size=500, shuffle=False, seed=0, num_workers=2)  # the defaults
    assert sorted(ids_of(same)) == list(range(N_PQ))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_the_worker_processes_torch_keeps(pq_path, context):
    """Under torch's own DataLoader with persistent_workers=True the workers keep the Dataset
    they started with; each epoch's shuffle must still be that epoch's, not epoch 0's again."""
    ds = sparkfeed.Dataset(pq_path, columns=["id"], batch_size=100, shuffle=True, seed=5)
    kept = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                                       multiprocessing_context=context)
    reference = sparkfeed.Dataset(pq_path, columns=["id"], batch_size=100, shuffle=True, seed=5)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        reference.set_epoch(epoch)
        got = [i for b in kept for i in b["id"].tolist()]
        inline = torch.utils.data.DataLoader(reference, batch_size=None, num_workers=2)
        assert got == [i for b in inline for i in b["id"].tolist()]
        assert sorted(got) == list(range(N_PQ))
        orders.append(got)
    assert orders[0] != orders[1] != orders[2]
    del kept
    import gc

    gc.collect()
    dsutil.wait_until(lambda: not _worker_pids(), "torch's kept workers outlived their loader")


def test_a_pickled_dataset_keeps_its_epoch(pq_path):
    import pickle

    ds = sparkfeed.Dataset(pq_path, columns=["id"], shuffle=True)
    ds.set_epoch(4)
    twin = pickle.loads(pickle.dumps(ds))
    assert twin.epoch == 4
    twin.set_epoch(6)
    assert ds.epoch == 4  # a copy by value: it does not move the original


def test_a_dataset_given_to_the_loader_is_left_as_it_was(pq_path):
    ds = sparkfeed.Dataset(pq_path, columns=["id", "image"])
    L = sparkfeed.DataLoader(ds, batch_size=64, num_workers=1)
    L.set_epoch(3)
    assert len(ids_of(L)) == N_PQ and L.dataset is not ds
    assert ds.batch_size is None and ds.epoch == 0  # neither the loader's batch size nor its epoch
    plain = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))  # still a plain dataset
    assert set(plain) == {"id", "image"} and len(plain["id"]) == 4


def test_batch_types(pq_path, tar_path):
    b = next(iter(sparkfeed.DataLoader(pq_path, batch_size=8)))
    assert b["id"].dtype == torch.int64 and b["label"].dtype == torch.int32
    assert b["score"].dtype == torch.float64 and b["feature"].shape == (8, 2)
    assert isinstance(b["caption"], list) and isinstance(b["caption"][0], str)
    assert isinstance(b["image"], list) and isinstance(b["image"][0], bytes)
    ids = b["id"].tolist()
    assert b["feature"][:, 0].tolist() == [float(i) for i in ids]
    assert b["caption"] == [f"caption {i}" for i in ids]
    t = next(iter(sparkfeed.DataLoader(tar_path, batch_size=8)))
    assert t["key"] == [f"s{i:08d}" for i in t["id"].tolist()]
    assert t["image"][0] == bytes([t["id"][0].item() % 251]) * 8


def test_projection_reads_only_requested_columns(pq_path):
    narrow = sparkfeed.DataLoader(pq_path, batch_size=500, columns=["id"])
    wide = sparkfeed.DataLoader(pq_path, batch_size=500)
    assert set(next(iter(narrow))) == {"id"}
    ids_of(narrow), ids_of(wide)
    assert narrow.stats()["bytes_read"] < wide.stats()["bytes_read"] * 0.7


def test_stats_counters(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=100, filter=[("label", "<", 5)])
    ids_of(L)
    s = L.stats()
    for key in ("samples", "bytes_read", "shards_pruned", "row_groups_pruned", "rows_filtered",
                "samples_skipped", "wait_s"):
        assert key in s
    assert s["samples"] == N_PQ // 2 and s["shards_pruned"] == 2


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_wait_s_counts_the_staging_done_on_the_training_loops_thread(pq_path, monkeypatch, worker_type):
    """With nothing to decode, pin or copy there is no prefetch thread: each batch is unpacked on
    the training loop's thread (from a worker process's shared memory), which the loop waits
    for as it waits for the batch. `wait_s` left that time out (here every unpack sleeps)."""
    import sparkfeed.batchwork as batchwork
    unpack = batchwork.unpack

    def slow_unpack(batch):
        time.sleep(0.05)
        return unpack(batch)
    monkeypatch.setattr(batchwork, "unpack", slow_unpack)
    L = sparkfeed.DataLoader(pq_path, batch_size=500, num_workers=2, worker_type=worker_type)
    batches = sum(1 for _ in L)
    assert batches > 1 and L.stats()["wait_s"] >= 0.05 * batches


# ---------------------------------------------------------------- bad input

def test_bad_arguments_fail_when_built(pq_path):
    cases = [(dict(batch_size=0), "`batch_size` should be a positive integer, but got batch_size=0"),
             (dict(num_workers=-1), "`num_workers` should be a non-negative integer, but got num_workers=-1"),
             (dict(columns=["nope"]), r"`columns` names \['nope'\] which dataset .* does not have"),
             (dict(columns="id"), "`columns` should be a non-empty list of column names, but got columns='id'"),
             (dict(filter=[("nope", "<", 1)]), r"`filter` \(nope < 1\) cannot apply to dataset .*: No match for FieldRef.Name\(nope\)$"),
             (dict(filter=[("label", "<", "x")]), r'`filter` \(label < "x"\) cannot apply to dataset'),
             (dict(filter="label<1"), "`filter` should be None, DNF tuples .* but got filter='label<1'"),
             (dict(on_error="ignore"), "`on_error` should be one of .* but got on_error='ignore'"),
             (dict(shuffle_buffer=0), "`shuffle_buffer` should be a positive integer or None, but got shuffle_buffer=0"),
             (dict(rank=2, world_size=2), r"`rank` should be in \[0, world_size=2\), but got rank=2"),
             (dict(shuffle="False"), r"`shuffle` should be one of \(False, True\), but got shuffle='False'"),
             (dict(drop_last="no"), r"`drop_last` should be one of \(False, True\), but got drop_last='no'"),
             (dict(pin_memory="yes"), r"`pin_memory` should be one of \(False, True\)"),
             (dict(multiprocessing_context="bogus"), r"`multiprocessing_context` should be None, one of .*'spawn'"),
             (dict(filter=[("label", "<", 2**64)]), r"`filter` should be DNF tuples .*too large")]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            sparkfeed.DataLoader(pq_path, **{"batch_size": 4, **kw})


def test_a_rank_from_the_environment_that_is_not_a_number_is_named(pq_path, monkeypatch):
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"environment variable RANK should be an integer .* got RANK='x'"):
        sparkfeed.DataLoader(pq_path, batch_size=4)


def test_torch_dataloader_arguments_are_taken_or_refused_with_what_does_their_job(pq_path):
    plain = ids_of(sparkfeed.DataLoader(pq_path, batch_size=7, shuffle=True, seed=3, num_workers=2))
    same = sparkfeed.DataLoader(pq_path, batch_size=7, shuffle=True, seed=3, num_workers=2,
                                persistent_workers=True, in_order=False)
    assert ids_of(same) == plain and ids_of(same) == plain  # two epochs: nothing persists wrongly
    cases = [(dict(sampler=torch.utils.data.RandomSampler(range(4))), r"`sampler` is a torch.*shuffle=, seed="),
             (dict(batch_sampler=[[0, 1]]), r"`batch_sampler` is a torch.*batch_size="),
             (dict(generator=torch.Generator()), r"`generator` is a torch.*seed="),
             (dict(worker_init_fn=print), r"`worker_init_fn` is a torch.*keyed by \(seed, epoch, sample\)"),
             (dict(pin_memory_device="cuda"), r"`pin_memory_device` is a torch.*device="),
             (dict(persistent_workers=True), r"`persistent_workers` needs num_workers > 0"),
             (dict(persistent_workers=1, num_workers=2), r"`persistent_workers` should be True or False"),
             (dict(in_order="yes"), r"`in_order` should be True or False")]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            sparkfeed.DataLoader(pq_path, batch_size=4, **kw)


def test_cuda_without_cuda_is_a_clear_error(pq_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        sparkfeed.DataLoader(pq_path, device="cuda")
    assert len(ids_of(sparkfeed.DataLoader(pq_path, batch_size=500, pin_memory=True))) == N_PQ


def test_no_manifest_is_an_error_that_says_how_datasets_are_made(tmp_path):
    with pytest.raises(ManifestError, match="sparkfeed.write"):
        sparkfeed.DataLoader(str(tmp_path))


def test_empty_result_gives_zero_batches(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=8, filter=[("label", ">", 99)], num_workers=2)
    assert list(L) == [] and len(L) == 0


def join_loader_threads(hang_guard_s: float = 60.0) -> list:
    """Join the loader's threads (prefetch, lanes); the ones still alive after the guard."""
    ours = [t for t in threading.enumerate() if t.name.startswith(("sparkfeed-prefetch", "sparkfeed-lane"))]
    for t in ours:
        t.join(hang_guard_s)
    return [t for t in ours if t.is_alive()]


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def fix_manifest_size(root, shard):
    """Make the manifest agree with a shard changed on purpose (so the member checks run)."""
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    for s in doc["shards"]:
        if s["path"] == shard:
            doc["num_bytes"] += os.path.getsize(os.path.join(root, shard)) - s["num_bytes"]
            s["num_bytes"] = os.path.getsize(os.path.join(root, shard))
    json.dump(doc, open(path, "w"))


def test_missing_shard_names_it(pq_path, tmp_path):
    root = copy_dataset(pq_path, tmp_path / "d")
    os.remove(os.path.join(root, "part-00003.parquet"))
    with pytest.raises(ShardReadError, match="part-00003.parquet.*missing"):
        ids_of(sparkfeed.DataLoader(root, batch_size=100))


def test_corrupt_parquet_names_shard_and_row_group(pq_path, tmp_path):
    root = copy_dataset(pq_path, tmp_path / "d")
    path = os.path.join(root, "part-00002.parquet")
    data = bytearray(open(path, "rb").read())
    data[200:2000] = os.urandom(1800)  # pages of the first row groups
    open(path, "wb").write(bytes(data))
    with pytest.raises(ShardReadError, match=r"part-00002.parquet.*row group \d"):
        ids_of(sparkfeed.DataLoader(root, batch_size=100))
    L = sparkfeed.DataLoader(root, batch_size=100, on_error="skip")
    got = ids_of(L)
    assert len(got) == len(set(got)) and L.stats()["samples_skipped"] > 0
    assert len(got) + L.stats()["samples_skipped"] == N_PQ


def test_truncated_tar_names_shard_and_offset(tar_path, tmp_path):
    root = copy_dataset(tar_path, tmp_path / "d")
    path = os.path.join(root, "shard-00001.tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError, match=r"shard-00001.tar.*tar offset \d+"):
        ids_of(sparkfeed.DataLoader(root, batch_size=50))
    L = sparkfeed.DataLoader(root, batch_size=50, on_error="skip")
    assert len(ids_of(L)) == N_TAR - 150 and L.stats()["samples_skipped"] == 150


def test_hostile_tar_members_are_refused(tar_path, tmp_path):
    import io
    import tarfile

    for kind in ("dotdot", "absolute", "symlink", "hardlink", "device"):
        root = copy_dataset(tar_path, tmp_path / kind)
        path = os.path.join(root, "shard-00000.tar")
        with tarfile.open(path, "a") as tar:
            info = tarfile.TarInfo({"dotdot": "../evil.cls", "absolute": "/etc/evil.cls"}.get(kind, "evil.cls"))
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, "s00000000.cls"
            elif kind == "device":
                info.type = tarfile.CHRTYPE
            payload = b"1" if kind in ("dotdot", "absolute") else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        fix_manifest_size(root, "shard-00000.tar")
        with pytest.raises(ShardReadError, match="shard-00000.tar.*(link|could escape the dataset|not a regular)"):
            ids_of(sparkfeed.DataLoader(root, batch_size=50))


def test_pickle_members_are_never_unpickled(tar_path, tmp_path):
    import io
    import pickle
    import tarfile

    root = copy_dataset(tar_path, tmp_path / "d")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = os.path.join(root, "shard-00000.tar")
    with tarfile.open(path, "a") as tar:
        payload = pickle.dumps(Evil())
        info = tarfile.TarInfo("s00000149.pickle")  # joins the last sample of the shard
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    fix_manifest_size(root, "shard-00000.tar")
    assert sorted(ids_of(sparkfeed.DataLoader(root, batch_size=50))) == list(range(N_TAR))
    assert not marker.exists()


def test_tampered_manifest_is_refused(pq_path, tmp_path):
    root = copy_dataset(pq_path, tmp_path / "d")
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    doc["shards"][0]["path"] = "../../etc/passwd"
    json.dump(doc, open(path, "w"))
    with pytest.raises(sparkfeed.PathEscapeError, match=r"'\.\./\.\./etc/passwd' could escape the dataset"):
        sparkfeed.DataLoader(root)
    doc["shards"][0]["path"] = "part-00000.parquet"
    doc["num_samples"] += 1
    json.dump(doc, open(path, "w"))
    with pytest.raises(ManifestError, match="num_samples"):
        sparkfeed.DataLoader(root)


def test_schema_drift_between_shards_names_the_shard(pq_path, tmp_path):
    import pyarrow.parquet as pq

    root = copy_dataset(pq_path, tmp_path / "d")
    path = os.path.join(root, "part-00001.parquet")
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("label"), "label", pc.cast(t.column("label"), "int64"))
    pq.write_table(t, path, row_group_size=64)
    with pytest.raises(ShardReadError, match="part-00001.parquet.*schema drift"):
        ids_of(sparkfeed.DataLoader(root, batch_size=100))


def test_non_utf8_member_name_is_refused(tar_path, tmp_path):
    import io
    import tarfile

    root = copy_dataset(tar_path, tmp_path / "d")
    path = os.path.join(root, "shard-00002.tar")
    with tarfile.open(path, "a", encoding="utf-8", errors="surrogateescape") as tar:
        info = tarfile.TarInfo("s\udcff\udcfe.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    fix_manifest_size(root, "shard-00002.tar")
    with pytest.raises(ShardReadError, match="shard-00002.tar.*UTF-8"):
        ids_of(sparkfeed.DataLoader(root, batch_size=50))


def test_huge_member_is_refused_before_it_is_read(tar_path, tmp_path, monkeypatch):
    from sparkfeed.read import tarinfo

    monkeypatch.setattr(tarinfo, "MAX_MEMBER_BYTES", 4)  # the images are 8 bytes
    with pytest.raises(ShardReadError, match=r"shard-00000.tar.*over the 4-byte limit"):
        ids_of(sparkfeed.DataLoader(tar_path, batch_size=50))


@pytest.mark.parametrize("shard", ["part-00001.parquet", "shard-00001.tar"])
def test_zero_byte_shard_names_it(pq_path, tar_path, tmp_path, shard):
    root = copy_dataset(pq_path if shard.endswith("parquet") else tar_path, tmp_path / "d")
    open(os.path.join(root, shard), "wb").close()
    with pytest.raises(ShardReadError, match=shard):
        ids_of(sparkfeed.DataLoader(root, batch_size=100))


def test_truncated_parquet_footer_names_the_shard(pq_path, tmp_path):
    root = copy_dataset(pq_path, tmp_path / "d")
    path = os.path.join(root, "part-00004.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-50])
    with pytest.raises(ShardReadError, match="part-00004.parquet.*cannot open Parquet"):
        ids_of(sparkfeed.DataLoader(root, batch_size=100))


def _corrupt_row_group(path: str, group: int) -> int:
    """Overwrite the middle of every column chunk of one row group; returns its row count."""
    import pyarrow.parquet as pq

    rg = pq.ParquetFile(path).metadata.row_group(group)
    with open(path, "r+b") as f:
        for j in range(rg.num_columns):
            col = rg.column(j)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            f.seek(start + col.total_compressed_size // 2)
            f.write(b"\xff" * max(1, col.total_compressed_size // 4))
    return rg.num_rows


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_row_group_read_with_its_neighbours_is_named_or_skipped_alone(pq_path, tmp_path, workers):
    """Row groups of a file are read in runs; a bad one among them is still named and skipped
    on its own, and its neighbours in the run are delivered."""
    import pyarrow.parquet as pq

    root = copy_dataset(pq_path, tmp_path / "d")
    path = os.path.join(root, "part-00002.parquet")
    groups = pq.ParquetFile(path).metadata.num_row_groups
    assert groups >= 3
    bad = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    lost = set(bad[64 * 2:64 * 3])  # row group 2 (64 rows per group)
    assert _corrupt_row_group(path, 2) == len(lost)
    with pytest.raises(ShardReadError, match="part-00002.parquet.*row group 2"):
        ids_of(sparkfeed.DataLoader(root, batch_size=50, num_workers=workers))
    L = sparkfeed.DataLoader(root, batch_size=50, num_workers=workers, on_error="skip")
    got = ids_of(L)
    assert sorted(got) == sorted(set(range(N_PQ)) - lost)
    assert L.stats()["samples_skipped"] == len(lost)


def test_prefetch_depth_does_not_change_order_or_content(pq_path):
    runs = [[(b["id"].tolist(), b["caption"]) for b in
             sparkfeed.DataLoader(pq_path, batch_size=64, shuffle=True, num_workers=2, prefetch=depth)]
            for depth in (0, 1, 4)]
    assert runs[0] == runs[1] == runs[2]


def test_memory_stays_bounded_over_epochs(pq_path):
    psutil = pytest.importorskip("psutil")
    L = sparkfeed.DataLoader(pq_path, batch_size=32, shuffle=True, prefetch=4)
    proc = psutil.Process()
    for epoch in range(2):
        L.set_epoch(epoch)
        ids_of(L)
    before = proc.memory_info().rss
    for epoch in range(2, 12):
        L.set_epoch(epoch)
        ids_of(L)
    assert proc.memory_info().rss - before < 64 * 2**20


def test_early_break_leaves_no_prefetch_thread(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=10, prefetch=4)
    for i, _ in enumerate(L):
        if i == 2:
            break
    assert not join_loader_threads()


def test_stats_count_what_was_delivered_not_what_was_read_ahead(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=8, num_workers=1, prefetch=4)
    for i, _ in enumerate(L):
        if i == 2:
            break
    assert L.stats()["samples"] == 24


@pytest.mark.parametrize("workers", [1, 3])
def test_thread_and_process_workers_give_the_same_batches_in_the_same_order(any_path, workers):
    path, n = any_path
    runs = {wt: [b["id"].tolist() for b in sparkfeed.DataLoader(
        path, batch_size=30, shuffle=True, seed=2, num_workers=workers, worker_type=wt)]
        for wt in ("thread", "process")}
    assert runs["thread"] == runs["process"]
    assert sorted(i for b in runs["thread"] for i in b) == list(range(n))


def test_thread_lanes_stop_on_break_and_pass_errors_on(pq_path, tmp_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=10, num_workers=3, worker_type="thread")
    for i, _ in enumerate(L):
        if i == 4:
            break
    assert not join_loader_threads()
    root = copy_dataset(pq_path, tmp_path / "d")
    os.remove(os.path.join(root, "part-00004.parquet"))
    with pytest.raises(ShardReadError, match="part-00004"):
        ids_of(sparkfeed.DataLoader(root, batch_size=10, num_workers=3, worker_type="thread"))
    assert not join_loader_threads()


def test_corrupt_tar_member_is_a_corrupt_sample_naming_shard_and_key(tar_path, tmp_path):
    import io
    import tarfile

    root = copy_dataset(tar_path, tmp_path / "d")
    path = os.path.join(root, "shard-00003.tar")
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            if info.name == "s00000460.json":
                payload = b"{not json"
            if info.name == "s00000470.cls":
                payload = b"\xff\xfe"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    fix_manifest_size(root, "shard-00003.tar")
    with pytest.raises(sparkfeed.CorruptSampleError, match=r"shard-00003.tar.*s00000460.*json"):
        ids_of(sparkfeed.DataLoader(root, batch_size=50))
    L = sparkfeed.DataLoader(root, batch_size=50, on_error="skip", filter=[("label", "<", 5)])
    got = ids_of(L)
    assert sorted(got) == [i for i in range(N_TAR) if i % 10 < 5 and i not in (460, 470)]
    assert L.stats()["samples_skipped"] == 2


def test_null_where_a_tensor_needs_a_number_names_the_shard_or_is_skipped(tmp_path):
    import pyarrow as pa

    data = dsutil.table(100)
    labels = pa.array([None if i == 42 else i % 10 for i in range(100)], pa.int32())
    data = data.set_column(data.schema.get_field_index("label"), "label", labels)
    root = str(tmp_path / "d")
    dsutil.write_parquet(root, data, 50, 25)
    with pytest.raises(ShardReadError, match=r"part-00000.parquet.*row group 1.*\['label'\]"):
        ids_of(sparkfeed.DataLoader(root, batch_size=10))
    L = sparkfeed.DataLoader(root, batch_size=10, on_error="skip")
    assert sorted(ids_of(L)) == [i for i in range(100) if i != 42] and L.stats()["samples_skipped"] == 1
    assert len(ids_of(sparkfeed.DataLoader(root, batch_size=10, columns=["id", "caption"]))) == 100


# ---------------------------------------------------------------- ragged list columns

def _tokens(tmp_path, name="tok", dtype="int32", n=300):
    """A tokenized dataset as pyarrow writes one: `input_ids` of 0-19 tokens, a boolean `mask`
    of the same lengths (one null list), `emb` of equal lengths; returned with the rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    ids = [rng.integers(0, 30_000, rng.integers(0, 20)).tolist() for _ in range(n)]
    mask = [[k % 2 == 0 for k in range(len(x))] for x in ids]
    mask[17] = None
    table = pa.table({"id": np.arange(n), "input_ids": pa.array(ids, pa.list_(getattr(pa, dtype)())),
                      "mask": pa.array(mask, pa.list_(pa.bool_())),
                      "emb": pa.array([[0.5, float(i)] for i in range(n)], pa.list_(pa.float32()))})
    root = tmp_path / name
    root.mkdir()
    pq.write_table(table.slice(0, n // 2), root / "a.parquet", row_group_size=40)
    pq.write_table(table.slice(n // 2), root / "b.parquet", row_group_size=40)
    sparkfeed.index(str(root), progress=False)
    return str(root), ids, mask


@pytest.mark.parametrize("kw", [dict(), dict(shuffle=True, num_workers=2),
                                dict(shuffle=True, num_workers=2, worker_type="process")])
def test_ragged_list_columns_are_lists_of_1d_tensors_exactly_once(tmp_path, kw):
    root, ids, mask = _tokens(tmp_path)
    loader = sparkfeed.DataLoader(root, batch_size=16, ragged=["input_ids", "mask"], **kw)
    got = {}
    for batch in loader:
        assert batch["emb"].shape[1:] == (2,)  # equal-length lists stay a 2-D tensor
        for i, x, m in zip(batch["id"].tolist(), batch["input_ids"], batch["mask"]):
            assert x.dtype == torch.int32 and (m is None or m.dtype == torch.bool)
            got[i] = (x.tolist(), None if m is None else m.tolist())
    assert got == {i: (ids[i], mask[i]) for i in range(len(ids))}


def test_ragged_columns_without_the_option_name_it_and_with_it_pad_in_a_collate(tmp_path):
    root, ids, _ = _tokens(tmp_path)
    with pytest.raises(ShardReadError, match=r"'a.parquet', row group 0: column 'input_ids' holds lists of "
                                             r"different lengths.*ragged=\['input_ids'\]"):
        ids_of(sparkfeed.DataLoader(root, batch_size=16, columns=["id", "input_ids"]))
    pad = sparkfeed.DataLoader(root, batch_size=16, columns=["input_ids"], ragged="input_ids",
                               collate_fn=lambda b: torch.nn.utils.rnn.pad_sequence(b["input_ids"], batch_first=True))
    first = next(iter(pad))
    assert first.shape == (16, max(len(x) for x in ids[:16]))
    assert first[3, :len(ids[3])].tolist() == ids[3]
    rows = sparkfeed.Dataset(root, columns=["id", "input_ids"], ragged=["input_ids"])
    assert all(r["input_ids"].tolist() == ids[r["id"]] for r in rows)  # one sample at a time too


def test_ragged_is_checked_when_built_and_across_a_mix(tmp_path):
    root, _, _ = _tokens(tmp_path)
    other, _, _ = _tokens(tmp_path, name="tok64", dtype="int64")
    for kw, message in [(dict(ragged="id"), r"`ragged` names 'id' .*a int64 column; only lists of numbers"),
                        (dict(ragged=["nope"]), r"`ragged` names 'nope', which is not among the columns"),
                        (dict(ragged=3), r"`ragged` should be a column name or a list of them"),
                        (dict(columns=["id"], ragged="input_ids"), r"not among the columns .*\['id'\]")]:
        with pytest.raises(ValueError, match=message):
            sparkfeed.DataLoader(root, batch_size=4, **kw)
    with pytest.raises(ValueError, match=r"`ragged` column 'input_ids' holds lists of different element types"):
        sparkfeed.DataLoader([sparkfeed.Source(root), sparkfeed.Source(other)], columns=["input_ids"],
                             ragged="input_ids")
    mixed = sparkfeed.DataLoader([sparkfeed.Source(root), sparkfeed.Source(root)], batch_size=16,
                                 columns=["id", "input_ids"], ragged="input_ids", shuffle=True)
    assert sum(len(b["input_ids"]) for b in mixed) == 600


def test_a_null_inside_a_ragged_list_is_an_error_naming_the_shard(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "holes"
    root.mkdir()
    lists = [[1, 2], [3], [4, None, 6], []]
    pq.write_table(pa.table({"id": list(range(4)), "tokens": pa.array(lists, pa.list_(pa.int32()))}),
                   root / "a.parquet")
    sparkfeed.index(str(root), progress=False)
    with pytest.raises(ShardReadError, match=r"'a.parquet', row group 0: column 'tokens' holds null values inside"):
        ids_of(sparkfeed.DataLoader(str(root), batch_size=2, ragged="tokens"))


# ---------------------------------------------------------------- persistent_workers: the next epoch read ahead
def _batches_by_epoch(loader, epochs, set_epoch=True):
    out = []
    for e in epochs:
        if set_epoch:
            loader.set_epoch(e)
        out.append([b["id"].tolist() for b in loader])
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_persistent_workers_read_the_next_epoch_ahead_and_deliver_the_same_batches(pq_path, shuffle):
    """With `persistent_workers=True` (thread lanes) the next epoch (`set_epoch` + 1) starts
    reading once this one is read; its iteration takes those reads: the same batches, and each
    epoch's bytes read once, as without."""
    kw = dict(batch_size=64, num_workers=2, shuffle=shuffle, seed=5)
    plain = sparkfeed.DataLoader(pq_path, **kw)
    ahead = sparkfeed.DataLoader(pq_path, persistent_workers=True, **kw)
    assert _batches_by_epoch(ahead, range(3)) == _batches_by_epoch(plain, range(3))
    stats, plain_stats = ahead.stats(), plain.stats()
    assert stats["epochs_read_ahead"] == 2 and stats.get("epochs_read_ahead_dropped", 0) == 0
    assert stats["samples"] == plain_stats["samples"] == 3 * N_PQ
    assert stats["bytes_read"] == plain_stats["bytes_read"]  # the fourth epoch, read ahead, not delivered
    assert "epochs_read_ahead" not in plain_stats


def test_without_set_epoch_the_same_epoch_is_read_ahead(pq_path):
    """No `set_epoch` between iterations: each one is the same epoch again, and that is what is
    read ahead."""
    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, shuffle=True, persistent_workers=True)
    first, second, third = _batches_by_epoch(loader, range(3), set_epoch=False)
    assert first == second == third and sorted(i for b in first for i in b) == list(range(N_PQ))
    assert loader.stats()["epochs_read_ahead"] == 2


def test_an_epoch_read_ahead_but_not_asked_for_is_dropped(pq_path):
    """A guess that misses (another epoch set, or a state loaded) drops the reads made ahead:
    the epoch asked for is read from storage, exactly as a new loader reads it."""
    kw = dict(batch_size=64, num_workers=2, shuffle=True, seed=3)
    loader = sparkfeed.DataLoader(pq_path, persistent_workers=True, **kw)
    loader.set_epoch(0)
    ids_of(loader)  # epoch 1 is read ahead
    loader.set_epoch(7)
    assert _batches_by_epoch(loader, [7], set_epoch=False) == _batches_by_epoch(sparkfeed.DataLoader(pq_path, **kw), [7])
    assert loader.stats()["epochs_read_ahead_dropped"] == 1 and loader.stats().get("epochs_read_ahead", 0) == 0
    # a state saved mid-epoch and loaded: the rest of that epoch once, not the epoch read ahead
    loader.set_epoch(8)
    it = iter(loader)
    head = [i for _, b in zip(range(5), it) for i in b["id"].tolist()]
    state = loader.state_dict()
    it.close()
    loader.load_state_dict(state)
    rest = ids_of(loader)
    assert sorted(head + rest) == list(range(N_PQ))


def _worker_pids() -> list[int]:
    """This process's children but multiprocessing's resource tracker (which a spawn context
    starts once, for the process's life)."""
    import psutil

    def tracker(child) -> bool:
        try:
            return "resource_tracker" in " ".join(child.cmdline())
        except psutil.Error:
            return False
    return sorted(c.pid for c in psutil.Process().children() if not tracker(c))


@pytest.mark.parametrize("set_epoch", [True, False])
def test_persistent_process_workers_are_kept_between_epochs(pq_path, set_epoch):
    """Worker processes (as for tars without an index) with `persistent_workers=True` are kept
    between epochs, as torch keeps them: the same processes run every epoch, each reads its lane
    of the next epoch (or this one again, without set_epoch) ahead, and the batches and bytes
    read are those of workers started anew (and of thread lanes)."""
    kw = dict(batch_size=64, num_workers=2, shuffle=True)
    procs = sparkfeed.DataLoader(pq_path, worker_type="process", persistent_workers=True, **kw)
    pids, epochs = [], []
    for e in range(3):
        epochs += _batches_by_epoch(procs, [e], set_epoch=set_epoch)
        pids.append(_worker_pids())
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]
    fresh = sparkfeed.DataLoader(pq_path, worker_type="process", **kw)
    assert epochs == _batches_by_epoch(fresh, range(3), set_epoch=set_epoch)
    assert not [p for p in _worker_pids() if p not in pids[0]]  # the fresh loader's ended with its epochs
    assert epochs == _batches_by_epoch(sparkfeed.DataLoader(pq_path, **kw), range(3), set_epoch=set_epoch)
    stats = procs.stats()
    assert stats["epochs_read_ahead"] == 2 and stats.get("epochs_read_ahead_dropped", 0) == 0
    assert stats["samples"] == fresh.stats()["samples"] == 3 * N_PQ
    assert stats["bytes_read"] == fresh.stats()["bytes_read"]  # the fourth epoch, read ahead, not counted
    import gc

    del procs
    gc.collect()
    dsutil.wait_until(lambda: not set(_worker_pids()) & set(pids[0]), "kept workers outlived their loader")


def test_a_rank_that_reads_shuffle_blocks_other_ranks_read_says_so_once(pq_path, caplog, monkeypatch):
    """The default block covers the whole 2,000-row set, so rank 1 of 4 reads all of it for its
    500 rows (as its bytes read show): logged once per loader with the figures and the
    `shuffle_buffer` that bounds it, a warning past the size threshold; thread lanes of one rank
    share blocks and say nothing; worker processes do not share them and say so; the bound it
    names holds."""
    import logging

    from sparkfeed import epochnotes

    kw = dict(batch_size=50, shuffle=True, columns=["id", "image"])
    whole = sparkfeed.DataLoader(pq_path, **kw)
    ids_of(whole)
    monkeypatch.setattr(epochnotes, "REREAD_WARN_MIB", 0)
    with caplog.at_level(logging.INFO, logger="sparkfeed.loader"):
        rank1 = sparkfeed.DataLoader(pq_path, rank=1, world_size=4, **kw)
        assert len(ids_of(rank1)) == 500 and len(ids_of(rank1)) == 500
        notes = [r for r in caplog.records if "shuffle blocks" in r.getMessage()]
        assert len(notes) == 1 and notes[0].levelno == logging.WARNING
        assert "rank 1 reads 2000 samples of shuffle blocks per epoch for its 500" in notes[0].getMessage()
        assert "between the 4 ranks" in notes[0].getMessage() and "shuffle_buffer=125 " in notes[0].getMessage()
        assert rank1.stats()["bytes_read"] == 2 * whole.stats()["bytes_read"]  # the whole set, each epoch
        caplog.clear()
        ids_of(sparkfeed.DataLoader(pq_path, num_workers=2, **kw))
        assert not [r for r in caplog.records if "shuffle blocks" in r.getMessage()]
        ids_of(sparkfeed.DataLoader(pq_path, num_workers=2, worker_type="process", **kw))
        (note,) = [r for r in caplog.records if "shuffle blocks" in r.getMessage()]
        assert "rank 0 reads 4000 samples" in note.getMessage() and "between worker processes" in note.getMessage()
        caplog.clear()
        bounded = sparkfeed.DataLoader(pq_path, rank=1, world_size=4, shuffle_buffer=125, **kw)
        assert len(ids_of(bounded)) == 500
        (note,) = [r for r in caplog.records if "shuffle blocks" in r.getMessage()]
        assert note.levelno == logging.INFO  # not over twice its share
        assert 500 < int(re.search(r"reads (\d+) samples", note.getMessage()).group(1)) <= 750
        caplog.clear()
        tail = sparkfeed.DataLoader(pq_path, num_workers=2, drop_last=True, batch_size=300,
                                    shuffle=True, columns=["id"])
        assert len(ids_of(tail)) == 1800  # 200 rows left to no batch, read with their block
        assert not [r for r in caplog.records if "shuffle blocks" in r.getMessage()]


def test_kept_process_workers_drop_an_epoch_read_ahead_but_not_asked_for(pq_path):
    """Kept worker processes read epoch 1 ahead; epoch 7 asked for instead is read from storage
    (the batches of a new loader), the reads ahead dropped and counted once; after an epoch left
    early nothing is read ahead (nothing to take, nothing to drop)."""
    kw = dict(batch_size=64, num_workers=2, shuffle=True, seed=3, worker_type="process")
    loader = sparkfeed.DataLoader(pq_path, persistent_workers=True, **kw)
    loader.set_epoch(0)
    ids_of(loader)  # epoch 1 is read ahead in the workers
    assert _batches_by_epoch(loader, [7]) == _batches_by_epoch(sparkfeed.DataLoader(pq_path, **kw), [7])
    assert loader.stats()["epochs_read_ahead_dropped"] == 1 and loader.stats().get("epochs_read_ahead", 0) == 0
    loader.set_epoch(8)  # read ahead after epoch 7
    it = iter(loader)
    next(it)
    it.close()  # epoch 8 left early (each worker holds at most 3 of its 16 batches): 9 is not read ahead
    assert _batches_by_epoch(loader, [9]) == _batches_by_epoch(sparkfeed.DataLoader(pq_path, **kw), [9])
    assert loader.stats()["epochs_read_ahead"] == 1 and loader.stats()["epochs_read_ahead_dropped"] == 1


def test_kept_process_workers_after_a_break_a_resume_and_a_dead_worker(pq_path):
    """A `break` keeps the workers (the next epoch is whole); a state loaded mid-epoch starts new
    ones for its lanes (the rest exactly once), and whole epochs after it new ones again; a worker
    killed between epochs is a WorkerError naming the rank, and the next iteration starts new
    workers and delivers the epoch whole."""
    import signal

    from sparkfeed import WorkerError

    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, shuffle=True, seed=4,
                                  worker_type="process", persistent_workers=True)
    loader.set_epoch(0)
    it = iter(loader)
    head = [i for _, b in zip(range(4), it) for i in b["id"].tolist()]
    state = loader.state_dict()
    it.close()
    first = _worker_pids()
    assert sorted(ids_of(loader)) == list(range(N_PQ)) and _worker_pids() == first
    loader.load_state_dict(state)
    rest = ids_of(loader)
    assert sorted(head + rest) == list(range(N_PQ))
    resumed = _worker_pids()
    assert len(resumed) == 2 and not set(resumed) & set(first)
    assert sorted(ids_of(loader)) == list(range(N_PQ))  # whole epochs again: new workers for them
    current = _worker_pids()
    assert len(current) == 2 and not set(current) & set(resumed)
    # torch's SIGCHLD handler would raise wherever this thread is (test_loader_faults.py says
    # more); silenced, the restart of the kept workers finds the dead one by its status check
    torch_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        os.kill(current[0], signal.SIGKILL)
        with pytest.raises(WorkerError, match="worker of rank 0 died"):
            ids_of(loader)
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)
    assert sorted(ids_of(loader)) == list(range(N_PQ))
    assert len(_worker_pids()) == 2 and not set(_worker_pids()) & set(current)


def test_an_epoch_read_ahead_stops_reading_when_the_loader_goes(pq_path):
    """The threads reading an epoch ahead end when the loader is garbage collected."""
    import gc
    import time

    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, persistent_workers=True)
    ids_of(loader)
    assert any(t.name.startswith("sparkfeed-lane") for t in threading.enumerate())  # reading ahead
    del loader
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("sparkfeed-lane") and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "reading threads outlived their loader"
        time.sleep(0.05)


# ---------------------------------------------------------------- persistent_workers: the next epoch staged ahead
class _Counted:
    """A collate_fn (so batches are staged on the prefetch thread) that counts its calls and
    fails at call `fail_at`."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError(f"collate failed at call {self.calls}")
        return batch


_EARLIER: set = set()  # threads alive when the running test began (`_earlier_threads`)


@pytest.fixture(autouse=True)
def _earlier_threads():
    """An earlier test's loader may still be finishing a read-ahead on its prefetch thread: the
    thread counts below are of the threads this test started."""
    _EARLIER.clear()
    _EARLIER.update(threading.enumerate())


def _prefetch_threads() -> list:
    return [t for t in threading.enumerate()
            if t.name == "sparkfeed-prefetch" and t.is_alive() and t not in _EARLIER]


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_prefetch_thread_stages_the_next_epoch_before_its_iteration(pq_path, shuffle):
    """With per-batch work on the prefetch thread and `persistent_workers=True`, that thread goes
    on into the next epoch: its first batches are staged before its iteration begins. The
    batches are those of a loader without it, each epoch's bytes read once."""
    kw = dict(batch_size=64, num_workers=2, shuffle=shuffle, seed=5, prefetch=2)
    plain = sparkfeed.DataLoader(pq_path, collate_fn=_Counted(), **kw)
    counted = _Counted()
    ahead = sparkfeed.DataLoader(pq_path, persistent_workers=True, collate_fn=counted, **kw)
    per_epoch = len(ahead)
    ahead.set_epoch(0)
    epochs = [[b["id"].tolist() for b in ahead]]
    dsutil.wait_until(lambda: counted.calls > per_epoch, "the next epoch's first batch was not staged ahead")
    epochs += _batches_by_epoch(ahead, [1, 2])
    assert epochs == _batches_by_epoch(plain, range(3))
    stats, plain_stats = ahead.stats(), plain.stats()
    assert stats["epochs_read_ahead"] == 2 and stats.get("epochs_read_ahead_dropped", 0) == 0
    assert stats["samples"] == plain_stats["samples"] == 3 * N_PQ
    assert stats["bytes_read"] == plain_stats["bytes_read"]
    assert len(_prefetch_threads()) <= 1  # one thread across the epochs (this loader's)


def test_an_error_staged_ahead_surfaces_in_its_own_epoch_at_its_own_batch(pq_path):
    """The next epoch's second batch fails while the consumer is still in this epoch: this epoch
    ends whole, and the error comes in the next one, after its first batch."""
    kw = dict(batch_size=64, num_workers=2, shuffle=True, seed=2, persistent_workers=True)
    per_epoch = len(sparkfeed.DataLoader(pq_path, **kw))
    loader = sparkfeed.DataLoader(pq_path, collate_fn=_Counted(fail_at=per_epoch + 2), **kw)
    loader.set_epoch(0)
    assert sorted(ids_of(loader)) == list(range(N_PQ))
    loader.set_epoch(1)
    got = []
    with pytest.raises(ValueError, match="collate failed") as info:
        for b in loader:
            got.append(b["id"].tolist())
    assert len(got) == 1 and "batches 0..0 were delivered" in " ".join(info.value.__notes__)
    dsutil.wait_until(lambda: not _prefetch_threads(), "the failed prefetch thread did not end")


def test_a_staged_epoch_not_asked_for_is_dropped_and_a_break_stops_the_thread(pq_path):
    """Another epoch set: the staged one is dropped (its thread ends) and the epoch asked for is
    read as a new loader reads it. A `break` mid-epoch stops the thread and reads nothing ahead."""
    kw = dict(batch_size=64, num_workers=2, shuffle=True, seed=3)
    loader = sparkfeed.DataLoader(pq_path, persistent_workers=True, collate_fn=_Counted(), **kw)
    loader.set_epoch(0)
    ids_of(loader)
    loader.set_epoch(7)
    fresh = sparkfeed.DataLoader(pq_path, collate_fn=_Counted(), **kw)
    assert _batches_by_epoch(loader, [7], set_epoch=False) == _batches_by_epoch(fresh, [7])
    assert loader.stats()["epochs_read_ahead_dropped"] == 1
    assert len(_prefetch_threads()) == 1  # epoch 8's, staged; epoch 1's ended when dropped
    loader.set_epoch(8)
    it = iter(loader)  # taken from that thread
    next(it)
    it.close()
    dsutil.wait_until(lambda: not _prefetch_threads(), "the prefetch thread outlived a break")
    assert loader.stats()["epochs_read_ahead"] == 1 and loader.stats()["epochs_read_ahead_dropped"] == 1
    assert sorted(ids_of(loader)) == list(range(N_PQ))  # epoch 8 again, whole, read anew


def test_a_staged_epoch_ends_its_threads_when_the_loader_goes(pq_path):
    """The prefetch thread kept for the next epoch holds its loader weakly: when the loader is
    garbage collected, that thread and the reading threads behind it end."""
    import gc

    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, persistent_workers=True,
                                  collate_fn=_Counted())
    ids_of(loader)
    assert _prefetch_threads()
    del loader
    gc.collect()
    dsutil.wait_until(lambda: not _prefetch_threads() and not any(
        t.name.startswith("sparkfeed-lane") and t.is_alive() for t in threading.enumerate()),
        "threads outlived their loader")


def test_two_iterators_of_a_persistent_loader_keep_one_staged_epoch(pq_path):
    """Two live iterators each end with a staged next epoch: the loader keeps the last one and
    drops the other (counted), so one prefetch thread stays, and the next epoch is whole."""
    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, shuffle=True,
                                  persistent_workers=True, collate_fn=_Counted())
    first = iter(loader)
    head = [next(first)["id"].tolist()]
    second = [b["id"].tolist() for b in loader]
    rest = [b["id"].tolist() for b in first]
    for epoch in (head + rest, second):
        assert sorted(i for b in epoch for i in b) == list(range(N_PQ))
    assert loader.stats()["epochs_read_ahead_dropped"] == 1
    dsutil.wait_until(lambda: len(_prefetch_threads()) == 1, "a dropped staged epoch kept its thread")
    assert sorted(ids_of(loader)) == list(range(N_PQ)) and loader.stats()["epochs_read_ahead"] == 1


def test_two_live_iterators_of_kept_process_workers_each_get_a_whole_epoch(pq_path):
    """torch restarts its persistent workers' iteration at every `iter()`: a second iterator
    while the first is live gets workers of its own, so neither takes the other's batches."""
    loader = sparkfeed.DataLoader(pq_path, batch_size=64, num_workers=2, shuffle=True,
                                  worker_type="process", persistent_workers=True)
    first = iter(loader)
    head = next(first)["id"].tolist()
    second = ids_of(loader)
    rest = [i for b in first for i in b["id"].tolist()]
    assert sorted(second) == sorted(head + rest) == list(range(N_PQ))
    kept = _worker_pids()
    assert sorted(ids_of(loader)) == list(range(N_PQ)) and _worker_pids() == kept


def test_ranks_with_different_batch_counts_are_warned_about_once(pq_path, caplog):
    """drop_last=False keeps every sample, so some ranks get a batch more: DDP would hang there."""
    counts = []
    for rank in range(3):
        caplog.clear()
        with caplog.at_level("WARNING", logger="sparkfeed"):
            L = sparkfeed.DataLoader(pq_path, batch_size=333, rank=rank, world_size=3, columns=["id"])
            counts.append(sum(1 for _ in L))
            sum(1 for _ in L)  # a second epoch: no second warning
        notes = [r.getMessage() for r in caplog.records if "drop_last=False" in r.getMessage()]
        assert len(notes) == 1 and f"rank {rank}: {counts[-1]})" in notes[0]
    assert min(counts) != max(counts) and f"get {min(counts)} to {max(counts)} batches" in notes[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparkfeed"):
        even = [sum(1 for _ in sparkfeed.DataLoader(pq_path, batch_size=333, rank=r, world_size=3,
                                                    columns=["id"], drop_last=True)) for r in range(3)]
        assert len(set(even)) == 1
    assert not [r for r in caplog.records if "drop_last=False" in r.getMessage()]
