# cython: language_level=3
"""State-file and answer encoding (compiled twin of ``_codec_py``).

Same names, same bytes.  Exact ``bytes``/``str``/``dict``/``list`` inputs are
measured once and copied into one preallocated ``bytes``; any other input
takes the pure twin's expressions, so odd types behave (and fail) the same.
"""

import orjson

# Inputs of unexpected types take the pure twin itself, so they behave (and fail) the same.
from infrakit_instance._codec_py import encode_document as _encode_document_generic

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.math cimport isinf
from libc.string cimport memchr, memcmp, memcpy
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc

from infrakit_instance._build cimport PyUnicode_GET_LENGTH, plain_len, put, put_plain, wrap2

__all__ = [
    "TAIL",
    "describe_result",
    "element",
    "encode_brief",
    "encode_spec",
    "is_json",
    "encode_document",
    "join_descriptions",
    "parse_element",
]

TAIL = b"\n]}\n"

cdef extern from "Python.h":
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char*, Py_ssize_t)
    char* _bytes_str "PyBytes_AS_STRING"(PyObject*)
    int _PyBytes_Resize(PyObject**, Py_ssize_t)
    void Py_SET_SIZE(PyObject*, Py_ssize_t)
    Py_ssize_t PyObject_LengthHint(object, Py_ssize_t) except -1
    object PyUnicode_New(Py_ssize_t, Py_UCS4)
    void* PyUnicode_DATA(object)
    double PyOS_string_to_double(const char*, char**, PyObject*) except? -1.0

cdef object _dumps = orjson.dumps
cdef bytes _TAIL = TAIL
# Plain Python indexing (not Cython's slice shortcut) so errors read as the pure twin's.
cdef object _BUT_LAST = slice(None, -1)


cdef inline bytes _exact(bytes raw):
    # orjson's output can sit in a much larger allocation: a long-lived copy is right-sized.
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


def encode_brief(instance_id, logical_id, tags):
    """The Description of an instance without Properties."""
    cdef Py_ssize_t n_id, n_lid, n, size, count, i
    cdef PyObject* k
    cdef PyObject* v
    cdef dict d
    cdef bytes out
    cdef char* w
    n_id = plain_len(instance_id)
    n_lid = 2 if logical_id is None else plain_len(logical_id)
    if n_id < 0 or n_lid < 0 or type(tags) is not dict:
        return _exact(_dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags}))
    d = <dict>tags
    size = 0
    count = 0
    i = 0
    while PyDict_Next(d, &i, &k, &v):
        n = plain_len(<object>k)
        if n < 0:
            return _exact(_dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags}))
        size += n
        n = plain_len(<object>v)
        if n < 0:
            return _exact(_dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags}))
        size += n + 6  # two pairs of quotes, the colon, the comma
        count += 1
    # {"ID":  "id"  ,"LogicalID":  null|"lid"  ,"Tags":  {...}  }
    size += 6 + n_id + 2 + 13 + (4 if logical_id is None else n_lid + 2) + 8 + 2 + 1 - (1 if count else 0)
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w = put(w, b'{"ID":', 6)
    w = put_plain(w, instance_id, n_id)
    w = put(w, b',"LogicalID":', 13)
    if logical_id is None:
        w = put(w, b"null", 4)
    else:
        w = put_plain(w, logical_id, n_lid)
    w = put(w, b',"Tags":{', 9)
    count = 0
    i = 0
    while PyDict_Next(d, &i, &k, &v):
        if count:
            w[0] = 44
            w += 1
        w = put_plain(w, <object>k, PyUnicode_GET_LENGTH(<object>k))
        w[0] = 58
        w += 1
        w = put_plain(w, <object>v, PyUnicode_GET_LENGTH(<object>v))
        count += 1
    w[0] = 125
    w[1] = 125
    return out


def element(brief, spec):
    """The state-file element: the brief description plus ``"Properties": <Spec>``."""
    if spec is None:
        return brief
    if type(brief) is bytes and type(spec) is bytes:
        return _with_properties(<bytes>brief, <bytes>spec)
    return brief[_BUT_LAST] + b',"Properties":' + spec + b"}"


cdef inline bytes _with_properties(bytes brief, bytes spec):
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(brief) - 1
    cdef Py_ssize_t ns = PyBytes_GET_SIZE(spec)
    cdef bytes out
    cdef char* w
    if nb < 0:
        nb = 0
    out = PyBytes_FromStringAndSize(NULL, nb + 14 + ns + 1)
    w = PyBytes_AS_STRING(out)
    w = put(w, PyBytes_AS_STRING(brief), nb)
    w = put(w, b',"Properties":', 14)
    w = put(w, PyBytes_AS_STRING(spec), ns)
    w[0] = 125
    return out


def join_descriptions(records, properties):
    """A JSON array of descriptions, with or without Properties."""
    if properties:
        return _join_with_properties(records)
    return _join_briefs(records)


cdef class _Out:
    """A ``bytes`` written in one pass over records whose total size is unknown.

    One traversal matters here: the records and their bytes are scattered in
    memory, so touching each of them twice (size, then copy; or a list of them
    filled and torn down) costs as much as the copy itself.  The end of each
    item is noted so the items can be taken back out if a record turns out to
    need the pure twin's expressions.
    """

    cdef PyObject* buf
    cdef Py_ssize_t size
    cdef Py_ssize_t cap
    cdef Py_ssize_t* ends
    cdef Py_ssize_t count
    cdef Py_ssize_t ends_cap

    def __dealloc__(self):
        Py_XDECREF(self.buf)
        PyMem_Free(self.ends)

    cdef char* reserve(self, Py_ssize_t extra, Py_ssize_t guess) except NULL:
        """Room for ``extra`` more bytes (``guess``: the first capacity); where to write them."""
        cdef Py_ssize_t cap
        if self.buf == NULL:
            cap = guess if guess > extra else extra
            self.buf = _new_bytes(NULL, cap)
            if self.buf == NULL:
                return NULL
            self.cap = cap
        elif self.size + extra > self.cap:
            cap = self.cap * 2
            if cap < self.size + extra:
                cap = self.size + extra
            if _PyBytes_Resize(&self.buf, cap) < 0:
                return NULL
            self.cap = cap
        return _bytes_str(self.buf) + self.size

    cdef int item_written(self, Py_ssize_t n) except -1:
        """``n`` bytes (a separator and one item) were written at ``reserve``'s place."""
        cdef Py_ssize_t* ends
        if self.count == self.ends_cap:
            self.ends_cap = self.ends_cap * 2 if self.ends_cap else 64
            ends = <Py_ssize_t*>PyMem_Realloc(self.ends, <size_t>self.ends_cap * sizeof(Py_ssize_t))
            if ends == NULL:
                raise MemoryError()
            self.ends = ends
        self.size += n
        self.ends[self.count] = self.size
        self.count += 1
        return 0

    cdef list items(self):
        """The items written so far, as separate ``bytes``."""
        cdef list out = []
        cdef Py_ssize_t i, start = 0
        for i in range(self.count):
            out.append(PyBytes_FromStringAndSize(_bytes_str(self.buf) + start + 1, self.ends[i] - start - 1))
            start = self.ends[i]
        return out

    cdef bytes close(self):
        """The array: what was written and its closing bracket."""
        cdef bytes out
        if self.buf == NULL:
            return b"[]"
        self.reserve(1, 0)[0] = 93
        self.size += 1
        if self.cap - self.size <= self.size // 8 + 64:
            # Keep a little slack instead of shrinking: after a shrink, glibc
            # serves the next answer of this size with a fresh mmap, page faults
            # and all, on every call (measured: twice as slow as the pure twin).
            Py_SET_SIZE(self.buf, self.size)
            _bytes_str(self.buf)[self.size] = 0
        elif _PyBytes_Resize(&self.buf, self.size) < 0:
            raise MemoryError()
        out = <bytes>self.buf
        Py_XDECREF(self.buf)
        self.buf = NULL
        return out


cdef Py_ssize_t _GUESS_MAX = 1 << 24


cdef inline Py_ssize_t _guess(Py_ssize_t hint, Py_ssize_t first) noexcept:
    # Capacity for ``hint`` items like the first one, with some slack for longer
    # ones; never more than 16 MiB on that guess alone (one large first item says
    # nothing of the others: the buffer doubles as it fills instead).
    if hint <= 0 or first <= 0:
        return 64
    if first > _GUESS_MAX // hint:
        return _GUESS_MAX if first < _GUESS_MAX else first + 64
    return hint * first + (hint * first) // 8 + 64


cdef bytes _join_briefs(records):
    cdef _Out out = _Out()
    cdef list parts = None
    cdef Py_ssize_t n, hint = PyObject_LengthHint(records, 0)
    cdef object b
    cdef char* w
    for r in records:
        b = r.brief
        if parts is None:
            if type(b) is bytes:
                n = PyBytes_GET_SIZE(b)
                w = out.reserve(n + 2, _guess(hint, n + 1))
                w[0] = 44 if out.size else 91
                memcpy(w + 1, PyBytes_AS_STRING(b), <size_t>n)
                out.item_written(n + 1)
                continue
            parts = out.items()
        parts.append(b)
    if parts is not None:
        return b"[" + b",".join(parts) + b"]"
    return out.close()


cdef bytes _join_with_properties(records):
    # Once a record needs the pure twin's expression, every later one takes it
    # too and the answer is joined as the pure twin joins it.
    cdef _Out out = _Out()
    cdef list parts = None
    cdef Py_ssize_t nb, ns, hint = PyObject_LengthHint(records, 0)
    cdef object b, s
    cdef char* w
    for r in records:
        b = r.brief
        s = r.spec
        if parts is None:
            if type(b) is bytes and (s is None or type(s) is bytes):
                nb = PyBytes_GET_SIZE(b) - 1
                if nb < 0:
                    nb = 0
                ns = 4 if s is None else PyBytes_GET_SIZE(s)
                w = out.reserve(nb + ns + 17, _guess(hint, nb + ns + 16))
                w[0] = 44 if out.size else 91
                w = put(w + 1, PyBytes_AS_STRING(b), nb)
                w = put(w, b',"Properties":', 14)
                if s is None:
                    w = put(w, b"null", 4)
                else:
                    w = put(w, PyBytes_AS_STRING(s), ns)
                w[0] = 125
                out.item_written(nb + ns + 16)
                continue
            parts = out.items()
        parts.append(b[_BUT_LAST] + b',"Properties":' + (b"null" if s is None else s) + b"}")
    if parts is not None:
        return b"[" + b",".join(parts) + b"]"
    return out.close()


def describe_result(type_json, descriptions):
    """The ``result`` object of Instance.DescribeInstances."""
    if type(type_json) is not bytes or type(descriptions) is not bytes:
        return b'{"Type":' + type_json + b',"Descriptions":' + descriptions + b"}"
    return wrap2(b'{"Type":', 8, type_json, b',"Descriptions":', 16, descriptions)


cdef bint _all_bytes(object items) noexcept:
    cdef Py_ssize_t i
    if type(items) is not list:
        return False
    for i in range(PyList_GET_SIZE(items)):
        if type(<object>PyList_GET_ITEM(items, i)) is not bytes:
            return False
    return True


def encode_document(provider, nonfunctional, instances):
    """The whole state file, and the offset of each element of ``instances`` in it."""
    cdef Py_ssize_t i, n_nf, n_in, size, pos
    cdef list nf, ins, offsets
    cdef object e
    cdef bytes out
    cdef char* w
    if type(provider) is not bytes or not _all_bytes(nonfunctional) or not _all_bytes(instances):
        return _encode_document_generic(provider, nonfunctional, instances)
    nf = <list>nonfunctional
    ins = <list>instances
    n_nf = PyList_GET_SIZE(nf)
    n_in = PyList_GET_SIZE(ins)
    # {"Provider":  p  ,"NonFunctional":[  \n e ,\n e \n  ],"Instances":[
    size = 12 + PyBytes_GET_SIZE(provider) + 18
    if n_nf:
        size += 2 + 2 * (n_nf - 1)
        for i in range(n_nf):
            size += PyBytes_GET_SIZE(<object>PyList_GET_ITEM(nf, i))
    size += 15
    offsets = [None] * n_in
    pos = size
    for i in range(n_in):
        pos += 1 if i == 0 else 2
        offsets[i] = pos
        pos += PyBytes_GET_SIZE(<object>PyList_GET_ITEM(ins, i))
    size = pos + 4
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w = put(w, b'{"Provider":', 12)
    w = put(w, PyBytes_AS_STRING(provider), PyBytes_GET_SIZE(provider))
    w = put(w, b',"NonFunctional":[', 18)
    for i in range(n_nf):
        w = put(w, b",\n" if i else b"\n", 2 if i else 1)
        e = <object>PyList_GET_ITEM(nf, i)
        w = put(w, PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e))
    if n_nf:
        w[0] = 10
        w += 1
    w = put(w, b'],"Instances":[', 15)
    for i in range(n_in):
        w = put(w, b",\n" if i else b"\n", 2 if i else 1)
        e = <object>PyList_GET_ITEM(ins, i)
        w = put(w, PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e))
    put(w, b"\n]}\n", 4)
    return out, offsets


# -- JSON validation ------------------------------------------------------------------
#
# The pure twin asks orjson whether bytes are JSON; this validator gives the
# same answer without building anything.  Where orjson goes beyond RFC 8259
# (or stops short of it), the validator follows orjson: every byte must be
# UTF-8 (no surrogates, no overlong forms, no byte order mark), a \u escape
# of a surrogate must be a high one followed by a low one, a number that is
# infinite as a double (1e400, 400 digits) is refused, and at most 1024
# arrays and objects may be open at once.

cdef enum:
    _MAX_DEPTH = 1024

# Bytes that stand for themselves in a JSON string: anything from the space
# up, except the quote, the backslash and what starts a UTF-8 sequence.
cdef unsigned char _plain[256]
cdef int _c
for _c in range(256):
    _plain[_c] = 0x20 <= _c < 0x80 and _c != 34 and _c != 92


cdef inline const unsigned char* _ws(const unsigned char* p, const unsigned char* end) noexcept:
    while p < end and (p[0] == 32 or p[0] == 10 or p[0] == 13 or p[0] == 9):
        p += 1
    return p


cdef inline const unsigned char* _hex4(const unsigned char* p, const unsigned char* end, unsigned int* out) noexcept:
    """Four hex digits at ``p`` (after ``\\u``) into ``out``; where they end, or NULL."""
    cdef unsigned int v = 0
    cdef unsigned char c
    cdef int i
    if end - p < 4:
        return NULL
    for i in range(4):
        c = p[i]
        if 48 <= c <= 57:
            v = v * 16 + (c - 48)
        elif 97 <= (c | 0x20) <= 102:
            v = v * 16 + ((c | 0x20) - 87)
        else:
            return NULL
    out[0] = v
    return p + 4


cdef inline const unsigned char* _utf8(const unsigned char* p, const unsigned char* end) noexcept:
    """One well-formed multi-byte UTF-8 sequence at ``p``; where it ends, or NULL."""
    cdef unsigned char c = p[0], c1
    if c < 0xC2:  # a continuation byte, or an overlong two-byte form
        return NULL
    if c < 0xE0:
        if end - p < 2 or (p[1] & 0xC0) != 0x80:
            return NULL
        return p + 2
    if c < 0xF0:
        if end - p < 3:
            return NULL
        c1 = p[1]
        if (c1 & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80:
            return NULL
        if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):  # overlong; a surrogate
            return NULL
        return p + 3
    if c < 0xF5:
        if end - p < 4:
            return NULL
        c1 = p[1]
        if (c1 & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80 or (p[3] & 0xC0) != 0x80:
            return NULL
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):  # overlong; past U+10FFFF
            return NULL
        return p + 4
    return NULL


cdef const unsigned char* _string(const unsigned char* p, const unsigned char* end) noexcept:
    """The string whose opening quote is at ``p``; where it ends, or NULL."""
    cdef unsigned char c
    cdef unsigned int u
    p += 1
    while True:
        while p < end and _plain[p[0]]:
            p += 1
        if p >= end:
            return NULL
        c = p[0]
        if c == 34:
            return p + 1
        if c == 92:
            p += 1
            if p >= end:
                return NULL
            c = p[0]
            if c == 117:  # \uXXXX; a surrogate only as a high one and then a low one
                p = _hex4(p + 1, end, &u)
                if p == NULL or 0xDC00 <= u <= 0xDFFF:
                    return NULL
                if 0xD800 <= u <= 0xDBFF:
                    if end - p < 2 or p[0] != 92 or p[1] != 117:
                        return NULL
                    p = _hex4(p + 2, end, &u)
                    if p == NULL or not 0xDC00 <= u <= 0xDFFF:
                        return NULL
            elif c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 or c == 116:
                p += 1
            else:
                return NULL
        elif c < 0x20:
            return NULL
        else:
            p = _utf8(p, end)
            if p == NULL:
                return NULL


cdef const long long _ZERO = -(1LL << 62)


cdef const unsigned char* _number(const unsigned char* p, const unsigned char* end, long long* mag) noexcept:
    """The number at ``p`` (a minus or a digit); where it ends, or NULL.  ``mag``:
    the power of ten of its first significant digit, or ``_ZERO`` for a zero."""
    cdef const unsigned char* q
    cdef long long m = _ZERO, e = 0
    cdef bint neg
    if p[0] == 45:
        p += 1
        if p >= end:
            return NULL
    if p[0] == 48:
        p += 1
    elif 49 <= p[0] <= 57:
        q = p
        while p < end and 48 <= p[0] <= 57:
            p += 1
        m = p - q - 1
    else:
        return NULL
    if p < end and p[0] == 46:
        p += 1
        q = p
        while p < end and 48 <= p[0] <= 57:
            if m == _ZERO and p[0] != 48:
                m = q - p - 1
            p += 1
        if p == q:
            return NULL
    if p < end and (p[0] | 0x20) == 101:
        p += 1
        neg = False
        if p < end and (p[0] == 43 or p[0] == 45):
            neg = p[0] == 45
            p += 1
        q = p
        while p < end and 48 <= p[0] <= 57:
            if e < 1000000000000000:  # far past any double either way
                e = e * 10 + (p[0] - 48)
            p += 1
        if p == q:
            return NULL
        if neg:
            e = -e
    mag[0] = m if m == _ZERO else m + e
    return p


cdef int _infinite(const unsigned char* s, Py_ssize_t n) except -1:
    """Whether the number text ``s[:n]`` (between 1e308 and 1e309) is infinite as a double."""
    cdef char small[512]
    cdef char* buf = small
    cdef double v
    if n >= 512:
        buf = <char*>PyMem_Malloc(<size_t>n + 1)
        if buf == NULL:
            raise MemoryError()
    try:
        memcpy(buf, s, <size_t>n)
        buf[n] = 0
        # Correctly rounded, as orjson's own parse is: the boundary is exact.
        v = PyOS_string_to_double(buf, NULL, NULL)
    finally:
        if buf != small:
            PyMem_Free(buf)
    return 1 if isinf(v) else 0  # (glibc isinf gives -1 for -inf)


cdef inline const unsigned char* _key(const unsigned char* p, const unsigned char* end) noexcept:
    """A member's name and colon at ``p``; where its value starts, or NULL."""
    if p >= end or p[0] != 34:
        return NULL
    p = _string(p, end)
    if p == NULL:
        return NULL
    p = _ws(p, end)
    if p >= end or p[0] != 58:
        return NULL
    return _ws(p + 1, end)


cdef int _valid(const unsigned char* p, const unsigned char* end) except -1:
    """Whether ``p[:end]`` is one JSON value, with whitespace around it."""
    cdef bint in_object[_MAX_DEPTH]
    cdef Py_ssize_t depth = 0
    cdef const unsigned char* start
    cdef unsigned char c
    cdef long long mag
    p = _ws(p, end)
    while True:
        # A value starts at p.
        if p >= end:
            return 0
        c = p[0]
        if c == 123 or c == 91:
            if depth == _MAX_DEPTH:
                return 0
            in_object[depth] = c == 123
            depth += 1
            p = _ws(p + 1, end)
            if p < end and p[0] == c + 2:  # } or ]
                depth -= 1
                p += 1
            elif c == 123:
                p = _key(p, end)
                if p == NULL:
                    return 0
                continue
            else:
                continue
        elif c == 34:
            p = _string(p, end)
            if p == NULL:
                return 0
        elif c == 45 or 48 <= c <= 57:
            start = p
            p = _number(p, end, &mag)
            if p == NULL or mag > 308 or (mag == 308 and _infinite(start, p - start)):
                return 0
        elif c == 116 and end - p >= 4 and memcmp(p, b"true", 4) == 0:
            p += 4
        elif c == 102 and end - p >= 5 and memcmp(p, b"false", 5) == 0:
            p += 5
        elif c == 110 and end - p >= 4 and memcmp(p, b"null", 4) == 0:
            p += 4
        else:
            return 0
        # A value ended at p: close what it completes, up to a comma.
        while True:
            p = _ws(p, end)
            if depth == 0:
                return p == end
            if p >= end:
                return 0
            c = p[0]
            if c == 44:
                p = _ws(p + 1, end)
                if in_object[depth - 1]:
                    p = _key(p, end)
                    if p == NULL:
                        return 0
                break
            if c != (125 if in_object[depth - 1] else 93):
                return 0
            depth -= 1
            p += 1


cdef object _loads = orjson.loads
cdef object _DecodeError = orjson.JSONDecodeError


def is_json(data):
    """Whether ``data`` is one complete JSON value."""
    cdef const unsigned char* p
    if type(data) is bytes:
        p = <const unsigned char*>PyBytes_AS_STRING(data)
        return _valid(p, p + PyBytes_GET_SIZE(data)) == 1
    try:
        _loads(data)
    except _DecodeError:
        return False
    return True


# -- reading state-file lines -----------------------------------------------------------

cdef tuple _BLANK = (False, 0, None, None, None, None)
cdef tuple _BLANK_COMMA = (True, 0, None, None, None, None)
cdef frozenset _BRIEF_KEYS = frozenset(("ID", "LogicalID", "Tags"))
cdef enum:
    _NPROPS = 14  # len(b',"Properties":')


cdef Py_ssize_t _find_props(const unsigned char* s, Py_ssize_t n, Py_ssize_t i) noexcept:
    """Where ``,"Properties":`` first occurs in ``s[i:n]``, or -1."""
    cdef const unsigned char* c
    while i + _NPROPS <= n:
        c = <const unsigned char*>memchr(s + i, 44, <size_t>(n - _NPROPS + 1 - i))
        if c == NULL:
            return -1
        i = c - s
        if memcmp(c + 1, b'"Properties":', _NPROPS - 1) == 0:
            return i
        i += 1
    return -1


cdef inline Py_ssize_t _plain_to(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and _plain[s[i]]:
        i += 1
    return i


cdef inline bint _at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept:
    return n - i >= m and memcmp(s + i, lit, <size_t>m) == 0


cdef inline str _ascii(const unsigned char* s, Py_ssize_t n):
    cdef str u = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(u), s, <size_t>n)
    return u


# Tag names and values repeat from one element to the next (the group, the
# config hash): a direct-mapped cache hands back the string made last time, its
# hash already computed, so loading a large file neither allocates them again
# nor hashes them again in every dict they are looked up in.  Strings are
# immutable, so sharing one is invisible but for ``is``.
cdef enum:
    _CACHE_SLOTS = 256  # a power of two
    _CACHE_LONGEST = 64

cdef PyObject* _tag_cache[_CACHE_SLOTS]


cdef str _tag_str(const unsigned char* s, Py_ssize_t n):
    cdef size_t h = 2166136261u
    cdef Py_ssize_t i
    cdef PyObject* hit
    cdef str u
    if n > _CACHE_LONGEST:
        return _ascii(s, n)
    for i in range(n):
        h = (h ^ s[i]) * 16777619u
    h &= _CACHE_SLOTS - 1
    hit = _tag_cache[h]
    if hit != NULL and PyUnicode_GET_LENGTH(<object>hit) == n and memcmp(PyUnicode_DATA(<object>hit), s, <size_t>n) == 0:
        return <str>hit
    u = _ascii(s, n)
    hash(u)
    Py_XDECREF(_tag_cache[h])
    Py_INCREF(u)
    _tag_cache[h] = <PyObject*>u
    return u


cdef dict _plain_tags(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* after):
    """The Tags object at ``s[i]`` (after its ``{``) as the writer writes it:
    names and values of plain ASCII, no spaces.  None if it is written otherwise."""
    cdef dict tags = {}
    cdef Py_ssize_t j, ks
    if i < n and s[i] == 125:
        after[0] = i + 1
        return tags
    while True:
        if i >= n or s[i] != 34:
            return None
        ks = i + 1
        j = _plain_to(s, ks, n)
        if j + 1 >= n or s[j] != 34 or s[j + 1] != 58 or j + 2 >= n or s[j + 2] != 34:
            return None
        i = _plain_to(s, j + 3, n)
        if i >= n or s[i] != 34:
            return None
        # Set as orjson does: a repeated name keeps its first place and its last value.
        tags[_tag_str(s + ks, j - ks)] = _tag_str(s + j + 3, i - j - 3)
        i += 1
        if i < n and s[i] == 44:
            i += 1
        elif i < n and s[i] == 125:
            after[0] = i + 1
            return tags
        else:
            return None


cdef tuple _fast_element(bytes line, const unsigned char* s, Py_ssize_t e, Py_ssize_t k, bint comma):
    """The element ``s[:e]`` (Properties at ``k``, or -1) read without orjson,
    when it is exactly as the writer writes it (see ``encode_brief``); else
    None, and the general path decides.  Whatever this accepts, orjson reads as
    the same description, so both paths give the same answer."""
    cdef Py_ssize_t bend = k if k >= 0 else e - 1  # where the brief's closing brace is (added if k >= 0)
    cdef Py_ssize_t i, id_end
    cdef dict tags
    cdef bytes brief
    cdef object spec
    if not _at(s, 0, bend, b'{"ID":"', 7) or (k < 0 and s[bend] != 125):
        return None
    id_end = _plain_to(s, 7, bend)
    if id_end == 7 or id_end >= bend or s[id_end] != 34:
        return None
    i = id_end + 1
    if not _at(s, i, bend, b',"LogicalID":', 13):
        return None
    i += 13
    if _at(s, i, bend, b"null", 4):
        i += 4
    else:
        if i >= bend or s[i] != 34:
            return None
        i = _plain_to(s, i + 1, bend)
        if i >= bend or s[i] != 34:
            return None
        i += 1
    if not _at(s, i, bend, b',"Tags":{', 9):
        return None
    tags = _plain_tags(s, i + 9, bend, &i)
    if tags is None or i != bend:
        return None
    if k < 0:
        brief = line if e == PyBytes_GET_SIZE(line) else PyBytes_FromStringAndSize(<const char*>s, e)
        spec = None
    else:
        brief = PyBytes_FromStringAndSize(NULL, k + 1)
        memcpy(PyBytes_AS_STRING(brief), s, <size_t>k)
        PyBytes_AS_STRING(brief)[k] = 125
        spec = PyBytes_FromStringAndSize(<const char*>s + k + _NPROPS, e - 1 - k - _NPROPS)
    return (comma, e, _ascii(s + 7, id_end - 7), tags, brief, spec)


def parse_element(line):
    """One line of the ``Instances`` array as read from the file, checked.

    ``(comma, size, instance_id, tags, brief, spec)``: whether the line ends
    with the comma that owns the next element; for an element, its length in
    the line (without the comma and the spaces around it), its ID, its tags,
    its brief description and its Spec (the bytes in the file, checked to be
    JSON; None if it has no Properties).  A blank line (spaces, maybe the
    comma) gives ``instance_id`` None.  None: the line is not of our layout
    (an element that does not start its line, not JSON, other keys, ...).
    """
    cdef const unsigned char* s
    cdef Py_ssize_t e, k
    cdef bint comma
    cdef object found
    if type(line) is not bytes:
        raise TypeError(f"parse_element() needs bytes, not {type(line).__name__}")
    s = <const unsigned char*>PyBytes_AS_STRING(line)
    e = PyBytes_GET_SIZE(line)
    while e > 0 and s[e - 1] == 10:
        e -= 1
    while e > 0 and s[e - 1] == 32:
        e -= 1
    comma = e > 0 and s[e - 1] == 44
    if comma:
        e -= 1
        while e > 0 and s[e - 1] == 32:
            e -= 1
    if e == 0:
        return _BLANK_COMMA if comma else _BLANK
    if s[0] == 32:
        return None  # an element that does not start its line: not written by us
    # Split at the element's own "Properties" key: the first place where what
    # comes before is a whole brief description (see the pure twin).
    k = _find_props(s, e, 0)
    while True:
        found = _element_at(line, s, e, k, comma)
        if found is not None or k < 0:
            return found
        k = _find_props(s, e, k + 1)


cdef object _element_at(bytes line, const unsigned char* s, Py_ssize_t e, Py_ssize_t k, bint comma):
    cdef tuple fast
    cdef bytes content, brief
    cdef object spec, desc, instance_id, logical_id, tags
    if k >= 0 and (s[e - 1] != 125 or not _valid(s + k + _NPROPS, s + e - 1)):
        return None
    fast = _fast_element(line, s, e, k, comma)
    if fast is not None:
        return fast
    # Anything else the pure twin's way: orjson reads the brief and it is checked.
    content = line if e == PyBytes_GET_SIZE(line) else PyBytes_FromStringAndSize(<const char*>s, e)
    if k < 0:
        brief, spec = content, None
    else:
        spec = PyBytes_FromStringAndSize(<const char*>s + k + _NPROPS, e - 1 - k - _NPROPS)
        brief = PyBytes_FromStringAndSize(<const char*>s, k) + b"}"
    try:
        desc = _loads(brief)
    except _DecodeError:
        return None
    if type(desc) is not dict or (<dict>desc).keys() != _BRIEF_KEYS:
        return None
    instance_id, logical_id, tags = desc["ID"], desc["LogicalID"], desc["Tags"]
    if (
        type(instance_id) is not str
        or not instance_id
        or (logical_id is not None and type(logical_id) is not str)
        or type(tags) is not dict
    ):
        return None
    for value in (<dict>tags).values():
        if type(value) is not str:
            return None
    return (comma, e, instance_id, tags, brief, spec)


def encode_spec(spec):
    """A provisioned Spec as compact JSON, in a buffer of its own size (orjson
    may hand back a much larger allocation, which a long-lived record would keep)."""
    cdef bytes raw = _dumps(spec)
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
