"""The single-file store.

:class:`FileStore` keeps the C plugin's one-document format and changes it in place:

* a provision overwrites the closing bytes with ``,<element>`` and closes the
  document again;
* a destroy turns the element into whitespace (JSON allows it anywhere);
* a label rewrites the element where it stands, or from there to the end when
  it grew;
* rare moves (NonFunctional, restore to the front, Provider) and files with
  too many holes are rewritten whole: temporary file, fsync, rename.

Every append batch ends in a checksummed :mod:`.trailer`, so that one torn by a
power loss is told from a whole one.
Every batch costs one sync: appends go straight to the file, everything else
through the redo :mod:`journal`; concurrent changes share one batch (group
commit).  All durable I/O goes through one :class:`~.disk.Disk`.  The state
file itself (its inode) is locked, so one plugin owns it whatever path names it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import errno
import fcntl
import io
import logging
import os
import queue
import stat
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .._impl import batch, codec
from .._impl import state as _state_twin
from ..state import Record, State, StateError
from .base import Store, StoreError, StoreLocked, UnknownInstance
from .damage import PAD_KEEP, diagnose
from .disk import Disk
from .journal import Journal, JournalStuck, Region, apply, apply_records, replay, replayed_image
from .trailer import NO_CHECK, Tail, torn_tail
from .trailer import SIZE as _TRAILER
from .trailer import encode as _trailer
from .trailer import place as _trailer_pad
from .trailer import strip as _strip_trailer

__all__ = [
    "FileStore",
    "Inspected",
    "Loaded",
    "compacted_size",
    "inspect_state",
    "load_state_bytes",
    "load_state_fd",
    "load_state_file",
    "parse_state",
    "read_all",
    "read_layout",
]

log = logging.getLogger(__name__)

_TAIL = codec.TAIL
_COMPACT_MIN = 1 << 20  # don't bother compacting files smaller than this
_PAD_MIN = 64 * 1024
_SLACK = batch.SLACK  # spaces after each element, so that most labels rewrite it where it stands


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
        raise StateError(f"state file {path} is not valid JSON at byte {exc.pos}: {exc}") from None
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
    #: The document ends in a batch trailer (see :mod:`.trailer`); files of the plugin's
    #: layout written before trailers have none.
    trailer: bool = False


def load_state_file(path: str) -> Loaded:
    """Read a state file of any layout; :class:`StateError` says what is wrong with it."""
    with open(path, "rb") as f:
        return load_state_fd(f.fileno(), path)


def load_state_fd(fd: int, path: str) -> Loaded:
    """:func:`load_state_file` of an open file (read from offset 0, the descriptor's position untouched)."""
    size = os.fstat(fd).st_size
    start, window = _last_bytes(fd, size)
    tail = torn_tail(window)
    if tail.trailer < 0 and start > 0 or tail.repaired is not None or tail.damage is not None:
        return load_state_bytes(read_all(fd), path)  # judged on the whole file
    with os.fdopen(os.dup(fd), "rb") as f:
        placed = read_layout(f)
    if placed is not None:
        return Loaded(placed[0], placed[1], size, trailer=tail.trailer >= 0)
    return load_state_bytes(read_all(fd), path, layout=False)


def _last_bytes(fd: int, size: int) -> tuple[int, bytes]:
    """The end of a file: its padding and at least a MiB before it (or all of it); and where that starts."""
    step = 1 << 20
    pos = size
    while pos > 0:
        lo = max(0, pos - step)
        if os.pread(fd, pos - lo, lo).strip(b" \0"):
            break
        pos = lo
    start = max(0, pos - step)
    return start, os.pread(fd, size - start, start)


def read_all(fd: int) -> bytes:
    """The whole file, by ``pread`` (no new descriptor needed)."""
    parts: list[bytes] = []
    off = 0
    while True:
        piece = os.pread(fd, 1 << 22, off)
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        off += len(piece)


def load_state_bytes(data: bytes, path: str, layout: bool = True) -> Loaded:
    """:func:`load_state_file` for a document already in memory.

    A torn last append (see :mod:`.trailer`, and :mod:`.damage` for files
    written before trailers) is cut back (``repaired``); any other damage raises
    :class:`StateError` naming the byte offset and the intact instances around it."""
    tail = torn_tail(data)
    if tail.damage is not None:
        raise StateError(_tail_damage(path, tail))
    if tail.repaired is not None:
        return Loaded(parse_state(tail.repaired, path), -1, len(data), tail.repaired, True)
    if layout:
        placed = read_layout(io.BytesIO(data))
        if placed is not None:
            return Loaded(placed[0], placed[1], len(data), trailer=tail.trailer >= 0)
    try:
        return Loaded(parse_state(data, path), -1, len(data))
    except StateError:
        damage = diagnose(data)
        if damage is None:
            raise
        # With trailers, a torn append is what the trailer says, nothing else.
        if not damage.torn or damage.repaired is None or tail.trailer >= 0:
            raise StateError(damage.describe(path)) from None
    return Loaded(parse_state(damage.repaired, path), -1, len(data), damage.repaired)


def _tail_damage(path: str, tail: Tail) -> str:
    return (
        f"state file {path} is damaged at byte {tail.damage_at} ({tail.damage}), so nothing was changed;"
        f" `infrakit-instance state salvage {path} --out NEW` writes every intact instance to a new file"
    )


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
        line, at = _strip_trailer(line)  # an empty document's trailer follows its "[" (and spaces)
        if at >= 0:
            line = line[:at].rstrip(b" ") + line[at:]
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
    # The per-element loop is the state twin's (compiled: no interpreted work per line).
    end = _state_twin.read_elements(it, state, pos, _strip_trailer, _CLOSE)
    if end < 0:
        return None
    return state, end


@dataclass
class Inspected:
    """A state file as the next start would see it, read without changing anything."""

    data: bytes  # the file's bytes
    image: bytes  # ... with the journal replayed, if it applies
    replayed: int  # batches the journal replays
    mismatch: str | None  # why a journal present does not apply


def inspect_state(path: str) -> Inspected:
    """Read a state file and its journal as :meth:`FileStore.open` would, changing nothing."""
    path = os.path.realpath(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    try:
        fd = os.open(path + ".journal", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Inspected(data, data, 0, None)
    except OSError as exc:
        return Inspected(data, data, 0, f"cannot read the journal: {exc}")
    try:
        raw = read_all(fd)
    finally:
        os.close(fd)
    verdict = replay(raw, data, st.st_dev, st.st_ino)
    if verdict.applies:
        return Inspected(data, replayed_image(data, verdict.records), len(verdict.records), None)
    return Inspected(data, data, 0, verdict.mismatch)


def compacted_size(state: State) -> int:
    """How big the file would be, rewritten whole now (without removals' whitespace)."""
    return len(_closed(state.document(_SLACK)[0]))


def _closed(doc: bytes) -> bytes:
    """A whole document as written at a rewrite: its closing bytes after a NO_CHECK trailer."""
    body = doc[: -len(_TAIL)]
    return body + b" " * _trailer_pad(len(body)) + NO_CHECK + _TAIL


def _padding(end: int) -> int:
    """Spaces kept past the document's end, so that appends overwrite allocated
    bytes and the file size (inode metadata) rarely changes: that makes each
    append's fdatasync a plain data flush.  JSON allows trailing whitespace.
    Never fewer than ``PAD_KEEP`` remain after a batch: that is how a torn
    append is told from a file cut short (see :mod:`.damage`)."""
    return max(_PAD_MIN, end // 8)


#: Append batches in a row that go through the journal before a checkpoint returns to direct appends.
_JOURNALED_APPENDS = 16

#: A batch may be made durable on the event loop (every client waits for it) only while the
#: batch before took at most this long: on a slow disk the loop stays free for newcomers.
_ON_LOOP_MAX = 0.002


class StoreStopped(StoreError):
    """The store stopped taking changes after a write it could not undo."""


def tell_core(twin: Any) -> None:
    """Hand a batch core twin the store's errors and layout (done for the selected one here)."""
    twin.use(
        StoreStopped,
        StoreError,
        UnknownInstance,
        trailer=_TRAILER,
        pad_keep=PAD_KEEP,
        place=_trailer_pad,
        padding=_padding,
        compact_min=_COMPACT_MIN,
    )


tell_core(batch)


def _makedirs(path: str) -> None:
    """Create missing directories, each 0700."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _holder(dev: int, ino: int) -> str:
    """Which process has this file open, and by what path (Linux /proc; best effort)."""
    me = os.getpid()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return "another process"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
                if (st.st_dev, st.st_ino) == (dev, ino):
                    return f"process {pid}, which opened it as {os.readlink(f'{fd_dir}/{fd}')}"
            except OSError:
                continue
    return "another process"


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _WriterThread:
    """The store's one I/O thread: each call runs there, in order, and its future is
    settled on the loop.  Lighter than ``run_in_executor`` on a thread pool (no
    concurrent future chained to an asyncio one): two thread hops a batch are the
    writer's whole price, and on a virtual machine each costs tens of microseconds."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None:
            # A daemon: a batch cut short by the interpreter's exit was never answered.
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        fut = loop.create_future()
        self._calls.put((loop, fut, fn, args))
        return fut

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            loop, fut, fn, args = call
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # handed to the awaiting coroutine, like run_in_executor
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, exc)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                pass
            del call, fut, result, exc

    def shutdown(self, wait: bool = True) -> None:
        """Stop the thread once the calls made so far are done."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            if wait:
                thread.join()


class FileStore(batch.Core, Store):
    """The state as one JSON file, changed in place under a redo journal."""

    def __init__(self, path: str, fsync: bool = True, compact_ratio: float = 2.0, disk: Disk | None = None) -> None:
        self.path = os.path.abspath(path)
        self.journal_path = self.path + ".journal"
        self.fsync = fsync
        self.disk = disk if disk is not None else Disk(fsync)
        self.compact_ratio = compact_ratio
        self._state = State()
        self._fd = -1
        self._dir_fd = -1
        self._spare = -1  # a descriptor kept in reserve for whole-file rewrites
        self._dev = self._ino = 0
        self._journal: Journal | None = None
        self._executor = _WriterThread("infrakit-store")
        self._end = 0  # where the document ends once every pending write is made
        # The pending batch's appended elements end here (-1: none); its tail (the trailer
        # and the closing bytes) is written there when the batch is cut (_seal).
        self._tip = -1
        self._append_from = -1  # where the pending batch's first element begins
        self._checked = False  # the last trailer carries a checksum (not NO_CHECK)
        self._size = 0  # the file size then (the document and its padding)
        self._live = 0  # about what the file would take compacted
        self._disk_size = 0  # file size on disk now
        self._writes: list[tuple[int, bytes]] = []
        self._run: list[bytes] = []  # writes that continue the last one in _writes, not yet joined to it
        self._run_end = -1  # where the last write queued ends
        self._in_place = False  # the pending batch overwrites more than the closing bytes
        self._relayout_at = -1  # the pending batch moves every element from this offset on
        self._grown: set[str] = set()  # ... because these outgrew their slots
        self._rewrite = False
        self._waiters: list[asyncio.Future[None]] = []
        self._batch: asyncio.Future[None] | None = None  # the future of the changes not yet cut
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._changes = 0  # changes taken since the last batch was cut
        self._want = 0  # ... that the writer waits for before cutting the next one
        self._gather: asyncio.Event | None = None  # set when they are there
        self._closing = False
        self._appends = 0  # append batches in a row that went through the journal
        self._took = 0.0  # seconds the last batch took, from its cut to its answers
        #: A batch every client waits for is made durable on the loop only while the batch
        #: before took at most this long (seconds).
        self.on_loop_max = _ON_LOOP_MAX
        # The live elements in file order, for _head; None: to be made from the state.
        self._order: collections.deque[Record] | None = None
        self._undone_image: tuple[int, bytes, int] | None = None  # a failed append the file still holds
        #: Why the store stopped taking changes (a write it could not undo), or None.
        self.stopped: str | None = None

    # -- opening and closing --------------------------------------------------

    async def open(self) -> None:
        # A symlinked --state names the file it points to: the journal and the
        # temporary files live next to that file, and the lock is on its inode.
        self.path = os.path.realpath(self.path)
        self.journal_path = self.path + ".journal"
        directory, name = os.path.split(self.path)
        _makedirs(directory)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._open_file(name)
            loaded = self._recover(name)
            self._load(loaded)
            jfd = self.disk.create(name + ".journal", self._dir_fd)
            self.disk.dirsync(self._dir_fd)
            self._journal = Journal(self.disk, jfd)
            self._spare = os.dup(self._dir_fd)
        except BaseException:
            self._close_fds()
            raise
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _open_file(self, name: str) -> None:
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except FileNotFoundError:
            fd = self.disk.create(name, self._dir_fd)
            self.disk.dirsync(self._dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"state file {self.path} became a symbolic link while opening it") from None
            raise
        self._fd = fd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"state file {self.path} is not a regular file")
        self._dev, self._ino = st.st_dev, st.st_ino
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(
                f"state file {self.path} is in use by {_holder(st.st_dev, st.st_ino)} (a running plugin?)"
            ) from None

    def _recover(self, name: str) -> Loaded | None:
        """Replay a journal left by a crash, if it belongs to the file; the state it gives."""
        jname = name + ".journal"
        try:
            st = os.stat(jname, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{self.journal_path} is a symbolic link: the plugin never follows one there; remove it")
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.journal_path} is not a regular file; remove it")
        jfd = os.open(jname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        try:
            raw = read_all(jfd)
        finally:
            os.close(jfd)
        data = read_all(self._fd)
        verdict = replay(raw, data, self._dev, self._ino)
        loaded = None
        if verdict.applies:
            image = replayed_image(data, verdict.records)
            loaded = load_state_bytes(image, self.path)  # checked before the file is touched
            apply_records(self.disk, self._fd, verdict.records)
            self.disk.datasync(self._fd)
            log.warning(
                "state file %s: replayed %d interrupted batches from %s", self.path, len(verdict.records), jname
            )
        elif verdict.records:
            aside = jname + ".unapplied"
            self.disk.rename(jname, aside, self._dir_fd)
            self.disk.dirsync(self._dir_fd)
            log.warning(
                "state file %s: journal %s was not applied: %s; kept as %s",
                self.path,
                self.journal_path,
                verdict.mismatch,
                aside,
            )
            return None
        self.disk.unlink(jname, self._dir_fd)
        self.disk.dirsync(self._dir_fd)
        return loaded

    def _load(self, loaded: Loaded | None) -> None:
        if loaded is None:
            if os.fstat(self._fd).st_size:
                loaded = load_state_fd(self._fd, self.path)
            else:
                loaded = Loaded(State(), -1, 0)
        state, end, size = loaded.state, loaded.end, loaded.size
        if loaded.repaired is not None:
            log.warning("state file %s: the last append was cut short by a crash; cutting it back", self.path)
        self._state = state
        self._order = None
        if end >= 0 and not loaded.trailer:
            log.info("state file %s: adding the batch trailer this version keeps; rewriting it", self.path)
            self._disk_size = size
            self._replace_file(self._plan_rewrite())
        elif end >= 0:
            self._end = end
            self._checked = True  # at worst a needless NO_CHECK write later
            self._size = self._disk_size = size
            self._live = state.placed_size(2) + end // 64
            log.info("state file %s: %d instances, %d non-functional", self.path, len(state), len(state.nonfunctional))
        else:
            if size and loaded.repaired is None:
                log.warning(
                    "state file %s is in another layout (the C plugin's?): rewriting it in place-editable form",
                    self.path,
                )
            self._disk_size = size
            self._replace_file(self._plan_rewrite())

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None and self._wake is not None:
            self._wake.set()
            await self._writer
            self._writer = None
        self._executor.shutdown(wait=True)
        if self._journal is not None and self.stopped is None:
            # A clean shutdown leaves no journal: the file holds everything.
            try:
                if not self._journal.empty:
                    self.disk.datasync(self._fd)
                self.disk.unlink(os.path.basename(self.journal_path), self._dir_fd)
                self.disk.dirsync(self._dir_fd)
            except OSError as exc:
                log.error("state file %s: could not remove the journal at close: %s", self.path, exc)
        self._close_fds()

    def _close_fds(self) -> None:
        if self._journal is not None:
            os.close(self._journal.fd)
            self._journal = None
        for attr in ("_fd", "_spare", "_dir_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    # -- changes ----------------------------------------------------------------
    # provision and destroy, and the pending batch's writes and future (_queue, _waiter,
    # _head), are the core's (batch.Core: _batch_c, twin _batch_py).

    def set_functional(self, instance_id: str, functional: bool) -> asyncio.Future[None]:
        self._check()
        state = self._state
        if functional:
            if instance_id not in state.nonfunctional:
                raise UnknownInstance(instance_id)
            state.restore_front(instance_id)
            self._order = None  # a new first element
        else:
            if instance_id not in state.instances:
                raise UnknownInstance(instance_id)
            state.to_nonfunctional(instance_id)
        self._rewrite = True
        return self._waiter()

    def forget(self, instance_id: str) -> asyncio.Future[None]:
        self._check()
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
        self._check()
        self._rewrite = True
        return self._waiter()

    def set_provider(self, provider: Any) -> asyncio.Future[None]:
        self._check()
        self._state.provider = orjson.dumps(provider)
        self._rewrite = True
        return self._waiter()

    # -- planning writes ----------------------------------------------------------

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
        first = self._head()  # the live elements are in file order
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
        self._queue(origin, b"".join(parts))
        self._tip = pos  # the tail follows: _seal

    def _seal(self) -> None:
        """Close the pending batch's document: after appended or moved elements, the
        trailer (checksummed later, by _sign, if the batch is appends only) and the
        closing bytes, in one sector; padding grown if need be.  A journaled batch that
        closes nothing still turns a checksummed last trailer into NO_CHECK: its in-place
        writes may change the bytes that checksum covers."""
        pos, self._tip = self._tip, -1
        if pos < 0:
            if self._in_place and self._checked:
                self._queue(self._end - len(_TAIL) - _TRAILER, NO_CHECK)
                self._checked = False
            return
        pad = _trailer_pad(pos)
        end = pos + pad + _TRAILER + len(_TAIL)
        parts = [b" " * pad, NO_CHECK, _TAIL]
        # How far the document and this batch's writes reach: a relayout that shrank it
        # leaves the old end (and elements appended before it moved them) as padding.
        reach = self._end  # appends only ever end past it; in-place writes (a relayout) may not
        if self._in_place:
            reach = max(reach, max((off + len(data) for off, data in self._joined_writes()), default=0))
        if end < reach:
            parts.append(b" " * (reach - end))
        if end + PAD_KEEP > self._size:
            size = end + _padding(end)
            parts.append(b" " * (size - max(end, reach)))
            self._size = size
        self._queue(pos, b"".join(parts), in_place=self._in_place)
        self._end = end
        self._checked = not self._in_place

    def _sign(self, regions: list[Region]) -> list[Region]:
        """Write the checksum of an append batch's bytes into its trailer."""
        start, self._append_from = self._append_from, -1
        at = self._end - len(_TAIL) - _TRAILER
        for n, r in enumerate(regions):
            if r.offset <= start < r.offset + len(r.data):
                lo, hi = start - r.offset, at - r.offset
                data = r.data
                crc = zlib.crc32(memoryview(data)[lo:hi])
                regions[n] = Region(r.offset, data[:hi] + _trailer(at - start, crc) + data[hi + _TRAILER :])
                return regions
        raise AssertionError("an append batch holds its elements and trailer in one region")

    def _plan_rewrite(self) -> bytes:
        """The whole document as memory holds it now, with every element placed in it."""
        ends: list[int] = []

        def close(body: int) -> bytes:  # as _closed closes a document, then the padding
            pad = _trailer_pad(body)
            ends.append(body + pad + _TRAILER + len(_TAIL))
            return b" " * pad + NO_CHECK + _TAIL + b" " * _padding(ends[0])

        doc = self._state.placed_document(_SLACK, close)
        self._tip = self._append_from = -1
        self._checked = False
        self._writes, self._run, self._run_end = [], [], -1
        self._in_place = False
        self._relayout_at = -1
        self._grown.clear()
        self._rewrite = False
        self._end = self._live = ends[0]
        self._size = len(doc)
        return doc

    # -- the writer -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Cut batches and make them durable, one at a time, in order.

        A batch is planned here, on the event loop; its durable I/O (journal
        record, writes, sync, checkpoint, rewrite) runs on the store's one
        writer thread (:class:`_WriterThread`), while the loop keeps taking changes into the next
        batch (pipelined group commit).  A batch is answered once its I/O is
        done; the next one's I/O starts only after that.  Without syncs there
        is nothing to wait for: the writes are made inline (and so they are for a
        :class:`~.disk.Disk` stand-in that does not ask for ``overlap``).  Nor is there
        anything to overlap when every open connection waits for the batch being cut:
        its writes and sync are made on the loop then (:meth:`_all_waiting`)."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        executor = self._executor
        overlap = self.disk.sync and self.disk.overlap
        want, hold = 0, 0.0  # changes the next batch waits for, and for how long at most
        while True:
            if self._closing and not self._waiters:
                # Closed while a batch was being written: its wake-up was that batch's (a change
                # nobody waits for, such as a notification's, may be the last before close()).
                return
            await self._wake.wait()
            self._wake.clear()
            if not self._waiters:
                continue
            if overlap and self._changes < want and not self._closing:
                # The clients of the batch just answered come back soon: let the batch
                # that waits take them too (one sync for both), for at most one sync's time.
                self._want = want
                self._gather = asyncio.Event()
                timer = loop.call_later(hold, self._gather.set)
                await self._gather.wait()
                timer.cancel()
                self._gather = None
            waiters, self._waiters = self._waiters, []
            self._batch = None
            taken, self._changes = self._changes, 0
            started = loop.time()
            if self.stopped is not None:
                # Stopped while the batch before this one was written: refuse these changes.
                self._refuse(waiters)
                continue
            if self._relayout_at >= 0:
                self._relayout()
            try:
                if self._rewrite:
                    doc = self._plan_rewrite()
                    await executor.run(loop, self._replace_file, doc)
                else:
                    cut = self._cut_appends()  # the common batch, appends only: the core's, in one pass
                    if cut is not None:
                        append, size = True, self._size
                        regions = [Region(*cut)]
                    else:
                        regions, append, size = self._cut()
                    self._append_from = -1
                    if overlap and not self._all_waiting():
                        await executor.run(loop, self._commit, regions, append, size)
                    else:
                        self._commit(regions, append, size)
            except OSError as exc:
                self._fail(waiters, exc)
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            self._took = loop.time() - started
            want, hold = taken + self._changes, min(self._took, 0.002)
            if self.stopped is None and self._journal is not None and not self._journal.empty:
                if self._journal.full or self._appends >= _JOURNALED_APPENDS:
                    if overlap:
                        await executor.run(loop, self._checkpoint)
                    else:
                        self._checkpoint()

    def _all_waiting(self) -> bool:
        """Nobody can send a request while this batch syncs (the server says every open
        connection waits for the store): the loop would sit idle, so the batch is made
        durable on it, without the two thread hand-offs (about 100 µs of wall time a batch
        here).  A client outside the batch keeps it on the writer thread, and the loop free;
        so does a slow disk (the batch before took over ``on_loop_max``), for a client that
        connects meanwhile.  Clients of a batch already done, whose answers are still to be
        written, do not count as waiting."""
        all_waiting = self.all_waiting
        return all_waiting is not None and self._took <= self.on_loop_max and all_waiting()

    def _cut(self) -> tuple[list[Region], bool, int]:
        """Cut any other batch: sealed, its writes merged into regions (journaled unless
        appends only), an append batch signed; ``(regions, append, size)``."""
        self._seal()
        writes, self._writes = self._joined_writes(), []
        append, self._in_place = not self._in_place, False
        size = self._size
        if append:
            regions = _merge(writes, size)
            if self._append_from >= 0:
                regions = self._sign(regions)
        else:  # journaled: the journal joins the writes chunk by chunk (Journal.log)
            regions = [Region(off, data[: size - off]) for off, data in writes if off < size]
        return regions, append, size

    def _commit(self, regions: list[Region], append: bool, new_size: int) -> None:
        """Make one batch durable with one sync (on the writer thread when syncs are on)."""
        journal = self._journal
        assert journal is not None
        old_size = self._disk_size
        if append and journal.empty:
            try:
                apply(self.disk, self._fd, old_size, new_size, regions)
                self.disk.datasync(self._fd)
            except OSError:
                self._undo_append(regions, old_size)
                raise
            self._disk_size = new_size
            return
        regions = journal.log(self._fd, self._dev, self._ino, old_size, new_size, regions)
        # Durable from here on: a failure below stops the store but does not fail the batch.
        self._disk_size = new_size
        self._appends = self._appends + 1 if append else 0
        try:
            apply(self.disk, self._fd, old_size, new_size, regions)
        except OSError as exc:
            self._stop(f"writing a journaled batch into the state file failed: {exc.strerror or exc}")

    def _checkpoint(self) -> None:
        """Sync the state file, after which the journal's records are not needed."""
        assert self._journal is not None
        try:
            self.disk.datasync(self._fd)
        except OSError as exc:
            self._stop(f"syncing the state file failed: {exc.strerror or exc}")
            return
        self._journal.reset()
        self._appends = 0

    def _undo_append(self, regions: list[Region], old_size: int) -> None:
        """Put back what a failed direct append overwrote: the closing bytes and padding."""
        if not regions:
            return
        start = regions[0].offset
        stop = max(r.offset + len(r.data) for r in regions)
        restore = _TAIL + b" " * max(0, min(stop, old_size) - start - len(_TAIL))
        try:
            self.disk.pwrite(self._fd, restore, start)
            if os.fstat(self._fd).st_size > old_size:
                self.disk.truncate(self._fd, old_size)
            self.disk.datasync(self._fd)
        except OSError as exc:
            self._stop(f"undoing a failed append failed: {exc.strerror or exc}")
            self._undone_image = (start, restore, old_size)

    def _stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = (
                f"the state store stopped taking changes: {why}; reads still work;"
                f" restart the plugin to recover {self.path} from its journal"
            )
            log.error("state file %s: %s", self.path, self.stopped)

    def _replace_file(self, doc: bytes) -> None:
        base = os.path.basename(self.path)
        tmp = f".{base}.{os.urandom(6).hex()}.tmp"
        try:
            fd = self.disk.create(tmp, self._dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or self._spare < 0:
                raise
            os.close(self._spare)  # the descriptor kept for this
            self._spare = -1
            fd = self.disk.create(tmp, self._dir_fd)
        try:
            self.disk.pwrite(fd, doc, 0)
            self.disk.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held before the new file has the name
            self.disk.rename(tmp, base, self._dir_fd)
        except BaseException:
            os.close(fd)
            try:
                self.disk.unlink(tmp, self._dir_fd)
            except OSError:
                pass
            raise
        log.info("state file %s: rewritten whole (%d bytes)", self.path, len(doc))
        old, self._fd = self._fd, fd
        st = os.fstat(fd)
        self._dev, self._ino = st.st_dev, st.st_ino
        self._disk_size = len(doc)
        if old >= 0:
            os.close(old)
        if self._spare < 0:
            try:
                self._spare = os.dup(self._dir_fd)
            except OSError:
                pass
        try:
            self.disk.dirsync(self._dir_fd)
        except OSError as exc:
            # The rename may not be durable: the journal must keep what it holds for the old file.
            self._stop(f"syncing the directory after replacing the file failed: {exc.strerror or exc}")
            return
        # Only once the rename is durable: until then a power loss can bring back the
        # old file, whose unsynced data writes only the journal's records can redo.
        if self._journal is not None:
            self._journal.reset()  # its records belong to the replaced file
            self._appends = 0

    def _refuse(self, waiters: list[asyncio.Future[None]]) -> None:
        """Changes taken while the batch before them stopped the store: fail them,
        and put memory back to what the next start recovers (the file with its
        journal replayed)."""
        assert self.stopped is not None
        self._clear_plans()
        err = StoreStopped(self.stopped)
        for fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        try:
            data = read_all(self._fd)
            if self._journal is not None:
                verdict = replay(read_all(self._journal.fd), data, self._dev, self._ino)
                if verdict.applies:
                    data = replayed_image(data, verdict.records)
            loaded = load_state_bytes(data, self.path)
        except (OSError, StateError) as exc:
            log.error("state file %s: cannot reread the file after the store stopped: %s", self.path, exc)
            return
        self._state = loaded.state
        self._order = None

    def _clear_plans(self) -> None:
        """Forget the writes planned for changes that fail: memory is reread from the file."""
        self._writes, self._run, self._run_end = [], [], -1
        self._in_place = False
        self._tip = self._append_from = -1
        self._checked = True  # not known after a failure: at worst a needless NO_CHECK write later
        self._relayout_at = -1
        self._grown.clear()
        self._rewrite = False

    def _fail(self, waiters: list[asyncio.Future[None]], exc: OSError) -> None:
        """A batch failed: fail it and every change made since, and put memory
        back to what the file holds."""
        log.error("state file %s: write failed: %s", self.path, exc)
        if isinstance(exc, JournalStuck):
            self._stop(f"a failed batch could not be cleared from the journal: {exc.strerror or exc}")
        pending, self._waiters = self._waiters, []
        self._batch = None
        self._clear_plans()
        err = StoreError(f"could not write the state file {self.path}: {exc.strerror or exc}")
        for fut in waiters + pending:
            if not fut.done():
                fut.set_exception(err)
        try:
            data = read_all(self._fd)
            undone = self._undone_image
            if undone is not None:  # the file still holds the failed append: read it as undone
                start, restore, size = undone
                data = (data[:start] + restore + data[start + len(restore) :])[:size]
                self._undone_image = None
            loaded = load_state_bytes(data, self.path)
        except (OSError, StateError) as again:
            self._stop(f"cannot reread the file after a failed write: {again}")
            return
        state, end = loaded.state, loaded.end
        if end < 0:
            self._rewrite = True  # a repaired or foreign document: write it anew
            end = len(data)
        self._state = state
        self._order = None
        self._end, self._size = end, len(data)
        self._disk_size = len(data)
        self._live = state.placed_size(2) + end // 64


def _merge(writes: list[tuple[int, bytes]], end: int) -> list[Region]:
    """Coalesce a batch's writes into disjoint regions; a later write wins where
    they overlap, and nothing lands past ``end`` (a relayout may have shrunk it)."""
    if len(writes) <= 1:
        return [Region(off, data[: end - off]) for off, data in writes if off < end]
    # An append batch's writes follow one another: one region, joined.
    pos = writes[0][0]
    for off, data in writes:
        if off != pos:
            break
        pos += len(data)
    else:
        start = writes[0][0]
        return [Region(start, b"".join([d for _, d in writes])[: end - start])] if start < end else []
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
