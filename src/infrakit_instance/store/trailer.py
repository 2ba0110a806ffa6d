"""Batch trailers: how a torn journal-free append is told from a whole one.

A journal-free append batch writes its elements over the document's closing
bytes and the padding after them, and syncs once.  A power loss before that
sync can leave any of the batch's 512-byte sectors on disk and any not, in any
order; where a lost sector falls inside a JSON string the document still
parses, with an element's bytes changed.  So every append batch ends with a
*trailer*, just before the closing ``\\n]}``: 66 bytes of JSON whitespace
(every JSON reader, the C plugin's included, skips it) that encode the length
of the batch's bytes before it and their crc32:

    \\r <32 bits of crc32> <32 bits of length> \\r      (bit 0: space, bit 1: tab)

A raw ``\\r`` or tab never occurs anywhere else in the file: JSON strings escape
control characters, and the plugin writes ``\\n`` line ends.  The trailer and
the closing bytes after it share one sector (spaces before the trailer see to
it), so they reach the disk together or not at all.  Trailers of earlier
batches stay where they were, between elements, and mark where each durable
document ended.

At start-up the last trailer decides (:func:`torn_tail`): closed right after
it with a length of zero (a whole-file rewrite, or a journaled batch, which the
journal protects) or a matching checksum, the file is whole; a checksum that
does not match, where some sector of the batch still holds what was there
before it (spaces, or zeros past the old end), is the torn last batch, never
acknowledged, and is cut back to the trailer before it; junk after the last
trailer, ending in the padding, is a batch whose closing sector never landed,
cut back likewise.  Anything else is damage that power loss cannot cause, and
stops start-up as before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .._impl import batch, codec

__all__ = ["NO_CHECK", "SECTOR", "SIZE", "Tail", "encode", "find_last", "place", "strip", "torn_tail"]

SECTOR = 512
SIZE = 66
_UNBITS = bytes.maketrans(b" \t", b"01")
_CLOSE = codec.TAIL
_WS = b" \t"


#: The trailer of a batch of ``length`` bytes whose crc32 is ``crc``: ``encode(length, crc)``
#: (the batch core's, which also writes it into an append batch as it is cut).
encode = batch.trailer


#: The trailer that asks for no check: after a rewrite, or a journaled batch.
NO_CHECK = encode(0, 0)


def decode(raw: bytes) -> tuple[int, int] | None:
    """(length, crc) of a trailer's bytes; None if they are not one."""
    if len(raw) != SIZE or raw[0] != 13 or raw[-1] != 13 or raw[1:-1].strip(_WS):
        return None
    bits = raw[1:-1].translate(_UNBITS)
    return int(bits[32:], 2), int(bits[:32], 2)


def place(pos: int) -> int:
    """Spaces to put at ``pos`` before a trailer, so that it and the closing bytes after it
    lie in one sector."""
    room = SECTOR - pos % SECTOR
    return 0 if room >= SIZE + len(_CLOSE) else room


def strip(line: bytes) -> tuple[bytes, int]:
    """A line without the trailer it holds, and where the trailer was (-1: none)."""
    i = line.find(b"\r")
    if i < 0 or line[i + SIZE - 1 : i + SIZE] != b"\r" or line[i + 1 : i + SIZE - 1].strip(_WS):
        return line, -1  # what decode() would not read as a trailer (its bits are not needed here)
    return line[:i] + line[i + SIZE :], i


def find_last(data: bytes, stop: int | None = None) -> int:
    """Where the last trailer before ``stop`` starts (-1: none)."""
    if stop is None:
        stop = len(data)
    end = stop
    while True:
        e = data.rfind(b"\r", 0, end)
        if e < SIZE - 1:
            return -1
        if decode(data[e - SIZE + 1 : e + 1]) is not None:
            return e - SIZE + 1
        end = e


@dataclass
class Tail:
    """What the last trailer says about a file."""

    trailer: int  # where it starts; -1: the file has no trailer (an older layout)
    #: The document cut back to the last durable batch, if the last batch was torn.
    repaired: bytes | None = None
    #: Why the tail is damaged in a way power loss cannot explain, if it is.
    damage: str | None = None
    damage_at: int = -1


def _padding(raw: bytes) -> bool:
    return not raw.strip(b" \0")


def _looks_unwritten(data: bytes, s: int, lo: int, hi: int) -> bool:
    """Whether bytes lo..hi of a batch that began at ``s`` hold what was there before it:
    the old closing bytes, then the padding (spaces, or zeros past the old end of the file)."""
    head = min(hi, s + len(_CLOSE))
    if lo < head and data[lo:head] != _CLOSE[lo - s : head - s]:
        return False
    return not data[max(lo, head) : hi].strip(b" \0")


def _begins_batch(rest: bytes) -> bool:
    """Whether bytes after a trailer begin as a batch torn anywhere leaves them: the
    new separator's first bytes over the old closing bytes (a disk that tears writes
    at byte granularity, not only at sectors, is allowed for)."""
    return any(
        rest[k : len(_CLOSE)] == _CLOSE[k:] and (b',\n{"ID"'.startswith(rest[:k]) or b'\n{"ID"'.startswith(rest[:k]))
        for k in range(len(_CLOSE) + 1)
    )


def torn_tail(data: bytes) -> Tail:
    """Judge the end of a state file by its last trailer (see the module's docstring)."""
    t = find_last(data)
    if t < 0:
        return Tail(-1)
    after = t + SIZE
    length, crc = decode(data[t:after]) or (0, 0)
    # Closed after the trailer; or, on a disk that tears writes at bytes, not sectors,
    # with only part of the closing bytes after it.
    closed = next(
        (
            k
            for k in range(len(_CLOSE), -1, -1)
            if _CLOSE.startswith(data[after : after + k]) and _padding(data[after + k :])
        ),
        -1,
    )
    if closed >= 0:
        s = t - length
        if length == 0 or (s >= 0 and zlib.crc32(data[s:t]) == crc):
            return Tail(t) if closed == len(_CLOSE) else Tail(t, repaired=data[:after] + _CLOSE)
        if s >= 0:
            sectors = range(s // SECTOR, (t - 1) // SECTOR + 1)
            if (
                any(_looks_unwritten(data, s, max(s, k * SECTOR), min(t, (k + 1) * SECTOR)) for k in sectors)
                and find_last(data, s) == s - SIZE
            ):
                return Tail(t, repaired=data[:s] + _CLOSE)
        return Tail(
            t,
            damage="the last batch's bytes do not match its checksum, and none of its sectors is unwritten:"
            " not what a power loss can leave",
            damage_at=max(s, 0),
        )
    rest = data[after:]
    tail = rest.rstrip(b" \0")
    cut = tail.find(b"\r")  # a disk that tears at bytes may have left the start of the new trailer
    if cut >= 0 and len(tail) - cut < SIZE and not tail[cut + 1 :].strip(_WS):
        tail = tail[:cut]
    # The batch after the trailer lost its closing sector: what landed of it is followed by
    # the padding the plugin keeps; its first sector is the old close or the new separator.
    if _begins_batch(rest) and len(rest) - len(tail) >= 4096 and b"\r" not in tail and b"\t" not in tail:
        return Tail(t, repaired=data[:after] + _CLOSE)
    return Tail(
        t,
        damage="bytes after the document's last trailer are not what a torn append leaves",
        damage_at=after,
    )
