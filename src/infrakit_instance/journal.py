"""A rollback journal for in-place writes to the state file.

Before a batch of writes touches the state file, the bytes it is about to
overwrite are saved here and synced, together with the size and checksum of
what the batch writes.  After a crash at any instant, :func:`recover` either
finds the batch complete (every region matches its checksum: keep it) or
puts the old bytes back, so the file is always the last acknowledged state or
a later complete one.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["Journal", "Region", "recover", "rolled_back"]

_MAGIC = b"IKJ1"
_HEAD = struct.Struct("<4sIQQI")  # magic, crc of the rest, old size, new size, region count
_REGION = struct.Struct("<QII")  # offset, old length, new length
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Region:
    offset: int
    data: bytes


def _encode(old_size: int, new_size: int, regions: list[tuple[int, bytes, bytes]]) -> bytes:
    parts = []
    for offset, old, new in regions:
        parts.append(_REGION.pack(offset, len(old), len(new)))
        parts.append(old)
        parts.append(_CRC.pack(zlib.crc32(new)))
    body = b"".join(parts)
    rest = struct.pack("<QQI", old_size, new_size, len(regions)) + body
    return _MAGIC + _CRC.pack(zlib.crc32(rest)) + rest


def _decode(raw: bytes) -> tuple[int, int, list[tuple[int, bytes, int, int]]] | None:
    if len(raw) < _HEAD.size or raw[:4] != _MAGIC:
        return None
    (crc,) = _CRC.unpack_from(raw, 4)
    _, _, old_size, new_size, count = _HEAD.unpack_from(raw, 0)
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
    return old_size, new_size, regions


class Journal:
    """The journal file next to a state file; one record, overwritten per batch."""

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        #: The record on disk is of a batch whose data write has not completed.
        self.in_doubt = False

    def write_batch(self, data_fd: int, old_size: int, new_size: int, regions: list[Region]) -> None:
        """Save what ``regions`` overwrite, then write them into ``data_fd``."""
        saved = []
        for r in regions:
            old_len = max(0, min(len(r.data), old_size - r.offset))
            old = os.pread(data_fd, old_len, r.offset) if old_len else b""
            saved.append((r.offset, old, r.data))
        if new_size < old_size:
            # A shrinking batch also loses what lies past its new end: save that too.
            saved.append((new_size, os.pread(data_fd, old_size - new_size, new_size), b""))
        self.in_doubt = False
        _write_all(self.fd, _encode(old_size, new_size, saved), 0)
        if self.sync:
            os.fdatasync(self.fd)
        self.in_doubt = True
        for r in regions:
            _write_all(data_fd, r.data, r.offset)
        if new_size < old_size:
            os.ftruncate(data_fd, new_size)
        if self.sync:
            os.fdatasync(data_fd)
        self.in_doubt = False

    def invalidate(self) -> None:
        """Forget the last record (before the state file is replaced by rename)."""
        os.ftruncate(self.fd, 0)
        if self.sync:
            os.fsync(self.fd)
        self.in_doubt = False

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


def _read_record(journal_path: str) -> tuple[int, int, list[tuple[int, bytes, int, int]]] | None:
    try:
        with open(journal_path, "rb") as f:
            return _decode(f.read())
    except FileNotFoundError:
        return None


def _complete(read: Callable[[int, int], bytes], size: int, new_size: int, regions: list[tuple[int, bytes, int, int]]) -> bool:
    return size == new_size and all(
        offset + new_len <= size and zlib.crc32(read(new_len, offset)) == new_crc
        for offset, _, new_len, new_crc in regions
    )


def rolled_back(state_path: str, journal_path: str, force: bool = False) -> bytes:
    """The state file as :func:`recover` would leave it, without writing anything
    (for when the disk refuses writes)."""
    with open(state_path, "rb") as f:
        data = f.read()
    record = _read_record(journal_path)
    if record is None:
        return data
    old_size, new_size, regions = record
    if not force and _complete(lambda n, off: data[off : off + n], len(data), new_size, regions):
        return data
    image = bytearray(data)
    for offset, old, _, _ in regions:
        if len(image) < offset + len(old):
            image.extend(bytes(offset + len(old) - len(image)))
        image[offset : offset + len(old)] = old
    del image[old_size:]
    return bytes(image)


def recover(state_path: str, journal_path: str, force: bool = False) -> str | None:
    """Finish or undo an interrupted batch; say what was done (None: nothing to do).

    ``force`` undoes the last batch even if it looks complete: after a failed
    write or fsync its clients were told it failed, so it must not reappear."""
    record = _read_record(journal_path)
    if record is None:
        return None
    old_size, new_size, regions = record
    try:
        fd = os.open(state_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not force and _complete(lambda n, off: os.pread(fd, n, off), os.fstat(fd).st_size, new_size, regions):
            outcome = None
        else:
            for offset, old, _, _ in regions:
                if old:
                    _write_all(fd, old, offset)
            os.ftruncate(fd, old_size)
            os.fsync(fd)
            outcome = f"rolled back an interrupted write ({len(regions)} regions, size restored to {old_size} bytes)"
    finally:
        os.close(fd)
    with open(journal_path, "r+b") as f:
        f.truncate(0)
        os.fsync(f.fileno())
    return outcome
