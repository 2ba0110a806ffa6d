"""Stub of the compiled twin of ``_batch_py`` (same names, same behaviour)."""

import asyncio
import collections
from typing import Any, Final

from .state import State

__all__ = ["SLACK", "Core", "trailer", "use"]

SLACK: Final[int]

def use(
    stopped: type, error: type, unknown: type, *, trailer: int, pad_keep: int, place: Any, padding: Any
) -> None: ...
def trailer(length: int, crc: int) -> bytes: ...

class Core:
    _state: State
    _order: collections.deque[Any] | None
    _gather: asyncio.Event | None
    _batch: asyncio.Future[None] | None
    _wake: asyncio.Event | None
    stopped: str | None
    _writes: list[tuple[int, bytes]]
    _run: list[bytes]
    _waiters: list[asyncio.Future[None]]
    _tip: int
    _end: int
    _append_from: int
    _live: int
    _run_end: int
    _changes: int
    _want: int
    _in_place: bool
    _size: int
    _checked: bool
    @property
    def state(self) -> State: ...
    def _check(self) -> None: ...
    def provision(self, record: Any, tags: dict[str, str]) -> asyncio.Future[None]: ...
    def destroy(self, instance_id: str) -> asyncio.Future[None]: ...
    def _head(self) -> Any: ...
    def _queue(self, offset: int, data: bytes, in_place: bool = True) -> None: ...
    def _join_run(self) -> None: ...
    def _joined_writes(self) -> list[tuple[int, bytes]]: ...
    def _cut_appends(self) -> tuple[int, bytes] | None: ...
    def _waiter(self) -> asyncio.Future[None]: ...
