"""Crash safety for in-place writes to the state file: a redo (write-ahead) journal.

Two kinds of batch reach the disk, each with one sync:

* **direct** (appends while the journal holds no record): the batch writes
  past the last element, overwriting only the document's closing bytes and
  padding, then syncs the state file.  No journal work at all.  A crash can
  only leave a torn tail, which the batch's checksummed trailer lets the
  loader recognise as such (see :mod:`.trailer`) and cut back.
* **journaled** (destroys, labels, relayouts, and appends while records are
  pending): the batch's new bytes are appended to the journal as one record
  and the journal is synced: the batch is durable and is answered.  Then the
  same bytes are written into the state file, without a sync.  The state file
  is synced only at a *checkpoint* (when the journal grows past a bound, after
  a run of appends, at close), after which the journal is empty again.

At start-up the records are replayed in order, so the file is the last
acknowledged state (or a later complete one) whatever part of the unsynced
data writes reached the disk.

**A record belongs to one file state.**  Each names the device and inode of
the state file, its size before and after, and for every 512-byte chunk it
writes the checksum of that chunk before and after.  Before anything is
replayed, every chunk the journal touches must hold one of the contents the
records say it went through, and the file one of their sizes; otherwise the
journal was written for another file, or for this one before it was rewritten
offline, and it is reported and never applied.  A journal left by a
checkpoint (its records' data already synced) matches and replays to the same
bytes, or no longer matches where later appends overwrote it: either way the
file is right as it is.  A clean shutdown removes the journal.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from dataclasses import dataclass

from .._impl import batch
from .disk import Disk

__all__ = [
    "CHUNK",
    "Journal",
    "JournalRecord",
    "JournalStuck",
    "Region",
    "Replay",
    "apply",
    "apply_records",
    "read_records",
    "replay",
    "replayed_image",
]

CHUNK = 512
_MAGIC = b"IKW2"
# magic, epoch, seq, dev, ino, old size, new size, region count, chunk count, payload length
_HEAD = struct.Struct("<4sQIQQQQIII")
_REGION = struct.Struct("<QI")  # offset, length (the bytes follow)
_CHUNKS = struct.Struct("<QII")  # chunk index, crc before, crc after
_CRC = struct.Struct("<I")
_GROW = 1 << 20  # the journal is kept pre-written in steps of this, so that records overwrite allocated blocks


class JournalStuck(OSError):
    """A record that failed could not be taken back: it might apply at the next start."""


@dataclass(frozen=True)
class Region:
    offset: int
    data: bytes


@dataclass(frozen=True)
class JournalRecord:
    """One batch: where it applies, and its new bytes."""

    epoch: int
    seq: int
    dev: int
    ino: int
    old_size: int
    new_size: int
    regions: list[tuple[int, bytes]]
    chunks: list[tuple[int, int, int]]  # chunk index, crc of its bytes before, after

    def encode(self) -> bytes:
        regions = [Region(off, data) for off, data in self.regions]
        rows = [_CHUNKS.pack(*c) for c in self.chunks]
        return _encode(self.epoch, self.seq, self.dev, self.ino, self.old_size, self.new_size, regions, len(rows), rows)


def _encode(
    epoch: int,
    seq: int,
    dev: int,
    ino: int,
    old_size: int,
    new_size: int,
    regions: list[Region],
    nchunks: int,
    tables: list[bytes],
) -> bytes:
    """A record's bytes: head, regions (each its offset and length, then its bytes), the chunk
    table (``tables``: its rows, already packed, ``nchunks`` of them), and the crc32 of all that;
    the bytes joined once, the crc taken piece by piece."""
    parts: list[bytes] = [b""]
    for r in regions:
        parts += (_REGION.pack(r.offset, len(r.data)), r.data)
    parts += tables
    plen = sum(len(p) for p in parts)
    parts[0] = _HEAD.pack(_MAGIC, epoch, seq, dev, ino, old_size, new_size, len(regions), nchunks, plen)
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    parts.append(_CRC.pack(crc))
    return b"".join(parts)


def _decode(raw: bytes, pos: int) -> tuple[JournalRecord, int] | None:
    if pos + _HEAD.size + 4 > len(raw) or raw[pos : pos + 4] != _MAGIC:
        return None
    _, epoch, seq, dev, ino, old_size, new_size, nreg, nchunk, plen = _HEAD.unpack_from(raw, pos)
    end = pos + _HEAD.size + plen
    if end + 4 > len(raw) or _CRC.unpack_from(raw, end)[0] != zlib.crc32(raw[pos:end]):
        return None
    p = pos + _HEAD.size
    regions = []
    for _ in range(nreg):
        off, n = _REGION.unpack_from(raw, p)
        p += _REGION.size
        regions.append((off, raw[p : p + n]))
        p += n
    chunks = []
    for _ in range(nchunk):
        chunks.append(_CHUNKS.unpack_from(raw, p))
        p += _CHUNKS.size
    if p != end:
        return None
    return JournalRecord(epoch, seq, dev, ino, old_size, new_size, regions, chunks), end + 4


def read_records(raw: bytes) -> list[JournalRecord]:
    """The records of a journal's bytes: one epoch, consecutive, each whole (a torn last one is dropped:
    its batch was never answered, and its data never written)."""
    out: list[JournalRecord] = []
    pos = 0
    while True:
        got = _decode(raw, pos)
        if got is None:
            return out
        rec, pos = got
        if out and (rec.epoch != out[0].epoch or rec.seq != out[-1].seq + 1):
            return out
        if not out and rec.seq != 0:
            return out
        out.append(rec)


def _spans(regions: list[Region]) -> list[tuple[int, int]]:
    """Chunk ranges (first, count) the regions write (in any order, overlapping or not), merged."""
    ranges = sorted((r.offset // CHUNK, (r.offset + len(r.data) - 1) // CHUNK + 1) for r in regions if r.data)
    spans: list[list[int]] = []
    for a, b in ranges:
        if spans and a <= spans[-1][1]:
            if b > spans[-1][1]:
                spans[-1][1] = b
        else:
            spans.append([a, b])
    return [(a, b - a) for a, b in spans]


class Journal:
    """The journal file next to a state file (created by the store, never a planted one)."""

    def __init__(self, disk: Disk, fd: int, limit: int = 8 << 20) -> None:
        self.disk = disk
        self.fd = fd
        self.limit = limit
        self.pos = 0  # where the next record goes
        self.count = 0  # records since the last checkpoint
        self.epoch = int.from_bytes(os.urandom(8), "little")
        self.capacity = os.fstat(fd).st_size

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def full(self) -> bool:
        return self.pos >= self.limit

    def log(
        self, data_fd: int, dev: int, ino: int, old_size: int, new_size: int, regions: list[Region]
    ) -> list[Region]:
        """Append the batch as a record and sync the journal: from then on the batch is durable.
        If that fails the record is cleared again (or :class:`JournalStuck` says it could not be).
        ``regions``: the batch's writes, in the order they were made (a later one wins where
        they overlap).

        The regions to write into the state file: those given, joined where they share a
        chunk (the bytes between them as the file holds them), so that the batch writes
        each chunk once.  A chunk written twice could reach the disk between the two
        writes, in a state no record names, and the journal would no longer match it."""
        tables: list[bytes] = []  # the chunk table's rows, span by span
        nchunks = 0
        joined: list[Region] = []
        spans = _spans(regions)
        # Each region lies in one span: the span that starts at or before it, found by bisection.
        starts = [first * CHUNK for first, _ in spans]
        mine: list[list[Region]] = [[] for _ in spans]
        for r in regions:  # in the batch's order: a later write wins where they overlap
            if r.data:
                mine[bisect.bisect_right(starts, r.offset) - 1].append(r)
        for (first, count), base, placed in zip(spans, starts, mine, strict=True):
            old = os.pread(data_fd, min(count * CHUNK, old_size - base), base) if base < old_size else b""
            write, rows = batch.span_image(old, placed, first, count, base, new_size, CHUNK)
            if write is not None:
                joined.append(Region(*write))
            tables.append(rows)
            nchunks += count
        raw = _encode(self.epoch, self.count, dev, ino, old_size, new_size, joined, nchunks, tables)
        start = self.pos
        end = start + len(raw)
        if end > self.capacity:
            # Grow by writing zeros, so that later records overwrite allocated blocks
            # and their syncs need no metadata.
            cap = max(end, self.capacity * 2, _GROW)
            raw += bytes(cap - end)
            self.capacity = cap
        try:
            self.disk.pwrite(self.fd, raw, start)
            self.disk.datasync(self.fd)
        except OSError as exc:
            self.capacity = os.fstat(self.fd).st_size
            try:  # the batch fails: its record must never apply
                self.disk.pwrite(self.fd, bytes(min(len(raw), max(0, self.capacity - start))), start)
                self.disk.datasync(self.fd)
            except OSError as again:
                raise JournalStuck(again.errno, f"{exc.strerror or exc}; and clearing its record: {again}") from exc
            raise
        self.pos, self.count = end, self.count + 1
        return joined

    def reset(self) -> None:
        """The records' data is durable in the state file (or the file was replaced): start over.
        The first record's magic is cleared without a sync: a journal that survives a crash anyway
        matches the file (its data is there) or no longer does, and is ignored."""
        if self.count:
            self.disk.pwrite(self.fd, bytes(4), 0)
        self.pos = self.count = 0
        self.epoch = int.from_bytes(os.urandom(8), "little")


def apply_records(disk: Disk, fd: int, records: list[JournalRecord] | list[tuple[int, int, list[Region]]]) -> None:
    """Write batches into the state file in order (no sync)."""
    for rec in records:
        if isinstance(rec, JournalRecord):
            old_size, new_size, regions = rec.old_size, rec.new_size, [Region(o, d) for o, d in rec.regions]
        else:
            old_size, new_size, regions = rec
        apply(disk, fd, old_size, new_size, regions)


def apply(disk: Disk, fd: int, old_size: int, new_size: int, regions: list[Region]) -> None:
    """One batch's writes: the file grows first (one size change), shrinks last."""
    if new_size > old_size:
        disk.truncate(fd, new_size)
    for r in regions:
        disk.pwrite(fd, r.data, r.offset)
    if new_size < old_size:
        disk.truncate(fd, new_size)


@dataclass
class Replay:
    """What a journal says about a state file."""

    records: list[JournalRecord]
    #: None: the journal applies (or is empty); else why it does not belong to the file.
    mismatch: str | None = None

    @property
    def applies(self) -> bool:
        return bool(self.records) and self.mismatch is None


def replay(raw_journal: bytes, data: bytes, dev: int, ino: int) -> Replay:
    """Check a journal against the state file's bytes (and identity)."""
    records = read_records(raw_journal)
    if not records:
        return Replay([])
    first = records[0]
    if (first.dev, first.ino) != (dev, ino):
        return Replay(
            records,
            f"it was written for another file (device {first.dev}, inode {first.ino};"
            f" this one is device {dev}, inode {ino})",
        )
    sizes = {first.old_size}
    allowed: dict[int, set[int]] = {}
    size = first.old_size
    for rec in records:
        if (rec.dev, rec.ino) != (dev, ino) or rec.old_size != size:
            return Replay(records, f"record {rec.seq} does not follow the one before it")
        size = rec.new_size
        sizes.add(size)
        for index, before, after in rec.chunks:
            seen = allowed.get(index)
            if seen is None:
                allowed[index] = {before, after}
            else:
                seen.add(after)
    if len(data) not in sizes:
        return Replay(
            records,
            f"the file has {len(data)} bytes, none of the sizes its records went through"
            f" ({', '.join(map(str, sorted(sizes)))})",
        )
    for index in sorted(allowed):
        if (index + 1) * CHUNK > len(data):
            continue
        crc = zlib.crc32(data[index * CHUNK : (index + 1) * CHUNK])
        if crc not in allowed[index]:
            return Replay(
                records,
                f"bytes {index * CHUNK}-{(index + 1) * CHUNK - 1} of the file hold none of the contents"
                " its records expect there (the file was changed after the journal was written)",
            )
    return Replay(records)


def replayed_image(data: bytes, records: list[JournalRecord]) -> bytes:
    """The state file as replaying ``records`` onto ``data`` leaves it."""
    image = bytearray(data)
    for rec in records:
        if rec.new_size > len(image):
            image.extend(bytes(rec.new_size - len(image)))
        for off, piece in rec.regions:
            if off + len(piece) > len(image):
                image.extend(bytes(off + len(piece) - len(image)))
            image[off : off + len(piece)] = piece
        del image[rec.new_size :]
    return bytes(image)
