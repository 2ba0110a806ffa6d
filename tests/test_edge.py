"""Bounded resources and a safe edge, against the real console script, compiled and pure.

Hostile traffic goes to the unix socket or loopback only, bounded in count and time.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import impls
from plugin_proc import Client, Plugin, console_script, spawn, wait_for

BUILDS = {"compiled": {"INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS": "1"}, "pure": {"INFRAKIT_INSTANCE_NO_EXTENSIONS": "1"}}


@pytest.fixture(params=impls.impl_params())
def build(request: pytest.FixtureRequest) -> dict[str, str]:
    return BUILDS[request.param]


def start(tmp: Path, build: dict[str, str], *args: str) -> Plugin:
    return Plugin(tmp, *args, env=build).start()


def raw_post(body: bytes, headers: str = "") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        + headers.encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def call_text(c: Client, body: bytes) -> bytes:
    c.send(raw_post(body))
    status, _, answer = c.read_response()
    assert status == 200, (status, answer)
    return answer


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def unix(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


# -- 1. every connection makes progress or is closed -------------------------------------


def test_partial_requests_time_out(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--request-timeout", "1", "--idle-timeout", "120")
    held = []
    # A stalled request line, unterminated headers, a partial body, an open chunked body:
    for partial in (
        b"POST / HT",
        b"POST / HTTP/1.1\r\nHost: h\r\nX-a: 1\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
    ):
        s = unix(p.socket)
        s.sendall(partial)
        held.append(s)
    begun = time.monotonic()
    for s in held:
        data = read_all(s, 10)
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
        assert b"within 1 s (--request-timeout)" in data
    assert time.monotonic() - begun < 8
    # A slowloris that keeps sending a byte is cut as well: the clock runs from the first byte.
    s = unix(p.socket)
    s.sendall(b"P")
    deadline = time.monotonic() + 10
    got = b""
    s.settimeout(0.2)
    while time.monotonic() < deadline and not got:
        try:
            s.sendall(b"O")
            got = s.recv(4096)
        except (TimeoutError, BlockingIOError):
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    assert got.startswith(b"HTTP/1.1 408"), got
    assert "error" not in p.client().call_raw("Plugin.Implements")


def test_slow_body_is_cut_by_the_minimum_rate(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--request-timeout", "60", "--min-body-rate", "5000")
    s = unix(p.socket)
    s.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    begun = time.monotonic()
    s.settimeout(0.25)
    got = b""
    while not got and time.monotonic() - begun < 20:
        try:
            s.sendall(b" " * 50)  # 200 bytes/s
            got = s.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    assert got.startswith(b"HTTP/1.1 408"), got
    assert b"below the minimum of 5000 bytes/s (--min-body-rate)" in got
    assert time.monotonic() - begun < 15  # long before the 60 s request timeout


def test_max_connections_pauses_accepting(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--max-connections", "3")
    # The readiness probe's connection has closed by now; wait until it is counted out.
    clients = [p.client() for _ in range(3)]
    for c in clients:
        assert "error" not in c.call_raw("Plugin.Implements")
    extra = [Client(p.socket, timeout=1.0) for _ in range(2)]  # queued in the backlog
    extra[0].post_bytes(b'{"jsonrpc":"2.0","method":"Plugin.Implements","id":1}')
    with pytest.raises(TimeoutError):
        extra[0].read_response()
    clients[0].close()
    extra[0].sock.settimeout(10)
    status, _, body = extra[0].read_response()
    assert status == 200 and b"Instance" in body
    wait_for(lambda: "not accepting" in p.output(), 10, "the log line")
    # Once per episode: each pause is logged once, however many clients wait meanwhile.
    full = p.output().count("(--max-connections): not accepting")
    below = p.output().count("below --max-connections again")
    assert below >= 1 and full - below in (0, 1) and full <= 3


def test_a_client_that_reads_no_answers_is_closed(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--request-timeout", "1")
    c = p.client()
    for i in range(100):
        c.call("Instance.Provision", {"Spec": {"Tags": {"g": "w"}, "Properties": {"pad": "x" * 2000, "i": i}}})
    s = socket.socket(socket.AF_UNIX)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(p.socket)
    body = b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Properties":true},"id":1}'
    s.sendall(raw_post(body) * 40)  # about 8 MB of answers, never read
    wait_for(lambda: "read no answer for 1 s" in p.output(), 15, "the stalled reader to be closed")
    got = read_all(s, 10)
    assert len(got) < 40 * 200_000  # cut short, not all answered
    assert "error" not in p.client().call_raw("Plugin.Implements")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LimitedPlugin(Plugin):
    """The plugin under a hard limit on open files."""

    def cmdline(self) -> list[str]:
        return ["prlimit", "--nofile=40:40", "--", *super().cmdline()]


def test_descriptor_exhaustion_is_logged_and_survived(tmp_path: Path, build: dict[str, str]) -> None:
    p = LimitedPlugin(tmp_path, env=build).start()
    assert p.proc is not None
    conns = []
    for _ in range(60):
        s = unix(p.socket)
        conns.append(s)
    wait_for(lambda: "Too many open files" in p.output(), 10, "the descriptor warning")
    before, logged = cpu_seconds(p.proc.pid), p.output().count("cannot accept a connection")
    time.sleep(1.5)  # measuring: the plugin must not spin, nor log each retry, while it cannot accept
    assert cpu_seconds(p.proc.pid) - before < 0.5
    # (the readiness probe's late close may end one episode and a new one begin)
    assert p.output().count("cannot accept a connection") - logged <= 1
    for s in conns:
        s.close()
    c = Client(p.socket, timeout=10)
    assert "error" not in c.call_raw("Plugin.Implements")
    wait_for(lambda: "accepting connections again" in p.output(), 10, "the recovery line")


# -- 2. memory is bounded by configuration -----------------------------------------------


def test_batch_limits(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--max-batch", "5", "--max-batch-bytes", "3000")
    c = p.client()
    for i in range(10):
        c.call("Instance.Provision", {"Spec": {"Tags": {"g": "w"}, "Properties": {"pad": "x" * 100, "i": i}}})
    one = {"jsonrpc": "2.0", "method": "Instance.DescribeInstances", "params": {"Properties": True}}
    too_many = [dict(one, id=i) for i in range(6)]
    answer = json.loads(call_text(c, json.dumps(too_many).encode()))
    assert answer["error"]["code"] == -32600
    assert "batch of 6 requests is over the limit of 5 requests per batch (--max-batch)" in answer["error"]["message"]
    answers = json.loads(call_text(c, json.dumps([dict(one, id=i) for i in range(5)]).encode()))
    assert [a["id"] for a in answers] == [0, 1, 2, 3, 4]
    assert "result" in answers[0] and len(answers[0]["result"]["Descriptions"]) == 10
    cut = [a for a in answers if "error" in a]
    assert cut and all(a["error"]["code"] == -32000 for a in cut)
    assert "over the limit of 3000 bytes (--max-batch-bytes)" in cut[0]["error"]["message"]


def test_buffered_request_bytes_are_bounded(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--max-buffered", "100000", "--max-body", "1000000")
    a = unix(p.socket)
    a.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 900000\r\n\r\n" + b" " * 90000)
    wait_for(lambda: True, 1)
    b = unix(p.socket)
    b.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 900000\r\n\r\n")
    for _ in range(10):
        try:
            b.sendall(b" " * 5000)
        except (BrokenPipeError, ConnectionResetError):
            break
    data = read_all(b, 10)
    assert data.startswith(b"HTTP/1.1 503"), data
    assert b"more than 100000 bytes of unfinished requests (--max-buffered)" in data
    a.close()
    assert "error" not in p.client().call_raw("Plugin.Implements")


def test_describe_cache_is_bounded_lru() -> None:
    from infrakit_instance.state import _AnswerCache, set_cache_bytes

    old = set_cache_bytes(100)
    try:
        cache = _AnswerCache()
        cache["a"] = b"x" * 40
        cache["b"] = b"y" * 40
        assert cache.get("a") is not None  # a is now the most recently used
        cache["c"] = b"z" * 40
        assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
        assert cache.size == 80
        cache["big"] = b"w" * 101
        assert cache.get("big") is None and cache.size <= 100
    finally:
        set_cache_bytes(old)


# -- 3. every request gets an answer; nesting; exact ids and numbers -------------------------


def test_deep_nesting_is_an_answer_with_the_depth(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build)
    c = p.client()
    deep = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Properties":' + b"[" * 1000
    deep += b"]" * 1000 + b'},"id":1.50}'
    spec = b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Properties":'
    spec += b'{"a":' * 300 + b"1" + b"}" * 300 + b'}},"id":123456789012345678901234567890}'
    plain = b'{"jsonrpc":"2.0","method":"Plugin.Implements","id":7}'
    c.send(raw_post(deep) + raw_post(spec) + raw_post(plain))  # pipelined: every one is answered
    answers = [c.read_response()[2] for _ in range(3)]
    assert answers[0].endswith(b',"id":1.50}')
    err = json.loads(answers[0])["error"]
    assert err["code"] == -32602 and "nests 1002 levels deep; at most 128 are allowed" in err["message"]
    assert answers[1].endswith(b',"id":123456789012345678901234567890}')
    err = json.loads(answers[1])["error"]
    assert err["code"] == -32602 and "nests 303 levels deep" in err["message"]
    assert b'"result"' in answers[2]
    assert "Traceback" not in p.output()


IDS = [b"-0", b"1e2", b"1E+2", b"1.50", b"-0.0", b"123456789012345678901234567890", b"18446744073709551616"]
IDS += [b'"\\u0041"', b'"\\/x"', '"é"'.encode(), b'"\\u00e9"', b"null", b"0", b"42"]


def test_ids_echo_byte_exactly(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build)
    c = p.client()
    for ident in IDS:
        for method in ("Plugin.Implements", "No.Such", "Instance.Provision"):
            body = b'{"jsonrpc":"2.0","method":"%s","params":{"Spec":{}},"id":%s}' % (method.encode(), ident)
            assert call_text(c, body).endswith(b',"id":' + ident + b"}"), (ident, method)
    batch = b"[" + b",".join(b'{"jsonrpc":"2.0","method":"Plugin.Implements","id":%s}' % i for i in IDS) + b"]"
    answer = call_text(c, batch)
    assert re.findall(rb',"id":(.*?)\}(?:,|\]$)', answer) == IDS


SPEC_TEXT = (
    b'{"Properties":{"big":1180591620717411303424,"neg":-18446744073709551617,"f":1.10,"e":1e2,'
    b'"z":-0,"p":0.1000000000000000055511151231257827,"s":"\\u00e9 \\/"},"Tags":{"g":"n"}}'
)


def test_spec_numbers_round_trip_exactly(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build)
    c = p.client()
    body = b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec": %s },"id":1}' % SPEC_TEXT.replace(
        b",", b", "
    )
    assert b'"result"' in call_text(c, body)
    describe = b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Properties":true},"id":2}'
    assert b'"Properties":' + SPEC_TEXT + b"}" in call_text(c, describe)
    c.close()
    p.stop()
    p = start(tmp_path, build)
    assert b'"Properties":' + SPEC_TEXT + b"}" in call_text(p.client(), describe)


# -- 5. the exec provider: stdin races, the proposed ID ----------------------------------------


def test_exec_commands_that_never_read_stdin(tmp_path: Path, build: dict[str, str]) -> None:
    # Every kind of command (argv string, list, shell string; exiting at once, or closing
    # stdin first) for every hook, with a Spec too big for a pipe's buffer.
    kinds = ["true", ["true"], "exit 0;", "exec 0<&-; sleep 0.05"]
    big = {"Tags": {"g": "w"}, "Properties": {"pad": "x" * 300_000}}
    for n, kind in enumerate(kinds):
        opts = {h: kind for h in ("provision", "destroy", "validate", "label")}
        config = tmp_path / f"exec{n}.json"
        config.write_text(json.dumps(opts))
        (tmp_path / f"k{n}").mkdir()
        p = Plugin(tmp_path / f"k{n}", "--provider", "exec", "--provider-config", str(config), env=build).start()
        c = p.client()
        for _ in range(5):
            assert c.call("Instance.Validate", {"Properties": big["Properties"]})["OK"] is True
            ident = c.call("Instance.Provision", {"Spec": big})["ID"]
            assert c.call("Instance.Label", {"Instance": ident, "Labels": {"a": "b"}})["OK"] is True
            assert c.call("Instance.Destroy", {"Instance": ident})["OK"] is True
        c.close()
        assert p.stop() == 0


def test_proposed_id_reaches_a_provider_that_fails_after_creating(tmp_path: Path, build: dict[str, str]) -> None:
    made = tmp_path / "made"
    made.mkdir()
    script = tmp_path / "prov.sh"
    # Creates its resource under the proposed ID, then fails (or hangs) the first time;
    # the second attempt finds it there and succeeds without creating another.
    script.write_text(
        "#!/bin/sh\n"
        'r="$MADE/$INFRAKIT_INSTANCE_ID"\n'
        'if [ -e "$MADE/seen" ]; then touch "$r"; exit 0; fi\n'
        'touch "$r" "$MADE/seen"; echo "created $INFRAKIT_INSTANCE_ID, then failed" >&2; exit 1\n'
    )
    script.chmod(0o755)
    config = tmp_path / "exec.json"
    config.write_text(json.dumps({"provision": str(script), "destroy": "true", "env": {"MADE": str(made)}}))
    p = start(tmp_path, build, "--provider", "exec", "--provider-config", str(config))
    c = p.client()
    err = c.error("Instance.Provision", {"Spec": {"Tags": {"g": "w"}}})
    left = [f.name for f in made.iterdir() if f.name != "seen"]
    assert len(left) == 1 and re.fullmatch(r"instance-\d+", left[0])
    assert f"created {left[0]}, then failed" in err["message"]  # the user can find and clean it up
    ident = c.call("Instance.Provision", {"Spec": {"Tags": {"g": "w"}}})["ID"]
    assert (made / ident).exists() and ident != left[0]
    assert [d["ID"] for d in c.call("Instance.DescribeInstances", {})["Descriptions"]] == [ident]


def test_proposed_id_for_python_providers(tmp_path: Path, build: dict[str, str]) -> None:
    module = tmp_path / "flaky.py"
    module.write_text(
        "from infrakit_instance.provider import Provider, ProviderError\n"
        "class Flaky(Provider):\n"
        "    made = []\n"
        "    async def provision(self, spec, instance_id):\n"
        "        open(self.options['log'], 'a').write(instance_id + '\\n')\n"
        "        if spec['Tags'].get('fail'):\n"
        "            raise ProviderError('created ' + instance_id + ' then failed')\n"
        "        return None\n"
    )
    log = tmp_path / "made.log"
    p = start(tmp_path, build, "--provider", f"{module}:Flaky", "--provider-opt", f"log={log}")
    c = p.client()
    assert "then failed" in c.error("Instance.Provision", {"Spec": {"Tags": {"fail": "1"}}})["message"]
    ident = c.call("Instance.Provision", {"Spec": {"Tags": {"g": "w"}}})["ID"]
    lines = log.read_text().split()
    assert len(lines) == 2 and lines[1] == ident and lines[0] != ident
    assert "provision of proposed instance " + lines[0] + " failed" in p.output()


# -- 6. the TCP edge -----------------------------------------------------------------------


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFRAKIT_HOME": str(tmp / "home")}
    cmd = [console_script(), "--state", str(tmp / "s.json"), *args]
    proc = spawn(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def tcp_plugin(tmp: Path, build: dict[str, str], *args: str) -> tuple[Plugin, int]:
    plugins = tmp / "plugins"
    p = Plugin(tmp, *args, env={**build, "INFRAKIT_PLUGINS_DIR": str(plugins)}).start(wait=False)
    listen = plugins / "instance-py.listen"
    address = wait_for(lambda: listen.exists() and listen.read_text(), 20, f"the .listen file ({p.output()})")
    return p, int(address.rsplit(":", 1)[1])


def tcp_ask(port: int, head: str, body: bytes = b'{"jsonrpc":"2.0","method":"Plugin.Implements","id":1}') -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        return read_all(s, 10)


def test_remote_binds_need_allow_remote_and_a_token(tmp_path: Path, build: dict[str, str]) -> None:
    out = run_cli(tmp_path, "--listen", "tcp://0.0.0.0:0")
    assert out.returncode == 2 and "add --allow-remote and --auth-token-file" in out.stdout
    out = run_cli(tmp_path, "--listen", "tcp://0.0.0.0:0", "--allow-remote")
    assert out.returncode == 2 and "--allow-remote needs --auth-token-file" in out.stdout
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    p, port = tcp_plugin(
        tmp_path, build, "--listen", "tcp://0.0.0.0:0", "--allow-remote", "--auth-token-file", str(token)
    )
    wait_for(lambda: "reachable from other hosts" in p.output(), 10, "the warning")
    assert "WARNING" in p.output()
    base = f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    assert tcp_ask(port, base).startswith(b"HTTP/1.1 401")
    assert tcp_ask(port, base + "Authorization: Bearer s3cret-tokeX\r\n").startswith(b"HTTP/1.1 401")
    ok = tcp_ask(port, base + "Authorization: Bearer s3cret-token\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b"Instance" in ok


def test_tcp_requests_need_host_origin_and_content_type(tmp_path: Path, build: dict[str, str]) -> None:
    p, port = tcp_plugin(tmp_path, build, "--listen", "tcp://127.0.0.1:0")
    good = f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    assert tcp_ask(port, good).startswith(b"HTTP/1.1 200")
    assert tcp_ask(port, f"Host: localhost:{port}\r\nContent-Type: application/json\r\n").startswith(b"HTTP/1.1 200")
    assert tcp_ask(port, good + f"Origin: http://localhost:{port}\r\n").startswith(b"HTTP/1.1 200")
    rebinding = tcp_ask(port, f"Host: evil.example:{port}\r\nContent-Type: application/json\r\n")
    assert rebinding.startswith(b"HTTP/1.1 403") and b"evil.example" in rebinding
    assert tcp_ask(port, "Content-Type: application/json\r\n").startswith(b"HTTP/1.1 403")  # no Host
    csrf = tcp_ask(port, good + "Origin: https://evil.example\r\n")
    assert csrf.startswith(b"HTTP/1.1 403") and b"origin" in csrf
    assert tcp_ask(port, good + "Origin: null\r\n").startswith(b"HTTP/1.1 403")
    no_cors = tcp_ask(port, f"Host: 127.0.0.1:{port}\r\n")  # a form or no-cors fetch without Content-Type
    assert no_cors.startswith(b"HTTP/1.1 415")
    text = tcp_ask(port, f"Host: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n")
    assert text.startswith(b"HTTP/1.1 415")


def test_unix_socket_keeps_mode_0600(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build)
    assert stat.S_IMODE(os.stat(p.socket).st_mode) == 0o600
    c = p.client()  # no Host, Origin or token checks on the socket
    c.post_bytes(b'{"jsonrpc":"2.0","method":"Plugin.Implements","id":1}', {"Host": None, "Content-Type": None})
    assert c.read_response()[0] == 200


# -- 7. logging ----------------------------------------------------------------------------


def test_failures_are_logged_at_info_with_a_connection_id(tmp_path: Path, build: dict[str, str]) -> None:
    config = tmp_path / "exec.json"
    config.write_text(json.dumps({"provision": "sh -c 'echo no capacity >&2; exit 3'", "destroy": "true"}))
    p = start(tmp_path, build, "--provider", "exec", "--provider-config", str(config))
    c = p.client()
    c.send(raw_post(b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":"p-1"}'))
    assert c.read_response()[0] == 200
    c.send(raw_post(b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"nope"},"id":9}'))
    assert c.read_response()[0] == 200
    wait_for(lambda: "method=Instance.Destroy" in p.output(), 10, "the log lines")
    lines = p.output().splitlines()
    prov = [ln for ln in lines if "method=Instance.Provision" in ln]
    assert prov and "INFO" in prov[0] and 'id="p-1" code=-32000' in prov[0] and "no capacity" in prov[0]
    assert re.search(r"\[c\d+\]", prov[0])
    dest = [ln for ln in lines if "method=Instance.Destroy" in ln][0]
    assert "id=9 code=-32000: cannot destroy instance nope: no such instance" in dest
    assert any("WARNING" in ln and "no capacity" in ln and re.search(r"\[c\d+\]", ln) for ln in lines)


def test_json_log_format_and_bounded_debug_dumps(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build, "--log-format", "json", "--log", "5")
    c = p.client()
    big = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Properties":{"pad":"%s"}},"id":1}' % (
        b"x" * 200_000
    )
    assert b'"result"' in call_text(c, big)
    c.send(raw_post(b'{"jsonrpc":"2.0","method":"No.Such","id":2}'))
    c.read_response()
    wait_for(lambda: "No.Such" in p.output(), 10, "the error line")
    docs = [json.loads(ln) for ln in p.output().splitlines() if ln.startswith("{")]
    assert docs and all({"time", "level", "logger", "conn", "message"} <= set(d) for d in docs)
    err = [d for d in docs if "method=No.Such" in d["message"]][0]
    assert err["level"] == "info" and re.fullmatch(r"c\d+", err["conn"])
    assert max(len(d["message"]) for d in docs) < 5000  # a 200 KB body is not dumped whole
    assert any("bytes in all" in d["message"] for d in docs)


# -- /info/api.json in InfraKit's own shapes -------------------------------------------------


def test_api_json_has_deploykit_shapes(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(tmp_path, build)
    c = p.client()
    c.post_bytes(b"", method="GET", path="/info/api.json")
    status, _, body = c.read_response()
    info = json.loads(body)
    assert status == 200
    for iface in info["Interfaces"]:
        assert {"Name", "Version", "Methods"} <= set(iface)
        for m in iface["Methods"]:
            assert isinstance(m["Request"]["id"], str) and isinstance(m["Response"]["id"], str)
            assert m["Request"]["jsonrpc"] == "2.0" and isinstance(m["Request"]["method"], str)
            assert isinstance(m["Response"]["result"], dict)
    assert isinstance(info["Vendor"]["Name"], str) and isinstance(info["Implements"], list)


# -- bounded memory under hostile load ---------------------------------------------------------

RSS_LIMIT_MB = 150
ATTACK_SECONDS = 8.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_memory_stays_bounded_under_hostile_load(tmp_path: Path, build: dict[str, str]) -> None:
    p = start(
        tmp_path,
        build,
        *("--request-timeout", "2", "--max-body", "4000000", "--max-buffered", "32000000"),
        *("--describe-cache", "8000000", "--max-batch-bytes", "4000000", "--log", "2"),
    )
    assert p.proc is not None
    c = p.client()
    bits = "01"
    for i in range(1500):  # about 1 MB of state; ten 0/1 tags give 3**10 distinct filters
        tags = {f"a{k}": bits[(i >> k) & 1] for k in range(10)}
        c.call("Instance.Provision", {"Spec": {"Tags": tags, "Properties": {"pad": "p" * 500, "i": i}}})
    base = rss_mb(p.proc.pid)
    stop = time.monotonic() + ATTACK_SECONDS
    peak = [base]
    errors: list[str] = []

    def guard(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(repr(exc))

        return run

    def slowloris() -> None:
        socks = [unix(p.socket) for _ in range(100)]
        while time.monotonic() < stop:
            for s in list(socks):
                try:
                    s.send(b"X")
                except OSError:
                    socks.remove(s)
                    socks.append(unix(p.socket))
            time.sleep(0.3)
        for s in socks:
            s.close()

    def partial_bodies() -> None:
        while time.monotonic() < stop:
            socks = []
            for _ in range(8):
                s = unix(p.socket)
                try:
                    s.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3999000\r\n\r\n" + b" " * 3_000_000)
                except OSError:
                    pass
                socks.append(s)
            time.sleep(1.0)
            for s in socks:
                s.close()

    def amplify() -> None:
        one = {"jsonrpc": "2.0", "method": "Instance.DescribeInstances", "params": {"Properties": True}}
        batch = json.dumps([dict(one, id=i) for i in range(100)]).encode()
        with Client(p.socket) as a:
            while time.monotonic() < stop:
                a.send(raw_post(batch))
                status, _, body = a.read_response()
                assert status == 200 and len(body) < 5_000_000

    def filters() -> None:
        with Client(p.socket) as f:
            n = 0
            while time.monotonic() < stop:
                tags = {}
                m = n
                for k in range(10):
                    if m % 3 != 2:
                        tags[f"a{k}"] = str(m % 3)
                    m //= 3
                f.call("Instance.DescribeInstances", {"Tags": tags, "Properties": True})
                n += 1

    threads = [threading.Thread(target=guard(t)) for t in (slowloris, partial_bodies, amplify, filters)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(rss_mb(p.proc.pid))
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert not errors, errors
    print(f"RSS before {base:.1f} MB, peak {max(peak):.1f} MB under attack (limit {RSS_LIMIT_MB} MB)")
    assert max(peak) < RSS_LIMIT_MB
    assert "error" not in p.client().call_raw("Plugin.Implements")
