"""The JSON-RPC 2.0 envelope, under both implementations (the ``impl`` fixture)."""

from __future__ import annotations

import json
from typing import Any

import pytest


def call_of(impl: Any, body: bytes) -> Any:
    return impl.rpc.split_call(impl.rpc.decode_body(body))


def rpc_error(impl: Any, body: bytes) -> tuple[int, str, bytes]:
    with pytest.raises(impl.rpc.RpcError) as info:
        call_of(impl, body)
    return info.value.code, info.value.message, info.value.id_json


def test_error_codes(impl: Any) -> None:
    rpc = impl.rpc
    assert (rpc.PARSE_ERROR, rpc.INVALID_REQUEST, rpc.METHOD_NOT_FOUND) == (-32700, -32600, -32601)
    assert (rpc.INVALID_PARAMS, rpc.INTERNAL_ERROR, rpc.PLUGIN_ERROR) == (-32602, -32603, -32000)


def test_a_go_client_call(impl: Any) -> None:
    body = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Type":"","Properties":{"a":[1,2]}},"id":42}'
    call = call_of(impl, body)
    assert isinstance(call, impl.rpc.Call)
    assert (call.method, call.params, call.id_json) == (
        "Instance.Validate",
        {"Type": "", "Properties": {"a": [1, 2]}},
        b"42",
    )
    assert repr(call) == "Call('Instance.Validate', {'Type': '', 'Properties': {'a': [1, 2]}}, b'42')"


# -- ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "id_text",
    [
        b"0",
        b"7848944122355444675",  # a Go client's id: above 2**53
        b"9007199254740993",  # 2**53 + 1, which a float would round
        b"9223372036854775807",  # 2**63 - 1
        b"18446744073709551615",  # 2**64 - 1
        b"18446744073709551617",  # 2**64 + 1: beyond orjson's integers
        b"-9223372036854775809",  # below int64
        b"123456789012345678901234567890123456789012345678901234567890",
        b"-1",
        b'"abc"',
        b'""',
        b'"caf\xc3\xa9"',
        b"null",
    ],
)
def test_ids_are_echoed_exactly(impl: Any, id_text: bytes) -> None:
    call = call_of(impl, b'{"jsonrpc":"2.0","method":"m","id":' + id_text + b"}")
    assert call.id_json == id_text


def test_id_with_escapes_round_trips(impl: Any) -> None:
    call = call_of(impl, b'{"jsonrpc":"2.0","method":"m","id":"a\\"b\\\\c\\n\\u00e9"}')
    assert json.loads(call.id_json) == 'a"b\\c\n\u00e9'


def test_float_id_is_kept_as_a_number(impl: Any) -> None:
    assert call_of(impl, b'{"jsonrpc":"2.0","method":"m","id":1.5}').id_json == b"1.5"


def test_missing_id_is_a_notification(impl: Any) -> None:
    call = call_of(impl, b'{"jsonrpc":"2.0","method":"m"}')
    assert call.id_json is None


@pytest.mark.parametrize("id_text", [b"true", b"false", b"{}", b"[1]"])
def test_invalid_ids(impl: Any, id_text: bytes) -> None:
    body = b'{"jsonrpc":"2.0","method":"m","id":' + id_text + b"}"
    assert rpc_error(impl, body) == (-32600, "invalid request: id must be a string, a number or null", b"null")


@pytest.mark.parametrize(
    "value, text",
    [
        (0, b"0"),
        (2**63, b"9223372036854775808"),
        (-(2**64) - 5, b"-18446744073709551621"),
        ("x", b'"x"'),
        (None, b"null"),
        (2.5, b"2.5"),
    ],
)
def test_encode_id(impl: Any, value: Any, text: bytes) -> None:
    assert impl.rpc.encode_id(value) == text


def test_encode_id_of_a_lone_surrogate(impl: Any) -> None:
    assert impl.rpc.encode_id("\ud800") == b'"\\ud800"'


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"nope", b'{"a":1,}', b"\xff"])
def test_parse_error(impl: Any, body: bytes) -> None:
    with pytest.raises(impl.rpc.RpcError) as info:
        impl.rpc.decode_body(body)
    err = info.value
    assert (err.code, err.id_json) == (-32700, b"null")
    assert err.message.startswith("parse error: request body is not valid JSON: ")
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize(
    "body, message, id_json",
    [
        (b"[1]", "invalid request: expected a JSON-RPC request object", None),
        (b'"x"', "invalid request: expected a JSON-RPC request object", None),
        (b'{"method":"m","id":3}', 'invalid request: "jsonrpc" must be exactly "2.0"', b"3"),
        (b'{"jsonrpc":"1.0","method":"m","id":"s"}', 'invalid request: "jsonrpc" must be exactly "2.0"', b'"s"'),
        (b'{"jsonrpc":2.0,"method":"m"}', 'invalid request: "jsonrpc" must be exactly "2.0"', b"null"),
        (b'{"jsonrpc":"2.0","id":4}', 'invalid request: "method" must be a string', b"4"),
        (b'{"jsonrpc":"2.0","method":7,"id":4}', 'invalid request: "method" must be a string', b"4"),
    ],
)
def test_invalid_request(impl: Any, body: bytes, message: str, id_json: bytes | None) -> None:
    doc = impl.rpc.decode_body(body)
    with pytest.raises(impl.rpc.RpcError) as info:
        impl.rpc.split_call(doc[0] if body == b"[1]" else doc)
    assert (info.value.code, info.value.message, info.value.id_json) == (-32600, message, id_json or b"null")


@pytest.mark.parametrize(
    "params, message",
    [
        (b'"x"', "invalid params: expected an object"),
        (b"3", "invalid params: expected an object"),
        (b"true", "invalid params: expected an object"),
        (b"[1]", "invalid params: expected an object (or an array holding one object)"),
        (b"[{}, {}]", "invalid params: expected an object (or an array holding one object)"),
    ],
)
def test_invalid_params(impl: Any, params: bytes, message: str) -> None:
    body = b'{"jsonrpc":"2.0","method":"m","params":' + params + b',"id":9}'
    assert rpc_error(impl, body) == (-32602, message, b"9")


@pytest.mark.parametrize(
    "params, expected",
    [
        (b'{"Type":"x"}', {"Type": "x"}),
        (b'[{"Type":"x"}]', {"Type": "x"}),
        (b"[]", {}),
        (b"null", {}),
        (None, {}),
        (b"{}", {}),
    ],
)
def test_params_forms(impl: Any, params: bytes | None, expected: dict[str, Any]) -> None:
    body = b'{"jsonrpc":"2.0","method":"m"' + (b"" if params is None else b',"params":' + params) + b',"id":1}'
    assert call_of(impl, body).params == expected


def test_batch_keeps_big_ids(impl: Any) -> None:
    doc = impl.rpc.decode_body(
        b'[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":36893488147419103232}]'
    )
    assert [impl.rpc.split_call(d).id_json for d in doc] == [b"1", b"36893488147419103232"]


def test_split_call_on_a_dict_subclass(impl: Any) -> None:
    class Doc(dict):  # type: ignore[type-arg]
        pass

    call = impl.rpc.split_call(Doc(jsonrpc="2.0", method="m", params=[{"a": 1}], id=5))
    assert (call.method, call.params, call.id_json) == ("m", {"a": 1}, b"5")


# -- answers ---------------------------------------------------------------------------


def test_encode_result(impl: Any) -> None:
    assert impl.rpc.encode_result(b"7848944122355444675", b'{"OK":true}') == (
        b'{"jsonrpc":"2.0","result":{"OK":true},"id":7848944122355444675}'
    )


@pytest.mark.parametrize(
    "code_name",
    ["PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR", "PLUGIN_ERROR"],
)
def test_encode_error_for_every_code(impl: Any, code_name: str) -> None:
    code = getattr(impl.rpc, code_name)
    got = impl.rpc.encode_error(b'"id"', code, f"{code_name} happened")
    assert got == b'{"jsonrpc":"2.0","error":{"code":%d,"message":"%s happened","data":null},"id":"id"}' % (
        code,
        code_name.encode(),
    )


@pytest.mark.parametrize(
    "message", ['no such instance: "i-1"', "tab\there\nnewline", "caf\u00e9 \u2603", "back\\slash", "\x00\x1f\x7f"]
)
def test_encode_error_escapes_messages(impl: Any, message: str) -> None:
    doc = json.loads(impl.rpc.encode_error(b"1", -32000, message))
    assert doc == {"jsonrpc": "2.0", "error": {"code": -32000, "message": message, "data": None}, "id": 1}


def test_rpc_error_object(impl: Any) -> None:
    err = impl.rpc.RpcError(-32000, "unknown instance")
    assert (err.code, err.message, err.id_json, err.args) == (
        -32000,
        "unknown instance",
        b"null",
        (-32000, "unknown instance"),
    )
    assert repr(err) == "RpcError(-32000, 'unknown instance', b'null')"
    assert err == impl.rpc.RpcError(-32000, "unknown instance", b"null")
    assert err != impl.rpc.RpcError(-32000, "unknown instance", b"1")
    assert hash(err) == hash(impl.rpc.RpcError(-32000, "unknown instance"))
    try:
        raise impl.rpc.RpcError(-32602, "bad", b"3")
    except impl.rpc.RpcError as exc:
        assert exc.id_json == b"3"


def test_call_object(impl: Any) -> None:
    call = impl.rpc.Call("m", {"a": 1}, None)
    assert call == impl.rpc.Call("m", {"a": 1}, None)
    assert call != impl.rpc.Call("m", {"a": 1}, b"1")
    assert call != ("m", {"a": 1}, None)
    with pytest.raises(TypeError):
        hash(call)
