"""Fixed answers on the per-read path: a server started in this process, on a real socket and
its own event loop, answers handshakes and Validates of the logical provider without its
dispatcher, with the dispatcher's own bytes, in request order among the answers it does not
decide; the TCP edge and debug logging keep every request on the dispatcher.  (This process's
implementation, compiled or pure, is the one tested: CI runs the suite in both installs.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from infrakit_instance import IMPLEMENTATION
from infrakit_instance._impl import http
from infrakit_instance.server import Config, Server, new_event_loop

HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def call(method: str, params: Any, ident: int) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": ident}).encode()
    return HEAD % len(body) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def serve(tmp_path: Path, listen: str, test: Callable[[Server, list[bytes]], Awaitable[None]]) -> None:
    """Run ``test`` against a started server whose dispatcher records the bodies it handles."""
    loop = new_event_loop()
    server = Server(Config(listen=listen, state=str(tmp_path / "state.json"), plugins_dir=str(tmp_path)))
    handled: list[bytes] = []
    handle = server.dispatcher.handle

    def recording(body: bytes) -> Any:
        handled.append(body)
        return handle(body)

    server.dispatcher.handle = recording  # type: ignore[method-assign]

    async def main() -> None:
        await server.start()
        try:
            await asyncio.wait_for(test(server, handled), 20)
        finally:
            await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_fixed_answers_skip_the_dispatcher_and_keep_their_place(tmp_path: Path) -> None:
    sock = tmp_path / "p.sock"
    requests = [
        call("Instance.Validate", {"Type": "", "Properties": {"a": [1, 2.5, None]}}, 1),
        call("Instance.DescribeInstances", {"Type": ""}, 2),
        call("Handshake.Hello", {}, 3),
        call("Instance.Validate", {"Type": "other"}, 4),
        call("Plugin.Implements", None, 5),
        call("Instance.Validate", {"Type": None}, 6),
    ]

    async def test(server: Server, handled: list[bytes]) -> None:
        assert server.quick is not None
        reader, writer = await asyncio.open_unix_connection(str(sock))
        # One at a time, then all six pipelined in one write.
        for rounds in ([[r] for r in requests], [requests]):
            for batch in rounds:
                writer.write(b"".join(batch))
                answers = [await read_answer(reader) for _ in batch]
                for req, (head, body) in zip(batch, answers, strict=True):
                    sent = req.split(b"\r\n\r\n", 1)[1]
                    want = handle_plain(server, sent)
                    assert head + body == want, (sent, body)
        # Only the Describe and the Validate of another plugin's Type reached the dispatcher.
        kinds = [json.loads(b)["method"] for b in handled]
        assert kinds == ["Instance.DescribeInstances", "Instance.Validate"] * 2
        assert all(json.loads(b)["params"]["Type"] != "" for b in handled if b"Validate" in b)
        writer.close()

    serve(tmp_path, f"unix://{sock}", test)


def handle_plain(server: Server, body: bytes) -> bytes:
    """The answer the dispatcher gives, as the connection sends it (called outside the recording)."""
    answer = type(server.dispatcher).handle(server.dispatcher, body)
    assert isinstance(answer, bytes)
    return bytes(http.build_response(200, answer, True))


def test_the_tcp_edge_checks_every_request(tmp_path: Path) -> None:
    async def test(server: Server, handled: list[bytes]) -> None:
        assert server.quick is None
        port = int(server._port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        validate = call("Instance.Validate", {"Type": ""}, 1)
        writer.write(validate)  # Host: h is not this plugin's address
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 403 ") and b"Host" in body
        writer.write(validate.replace(b"Host: h", b"Host: 127.0.0.1:%d" % port))
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["result"] == {"Type": "", "OK": True}
        assert len(handled) == 1
        writer.close()

    serve(tmp_path, "tcp://127.0.0.1:0", test)


def test_debug_logging_sees_every_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sock = tmp_path / "p.sock"

    async def test(server: Server, handled: list[bytes]) -> None:
        assert server.quick is None
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(call("Instance.Validate", {"Type": ""}, 7))
        _, body = await read_answer(reader)
        assert json.loads(body)["id"] == 7
        assert len(handled) == 1
        writer.close()

    with caplog.at_level(logging.DEBUG, logger="infrakit_instance"):
        serve(tmp_path, f"unix://{sock}", test)
    assert any("Instance.Validate" in r.getMessage() for r in caplog.records)


def test_the_implementation_under_test_is_the_one_installed() -> None:
    from infrakit_instance import server

    base = server.Connection.__mro__[1]
    assert base.__module__ == (
        "infrakit_instance._conn_c" if IMPLEMENTATION == "compiled" else "infrakit_instance._conn_py"
    )


def test_info_pages_by_path_and_by_absolute_url(tmp_path: Path) -> None:
    sock = tmp_path / "p.sock"
    validate = call("Instance.Validate", {"Type": ""}, 1)

    async def test(server: Server, handled: list[bytes]) -> None:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        for target in (b"/info/api.json", b"http://unix/info/api.json", b"http://h:1/x/info/api.json"):
            writer.write(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 "), target
            assert {"Name": "Instance", "Version": "0.6.1"} in json.loads(body)["Implements"], target
        # "/info/" that neither starts the path nor follows an absolute URL's scheme is a JSON-RPC
        # request, answered without the dispatcher when it is a fixed answer, by it otherwise.
        for target in (b"/x/info/", b"/", b"/info", b"http:/info/"):
            writer.write(validate.replace(b"POST / ", b"POST %s " % target, 1))
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["result"] == {"Type": "", "OK": True}
            writer.write(validate.replace(b"POST / ", b"GET %s " % target, 1))
            head, _ = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 405 "), target
        assert handled == []
        writer.close()

    serve(tmp_path, f"unix://{sock}", test)
