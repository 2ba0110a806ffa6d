"""Stub of the compiled twin of ``_conn_py`` (same names, same behaviour)."""

from typing import Any, Final

__all__ = ["MAX_PENDING", "Core", "use"]

MAX_PENDING: Final[int]

def use(parts: type, pending: type) -> None: ...

class Core:
    _backlog: Any
    _body_bytes: int
    _busy: bool
    _busy_since: float
    _closing: bool
    _dead: bool
    _held: int
    _last: float
    _paused: bool
    _req_start: float
    _slots: Any
    _waiting: Any
    _win_bytes: int
    _win_start: float
    cid: str
    parser: Any
    quick: tuple[tuple[bytes, bytes, bool], ...] | None
    server: Any
    transport: Any
    def data_received(self, data: bytes) -> None: ...
    def _request(self, req: Any) -> None: ...
    def _batch_done(self, done: Any) -> None: ...
    def _after_answer(self) -> None: ...
    def _respond(self, body: Any, keep_alive: bool) -> bytes | list[bytes]: ...
    def _flush(self) -> None: ...
    def _update_reading(self) -> None: ...
