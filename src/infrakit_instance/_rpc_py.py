"""The JSON-RPC 2.0 envelope (pure-Python twin of ``_rpc_c``).

Splits a request body into calls and builds response bytes around result
bytes that are already encoded, so a cached answer is never decoded and
encoded again.  The request ``id`` is carried as the exact JSON text the
response must echo.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from . import _codec_py, _state_py

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
    "provision_params",
    "plain_text",
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

# The tokens of a JSON text: a string (to its closing quote, or to the end of a
# body that never closes it), a structural character, or a run of anything else.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"?|[{}\[\]:,]|[^ \t\r\n{}\[\]:,"]+')
_K_ID, _K_PARAMS, _K_SPEC = b'"id"', b'"params"', b'"Spec"'
# What an open container is to scan(): nothing of interest, the batch, a request
# object, its params object, its params array.
_OTHER, _BATCH, _REQUEST, _PARAMS, _PARAMS_LIST = range(5)


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, a message saying what was wrong, the id to echo."""

    def __init__(self, code: int, message: str, id_json: bytes = NULL_ID) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.id_json = id_json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RpcError) and (self.code, self.message, self.id_json) == (
            other.code,
            other.message,
            other.id_json,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.id_json))

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r}, {self.id_json!r})"


class Call:
    """One request of a body: method name, params object, exact id text (None: notification)."""

    __slots__ = ("id_json", "method", "params")

    def __init__(self, method: str, params: dict[str, Any], id_json: bytes | None) -> None:
        self.method = method
        self.params = params
        self.id_json = id_json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Call) and (self.method, self.params, self.id_json) == (
            other.method,
            other.params,
            other.id_json,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Call({self.method!r}, {self.params!r}, {self.id_json!r})"


def scan(body: bytes) -> tuple[int, list[list[int]]]:
    """The nesting depth of ``body`` and where, in its text, each request object
    has its ``id`` and its ``params``' ``Spec``: ``[id_start, id_end, spec_start,
    spec_end]`` (-1 where absent) for the body's object, or for each element of
    its array.  No recursion and constant memory at any depth; for valid JSON the
    spans are exact, for anything else a best effort (orjson judges validity)."""
    depth = deepest = plain = 0
    seen = False
    items: list[list[int]] = []
    # The open containers that matter (the batch, request objects, their params,
    # an id or Spec being measured): [role, item, is an object, expecting a key,
    # last key, elements before the current one, span target, where it starts].
    # Containers inside those that do not matter are only counted (plain).
    stack: list[list[Any]] = []
    for m in _TOKENS.finditer(body):
        tok = m.group()
        c = tok[0]
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
        if c == 58:  # ':'
            continue
        if c == 44:  # ','
            if top is not None:
                if top[2]:
                    top[3] = True
                else:
                    top[5] += 1
            continue
        if c == 125 or c == 93:  # '}' ']'
            if top is not None:
                stack.pop()
                depth -= 1
                if top[6] is not None:
                    top[6][0][top[6][1]] = top[7]
                    top[6][0][top[6][1] + 1] = m.end()
            continue
        opener = c == 123 or c == 91
        role = _OTHER
        item: list[int] | None = None
        target: tuple[list[int], int] | None = None
        if top is None:
            if seen:
                continue  # after the body's value: not JSON, orjson says so
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
                if not opener:  # an object's key
                    top[4] = tok
                    continue
                top[4] = None
            parent = top[0]
            key = top[4]
            if parent == _BATCH:
                element = [-1, -1, -1, -1]
                items.append(element)
                if c == 123:
                    item, role = element, _REQUEST
            elif parent == _REQUEST:
                item = top[1]
                assert item is not None
                if key == _K_ID:
                    target = (item, 0)
                elif key == _K_PARAMS:
                    item[2] = item[3] = -1
                    if c == 123:
                        role = _PARAMS
                    elif c == 91:
                        role = _PARAMS_LIST
            elif parent == _PARAMS:
                item = top[1]
                if key == _K_SPEC:
                    assert item is not None
                    target = (item, 2)
            elif parent == _PARAMS_LIST:
                if top[5] == 0 and c == 123:
                    item, role = top[1], _PARAMS
        if opener:
            depth += 1
            if depth > deepest:
                deepest = depth
            if role == _OTHER and target is None:
                plain = 1
            else:
                stack.append([role, item, c == 123, c == 123, None, 0, target, m.start()])
        elif target is not None:
            target[0][target[1]] = m.start()
            target[0][target[1] + 1] = m.end()
    return deepest, items


_STRING = re.compile(rb'("[^"\\]*(?:\\[\s\S][^"\\]*)*"?)')
_WS = b" \t\r\n"


#: A JSON string whose escapes are all among those orjson writes (\" \\ \n \r \t \b \f).
_PLAIN_STRING = re.compile(rb'"(?:[^"\\]|\\["\\nrtbf])*"')
#: Numbers orjson may write back another way: a fraction or exponent, minus zero, an
#: integer beyond 64 bits (19 digits with a minus, 20 without).
_NOT_PLAIN = re.compile(rb"-0|-[0-9]{19}|[0-9](?:[.eE]|[0-9]{19})")


def plain_text(body: bytes) -> bool:
    """Whether ``body`` holds nothing that orjson would write another way: escapes only
    among those orjson writes, numbers only 64-bit integers (other than -0).  Then a
    Spec parsed from it is written back as the text it came as, compacted (duplicate
    keys aside: the last one is kept), and its text need not be located."""
    rest = _PLAIN_STRING.sub(b"", body)
    return b'"' not in rest and b"\\" not in rest and _NOT_PLAIN.search(rest) is None


def compact(text: bytes) -> bytes:
    """JSON ``text`` without the whitespace between its tokens (numbers and strings
    kept as written); ``text`` itself when it has none."""
    if b" " not in text and b"\n" not in text and b"\t" not in text and b"\r" not in text:
        return text
    parts = _STRING.split(text)
    outside = b"".join(parts[0::2])
    if len(outside.translate(None, _WS)) == len(outside):
        return text  # already compact: the usual case (Go's encoder writes no spaces)
    parts[0::2] = [p.translate(None, _WS) for p in parts[0::2]]
    return b"".join(parts)


def _raw_id(body: bytes, items: list[list[int]]) -> bytes:
    """The id text of a body's single request object, if it is a valid id, else null."""
    if len(items) == 1 and items[0][0] >= 0 and body.lstrip(b" \t\r\n")[:1] == b"{":
        text = body[items[0][0] : items[0][1]]
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return NULL_ID
        if value is None or type(value) in (str, int, float):
            return text
    return NULL_ID


def decode_body(body: bytes) -> Any:
    """Parse a request body, or raise ``RpcError(PARSE_ERROR)`` saying where it broke
    (``INVALID_PARAMS`` if it nests deeper than :data:`MAX_DEPTH`)."""
    if len(body) > MAX_DEPTH and body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        depth, items = scan(body)
        if depth > MAX_DEPTH:
            raise RpcError(
                INVALID_PARAMS,
                f"invalid params: the request nests {depth} levels deep; at most {MAX_DEPTH} are allowed",
                _raw_id(body, items),
            )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: request body is not valid JSON: {exc}") from None
    # orjson turns integers beyond 64 bits into floats: read such a body again
    # with the standard parser, which keeps integers exact.
    if isinstance(doc, dict):
        if type(doc.get("id")) is float:
            doc = json.loads(body)
    elif isinstance(doc, list) and any(isinstance(d, dict) and type(d.get("id")) is float for d in doc):
        doc = json.loads(body)
    return doc


def encode_id(value: Any) -> bytes:
    """The exact JSON text of an id (integers of any size, strings, null)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def split_call(doc: Any) -> Call:
    """Validate one request object; raise ``RpcError`` carrying the id to echo."""
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected a JSON-RPC request object")
    if "id" in doc:
        ident = doc["id"]
        if ident is not None and not isinstance(ident, (str, int, float)) or isinstance(ident, bool):
            raise RpcError(INVALID_REQUEST, "invalid request: id must be a string, a number or null")
        id_json: bytes | None = encode_id(ident)
    else:
        id_json = None
    err_id = NULL_ID if id_json is None else id_json
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"', err_id)
    method = doc.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string', err_id)
    params = doc.get("params")
    if params is None:
        params = {}
    elif isinstance(params, list):
        # Go's JSON-RPC server also takes a one-element array holding the object.
        if len(params) == 1 and isinstance(params[0], dict):
            params = params[0]
        elif not params:
            params = {}
        else:
            raise RpcError(
                INVALID_PARAMS, "invalid params: expected an object (or an array holding one object)", err_id
            )
    elif not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "invalid params: expected an object", err_id)
    return Call(method, params, id_json)


def encode_result(id_json: bytes, result: bytes) -> bytes:
    """A success answer around already-encoded ``result`` bytes."""
    return b'{"jsonrpc":"2.0","result":' + result + b',"id":' + id_json + b"}"


def encode_error(id_json: bytes, code: int, message: str) -> bytes:
    """An error answer; ``data`` is always null."""
    return (
        b'{"jsonrpc":"2.0","error":{"code":'
        + str(code).encode()
        + b',"message":'
        + orjson.dumps(message)
        + b',"data":null},"id":'
        + id_json
        + b"}"
    )


#: Deepest nesting the compiled twin's quick() reads itself (the body is level 1).
QUICK_DEPTH = 32
_MISSING = object()


def quick(body: bytes, entries: tuple[tuple[bytes, bytes, bool], ...]) -> bytes | None:
    """The response body to a plain request whose answer is fixed, or None: decide the usual way.

    ``entries`` holds ``(method, result, empty_type)`` triples (method as bytes): a request
    object of ``"jsonrpc":"2.0"``, one of those methods, an id, and params that are an object,
    null or absent (with ``empty_type``, an object whose "Type" is absent, null or "") is
    answered ``result``, exactly as the dispatcher would.  This twin parses with orjson and
    declines bodies with escapes or non-ASCII bytes, float and -0 ids, and integer ids of more
    than 19 digits, as the compiled one does, and ids below -2**63 too (orjson reads them as
    floats).  The compiled twin declines some bodies this one answers (deep nesting, long
    numbers).  None is never wrong; an answer is always the dispatcher's."""
    if type(body) is not bytes or not body.isascii() or b"\\" in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or doc.get("jsonrpc") != "2.0" or type(doc.get("method")) is not str:
        return None
    ident = doc.get("id", _MISSING)
    if ident is None:
        id_json = NULL_ID
    elif type(ident) is int and -(10**19) < ident < 10**19 and (ident != 0 or b"-0" not in body):
        id_json = str(ident).encode()
    elif type(ident) is str:
        id_json = b'"' + ident.encode() + b'"'
    else:
        return None  # a notification, a float, a bool, a container: not quick
    params = doc.get("params")
    if params is None:
        empty = True
    elif type(params) is dict:
        kind = params.get("Type")
        empty = kind is None or kind == ""
    else:
        return None
    method = doc["method"].encode()
    for name, result, empty_type in entries:
        if name == method:
            if empty_type and not empty:
                return None
            return b'{"jsonrpc":"2.0","result":' + result + b',"id":' + id_json + b"}"
    return None


# -- the dispatcher's single-request path, and the Provision params ------------------

#: The "Type" of a request that names none (or ""), as its answer writes it.
EMPTY_TYPE = b'""'
_pending_type: Any = None


def use_pending(pending: Any) -> None:
    """Tell the dispatcher's path the class of a method's answer that waits (``rpc.Pending``)."""
    global _pending_type
    _pending_type = pending


class DispatchCore:
    """The single-request path of ``rpc.Dispatcher``: a request object of a known method,
    a plain id, is answered here; everything else goes to the subclass's ``_rest``.  The
    subclass gives ``methods``, ``spec_methods`` and the hooks ``_rest``, ``_error``,
    ``_fail`` and ``_wrap``."""

    methods: dict[str, Any]
    spec_methods: frozenset[str]

    def _rest(self, doc: Any, body: bytes, texts: bool) -> Any:
        raise NotImplementedError

    def _error(self, id_json: bytes, code: int, message: str, method: str | None) -> bytes:
        raise NotImplementedError

    def _fail(self, id_json: bytes, method: str, exc: BaseException) -> bytes:
        raise NotImplementedError

    def _wrap(self, result: Any, id_json: bytes, name: str) -> Any:
        raise NotImplementedError

    def handle(self, body: bytes) -> Any:
        try:
            doc = decode_body(body)
        except RpcError as exc:
            return self._error(exc.id_json, exc.code, exc.message, None)
        if type(doc) is dict:
            ident = doc.get("id")
            kind = type(ident)
            name = doc.get("method")
            if type(name) is not str:
                name = None  # answered as an invalid request; an unhashable one is no key of spec_methods
            if (
                (name in self.spec_methods and not plain_text(body))
                or kind is float
                or (kind is str and b"\\" in body)
                or (kind is int and ident == 0 and b"-0" in body)
            ):
                return self._rest(doc, body, True)
            if name is not None and (method := self.methods.get(name)) is not None:
                # The common request: a known method, its id and params as parsed.
                try:
                    call = split_call(doc)
                except RpcError:
                    call = None  # answered by _rest, the error text made in one place
                if call is not None and (id_json := call.id_json) is not None:
                    try:
                        result = method(call.params)
                    except RpcError as exc:
                        return self._error(id_json, exc.code, exc.message, name)
                    except Exception as exc:  # a bug must answer, not kill the connection
                        return self._fail(id_json, name, exc)
                    if isinstance(result, bytes):
                        return encode_result(id_json, result)
                    return self._wrap(result, id_json, name)
        return self._rest(doc, body, False)


def _params_error(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid params: {message}")


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _params_error(f"{what} must be an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            raise _params_error(f"{what}[{k!r}] must be a string, not {type(v).__name__}")
    return value


def _check_type(params: dict[str, Any]) -> None:
    """The plugin's own ``Type`` (absent, null or ""); another is answered no-plugin."""
    kind = params.get("Type")
    if kind is None or kind == "":
        return
    if not isinstance(kind, str):
        raise _params_error('"Type" must be a string')
    raise RpcError(PLUGIN_ERROR, f"no-plugin:{kind}")


def provision_params(params: dict[str, Any]) -> tuple[bytes, dict[str, Any], dict[str, str], str | None]:
    """The checked params of an Instance.Provision: ``(type_json, spec, tags, logical_id)``,
    or the ``RpcError`` the plugin answers (its checks in its order)."""
    _check_type(params)
    type_json = EMPTY_TYPE
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
    if attachments is not None and (
        not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments)
    ):
        raise _params_error('"Spec.Attachments" must be a list of {"ID","Type"} objects or null')
    return type_json, spec, tags, logical_id


class LogicalProvision:
    """Instance.Provision with no provider to act (the logical provider): the params
    checked, a fresh ID chosen (random like InfraKit's own plugins, checked against
    every ID in the state and every provision under way), the record handed to the
    store; the answer (a ``rpc.Pending``) waits for the store to make it durable.
    ``spec_json``: the Spec's own text from the request, kept as is."""

    __slots__ = ("_getrandbits", "_proposed", "_record", "_store", "_store_error")

    def __init__(
        self, store: Any, rand: Any, proposed: set[str], store_error: type[Exception], record: Any = None
    ) -> None:
        self._store = store
        self._getrandbits = rand.getrandbits
        self._proposed = proposed
        self._store_error = store_error
        self._record = _state_py.Record if record is None else record  # the store's state's Record class

    def __call__(self, params: dict[str, Any], spec_json: bytes | None = None) -> Any:
        type_json, spec, tags, logical_id = provision_params(params)
        spec_text = spec_json if spec_json is not None else _codec_py.encode_spec(spec)
        state = self._store.state
        while True:
            instance_id = f"instance-{self._getrandbits(63)}"
            if not state.known(instance_id) and instance_id not in self._proposed:
                break
        rec = self._record(instance_id, _codec_py.encode_brief(instance_id, logical_id, tags), spec_text)
        try:
            done = self._store.provision(rec, tags)
        except self._store_error as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        # the ID is "instance-" and digits: its JSON needs no escapes
        return _pending_type(done, b'{"Type":' + type_json + b',"ID":"' + instance_id.encode() + b'"}')


class Describe:
    """Instance.DescribeInstances over a store's state: the params checked (``Type``, ``Tags`` an
    object of strings or absent, ``Properties`` true, false or absent), the answer the state's
    descriptions in their envelope; ``parts(head, descriptions, tail)`` holds an answer of
    ``big`` bytes or more, sent without copying.  A store that must catch up first (its
    ``read_barrier()``) is answered by ``after(barrier, type_json, tags, properties)``."""

    __slots__ = ("_after", "_big", "_parts", "_store")

    def __init__(self, store: Any, after: Any, big: int, parts: Any) -> None:
        self._store = store
        self._after = after
        self._big = big
        self._parts = parts

    def __call__(self, params: dict[str, Any]) -> Any:
        _check_type(params)
        type_json = EMPTY_TYPE
        tags = _string_map(params.get("Tags"), "Tags")
        properties = params.get("Properties", False)
        if properties is None:
            properties = False
        if not isinstance(properties, bool):
            raise _params_error('"Properties" must be true or false')
        store = self._store
        barrier = store.read_barrier()
        if barrier is not None:
            return self._after(barrier, type_json, tags or None, properties)
        descriptions = store.describe(tags or None, properties)
        if len(descriptions) < self._big:
            return b'{"Type":' + type_json + b',"Descriptions":' + descriptions + b"}"
        return self._parts((b'{"Type":' + type_json + b',"Descriptions":', descriptions, b"}"))


class _InstanceChange:
    """A change of one instance for the logical provider (no provider to act): the store's
    destroy or label of a checked ID, answered once the store has made it durable.
    ``unknown``: what the store raises for an ID it does not hold."""

    __slots__ = ("_store", "_store_error", "_unknown")

    def __init__(self, store: Any, store_error: type[Exception], unknown: type[Exception]) -> None:
        self._store = store
        self._store_error = store_error
        self._unknown = unknown

    def _change(self, instance_id: str, labels: dict[str, str] | None) -> Any:
        """The store's destroy (``labels`` None) or label of ``instance_id``: a ``rpc.Pending``."""
        store = self._store
        try:
            if store.state.get(instance_id) is None:
                raise self._unknown(instance_id)
            done = store.destroy(instance_id) if labels is None else store.label(instance_id, labels)
        except self._unknown:
            verb = "destroy" if labels is None else "label"
            raise RpcError(PLUGIN_ERROR, f"cannot {verb} instance {instance_id}: no such instance") from None
        except self._store_error as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        return _pending_type(done, _OK_ANSWER)


class LogicalDestroy(_InstanceChange):
    """Instance.Destroy for the logical provider: the params checked (``Type``, a non-empty
    ``Instance`` ID, ``Context`` an object or absent), then the store's destroy."""

    __slots__ = ()

    def __call__(self, params: dict[str, Any]) -> Any:
        instance_id = _change_target(params)
        context = params.get("Context")
        if context is not None and not isinstance(context, dict):
            raise _params_error('"Context" must be an object')
        return self._change(instance_id, None)


class LogicalLabel(_InstanceChange):
    """Instance.Label for the logical provider: the params checked (``Type``, a non-empty
    ``Instance`` ID, ``Labels`` an object of strings or absent), then the store's label."""

    __slots__ = ()

    def __call__(self, params: dict[str, Any]) -> Any:
        instance_id = _change_target(params)
        return self._change(instance_id, _string_map(params.get("Labels"), "Labels"))


def _change_target(params: dict[str, Any]) -> Any:
    """The checked ``Instance`` of a Destroy's or Label's params (after their ``Type``)."""
    _check_type(params)
    instance_id = params.get("Instance")
    if not isinstance(instance_id, str) or not instance_id:
        raise _params_error('"Instance" must be a non-empty instance ID string')
    return instance_id


_OK_ANSWER = b'{"Type":"","OK":true}'  # the answer of a Destroy and of a Label


class PendingCore:
    """What ``rpc.Pending`` holds (``done``, ``answer``, ``id_json``, ``method``), and its
    ``settle`` for a change that succeeded; the subclass's ``_failed`` answers the others."""

    __slots__ = ("answer", "done", "id_json", "method")

    def __init__(self, done: Any, answer: bytes, id_json: bytes | None = None, method: str | None = None) -> None:
        self.done = done
        self.answer = answer
        self.id_json = id_json
        self.method = method

    def _failed(self) -> bytes:
        raise NotImplementedError

    def settle(self) -> bytes:
        """The response, once ``done`` is: the answer, or the error the change failed with."""
        done = self.done
        if not done.cancelled() and done.exception() is None:
            return self.answer
        return self._failed()
