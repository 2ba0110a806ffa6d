"""Start the real ``infrakit-instance`` console script and talk to it like InfraKit does."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: Captured client traffic, kept with the tests (see wire/README.md).
WIRE = Path(__file__).resolve().parent / "wire"

_ids = itertools.count(1)

#: Every plugin process a test started and has not seen exit: the ``reap_plugins``
#: fixture (conftest.py) kills what is left of them after each test, whatever its outcome.
LIVE: set[subprocess.Popen[bytes]] = set()


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a process that :func:`reap` will kill if the test leaves it running."""
    proc = subprocess.Popen(cmd, **kwargs)
    LIVE.add(proc)
    return proc


def reap() -> list[str]:
    """Kill (SIGKILL, by PID) every process :func:`spawn` started that still runs; their command lines."""
    leaked = []
    for proc in list(LIVE):
        if proc.poll() is None:
            leaked.append(" ".join(map(str, proc.args)))  # type: ignore[arg-type]
            proc.kill()
        proc.wait()
        LIVE.discard(proc)
    return leaked


def console_script() -> str:
    exe = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or shutil.which("infrakit-instance")
    assert exe, "the infrakit-instance console script is not installed"
    return exe


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Plugin:
    """A plugin process on a temporary socket and state file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, name: str = "instance-py") -> None:
        self.tmp = tmp
        self.socket = str(tmp / "plugins" / name)
        self.state = str(tmp / "state.json")
        self.args = list(args)
        self.env = {**os.environ, "INFRAKIT_HOME": str(tmp / "home"), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "plugin.log"

    def cmdline(self) -> list[str]:
        args = self.args
        cmd = [console_script()]
        if not any(a.startswith("--listen") for a in args):
            cmd += ["--listen", "unix://" + self.socket]
        if not any(a.startswith("--state") for a in args):
            cmd += ["--state", self.state]
        return cmd + args

    def start(self, wait: bool = True) -> Plugin:
        self._logf = open(self.log, "ab")
        self.proc = spawn(self.cmdline(), env=self.env, stdout=self._logf, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: self._ready(), 20, f"plugin socket {self.socket} (log: {self.output()})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"plugin exited with {self.proc.returncode}: {self.output()}")
        if not os.path.exists(self.socket):
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
            return True
        except OSError:
            return False

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._logf.close()
        return code

    def client(self) -> Client:
        return Client(self.socket)

    def state_doc(self) -> Any:
        with open(self.state) as f:
            return json.load(f)


class Client:
    """A keep-alive HTTP/1.1 client on a unix socket, sending what Go's client sends."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def post_bytes(
        self, body: bytes, headers: dict[str, str] | None = None, method: str = "POST", path: str = "/"
    ) -> None:
        hdrs = {
            "Host": "h",
            "User-Agent": "Go-http-client/1.1",
            "Content-Length": str(len(body)),
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip",
        }
        hdrs.update(headers or {})
        head = (
            f"{method} {path} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None)
            + "\r\n"
        )
        self.send(head.encode() + body)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("connection closed before a response")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed inside a response body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def call_raw(self, method: str, params: Any = None, id: Any = "auto") -> Any:
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {} if params is None else params}
        if id == "auto":
            id = next(_ids)
        if id is not None:
            req["id"] = id
        self.post_bytes(json.dumps(req, separators=(",", ":")).encode())
        status, _, body = self.read_response()
        assert status == 200, (status, body)
        return json.loads(body) if body else None

    def call(self, method: str, params: Any = None) -> Any:
        answer = self.call_raw(method, params)
        assert "error" not in answer, answer
        return answer["result"]

    def error(self, method: str, params: Any = None) -> dict[str, Any]:
        answer = self.call_raw(method, params)
        assert "result" not in answer, answer
        err: dict[str, Any] = answer["error"]
        return err


def provision_concurrently(plugin: Plugin, clients: int, each: int) -> dict[int, list[str]]:
    """``clients`` keep-alive clients at once, each provisioning ``each`` instances of group
    ``conc`` tagged ``worker=N``: the IDs each got, in order.  Any client's error is raised."""
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with plugin.client() as c:
                results[n] = [
                    c.call("Instance.Provision", {"Spec": spec("conc", worker=str(n))})["ID"] for _ in range(each)
                ]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def spec(group: str = "workers", **extra_tags: str) -> dict[str, Any]:
    return {
        "Properties": {"key": "value", "n": 42},
        "Tags": {"infrakit.group": group, "infrakit.config_sha": "abc123", **extra_tags},
        "Init": "#!/bin/sh\necho hello\n",
        "LogicalID": None,
        "Attachments": None,
    }


def wire(name: str) -> tuple[bytes, bytes]:
    """The exact request bytes of a captured Go client call, and the reference reply body."""
    text = (WIRE / f"{name}.txt").read_bytes()
    _, rest = text.split(b"\n", 1)
    request, reply = rest.split(b"\n### reference plugin response", 1)
    reply_body = reply.split(b"\r\n\r\n", 1)[1].rstrip(b"\n")
    return request, reply_body


def with_body(request: bytes, body: bytes) -> bytes:
    """A captured request with its body replaced (Content-Length fixed)."""
    head, _ = request.split(b"\r\n\r\n", 1)
    lines = [
        ln if not ln.lower().startswith(b"content-length:") else b"Content-Length: %d" % len(body)
        for ln in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def rpc(path: str, method: str, params: Any) -> Any:
    """One JSON-RPC call on a fresh connection: the decoded answer."""
    with Client(path) as c:
        return c.call_raw(method, params)


def start_plugin(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """The console script on ``tmp/plugin.sock`` and ``tmp/state.json`` (log ``tmp/plugin.log``),
    once it answers a handshake."""
    sock = str(tmp / "plugin.sock")
    log = open(tmp / "plugin.log", "ab")  # noqa: SIM115 - the process writes it
    cmd = [console_script(), "--listen", f"unix://{sock}", "--state", str(tmp / "state.json"), "--log", "5", *args]
    proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"plugin exited with {proc.returncode}:\n{(tmp / 'plugin.log').read_text()}")
        try:
            return "result" in rpc(sock, "Plugin.Implements", {})
        except OSError:
            return False

    wait_for(up, 30, "the plugin to answer")
    return proc, sock


def stop_plugin(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
