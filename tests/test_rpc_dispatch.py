"""The dispatcher's answers for single requests (the inline common path) and their edge cases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import impls
from infrakit_instance.rpc import Dispatcher, Parts, Pending
from plugin_proc import Plugin


class Boom(Exception):
    pass


def methods() -> dict[str, Any]:
    from infrakit_instance._impl import rpc

    def fails(params: dict[str, Any]) -> bytes:
        raise rpc.RpcError(rpc.PLUGIN_ERROR, "no such thing")

    def bug(params: dict[str, Any]) -> bytes:
        raise Boom("oops")

    return {
        "Echo": lambda params: json.dumps(params, separators=(",", ":")).encode(),
        "Fails": fails,
        "Bug": bug,
        "Big": lambda params: Parts((b'{"A":', b"[1,2]", b"}")),
    }


def answer(body: bytes) -> Any:
    out = Dispatcher(methods()).handle(body)
    assert isinstance(out, bytes), out
    return json.loads(out)


def test_known_method_echoes_id_and_result() -> None:
    assert answer(b'{"jsonrpc":"2.0","method":"Echo","params":{"a":1},"id":"x"}') == {
        "jsonrpc": "2.0",
        "result": {"a": 1},
        "id": "x",
    }
    out = Dispatcher(methods()).handle(b'{"jsonrpc":"2.0","method":"Echo","params":[{"b":2}],"id":7}')
    assert out == b'{"jsonrpc":"2.0","result":{"b":2},"id":7}'


@pytest.mark.parametrize("method", [b"[1]", b"{}", b"1", b"null", b"true"])
def test_a_method_that_is_no_string_is_an_invalid_request(method: bytes) -> None:
    body = b'{"jsonrpc":"2.0","method":' + method + b',"id":3}'
    doc = answer(body)
    assert doc["error"]["code"] == -32600 and doc["id"] == 3, doc
    batch = Dispatcher(methods()).handle(b"[" + body + b"]")
    assert isinstance(batch, bytes)
    assert json.loads(batch)[0]["error"]["code"] == -32600


def test_method_errors_carry_the_id() -> None:
    doc = answer(b'{"jsonrpc":"2.0","method":"Fails","id":1}')
    assert doc["error"] == {"code": -32000, "message": "no such thing", "data": None} and doc["id"] == 1
    doc = answer(b'{"jsonrpc":"2.0","method":"Bug","id":"b"}')
    assert doc["error"]["code"] == -32603 and "Boom" in doc["error"]["message"] and doc["id"] == "b"


def test_known_method_with_a_bad_envelope() -> None:
    doc = answer(b'{"jsonrpc":"1.0","method":"Echo","id":2}')
    assert doc["error"]["code"] == -32600 and doc["id"] == 2
    doc = answer(b'{"jsonrpc":"2.0","method":"Echo","params":5,"id":2}')
    assert doc["error"]["code"] == -32602 and doc["id"] == 2


def test_notifications_get_no_answer() -> None:
    d = Dispatcher(methods())
    assert d.handle(b'{"jsonrpc":"2.0","method":"Echo"}') is None
    assert d.handle(b'{"jsonrpc":"2.0","method":"Fails"}') is None
    assert d.handle(b'{"jsonrpc":"2.0","method":"Big"}') is None


def test_parts_and_pending_are_put_in_their_envelope() -> None:
    big = Dispatcher(methods()).handle(b'{"jsonrpc":"2.0","method":"Big","id":9}')
    assert isinstance(big, Parts)
    assert big.join() == b'{"jsonrpc":"2.0","result":{"A":[1,2]},"id":9}'

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()
        own = Pending(done, b'{"OK":true}')
        d = Dispatcher({"Change": lambda params: own})
        out = d.handle(b'{"jsonrpc":"2.0","method":"Change","id":"c"}')
        assert out is own and own.id_json == b'"c"' and own.method == "Change"
        done.set_result(None)
        assert own.settle() == b'{"jsonrpc":"2.0","result":{"OK":true},"id":"c"}'
        failed = asyncio.get_running_loop().create_future()
        other = Pending(failed, b'{"OK":true}')
        out = Dispatcher({"Change": lambda params: other}).handle(b'{"jsonrpc":"2.0","method":"Change","id":4}')
        assert out is other
        failed.set_exception(OSError("disk full"))
        assert json.loads(other.settle()) == {
            "jsonrpc": "2.0",
            "error": {"code": -32000, "message": "disk full", "data": None},
            "id": 4,
        }

    asyncio.run(main())


@pytest.mark.parametrize("impl", impls.impl_params())
def test_plugin_answers_an_unhashable_method_and_keeps_serving(tmp_path: Path, impl: str) -> None:
    env = {"INFRAKIT_INSTANCE_NO_EXTENSIONS": "1"} if impl == "pure" else {"INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS": "1"}
    p = Plugin(tmp_path, "--fsync", "never", env=env).start()
    with p.client() as c:
        for method in (b"[1]", b'{"a":1}'):
            c.post_bytes(b'{"jsonrpc":"2.0","method":' + method + b',"params":{},"id":5}')
            status, _, payload = c.read_response()
            assert status == 200
            doc = json.loads(payload)
            assert doc["error"]["code"] == -32600 and doc["id"] == 5, doc
        assert c.call("Instance.Validate", {"Type": "", "Properties": {}}) == {"Type": "", "OK": True}
    assert p.stop() == 0
