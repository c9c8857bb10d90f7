"""Read-ahead ranges over HTTP(S) with the standard library's client (`sparkfeed.httpranges`):
when it is used, what it sends, keep-alive, redirects, cut bodies, status codes, TLS and fork.
A real threaded HTTP server on 127.0.0.1 that honours Range, with a few misbehaving paths."""

import datetime
import http.server
import ipaddress
import logging
import os
import ssl
import threading

import aiohttp
import pytest

from sparkfeed import httpranges, remotefiles, retries, storage
from sparkfeed.bench.remote import send_file_range

BLOB = os.urandom(200_000)


class _Server:
    """Serves BLOB at /x.bin (at /cut/x.bin with half its body, at /shifted/x.bin one byte off
    the range asked for), redirects /moved/x.bin to
    /x.bin, answers /forbidden/ 403 and /busy/ 503. Records each request's headers and counts
    connections; `close_idle` closes every connection after its answer without saying so."""

    def __init__(self, root, tls: ssl.SSLContext | None = None):
        self.requests, self.connections, self.close_idle = [], 0, False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                owner.connections += 1
                super().setup()

            def do_GET(self):
                owner.requests.append((self.path, dict(self.headers)))
                if self.path.startswith("/moved/"):
                    self._empty(302, Location=self.path[len("/moved"):])
                elif self.path.startswith("/forbidden/"):
                    self._empty(403)
                elif self.path.startswith("/busy/"):
                    self._empty(503)
                elif self.path == "/shifted/x.bin":  # a range one byte after the one asked for
                    start, end = (int(v) + 1 for v in self.headers["Range"][6:].split("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(BLOB)}")
                    self.send_header("Content-Length", str(end - start + 1))
                    self.end_headers()
                    self.wfile.write(BLOB[start:end + 1])
                elif self.path == "/cut/x.bin":
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}")
                    self.send_header("Content-Length", str(len(BLOB)))
                    self.end_headers()
                    self.wfile.write(BLOB[:len(BLOB) // 2])
                    self.close_connection = True
                elif os.path.isfile(os.path.join(root, self.path.lstrip("/"))):
                    send_file_range(self, os.path.join(root, self.path.lstrip("/")), body=True)
                else:
                    self._empty(404)
                if owner.close_idle:
                    self.close_connection = True  # no "Connection: close": the client finds out later

            def _empty(self, status, **headers):
                self.send_response(status)
                for k, v in {"Content-Length": "0", **headers}.items():
                    self.send_header(k, v)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "x.bin").write_bytes(BLOB)
    s = _Server(str(tmp_path))
    yield s
    s.close()


def test_the_direct_client_serves_plain_http_and_fsspecs_session_everything_else(server, monkeypatch):
    assert httpranges.usable(storage.resolve(server.url)[0])
    assert httpranges.usable(storage.resolve(server.url, {"headers": {"X-Token": "t"}})[0])
    timeout = aiohttp.ClientTimeout(total=None, sock_read=3)
    assert httpranges.usable(storage.resolve(server.url, {"client_kwargs": {"timeout": timeout}})[0])
    assert not httpranges.usable(storage.resolve(server.url, {"client_kwargs": {"trust_env": True}})[0])
    assert not httpranges.usable(storage.resolve(server.url, {"params": {"sig": "s"}})[0])
    assert not httpranges.usable(storage.resolve(server.url, {"ssl": False})[0])
    monkeypatch.setattr(httpranges, "DIRECT", False)
    assert not httpranges.usable(storage.resolve(server.url)[0])


@pytest.mark.parametrize("direct", [True, False])
def test_which_client_sent_the_ranges(server, monkeypatch, direct):
    """Both paths return the same bytes; only fsspec's session announces aiohttp."""
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    fs, _ = storage.resolve(server.url)
    got = remotefiles.fetch_ranges(fs, f"{server.url}/x.bin", [(10, 20_000), (100_000, 150_000)])
    assert {k: bytes(v) for k, v in got.items()} == {(10, 20_000): BLOB[10:20_000],
                                                    (100_000, 150_000): BLOB[100_000:150_000]}
    agents = {h.get("User-Agent", "") for _, h in server.requests}
    assert any("aiohttp" in a for a in agents) != direct


def test_headers_are_sent_and_one_connection_serves_many_ranges(server):
    fs, _ = storage.resolve(server.url, {"headers": {"X-Token": "secret"}})
    for k in range(10):
        got = remotefiles.fetch_ranges(fs, f"{server.url}/x.bin", [(k * 1000, k * 1000 + 500)])
        assert bytes(got[(k * 1000, k * 1000 + 500)]) == BLOB[k * 1000:k * 1000 + 500]
    assert len(server.requests) == 10
    assert all(h.get("X-Token") == "secret" and h["Range"].startswith("bytes=") for _, h in server.requests)
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(server, caplog):
    server.close_idle = True
    fs, _ = storage.resolve(server.url)
    with caplog.at_level(logging.WARNING, logger="sparkfeed.storage"):
        for k in range(3):
            got = remotefiles.fetch_ranges(fs, f"{server.url}/x.bin", [(k, k + 100)])
            assert bytes(got[(k, k + 100)]) == BLOB[k:k + 100]
    assert server.connections == 3 and len(server.requests) == 3
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_a_redirect_is_followed_by_fsspecs_session(server):
    fs, _ = storage.resolve(server.url)
    for k in range(2):
        got = remotefiles.fetch_ranges(fs, f"{server.url}/moved/x.bin", [(5, 5000)])
        assert bytes(got[(5, 5000)]) == BLOB[5:5000]
    paths = [(p, "aiohttp" in h.get("User-Agent", "")) for p, h in server.requests]
    # the direct client asked once; fsspec's session followed the redirect both times
    assert paths.count(("/moved/x.bin", False)) == 1 and paths.count(("/x.bin", True)) == 2


@pytest.mark.parametrize("direct", [True, False])
def test_a_range_other_than_the_one_asked_for_is_refused(server, monkeypatch, direct):
    """Never bytes from the wrong offset: a 206 must carry the range that was asked for."""
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    fs, _ = storage.resolve(server.url)
    with pytest.raises(ValueError, match=r"shifted/x.bin: asked for bytes 100-199, the server "
                                         r"answered bytes 101-200/200000 \(100 bytes\)"):
        remotefiles.fetch_ranges(fs, f"{server.url}/shifted/x.bin", [(100, 200)])


def test_a_body_cut_short_is_a_connection_error_that_names_the_file(server):
    fs, _ = storage.resolve(server.url)
    with pytest.raises(ConnectionError, match=r"cut/x.bin: the connection closed after 100000 of 200000 bytes"):
        httpranges.fetch(fs, f"{server.url}/cut/x.bin", [0], [len(BLOB)], None, 5.0)


def test_status_codes_become_errors_that_say_whether_to_retry(server):
    fs, _ = storage.resolve(server.url)
    with pytest.raises(PermissionError, match="forbidden/x.bin: HTTP 403") as denied:
        httpranges.fetch(fs, f"{server.url}/forbidden/x.bin", [0], [10], None, 5.0)
    with pytest.raises(httpranges.HTTPStatusError, match="busy/x.bin: HTTP 503") as busy:
        httpranges.fetch(fs, f"{server.url}/busy/x.bin", [0], [10], None, 5.0)
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        httpranges.fetch(fs, f"{server.url}/nothing.bin", [0], [10], None, 5.0)
    assert not retries.is_transient(denied.value) and retries.is_transient(busy.value)


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_verifies_the_server_against_the_systems_trust_store(tmp_path, monkeypatch):
    (tmp_path / "x.bin").write_bytes(BLOB)
    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = _Server(str(tmp_path), tls)
    try:
        fs, _ = storage.resolve(server.url)
        assert httpranges.usable(fs)
        monkeypatch.setattr(httpranges._POOL, "_ssl", None)
        with pytest.raises(ssl.SSLCertVerificationError) as refused:  # not in the trust store
            httpranges.fetch(fs, f"{server.url}/x.bin", [0], [100], None, 5.0)
        assert not retries.is_transient(refused.value)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # OpenSSL's default trust store is this file now
        monkeypatch.setattr(httpranges._POOL, "_ssl", None)
        assert bytes(httpranges.fetch(fs, f"{server.url}/x.bin", [0], [100], None, 5.0)[0]) == BLOB[:100]
    finally:
        monkeypatch.setattr(httpranges._POOL, "_ssl", None)
        server.close()


def test_a_forked_child_opens_its_own_connection_and_the_parent_keeps_its_own(server):
    fs, _ = storage.resolve(server.url)
    url = f"{server.url}/x.bin"
    assert bytes(httpranges.fetch(fs, url, [0], [10], None, 5.0)[0]) == BLOB[:10]  # pooled
    pid = os.fork()
    if pid == 0:
        ok = bytes(httpranges.fetch(fs, url, [10], [20], None, 5.0)[0]) == BLOB[10:20]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(httpranges.fetch(fs, url, [20], [30], None, 5.0)[0]) == BLOB[20:30]
    assert server.connections == 2 and len(server.requests) == 3
