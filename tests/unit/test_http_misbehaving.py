"""Remote reads against servers that misbehave in ways object stores and static hosts do: 416
answers, stalls, IPv6 hosts, %-escaped manifest paths, credentials in fsspec's own log lines.
Each test names what a user saw before its fix. Real servers on 127.0.0.1 (or [::1])."""

import gzip
import http.server
import random
import json
import logging
import os
import re
import socket
import threading

import aiohttp
import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError, httpranges, remotefiles, retries, storage
from sparkfeed.bench.remote import send_file_range

FAST = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=0.3, sock_connect=2)}}


class _Server:
    """Serves `root` under /plain/; paths under /416/ answer every Range request 416, under
    /gzip/ send each range gzipped with `Content-Encoding: gzip` whatever the client accepts,
    under /stall/ hold every request until the server closes, under /short/ answer at most
    1,000 bytes of each range. `requests` records each request line's path."""

    def __init__(self, root: str, host: str = "127.0.0.1"):
        self.requests, self.release = [], threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                owner.requests.append(self.path)
                mode, _, rel = self.path.lstrip("/").partition("/")
                if mode not in ("416", "gzip", "stall", "plain", "short"):
                    return self._empty(404)
                if mode == "stall":
                    owner.release.wait(30)
                    return self._empty(503)
                path = os.path.join(root, rel.split("?")[0])
                if not os.path.isfile(path):
                    return self._empty(404)
                if mode == "416" and "Range" in self.headers:
                    return self._empty(416, **{"Content-Range": f"bytes */{os.path.getsize(path)}"})
                if mode == "gzip" and "Range" in self.headers:
                    return self._gzipped(path, body)
                if mode == "short" and "Range" in self.headers:
                    return self._short(path, body)
                send_file_range(self, path, body)

            def _gzipped(self, path: str, body: bool):
                a, b = (int(v) for v in re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers["Range"]).groups())
                with open(path, "rb") as f:
                    data = f.read()
                packed = gzip.compress(data[a:b + 1], mtime=0)
                self.send_response(206)
                for k, v in {"Content-Range": f"bytes {a}-{b}/{len(data)}", "Content-Encoding": "gzip",
                             "Content-Length": str(len(packed))}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(packed)

            def _short(self, path: str, body: bool):
                """At most 1,000 bytes of the range asked, said so in Content-Range (RFC 9110
                lets a server answer less than asked)."""
                a, b = (int(v) for v in re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers["Range"]).groups())
                with open(path, "rb") as f:
                    data = f.read()
                b = min(b, a + 999, len(data) - 1)
                self.send_response(206)
                for k, v in {"Content-Range": f"bytes {a}-{b}/{len(data)}", "Content-Length": str(b - a + 1)}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data[a:b + 1])

            def _empty(self, status, **headers):
                self.send_response(status)
                for k, v in {"Content-Length": "0", **headers}.items():
                    self.send_header(k, v)
                self.end_headers()

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.server = server_class((host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"http://{netloc}:{self.server.server_address[1]}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    where = tmp_path_factory.mktemp("hunt")
    dsutil.write_parquet(str(where / "pq"), dsutil.table(200, image_bytes=64), 100, 50)
    dsutil.write_tar(str(where / "wds"), dsutil.table(100, image_bytes=64), 50)
    return str(where)


@pytest.fixture
def server(root):
    s = _Server(root)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    original = retries.with_retries
    monkeypatch.setattr(retries, "with_retries",
                        lambda fn, what, **kw: original(fn, what, **{"base_delay": 0.01, "attempts": 2, **kw}))


def test_a_416_answer_is_a_shard_read_error_naming_the_shard(server):
    """A server that answers the range requests 416. Before: the direct HTTP client's own
    `httpranges.HTTPStatusError` left the loader, naming neither dataset nor shard (fsspec's
    session gave a ShardReadError for the same answer)."""
    loader = sparkfeed.DataLoader(f"{server.url}/416/pq", batch_size=50, storage_options=FAST)
    with pytest.raises(ShardReadError, match=r"dataset '.*/416/pq', shard 'part-0000\d.parquet'.*HTTP 416"):
        list(loader)


@pytest.mark.parametrize("direct", [True, False])
def test_a_stalled_server_is_a_timeout_error_naming_the_url(server, monkeypatch, direct):
    """Every request held: after the retries, a TimeoutError whose message names the file's URL.
    Before: 'timed out' (the direct client) or an empty FSTimeoutError (fsspec's session)."""
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    fs, _ = storage.resolve(server.url, FAST)
    url = f"{server.url}/stall/pq/part-00000.parquet"
    with pytest.raises(TimeoutError) as raised:
        remotefiles.fetch_ranges(fs, url, [(0, 100)])
    assert url in str(raised.value) and "time-out" in str(raised.value)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("name,n", [("pq", 200), ("wds", 100)])
def test_an_ipv6_dataset_url_reads_every_sample(root, name, n):
    """http://[::1]:port/ds. Before: fsspec's url_to_fs took the '::' for a chain of
    filesystems and read 'http://[', and the loader failed with 'ValueError: Invalid IPv6 URL'."""
    s = _Server(root, "::1")
    try:
        fs, path = storage.resolve(f"{s.url}/plain/{name}")
        assert path == f"{s.url}/plain/{name}"
        loader = sparkfeed.DataLoader(f"{s.url}/plain/{name}", batch_size=25, storage_options=FAST)
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(n))
    finally:
        s.close()


@pytest.mark.parametrize("escaped", ["%2e%2e/pq/part-00000.parquet", "a/%2E%2e/%2e./pq/part-00000.parquet",
                                     "..%2fpq/part-00000.parquet"])
def test_a_percent_escaped_dot_dot_cannot_escape_an_http_dataset(root, server, tmp_path, escaped):
    """A manifest under http://host/plain/esc naming '%2e%2e/pq/part-00000.parquet'. Before, the
    HTTP client decoded the escapes and dropped the dot segments: the loader read
    http://host/plain/pq/part-00000.parquet, a file outside the dataset, and delivered its rows.
    The escapes are the name's own characters: the server is asked for that name inside the
    dataset (no such file), never for a file outside it."""
    good = json.load(open(os.path.join(root, "pq", "_sparkfeed.json")))
    shard = dict(good["shards"][0], path=escaped)
    hostile = {**good, "shards": [shard], "num_samples": shard["num_samples"], "num_bytes": shard["num_bytes"]}
    esc = os.path.join(root, f"esc-{abs(hash(escaped))}")
    os.makedirs(esc, exist_ok=True)
    with open(os.path.join(esc, "_sparkfeed.json"), "w") as f:
        json.dump(hostile, f)
    with pytest.raises(ShardReadError, match="file missing"):
        list(sparkfeed.DataLoader(f"{server.url}/plain/{os.path.basename(esc)}", batch_size=50))
    asked = [p for p in server.requests if p.endswith(".parquet")]
    assert asked and all(p.startswith(f"/plain/{os.path.basename(esc)}/") and "%25" in p for p in asked)
    # the same name is a file's own name on a local disk: nothing to decode there
    assert storage.join("/data/ds", escaped, "/data/ds") == f"/data/ds/{escaped}"


def test_fsspecs_debug_log_lines_never_show_url_credentials(server, caplog):
    """fsspec's HTTP client logs each URL it fetches at DEBUG (logger 'fsspec.http'), with the
    user and password of `http://user:password@host/ds`. Before, those lines showed the password
    to anyone who turned DEBUG on; sparkfeed's own lines already showed '***'."""
    password = "pw-s3cr3t"
    url = server.url.replace("://", f"://alice:{password}@") + "/plain/wds"
    with caplog.at_level(logging.DEBUG):
        loader = sparkfeed.DataLoader(url, batch_size=50, storage_options=FAST)
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(100))
    fsspec_lines = [r.getMessage() for r in caplog.records if r.name == "fsspec.http"]
    assert fsspec_lines and all("://***@127.0.0.1" in line for line in fsspec_lines)
    assert password not in caplog.text


@pytest.mark.parametrize("direct", [True, False])
def test_a_gzip_encoded_range_is_decoded_never_taken_for_the_files_bytes(server, tmp_path, monkeypatch, direct):
    """A server that gzips its answers although the client asked for identity. The range is
    chosen so that its gzipped body is exactly as long as the range. Before, the direct client
    handed the gzip bytes over as the file's (no check could tell: the length was right);
    now such a server's ranges go to fsspec's session, which decodes them."""
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    rng = random.Random(0)
    data = rng.randbytes(1000) + bytes(3000)
    n = next(n for n in range(1000, 1400) if len(gzip.compress(data[:n], mtime=0)) == n)
    (tmp_path / "blob.bin").write_bytes(data)
    s = _Server(str(tmp_path))
    try:
        fs, _ = storage.resolve(s.url)
        got = remotefiles.fetch_ranges(fs, f"{s.url}/gzip/blob.bin", [(0, n)], size=len(data))
        assert bytes(got[(0, n)]) == data[:n]
    finally:
        s.close()


def test_a_small_parquet_file_truncated_on_object_storage_is_named_as_such(tmp_path, caplog):
    """A shard shortened after the manifest was written, on a store read through fsspec's
    `cat_ranges` (S3, GCS; here fsspec's memory filesystem, the same code path). Before: its
    whole-file fetch came back short and was called "the server does not appear to support
    range requests", the reader turned to whole-file reads for the dataset (with a warning
    saying so) and failed with pyarrow's "Parquet magic bytes not found"."""
    import fsspec

    dsutil.write_parquet(str(tmp_path / "pq"), dsutil.table(200, image_bytes=64), 100, 50)
    memory = fsspec.filesystem("memory")
    root = f"/hunt-{os.getpid()}/pq"
    for name in os.listdir(tmp_path / "pq"):
        data = (tmp_path / "pq" / name).read_bytes()
        memory.pipe_file(f"{root}/{name}", data[:-100] if name == "part-00001.parquet" else data)
    try:
        with caplog.at_level(logging.WARNING, logger="sparkfeed"):
            with pytest.raises(ShardReadError, match=r"shard 'part-00001.parquet'.*the file is \d+ "
                                                     r"bytes, not \d+ \(changed after the manifest"):
                list(sparkfeed.DataLoader(f"memory://{root}", batch_size=50))
        assert "ignores Range" not in caplog.text
    finally:
        memory.rm(f"/hunt-{os.getpid()}", recursive=True)


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:9/ds?sig=SECRET", "https://127.0.0.1:9/ds/#SECRET",
                                 "http://127.0.0.1:9/ds/_sparkfeed.json?token=SECRET"])
def test_a_dataset_url_with_a_query_is_refused_without_repeating_it(url):
    """Before: "the glob matches no files" (`?` read as a glob) for a signed or token URL. The
    query (a signature, a token) and the password never appear in the error."""
    with pytest.raises(ValueError, match=r"query string or fragment .* does not carry a query") as info:
        sparkfeed.DataLoader(url, batch_size=2)
    assert "SECRET" not in str(info.value) and "pw" not in str(info.value)


@pytest.mark.parametrize("direct", [True, False])
def test_a_server_that_answers_less_than_the_range_is_never_taken_for_a_shorter_file(server, root, monkeypatch, direct):
    """A 206 for fewer bytes than asked, its Content-Range saying so and the file's size the
    manifest's: the server's own limit, not a file cut short. A tar read in pieces then reads
    the shard whole (one GET without Range), every sample once; never "the file is N bytes but
    the manifest says M" (what a short answer was taken for once the size check named sizes)."""
    from sparkfeed import httpranges, remotefiles

    monkeypatch.setattr(httpranges, "DIRECT", direct)
    fs, _ = sparkfeed.storage.resolve(server.url)
    shard = os.path.join(root, "wds", "shard-00000.tar")
    size = os.path.getsize(shard)
    with pytest.raises(ValueError, match="the server answered bytes 0-999") as info:
        remotefiles.fetch_ranges(fs, f"{server.url}/short/wds/shard-00000.tar", [(0, 5000)], size, retry=False)
    assert not isinstance(info.value, httpranges.SizeMismatch)
    ids = [i for b in sparkfeed.DataLoader(f"{server.url}/short/wds", batch_size=50) for i in b["id"].tolist()]
    assert sorted(ids) == list(range(len(ids))) and len(ids) > 0
