"""The durable path's own costs: destroys oldest first, and how a batch's writes become
the regions that reach the file and the journal."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
import zlib
from pathlib import Path

import pytest

from infrakit_instance.store import FileStore
from infrakit_instance.store.disk import Disk
from infrakit_instance.store.file import _WriterThread
from infrakit_instance.store.journal import CHUNK, Journal, Region, apply, read_records, replayed_image
from test_store import described, on_disk, provision, record, run


def test_destroys_oldest_first_labels_and_random_destroys_keep_the_file_in_order(tmp_path: Path) -> None:
    """InfraKit destroys in sorted-ID order, so oldest first: every destroy then takes the
    first element and blanks the comma of the one after it, which the store finds without
    walking what was destroyed before.  Mixed with provisions, labels (which replace an
    element's record) and destroys elsewhere, memory, the file and a reopened store agree
    on every instance and the order, and what the store keeps to find the first element
    stays bounded."""
    path = str(tmp_path / "s.json")
    rng = random.Random(5)

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        for i in range(0, 1200, 16):
            await asyncio.gather(*(provision(store, record(i + k)) for k in range(16)))
        alive = [f"id-{i}" for i in range(1200)]
        n = 1200
        for _ in range(80):
            batch = [store.destroy(alive.pop(0)) for _ in range(10)]  # oldest first
            batch.append(store.destroy(alive.pop(rng.randrange(len(alive)))))
            batch += [store.label(rng.choice(alive), {"k": str(rng.random())}) for _ in range(2)]
            batch += [provision(store, record(n + k)) for k in range(4)]
            alive += [f"id-{n + k}" for k in range(4)]
            n += 4
            await asyncio.gather(*batch)
            assert store._order is not None and len(store._order) <= 2 * len(alive) + 1024
        assert [d["ID"] for d in described(store)] == alive
        assert [d["ID"] for d in on_disk(path)] == alive
        await store.close()
        again = FileStore(path)
        await again.open()
        assert [d["ID"] for d in described(again)] == alive
        await again.close()

    run(main)


def _model(old: bytes, new_size: int, writes: list[tuple[int, bytes]]) -> tuple[bytes, list[tuple[int, int]]]:
    """The file after the writes made in order (a later one wins), and the chunk spans they touch
    (ranges of chunks, merged where they overlap or meet)."""
    image = bytearray(old.ljust(new_size, b"\0"))
    for off, data in writes:
        if len(image) < off + len(data):
            image.extend(bytes(off + len(data) - len(image)))
        image[off : off + len(data)] = data
    del image[new_size:]
    touched = sorted({c for off, data in writes for c in range(off // CHUNK, (off + len(data) - 1) // CHUNK + 1)})
    spans: list[tuple[int, int]] = []
    for c in touched:
        if spans and c <= spans[-1][1]:
            spans[-1] = (spans[-1][0], c + 1)
        else:
            spans.append((c, c + 1))
    return bytes(image), spans


def _chunk(image: bytes, c: int) -> int:
    return zlib.crc32(image[c * CHUNK : (c + 1) * CHUNK].ljust(CHUNK, b"\0"))


@pytest.mark.parametrize("seed", range(6))
def test_the_journal_joins_a_batchs_writes_in_their_order_chunk_by_chunk(tmp_path: Path, seed: int) -> None:
    """A journaled batch hands the journal its writes as they were made, unsorted and
    overlapping (a destroy after a provision of the same instance overwrites it): the
    record's regions write each chunk once, apply to exactly the bytes the writes made in
    order leave, and every chunk's checksums before and after are those of the file."""
    rng = random.Random(seed)
    path = tmp_path / "s.json"
    old = bytes(rng.choice(b" ab,\n") for _ in range(6000))
    path.write_bytes(old)
    fd = os.open(path, os.O_RDWR)
    jfd = os.open(tmp_path / "s.json.journal", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        journal = Journal(Disk(sync=False), jfd)
        for _ in range(40):
            data = path.read_bytes()
            new_size = len(data) + rng.choice([0, 0, 0, 700])
            writes = []
            for _ in range(rng.randint(1, 30)):
                off = rng.randrange(0, new_size - 1)
                n = rng.choice([1, 2, 3, 40, 300, 1100])
                writes.append((off, bytes(rng.choice(b"xyz ") for _ in range(min(n, new_size - off)))))
            want, spans = _model(data, new_size, writes)
            at = journal.pos
            joined = journal.log(fd, 1, 2, len(data), new_size, [Region(o, d) for o, d in writes])
            record = read_records(os.pread(jfd, journal.pos, 0))[-1]
            assert journal.pos > at and record.regions == [(r.offset, r.data) for r in joined]
            assert record.encode() == os.pread(jfd, journal.pos - at, at)  # the bytes log wrote
            # Each chunk at most once, every written byte covered, nothing else changed.
            chunks = [c for r in joined for c in range(r.offset // CHUNK, (r.offset + len(r.data) - 1) // CHUNK + 1)]
            assert len(chunks) == len(set(chunks))
            assert {c for first, end in spans for c in range(first, end) if c * CHUNK < new_size} <= set(chunks)
            assert replayed_image(data, [record]) == want
            expected = [(c, _chunk(data, c), _chunk(want, c)) for first, end in spans for c in range(first, end)]
            assert record.chunks == expected
            apply(journal.disk, fd, len(data), new_size, joined)
            assert path.read_bytes() == want
            if rng.random() < 0.2:
                journal.reset()
    finally:
        os.close(fd)
        os.close(jfd)


def test_the_writer_thread_runs_calls_in_order_and_hands_back_results_and_errors() -> None:
    """The store's I/O thread: calls made in a row run there one after another, in order;
    each answers its own future with the call's result or exception; shutdown waits for
    the calls already made."""
    writer = _WriterThread("infrakit-store")
    seen: list[tuple[int, str]] = []

    def work(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        if n == 3:
            raise OSError(errno.EIO, "Input/output error")
        return n * 10

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs = [writer.run(loop, work, n) for n in range(6)]
        got = await asyncio.gather(*futs, return_exceptions=True)
        assert got[:3] == [0, 10, 20] and got[4:] == [40, 50]
        assert isinstance(got[3], OSError) and got[3].errno == errno.EIO
        late = writer.run(loop, work, 7)
        writer.shutdown(wait=True)  # the call made before it still runs
        assert await late == 70

    run(main)
    assert seen == [(n, "infrakit-store") for n in (0, 1, 2, 3, 4, 5, 7)]
