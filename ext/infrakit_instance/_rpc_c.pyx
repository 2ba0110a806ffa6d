# cython: language_level=3
"""The JSON-RPC 2.0 envelope (compiled twin of ``_rpc_py``).

Same names, same bytes, same errors.  orjson still parses and encodes JSON;
what is compiled is the envelope around it: the checks on a request object,
the exact text of an id, and answers written straight into one ``bytes``.
"""

import json

import orjson

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr, memcmp, memcpy

from infrakit_instance._rpc_py import compact as _compact_py

from infrakit_instance._build cimport (
    PyUnicode_DATA,
    PyUnicode_GET_LENGTH,
    PyUnicode_IS_ASCII,
    has,
    int_len,
    plain_len,
    put,
    put_int,
    put_plain,
    wrap2,
)
from infrakit_instance._state_c cimport Record, State, make_record

from infrakit_instance._codec_c import encode_brief as _encode_brief, encode_spec as _encode_spec

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_DEPTH",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PLUGIN_ERROR",
    "Call",
    "Describe",
    "DispatchCore",
    "LogicalDestroy",
    "LogicalLabel",
    "LogicalProvision",
    "PendingCore",
    "RpcError",
    "decode_body",
    "encode_error",
    "encode_id",
    "compact",
    "encode_result",
    "plain_text",
    "provision_params",
    "quick",
    "use_pending",
    "scan",
    "split_call",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PLUGIN_ERROR = -32000

NULL_ID = b"null"

#: The deepest nesting of arrays and objects a request body may have (the body itself is level 1).
MAX_DEPTH = 128
cdef Py_ssize_t _MAX_DEPTH = MAX_DEPTH

cdef enum:
    _OTHER = 0
    _BATCH = 1
    _REQUEST = 2
    _PARAMS = 3
    _PARAMS_LIST = 4

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _json_loads = json.loads
cdef object _json_dumps = json.dumps
cdef object _MISSING = object()


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, a message saying what was wrong, the id to echo."""

    def __init__(self, code, message, id_json=NULL_ID):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message
        self.id_json = id_json

    def __eq__(self, other):
        return isinstance(other, RpcError) and (self.code, self.message, self.id_json) == (
            other.code,
            other.message,
            other.id_json,
        )

    def __hash__(self):
        return hash((self.code, self.message, self.id_json))

    def __repr__(self):
        return f"RpcError({self.code}, {self.message!r}, {self.id_json!r})"


cdef class Call:
    """One request of a body: method name, params object, exact id text (None: notification)."""

    cdef public object method
    cdef public object params
    cdef public object id_json

    def __init__(self, method, params, id_json):
        self.method = method
        self.params = params
        self.id_json = id_json

    def __eq__(self, other):
        if not isinstance(other, Call):
            return False
        o = <Call>other
        return (self.method, self.params, self.id_json) == (o.method, o.params, o.id_json)

    def __repr__(self):
        return f"Call({self.method!r}, {self.params!r}, {self.id_json!r})"


cdef inline bint _float_id(object d):
    if type(d) is dict:
        return type((<dict>d).get("id")) is float
    return type(d.get("id")) is float


cdef inline bint _ws(unsigned char c) noexcept:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef inline bint _plain_byte(unsigned char c) noexcept:
    # Not whitespace, not structural, not a quote: part of a scalar run.
    return not (_ws(c) or c == 123 or c == 125 or c == 91 or c == 93 or c == 58 or c == 44 or c == 34)


def scan(body):
    """The nesting depth of ``body`` and where, in its text, each request object
    has its ``id`` and its ``params``' ``Spec``: ``[id_start, id_end, spec_start,
    spec_end]`` (-1 where absent) for the body's object, or for each element of
    its array.  No recursion and constant memory at any depth; for valid JSON the
    spans are exact, for anything else a best effort (orjson judges validity)."""
    if type(body) is not bytes:
        body = bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t pos = 0, ts, te, depth = 0, deepest = 0, plain = 0
    cdef unsigned char c
    cdef bint seen = False, opener
    cdef int role, parent
    cdef list items = []
    cdef list stack = []
    cdef list top, item, element
    cdef object target, key
    while pos < n:
        c = p[pos]
        if _ws(c):
            pos += 1
            continue
        ts = pos
        if c == 34:
            te = pos + 1
            while te < n:
                if p[te] == 34:
                    te += 1
                    break
                if p[te] == 92:
                    if te + 1 < n:
                        te += 2
                        continue
                    break
                te += 1
        elif c == 123 or c == 125 or c == 91 or c == 93 or c == 58 or c == 44:
            te = pos + 1
        else:
            te = pos + 1
            while te < n and _plain_byte(p[te]):
                te += 1
        pos = te
        if plain:
            if c == 123 or c == 91:
                plain += 1
                depth += 1
                if depth > deepest:
                    deepest = depth
            elif c == 125 or c == 93:
                plain -= 1
                depth -= 1
            continue
        top = stack[-1] if stack else None
        if c == 58:
            continue
        if c == 44:
            if top is not None:
                if top[2]:
                    top[3] = True
                else:
                    top[5] += 1
            continue
        if c == 125 or c == 93:
            if top is not None:
                stack.pop()
                depth -= 1
                if top[6] is not None:
                    top[6][0][top[6][1]] = top[7]
                    top[6][0][top[6][1] + 1] = te
            continue
        opener = c == 123 or c == 91
        role = _OTHER
        item = None
        target = None
        if top is None:
            if seen:
                continue
            seen = True
            if c == 123:
                item = [-1, -1, -1, -1]
                items.append(item)
                role = _REQUEST
            elif c == 91:
                role = _BATCH
        else:
            if top[2] and top[3]:
                top[3] = False
                if not opener:
                    top[4] = PyBytes_FromStringAndSize(<const char*>p + ts, te - ts)
                    continue
                top[4] = None
            parent = top[0]
            key = top[4]
            if parent == _BATCH:
                element = [-1, -1, -1, -1]
                items.append(element)
                if c == 123:
                    item = element
                    role = _REQUEST
            elif parent == _REQUEST:
                item = top[1]
                if key == b'"id"':
                    target = (item, 0)
                elif key == b'"params"':
                    item[2] = -1
                    item[3] = -1
                    if c == 123:
                        role = _PARAMS
                    elif c == 91:
                        role = _PARAMS_LIST
            elif parent == _PARAMS:
                item = top[1]
                if key == b'"Spec"':
                    target = (item, 2)
            elif parent == _PARAMS_LIST:
                if top[5] == 0 and c == 123:
                    item = top[1]
                    role = _PARAMS
        if opener:
            depth += 1
            if depth > deepest:
                deepest = depth
            if role == _OTHER and target is None:
                plain = 1
            else:
                stack.append([role, item, c == 123, c == 123, None, 0, target, ts])
        elif target is not None:
            target[0][target[1]] = ts
            target[0][target[1] + 1] = te
    return deepest, items


def compact(text):
    """JSON ``text`` without the whitespace between its tokens (numbers and strings
    kept as written); ``text`` itself when it has none."""
    if type(text) is not bytes:
        return _compact_py(text)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(text)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text), i = 0, w = 0, e
    cdef bint found = False
    # First pass: is there whitespace outside strings at all?
    while i < n:
        if p[i] == 34:
            i = _string_end(p, n, i)
        elif _ws(p[i]):
            found = True
            break
        else:
            i += 1
    if not found:
        return text
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* q = PyBytes_AS_STRING(out)
    i = 0
    while i < n:
        if p[i] == 34:
            e = _string_end(p, n, i)
            memcpy(q + w, p + i, <size_t>(e - i))
            w += e - i
            i = e
        elif _ws(p[i]):
            i += 1
        else:
            q[w] = <char>p[i]
            w += 1
            i += 1
    return out[:w]


cdef inline Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t n, Py_ssize_t pos) noexcept:
    """Where the string token that starts at ``pos`` ends (as scan() reads it)."""
    cdef Py_ssize_t te = pos + 1
    while te < n:
        if p[te] == 34:
            return te + 1
        if p[te] == 92:
            if te + 1 < n:
                te += 2
                continue
            return te
        te += 1
    return te


cdef object _raw_id(bytes body, list items):
    """The id text of a body's single request object, if it is a valid id, else null."""
    cdef list item
    if len(items) == 1 and body.lstrip(b" \t\r\n")[:1] == b"{":
        item = items[0]
        if item[0] >= 0:
            text = body[item[0] : item[1]]
            try:
                value = _loads(text)
            except _JSONDecodeError:
                return NULL_ID
            if value is None or type(value) in (str, int, float):
                return text
    return NULL_ID


def plain_text(body):
    """Whether ``body`` holds nothing that orjson would write another way: escapes only
    among those orjson writes, numbers only 64-bit integers (other than -0); the pure
    twin's regular expressions as one C pass (number rules outside strings, which are
    skipped as if absent)."""
    return _plain_text(body)


cdef bint _plain_text(object body) except -1:
    cdef const unsigned char* p
    cdef const unsigned char* q
    cdef const unsigned char* b
    cdef Py_ssize_t i, n, run = 0
    cdef unsigned char c, prev = 0
    cdef bint neg = False
    if type(body) is not bytes:
        body = bytes(body)
    p = <const unsigned char*>PyBytes_AS_STRING(body)
    n = PyBytes_GET_SIZE(body)
    i = 0
    while i < n:
        c = p[i]
        i += 1
        if c == 34:
            # a string: skipped to the quote that ends it with memchr, its escapes checked
            while True:
                q = <const unsigned char*>memchr(p + i, 34, <size_t>(n - i))
                if q == NULL:
                    return False  # not closed
                b = <const unsigned char*>memchr(p + i, 92, <size_t>(q - p - i))
                if b == NULL:
                    i = q - p + 1
                    break
                i = b - p + 1
                if i >= n:
                    return False
                c = p[i]
                i += 1
                if not (c == 34 or c == 92 or c == 110 or c == 114 or c == 116 or c == 98 or c == 102):
                    return False
            continue
        if c == 92:
            return False
        if 48 <= c <= 57:
            if run == 0:
                neg = prev == 45
                if neg and c == 48:
                    return False
            run += 1
            if run >= 20 or (neg and run >= 19):
                return False
        elif run:
            if c == 46 or c == 101 or c == 69:
                return False
            run = 0
        prev = c
    return True


cdef Py_ssize_t _openers(object body):
    """How many ``{`` and ``[`` a body holds: one pass in C for bytes (``{`` and ``[``
    are the only bytes that OR 0x20 makes ``{``)."""
    cdef const unsigned char* p
    cdef Py_ssize_t i, n, k = 0
    if type(body) is not bytes:
        return body.count(b"{") + body.count(b"[")
    p = <const unsigned char*>PyBytes_AS_STRING(body)
    n = PyBytes_GET_SIZE(body)
    for i in range(n):
        k += (p[i] | 0x20) == 0x7B
    return k


def decode_body(body):
    """Parse a request body, or raise ``RpcError(PARSE_ERROR)`` saying where it broke
    (``INVALID_PARAMS`` if it nests deeper than :data:`MAX_DEPTH`)."""
    return _decode_body(body)


cdef object _decode_body(object body):
    if len(body) > _MAX_DEPTH and _openers(body) > _MAX_DEPTH:
        depth, items = scan(body)
        if depth > _MAX_DEPTH:
            raise RpcError(
                INVALID_PARAMS,
                f"invalid params: the request nests {depth} levels deep; at most {MAX_DEPTH} are allowed",
                _raw_id(bytes(body), items),
            )
    try:
        doc = _loads(body)
    except _JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: request body is not valid JSON: {exc}") from None
    # orjson turns integers beyond 64 bits into floats: read such a body again
    # with the standard parser, which keeps integers exact.
    if isinstance(doc, dict):
        if _float_id(doc):
            doc = _json_loads(body)
    elif isinstance(doc, list) and any(isinstance(d, dict) and _float_id(d) for d in doc):
        doc = _json_loads(body)
    return doc


def encode_id(value):
    """The exact JSON text of an id (integers of any size, strings, null)."""
    cdef int overflow = 0
    cdef long long v
    cdef Py_ssize_t n
    cdef bytes out
    if value is None:
        return NULL_ID
    if type(value) is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow:
            n = int_len(v)
            out = PyBytes_FromStringAndSize(NULL, n)
            put_int(PyBytes_AS_STRING(out), v, n)
            return out
    elif type(value) is str:
        n = plain_len(value)
        if n >= 0:
            out = PyBytes_FromStringAndSize(NULL, n + 2)
            put_plain(PyBytes_AS_STRING(out), value, n)
            return out
    try:
        return _dumps(value)
    except TypeError:
        return _json_dumps(value).encode()


def split_call(doc):
    """Validate one request object; raise ``RpcError`` carrying the id to echo."""
    if type(doc) is dict:
        return _split_dict(<dict>doc)
    return _split_any(doc)


cdef Call _new_call(object method, object params, object id_json):
    cdef Call call = Call.__new__(Call)
    call.method = method
    call.params = params
    call.id_json = id_json
    return call


cdef object _check_params(object params, object err_id):
    if params is None:
        return {}
    if isinstance(params, list):
        # Go's JSON-RPC server also takes a one-element array holding the object.
        if len(params) == 1 and isinstance(params[0], dict):
            return params[0]
        if not params:
            return {}
        raise RpcError(INVALID_PARAMS, "invalid params: expected an object (or an array holding one object)", err_id)
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "invalid params: expected an object", err_id)
    return params


cdef object _check_id(object ident):
    if ident is not None and not isinstance(ident, (str, int, float)) or isinstance(ident, bool):
        raise RpcError(INVALID_REQUEST, "invalid request: id must be a string, a number or null")
    return encode_id(ident)


cdef Call _split_dict(dict doc):
    cdef object id_json, err_id, version, method, ident
    ident = doc.get("id", _MISSING)
    if ident is _MISSING:
        id_json = None
        err_id = NULL_ID
    else:
        id_json = _check_id(ident)
        err_id = id_json
    version = doc.get("jsonrpc")
    if not (type(version) is str and <str>version == "2.0") and version != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"', err_id)
    method = doc.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string', err_id)
    params = doc.get("params")
    if type(params) is not dict:
        params = _check_params(params, err_id)
    return _new_call(method, params, id_json)


cdef Call _split_any(object doc):
    # The pure twin's steps, for dict subclasses and non-objects.
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected a JSON-RPC request object")
    if "id" in doc:
        id_json = _check_id(doc["id"])
    else:
        id_json = None
    err_id = NULL_ID if id_json is None else id_json
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"', err_id)
    method = doc.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string', err_id)
    return _new_call(method, _check_params(doc.get("params"), err_id), id_json)


def encode_result(id_json, result):
    """A success answer around already-encoded ``result`` bytes."""
    return _encode_result(id_json, result)


cdef object _encode_result(object id_json, object result):
    if type(id_json) is not bytes or type(result) is not bytes:
        return b'{"jsonrpc":"2.0","result":' + result + b',"id":' + id_json + b"}"
    return wrap2(b'{"jsonrpc":"2.0","result":', 26, result, b',"id":', 6, id_json)


def encode_error(id_json, code, message):
    """An error answer; ``data`` is always null."""
    cdef int overflow = 0
    cdef long long c = 0
    cdef Py_ssize_t ni, nc, nm
    cdef object msg
    cdef bytes out
    cdef char* w
    if type(code) is int:
        c = PyLong_AsLongLongAndOverflow(code, &overflow)
    if type(id_json) is not bytes or type(code) is not int or overflow or type(message) is not str:
        return (
            b'{"jsonrpc":"2.0","error":{"code":'
            + str(code).encode()
            + b',"message":'
            + _dumps(message)
            + b',"data":null},"id":'
            + id_json
            + b"}"
        )
    nm = plain_len(message)
    msg = None
    if nm < 0:
        msg = _dumps(message)
        nm = PyBytes_GET_SIZE(msg)
    else:
        nm += 2
    nc = int_len(c)
    ni = PyBytes_GET_SIZE(id_json)
    # {"jsonrpc":"2.0","error":{"code":  c  ,"message":  m  ,"data":null},"id":  i  }
    out = PyBytes_FromStringAndSize(NULL, 33 + nc + 11 + nm + 19 + ni + 1)
    w = PyBytes_AS_STRING(out)
    w = put(w, b'{"jsonrpc":"2.0","error":{"code":', 33)
    w = put_int(w, c, nc)
    w = put(w, b',"message":', 11)
    if msg is None:
        w = put_plain(w, message, nm - 2)
    else:
        w = put(w, PyBytes_AS_STRING(msg), nm)
    w = put(w, b',"data":null},"id":', 19)
    w = put(w, PyBytes_AS_STRING(id_json), ni)
    w[0] = 125
    return out


# -- quick: the answer to a plain request of a method whose result is fixed --------------

#: Deepest nesting quick() reads itself (the body is level 1); deeper bodies are declined.
QUICK_DEPTH = 32
cdef int _QUICK_DEPTH = QUICK_DEPTH

cdef enum:
    _T_ABSENT = 0  # params has no "Type"
    _T_EMPTY = 1  # "Type" is null or ""
    _T_OTHER = 2  # anything else, or "Type" twice


cdef inline Py_ssize_t _q_ws(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept:
    while i < n and (p[i] == 32 or p[i] == 10 or p[i] == 13 or p[i] == 9):
        i += 1
    return i


# Bytes a plain string holds as they are: printable ASCII but the quote and the backslash.
cdef unsigned char _Q_PLAIN[256]


cdef void _q_init() noexcept:
    cdef int c
    for c in range(256):
        _Q_PLAIN[c] = 0x20 <= c < 0x80 and c != 34 and c != 92


_q_init()


cdef inline Py_ssize_t _q_string(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept:
    """The end of the plain string at ``p[i] == '"'`` (ASCII, no escape), or -1."""
    i += 1
    while i < n and _Q_PLAIN[p[i]]:
        i += 1
    if i < n and p[i] == 34:
        return i + 1
    return -1


cdef inline Py_ssize_t _q_digits(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept:
    while i < n and 48 <= p[i] <= 57:
        i += 1
    return i


cdef Py_ssize_t _q_number(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, bint* integer) noexcept:
    """The end of a JSON number orjson reads without loss of range, or -1: at most 19
    integer digits, an exponent of at most two digits (so never infinity)."""
    cdef Py_ssize_t start, s
    integer[0] = True
    if i < n and p[i] == 45:
        i += 1
    start = i
    if i >= n:
        return -1
    if p[i] == 48:
        i += 1
    elif 49 <= p[i] <= 57:
        i = _q_digits(p, n, i)
    else:
        return -1
    if i - start > 19:
        return -1
    if i < n and p[i] == 46:
        integer[0] = False
        s = i + 1
        i = _q_digits(p, n, s)
        if i == s:
            return -1
    if i < n and (p[i] == 101 or p[i] == 69):
        integer[0] = False
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            i += 1
        s = i
        i = _q_digits(p, n, s)
        if i == s or i - s > 2:
            return -1
    return i


cdef inline Py_ssize_t _q_literal(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, const char* word, Py_ssize_t k) noexcept:
    if n - i >= k and memcmp(p + i, word, <size_t>k) == 0:
        return i + k
    return -1


cdef Py_ssize_t _q_value(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int depth, int* type_state) noexcept:
    """The end of the JSON value at ``p[i]`` (no whitespace before it), or -1.  With
    ``type_state`` set, the value is the params object: its "Type" member is judged."""
    cdef unsigned char c, close
    cdef bint integer, obj, is_type
    cdef Py_ssize_t ks, vs
    if i >= n:
        return -1
    c = p[i]
    if c == 34:
        return _q_string(p, n, i)
    if c == 123 or c == 91:
        if depth >= _QUICK_DEPTH:
            return -1
        obj = c == 123
        close = 125 if obj else 93
        i = _q_ws(p, n, i + 1)
        if i < n and p[i] == close:
            return i + 1
        while True:
            is_type = False
            if obj:
                if i >= n or p[i] != 34:
                    return -1
                ks = i
                i = _q_string(p, n, i)
                if i < 0:
                    return -1
                is_type = type_state != NULL and i - ks == 6 and memcmp(p + ks, b'"Type"', 6) == 0
                i = _q_ws(p, n, i)
                if i >= n or p[i] != 58:
                    return -1
                i = _q_ws(p, n, i + 1)
            vs = i
            i = _q_value(p, n, i, depth + 1, NULL)
            if i < 0:
                return -1
            if is_type:
                if type_state[0] == _T_ABSENT and (
                    (i - vs == 4 and p[vs] == 110) or (i - vs == 2 and p[vs] == 34)
                ):
                    type_state[0] = _T_EMPTY
                else:
                    type_state[0] = _T_OTHER  # not empty, or "Type" twice
            i = _q_ws(p, n, i)
            if i >= n:
                return -1
            if p[i] == 44:
                i = _q_ws(p, n, i + 1)
            elif p[i] == close:
                return i + 1
            else:
                return -1
    if c == 116:
        return _q_literal(p, n, i, b"true", 4)
    if c == 102:
        return _q_literal(p, n, i, b"false", 5)
    if c == 110:
        return _q_literal(p, n, i, b"null", 4)
    if c == 45 or 48 <= c <= 57:
        return _q_number(p, n, i, &integer)
    return -1


cdef object _q_entry(object entries, const unsigned char* name, Py_ssize_t k):
    """The ``(method, result, empty_type)`` of ``entries`` for the method ``name[:k]``, or None."""
    cdef object entry, method
    for entry in entries:
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            continue
        method = (<tuple>entry)[0]
        if (
            type(method) is bytes
            and type((<tuple>entry)[1]) is bytes
            and PyBytes_GET_SIZE(method) == k
            and memcmp(PyBytes_AS_STRING(method), name, <size_t>k) == 0
        ):
            return entry
    return None


cdef inline bint _q_key(const unsigned char* p, Py_ssize_t ks, Py_ssize_t ke, const char* name, Py_ssize_t k) noexcept:
    return ke - ks == k + 2 and memcmp(p + ks + 1, name, <size_t>k) == 0


cdef object quick_answer(object body, object entries):
    # quick(), for the compiled per-read path
    cdef const unsigned char* p
    cdef Py_ssize_t n, i, ks, ke, vs, ids = -1, ide = -1
    cdef int seen = 0, type_state = _T_ABSENT
    cdef bint integer
    cdef tuple entry
    cdef object found = None
    if type(body) is not bytes:
        return None
    p = <const unsigned char*>PyBytes_AS_STRING(body)
    n = PyBytes_GET_SIZE(body)
    i = _q_ws(p, n, 0)
    if i >= n or p[i] != 123:
        return None
    i = _q_ws(p, n, i + 1)
    while True:
        if i >= n or p[i] != 34:
            return None
        ks = i
        ke = _q_string(p, n, i)
        if ke < 0:
            return None
        i = _q_ws(p, n, ke)
        if i >= n or p[i] != 58:
            return None
        vs = i = _q_ws(p, n, i + 1)
        if _q_key(p, ks, ke, b"jsonrpc", 7):
            if seen & 1 or _q_literal(p, n, i, b'"2.0"', 5) < 0:
                return None
            seen |= 1
            i += 5
        elif _q_key(p, ks, ke, b"method", 6):
            if seen & 2 or i >= n or p[i] != 34:
                return None
            seen |= 2
            i = _q_string(p, n, i)
            if i < 0:
                return None
            found = _q_entry(entries, p + vs + 1, i - vs - 2)
            if found is None:
                return None  # not a fixed answer: decided before the rest is read
        elif _q_key(p, ks, ke, b"id", 2):
            if seen & 4 or i >= n:
                return None
            seen |= 4
            if p[i] == 34:
                i = _q_string(p, n, i)
            elif p[i] == 110:
                i = _q_literal(p, n, i, b"null", 4)
            else:
                i = _q_number(p, n, i, &integer)
                if i >= 0 and (not integer or (i - vs == 2 and p[vs] == 45 and p[vs + 1] == 48)):
                    return None  # a float id, or -0: its text is not what orjson would write
            if i < 0:
                return None
            ids, ide = vs, i
        elif _q_key(p, ks, ke, b"params", 6):
            if seen & 8 or i >= n:
                return None
            seen |= 8
            if p[i] == 123:
                i = _q_value(p, n, i, 1, &type_state)
            else:
                i = _q_literal(p, n, i, b"null", 4)
            if i < 0:
                return None
        else:
            i = _q_value(p, n, i, 1, NULL)
            if i < 0:
                return None
        i = _q_ws(p, n, i)
        if i >= n:
            return None
        if p[i] == 44:
            i = _q_ws(p, n, i + 1)
        elif p[i] == 125:
            break
        else:
            return None
    if _q_ws(p, n, i + 1) != n or seen & 7 != 7:
        return None
    entry = <tuple>found
    if entry[2] and type_state == _T_OTHER:
        return None
    return wrap2(
        b'{"jsonrpc":"2.0","result":', 26, <bytes>entry[1], b',"id":', 6,
        PyBytes_FromStringAndSize(<const char*>p + ids, ide - ids),
    )


def quick(body, entries):
    """The response body to a plain request whose answer is fixed, or None: decide the usual way.

    ``entries`` holds ``(method, result, empty_type)`` triples (method as bytes): a request
    object of ``"jsonrpc":"2.0"``, one of those methods, an id, and params that are an object,
    null or absent (with ``empty_type``, an object whose "Type" is absent, null or "") is
    answered ``result``, exactly as the dispatcher would.  This twin reads the body itself and
    declines what it does not read: escapes, non-ASCII bytes, nesting deeper than
    :data:`QUICK_DEPTH`, integers of more than 19 digits, exponents of more than two, keys of
    the envelope given twice.  None is never wrong; an answer is always the dispatcher's."""
    return quick_answer(body, entries)


# -- the dispatcher's single-request path, and the Provision params ------------------

#: The "Type" of a request that names none (or ""), as its answer writes it.
EMPTY_TYPE = b'""'
cdef bytes _EMPTY_TYPE = EMPTY_TYPE
cdef object _pending_type = None


def use_pending(pending):
    """Tell the dispatcher's path the class of a method's answer that waits (``rpc.Pending``)."""
    global _pending_type
    _pending_type = pending


cdef class DispatchCore:
    """The single-request path of ``rpc.Dispatcher``: a request object of a known method,
    a plain id, is answered here; everything else goes to the subclass's ``_rest``.  The
    subclass gives ``methods``, ``spec_methods`` and the hooks ``_rest``, ``_error``,
    ``_fail`` and ``_wrap``."""

    cdef public object methods
    cdef public object spec_methods

    def _rest(self, doc, body, texts):
        raise NotImplementedError

    def _error(self, id_json, code, message, method):
        raise NotImplementedError

    def _fail(self, id_json, method, exc):
        raise NotImplementedError

    def _wrap(self, result, id_json, name):
        raise NotImplementedError

    def handle(self, body):
        cdef object doc, ident, kind, name, method, id_json, result
        cdef Call call
        cdef tuple scan
        if type(body) is bytes and type(self.methods) is dict:
            # A plain Provision or Destroy for the logical provider, read from its text (see
            # _scan_provision, _scan_destroy); anything the scan declines goes the usual way.
            if has(<bytes>body, b'"Instance.Provision"', 20):
                method = (<dict>self.methods).get("Instance.Provision")
                if type(method) is LogicalProvision:
                    scan = _scan_provision(<bytes>body)
                    if scan is not None:
                        try:
                            result = (<LogicalProvision>method).call_text(scan[1], scan[2], scan[3], scan[4])
                        except RpcError as exc:
                            return self._error(scan[0], exc.code, exc.message, "Instance.Provision")
                        except Exception as exc:  # a bug must answer, not kill the connection
                            return self._fail(scan[0], "Instance.Provision", exc)
                        return _enveloped(result, scan[0], "Instance.Provision")
            if has(<bytes>body, b'"Instance.Destroy"', 18):
                method = (<dict>self.methods).get("Instance.Destroy")
                if type(method) is LogicalDestroy:
                    scan = _scan_destroy(<bytes>body)
                    if scan is not None:
                        try:
                            result = (<LogicalDestroy>method).destroy(scan[1])
                        except RpcError as exc:
                            return self._error(scan[0], exc.code, exc.message, "Instance.Destroy")
                        except Exception as exc:  # a bug must answer, not kill the connection
                            return self._fail(scan[0], "Instance.Destroy", exc)
                        return _enveloped(result, scan[0], "Instance.Destroy")
            if has(<bytes>body, b'"Instance.Label"', 16):
                method = (<dict>self.methods).get("Instance.Label")
                if type(method) is LogicalLabel:
                    scan = _scan_label(<bytes>body)
                    if scan is not None:
                        try:
                            result = (<LogicalLabel>method).label(scan[1], scan[2])
                        except RpcError as exc:
                            return self._error(scan[0], exc.code, exc.message, "Instance.Label")
                        except Exception as exc:  # a bug must answer, not kill the connection
                            return self._fail(scan[0], "Instance.Label", exc)
                        return _enveloped(result, scan[0], "Instance.Label")
            if has(<bytes>body, b'"Instance.DescribeInstances"', 28):
                method = (<dict>self.methods).get("Instance.DescribeInstances")
                if type(method) is Describe:
                    scan = _scan_describe(<bytes>body)
                    if scan is not None:
                        try:
                            result = (<Describe>method).answer(scan[1], scan[2])
                        except RpcError as exc:
                            return self._error(scan[0], exc.code, exc.message, "Instance.DescribeInstances")
                        except Exception as exc:  # a bug must answer, not kill the connection
                            return self._fail(scan[0], "Instance.DescribeInstances", exc)
                        return self._answered(result, scan[0], "Instance.DescribeInstances")
        try:
            doc = _decode_body(body)
        except RpcError as exc:
            return self._error(exc.id_json, exc.code, exc.message, None)
        if type(doc) is dict:
            ident = (<dict>doc).get("id")
            kind = type(ident)
            name = (<dict>doc).get("method")
            if type(name) is not str:
                name = None  # answered as an invalid request; an unhashable one is no key of spec_methods
            if (
                (name in self.spec_methods and not _plain_text(body))
                or kind is float
                or (kind is str and b"\\" in body)
                or (kind is int and ident == 0 and b"-0" in body)
            ):
                return self._rest(doc, body, True)
            if name is not None:
                if type(self.methods) is dict:
                    method = (<dict>self.methods).get(name)
                else:
                    method = self.methods.get(name)
                if method is not None:
                    # The common request: a known method, its id and params as parsed.
                    try:
                        call = _split_dict(<dict>doc)
                    except RpcError:
                        call = None  # answered by _rest, the error text made in one place
                    if call is not None and call.id_json is not None:
                        id_json = call.id_json
                        try:
                            if type(method) is LogicalProvision:
                                result = (<LogicalProvision>method).call(call.params, None)
                            elif type(method) is LogicalDestroy:
                                result = (<LogicalDestroy>method).call(call.params)
                            elif type(method) is LogicalLabel:
                                result = (<LogicalLabel>method).call(call.params)
                            elif type(method) is Describe:
                                result = (<Describe>method).call(call.params)
                            else:
                                result = method(call.params)
                        except RpcError as exc:
                            return self._error(id_json, exc.code, exc.message, name)
                        except Exception as exc:  # a bug must answer, not kill the connection
                            return self._fail(id_json, name, exc)
                        return self._answered(result, id_json, name)
        return self._rest(doc, body, False)

    cdef object _answered(self, object result, bytes id_json, str name):
        """A method's result in its envelope: bytes at once, a Pending in place, else by ``_wrap``."""
        if isinstance(result, bytes):
            return _encode_result(id_json, result)
        if type(result) is _pending_type and isinstance(result, PendingCore):
            # what Dispatcher._wrap does to a Pending, in place
            (<PendingCore>result).answer = _encode_result(id_json, (<PendingCore>result).answer)
            (<PendingCore>result).id_json = id_json
            (<PendingCore>result).method = name
            return result
        return self._wrap(result, id_json, name)


cdef inline object _enveloped(object result, bytes id_json, str method):
    """A method's Pending with its answer put in the envelope (what Dispatcher._wrap does)."""
    (<PendingCore>result).answer = _encode_result(id_json, (<PendingCore>result).answer)
    (<PendingCore>result).id_json = id_json
    (<PendingCore>result).method = method
    return result


cdef inline object _params_error(str message):
    return RpcError(INVALID_PARAMS, "invalid params: " + message)


cdef object _string_map(object value, str what):
    cdef object k, v
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _params_error(f"{what} must be an object of strings")
    if type(value) is dict:
        for k, v in (<dict>value).items():
            if not isinstance(v, str):
                raise _params_error(f"{what}[{k!r}] must be a string, not {type(v).__name__}")
    else:
        for k, v in value.items():
            if not isinstance(v, str):
                raise _params_error(f"{what}[{k!r}] must be a string, not {type(v).__name__}")
    return value


def provision_params(params):
    """The checked params of an Instance.Provision: ``(type_json, spec, tags, logical_id)``,
    or the ``RpcError`` the plugin answers (its checks in its order)."""
    return _provision_params(params)


cdef int _check_type(object params) except -1:
    """The plugin's own ``Type`` (absent, null or ""); another is answered no-plugin."""
    cdef object kind = _get(params, "Type")
    if kind is None or (type(kind) is str and PyUnicode_GET_LENGTH(kind) == 0) or kind == "":
        return 0
    if not isinstance(kind, str):
        raise _params_error('"Type" must be a string')
    raise RpcError(PLUGIN_ERROR, f"no-plugin:{kind}")


cdef tuple _provision_params(object params):
    cdef object kind, spec, tags, logical_id, init, attachments, a
    cdef bint ok
    _check_type(params)
    spec = params.get("Spec")
    if not isinstance(spec, dict):
        raise _params_error('"Spec" must be an object')
    tags = _string_map(spec.get("Tags"), "Spec.Tags")
    logical_id = spec.get("LogicalID")
    if logical_id is not None and not isinstance(logical_id, str):
        raise _params_error('"Spec.LogicalID" must be a string or null')
    init = spec.get("Init")
    if init is not None and not isinstance(init, str):
        raise _params_error('"Spec.Init" must be a string or null')
    attachments = spec.get("Attachments")
    if attachments is not None:
        ok = isinstance(attachments, list)
        if ok:
            for a in attachments:
                if not isinstance(a, dict):
                    ok = False
                    break
        if not ok:
            raise _params_error('"Spec.Attachments" must be a list of {"ID","Type"} objects or null')
    return _EMPTY_TYPE, spec, tags, logical_id


cdef class LogicalProvision:
    """Instance.Provision with no provider to act (the logical provider): the params
    checked, a fresh ID chosen (random like InfraKit's own plugins, checked against
    every ID in the state and every provision under way), the record handed to the
    store; the answer (a ``rpc.Pending``) waits for the store to make it durable.
    ``spec_json``: the Spec's own text from the request, kept as is."""

    cdef object _store
    cdef object _getrandbits
    cdef set _proposed
    cdef object _store_error
    cdef object _record

    def __init__(self, store, rand, set proposed, store_error, record=None):
        self._store = store
        self._getrandbits = rand.getrandbits
        self._proposed = proposed
        self._store_error = store_error
        self._record = Record if record is None else record  # the store's state's Record class

    def __call__(self, params, spec_json=None):
        return self.call(params, spec_json)

    cdef object call(self, object params, object spec_json):
        cdef object type_json, spec, tags, logical_id, instance_id
        type_json, spec, tags, logical_id = _provision_params(params)
        spec_text = spec_json if spec_json is not None else _encode_spec(spec)
        instance_id = self._new_id()
        return self._finish(instance_id, _encode_brief(instance_id, logical_id, tags), spec_text, tags)

    cdef object call_text(self, dict tags, bytes logical_id_json, bytes tags_json, bytes spec_text):
        """Provision of a Spec read by ``_scan_provision``: the brief description spliced from
        the request's own text (what orjson would write of it: the scan made sure)."""
        cdef object instance_id = self._new_id()
        if not PyUnicode_IS_ASCII(instance_id):  # not from a Random (see _new_id)
            return self._finish(instance_id, b"".join(
                (b'{"ID":"', (<str>instance_id).encode(), b'","LogicalID":', logical_id_json, b',"Tags":', tags_json, b"}")
            ), spec_text, tags)
        # b'{"ID":"' + ID + b'","LogicalID":' + logical_id_json + b',"Tags":' + tags_json + b"}",
        # written once (an ASCII ID's characters are its bytes).
        cdef Py_ssize_t ni = PyUnicode_GET_LENGTH(instance_id)
        cdef Py_ssize_t nl = PyBytes_GET_SIZE(logical_id_json), nt = PyBytes_GET_SIZE(tags_json)
        cdef bytes brief = PyBytes_FromStringAndSize(NULL, 7 + ni + 14 + nl + 8 + nt + 1)
        cdef char* w = PyBytes_AS_STRING(brief)
        w = put(w, b'{"ID":"', 7)
        w = put(w, <const char*>PyUnicode_DATA(instance_id), ni)
        w = put(w, b'","LogicalID":', 14)
        w = put(w, PyBytes_AS_STRING(logical_id_json), nl)
        w = put(w, b',"Tags":', 8)
        w = put(w, PyBytes_AS_STRING(tags_json), nt)
        w[0] = 125
        return self._finish(instance_id, brief, spec_text, tags)

    cdef object _new_id(self):
        cdef object state = self._store.state
        cdef object instance_id, bits
        cdef long long v
        cdef int overflow
        cdef Py_ssize_t n
        cdef char buf[32]
        memcpy(buf, b"instance-", 9)
        while True:
            bits = self._getrandbits(63)
            v = PyLong_AsLongLongAndOverflow(bits, &overflow) if type(bits) is int else -1
            if overflow or v < 0:  # not what a Random gives: written the usual way
                instance_id = f"instance-{bits}"
            else:  # f"instance-{bits}", written in C
                n = int_len(v)
                put_int(buf + 9, v, n)
                instance_id = PyUnicode_DecodeASCII(buf, 9 + n, NULL)
            if type(state) is State:
                if (<State>state).known(instance_id):
                    continue
            elif state.known(instance_id):
                continue
            if instance_id not in self._proposed:
                return instance_id

    cdef object _finish(self, object instance_id, bytes brief, object spec_text, object tags):
        cdef object done
        cdef PendingCore pending
        if self._record is Record:
            rec = make_record(instance_id, brief, spec_text)
        else:
            rec = self._record(instance_id, brief, spec_text)
        try:
            done = self._store.provision(rec, tags)
        except self._store_error as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        # rpc.Pending(done, answer), without its __init__ call; the ID is "instance-"
        # and digits: its JSON needs no escapes.  "Type" is "": provision_params and the
        # scan take nothing else (a Type named is answered no-plugin).
        pending = PendingCore.__new__(_pending_type)
        pending.done = done
        pending.answer = _id_answer(instance_id)
        return pending


cdef class Describe:
    """Instance.DescribeInstances over a store's state (see the pure twin)."""

    cdef object _store
    cdef object _after
    cdef Py_ssize_t _big
    cdef object _parts

    def __init__(self, store, after, Py_ssize_t big, parts):
        self._store = store
        self._after = after
        self._big = big
        self._parts = parts

    def __call__(self, params):
        return self.call(params)

    cdef object call(self, object params):
        _check_type(params)
        cdef object tags = _string_map(_get(params, "Tags"), "Tags")
        cdef object properties = (<dict>params).get("Properties", False) if type(params) is dict else params.get(
            "Properties", False
        )
        if properties is None:
            properties = False
        if not isinstance(properties, bool):
            raise _params_error('"Properties" must be true or false')
        return self.answer(tags or None, properties)

    cdef object answer(self, object tags, object properties):
        """The answer to checked params: ``tags`` a dict of strings or None, ``properties`` a bool."""
        cdef bytes type_json = _EMPTY_TYPE
        cdef object store = self._store
        cdef object barrier = store.read_barrier()
        if barrier is not None:
            return self._after(barrier, type_json, tags, properties)
        cdef object descriptions = store.describe(tags, properties)
        if type(descriptions) is bytes and PyBytes_GET_SIZE(<bytes>descriptions) < self._big:
            return wrap2(b'{"Type":', 8, type_json, b',"Descriptions":', 16, <bytes>descriptions)
        if len(descriptions) < self._big:
            return b'{"Type":' + type_json + b',"Descriptions":' + descriptions + b"}"
        return self._parts((b'{"Type":' + type_json + b',"Descriptions":', descriptions, b"}"))


cdef class _InstanceChange:
    """A change of one instance for the logical provider (no provider to act): the store's
    destroy or label of a checked ID, answered once the store has made it durable.
    ``unknown``: what the store raises for an ID it does not hold."""

    cdef object _store
    cdef object _store_error
    cdef object _unknown

    def __init__(self, store, store_error, unknown):
        self._store = store
        self._store_error = store_error
        self._unknown = unknown

    cdef object _change(self, object instance_id, object labels):
        """The store's destroy (``labels`` None) or label of ``instance_id``: a ``rpc.Pending``."""
        cdef object store = self._store
        cdef object done
        cdef PendingCore pending
        try:
            if store.state.get(instance_id) is None:
                raise self._unknown(instance_id)
            done = store.destroy(instance_id) if labels is None else store.label(instance_id, labels)
        except self._unknown:
            verb = "destroy" if labels is None else "label"
            raise RpcError(PLUGIN_ERROR, f"cannot {verb} instance {instance_id}: no such instance") from None
        except self._store_error as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        # rpc.Pending(done, answer), without its __init__ call
        pending = PendingCore.__new__(_pending_type)
        pending.done = done
        pending.answer = _OK_ANSWER
        return pending


cdef class LogicalDestroy(_InstanceChange):
    """Instance.Destroy for the logical provider: the params checked (``Type``, a non-empty
    ``Instance`` ID, ``Context`` an object or absent), then the store's destroy."""

    def __call__(self, params):
        return self.call(params)

    cdef object call(self, object params):
        cdef object instance_id = _change_target(params)
        cdef object context = _get(params, "Context")
        if context is not None and not isinstance(context, dict):
            raise _params_error('"Context" must be an object')
        return self._change(instance_id, None)

    cdef object destroy(self, object instance_id):
        """The checked ID's destroy (``_scan_destroy`` checks what ``call`` does)."""
        return self._change(instance_id, None)


cdef class LogicalLabel(_InstanceChange):
    """Instance.Label for the logical provider: the params checked (``Type``, a non-empty
    ``Instance`` ID, ``Labels`` an object of strings or absent), then the store's label."""

    def __call__(self, params):
        return self.call(params)

    cdef object call(self, object params):
        cdef object instance_id = _change_target(params)
        return self._change(instance_id, _string_map(_get(params, "Labels"), "Labels"))

    cdef object label(self, object instance_id, dict labels):
        """The checked ID's label (``_scan_label`` checks what ``call`` does)."""
        return self._change(instance_id, labels)


cdef object _change_target(object params):
    """The checked ``Instance`` of a Destroy's or Label's params (after their ``Type``)."""
    _check_type(params)
    cdef object instance_id = _get(params, "Instance")
    if not isinstance(instance_id, str) or not instance_id:
        raise _params_error('"Instance" must be a non-empty instance ID string')
    return instance_id


cdef bytes _OK_ANSWER = b'{"Type":"","OK":true}'  # the answer of a Destroy and of a Label


cdef inline object _get(object params, str key):
    """``params.get(key)``, in C for a dict."""
    if type(params) is dict:
        return (<dict>params).get(key)
    return params.get(key)


cdef bytes _id_answer(str instance_id):
    """``b'{"Type":"","ID":"' + ID + b'"}'``, written once for an ASCII ID."""
    cdef Py_ssize_t n
    cdef bytes out
    cdef char* w
    if not PyUnicode_IS_ASCII(instance_id):
        return b'{"Type":"","ID":"' + instance_id.encode() + b'"}'
    n = PyUnicode_GET_LENGTH(instance_id)
    out = PyBytes_FromStringAndSize(NULL, 17 + n + 2)
    w = put(PyBytes_AS_STRING(out), b'{"Type":"","ID":"', 17)
    w = put(w, <const char*>PyUnicode_DATA(instance_id), n)
    w[0] = 34
    w[1] = 125
    return out


# -- a Provision read from its text: no JSON objects built but its tags ---------------------

# The bytes of a string orjson writes as they are: printable ASCII but the quote and the
# backslash (escapes are judged one by one).
cdef unsigned char _S_RAW[256]
# The escapes orjson writes itself (\" \\ \n \r \t \b \f): text that holds only these reads
# and writes back the same.
cdef unsigned char _S_ESC[256]


cdef void _s_init() noexcept:
    cdef int c
    for c in range(256):
        _S_RAW[c] = 0x20 <= c < 0x7F and c != 34 and c != 92
        _S_ESC[c] = c in (34, 92, 110, 114, 116, 98, 102)


_s_init()

cdef enum:
    _S_KEYS = 24  # members of one object the scan checks for duplicates; more: declined


cdef struct _Capture:
    # Where an object's members go as it is scanned (4 numbers each: key start and end,
    # value start and end; -1 after the last), and which member's object is captured in turn.
    Py_ssize_t* spans
    const char* child_key
    Py_ssize_t child_len
    _Capture* child


cdef Py_ssize_t _s_string(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, bint* escaped) noexcept:
    """The end of the string at ``p[i] == '"'`` in the form orjson writes, or -1."""
    i += 1
    while True:
        while i < n and _S_RAW[p[i]]:
            i += 1
        if i >= n:
            return -1
        if p[i] == 34:
            return i + 1
        if p[i] != 92 or i + 1 >= n or not _S_ESC[p[i + 1]]:
            return -1
        escaped[0] = True
        i += 2


cdef Py_ssize_t _s_value(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int depth) noexcept:
    """The end of the compact JSON value at ``p[i]`` in the form orjson writes (no space, no
    float, integers of at most 19 digits (18 negative) and never -0, no object key twice), or -1."""
    cdef unsigned char c
    cdef bint escaped = False
    cdef Py_ssize_t k
    if i >= n:
        return -1
    c = p[i]
    if c == 34:
        return _s_string(p, n, i, &escaped)
    if c == 123:
        return _s_object(p, n, i, depth, NULL)
    if c == 91:
        if depth >= _QUICK_DEPTH:
            return -1
        i += 1
        if i < n and p[i] == 93:
            return i + 1
        while True:
            i = _s_value(p, n, i, depth + 1)
            if i < 0 or i >= n:
                return -1
            if p[i] == 93:
                return i + 1
            if p[i] != 44:
                return -1
            i += 1
    if c == 116:
        return _q_literal(p, n, i, b"true", 4)
    if c == 102:
        return _q_literal(p, n, i, b"false", 5)
    if c == 110:
        return _q_literal(p, n, i, b"null", 4)
    if c == 45:
        i += 1
    if i >= n:
        return -1
    if p[i] == 48:
        if c == 45:
            return -1  # -0, or -0 and more: orjson reads another number
        i += 1
    else:
        k = i
        i = _q_digits(p, n, i)
        if i == k or i - k > (18 if c == 45 else 19):
            return -1  # orjson reads these as 64-bit integers (negative: signed; else unsigned)
    if i < n and (p[i] == 46 or p[i] == 101 or p[i] == 69 or 48 <= p[i] <= 57):
        return -1  # a float (orjson writes it its own way), or a leading zero
    return i


cdef Py_ssize_t _s_object(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int depth, _Capture* cap) noexcept:
    """The end of the object at ``p[i] == '{'`` (see _s_value), or -1; with ``cap``, its
    members' spans are kept, and the object of the member ``cap.child_key`` captured into
    ``cap.child`` as it is scanned (one pass over the text)."""
    cdef Py_ssize_t ks[_S_KEYS]
    cdef Py_ssize_t kl[_S_KEYS]
    cdef Py_ssize_t m = 0, j, start, vs
    cdef bint escaped = False
    cdef Py_ssize_t* spans = cap.spans if cap != NULL else NULL
    if depth >= _QUICK_DEPTH:
        return -1
    i += 1
    if i < n and p[i] == 125:
        return i + 1
    while True:
        if i >= n or p[i] != 34 or m >= _S_KEYS:
            return -1
        start = i
        i = _s_string(p, n, i, &escaped)
        if i < 0:
            return -1
        for j in range(m):  # a key twice: orjson keeps the last, the text has both
            if kl[j] == i - start and memcmp(p + ks[j], p + start, <size_t>(i - start)) == 0:
                return -1
        ks[m] = start
        kl[m] = i - start
        if i >= n or p[i] != 58:
            return -1
        vs = i + 1
        if (
            cap != NULL
            and cap.child != NULL
            and kl[m] == cap.child_len + 2
            and vs < n
            and p[vs] == 123
            and memcmp(p + start + 1, cap.child_key, <size_t>cap.child_len) == 0
        ):
            i = _s_object(p, n, vs, depth + 1, cap.child)
        else:
            i = _s_value(p, n, vs, depth + 1)
        if i < 0 or i >= n:
            return -1
        if spans != NULL:
            spans[4 * m] = start
            spans[4 * m + 1] = start + kl[m]
            spans[4 * m + 2] = vs
            spans[4 * m + 3] = i
        m += 1
        if p[i] == 125:
            if spans != NULL and m < _S_KEYS:
                spans[4 * m] = -1
            return i + 1
        if p[i] != 44:
            return -1
        i += 1


cdef inline bint _s_is(const unsigned char* p, Py_ssize_t* spans, Py_ssize_t j, const char* key, Py_ssize_t k) noexcept:
    return spans[4 * j + 1] - spans[4 * j] == k + 2 and memcmp(p + spans[4 * j] + 1, key, <size_t>k) == 0


cdef bint _s_envelope(
    const unsigned char* p, Py_ssize_t n, Py_ssize_t* top, const char* method, Py_ssize_t method_len, Py_ssize_t* id_span
) noexcept:
    """The scanned members of a request (``top``) are "jsonrpc":"2.0", "method" with the text
    ``method`` (``method_len`` bytes, quotes included), "params" an object and an "id" that is a
    string without escapes or an integer, each once and nothing else; the id's span then
    goes to ``id_span``.  False for anything else (read the usual way)."""
    cdef Py_ssize_t j, a, b
    cdef int seen = 0
    cdef bint escaped
    for j in range(_S_KEYS):
        a = top[4 * j]
        if a < 0:
            break
        a, b = top[4 * j + 2], top[4 * j + 3]
        if _s_is(p, top, j, b"jsonrpc", 7):
            if b - a != 5 or memcmp(p + a, b'"2.0"', 5) != 0:
                return False
            seen |= 1
        elif _s_is(p, top, j, b"method", 6):
            if b - a != method_len or memcmp(p + a, method, <size_t>method_len) != 0:
                return False
            seen |= 2
        elif _s_is(p, top, j, b"params", 6):
            if p[a] != 123:
                return False
            seen |= 4
        elif _s_is(p, top, j, b"id", 2):
            if p[a] == 34:
                escaped = False
                if _s_string(p, n, a, &escaped) != b or escaped:
                    return False
            elif not (p[a] == 45 or 48 <= p[a] <= 57):
                return False  # null: answered the usual way (else an integer, as _s_value read it)
            id_span[0], id_span[1] = a, b
            seen |= 8
        else:
            return False
    return seen == 15


cdef bint _s_request(
    const unsigned char* p, Py_ssize_t n, _Capture* top, const char* method, Py_ssize_t method_len, Py_ssize_t* id_span
) noexcept:
    """``p`` is one compact JSON object (whitespace after it only), scanned into ``top``, whose
    envelope is that of a ``method`` request (see _s_envelope)."""
    cdef Py_ssize_t e
    if n < 2 or p[0] != 123:
        return False
    e = _s_object(p, n, 0, 0, top)
    if e < 0 or _q_ws(p, n, e) != n:
        return False
    return _s_envelope(p, n, top.spans, method, method_len, id_span)


cdef inline bint _s_no_type(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept:
    """The value at ``p[a:b]`` is ``""`` or ``null``: the plugin's own Type."""
    return (b - a == 2 and p[a] == 34) or (b - a == 4 and p[a] == 110)


cdef tuple _scan_change(
    bytes body, const char* method, Py_ssize_t method_len, const char* extra, Py_ssize_t extra_len, Py_ssize_t* members
):
    """What the Destroy and Label scans share: a compact ``method`` request (``method_len``
    bytes, quotes included) in the form orjson writes, whose params are a plain "Instance"
    string (no escape), at most an empty "Type", and ``extra`` (Destroy's "Context", Label's
    "Labels") an object or null, read without building its objects: ``(id_json, instance_id,
    extra is an object)``, that object's members captured into ``members`` if not NULL; None
    for anything else (the dispatcher then reads it the usual way, which answers the same)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t top[4 * _S_KEYS]
    cdef Py_ssize_t params[4 * _S_KEYS]
    cdef Py_ssize_t id_span[2]
    cdef Py_ssize_t j, a, b, xs = -1, xe = -1
    cdef bint given = False
    cdef _Capture c_top, c_params, c_extra
    c_extra.spans, c_extra.child = members, NULL
    c_params.spans, c_params.child_key, c_params.child_len = params, extra, extra_len
    c_params.child = &c_extra if members != NULL else NULL
    c_top.spans, c_top.child_key, c_top.child_len, c_top.child = top, b"params", 6, &c_params
    top[0] = params[0] = -1
    if members != NULL:
        members[0] = -1
    if not _s_request(p, n, &c_top, method, method_len, id_span):
        return None
    for j in range(_S_KEYS):
        a = params[4 * j]
        if a < 0:
            break
        a, b = params[4 * j + 2], params[4 * j + 3]
        if _s_is(p, params, j, b"Type", 4):
            if not _s_no_type(p, a, b):
                return None  # a Type named: answered the usual way
        elif _s_is(p, params, j, b"Instance", 8):
            if p[a] != 34 or b - a < 3 or memchr(p + a, 92, <size_t>(b - a)) != NULL:
                return None  # not a string, empty, or an escape to decode
            xs, xe = a + 1, b - 1
        elif _s_is(p, params, j, extra, extra_len):
            if p[a] == 123:
                given = True
            elif p[a] != 110:
                return None
        else:
            return None
    if xs < 0:
        return None
    return (
        PyBytes_FromStringAndSize(<const char*>p + id_span[0], id_span[1] - id_span[0]),
        PyUnicode_DecodeASCII(<const char*>p + xs, xe - xs, NULL),
        given,
    )


cdef tuple _scan_destroy(bytes body):
    """A compact Instance.Destroy request read from its text: ``(id_json, instance_id, _)``
    (see _scan_change; its "Context" an object or null), or None."""
    return _scan_change(body, b'"Instance.Destroy"', 18, b"Context", 7, NULL)


cdef tuple _scan_describe(bytes body):
    """A compact Instance.DescribeInstances request in the form orjson writes, read without
    building its objects: ``(id_json, tags, properties)``, ``tags`` a dict or None (none asked
    for); None for anything else (read the usual way, which answers the same).  Its params are
    at most an empty "Type", "Tags" null or an object of strings without escapes, and
    "Properties" true, false or null."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t top[4 * _S_KEYS]
    cdef Py_ssize_t params[4 * _S_KEYS]
    cdef Py_ssize_t members[4 * _S_KEYS]
    cdef Py_ssize_t id_span[2]
    cdef Py_ssize_t j, a, b
    cdef bint asked = False, properties = False
    cdef dict tags
    cdef _Capture c_top, c_params, c_tags
    c_tags.spans, c_tags.child = members, NULL
    c_params.spans, c_params.child_key, c_params.child_len, c_params.child = params, b"Tags", 4, &c_tags
    c_top.spans, c_top.child_key, c_top.child_len, c_top.child = top, b"params", 6, &c_params
    top[0] = params[0] = members[0] = -1
    if not _s_request(p, n, &c_top, b'"Instance.DescribeInstances"', 28, id_span):
        return None
    for j in range(_S_KEYS):
        a = params[4 * j]
        if a < 0:
            break
        a, b = params[4 * j + 2], params[4 * j + 3]
        if _s_is(p, params, j, b"Type", 4):
            if not _s_no_type(p, a, b):
                return None  # a Type named: answered the usual way
        elif _s_is(p, params, j, b"Tags", 4):
            if p[a] == 123:
                asked = True
            elif p[a] != 110:
                return None
        elif _s_is(p, params, j, b"Properties", 10):
            if p[a] == 116:
                properties = True
            elif p[a] != 102 and p[a] != 110:
                return None
        else:
            return None
    if not asked:
        return (PyBytes_FromStringAndSize(<const char*>p + id_span[0], id_span[1] - id_span[0]), None, properties)
    tags = _s_strings(p, members)
    if tags is None:
        return None
    return (
        PyBytes_FromStringAndSize(<const char*>p + id_span[0], id_span[1] - id_span[0]),
        tags or None,
        properties,
    )


cdef dict _s_strings(const unsigned char* p, Py_ssize_t* members):
    """The scanned object ``members`` as a dict, if every value is a string and nothing in it
    has an escape (its texts through the tag-text cache); else None."""
    cdef Py_ssize_t j, ka, kb, a, b
    cdef dict out = {}
    for j in range(_S_KEYS):
        ka = members[4 * j]
        if ka < 0:
            break
        kb, a, b = members[4 * j + 1], members[4 * j + 2], members[4 * j + 3]
        if p[a] != 34 or memchr(p + ka, 92, <size_t>(kb - ka)) != NULL or memchr(p + a, 92, <size_t>(b - a)) != NULL:
            return None  # not a string, or an escape to decode
        out[_tag_text(<const char*>p + ka + 1, kb - ka - 2)] = _tag_text(<const char*>p + a + 1, b - a - 2)
    return out


cdef tuple _scan_label(bytes body):
    """A compact Instance.Label request read from its text: ``(id_json, instance_id, labels)``
    (see _scan_change; its "Labels" null or an object of strings without escapes), or None."""
    cdef Py_ssize_t members[4 * _S_KEYS]
    cdef dict labels = {}
    cdef tuple scan = _scan_change(body, b'"Instance.Label"', 16, b"Labels", 6, members)
    if scan is None:
        return None
    if scan[2]:
        labels = _s_strings(<const unsigned char*>PyBytes_AS_STRING(body), members)
        if labels is None:
            return None
    return (scan[0], scan[1], labels)


cdef tuple _scan_provision(bytes body):
    """A compact Instance.Provision request whose text is what orjson would write of it, read
    without building its objects: ``(id_json, tags, logical_id_json, tags_json, spec_text)``;
    None for anything else (the dispatcher then reads it the usual way, which answers the
    same).  Its params are the Spec and at most an empty "Type"; the Spec's "Tags" an object
    of plain strings (no escapes), its "LogicalID" and "Init" null or strings, its
    "Attachments" null or a list of objects."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t top[4 * _S_KEYS]
    cdef Py_ssize_t params[4 * _S_KEYS]
    cdef Py_ssize_t spec[4 * _S_KEYS]
    cdef Py_ssize_t tagm[4 * _S_KEYS]
    cdef Py_ssize_t id_span[2]
    cdef Py_ssize_t j, a, b, e, c, ids, ide, ss = -1, se = -1, ts = -1, te = -1, ls = -1, le = -1
    cdef dict tags
    cdef _Capture c_top, c_params, c_spec, c_tags
    c_tags.spans, c_tags.child = tagm, NULL
    c_spec.spans, c_spec.child_key, c_spec.child_len, c_spec.child = spec, b"Tags", 4, &c_tags
    c_params.spans, c_params.child_key, c_params.child_len, c_params.child = params, b"Spec", 4, &c_spec
    c_top.spans, c_top.child_key, c_top.child_len, c_top.child = top, b"params", 6, &c_params
    top[0] = params[0] = spec[0] = tagm[0] = -1
    if not _s_request(p, n, &c_top, b'"Instance.Provision"', 20, id_span):
        return None
    ids, ide = id_span[0], id_span[1]
    for j in range(_S_KEYS):
        a = params[4 * j]
        if a < 0:
            break
        a, b = params[4 * j + 2], params[4 * j + 3]
        if _s_is(p, params, j, b"Type", 4):
            if not _s_no_type(p, a, b):
                return None  # a Type named: answered the usual way
        elif _s_is(p, params, j, b"Spec", 4):
            if p[a] != 123:
                return None
            ss, se = a, b
        else:
            return None
    if ss < 0:
        return None
    for j in range(_S_KEYS):
        a = spec[4 * j]
        if a < 0:
            break
        a, b = spec[4 * j + 2], spec[4 * j + 3]
        if _s_is(p, spec, j, b"Tags", 4):
            if p[a] == 123:
                ts, te = a, b
            elif p[a] != 110:
                return None
        elif _s_is(p, spec, j, b"LogicalID", 9):
            if p[a] == 34 or p[a] == 110:
                ls, le = a, b
            else:
                return None
        elif _s_is(p, spec, j, b"Init", 4):
            if p[a] != 34 and p[a] != 110:
                return None
        elif _s_is(p, spec, j, b"Attachments", 11):
            if p[a] == 91:
                # a list of objects: each element starts one
                e = a + 1
                if p[e] != 93:
                    while True:
                        if p[e] != 123:
                            return None
                        e = _s_object(p, n, e, 4, NULL)
                        if p[e] == 93:
                            break
                        e += 1  # the comma
            elif p[a] != 110:
                return None
    tags = {}
    if ts >= 0:
        for j in range(_S_KEYS):
            a = tagm[4 * j]
            if a < 0:
                break
            b, c, e = tagm[4 * j + 1], tagm[4 * j + 2], tagm[4 * j + 3]
            if p[c] != 34 or memchr(p + a, 92, <size_t>(b - a)) != NULL or memchr(p + c, 92, <size_t>(e - c)) != NULL:
                return None  # a value other than a string, or an escape to decode
            tags[_tag_text(<const char*>p + a + 1, b - a - 2)] = _tag_text(<const char*>p + c + 1, e - c - 2)
    return (
        PyBytes_FromStringAndSize(<const char*>p + ids, ide - ids),
        tags,
        PyBytes_FromStringAndSize(<const char*>p + ls, le - ls) if ls >= 0 else _NULL,
        PyBytes_FromStringAndSize(<const char*>p + ts, te - ts) if ts >= 0 else _EMPTY_OBJECT,
        PyBytes_FromStringAndSize(<const char*>p + ss, se - ss),
    )


# The tag keys and values read last, by a hash of their text: a group's instances carry the
# same few tags, so most are found here, one str shared by every instance (its hash computed
# once) instead of one decoded for each.
cdef enum:
    _TAG_SLOTS = 256  # a power of two
    _TAG_LONGEST = 64  # longer texts are decoded every time
cdef list _tag_cache = [None] * _TAG_SLOTS


cdef object _tag_text(const char* s, Py_ssize_t n):
    """``s[:n].decode("ascii")`` (the scan made sure it is printable ASCII), from the cache
    when it holds the same text."""
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t i
    cdef object text
    if n > _TAG_LONGEST:
        return PyUnicode_DecodeASCII(s, n, NULL)
    for i in range(n):  # FNV-1a
        h = (h ^ <unsigned char>s[i]) * 16777619u
    h &= _TAG_SLOTS - 1
    text = _tag_cache[h]
    if text is not None and PyUnicode_GET_LENGTH(text) == n and memcmp(PyUnicode_DATA(text), s, <size_t>n) == 0:
        return text
    text = PyUnicode_DecodeASCII(s, n, NULL)
    _tag_cache[h] = text
    return text


def scan_destroy(body):
    """What the dispatcher reads of a plain Destroy body without building its objects:
    ``(id_json, instance_id)``, or None (read the usual way); compiled only."""
    cdef tuple scan = _scan_destroy(body) if type(body) is bytes else None
    return None if scan is None else scan[:2]


def scan_label(body):
    """What the dispatcher reads of a plain Label body without building its objects:
    ``(id_json, instance_id, labels)``, or None (read the usual way); compiled only."""
    return _scan_label(body) if type(body) is bytes else None


def scan_describe(body):
    """What the dispatcher reads of a plain DescribeInstances body without building its objects:
    ``(id_json, tags, properties)``, or None (read the usual way); compiled only."""
    return _scan_describe(body) if type(body) is bytes else None


def scan_provision(body):
    """What the dispatcher reads of a plain Provision body without building its objects:
    ``(id_json, tags, logical_id_json, tags_json, spec_text)``, or None (read the usual way);
    compiled only (the pure twin reads every body the usual way, with the same answers)."""
    return _scan_provision(body) if type(body) is bytes else None


cdef bytes _NULL = b"null"
cdef bytes _EMPTY_OBJECT = b"{}"


cdef class PendingCore:
    """What ``rpc.Pending`` holds (``done``, ``answer``, ``id_json``, ``method``), and its
    ``settle`` for a change that succeeded; the subclass's ``_failed`` answers the others
    (its fields are declared in ``_rpc_c.pxd``)."""

    def __init__(self, done, answer, id_json=None, method=None):
        self.done = done
        self.answer = answer
        self.id_json = id_json
        self.method = method

    def _failed(self):
        raise NotImplementedError

    def settle(self):
        """The response, once ``done`` is: the answer, or the error the change failed with."""
        cdef object done = self.done
        if not done.cancelled() and done.exception() is None:
            return self.answer
        return self._failed()
