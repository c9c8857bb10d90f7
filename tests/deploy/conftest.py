"""Deployment fixtures: services started for the test and always stopped after it.

`s3`: moto's S3 server on 127.0.0.1 (a free port), behind a small WSGI layer that counts the
bytes served per object and, when armed, answers some shard GETs with 503 SlowDown or cuts the
connection half-way through the body. `spark_home`: the venv's pyspark (for spark-class,
spark-submit). `deployutil.free_port()` for the cluster and Connect servers.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import threading

import pytest

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b'<Message>Access Denied</Message></Error>')


class FaultyS3:
    """WSGI layer in front of moto: counts GET body bytes per object; injects faults on shard
    GETs (`.parquet`, `.tar`) when `arm(slowdown_every, cut_every)` was called; answers every
    request for an object whose path ends with `deny` 403 AccessDenied (as a bucket policy
    that refuses some keys)."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()
        self.served: collections.Counter = collections.Counter()
        self.injected = {"slowdown": 0, "cut": 0}
        self.deny: str | None = None
        self.arm(0, 0)

    def arm(self, slowdown_every: int, cut_every: int) -> None:
        with self.lock:
            self.slowdown_every, self.cut_every = slowdown_every, cut_every
            self.counter = itertools.count(1)

    def reset_counts(self) -> None:
        with self.lock:
            self.served.clear()
            self.injected = {"slowdown": 0, "cut": 0}

    def bytes_served(self, prefix: str) -> int:
        with self.lock:
            return sum(n for path, n in self.served.items() if path.startswith(prefix))

    def _decide(self, path: str) -> str | None:
        if not path.endswith((".parquet", ".tar")):
            return None
        with self.lock:
            k = next(self.counter)
            kind = ("slowdown" if self.slowdown_every and k % self.slowdown_every == 1 else
                    "cut" if self.cut_every and k % self.cut_every == 2 else None)
            if kind:
                self.injected[kind] += 1
            return kind

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if self.deny and path.endswith(self.deny):
            start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(DENIED)))])
            return [] if method == "HEAD" else [DENIED]  # a HEAD answer has no body
        kind = self._decide(path) if method == "GET" else None
        if kind == "slowdown":
            start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(SLOWDOWN)))])
            return [SLOWDOWN]
        chunks = self.app(environ, start_response)
        return self._body(path, chunks, cut=kind == "cut") if method == "GET" else chunks

    def _body(self, path: str, chunks, cut: bool):
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        sent = body[:len(body) // 2] if cut else body
        with self.lock:
            self.served[path] += len(sent)
        yield sent
        if cut:  # headers promised the whole body: the client sees the connection drop
            raise ConnectionResetError("injected: connection cut mid-body")


class S3Service:
    def __init__(self, server, faults: FaultyS3, endpoint: str):
        self.server, self.faults, self.endpoint = server, faults, endpoint
        self.options = {"key": "testing", "secret": "testing",
                        "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)

    def upload(self, local: str, bucket: str, name: str) -> str:
        """Copy a local dataset directory to s3://bucket/name; returns the URL."""
        fs = self.fs()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for f in sorted(os.listdir(local)):
            fs.put_file(os.path.join(local, f), f"{bucket}/{name}/{f}")
        return f"s3://{bucket}/{name}"


@pytest.fixture(scope="session")
def s3():
    pytest.importorskip("s3fs", reason="pip install 'sparkfeed[test]' (s3fs)")
    pytest.importorskip("moto", reason="pip install 'sparkfeed[test]' (moto[s3], flask)")
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import make_server

    faults = FaultyS3(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, faults, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="moto-s3")
    thread.start()
    try:
        yield S3Service(server, faults, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def spark_home() -> str:
    pyspark = pytest.importorskip("pyspark")
    return os.path.dirname(pyspark.__file__)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
