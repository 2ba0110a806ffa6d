"""The JSON-RPC 2.0 envelope (pure-Python twin of ``_rpc_c``).

Splits a request body into calls and builds response bytes around result
bytes that are already encoded, so a cached answer is never decoded and
encoded again.  The request ``id`` is carried as the exact JSON text the
response must echo.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PLUGIN_ERROR",
    "Call",
    "RpcError",
    "decode_body",
    "encode_error",
    "encode_id",
    "encode_result",
    "split_call",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PLUGIN_ERROR = -32000

NULL_ID = b"null"


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


def decode_body(body: bytes) -> Any:
    """Parse a request body, or raise ``RpcError(PARSE_ERROR)`` saying where it broke."""
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
