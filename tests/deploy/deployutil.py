"""Helpers shared by the deployment tests (a module of its own: `conftest` is not importable
by name when several conftest.py files are loaded)."""

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
