"""A batch moved between processes as one buffer: every tensor of it (binary columns' parts
too) laid out in one uint8 tensor (`pack`), and views of them on the other side (`unpack`).

torch sends each tensor between processes through its own shared-memory segment, a fixed cost
per tensor that dominates small batches of many columns; one buffer pays it once."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .binarycols import binary_kind, BinaryChunks, BinaryColumn, BinaryViews, TextColumn

_ALIGN = 64


class Packed(NamedTuple):
    """A batch moved between processes: every tensor in one uint8 buffer (`layout` says where),
    the other columns as they are."""

    buffer: torch.Tensor
    layout: tuple
    rest: dict
    order: tuple  # the column names in the batch's order
    text: tuple = ()  # the columns that are TextColumns (the others with data/offsets: binary)


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _packed_pieces(value) -> dict[str, list[torch.Tensor]] | None:
    """A column's tensors for `pack`, each as the pieces laid one after another in the buffer:
    a binary column in several buffers is joined there, by that one copy, not before it."""
    if isinstance(value, torch.Tensor):
        return {"": [value]}
    if isinstance(value, BinaryViews):
        value = value.joined()
    if isinstance(value, BinaryChunks):
        return {"data": [p.data for p in value.parts], "offsets": [BinaryColumn.joined_offsets(value.parts)]}
    if isinstance(value, BinaryColumn):
        return {"data": [value.data], "offsets": [value.offsets]}
    return None


def pack(batch: dict) -> Packed:
    """Move every tensor of a batch (BinaryColumn parts too) into one uint8 buffer.

    torch sends each tensor between processes through its own shared-memory segment, a fixed
    cost per tensor that dominates small batches of many columns; one buffer pays it once.
    """
    parts, layout, offset, packed = [], [], 0, set()
    for name, value in batch.items():
        tensors = _packed_pieces(value)
        if tensors is None:
            continue
        packed.add(name)
        for part, pieces in tensors.items():
            raws = [_byte_view(t) for t in pieces]
            nbytes = sum(r.numel() for r in raws)
            first = pieces[0]
            shape = tuple(first.shape) if len(pieces) == 1 else (sum(t.numel() for t in pieces),)
            layout.append((name, part, str(first.dtype).removeprefix("torch."), shape, offset, nbytes))
            at = offset
            for raw in raws:
                parts.append((at, raw))
                at += raw.numel()
            offset += -(-nbytes // _ALIGN) * _ALIGN
    buf = torch.empty(offset, dtype=torch.uint8)
    for start, raw in parts:
        buf[start:start + raw.numel()] = raw
    rest = {k: v for k, v in batch.items() if k not in packed}
    return Packed(buf, tuple(layout), rest, tuple(batch),
                  tuple(k for k, v in batch.items() if binary_kind(v) is TextColumn))


def unpack(batch) -> dict:
    """The inverse of `pack` (views into the one buffer, no copy); a plain dict passes as is.
    Columns keep their order."""
    if not isinstance(batch, Packed):
        return batch
    views: dict[str, dict] = {}
    for name, part, dtype, shape, offset, nbytes in batch.layout:
        views.setdefault(name, {})[part] = batch.buffer[offset:offset + nbytes].view(getattr(torch, dtype)).reshape(shape)
    out = {}
    for name in batch.order:
        pieces = views.get(name)
        kind = TextColumn if name in batch.text else BinaryColumn
        out[name] = batch.rest[name] if pieces is None else \
            pieces[""] if "" in pieces else kind(pieces["data"], pieces["offsets"])
    return out
