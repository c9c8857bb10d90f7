"""Thrift compact protocol, as far as a Parquet footer needs: structs as {field id: value}, lists
as lists, strings as bytes; doubles and maps are skipped (a footer holds none that matter)."""

from __future__ import annotations

_MAX_DEPTH = 32


class _Undecodable(Exception):
    """The serialized footer is not valid Thrift (pyarrow parsed it, so this is never expected)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos] if pos < len(buf) else 0x80
    if b < 0x80:
        return b, pos + 1
    shift = result = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Undecodable("a varint runs past the footer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _need(buf: bytes, end: int) -> None:
    if end > len(buf):
        raise _Undecodable("a value runs past the footer")


def _value(buf: bytes, pos: int, kind: int, depth: int):
    """(value of compact type `kind` at `pos`, the position after it)."""
    if kind in (1, 2):  # a struct field's bool: its type is its value
        return kind == 1, pos
    if kind in (4, 5, 6):
        n, pos = _varint(buf, pos)
        return (n >> 1) ^ -(n & 1), pos
    if kind == 8:
        n, pos = _varint(buf, pos)
        _need(buf, pos + n)
        return buf[pos:pos + n], pos + n
    if kind in (3, 7):
        _need(buf, pos + (1 if kind == 3 else 8))
        return (buf[pos], pos + 1) if kind == 3 else (None, pos + 8)
    if depth > _MAX_DEPTH:
        raise _Undecodable("nested too deeply")
    if kind == 12:
        return _struct(buf, pos, depth + 1)
    if kind in (9, 10):
        return _list(buf, pos, depth + 1)
    if kind == 11:
        return _map(buf, pos, depth + 1)
    raise _Undecodable(f"unknown field type {kind}")


def _element(buf: bytes, pos: int, kind: int, depth: int):
    """A list element: a bool is a byte of its own there."""
    if kind in (1, 2):
        _need(buf, pos + 1)
        return buf[pos] == 1, pos + 1
    return _value(buf, pos, kind, depth)


def _list(buf: bytes, pos: int, depth: int) -> tuple[list, int]:
    _need(buf, pos + 1)
    n, kind = buf[pos] >> 4, buf[pos] & 15
    pos += 1
    if n == 15:
        n, pos = _varint(buf, pos)
    if n > len(buf) - pos:  # every element takes a byte at least (bools, small ints, structs)
        raise _Undecodable(f"a list of {n} elements in a shorter footer")
    out = []
    for _ in range(n):
        if kind in (4, 5, 6) and pos < len(buf) and buf[pos] < 0x80:  # a one-byte int, inlined
            out.append((buf[pos] >> 1) ^ -(buf[pos] & 1))
            pos += 1
            continue
        value, pos = _element(buf, pos, kind, depth)
        out.append(value)
    return out, pos


def _map(buf: bytes, pos: int, depth: int) -> tuple[None, int]:
    n, pos = _varint(buf, pos)
    if n == 0:
        return None, pos
    _need(buf, pos + 1)
    key, value = buf[pos] >> 4, buf[pos] & 15
    pos += 1
    if n > len(buf) - pos:
        raise _Undecodable(f"a map of {n} entries in a shorter footer")
    for _ in range(n):
        pos = _element(buf, pos, key, depth)[1]
        pos = _element(buf, pos, value, depth)[1]
    return None, pos


def _struct(buf: bytes, pos: int, depth: int) -> tuple[dict, int]:
    out, field, end = {}, 0, len(buf)
    while True:
        if pos >= end:
            raise _Undecodable("a value runs past the footer")
        head = buf[pos]
        pos += 1
        kind = head & 15
        if kind == 0:
            return out, pos
        if head >> 4:
            field += head >> 4
        else:
            n, pos = _varint(buf, pos)
            field = (n >> 1) ^ -(n & 1)
        if kind in (4, 5, 6) and pos < end and buf[pos] < 0x80:  # a one-byte int, inlined: most fields
            out[field] = (buf[pos] >> 1) ^ -(buf[pos] & 1)
            pos += 1
        else:
            out[field], pos = _value(buf, pos, kind, depth)
