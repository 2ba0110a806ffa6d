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
* of a file's later writes and truncations, each 512-byte sector persists as the
  page cache held it after any prefix of the operations that touched it (writes
  are torn at sector boundaries and reach the disk in any order across sectors,
  but a disk writes a sector whole), and the file's length is the one after any
  prefix of them, zeros where its data did not arrive;
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

__all__ = [
    "SECTOR",
    "CrashState",
    "RecordingDisk",
    "Trace",
    "Unit",
    "apply_state",
    "crash_states",
    "materialize",
    "pending",
]

SECTOR = 512


@dataclass
class Trace:
    """What the store did to one directory: its files at the start, then every
    durable operation in order.  Files are named by a number of their own (an
    inode number, unique even where the file system reuses one)."""

    #: A directory that holds a hard link to every file of the trace, named by its
    #: number: crash states are laid out in these same inodes, as after a reboot
    #: (the store ties its journal to the state file's device and inode).
    keep: str = ""
    #: name -> file at the start, and each file's content.
    names: dict[str, int] = field(default_factory=dict)
    contents: dict[int, bytes] = field(default_factory=dict)
    #: ("write", ino, offset, data) | ("truncate", ino, size) | ("sync", ino)
    #: | ("create", name, ino) | ("rename", src, dst) | ("unlink", name) | ("dirsync",)
    ops: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def of_directory(cls, path: str) -> Trace:
        trace = cls(keep=path.rstrip("/") + ".keep")
        os.makedirs(trace.keep)
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            trace.names[name] = st.st_ino
            with open(full, "rb") as f:
                trace.contents[st.st_ino] = f.read()
            os.link(full, os.path.join(trace.keep, str(st.st_ino)))
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
        os.link(name, os.path.join(self.trace.keep, str(file)), src_dir_fd=dir_fd)
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
    """One thing whose fate a power loss decides, with ``choices`` outcomes:

    * ``sector``: one 512-byte sector of a file with writes in flight.  A disk
      writes a sector back whole, as the page cache held it at some moment, so it
      holds the version after some prefix of the in-flight operations touching it
      (choice 0: as last synced); sectors are independent of each other.
    * ``size``: a file's length, the one after some prefix of its in-flight
      operations, whatever its sectors hold (zeros where a sector's data did not
      arrive).
    * ``dir``: a creation, rename or unlink since the last directory sync, which
      happened (1) or not (0).
    """

    kind: str
    file: int = 0
    sector: int = 0
    index: int = 0  # of a directory operation in the trace
    #: the in-flight operations (trace indices) whose result each choice > 0 shows
    versions: tuple[int, ...] = ()

    @property
    def choices(self) -> int:
        return 2 if self.kind == "dir" else len(self.versions) + 1


@dataclass(frozen=True)
class CrashState:
    """The disk after a power loss at ``cut`` (the operations before it were
    issued): ``choice[i]`` is the outcome of the i-th unit of ``pending(trace, cut)``."""

    cut: int
    choice: tuple[int, ...]

    def describe(self, trace: Trace) -> str:
        units = pending(trace, self.cut)
        lines = [f"power loss before op {self.cut} of {len(trace.ops)}; in flight:"]
        for u, c in zip(units, self.choice, strict=True):
            if u.kind == "dir":
                lines.append(f"  {'happened' if c else 'lost'}: op {u.index} {trace.ops[u.index]!r}")
            elif c != u.choices - 1 or u.kind == "size":
                at = f"sector {u.sector}" if u.kind == "sector" else "size"
                shown = "as last synced" if c == 0 else f"as after op {u.versions[c - 1]}"
                lines.append(f"  file {u.file} {at}: {shown} (in flight: ops {list(u.versions)})")
        return "\n".join(lines)


def _dirty(trace: Trace, cut: int) -> dict[int, tuple[bytes, list[int]]]:
    """For each file: its content as last synced before ``cut``, and the indices
    of its writes and truncations since."""
    ops = trace.ops
    last_sync: dict[int, int] = {}
    for i in range(cut):
        if ops[i][0] == "sync":
            last_sync[ops[i][1]] = i
    durable: dict[int, bytearray] = {f: bytearray(c) for f, c in trace.contents.items()}
    flight: dict[int, list[int]] = {}
    for i in range(cut):
        op = ops[i]
        if op[0] == "create":
            durable.setdefault(op[2], bytearray())
        if op[0] not in ("write", "truncate"):
            continue
        if i < last_sync.get(op[1], -1):
            _apply(durable.setdefault(op[1], bytearray()), op)
        else:
            flight.setdefault(op[1], []).append(i)
    return {f: (bytes(d), flight.get(f, [])) for f, d in durable.items()}


def _apply(buf: bytearray, op: tuple[Any, ...]) -> None:
    if op[0] == "write":
        _, _, offset, data = op
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
    else:
        size = op[2]
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))


def _touches(op: tuple[Any, ...], before: int, sector: int) -> bool:
    lo, hi = sector * SECTOR, (sector + 1) * SECTOR
    if op[0] == "write":
        return op[2] < hi and op[2] + len(op[3]) > lo
    return min(op[2], before) < hi and max(op[2], before) > lo  # a truncation changes the bytes between


def pending(trace: Trace, cut: int) -> list[Unit]:
    """What was issued before ``cut`` and not yet made durable by a sync."""
    units: list[Unit] = []
    for file, (durable, flight) in sorted(_dirty(trace, cut).items()):
        if not flight:
            continue
        sizes = [len(durable)]
        buf = bytearray(durable)
        touched: dict[int, list[int]] = {}
        for i in flight:
            op = trace.ops[i]
            before = len(buf)
            _apply(buf, op)
            sizes.append(len(buf))
            end = max(before, len(buf), op[2] + len(op[3]) if op[0] == "write" else 0)
            start = op[2] if op[0] == "write" else min(op[2], before)
            for sector in range(start // SECTOR, (end + SECTOR - 1) // SECTOR):
                if _touches(op, before, sector):
                    touched.setdefault(sector, []).append(i)
        units += [Unit("sector", file, sector, versions=tuple(v)) for sector, v in sorted(touched.items())]
        units.append(Unit("size", file, versions=tuple(flight)))
    last_dirsync = max((i for i in range(cut) if trace.ops[i][0] == "dirsync"), default=-1)
    units += [
        Unit("dir", index=i) for i in range(last_dirsync + 1, cut) if trace.ops[i][0] in ("create", "rename", "unlink")
    ]
    return units


def apply_state(trace: Trace, state: CrashState) -> dict[str, tuple[int, bytes]]:
    """The directory's files in a crash state: name -> (file, content)."""
    ops = trace.ops
    dirty = _dirty(trace, state.cut)
    units = pending(trace, state.cut)
    choice = dict(zip(units, state.choice, strict=True))
    contents: dict[int, bytes] = {}
    for file, (durable, flight) in dirty.items():
        if not flight:
            contents[file] = durable
            continue
        images = {0: durable}  # the page cache after each in-flight operation
        buf = bytearray(durable)
        for i in flight:
            _apply(buf, ops[i])
            images[i] = bytes(buf)
        mine = [u for u in units if u.file == file and u.kind != "dir"]
        size_unit = next(u for u in mine if u.kind == "size")
        c = choice[size_unit]
        size = len(images[size_unit.versions[c - 1]] if c else durable)
        out = bytearray(durable[:size].ljust(size, b"\0"))
        for u in mine:
            if u.kind == "sector" and (c := choice[u]):
                lo = u.sector * SECTOR
                piece = images[u.versions[c - 1]][lo : lo + SECTOR].ljust(SECTOR, b"\0")
                if lo < size:
                    out[lo : min(size, lo + SECTOR)] = piece[: size - lo]
        contents[file] = bytes(out)
    names = dict(trace.names)
    last_dirsync = max((i for i in range(state.cut) if ops[i][0] == "dirsync"), default=-1)
    dir_choice = {u.index: choice[u] for u in units if u.kind == "dir"}
    for i in range(state.cut):
        op = ops[i]
        if op[0] not in ("create", "rename", "unlink") or (i > last_dirsync and not dir_choice[i]):
            continue
        if op[0] == "create":
            names[op[1]] = op[2]
        elif op[0] == "rename" and op[1] in names:
            names[op[2]] = names.pop(op[1])
        elif op[0] == "unlink":
            names.pop(op[1], None)
    return {name: (file, contents.get(file, b"")) for name, file in names.items()}


def crash_states(trace: Trace, rng: random.Random, exhaustive: int = 256, samples: int = 24) -> Iterator[CrashState]:
    """The crash states of every sync point: all of them where they number at most
    ``exhaustive``; else a seeded sample: the page cache persisted in issue order
    up to each in-flight operation (every clean prefix), everything persisted but
    one unit (left as last synced), and ``samples`` random ones."""
    for cut in trace.sync_points():
        units = pending(trace, cut)
        total = 1
        for u in units:
            total *= u.choices
        if total <= exhaustive:
            for choice in itertools.product(*(range(u.choices) for u in units)):
                yield CrashState(cut, choice)
            continue
        seen: set[tuple[int, ...]] = set()
        flight = sorted({v for u in units for v in u.versions} | {u.index for u in units if u.kind == "dir"})
        candidates = []
        for k in [-1, *flight]:  # clean prefixes: every operation up to k persisted, nothing after
            candidates.append(
                tuple(int(u.index <= k) if u.kind == "dir" else sum(1 for v in u.versions if v <= k) for u in units)
            )
        latest = tuple(u.choices - 1 for u in units)
        candidates += [latest[:i] + (0,) + latest[i + 1 :] for i in range(len(units))]
        candidates += [tuple(rng.randrange(u.choices) for u in units) for _ in range(samples)]
        for choice in candidates:
            if choice not in seen:
                seen.add(choice)
                yield CrashState(cut, choice)


def materialize(trace: Trace, files: dict[str, tuple[int, bytes]], directory: str) -> None:
    """Make ``directory`` hold exactly these files, each in the inode it had in the
    recorded run, as a reboot would find them."""
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    for name, (file, data) in files.items():
        kept = os.path.join(trace.keep, str(file))
        with open(kept, "r+b") as f:
            f.truncate(0)
            f.write(data)
        os.link(kept, os.path.join(directory, name))
