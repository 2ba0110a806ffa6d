"""Crash safety for in-place writes to the state file.

Two kinds of batch reach the disk:

* **in place** (destroys, labels, anything that overwrites existing bytes):
  the bytes about to be overwritten are first saved in the journal file and
  synced, together with the size and checksum of what the batch writes.
  After a crash at any instant, :func:`recover` either finds the batch
  complete (every region matches its checksum: keep it) or puts the old bytes
  back.
* **append only** (provisions): the batch writes one region past the last
  element, so nothing acknowledged is overwritten except the document's
  closing bytes, whose content is always the same.  Such a batch needs no
  journal record, only a journal that holds none (cleared and synced once
  after an in-place batch), which saves one fsync per batch.  A crash can
  only leave an incomplete tail; :func:`repair_torn_append` cuts the file
  back to its last complete element at the next start.

Either way the file at rest is the last acknowledged state or a later
complete one.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["Journal", "Record", "Region", "recover", "repair_torn_append", "rolled_back"]

_MAGIC = b"IKJ1"
_HEAD = struct.Struct("<4sIQQI")  # magic, crc of the rest, old size, new size, region count
_REGION = struct.Struct("<QII")  # offset, old length, new length
_CRC = struct.Struct("<I")
_MAX_REPAIR_TRIES = 10_000


@dataclass(frozen=True)
class Region:
    offset: int
    data: bytes


@dataclass(frozen=True)
class Record:
    """What it takes to undo one batch: sizes, and per region the old bytes and the new bytes' checksum."""

    old_size: int
    new_size: int
    regions: list[tuple[int, bytes, int, int]]  # offset, old bytes, new length, crc of the new bytes

    def complete(self, read: Callable[[int, int], bytes], size: int) -> bool:
        """Whether every byte of the batch reached the file."""
        return size == self.new_size and all(
            offset + new_len <= size and zlib.crc32(read(new_len, offset)) == new_crc
            for offset, _, new_len, new_crc in self.regions
        )

    def encode(self) -> bytes:
        parts = []
        for offset, old, new_len, new_crc in self.regions:
            parts.append(_REGION.pack(offset, len(old), new_len))
            parts.append(old)
            parts.append(_CRC.pack(new_crc))
        rest = struct.pack("<QQI", self.old_size, self.new_size, len(self.regions)) + b"".join(parts)
        return _MAGIC + _CRC.pack(zlib.crc32(rest)) + rest

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        if len(raw) < _HEAD.size or raw[:4] != _MAGIC:
            return None
        _, crc, old_size, new_size, count = _HEAD.unpack_from(raw, 0)
        pos = _HEAD.size
        regions = []
        for _ in range(count):
            if pos + _REGION.size > len(raw):
                return None
            offset, old_len, new_len = _REGION.unpack_from(raw, pos)
            pos += _REGION.size
            old = raw[pos : pos + old_len]
            pos += old_len
            if len(old) != old_len or pos + 4 > len(raw):
                return None
            (new_crc,) = _CRC.unpack_from(raw, pos)
            pos += 4
            regions.append((offset, old, new_len, new_crc))
        if zlib.crc32(raw[8:pos]) != crc:
            return None
        return cls(old_size, new_size, regions)


def _undo_record(read: Callable[[int, int], bytes], old_size: int, new_size: int, regions: list[Region]) -> Record:
    saved = []
    for r in regions:
        old_len = max(0, min(len(r.data), old_size - r.offset))
        saved.append((r.offset, read(old_len, r.offset) if old_len else b"", len(r.data), zlib.crc32(r.data)))
    if new_size < old_size:
        # A shrinking batch also loses what lies past its new end: save that too.
        saved.append((new_size, read(old_size - new_size, new_size), 0, 0))
    return Record(old_size, new_size, saved)


class Journal:
    """The journal file next to a state file: at most one record, of the last in-place batch."""

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        created = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created and sync:
            # A journal whose directory entry is lost with power would take its record along.
            dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        #: How to undo the last batch, while it is not known to be complete on disk.
        self.in_doubt: Record | None = None
        self._clean = os.fstat(self.fd).st_size == 0

    def write_batch(
        self, data_fd: int, old_size: int, new_size: int, regions: list[Region], append: bool = False
    ) -> None:
        """Write ``regions`` into ``data_fd`` so that a crash at any point is recoverable.

        ``append`` says the batch only writes past the last element (see the module doc)."""
        record = _undo_record(lambda n, off: os.pread(data_fd, n, off), old_size, new_size, regions)
        self.in_doubt = None
        if append:
            if not self._clean:
                self.invalidate()
        else:
            self._clean = False
            _write_all(self.fd, record.encode(), 0)
            if self.sync:
                os.fdatasync(self.fd)
        self.in_doubt = record
        for r in regions:
            _write_all(data_fd, r.data, r.offset)
        if new_size < old_size:
            os.ftruncate(data_fd, new_size)
        if self.sync:
            os.fdatasync(data_fd)
        self.in_doubt = None

    def invalidate(self) -> None:
        """Forget the last record, durably (before appends, or a replace by rename)."""
        os.ftruncate(self.fd, 0)
        if self.sync:
            os.fdatasync(self.fd)
        self._clean = True

    def close(self) -> None:
        os.close(self.fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError("short write to the state file")
        view = view[n:]
        offset += n


def _read_record(journal_path: str) -> Record | None:
    try:
        with open(journal_path, "rb") as f:
            return Record.decode(f.read())
    except FileNotFoundError:
        return None


def rolled_back(state_path: str, journal_path: str, record: Record | None = None) -> bytes:
    """The state file as :func:`recover` would leave it, without writing anything
    (for when the disk refuses writes).  ``record`` forces that undo."""
    with open(state_path, "rb") as f:
        data = f.read()
    forced = record is not None
    record = record or _read_record(journal_path)
    if record is None:
        return data
    if not forced and record.complete(lambda n, off: data[off : off + n], len(data)):
        return data
    image = bytearray(data)
    for offset, old, _, _ in record.regions:
        if len(image) < offset + len(old):
            image.extend(bytes(offset + len(old) - len(image)))
        image[offset : offset + len(old)] = old
    del image[record.old_size :]
    return bytes(image)


def recover(state_path: str, journal_path: str, record: Record | None = None, sync: bool = True) -> str | None:
    """Finish or undo an interrupted batch; say what was done (None: nothing to do).

    ``record`` (the batch that just failed, known only in memory) is undone even
    if it looks complete: its clients were told it failed, so it must not reappear."""
    forced = record is not None
    record = record or _read_record(journal_path)
    outcome = None
    if record is not None:
        try:
            fd = os.open(state_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                if forced or not record.complete(lambda n, off: os.pread(fd, n, off), os.fstat(fd).st_size):
                    for offset, old, _, _ in record.regions:
                        if old:
                            _write_all(fd, old, offset)
                    os.ftruncate(fd, record.old_size)
                    if sync:
                        os.fsync(fd)
                    outcome = (
                        f"rolled back an interrupted write ({len(record.regions)} regions,"
                        f" size restored to {record.old_size} bytes)"
                    )
            finally:
                os.close(fd)
    if os.path.exists(journal_path) and os.path.getsize(journal_path):
        with open(journal_path, "r+b") as f:
            f.truncate(0)
            if sync:
                os.fsync(f.fileno())
    return outcome


def repair_torn_append(data: bytes, tail: bytes) -> bytes | None:
    """Cut a file whose last append did not complete back to its last complete
    element and close the document again; None if that does not give valid JSON
    (then it was not a torn append, and nothing is touched)."""
    tries = 0
    pos = len(data)
    while pos > 0 and tries < _MAX_REPAIR_TRIES:
        nl = data.rfind(b"\n", 0, pos)
        line = data[nl + 1 : pos]
        pos = nl
        content = line.rstrip(b" ,\x00\r")
        if not (content.endswith(b"}") or content.endswith(b'"Instances":[')):
            if nl < 0:
                break
            continue
        if content.endswith(b"}"):
            try:
                orjson.loads(content.lstrip(b" "))
            except orjson.JSONDecodeError:
                continue
        tries += 1
        candidate = data[: nl + 1 + len(content)] + tail
        try:
            orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        return candidate
    return None
