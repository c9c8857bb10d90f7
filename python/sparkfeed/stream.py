"""Reading an epoch's positions (`StreamReader.segments`): a lane's spans of positions as `Block`s
of tensors, in order: one per unit piece, or with shuffle one per piece of a block, gathered into
the block's order as it is delivered. Unshuffled, a small cache holds the last units; shuffled,
one block (`blocks.py` shares blocks between thread lanes and reads them in parallel).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch
import torch.utils.data

from . import batch as batching
from .errors import ShardReadError
from .threads import cores, current_stop, join_at_exit, working_for
from .read import Reader, UnitRows
from .read.base import is_list, needs_value
from . import shuffle as shuffling
from .blocks import PendingBlock, SharedBlocks, SharedUnits
from .epoch import EpochStream, lane_units, lane_windows, offered_units
from .segments import Block, BlockColumns, Shuffled

__all__ = ["StreamReader"]

_RUN_UNITS = 16  # at most this many units read as one run (`Reader.read_run`)
_BLOCK_HELPERS = 3  # threads besides the lanes reading the runs of one block (fewer: `_spare_cores`)
_AHEAD_UNITS = 64  # units after the current run a reader is told about (`Reader.read_ahead`)


class StreamReader:
    """Reads positions of an `EpochStream` with a reader; caches a few units, or one block.

    `lanes` (every lane's spans: the list object the loader hands all lanes of one iteration,
    whose item `segments` gets) lets thread lanes of one process share the blocks a lane
    boundary falls in (`SharedBlocks`); without it each reader reads alone.

    `views`: convert what is read without copying numbers out of Arrow's buffers, because they
    are copied again before they are delivered (default: with shuffle, whose runs are joined
    into a block and gathered into its order; a mix passes True for its sources).
    """

    def __init__(self, stream: EpochStream, reader: Reader, cached_units: int = 2, row_ids: bool = False,
                 lanes=None, views: bool | None = None):
        self.stream, self.reader, self.row_ids = stream, reader, row_ids
        self.views = stream.shuffle if views is None else views
        self._units: OrderedDict[int, tuple[Block, int]] = OrderedDict()  # unit -> (run, offset)
        self._cached_units = cached_units
        self._current: tuple[int, Shuffled] | None = None  # shuffle: the block being delivered
        self._lanes, self._lane = lanes, None
        # what this lane shares with the other thread lanes of its iteration: shuffle blocks,
        # or unshuffled, the units a lane boundary falls inside (`_join_lanes`)
        self._shared: SharedBlocks | SharedUnits | None = None
        self._nulls: dict[int, tuple[UnitRows, int]] = {}  # on_error="raise": units with nulls
        self._ahead_units = np.zeros(0, dtype=np.int64)  # this lane's units in order (read-ahead)
        self._chunking = False  # read units in the reader's pieces (`_chunks`)
        self._chunk_plan: tuple[int, list | None] = (-1, None)  # (unit, its pieces)
        self._last_chunk: tuple = (None, None)  # ((unit, first row), (block, rows read))

    def _unit(self, k: int, last: int | None = None) -> tuple[Block, int]:
        """The k-th unit of the epoch as (its run's block, its first position there); reading it
        also reads the units after it, up to `last`, that the reader can read in the same run
        (`Reader.read_run`)."""
        if k not in self._units:
            self._read_run(k, k if last is None else last)
        self._units.move_to_end(k)
        return self._units[k]

    def _read_run(self, k: int, last: int) -> None:
        units = self.stream.units
        end = min(last, k + _RUN_UNITS - 1) + 1
        at = int(np.searchsorted(self._ahead_units, k))  # this run and what follows it in the lane
        self.reader.read_ahead([units[int(i)] for i in self._ahead_units[at:at + _AHEAD_UNITS]])
        shared = self._shared if isinstance(self._shared, SharedUnits) else None
        if shared is not None and shared.shares(k):  # read once for the lanes it is split between
            read, block = shared.get(k, self._lane, lambda: self._read_converted(k, k + 1))
        else:
            read, block = self._read_converted(k, end if shared is None else shared.run_end(k, end))
        offset, parts = 0, read.parts()
        for j, (_, n) in enumerate(parts):
            self._units[k + j] = (block, offset)
            if block.skipped and self.reader.ctx.on_error != "skip" and block.slice(offset, offset + n).skipped:
                self._nulls[k + j] = (read, offset)
            offset += n
        while len(self._units) > max(self._cached_units, len(parts) + 1):
            self._nulls.pop(self._units.popitem(last=False)[0], None)

    def _read_converted(self, k: int, end: int) -> tuple[UnitRows, Block]:
        """Units [k, end) of the epoch read as one run, and converted."""
        counts = self.stream.counts
        read = self.reader.read_run(self.stream.units[k:end], [int(n) for n in counts[k:end]])
        return read, self._converted(read)

    def _piece(self, k: int, a: int, b: int, last: int | None = None) -> Block:
        """Rows [a, b) of the k-th unit of the epoch; a null a tensor cannot hold is an error here."""
        run, offset = self._unit(k, last)
        block = run.slice(offset + a, offset + b)
        if block.skipped and k in self._nulls:
            raise self._null_error(k, a + block.first_skipped())
        return block

    def _in_pieces(self, k: int) -> bool:
        """Whether the reader reads unit k in pieces of the lane's rows (`Reader.chunks`)."""
        return self.reader.chunks(self.stream.units[k], int(self.stream.counts[k])) is not None

    def _chunks(self, k: int) -> list[tuple[int, int]] | None:
        """The pieces (rows [a, b)) the reader reads unit k in (`Reader.chunks`: an indexed tar
        shard, a piece at a time), when a unit's pieces are its rows (no filter); None: whole."""
        if not self._chunking:
            return None
        if self._chunk_plan[0] != k:
            self._chunk_plan = (k, self.reader.chunks(self.stream.units[k], int(self.stream.counts[k])))
        return self._chunk_plan[1]

    def _chunked(self, k: int, a: int, b: int, chunks: list[tuple[int, int]]):
        """Rows [a, b) of unit k out of the pieces that hold them, each piece read once
        (`Reader.read_window`); a piece the reader cannot read apart has the unit read whole."""
        for ca, cb in chunks:
            if cb <= a or ca >= b:
                continue
            got = self._chunk(k, ca, cb)
            if got is None:
                yield self._piece(k, max(a, ca), b)  # the whole unit, read once, for the rest
                return
            block, read = got
            part = block.slice(max(a, ca) - ca, min(b, cb) - ca)
            if part.skipped and self.reader.ctx.on_error != "skip":
                self._nulls[k] = (read, -ca)
                raise self._null_error(k, max(a, ca) + part.first_skipped())
            yield part

    def _chunk(self, k: int, ca: int, cb: int) -> tuple[Block, UnitRows] | None:
        """Rows [ca, cb) of unit k as read (the last piece kept: pieces are asked for in order)."""
        if self._last_chunk[0] != (k, ca):
            units = self.stream.units
            at = int(np.searchsorted(self._ahead_units, k))
            self.reader.read_ahead([units[int(i)] for i in self._ahead_units[at:at + _AHEAD_UNITS]])
            read = self.reader.read_window(units[k], int(self.stream.counts[k]), ca, cb)
            if read is None:
                return None
            self._last_chunk = ((k, ca), (self._converted(read), read))
        return self._last_chunk[1]

    def _pieces_joined(self, pieces: list, last: int | None = None):
        """Blocks for consecutive unit pieces; pieces of units read in one run come out as one
        slice of the run (one hand-over and one split per run downstream, not per unit). Runs
        may read ahead up to unit `last` (default: the last piece's)."""
        last, i = (pieces[-1][0] if last is None else last), 0
        while i < len(pieces):
            k, a, b = pieces[i]
            chunks = self._chunks(k) if k not in self._units else None
            if chunks:
                yield from self._chunked(k, a, b, chunks)
                i += 1
                continue
            run, offset = self._unit(k, last)
            j = i
            while j + 1 < len(pieces) and b == self.stream.counts[pieces[j][0]] and pieces[j + 1][1] == 0 \
                    and pieces[j + 1][0] in self._units and self._units[pieces[j + 1][0]][0] is run:
                j += 1
                b = pieces[j][2]
            if not any(pieces[x][0] in self._nulls for x in range(i, j + 1)):
                yield run.slice(offset + a, self._units[pieces[j][0]][1] + b)
            else:  # a null to raise: piece by piece, so the error names its unit
                yield from (self._piece(*piece, last) for piece in pieces[i:j + 1])
            i = j + 1

    def _converted(self, read: UnitRows) -> Block:
        """The rows as tensors; a value no tensor can hold (lists of different lengths, a null
        list) is an error naming the dataset, the shard and the row group it is in."""
        try:
            return Block.from_rows(read, self.row_ids, copy=not self.views, views=self.stream.shuffle)
        except ValueError as exc:
            unit, start = read.unit, 0
            for part, n in read.parts():  # a run of units: find the one that fails
                try:
                    batching.table_to_batch(read.table.slice(start, n), True, False)
                except ValueError:
                    unit = part
                    break
                start += n
            raise ShardReadError(f"{exc}; or leave the column out with `columns=`",
                                 dataset=self.reader.ctx.dataset, shard=unit.path,
                                 row_group=unit.row_group) from exc

    def _null_error(self, k: int, row: int) -> ShardReadError:
        """A null where a tensor needs a value: name the columns, the shard and the row group."""
        (read, offset), unit = self._nulls[k], self.stream.units[k]
        row += offset
        schema = read.table.schema
        columns = [n for n in read.table.column_names if needs_value(schema.field(n).type)
                   and read.table.column(n)[row].as_py() is None]
        lists = any(is_list(schema.field(n).type) for n in columns)
        advice = (" (a null list, or a null inside its list), which become tensors; filter null lists "
                  "out (filter=pc.field(name).is_valid()) or pass on_error='skip', which skips both"
                  if lists else ", which become tensors; filter such rows out (e.g. "
                  "filter=pc.field(name).is_valid()) or pass on_error='skip'")
        return ShardReadError(f"sample at row {int(read.row_numbers()[row])} has no value in "
                              f"{columns}{advice}", dataset=self.reader.ctx.dataset, shard=unit.path,
                              row_group=unit.row_group)

    def _read_run_part(self, r: int, into: "BlockColumns | None" = None, part: int = 0) -> list[Block]:
        """Run r of the stream (consecutive units of one shard), unpermuted, as the pieces it
        was read in: one `read_run` call where the format allows. With `into` (the block's
        `BlockColumns`, this run its `part`-th), its number columns are placed there."""
        units, starts = self.stream.run_units, self.stream.starts
        lo, hi = int(starts[units[r]]), int(starts[units[r + 1]])
        try:
            pieces = list(self._pieces_joined(list(self.stream.pieces(lo, hi)), int(units[r + 1]) - 1))
        finally:
            self._units.clear()  # a run's units are never needed again: spans only go forward
            self._nulls.clear()
        return pieces if into is None else into.place(part, pieces)

    def _finish_block(self, b: int, parts: list[list[Block]], order: np.ndarray | None = None,
                      into: "BlockColumns | None" = None) -> "Shuffled":
        """Block b from its runs' pieces: joined (binary columns left where they were read:
        `binarycols.BinaryViews`; number columns already placed `into` one buffer each as the runs
        were read), with its order (computed here unless given); counted in `shuffle_blocks`
        and `shuffle_block_rows` (the rows the block held). The rows are gathered into that
        order piece by piece as they are delivered (`segments`), so the first batch waits for
        one piece's gather, not the whole block's, and the gathering overlaps the consumer."""
        n = int(self.stream.blocks[b + 1] - self.stream.blocks[b])
        stats = self.reader.ctx.stats
        stats.add("shuffle_blocks")
        stats.add("shuffle_block_rows", n)
        rows = into.block(parts) if into is not None else Block.concat(
            [piece for run in parts for piece in run], views=True)
        if order is None:
            order = self._block_order(b)
        return Shuffled(rows, order)

    def _block_order(self, b: int) -> np.ndarray:
        n = int(self.stream.blocks[b + 1] - self.stream.blocks[b])
        return shuffling.block_permutation(self.stream.seed, self.stream.epoch, b, n)

    def _pending_block(self, b: int) -> PendingBlock:
        """Block b, to be read by one or more threads: its runs' positions in it, its order."""
        runs = self.stream.runs_of(b)
        starts = self.stream.starts[self.stream.run_units[runs.start:runs.stop + 1]]
        return PendingBlock(len(runs), BlockColumns(starts - starts[0]), lambda: self._block_order(b))

    def _read_block(self, b: int) -> "Shuffled":
        """Block b read by this lane, with helper threads taking some of its runs."""
        pending = self._pending_block(b)
        self._start_helpers(pending, b)
        return pending.join(self, b)

    def _start_helpers(self, pending: "PendingBlock", b: int) -> None:
        """Threads that read runs of block b beside the lane (each with a reader of its own):
        a block must be read whole before its first position is delivered, and the consumer
        waits meanwhile, so its runs are read in parallel (pyarrow releases the GIL). None where
        the reader fetches runs ahead (remote storage): the lane reads the runs from the bytes its
        read-ahead fetches, many requests at once, as for unshuffled reads; a helper's reads
        would be requests made one at a time, on top of the lane's."""
        if self.reader.runs_ahead:
            return
        helpers = min(len(self.stream.runs_of(b)) - 1, _BLOCK_HELPERS, self._spare_cores(b))
        for _ in range(max(0, helpers)):
            helper = StreamReader(self.stream, type(self.reader)(self.reader.ctx), row_ids=self.row_ids,
                                  views=self.views)
            helper._chunking = self._chunking  # it reads whole runs, in the lane's pieces
            thread = threading.Thread(target=_help, args=(pending, helper, b, current_stop()), daemon=True,
                                      name="sparkfeed-block-reader")
            thread.start()
            join_at_exit(thread)  # it stops after the run it reads once its lane is closed, or at exit

    def _spare_cores(self, b: int) -> int:
        """Cores block b's read may add threads for: the lanes of this iteration read at once, so
        each has an even share of the cores, and a block that k lanes deliver from (and read
        together) has k shares and k threads already. On 2 cores, 2 lanes sharing one block read
        it no faster with a third thread: a 200,000-row shuffled epoch ran at 0.915 of the
        unshuffled one with a helper, 0.940 without (medians of 150 paired epochs)."""
        info = torch.utils.data.get_worker_info()
        lanes = info.num_workers if info is not None else len(self._lanes) if self._lanes else 1
        sharing = self._shared.sharing(b) if isinstance(self._shared, SharedBlocks) else 1
        return sharing * cores() // max(1, lanes) - sharing

    def _block(self, b: int) -> "Shuffled":
        """Block b, from this reader's one-block cache, the lanes' shared blocks, or storage."""
        if self._current is not None and self._current[0] == b:
            return self._current[1]
        self._leave_block()
        block = self._shared.get(b, self) if self._shared is not None else self._read_block(b)
        self._current = (b, block)
        return block

    def _leave_block(self) -> None:
        if self._current is not None and self._shared is not None and self._lane is not None:
            self._shared.release(self._current[0], self._lane)
        self._current = None

    def segments(self, spans, gather: bool = True):
        """Blocks whose positions, one after another, are exactly those of `spans` in order: one
        per unit piece, or with shuffle one per piece of a block. `gather=False` (shuffle): each
        block's part of a span as one `Shuffled`, for a caller that gathers it itself."""
        self._join_lanes(spans)
        self._ahead_units = lane_units(self.stream, spans, self.reader.runs_ahead, self._shared, self._lane,
                                        self._in_pieces if self.reader.ctx.expr is None else None)
        if isinstance(self._shared, SharedUnits):  # read in place (all but tars' pieces), so told to no
            # read-ahead: what opening their files needs goes ahead all the same (version checks, footers)
            self.reader.open_ahead(self.stream.units[k] for k in self._shared.held_by(self._lane))
        if self.reader.runs_ahead:
            self.reader.offers = offered_units(self.stream, self._shared, self._lane)
        if self.reader.ctx.expr is None:  # a unit's pieces are its rows then
            self._chunking = True
            if not self.stream.shuffle:  # lanes split units (a shuffled block holds whole units)
                self.reader.windows = {self.stream.units[k]: w for k, w in lane_windows(self.stream, spans).items()}
        piece = self.stream.piece if gather else None
        for lo, hi in spans:
            if not self.stream.shuffle:
                yield from self._pieces_joined(list(self.stream.pieces(lo, hi)))
                continue
            first = lo
            while lo < hi:  # pieces of at most `piece` positions, on a grid from the span's start
                b = self.stream.block_of(lo)
                start = int(self.stream.blocks[b])
                end = min(hi, int(self.stream.blocks[b + 1]))
                end = end if piece is None else min(end, first + ((lo - first) // piece + 1) * piece)
                part = self._block(b).slice(lo - start, end - start)
                yield part.gathered() if gather else part
                lo = end

    def _join_lanes(self, spans) -> None:
        """Thread lanes (not torch's worker processes, which share no memory): find this lane
        among `lanes` and the blocks (unshuffled: units) it shares with the others."""
        if self._lanes is None or self._shared is not None or torch.utils.data.get_worker_info() is not None:
            return
        lane = next((k for k, other in enumerate(self._lanes) if other is spans), None)
        if lane is not None:
            kind = SharedBlocks if self.stream.shuffle else SharedUnits
            self._lane, self._shared = lane, kind.for_lanes(self.stream, self._lanes)

    def close(self) -> None:
        self._leave_block()
        if self._shared is not None and self._lane is not None:
            self._shared.leave(self._lane)
            self._shared = None
        self._units.clear()
        self._nulls.clear()
        self.reader.close()


def _help(pending: PendingBlock, helper: "StreamReader", b: int, stop) -> None:
    """A block's helper thread: reads runs of block b for the lane that started it, and stops
    taking runs once that lane's reader is closed (`stop`, `threads.stopping`)."""
    working_for(stop)
    pending.help(helper, b)
