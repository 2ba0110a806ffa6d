"""A crash-state checker for the file store: what power loss can leave on disk.

The store does every durable operation through one :class:`~infrakit_instance.store.disk.Disk`.
:class:`RecordingDisk` stands in for it: it performs each operation for real (the
store runs as in production) and records it in a :class:`Trace`.  From the trace,
:func:`crash_states` builds the disk states a power loss could leave at each sync
point, under the model of the ALICE study ("All File Systems Are Not Created
Equal", OSDI 2014), taken at its harshest for POSIX:

* what was synced before the crash persists: a file's writes and truncations up
  to its last ``fdatasync``/``fsync``, and the directory's creations, renames and
  unlinks up to its last directory sync;
* of a file's later writes, any subset persists, each write possibly torn at
  512-byte sector boundaries (any subset of its sectors), and the file's size may
  already cover writes whose data did not arrive (zeros);
* of the directory's later operations, any subset happened (in their order; one
  whose source is gone did not happen).

:func:`materialize` lays a state out in a real directory, where the store is
opened on it as after a reboot.  Everything here is test code.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from infrakit_instance.store.disk import Disk

__all__ = ["SECTOR", "CrashState", "RecordingDisk", "Trace", "crash_states", "materialize"]

SECTOR = 512


@dataclass
class Trace:
    """What the store did to one directory: its files at the start, then every
    durable operation in order.  Files are named by a number of their own (an
    inode number, unique even where the file system reuses one)."""

    #: name -> file at the start, and each file's content.
    names: dict[str, int] = field(default_factory=dict)
    contents: dict[int, bytes] = field(default_factory=dict)
    #: ("write", ino, offset, data) | ("truncate", ino, size) | ("sync", ino)
    #: | ("create", name, ino) | ("rename", src, dst) | ("unlink", name) | ("dirsync",)
    ops: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def of_directory(cls, path: str) -> Trace:
        trace = cls()
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            trace.names[name] = st.st_ino
            with open(full, "rb") as f:
                trace.contents[st.st_ino] = f.read()
        return trace

    def sync_points(self) -> list[int]:
        """The cuts worth checking: just before every sync (the most writes in
        flight), and the end of the trace."""
        return [i for i, op in enumerate(self.ops) if op[0] in ("sync", "dirsync")] + [len(self.ops)]


class OutsideTheSeam(AssertionError):
    """The store changed a file the recorder never saw created: an operation went around the Disk seam."""


class RecordingDisk(Disk):
    """A :class:`Disk` that also records what it does to the files of one directory."""

    def __init__(self, directory: str, sync: bool = True) -> None:
        super().__init__(sync=sync)
        self.directory = os.path.abspath(directory)
        self.trace = Trace.of_directory(self.directory)
        # inode -> the file the trace calls it: a new file may get a freed inode's number.
        self._files = {ino: ino for ino in self.trace.contents}
        self._next = itertools.count(max(self._files, default=0) + 1)

    def _ino(self, fd: int) -> int:
        ino = os.fstat(fd).st_ino
        if ino not in self._files:
            raise OutsideTheSeam(f"fd {fd} (inode {ino}) was not created through the Disk seam")
        return self._files[ino]

    def _check_dir(self, dir_fd: int) -> None:
        assert os.path.samestat(os.fstat(dir_fd), os.stat(self.directory)), "the store left its directory"

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self.trace.ops.append(("write", self._ino(fd), offset, bytes(data)))
        super().pwrite(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self.trace.ops.append(("truncate", self._ino(fd), size))
        super().truncate(fd, size)

    def datasync(self, fd: int) -> None:
        self.trace.ops.append(("sync", self._ino(fd)))
        super().datasync(fd)

    def fsync(self, fd: int) -> None:
        self.trace.ops.append(("sync", self._ino(fd)))
        super().fsync(fd)

    def dirsync(self, dir_fd: int) -> None:
        self._check_dir(dir_fd)
        self.trace.ops.append(("dirsync",))
        super().dirsync(dir_fd)

    def create(self, name: str, dir_fd: int, mode: int = 0o600) -> int:
        self._check_dir(dir_fd)
        fd = super().create(name, dir_fd, mode)
        file = self._files[os.fstat(fd).st_ino] = next(self._next)
        self.trace.ops.append(("create", name, file))
        return fd

    def rename(self, src: str, dst: str, dir_fd: int) -> None:
        self._check_dir(dir_fd)
        self.trace.ops.append(("rename", src, dst))
        super().rename(src, dst, dir_fd)

    def unlink(self, name: str, dir_fd: int) -> None:
        self._check_dir(dir_fd)
        self.trace.ops.append(("unlink", name))
        super().unlink(name, dir_fd)


# -- crash states ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One thing that may or may not have reached the disk: a sector of a write,
    a truncation, or a directory operation."""

    index: int  # of its operation in the trace
    kind: str  # "write" | "truncate" | "dir"
    ino: int = 0
    offset: int = 0
    data: bytes = b""
    size: int = 0


@dataclass(frozen=True)
class CrashState:
    """The disk after a power loss at ``cut`` (ops before it were issued), with
    ``kept`` of its in-flight units persisted; ``sized``: file sizes already cover
    every in-flight write, zeros where its data did not arrive."""

    cut: int
    kept: frozenset[int]  # positions in pending(cut)
    sized: bool = False

    def describe(self, trace: Trace) -> str:
        units = pending(trace, self.cut)
        lines = [f"power loss before op {self.cut} of {len(trace.ops)}; in flight, persisted or not:"]
        for pos, u in enumerate(units):
            mark = "kept" if pos in self.kept else "lost"
            op = trace.ops[u.index]
            what = f"{u.kind} ino {u.ino} @{u.offset} {len(u.data)} bytes" if u.kind == "write" else repr(op)
            lines.append(f"  [{mark}] op {u.index}: {what}")
        if self.sized:
            lines.append("  file sizes cover every in-flight write (zeros where data was lost)")
        return "\n".join(lines)


def _last(ops: list[tuple[Any, ...]], cut: int, match: Any) -> int:
    for i in range(cut - 1, -1, -1):
        if match(ops[i]):
            return i
    return -1


def pending(trace: Trace, cut: int) -> list[Unit]:
    """What was issued before ``cut`` but not yet made durable by a sync."""
    ops = trace.ops
    last_sync: dict[int, int] = {}
    for i in range(cut):
        if ops[i][0] == "sync":
            last_sync[ops[i][1]] = i
    last_dirsync = _last(ops, cut, lambda op: op[0] == "dirsync")
    units: list[Unit] = []
    for i in range(cut):
        op = ops[i]
        if op[0] in ("write", "truncate") and i > last_sync.get(op[1], -1):
            if op[0] == "truncate":
                units.append(Unit(i, "truncate", ino=op[1], size=op[2]))
                continue
            _, ino, offset, data = op
            # Torn at sector boundaries of the file: each sector persists or not.
            pos = offset
            while pos < offset + len(data):
                end = min(offset + len(data), (pos // SECTOR + 1) * SECTOR)
                units.append(Unit(i, "write", ino=ino, offset=pos, data=data[pos - offset : end - offset]))
                pos = end
        elif op[0] in ("create", "rename", "unlink") and i > last_dirsync:
            units.append(Unit(i, "dir"))
    return units


def apply_state(trace: Trace, state: CrashState) -> dict[str, bytes]:
    """The directory's files (name -> content) in a crash state."""
    ops = trace.ops
    units = pending(trace, state.cut)
    kept = {id(u) for pos, u in enumerate(units) if pos in state.kept}
    in_flight = {u.index for u in units}
    contents = {ino: bytearray(data) for ino, data in trace.contents.items()}
    names = dict(trace.names)

    def write(ino: int, offset: int, data: bytes) -> None:
        buf = contents.setdefault(ino, bytearray())
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data

    def resize(ino: int, size: int) -> None:
        buf = contents.setdefault(ino, bytearray())
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    by_index: dict[int, list[Unit]] = {}
    for u in units:
        by_index.setdefault(u.index, []).append(u)
    for i in range(state.cut):
        op = ops[i]
        if i not in in_flight:  # durable
            if op[0] == "write":
                write(op[1], op[2], op[3])
            elif op[0] == "truncate":
                resize(op[1], op[2])
            elif op[0] == "create":
                names[op[1]] = op[2]
                contents.setdefault(op[2], bytearray())
            elif op[0] == "rename" and op[1] in names:
                names[op[2]] = names.pop(op[1])
            elif op[0] == "unlink":
                names.pop(op[1], None)
            continue
        for u in by_index[i]:
            if state.sized and u.kind == "write" and len(contents.get(u.ino, b"")) < u.offset + len(u.data):
                resize(u.ino, u.offset + len(u.data))  # the size arrived, maybe not the data
            if id(u) not in kept:
                continue
            if u.kind == "write":
                write(u.ino, u.offset, u.data)
            elif u.kind == "truncate":
                resize(u.ino, u.size)
            elif op[0] == "create":
                names[op[1]] = op[2]
                contents.setdefault(op[2], bytearray())
            elif op[0] == "rename" and op[1] in names:
                names[op[2]] = names.pop(op[1])
            elif op[0] == "unlink":
                names.pop(op[1], None)
    return {name: bytes(contents.get(ino, b"")) for name, ino in names.items()}


def crash_states(trace: Trace, rng: random.Random, exhaustive: int = 10, samples: int = 24) -> Iterator[CrashState]:
    """Every crash state of each sync point whose in-flight units number at most
    ``exhaustive``; for larger ones, a seeded sample: every prefix in issue order,
    every state missing exactly one unit, and ``samples`` random subsets (half of
    them with file sizes ahead of their data)."""
    for cut in trace.sync_points():
        n = len(pending(trace, cut))
        if n <= exhaustive:
            for r in range(n + 1):
                for kept in itertools.combinations(range(n), r):
                    yield CrashState(cut, frozenset(kept))
            if n:
                yield CrashState(cut, frozenset(), sized=True)
            continue
        seen: set[tuple[frozenset[int], bool]] = set()
        candidates = [(frozenset(range(k)), False) for k in range(n + 1)]
        candidates += [(frozenset(range(n)) - {k}, False) for k in range(n)]
        for s in range(samples):
            candidates.append((frozenset(k for k in range(n) if rng.random() < 0.5), s % 2 == 1))
        for kept, sized in candidates:
            if (kept, sized) not in seen:
                seen.add((kept, sized))
                yield CrashState(cut, kept, sized)


def materialize(files: dict[str, bytes], directory: str) -> None:
    """Make ``directory`` hold exactly these files."""
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
