"""Helpers shared by the deployment tests (a module of its own: `conftest` is not importable
by name when several conftest.py files are loaded)."""

from dsutil import free_port

__all__ = ["free_port"]
