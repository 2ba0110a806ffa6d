"""The file store's pending batch: a change taken into it (pure twin of ``_batch_c``).

:class:`Core` is the base of :class:`~infrakit_instance.store.file.FileStore`.  It
holds what every change reads and writes (the pending writes, the document's end,
the batch's future) and does the per-change work of the common changes: a provision
appended to the array and a destroy blanked in place, queued as the writes the batch
will make.  The batch is cut, made durable and answered by the store's writer
(``FileStore._write_loop``); the rare changes are the store's own methods.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import zlib
from typing import TYPE_CHECKING, Any

from ._codec_py import TAIL

if TYPE_CHECKING:
    from .state import State

__all__ = ["SLACK", "Core", "span_image", "trailer", "use"]

#: Spaces after each element, so that most labels rewrite it where it stands.
SLACK = 32
_PAD = b" " * SLACK
_TAIL_LEN = len(TAIL)

# The store's errors and its file layout's numbers (``store.file`` imports this module's
# twin, so it hands them over once, with use()).
_Stopped: Any = None
_Error: Any = None
_Unknown: Any = None
_TRAILER = _PAD_KEEP = 0
_place: Any = None
_padding: Any = None
_COMPACT_MIN = 0


def use(
    stopped: type,
    error: type,
    unknown: type,
    *,
    trailer: int,
    pad_keep: int,
    place: Any,
    padding: Any,
    compact_min: int,
) -> None:
    """Tell the cores the store's ``StoreStopped``, ``StoreError`` and ``UnknownInstance``, and
    its layout: a trailer's size, the padding kept past the document at least, and its rules,
    ``place(pos)`` (the spaces before a trailer at ``pos``) and ``padding(end)`` (the padding
    after a document that ends at ``end``, when it grows); ``compact_min``: the size below which
    a file is never rewritten to compact it."""
    global _Stopped, _Error, _Unknown, _TRAILER, _PAD_KEEP, _place, _padding, _COMPACT_MIN
    _Stopped, _Error, _Unknown = stopped, error, unknown
    _TRAILER, _PAD_KEEP, _place, _padding = trailer, pad_keep, place, padding
    _COMPACT_MIN = compact_min


def trailer(length: int, crc: int) -> bytes:
    """The trailer of a batch of ``length`` bytes whose crc32 is ``crc``: its bits (crc, then
    length, most significant first) as spaces (0) and tabs (1) between two CRs."""
    if length < 0 or crc < 0 or length >> 32 or crc >> 32:
        raise ValueError("a trailer holds a 32-bit length and crc32")
    return b"\r" + f"{crc:032b}{length:032b}".encode().translate(_BITS) + b"\r"


_BITS = bytes.maketrans(b"01", b" \t")
_CHUNK_ROW = struct.Struct("<QII")  # a journal record's chunk table row (journal._CHUNKS): index, crc before, crc after


def span_image(
    old: bytes, placed: list[Any], first: int, count: int, base: int, new_size: int, chunk: int
) -> tuple[tuple[int, bytes] | None, bytes]:
    """A journal span's new bytes: ``old`` is what the file holds from ``base`` (chunk ``first``
    of ``count``, each of ``chunk`` bytes), ``placed`` the batch's writes into the span in the
    batch's order (a later one wins where they overlap), and the file ends at ``new_size``.
    Returns the one write that makes them (``(offset, bytes)`` from the first byte written to
    the last, the bytes between as the file holds them; None if nothing is left below
    ``new_size``) and the span's rows of the journal record's chunk table: for each chunk its
    index, crc32 before and crc32 after (``<QII``, little-endian), a chunk the file does not
    fill counted as if zero-padded."""
    new = bytearray(old)
    start, stop = count * chunk, 0  # what the writes cover, from base
    for r in placed:
        lo = r.offset - base
        hi = lo + len(r.data)
        if len(new) < hi:
            new.extend(bytes(hi - len(new)))
        new[lo:hi] = r.data
        if lo < start:
            start = lo
        if hi > stop:
            stop = hi
    del new[max(0, new_size - base) :]
    stop = min(stop, new_size - base)
    joined = (base + start, bytes(new[start:stop])) if stop > start else None
    before = _chunk_crcs(old, count, chunk)
    after = _chunk_crcs(new, count, chunk)
    row = _CHUNK_ROW.pack
    return joined, b"".join([row(first + k, b, a) for k, (b, a) in enumerate(zip(before, after, strict=True))])


def _chunk_crcs(image: bytes | bytearray, count: int, chunk: int) -> list[int]:
    """crc32 of the ``count`` chunks of ``image``, each zero-padded to a whole chunk."""
    view = memoryview(image)
    size = len(image)
    crc32 = zlib.crc32
    whole = min(count, size // chunk)  # chunks the image holds in full
    out = [crc32(view[at : at + chunk]) for at in range(0, whole * chunk, chunk)]
    for at in range(whole * chunk, count * chunk, chunk):
        piece = view[at:size] if at < size else b""
        out.append(crc32(bytes(chunk - len(piece)), crc32(piece)))
    return out


class Core:
    """What a change does to the pending batch; the attributes are set by the store."""

    _state: State
    _order: collections.deque[Any] | None
    _gather: asyncio.Event | None
    _batch: asyncio.Future[None] | None
    _wake: asyncio.Event | None
    stopped: str | None
    _writes: list[tuple[int, bytes]]
    _run: list[bytes]
    _waiters: list[asyncio.Future[None]]
    _tip: int
    _end: int
    _append_from: int
    _live: int
    _run_end: int
    _changes: int
    _want: int
    _in_place: bool
    _size: int  # the file's size: the document and the padding after it
    _checked: bool  # the last trailer carries a checksum (not NO_CHECK)
    _rewrite: bool  # the next batch writes the whole file anew
    _relayout_at: int  # the pending batch moves every element from this offset on (-1: none)
    _grown: set[str]  # ... because these outgrew their slots
    compact_ratio: float  # ... once the file holds this many times what it would take

    @property
    def state(self) -> State:
        return self._state

    def _check(self) -> None:
        if self.stopped is not None:
            raise _Stopped(self.stopped)

    def provision(self, record: Any, tags: dict[str, str]) -> asyncio.Future[None]:
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        state = self._state
        instance_id = record.id
        if state.known(instance_id):
            raise _Error(f"instance ID {instance_id} already exists")
        had_live = len(state) > 0
        state.append(record, tags)
        order = self._order
        if order is not None:
            if len(order) > 2 * len(state) + 1024:  # gone elements pile up behind a long-lived first one
                self._order = None
            else:
                order.append(record)
        spec = record.spec
        if spec is None:
            elem = record.brief + _PAD  # room for labels: most then fit in place
        else:
            elem = b"".join((record.brief[:-1], b',"Properties":', spec, b"}", _PAD))
        start = self._tip
        if start < 0:  # the batch's first: right after the last batch's trailer
            start = self._append_from = self._end - _TAIL_LEN
        size = len(elem)
        if had_live:
            record.off = start + 2
            self._queue(start, b",\n" + elem, False)
            self._tip = start + 2 + size
            self._live += 2 + size
        else:
            record.off = start + 1
            self._queue(start, b"\n" + elem, False)
            self._tip = start + 1 + size
            self._live += 1 + size
        record.size = size
        return self._waiter()

    def label(self, instance_id: str, labels: dict[str, str]) -> asyncio.Future[None]:
        """Add or overwrite tags: the element rewritten where it stands if it still fits its
        slot; else everything from it on moves, planned once per batch (the store's ``_relayout``)."""
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise _Unknown(instance_id)
        new = state.relabel(rec, labels)
        elem = new.element()
        if len(elem) <= rec.size:
            self._queue(rec.off, elem + b" " * (rec.size - len(elem)))
        else:
            self._live += len(elem) - rec.size
            self._relayout_at = rec.off if self._relayout_at < 0 else min(self._relayout_at, rec.off)
            self._grown.add(instance_id)
            self._in_place = True
        return self._waiter()

    def destroy(self, instance_id: str) -> asyncio.Future[None]:
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise _Unknown(instance_id)
        head = self._head()
        first = head is not None and head.id == instance_id
        state.remove(instance_id)
        self._live -= rec.size + 2
        if not first:
            # The comma before this element goes with it; the newline stays.
            self._queue(rec.off - 2, b" \n" + b" " * rec.size)
        else:
            # From the newline before it (every element starts a line), so that destroys
            # oldest first make one run of writes: this one goes on from the comma blanked
            # by the destroy before it.
            self._queue(rec.off - 1, b"\n" + b" " * rec.size)
            nxt = self._head()
            if nxt is not None:
                self._queue(nxt.off - 2, b" ")  # the new first element has no comma before it
        self._maybe_compact()
        return self._waiter()

    def _maybe_compact(self) -> None:
        # Rewritten whole once the file holds more than compact_ratio times what it would take.
        if self._end > _COMPACT_MIN and self._end > self.compact_ratio * self._live:
            self._rewrite = True

    def _head(self) -> Any:
        """The first live element.  A walk of the instances' dict from its start steps over
        the slot of every key popped from it since it last grew, and destroys come oldest
        first (InfraKit's order): each would cost in proportion to the ones before it.  This
        queue of the elements in file order drops each gone one once instead."""
        order = self._order
        instances = self._state.instances
        if order is None:
            order = self._order = collections.deque(instances.values())
        while order:
            rec = order[0]
            live = instances.get(rec.id)
            if live is not None and live.pos == rec.pos:  # the same element (a label replaces the record)
                return live
            order.popleft()
        return None

    def _queue(self, offset: int, data: bytes, in_place: bool = True) -> None:
        if offset == self._run_end and self._writes:
            # It goes on where the write before it ends (appends, destroys oldest first):
            # one write, joined when the batch is cut (_joined_writes).
            self._run.append(data)
        else:
            if self._run:
                self._join_run()
            self._writes.append((offset, data))
        self._run_end = offset + len(data)
        if in_place:
            self._in_place = True

    def _join_run(self) -> None:
        off, data = self._writes[-1]
        self._writes[-1] = (off, b"".join([data, *self._run]))
        self._run = []

    def _joined_writes(self) -> list[tuple[int, bytes]]:
        """The pending batch's writes, in the order made, each run of adjacent ones joined."""
        if self._run:
            self._join_run()
        return self._writes

    def _cut_appends(self) -> tuple[int, bytes] | None:
        """Cut a batch of appends only: sealed, joined and signed at once (what the store's
        ``_seal``, ``_joined_writes`` and ``_sign`` do to it, in one pass).  The one region
        it writes, ``(offset, bytes)``: its elements, the spaces that put the trailer and
        the closing bytes in one sector, the trailer with the checksum of all before it,
        the closing bytes and the padding; None, and nothing changed, for any other batch."""
        pos, start, writes = self._tip, self._append_from, self._writes
        if pos < 0 or start < 0 or self._in_place or len(writes) != 1 or writes[0][0] != start:
            return None
        pad = _place(pos)
        end = pos + pad + _TRAILER + _TAIL_LEN
        body = b"".join([writes[0][1], *self._run, b" " * pad])
        parts = [body, trailer(len(body), zlib.crc32(body)), TAIL]
        reach = self._end  # a relayout that shrank the document leaves its old end as padding
        if end < reach:
            parts.append(b" " * (reach - end))
        if end + _PAD_KEEP > self._size:
            size = end + _padding(end)
            parts.append(b" " * (size - max(end, reach)))
            self._size = size
        out = b"".join(parts)
        self._tip = self._append_from = -1
        self._writes, self._run = [], []
        self._run_end = start + len(out)
        self._end = end
        self._checked = True
        return start, out

    def _waiter(self) -> asyncio.Future[None]:
        # One future per batch, shared by all its changes: one completion answers them all.
        self._changes += 1
        if self._gather is not None and self._changes >= self._want:
            self._gather.set()
        fut = self._batch
        if fut is None:
            fut = self._batch = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            assert self._wake is not None
            self._wake.set()
        return fut
