"""HTTP/1.1 request framing for the RPC path (pure-Python twin of ``_http_c``).

The parser is push-based: the server feeds it whatever bytes arrive and gets
back, in order, the complete requests, ``CONTINUE`` markers (answer
``100 Continue`` now) and at most one :class:`HttpError` after which the
connection must be answered and closed.  Only the headers the plugin acts on
are kept: a JSON-RPC body never needs the others.
"""

from __future__ import annotations

__all__ = [
    "CONTINUE",
    "HttpError",
    "HttpParser",
    "Request",
    "build_head",
    "build_response",
]

_HEADERS, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DEAD = range(7)

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_CHUNK_LINE = 1024

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request the server must refuse with ``status``; the connection closes after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpError) and (self.status, self.message) == (other.status, other.message)

    def __hash__(self) -> int:
        return hash((self.status, self.message))

    def __repr__(self) -> str:
        return f"HttpError({self.status}, {self.message!r})"


class _Continue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE = _Continue()


class Request:
    """One complete request: only what the plugin needs of it."""

    __slots__ = ("authorization", "body", "content_type", "host", "keep_alive", "method", "origin", "path")

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
    ) -> None:
        self.method = method
        self.path = path
        self.content_type = content_type
        self.keep_alive = keep_alive
        self.body = body
        # Only a TCP listener checks these (the unix socket's mode is its guard).
        self.host = host
        self.origin = origin
        self.authorization = authorization

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and (
            self.method,
            self.path,
            self.content_type,
            self.keep_alive,
            self.body,
            self.host,
            self.origin,
            self.authorization,
        ) == (
            other.method,
            other.path,
            other.content_type,
            other.keep_alive,
            other.body,
            other.host,
            other.origin,
            other.authorization,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Request({self.method!r}, {self.path!r}, {self.content_type!r}, "
            f"{self.keep_alive!r}, <{len(self.body)} bytes>)"
        )


def _is_token(value: bytes) -> bool:
    return bool(value) and all(c in _TOKEN for c in value)


class HttpParser:
    """Incremental HTTP/1.x request parser with size limits."""

    def __init__(self, max_body: int = 16 * 1024 * 1024, max_header: int = 64 * 1024) -> None:
        self.max_body = max_body
        self.max_header = max_header
        self._buf = bytearray()
        self._state = _HEADERS
        self._scan = 0  # where the search for the end of the header block resumes
        self._remaining = 0
        self._body = bytearray()
        self._method = b""
        self._path = b""
        self._ctype: bytes | None = None
        self._host: bytes | None = None
        self._origin: bytes | None = None
        self._auth: bytes | None = None
        self._keep_alive = True

    @property
    def idle(self) -> bool:
        """True between requests with nothing buffered (safe to time out)."""
        return self._state == _HEADERS and not self._buf

    @property
    def buffered(self) -> int:
        """Bytes of unfinished requests held (the header block or body so far)."""
        return len(self._buf) + len(self._body)

    @property
    def in_body(self) -> bool:
        """True while a request's body is arriving (its headers are complete)."""
        return _BODY <= self._state <= _TRAILERS

    def feed(self, data: bytes) -> list[Request | HttpError | _Continue]:
        out: list[Request | HttpError | _Continue] = []
        if self._state == _DEAD:
            return out
        self._buf += data
        try:
            self._run(out)
        except HttpError as exc:
            self._state = _DEAD
            self._buf.clear()
            self._body = bytearray()
            out.append(exc)
        return out

    def _run(self, out: list[Request | HttpError | _Continue]) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEADERS:
                # Blank lines between pipelined requests are tolerated (RFC 9112 2.2).
                start = 0
                while start < len(buf) and buf[start] in b"\r\n":
                    start += 1
                if start:
                    del buf[:start]
                    self._scan = 0
                if not buf:
                    return
                end, sep = self._find_header_end()
                if end < 0:
                    if len(buf) > self.max_header:
                        raise HttpError(431, f"request header block is larger than {self.max_header} bytes")
                    return
                if end > self.max_header:
                    raise HttpError(431, f"request header block is larger than {self.max_header} bytes")
                head = bytes(buf[:end])
                del buf[: end + sep]
                self._scan = 0
                if self._start_request(head, out):
                    continue
                return
            if state == _BODY:
                if len(buf) < self._remaining:
                    return
                n = self._remaining
                body = bytes(buf[:n])
                del buf[:n]
                self._finish(body, out)
            elif state == _CHUNK_SIZE:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise HttpError(400, "chunk size line is too long")
                    return
                if nl > _MAX_CHUNK_LINE:
                    raise HttpError(400, "chunk size line is too long")
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                size = _chunk_size(line)
                if len(self._body) + size > self.max_body:
                    raise HttpError(413, f"request body is larger than the limit of {self.max_body} bytes")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                take = min(self._remaining, len(buf))
                self._body += buf[:take]
                del buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                elif buf[:1] == b"\n":
                    del buf[:1]
                elif not buf or buf == b"\r":
                    return
                else:
                    raise HttpError(400, "chunk data is not followed by CRLF")
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > self.max_header:
                        raise HttpError(431, "chunked trailer section is too large")
                    return
                line = bytes(buf[:nl]).rstrip(b"\r")
                del buf[: nl + 1]
                if not line:
                    body = bytes(self._body)
                    self._body = bytearray()
                    self._finish(body, out)
            else:
                return

    def _find_header_end(self) -> tuple[int, int]:
        buf = self._buf
        scan = self._scan
        # The blank line that ends the headers, after CRLF or bare-LF lines (both
        # are accepted): the earliest of the three separators wins.
        found = [
            (i, n)
            for i, n in ((buf.find(b"\r\n\r\n", scan), 4), (buf.find(b"\n\n", scan), 2), (buf.find(b"\n\r\n", scan), 3))
            if i >= 0
        ]
        # Resume a little before the end next time: a separator may straddle two reads.
        self._scan = max(0, len(buf) - 3)
        return min(found) if found else (-1, 0)

    def _start_request(self, head: bytes, out: list[Request | HttpError | _Continue]) -> bool:
        lines = head.split(b"\n")
        parts = lines[0].rstrip(b"\r").split(b" ")
        if len(parts) != 3 or not parts[1]:
            raise HttpError(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
        method, path, version = parts
        if not _is_token(method):
            raise HttpError(400, "malformed request method")
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        elif version[:5] == b"HTTP/" and len(version) == 8 and version[5:6].isdigit() and version[7:8].isdigit():
            raise HttpError(505, f"HTTP version {version.decode('latin-1')} is not supported (use HTTP/1.1)")
        else:
            raise HttpError(400, "malformed HTTP version in the request line")
        length = -1
        chunked = False
        ctype: bytes | None = None
        host: bytes | None = None
        origin: bytes | None = None
        auth: bytes | None = None
        expect = False
        for raw in lines[1:]:
            line = raw.rstrip(b"\r")
            colon = line.find(b":")
            if colon <= 0:
                raise HttpError(400, "malformed header line (expected: Name: value)")
            name = line[:colon]
            if not _is_token(name):
                raise HttpError(400, "malformed header name")
            value = line[colon + 1 :].strip(b" \t")
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise HttpError(400, "Content-Length is not a non-negative integer")
                n = int(value)
                if length >= 0 and n != length:
                    raise HttpError(400, "conflicting Content-Length headers")
                length = n
            elif lname == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] != b"chunked" or any(c not in (b"chunked", b"identity") for c in codings):
                    raise HttpError(501, "only the chunked transfer coding is supported")
                chunked = True
            elif lname == b"content-type":
                ctype = value
            elif lname == b"host":
                if host is not None:
                    raise HttpError(400, "more than one Host header")
                host = value
            elif lname == b"origin":
                origin = value
            elif lname == b"authorization":
                auth = value
            elif lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif lname == b"expect":
                if value.lower() != b"100-continue":
                    raise HttpError(417, "only 'Expect: 100-continue' is supported")
                expect = version == b"HTTP/1.1"
        if chunked and length >= 0:
            raise HttpError(400, "both Content-Length and Transfer-Encoding were sent")
        if length > self.max_body:
            raise HttpError(413, f"request body is larger than the limit of {self.max_body} bytes")
        self._method = method
        self._path = path
        self._ctype = ctype
        self._host = host
        self._origin = origin
        self._auth = auth
        self._keep_alive = keep_alive
        if chunked:
            self._state = _CHUNK_SIZE
            if expect:
                out.append(CONTINUE)
            return True
        if length <= 0:
            self._finish(b"", out)
            return True
        if expect and len(self._buf) < length:
            out.append(CONTINUE)
        self._remaining = length
        self._state = _BODY
        return True

    def _finish(self, body: bytes, out: list[Request | HttpError | _Continue]) -> None:
        out.append(
            Request(self._method, self._path, self._ctype, self._keep_alive, body, self._host, self._origin, self._auth)
        )
        self._state = _HEADERS if self._keep_alive else _DEAD
        if not self._keep_alive:
            self._buf.clear()


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t\r")
    if not size or len(size) > 15 or not all(c in _HEX for c in size):
        raise HttpError(400, "malformed chunk size")
    return int(size, 16)


def build_response(
    status: int,
    body: bytes,
    keep_alive: bool = True,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
) -> bytes:
    """Serialize a complete response; the body is never re-encoded."""
    return build_head(status, len(body), keep_alive, content_type, extra_headers) + body


def build_head(
    status: int,
    length: int,
    keep_alive: bool = True,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
) -> bytes:
    """The status line and headers of a response whose ``length``-byte body is
    sent separately (a big answer is written without being copied into one buffer)."""
    reason = _REASONS.get(status, b"Unknown")
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (status, reason, content_type, length)
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + extra_headers + b"\r\n"
