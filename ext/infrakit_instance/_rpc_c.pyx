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
from libc.string cimport memcpy

from infrakit_instance._rpc_py import compact as _compact_py

from infrakit_instance._build cimport int_len, plain_len, put, put_int, put_plain, wrap2

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_DEPTH",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PLUGIN_ERROR",
    "Call",
    "RpcError",
    "decode_body",
    "encode_error",
    "encode_id",
    "compact",
    "encode_result",
    "plain_text",
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
    cdef const unsigned char* p
    cdef Py_ssize_t i, n, run = 0
    cdef unsigned char c, prev = 0
    cdef bint in_str = False, neg = False
    if type(body) is not bytes:
        body = bytes(body)
    p = <const unsigned char*>PyBytes_AS_STRING(body)
    n = PyBytes_GET_SIZE(body)
    i = 0
    while i < n:
        c = p[i]
        i += 1
        if c == 34:
            # a string: skipped in a tight loop, its escapes checked
            in_str = True
            while i < n:
                c = p[i]
                i += 1
                if c == 34:
                    in_str = False
                    break
                if c == 92:
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
    return not in_str


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
