"""Answers ready in one loop turn leave in one write: counted with strace on the plugin."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

import impls
from plugin_proc import Plugin, spawn, wait_for

BODY = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Type":"","Properties":{}},"id":1}'
REQUEST = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


def answers(sock: socket.socket, n: int) -> bytes:
    got = b""
    while got.count(b"HTTP/1.1 200") < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        got += chunk
    return got


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("impl", impls.impl_params())
def test_pipelined_answers_leave_in_one_write(tmp_path: Path, impl: str) -> None:
    env = {"INFRAKIT_INSTANCE_NO_EXTENSIONS": "1"} if impl == "pure" else {"INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS": "1"}
    p = Plugin(tmp_path, "--fsync", "never", env=env).start()
    assert p.proc is not None
    trace = tmp_path / "trace"
    tracer = spawn(
        ["strace", "-f", "-p", str(p.proc.pid), "-e", "trace=write,writev,sendmsg", "-s", "32", "-o", str(trace)],
        stderr=subprocess.DEVNULL,
    )
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(p.socket)

    # Attached once a warm-up answer shows in the trace.
    def traced() -> bool:
        sock.sendall(REQUEST)
        answers(sock, 1)
        return trace.exists() and "HTTP/1.1 200" in trace.read_text()

    wait_for(traced, 20, "strace attached")
    before = trace.read_text().count("HTTP/1.1 200")
    sock.sendall(REQUEST * 8)  # one read holds all eight
    assert answers(sock, 8).count(b"HTTP/1.1 200") == 8
    wait_for(lambda: trace.read_text().count("HTTP/1.1 200") - before >= 8, 10, "answers traced")
    tracer.send_signal(signal.SIGINT)
    tracer.wait(10)
    lines = [ln for ln in trace.read_text().splitlines() if "HTTP/1.1 200" in ln]
    last = lines[-1]
    assert last.count("HTTP/1.1 200") == 8, last  # the eight answers in one writev
    sock.close()
    p.stop()
