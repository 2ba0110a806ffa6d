"""The single-file store.

:class:`FileStore` keeps the C plugin's one-document format and changes it in place:

* a provision overwrites the closing bytes with ``,<element>`` and closes the
  document again;
* a destroy turns the element into whitespace (JSON allows it anywhere);
* a label rewrites the element where it stands, or from there to the end when
  it grew;
* rare moves (NonFunctional, restore to the front, Provider) and files with
  too many holes are rewritten whole: temporary file, fsync, rename.

Every in-place batch goes through the rollback :mod:`journal`; concurrent
changes share one batch and so one pair of fsyncs (group commit).
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from .._impl import codec
from ..state import Record, State, StateError
from .base import Store, StoreError, StoreLocked, UnknownInstance
from .journal import Journal, Region, recover, repair_torn_append, rolled_back
from .journal import Record as UndoRecord

__all__ = [
    "FileStore",
    "Loaded",
    "compacted_size",
    "load_state_bytes",
    "load_state_file",
    "parse_state",
    "read_layout",
]

log = logging.getLogger(__name__)

_TAIL = codec.TAIL
_COMPACT_MIN = 1 << 20  # don't bother compacting files smaller than this
_PAD_MIN = 64 * 1024
_SLACK = 32  # spaces after each element, so that most labels rewrite it where it stands


def parse_state(data: bytes, path: str) -> State:
    """A state document; raise :class:`StateError` saying what is wrong."""
    if not data.strip():
        raise StateError(
            f"state file {path} is empty (a crash of a plugin that truncates its state can leave this);"
            " restore it from a backup, or delete it to start with no instances"
        )
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"state file {path} is not valid JSON: {exc}") from None
    try:
        return State.from_document(doc)
    except StateError as exc:
        raise StateError(f"state file {path}: {exc}") from None


@dataclass
class Loaded:
    """A state file as read."""

    state: State
    #: Where the document ends if the file is of our in-place layout (the
    #: elements' offsets are then set), else -1.
    end: int
    #: Bytes in the file.
    size: int
    #: The document cut back to its last complete element, when a crash cut an
    #: append short (see :mod:`journal`); the file still holds the torn one.
    repaired: bytes | None = None


def load_state_file(path: str) -> Loaded:
    """Read a state file of any layout; :class:`StateError` says what is wrong with it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        placed = read_layout(f)
        if placed is not None:
            return Loaded(placed[0], placed[1], size)
        f.seek(0)
        data = f.read()
    return load_state_bytes(data, path, layout=False)


def load_state_bytes(data: bytes, path: str, layout: bool = True) -> Loaded:
    """:func:`load_state_file` for a document already in memory."""
    if layout:
        placed = read_layout(io.BytesIO(data))
        if placed is not None:
            return Loaded(placed[0], placed[1], len(data))
    try:
        return Loaded(parse_state(data, path), -1, len(data))
    except StateError:
        repaired = repair_torn_append(data, _TAIL)
        if repaired is None:
            raise
    return Loaded(parse_state(repaired, path), -1, len(data), repaired)


_HEAD_END = b'"Instances":[\n'
_CLOSE = _TAIL[1:]


def read_layout(lines: Iterable[bytes]) -> tuple[State, int] | None:
    """Load a file of our own layout line by line (never the whole file at once),
    decoding only each element's brief description: the Spec stays the bytes
    it is in the file, checked to be JSON.  Every element is placed as it is
    read.  The state, and where the document ends; None if the file is not of
    our layout or anything in it is off: the caller then parses the whole
    document, which also says what is wrong."""
    it = iter(lines)
    head = []
    pos = 0
    for line in it:
        pos += len(line)
        head.append(line)
        if line.endswith(_HEAD_END):
            break
    else:
        return None
    try:
        state = State.from_document(orjson.loads(b"".join(head)[:-1] + b"]}"))
    except (orjson.JSONDecodeError, StateError):
        return None
    if state.instances:
        return None
    instances, known = state.instances, state.nonfunctional
    after_comma = False  # the line before ends with the comma that owns the next element
    end = -1
    for line in it:
        start = pos
        pos += len(line)
        if end >= 0:
            if line.strip(b" "):  # only padding may follow the document
                return None
            continue
        if line == _CLOSE:
            end = pos
            continue
        parsed = codec.parse_element(line)
        if parsed is None:
            return None
        comma, _, instance_id, tags, brief, spec = parsed
        if instance_id is not None:
            # Each live element but the first owns the comma before it.
            if after_comma == (not instances) or instance_id in instances or instance_id in known:
                return None
            assert brief is not None and tags is not None  # an element always has both
            rec = Record(instance_id, brief, spec)
            # The element's slot runs to the end of its line (its room for labels),
            # short of the comma there, which belongs to the next element.
            rec.off, rec.size = start, len(line) - line.endswith(b"\n") - comma
            state.load(rec, tags)
        after_comma = comma
    if end < 0 or after_comma:
        return None
    return state, end


def compacted_size(state: State) -> int:
    """How big the file would be, rewritten whole now (without removals' whitespace)."""
    return len(state.document(_SLACK)[0])


def _padding(end: int) -> int:
    """Spaces kept past the document's end, so that appends overwrite allocated
    bytes and the file size (inode metadata) rarely changes: that makes each
    append's fdatasync a plain data flush.  JSON allows trailing whitespace."""
    return max(_PAD_MIN, end // 8)


class FileStore(Store):
    """The state as one JSON file, changed in place under a rollback journal."""

    def __init__(self, path: str, fsync: bool = True, compact_ratio: float = 2.0) -> None:
        self.path = os.path.abspath(path)
        self.journal_path = self.path + ".journal"
        self.fsync = fsync
        self.compact_ratio = compact_ratio
        self._state = State()
        self._fd = -1
        self._journal: Journal | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="infrakit-store")
        self._end = 0  # where the document ends once every pending write is made
        self._size = 0  # the file size then (the document and its padding)
        self._live = 0  # about what the file would take compacted
        self._disk_size = 0  # file size on disk now
        self._writes: list[tuple[int, bytes]] = []
        self._in_place = False  # the pending batch overwrites more than the closing bytes
        self._relayout_at = -1  # the pending batch moves every element from this offset on
        self._grown: set[str] = set()  # ... because these outgrew their slots
        self._rewrite = False
        self._waiters: list[asyncio.Future[None]] = []
        self._batch: asyncio.Future[None] | None = None  # the future of the changes not yet cut
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._unrecovered = False  # a failed batch is still on disk, undone only in memory
        self._undo: UndoRecord | None = None  # how to undo it there

    @property
    def state(self) -> State:
        return self._state

    # -- opening and closing --------------------------------------------------

    async def open(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # The journal is never replaced, so its lock outlives whole-file rewrites.
        self._journal = Journal(self.journal_path, sync=self.fsync)
        try:
            fcntl.flock(self._journal.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._journal.close()
            self._journal = None
            raise StoreLocked(f"state file {self.path} is in use by another process (a running plugin?)") from None
        outcome = recover(self.path, self.journal_path, sync=self.fsync)
        if outcome:
            log.warning("state file %s: %s", self.path, outcome)
        self._load()
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _load(self) -> None:
        if os.path.exists(self.path):
            loaded = load_state_file(self.path)
            state, end, size = loaded.state, loaded.end, loaded.size
            if loaded.repaired is not None:
                log.warning("state file %s: the last append was cut short by a crash; cutting it back", self.path)
        else:
            state, end, size = State(), -1, 0
        self._state = state
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if end >= 0:
            self._end = end
            self._size = self._disk_size = size
            self._live = sum(r.size + 2 for r in state.instances.values()) + end // 64
            log.info("state file %s: %d instances, %d non-functional", self.path, len(state), len(state.nonfunctional))
        else:
            if size and loaded.repaired is None:
                log.warning(
                    "state file %s is in another layout (the C plugin's?): rewriting it in place-editable form",
                    self.path,
                )
            self._replace_file(self._plan_rewrite())

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None and self._wake is not None:
            self._wake.set()
            await self._writer
            self._writer = None
        self._executor.shutdown(wait=True)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- changes ----------------------------------------------------------------

    def provision(self, record: Record, tags: dict[str, str]) -> asyncio.Future[None]:
        state = self._state
        if state.known(record.id):
            raise StoreError(f"instance ID {record.id} already exists")
        had_live = len(state) > 0
        state.append(record, tags)
        elem = record.element() + b" " * _SLACK  # room for labels: most then fit in place
        start = self._end - len(_TAIL)
        sep = b",\n" if had_live else b"\n"
        record.off = start + len(sep)
        record.size = len(elem)
        end = start + len(sep) + len(elem) + len(_TAIL)
        if end <= self._size:
            self._queue(start, sep + elem + _TAIL, in_place=False)
        else:
            size = end + _padding(end)
            self._queue(start, sep + elem + _TAIL + b" " * (size - end), in_place=False)
            self._size = size
        self._end = end
        self._live += len(sep) + len(elem)
        return self._waiter()

    def destroy(self, instance_id: str) -> asyncio.Future[None]:
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise UnknownInstance(instance_id)
        first = next(iter(state.instances)) == instance_id
        state.remove(instance_id)
        self._live -= rec.size + 2
        if not first:
            # The comma before this element goes with it; the newline stays.
            self._queue(rec.off - 2, b" \n" + b" " * rec.size)
        else:
            self._queue(rec.off, b" " * rec.size)
            nxt = next(iter(state.instances.values()), None)
            if nxt is not None:
                self._queue(nxt.off - 2, b" ")  # the new first element has no comma before it
        self._maybe_compact()
        return self._waiter()

    def label(self, instance_id: str, labels: dict[str, str]) -> asyncio.Future[None]:
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise UnknownInstance(instance_id)
        new = state.relabel(rec, labels)
        elem = new.element()
        self._live += max(0, len(elem) - rec.size)
        if len(elem) <= rec.size:
            self._queue(rec.off, elem + b" " * (rec.size - len(elem)))
        else:
            # It grew out of its slot: everything from here on moves.  That is
            # planned once per batch, when the batch is cut (see _relayout).
            self._relayout_at = rec.off if self._relayout_at < 0 else min(self._relayout_at, rec.off)
            self._grown.add(instance_id)
            self._in_place = True
        return self._waiter()

    def set_functional(self, instance_id: str, functional: bool) -> asyncio.Future[None]:
        state = self._state
        if functional:
            if instance_id not in state.nonfunctional:
                raise UnknownInstance(instance_id)
            state.restore_front(instance_id)
        else:
            if instance_id not in state.instances:
                raise UnknownInstance(instance_id)
            state.to_nonfunctional(instance_id)
        self._rewrite = True
        return self._waiter()

    def forget(self, instance_id: str) -> asyncio.Future[None]:
        state = self._state
        if instance_id in state.instances:
            return self.destroy(instance_id)
        if instance_id not in state.nonfunctional:
            raise UnknownInstance(instance_id)
        state.drop_nonfunctional(instance_id)
        self._rewrite = True
        return self._waiter()

    def compact(self) -> asyncio.Future[None]:
        """Rewrite the whole file, dropping the whitespace left by removals."""
        self._rewrite = True
        return self._waiter()

    def set_provider(self, provider: Any) -> asyncio.Future[None]:
        self._state.provider = orjson.dumps(provider)
        self._rewrite = True
        return self._waiter()

    # -- planning writes ----------------------------------------------------------

    def _queue(self, offset: int, data: bytes, in_place: bool = True) -> None:
        self._writes.append((offset, data))
        if in_place:
            self._in_place = True

    def _waiter(self) -> asyncio.Future[None]:
        # One future per batch, shared by all its changes: one completion answers them all.
        fut = self._batch
        if fut is None:
            fut = self._batch = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            assert self._wake is not None
            self._wake.set()
        return fut

    def _relayout(self) -> None:
        """Rewrite every element from the first one that grew out of its slot to
        the end; the grown ones get fresh room so that the next label fits."""
        start, self._relayout_at = self._relayout_at, -1
        grown, self._grown = self._grown, set()
        if self._end - start > self._end // 2 and self._end > _COMPACT_MIN:
            self._rewrite = True  # cheaper written whole
            return
        # The element at `start` may be gone (destroyed in this batch, its comma
        # blanked): the first one written gets a comma if any element precedes it.
        first = next(iter(self._state.instances.values()), None)  # the live elements are in file order
        before = first is not None and first.off < start
        origin = start - 2 if before else start
        parts = []
        pos = origin
        for r in self._state.instances.values():
            if r.off < start:
                continue
            if pos > origin or before:
                parts.append(b",\n")
                pos += 2
            elem = r.element()
            # Grown elements get fresh room; the others keep the room they had.
            elem += b" " * (_SLACK if r.id in grown else max(0, r.size - len(elem)))
            r.off, r.size = pos, len(elem)
            parts.append(elem)
            pos += len(elem)
        parts.append(_TAIL)
        end = pos + len(_TAIL)
        if end < self._end:
            parts.append(b" " * (self._end - end))  # the old end becomes padding
        elif end > self._size:
            self._size = end + _padding(end)
            parts.append(b" " * (self._size - end))
        self._queue(origin, b"".join(parts))
        self._end = end

    def _maybe_compact(self) -> None:
        if self._end > _COMPACT_MIN and self._end > self.compact_ratio * self._live:
            self._rewrite = True

    def _plan_rewrite(self) -> bytes:
        """The whole document as memory holds it now, with every element placed in it."""
        doc, offsets = self._state.document(_SLACK)
        for rec, off in zip(self._state.instances.values(), offsets, strict=True):
            rec.off, rec.size = off, len(rec.element()) + _SLACK
        self._writes = []
        self._in_place = False
        self._relayout_at = -1
        self._grown.clear()
        self._rewrite = False
        self._end = len(doc)
        self._live = len(doc)
        doc += b" " * _padding(len(doc))
        self._size = len(doc)
        return doc

    # -- the writer -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._waiters:
                if self._closing:
                    return
                continue
            waiters, self._waiters = self._waiters, []
            self._batch = None
            if self._relayout_at >= 0:
                self._relayout()
            try:
                if self._unrecovered:
                    await loop.run_in_executor(
                        self._executor, recover, self.path, self.journal_path, self._undo, self.fsync
                    )
                    self._unrecovered, self._undo = False, None
                if self._rewrite:
                    doc = self._plan_rewrite()
                    await loop.run_in_executor(self._executor, self._replace_file, doc)
                else:
                    writes, self._writes = self._writes, []
                    append, self._in_place = not self._in_place, False
                    regions = _merge(writes, self._size)
                    old_size, new_size = self._disk_size, self._size
                    self._write_regions(old_size, new_size, regions, append)
                    self._disk_size = new_size
            except OSError as exc:
                log.error("state file %s: write failed: %s", self.path, exc)
                self._fail(waiters, exc)
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _write_regions(self, old_size: int, new_size: int, regions: list[Region], append: bool) -> None:
        assert self._journal is not None
        self._journal.write_batch(self._fd, old_size, new_size, regions, append)

    def _replace_file(self, doc: bytes) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(doc)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        assert self._journal is not None
        self._journal.invalidate()
        os.replace(tmp, self.path)
        self._sync_dir()
        new_fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = new_fd
        self._disk_size = len(doc)

    def _sync_dir(self) -> None:
        if self.fsync:
            dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _fail(self, waiters: list[asyncio.Future[None]], exc: OSError) -> None:
        """A batch failed: fail it and every change made since, and put memory
        back to what the disk durably holds (rolling the file back if it can)."""
        pending, self._waiters = self._waiters, []
        self._batch = None
        self._writes = []
        self._in_place = False
        self._relayout_at = -1
        self._grown.clear()
        self._rewrite = False
        err = StoreError(f"could not write the state file {self.path}: {exc.strerror or exc}")
        for fut in waiters + pending:
            if not fut.done():
                fut.set_exception(err)
        # Undo the failed batch even where it looks complete (its clients were
        # told it failed), but never an earlier, acknowledged one.
        assert self._journal is not None
        undo, self._journal.in_doubt = self._journal.in_doubt or self._undo, None
        try:
            recover(self.path, self.journal_path, undo, self.fsync)
            self._undo, self._unrecovered = None, False
        except OSError as again:
            # The disk refuses even the rollback: serve what it durably holds,
            # and roll back for real before the next write.
            log.error("state file %s: rollback deferred: %s", self.path, again)
            self._undo, self._unrecovered = undo, True
        try:
            data = rolled_back(self.path, self.journal_path, self._undo if self._unrecovered else None)
            loaded = load_state_bytes(data, self.path)
        except (OSError, StateError) as again:
            log.critical("state file %s: cannot reread it after a failed write: %s", self.path, again)
            return
        state, end = loaded.state, loaded.end
        if end < 0:
            self._rewrite = True  # a repaired or foreign document: write it anew
            end = len(data)
        self._state = state
        self._end, self._size = end, len(data)
        self._disk_size = len(data)
        self._live = sum(r.size + 2 for r in state.instances.values()) + end // 64


def _merge(writes: list[tuple[int, bytes]], end: int) -> list[Region]:
    """Coalesce a batch's writes into disjoint regions; a later write wins where
    they overlap, and nothing lands past ``end`` (a relayout may have shrunk it)."""
    if len(writes) == 1:
        off, data = writes[0]
        return [Region(off, data[: end - off])]
    spans: list[list[int]] = []
    for off, data in sorted(writes, key=lambda w: w[0]):
        stop = off + len(data)
        if spans and off <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], stop)
        else:
            spans.append([off, stop])
    starts = [s[0] for s in spans]
    buffers = [bytearray(e - s) for s, e in spans]
    for off, data in writes:
        i = bisect.bisect_right(starts, off) - 1
        rel = off - starts[i]
        buffers[i][rel : rel + len(data)] = data
    return [Region(s[0], bytes(b[: end - s[0]])) for s, b in zip(spans, buffers, strict=True) if s[0] < end]
