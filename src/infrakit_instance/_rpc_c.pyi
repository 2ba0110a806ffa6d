"""Stub of the compiled twin of ``_rpc_py`` (same names, same behaviour)."""

from typing import Any, Final, final

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_DEPTH",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PLUGIN_ERROR",
    "Call",
    "DispatchCore",
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

PARSE_ERROR: Final[int]
INVALID_REQUEST: Final[int]
METHOD_NOT_FOUND: Final[int]
INVALID_PARAMS: Final[int]
INTERNAL_ERROR: Final[int]
PLUGIN_ERROR: Final[int]
NULL_ID: Final[bytes]
MAX_DEPTH: Final[int]

class RpcError(Exception):
    code: int
    message: str
    id_json: bytes
    def __init__(self, code: int, message: str, id_json: bytes = ...) -> None: ...

@final
class Call:
    method: str
    params: dict[str, Any]
    id_json: bytes | None
    def __init__(self, method: str, params: dict[str, Any], id_json: bytes | None) -> None: ...
    __hash__: None  # type: ignore[assignment]

def compact(text: bytes) -> bytes: ...
def plain_text(body: bytes) -> bool: ...
def scan(body: bytes) -> tuple[int, list[list[int]]]: ...
def decode_body(body: bytes) -> Any: ...
def encode_id(value: Any) -> bytes: ...
def split_call(doc: Any) -> Call: ...
def encode_result(id_json: bytes, result: bytes) -> bytes: ...
def encode_error(id_json: bytes, code: int, message: str) -> bytes: ...

QUICK_DEPTH: Final[int]

def quick(body: bytes, entries: tuple[tuple[bytes, bytes, bool], ...]) -> bytes | None: ...

EMPTY_TYPE: Final[bytes]

def use_pending(pending: Any) -> None: ...

class DispatchCore:
    methods: dict[str, Any]
    spec_methods: frozenset[str]
    def _rest(self, doc: Any, body: bytes, texts: bool) -> Any: ...
    def _error(self, id_json: bytes, code: int, message: str, method: str | None) -> bytes: ...
    def _fail(self, id_json: bytes, method: str, exc: BaseException) -> bytes: ...
    def _wrap(self, result: Any, id_json: bytes, name: str) -> Any: ...
    def handle(self, body: bytes) -> Any: ...

def provision_params(params: dict[str, Any]) -> tuple[bytes, dict[str, Any], dict[str, str], str | None]: ...

class PendingCore:
    done: Any
    answer: bytes
    id_json: bytes | None
    method: str | None
    def __init__(self, done: Any, answer: bytes, id_json: bytes | None = None, method: str | None = None) -> None: ...
    def _failed(self) -> bytes: ...
    def settle(self) -> bytes: ...

@final
class LogicalProvision:
    def __init__(
        self, store: Any, rand: Any, proposed: set[str], store_error: type[Exception], record: Any = None
    ) -> None: ...
    def __call__(self, params: dict[str, Any], spec_json: bytes | None = None) -> Any: ...

def scan_provision(body: bytes) -> tuple[bytes, dict[str, str], bytes, bytes, bytes] | None: ...
