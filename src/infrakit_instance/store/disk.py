"""The one seam for durable I/O of the file store and its journal.

Every write, truncate, sync, rename, unlink and directory sync of the store goes
through a :class:`Disk`, so that a test can put a recorder (or a fault injector)
in its place.  In production it is a method call around the ``os`` function.

Syncs: ``fdatasync`` where the platform has it.  macOS has none: there
:meth:`Disk.datasync` is ``fsync``, and with ``full=True`` (``--fsync always``)
``fcntl(F_FULLFSYNC)``, since macOS's ``fsync`` leaves data in the drive's cache.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable

__all__ = ["Disk", "DiskStopped", "pick_syncs"]

#: Flags for files the store creates: never follow a planted symlink, never reuse a planted file.
CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class DiskStopped(OSError):
    """A short write that made no progress."""


def _full_fsync(cmd: int) -> Callable[[int], None]:
    def sync(fd: int) -> None:
        try:
            fcntl.fcntl(fd, cmd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.ENOTTY):
                raise
            os.fsync(fd)  # a file system without F_FULLFSYNC

    return sync


def pick_syncs(full: bool) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """The (data sync, full sync) functions of this platform.  ``full``: the
    strongest there is (``--fsync always``)."""
    fullfsync = getattr(fcntl, "F_FULLFSYNC", None)
    fsync = _full_fsync(fullfsync) if full and fullfsync is not None else os.fsync
    fdatasync = getattr(os, "fdatasync", None)
    return (fdatasync if fdatasync is not None else fsync), fsync


class Disk:
    """Durable I/O by file descriptor.  ``sync=False`` (``--fsync never``) turns
    every sync into nothing and leaves flushing to the OS."""

    #: The store may run this disk's I/O on its writer thread while the event loop
    #: takes changes into the next batch (pipelined group commit).  A stand-in that
    #: does not set it itself (a recorder, a fault injector) runs on the loop, so
    #: that its operations interleave with the changes in one order, run after run.
    overlap = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "overlap" not in cls.__dict__:
            cls.overlap = False

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self._datasync, self._fsync = pick_syncs(full=sync)

    # -- writes --------------------------------------------------------------------

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:
                raise DiskStopped(errno.EIO, "short write")
            view = view[n:]
            offset += n

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    # -- syncs ---------------------------------------------------------------------

    def datasync(self, fd: int) -> None:
        """Make the file's data (and the metadata needed to read it) durable."""
        if self.sync:
            self._datasync(fd)

    def fsync(self, fd: int) -> None:
        """Make the file's data and all its metadata durable."""
        if self.sync:
            self._fsync(fd)

    def dirsync(self, dir_fd: int) -> None:
        """Make the directory's entries (creations, renames, unlinks) durable."""
        if self.sync:
            self._fsync(dir_fd)

    # -- names ---------------------------------------------------------------------

    def create(self, name: str, dir_fd: int, mode: int = 0o600) -> int:
        """A new file in the directory; never a planted file or the target of a symlink."""
        return os.open(name, CREATE, mode, dir_fd=dir_fd)

    def rename(self, src: str, dst: str, dir_fd: int) -> None:
        os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def unlink(self, name: str, dir_fd: int) -> None:
        os.unlink(name, dir_fd=dir_fd)
