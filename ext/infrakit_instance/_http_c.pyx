# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/1.1 request framing for the RPC path (compiled twin of ``_http_py``).

Same names, same results, same errors as the pure twin.  The parser works on
the received bytes through a C pointer: ``memchr`` finds line ends, header
names are compared in C, and only the pieces a :class:`Request` keeps become
Python objects.  A feed that starts on a request boundary (the usual case) is
parsed in place without copying into the connection buffer.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

from infrakit_instance._build cimport int_len, put, put_int

__all__ = [
    "CONTINUE",
    "HttpError",
    "HttpParser",
    "Request",
    "build_head",
    "build_response",
]

cdef enum:
    _HEADERS = 0
    _BODY = 1
    _CHUNK_SIZE = 2
    _CHUNK_DATA = 3
    _CHUNK_END = 4
    _TRAILERS = 5
    _DEAD = 6
    _MAX_CHUNK_LINE = 1024

# The reason phrases, and build_head (not on the hot path: big answers only), are the pure twin's own.
from infrakit_instance._http_py import _REASONS, build_head
cdef dict _reasons = _REASONS

# Character classes, indexed by byte.
cdef unsigned char _TOKEN[256]
cdef unsigned char _LOWER[256]
cdef signed char _HEXVAL[256]
cdef unsigned char _SPACE[256]  # what bytes.strip() removes


cdef inline Py_ssize_t _item(const unsigned char* v, Py_ssize_t vn, Py_ssize_t cs, Py_ssize_t* start, Py_ssize_t* end) noexcept:
    """The item of a comma-separated header value that begins at ``cs``,
    stripped like ``bytes.strip()``: its span in ``start``/``end``; returns
    where it ends (its comma, or ``vn``)."""
    cdef Py_ssize_t ce = cs, i
    while ce < vn and v[ce] != 44:
        ce += 1
    i = ce
    while cs < i and _SPACE[v[cs]]:
        cs += 1
    while i > cs and _SPACE[v[i - 1]]:
        i -= 1
    start[0] = cs
    end[0] = i
    return ce


cdef void _init_tables() noexcept:
    cdef int c
    cdef bytes token = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    cdef const unsigned char* t = <const unsigned char*>PyBytes_AS_STRING(token)
    for c in range(256):
        _TOKEN[c] = 0
        _LOWER[c] = <unsigned char>(c + 32 if 65 <= c <= 90 else c)
        _HEXVAL[c] = -1
        _SPACE[c] = 1 if c == 32 or 9 <= c <= 13 else 0
    for c in range(PyBytes_GET_SIZE(token)):
        _TOKEN[t[c]] = 1
    for c in range(10):
        _HEXVAL[48 + c] = c
    for c in range(6):
        _HEXVAL[97 + c] = 10 + c
        _HEXVAL[65 + c] = 10 + c


_init_tables()

cdef bytes _EMPTY = b""
cdef bytes _POST = b"POST"
cdef bytes _GET = b"GET"
cdef bytes _SLASH = b"/"
cdef bytes _JSON = b"application/json"


class HttpError(Exception):
    """A request the server must refuse with ``status``; the connection closes after."""

    def __init__(self, status, message):
        Exception.__init__(self, status, message)
        self.status = status
        self.message = message

    def __eq__(self, other):
        return isinstance(other, HttpError) and (self.status, self.message) == (other.status, other.message)

    def __hash__(self):
        return hash((self.status, self.message))

    def __repr__(self):
        return f"HttpError({self.status}, {self.message!r})"


cdef class _Continue:
    def __repr__(self):
        return "CONTINUE"


CONTINUE = _Continue()
cdef object _CONTINUE = CONTINUE


cdef class Request:
    """One complete request: only what the plugin needs of it (fields: ``_http_c.pxd``)."""

    def __init__(self, method, path, content_type, keep_alive, body, host=None, origin=None, authorization=None):
        self.method = method
        self.path = path
        self.content_type = content_type
        self.keep_alive = keep_alive
        self.body = body
        self.host = host
        self.origin = origin
        self.authorization = authorization

    def __eq__(self, other):
        if not isinstance(other, Request):
            return False
        o = <Request>other
        return (
            self.method, self.path, self.content_type, self.keep_alive, self.body,
            self.host, self.origin, self.authorization,
        ) == (o.method, o.path, o.content_type, o.keep_alive, o.body, o.host, o.origin, o.authorization)

    def __repr__(self):
        return (
            f"Request({self.method!r}, {self.path!r}, {self.content_type!r}, "
            f"{self.keep_alive!r}, <{len(self.body)} bytes>)"
        )


cdef inline bint _is_token(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if n <= 0:
        return False
    for i in range(n):
        if not _TOKEN[p[i]]:
            return False
    return True


cdef inline bint _ieq(const unsigned char* p, Py_ssize_t n, const char* lower, Py_ssize_t m) noexcept:
    """``p[:n].lower() == lower`` (ASCII, as bytes.lower)."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if _LOWER[p[i]] != <unsigned char>lower[i]:
            return False
    return True


cdef inline Py_ssize_t _find(const unsigned char* p, Py_ssize_t n, unsigned char c) noexcept:
    cdef const void* q
    if n <= 0:
        return -1
    q = memchr(p, c, <size_t>n)
    return -1 if q == NULL else <Py_ssize_t>(<const unsigned char*>q - p)


cdef class HttpParser:
    """Incremental HTTP/1.x request parser with size limits (fields: ``_http_c.pxd``)."""

    def __init__(self, Py_ssize_t max_body=16 * 1024 * 1024, Py_ssize_t max_header=64 * 1024):
        self.max_body = max_body
        self.max_header = max_header
        self._buf = bytearray()
        self._body = bytearray()
        self._state = _HEADERS
        self._scan = 0
        self._remaining = 0
        self._method = _EMPTY
        self._path = _EMPTY
        self._ctype = None
        self._host = None
        self._origin = None
        self._auth = None
        self._keep_alive = True

    @property
    def idle(self):
        """True between requests with nothing buffered (safe to time out)."""
        return self._idle()

    @property
    def buffered(self):
        """Bytes of unfinished requests held (the header block or body so far)."""
        return PyByteArray_GET_SIZE(self._buf) + PyByteArray_GET_SIZE(self._body)

    @property
    def in_body(self):
        """True while a request's body is arriving (its headers are complete)."""
        return _BODY <= self._state <= _TRAILERS

    def feed(self, data):
        return self._feed(data)

    cdef bint _idle(self) noexcept:
        return self._state == _HEADERS and PyByteArray_GET_SIZE(self._buf) == 0

    cdef list _feed(self, object data):
        cdef list out = []
        cdef Py_ssize_t used, n, rest
        if self._state == _DEAD:
            return out
        if type(data) is bytes and PyByteArray_GET_SIZE(self._buf) == 0:
            # Parse the received bytes in place; keep only an unfinished tail.
            n = PyBytes_GET_SIZE(data)
            try:
                used = self._run(<const unsigned char*>PyBytes_AS_STRING(data), n, out)
            except HttpError as exc:
                self._die()
                out.append(exc)
                return out
            rest = n - used
            if self._state != _DEAD and rest > 0:
                PyByteArray_Resize(self._buf, rest)
                memcpy(PyByteArray_AS_STRING(self._buf), PyBytes_AS_STRING(data) + used, <size_t>rest)
            return out
        self._buf += data
        try:
            used = self._run(<const unsigned char*>PyByteArray_AS_STRING(self._buf), PyByteArray_GET_SIZE(self._buf), out)
        except HttpError as exc:
            self._die()
            out.append(exc)
            return out
        if self._state == _DEAD:
            PyByteArray_Resize(self._buf, 0)
        elif used:
            del self._buf[:used]
        return out

    cdef void _die(self) noexcept:
        self._state = _DEAD
        PyByteArray_Resize(self._buf, 0)
        self._body = bytearray()

    cdef Py_ssize_t _run(self, const unsigned char* p, Py_ssize_t n, list out) except -1:
        """Consume what can be consumed of ``p[:n]``; return how many bytes that was."""
        cdef Py_ssize_t pos = 0, end, sep, nl, take, size, start, have
        cdef const unsigned char* line
        cdef int state
        while True:
            state = self._state
            if state == _HEADERS:
                # Blank lines between pipelined requests are tolerated (RFC 9112 2.2).
                start = pos
                while pos < n and (p[pos] == 13 or p[pos] == 10):
                    pos += 1
                if pos != start:
                    self._scan = 0
                if pos == n:
                    return pos
                end = self._find_header_end(p + pos, n - pos, &sep)
                if end < 0:
                    if n - pos > self.max_header:
                        raise HttpError(431, f"request header block is larger than {self.max_header} bytes")
                    return pos
                if end > self.max_header:
                    raise HttpError(431, f"request header block is larger than {self.max_header} bytes")
                start = pos
                pos += end + sep
                self._scan = 0
                self._start_request(p + start, end, n - pos, out)
            elif state == _BODY:
                if n - pos < self._remaining:
                    return pos
                body = PyBytes_FromStringAndSize(<const char*>p + pos, self._remaining)
                pos += self._remaining
                self._finish(body, out)
            elif state == _CHUNK_SIZE:
                nl = _find(p + pos, n - pos, 10)
                if nl < 0:
                    if n - pos > _MAX_CHUNK_LINE:
                        raise HttpError(400, "chunk size line is too long")
                    return pos
                if nl > _MAX_CHUNK_LINE:
                    raise HttpError(400, "chunk size line is too long")
                size = _chunk_size(p + pos, nl)
                pos += nl + 1
                if PyByteArray_GET_SIZE(self._body) + size > self.max_body:
                    raise HttpError(413, f"request body is larger than the limit of {self.max_body} bytes")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if pos == n:
                    return pos
                take = self._remaining if self._remaining < n - pos else n - pos
                have = PyByteArray_GET_SIZE(self._body)
                PyByteArray_Resize(self._body, have + take)
                memcpy(PyByteArray_AS_STRING(self._body) + have, p + pos, <size_t>take)
                pos += take
                self._remaining -= take
                if self._remaining:
                    return pos
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if n - pos >= 2 and p[pos] == 13 and p[pos + 1] == 10:
                    pos += 2
                elif n - pos >= 1 and p[pos] == 10:
                    pos += 1
                elif pos == n or (n - pos == 1 and p[pos] == 13):
                    return pos
                else:
                    raise HttpError(400, "chunk data is not followed by CRLF")
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                nl = _find(p + pos, n - pos, 10)
                if nl < 0:
                    if n - pos > self.max_header:
                        raise HttpError(431, "chunked trailer section is too large")
                    return pos
                line = p + pos
                pos += nl + 1
                while nl > 0 and line[nl - 1] == 13:
                    nl -= 1
                if nl == 0:
                    body = bytes(self._body)
                    self._body = bytearray()
                    self._finish(body, out)
            else:
                return pos

    cdef Py_ssize_t _find_header_end(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* sep) noexcept:
        # The first CRLFCRLF or LFLF at or after the resume point, as the pure
        # twin's two find() calls would report it.
        cdef Py_ssize_t scan = self._scan, i, nl, found = -1
        i = scan
        while True:
            nl = _find(p + i, n - i, 10)
            if nl < 0:
                break
            i += nl
            if i + 1 < n and p[i + 1] == 10:
                sep[0] = 2
                found = i
                break
            if i - 1 >= scan and p[i - 1] == 13 and i + 2 < n and p[i + 1] == 13 and p[i + 2] == 10:
                sep[0] = 4
                found = i - 1
                break
            if i + 2 < n and p[i + 1] == 13 and p[i + 2] == 10:
                sep[0] = 3  # a bare-LF header line, then a CRLF blank line
                found = i
                break
            i += 1
        # Resume a little before the end next time: a separator may straddle two reads.
        self._scan = n - 3 if n > 3 else 0
        return found

    cdef int _start_request(self, const unsigned char* h, Py_ssize_t hn, Py_ssize_t after, list out) except -1:
        cdef Py_ssize_t le, sp1, sp2, vn, ls, lnl, colon, vs, ve, length = -1, value, i, cs, ce, ts
        cdef const unsigned char* line
        cdef const unsigned char* v
        cdef bint keep_alive, http11, chunked = False, expect = False, last_chunked, all_known, close, ka
        cdef object ctype = None, host = None, origin = None, auth = None
        # Request line: exactly "METHOD SP TARGET SP VERSION".
        lnl = _find(h, hn, 10)
        le = hn if lnl < 0 else lnl
        while le > 0 and h[le - 1] == 13:
            le -= 1
        sp1 = _find(h, le, 32)
        sp2 = -1 if sp1 < 0 else _find(h + sp1 + 1, le - sp1 - 1, 32)
        if sp2 >= 0:
            sp2 += sp1 + 1
        if sp2 < 0 or _find(h + sp2 + 1, le - sp2 - 1, 32) >= 0 or sp2 == sp1 + 1:
            raise HttpError(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
        if not _is_token(h, sp1):
            raise HttpError(400, "malformed request method")
        v = h + sp2 + 1
        vn = le - sp2 - 1
        http11 = vn == 8 and memcmp(v, b"HTTP/1.1", 8) == 0
        if http11:
            keep_alive = True
        elif vn == 8 and memcmp(v, b"HTTP/1.0", 8) == 0:
            keep_alive = False
        elif vn == 8 and memcmp(v, b"HTTP/", 5) == 0 and 48 <= v[5] <= 57 and 48 <= v[7] <= 57:
            version = (<const char*>v)[:vn].decode("latin-1")
            raise HttpError(505, f"HTTP version {version} is not supported (use HTTP/1.1)")
        else:
            raise HttpError(400, "malformed HTTP version in the request line")
        # Header lines: every "\n"-separated piece after the request line.
        ls = lnl + 1
        while lnl >= 0:
            lnl = _find(h + ls, hn - ls, 10)
            ve = hn if lnl < 0 else ls + lnl
            line = h + ls
            ls = ve + 1
            vn = ve - (line - h)  # line length
            while vn > 0 and line[vn - 1] == 13:
                vn -= 1
            colon = _find(line, vn, 58)
            if colon <= 0:
                raise HttpError(400, "malformed header line (expected: Name: value)")
            if not _is_token(line, colon):
                raise HttpError(400, "malformed header name")
            vs = colon + 1
            ve = vn
            while vs < ve and (line[vs] == 32 or line[vs] == 9):
                vs += 1
            while ve > vs and (line[ve - 1] == 32 or line[ve - 1] == 9):
                ve -= 1
            v = line + vs
            vn = ve - vs
            if colon == 14 and _ieq(line, colon, b"content-length", 14):
                if vn == 0 or vn > 18:
                    raise HttpError(400, "Content-Length is not a non-negative integer")
                value = 0
                for i in range(vn):
                    if not 48 <= v[i] <= 57:
                        raise HttpError(400, "Content-Length is not a non-negative integer")
                    value = value * 10 + (v[i] - 48)
                if length >= 0 and value != length:
                    raise HttpError(400, "conflicting Content-Length headers")
                length = value
            elif colon == 17 and _ieq(line, colon, b"transfer-encoding", 17):
                last_chunked = False
                all_known = True
                cs = 0
                while True:
                    ce = _item(v, vn, cs, &ts, &i)
                    last_chunked = _ieq(v + ts, i - ts, b"chunked", 7)
                    if not last_chunked and not _ieq(v + ts, i - ts, b"identity", 8):
                        all_known = False
                    if ce >= vn:
                        break
                    cs = ce + 1
                if not last_chunked or not all_known:
                    raise HttpError(501, "only the chunked transfer coding is supported")
                chunked = True
            elif colon == 12 and _ieq(line, colon, b"content-type", 12):
                if vn == 16 and memcmp(v, b"application/json", 16) == 0:
                    ctype = _JSON
                else:
                    ctype = PyBytes_FromStringAndSize(<const char*>v, vn)
            elif colon == 4 and _ieq(line, colon, b"host", 4):
                if host is not None:
                    raise HttpError(400, "more than one Host header")
                host = PyBytes_FromStringAndSize(<const char*>v, vn)
            elif colon == 6 and _ieq(line, colon, b"origin", 6):
                origin = PyBytes_FromStringAndSize(<const char*>v, vn)
            elif colon == 13 and _ieq(line, colon, b"authorization", 13):
                auth = PyBytes_FromStringAndSize(<const char*>v, vn)
            elif colon == 10 and _ieq(line, colon, b"connection", 10):
                close = False
                ka = False
                cs = 0
                while True:
                    ce = _item(v, vn, cs, &ts, &i)
                    if _ieq(v + ts, i - ts, b"close", 5):
                        close = True
                    elif _ieq(v + ts, i - ts, b"keep-alive", 10):
                        ka = True
                    if ce >= vn:
                        break
                    cs = ce + 1
                if close:
                    keep_alive = False
                elif ka:
                    keep_alive = True
            elif colon == 6 and _ieq(line, colon, b"expect", 6):
                if not _ieq(v, vn, b"100-continue", 12):
                    raise HttpError(417, "only 'Expect: 100-continue' is supported")
                expect = http11
        if chunked and length >= 0:
            raise HttpError(400, "both Content-Length and Transfer-Encoding were sent")
        if length > self.max_body:
            raise HttpError(413, f"request body is larger than the limit of {self.max_body} bytes")
        if sp1 == 4 and memcmp(h, b"POST", 4) == 0:
            self._method = _POST
        elif sp1 == 3 and memcmp(h, b"GET", 3) == 0:
            self._method = _GET
        else:
            self._method = PyBytes_FromStringAndSize(<const char*>h, sp1)
        if sp2 - sp1 == 2 and h[sp1 + 1] == 47:
            self._path = _SLASH
        else:
            self._path = PyBytes_FromStringAndSize(<const char*>h + sp1 + 1, sp2 - sp1 - 1)
        self._ctype = ctype
        self._host = host
        self._origin = origin
        self._auth = auth
        self._keep_alive = keep_alive
        if chunked:
            self._state = _CHUNK_SIZE
            if expect:
                out.append(_CONTINUE)
            return 0
        if length <= 0:
            self._finish(_EMPTY, out)
            return 0
        if expect and after < length:
            out.append(_CONTINUE)
        self._remaining = length
        self._state = _BODY
        return 0

    cdef int _finish(self, bytes body, list out) except -1:
        cdef Request req = Request.__new__(Request)
        req.method = self._method
        req.path = self._path
        req.content_type = self._ctype
        req.keep_alive = True if self._keep_alive else False
        req.body = body
        req.host = self._host
        req.origin = self._origin
        req.authorization = self._auth
        out.append(req)
        self._state = _HEADERS if self._keep_alive else _DEAD
        return 0


cdef Py_ssize_t _chunk_size(const unsigned char* line, Py_ssize_t n) except -1:
    """The size of a chunk-size line (extensions after ';' ignored)."""
    cdef Py_ssize_t s = 0, e, i, semi
    cdef long long size = 0
    semi = _find(line, n, 59)
    e = n if semi < 0 else semi
    while s < e and (line[s] == 32 or line[s] == 9 or line[s] == 13):
        s += 1
    while e > s and (line[e - 1] == 32 or line[e - 1] == 9 or line[e - 1] == 13):
        e -= 1
    if e == s or e - s > 15:
        raise HttpError(400, "malformed chunk size")
    for i in range(s, e):
        if _HEXVAL[line[i]] < 0:
            raise HttpError(400, "malformed chunk size")
        size = size * 16 + _HEXVAL[line[i]]
    return <Py_ssize_t>size


cdef inline const char* _reason(long status, Py_ssize_t* n) noexcept:
    if status == 200:
        n[0] = 2
        return "OK"
    if status == 400:
        n[0] = 11
        return "Bad Request"
    if status == 405:
        n[0] = 18
        return "Method Not Allowed"
    if status == 415:
        n[0] = 22
        return "Unsupported Media Type"
    return NULL


def build_response(
    status,
    body,
    keep_alive=True,
    content_type=b"application/json",
    extra_headers=b"",
):
    """Serialize a complete response; the body is never re-encoded."""
    cdef long st
    cdef Py_ssize_t nr, ns, nb, nc, nl, nx, size
    cdef const char* reason
    cdef object r
    cdef bytes out
    cdef char* w
    if (
        type(status) is not int
        or type(body) is not bytes
        or type(content_type) is not bytes
        or type(extra_headers) is not bytes
        or not 0 <= status <= 999
    ):
        reason_obj = _reasons.get(status, b"Unknown")
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            reason_obj,
            content_type,
            len(body),
        )
        if not keep_alive:
            head += b"Connection: close\r\n"
        return head + extra_headers + b"\r\n" + body
    st = status
    reason = _reason(st, &nr)
    if reason == NULL:
        r = _reasons.get(status, b"Unknown")
        reason = PyBytes_AS_STRING(r)
        nr = PyBytes_GET_SIZE(r)
    ns = int_len(st)
    nb = PyBytes_GET_SIZE(body)
    nl = int_len(nb)
    nc = PyBytes_GET_SIZE(content_type)
    nx = PyBytes_GET_SIZE(extra_headers)
    close = not keep_alive
    # HTTP/1.1 S R\r\nContent-Type: C\r\nContent-Length: L\r\n[Connection: close\r\n]X\r\nB
    size = 9 + ns + 1 + nr + 2 + 14 + nc + 2 + 16 + nl + 2 + (19 if close else 0) + nx + 2 + nb
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w = put(w, b"HTTP/1.1 ", 9)
    w = put_int(w, st, ns)
    w[0] = 32
    w = put(w + 1, reason, nr)
    w = put(w, b"\r\nContent-Type: ", 16)
    w = put(w, PyBytes_AS_STRING(content_type), nc)
    w = put(w, b"\r\nContent-Length: ", 18)
    w = put_int(w, nb, nl)
    w = put(w, b"\r\n", 2)
    if close:
        w = put(w, b"Connection: close\r\n", 19)
    w = put(w, PyBytes_AS_STRING(extra_headers), nx)
    w = put(w, b"\r\n", 2)
    put(w, PyBytes_AS_STRING(body), nb)
    return out


cdef bytes json_ok(bytes body):
    """``build_response(200, body)``: keep-alive, application/json."""
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t nl = int_len(nb)
    # HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: L\r\n\r\nB
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 65 + nl + 4 + nb)
    cdef char* w = PyBytes_AS_STRING(out)
    w = put(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ", 65)
    w = put_int(w, nb, nl)
    w = put(w, b"\r\n\r\n", 4)
    put(w, PyBytes_AS_STRING(body), nb)
    return out
