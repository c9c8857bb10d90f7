"""A `.json` member's wanted fields when Python's parser cannot take the whole document.

Python's `json` recurses, so a valid document nested thousands deep raises RecursionError. When
the depth is in a field the read did not ask for (`columns=`), the sample is still valid and its
wanted fields are delivered: the top-level object is walked here, each wanted field parsed by
`json` (still RecursionError when it is the deep one), every other value checked by an iterative
scanner that accepts what `json.loads` accepts (strings through `json`'s own `scanstring`,
numbers by its grammar, `NaN` and `Infinity`), so a malformed document stays an error wherever
the fault lies. Arrow's JSON reader (the indexed path's whole-column reader) gives the same
answer for such documents, so streamed and indexed shards agree.
"""

from __future__ import annotations

import json
import re
from json.decoder import JSONDecodeError, scanstring

__all__ = ["loads_fields"]

_WS = re.compile(r"[ \t\n\r]*")
_CONSTANTS = ("null", "true", "false", "NaN", "Infinity", "-Infinity")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")  # ASCII digits, as json's C scanner


def loads_fields(raw: bytes, wanted: set[str], parse_float=float) -> dict:
    """The fields `wanted` of the JSON object `raw` (bytes, any encoding `json.loads` detects),
    as `json.loads(raw, parse_float=parse_float)` gives them (a repeated key: the last); ValueError
    when the document is not one JSON object, RecursionError when a wanted field nests too deeply."""
    raw = bytes(raw)
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    decoder = json.JSONDecoder(parse_float=parse_float)
    i = _ws(text, 0)
    if text[i:i + 1] != "{":
        raise JSONDecodeError("a JSON document that is not an object", text, i)
    out: dict = {}
    i = _ws(text, i + 1)
    if text[i:i + 1] == "}":
        return _end(out, text, i + 1)
    while True:
        key, i = _key(text, i)
        i = _ws(text, i)
        if key in wanted:
            out[key], i = decoder.raw_decode(text, i)
        else:
            i = skip_value(text, i)
        i = _ws(text, i)
        c = text[i:i + 1]
        if c == "}":
            return _end(out, text, i + 1)
        if c != ",":
            raise JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _ws(text, i + 1)


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()


def _end(out: dict, text: str, i: int) -> dict:
    if _ws(text, i) != len(text):
        raise JSONDecodeError("Extra data", text, i)
    return out


def _key(text: str, i: int) -> tuple[str, int]:
    """An object's key at `i` and the position after its ':' (and the whitespace after it)."""
    if text[i:i + 1] != '"':
        raise JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
    key, i = scanstring(text, i + 1)
    i = _ws(text, i)
    if text[i:i + 1] != ":":
        raise JSONDecodeError("Expecting ':' delimiter", text, i)
    return key, _ws(text, i + 1)


def skip_value(text: str, i: int) -> int:
    """The end of the JSON value at `i`, checked as `json.loads` checks it but without
    recursion (a stack of the open arrays and objects)."""
    stack: list[str] = []
    while True:
        i = _ws(text, i)
        c = text[i:i + 1]
        if c in ("[", "{"):
            i = _ws(text, i + 1)
            close = "]" if c == "[" else "}"
            if text[i:i + 1] == close:
                i += 1
            else:
                stack.append(close)
                if close == "}":
                    i = _key(text, i)[1]
                continue
        else:
            i = _scalar_end(text, i)
        while stack:  # after a value: a comma and the next one, or the close of its container
            i = _ws(text, i)
            c = text[i:i + 1]
            if c == stack[-1]:
                stack.pop()
                i += 1
            elif c == ",":
                i = _ws(text, i + 1)
                if stack[-1] == "}":
                    i = _key(text, i)[1]
                break
            else:
                raise JSONDecodeError(f"Expecting ',' delimiter or {stack[-1]!r}", text, i)
        if not stack:
            return i


def _scalar_end(text: str, i: int) -> int:
    """The end of the string, number or constant at `i`."""
    if text[i:i + 1] == '"':
        return scanstring(text, i + 1)[1]
    for word in _CONSTANTS:
        if text.startswith(word, i):
            return i + len(word)
    number = _NUMBER.match(text, i)
    if number is None:
        raise JSONDecodeError("Expecting value", text, i)
    return number.end()
