"""Receive buffers for remote ranges (`sparkfeed.recvbuffers`): a buffer is taken again only
once nothing made from it lives (views, slices, Arrow buffers and arrays), the free list stays
within its budget, small ranges and a zero budget bypass it, a forked child starts empty, and
ranges fetched over a real HTTP server land in reused buffers with their bytes intact."""

import gc
import multiprocessing
import os
import threading

import numpy as np
import pyarrow as pa
import pytest

from sparkfeed import httpranges, recvbuffers, remotefiles, storage
from sparkfeed.bench.remote import LatencyServer

MIB = 1 << 20


def _address(view: memoryview) -> int:
    return pa.py_buffer(view).address


def _filled(buffers: recvbuffers.ReceiveBuffers, n: int, byte: int) -> memoryview:
    into, held = buffers.take(n)
    into[:] = bytes([byte]) * n
    return held


def test_a_buffer_is_taken_again_only_after_every_view_of_it_is_gone():
    buffers = recvbuffers.ReceiveBuffers(64 * MIB)
    first = _filled(buffers, MIB, 1)
    piece = first[100:200]
    at = _address(first)
    del first
    second = _filled(buffers, MIB, 2)  # `piece` still refers to the first buffer
    assert _address(second) != at and bytes(piece) == b"\x01" * 100
    del piece
    third = _filled(buffers, MIB, 3)
    assert _address(third) == at and bytes(third[:4]) == b"\x03" * 4
    assert (buffers.allocated, buffers.reused) == (2, 1)


def test_arrow_arrays_over_received_bytes_keep_their_buffer():
    buffers = recvbuffers.ReceiveBuffers(64 * MIB)
    held = _filled(buffers, MIB, 7)
    at = _address(held)
    offsets = pa.array([0, 10, MIB], pa.int32()).buffers()[1]
    array = pa.BinaryArray.from_buffers(pa.binary(), 2, [None, offsets, pa.py_buffer(held)])
    sliced = array.slice(1)
    del held, array
    gc.collect()
    for byte in range(5):  # none of these may land in the bytes `sliced` reads
        assert _address(_filled(buffers, MIB, 100 + byte)) != at
    assert sliced[0].as_py() == b"\x07" * (MIB - 10)
    del sliced
    again = [_filled(buffers, MIB, 9) for _ in range(2)]  # the loop's buffer, and this one's
    assert at in {_address(v) for v in again} and buffers.allocated == 2


def test_bytes_held_while_others_are_received_on_many_threads_are_never_overwritten():
    buffers = recvbuffers.ReceiveBuffers(16 * MIB)
    bad = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            n = int(rng.integers(recvbuffers.MIN_BYTES, 3 * MIB))
            held = _filled(buffers, n, seed)
            kept = held[n // 2:]  # only a slice survives the first reference
            del held
            values = np.frombuffer(kept, np.uint8)
            if values.min() != seed or values.max() != seed:
                bad.append(seed)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert buffers.reused > 0 and buffers.free_bytes() <= 16 * MIB


def test_the_free_list_keeps_at_most_its_budget_and_only_fitting_buffers_serve():
    buffers = recvbuffers.ReceiveBuffers(2 * MIB)
    views = [_filled(buffers, MIB, k) for k in range(4)]
    del views
    assert buffers.free_bytes() == 2 * MIB
    big = recvbuffers.ReceiveBuffers(64 * MIB)
    eight = _filled(big, 8 * MIB, 1)
    at = _address(eight)
    del eight
    assert _address(_filled(big, MIB, 2)) != at  # an 8 MiB buffer does not serve 1 MiB
    assert _address(_filled(big, 5 * MIB, 3)) == at


def test_small_ranges_and_a_zero_budget_bypass_the_free_list():
    buffers = recvbuffers.ReceiveBuffers(64 * MIB)
    for _ in range(3):
        into, held = buffers.take(recvbuffers.MIN_BYTES - 1)
        into[:3] = b"abc"
        assert bytes(held[:3]) == b"abc" and len(held) == recvbuffers.MIN_BYTES - 1
    off = recvbuffers.ReceiveBuffers(0)
    for _ in range(3):
        _filled(off, MIB, 1)
    assert (buffers.reused, buffers.allocated, off.reused, off.allocated) == (0, 0, 0, 0)
    assert buffers.free_bytes() == off.free_bytes() == 0


def _child_free_bytes(conn):
    conn.send(recvbuffers._BUFFERS.free_bytes())


def test_a_forked_child_starts_with_an_empty_free_list():
    view = _filled(recvbuffers._BUFFERS, MIB, 1)
    del view
    assert recvbuffers._BUFFERS.free_bytes() >= MIB
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_child_free_bytes, args=(theirs,))
    child.start()
    assert ours.recv() == 0
    child.join(10)
    assert child.exitcode == 0


@pytest.mark.parametrize("direct", [True, False])
def test_ranges_fetched_over_http_land_in_reused_buffers_with_their_bytes(tmp_path, monkeypatch, direct):
    """Both HTTP paths (the standard library's client, fsspec's session) receive into the free
    list's buffers; a range still held keeps its bytes while later ranges are received."""
    blob = os.urandom(6 * MIB)
    (tmp_path / "x.bin").write_bytes(blob)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    buffers = recvbuffers.ReceiveBuffers(64 * MIB)
    monkeypatch.setattr(recvbuffers, "_BUFFERS", buffers)
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    try:
        fs, _ = storage.resolve(server.url)
        url = f"{server.url}/x.bin"
        kept = remotefiles.fetch_ranges(fs, url, [(0, 2 * MIB)])[(0, 2 * MIB)]
        for k in range(1, 3):
            got = remotefiles.fetch_ranges(fs, url, [(k * 2 * MIB, (k + 1) * 2 * MIB)])
            assert bytes(got[(k * 2 * MIB, (k + 1) * 2 * MIB)]) == blob[k * 2 * MIB:(k + 1) * 2 * MIB]
            del got
        assert bytes(kept) == blob[:2 * MIB]
        assert buffers.allocated == 2 and buffers.reused == 1
    finally:
        server.close()
