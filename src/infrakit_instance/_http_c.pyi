"""Stub of the compiled twin of ``_http_py`` (same names, same behaviour)."""

from typing import Final, final

__all__ = [
    "CONTINUE",
    "HttpError",
    "HttpParser",
    "Request",
    "build_head",
    "build_response",
]

class HttpError(Exception):
    status: int
    message: str
    def __init__(self, status: int, message: str) -> None: ...

@final
class _Continue: ...

CONTINUE: Final[_Continue]

@final
class Request:
    method: bytes
    path: bytes
    content_type: bytes | None
    keep_alive: bool
    body: bytes
    host: bytes | None
    origin: bytes | None
    authorization: bytes | None
    def __init__(
        self,
        method: bytes,
        path: bytes,
        content_type: bytes | None,
        keep_alive: bool,
        body: bytes,
        host: bytes | None = None,
        origin: bytes | None = None,
        authorization: bytes | None = None,
    ) -> None: ...
    __hash__: None  # type: ignore[assignment]

@final
class HttpParser:
    max_body: int
    max_header: int
    def __init__(self, max_body: int = ..., max_header: int = ...) -> None: ...
    @property
    def idle(self) -> bool: ...
    @property
    def buffered(self) -> int: ...
    @property
    def in_body(self) -> bool: ...
    def feed(self, data: bytes) -> list[Request | HttpError | _Continue]: ...

def build_head(
    status: int,
    length: int,
    keep_alive: bool = True,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
) -> bytes: ...
def build_response(
    status: int,
    body: bytes,
    keep_alive: bool = True,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
) -> bytes: ...
