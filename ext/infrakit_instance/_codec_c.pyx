# cython: language_level=3
"""State-file and answer encoding (compiled twin of ``_codec_py``).

Same names, same bytes.  Exact ``bytes``/``str``/``dict``/``list`` inputs are
measured once and copied into one preallocated ``bytes``; any other input
takes the pure twin's expressions, so odd types behave (and fail) the same.
"""

import orjson

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.string cimport memcpy
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc

from infrakit_instance._build cimport PyUnicode_GET_LENGTH, plain_len, put, put_plain

__all__ = [
    "TAIL",
    "describe_result",
    "element",
    "encode_brief",
    "encode_spec",
    "is_json",
    "encode_document",
    "join_descriptions",
]

TAIL = b"\n]}\n"

cdef extern from "Python.h":
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char*, Py_ssize_t)
    char* _bytes_str "PyBytes_AS_STRING"(PyObject*)
    int _PyBytes_Resize(PyObject**, Py_ssize_t)
    void Py_SET_SIZE(PyObject*, Py_ssize_t)
    Py_ssize_t PyObject_LengthHint(object, Py_ssize_t) except -1

cdef object _dumps = orjson.dumps
cdef bytes _TAIL = TAIL
# Plain Python indexing (not Cython's slice shortcut) so errors read as the pure twin's.
cdef object _BUT_LAST = slice(None, -1)


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
        return _dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})
    d = <dict>tags
    size = 0
    count = 0
    i = 0
    while PyDict_Next(d, &i, &k, &v):
        n = plain_len(<object>k)
        if n < 0:
            return _dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})
        size += n
        n = plain_len(<object>v)
        if n < 0:
            return _dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})
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


cdef inline Py_ssize_t _guess(Py_ssize_t hint, Py_ssize_t first) noexcept:
    # Capacity for ``hint`` items like the first one, with some slack for longer ones.
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
    cdef Py_ssize_t nt, nd
    cdef bytes out
    cdef char* w
    if type(type_json) is not bytes or type(descriptions) is not bytes:
        return b'{"Type":' + type_json + b',"Descriptions":' + descriptions + b"}"
    nt = PyBytes_GET_SIZE(type_json)
    nd = PyBytes_GET_SIZE(descriptions)
    # {"Type":  t  ,"Descriptions":  d  }
    out = PyBytes_FromStringAndSize(NULL, 8 + nt + 16 + nd + 1)
    w = PyBytes_AS_STRING(out)
    w = put(w, b'{"Type":', 8)
    w = put(w, PyBytes_AS_STRING(type_json), nt)
    w = put(w, b',"Descriptions":', 16)
    w = put(w, PyBytes_AS_STRING(descriptions), nd)
    w[0] = 125
    return out


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


cdef tuple _encode_document_generic(provider, nonfunctional, instances):
    head = b'{"Provider":' + provider + b',"NonFunctional":['
    if nonfunctional:
        head += b"\n" + b",\n".join(nonfunctional) + b"\n"
    head += b'],"Instances":['
    parts = [head]
    offsets = []
    pos = len(head)
    sep = b"\n"
    for e in instances:
        parts.append(sep)
        pos += len(sep)
        offsets.append(pos)
        parts.append(e)
        pos += len(e)
        sep = b",\n"
    parts.append(_TAIL)
    return b"".join(parts), offsets


cdef object _loads = orjson.loads
cdef object _DecodeError = orjson.JSONDecodeError


def is_json(data):
    """Whether ``data`` is one complete JSON value."""
    try:
        _loads(data)
    except _DecodeError:
        return False
    return True


def encode_spec(spec):
    """A provisioned Spec as compact JSON, in a buffer of its own size (orjson
    may hand back a much larger allocation, which a long-lived record would keep)."""
    cdef bytes raw = _dumps(spec)
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
