"""The benchmark tools themselves: CPU per request from /proc, the server's pid from the socket, the
concurrency sweep, plots (with matplotlib, and a clear message without it), the ceiling server and
pipelined load. Real processes only."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ceiling  # noqa: E402
import compare  # noqa: E402
import ikload  # noqa: E402
import plots  # noqa: E402
import soak  # noqa: E402


def _console_script() -> str:
    exe = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or shutil.which("infrakit-instance")
    assert exe, "the infrakit-instance console script is not installed"
    return exe


PLUGIN = f"{_console_script()} --log 1 --listen unix://{{socket}} --state {{state}}"


def _wait(cond: object, what: str, bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """ikload's own do-nothing server, in a process of its own."""
    sock = str(tmp_path / "canned.sock")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ikload.py"), "--serve-canned", sock])
    try:
        _wait(lambda: os.path.exists(sock + ".close") or proc.poll() is not None, "the canned server")
        assert proc.poll() is None
        yield sock, proc
    finally:
        proc.kill()
        proc.wait(10)


def test_cpu_seconds_count_the_process_and_its_children() -> None:
    # The parent sleeps; a child it started burns CPU, then a grandchild it reaps does too.
    code = (
        "import os, subprocess, sys, time\n"
        "burn = 'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass'\n"
        "kid = subprocess.Popen([sys.executable, '-c', burn])\n"
        "print('ready', flush=True)\n"
        "kid.wait()\n"
        "sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        before = ikload.server_cpu_seconds(proc.pid)
        assert before is not None
        _wait(lambda: not ikload._children(proc.pid), "the child to finish", 20)
        after = ikload.server_cpu_seconds(proc.pid)
        assert after is not None
        # The child's 0.3 s (ticks of 10 ms) are there once it is reaped, though the parent only slept.
        assert after - before >= 0.2, (before, after)
        own = ikload._stat_ticks(proc.pid)
        assert own is not None and own[1] >= 20  # in the parent's reaped-children total
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert ikload.server_cpu_seconds(proc.pid) is None  # gone


def test_peer_pid_and_cpu_per_request_without_pid(canned: tuple[str, subprocess.Popen[bytes]]) -> None:
    sock, proc = canned
    assert ikload.probe(sock)["pid"] == proc.pid
    r = ikload.run_load(sock, mix="validate", connections=4, requests=3000)
    assert r["ok"] == 3000
    assert r["server"]["pid"] == proc.pid and r["server"]["pid_from"] == "SO_PEERCRED"
    cpu = r["server_cpu"]
    assert cpu is not None and cpu["seconds"] > 0 and cpu["us_per_request"] > 0
    assert cpu["us_per_request"] == pytest.approx(cpu["seconds"] / 3000 * 1e6, rel=0.01)
    # Over TCP nothing names the server: no CPU figure, and the report says how to get one.
    tcp = {k: v for k, v in r.items() if k != "server"} | {"target": "tcp://127.0.0.1:1", "server_cpu": None}
    assert "server cpu  unknown: give --pid" in ikload._fmt_report(tcp)
    assert f"server cpu  {cpu['us_per_request']} µs/request" in ikload._fmt_report(r)


def test_sweep_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "sweep.md"
    rc = compare.main(
        [
            "--target",
            f"ours={PLUGIN}",
            "--concurrency",
            "1,2",
            "--method",
            "validate",
            "--method",
            "describe-group",
            "--prefill",
            "20",
            "--group-size",
            "5",
            "--duration",
            "0.3",
            "--out-md",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["mode"] == "sweep" and not result["failures"]
    points = {(p["method"], p["connections"]): p for p in result["points"]}
    assert set(points) == {("validate", 1), ("validate", 2), ("describe-group", 1), ("describe-group", 2)}
    for p in points.values():
        assert p["status"] == "ok" and p["ok_rps"] > 0 and not p["errors"]
        assert p["cpu_us"] is not None and p["cpu_us"] > 0
    assert points[("describe-group", 1)]["prefilled"] == 20
    assert points[("validate", 1)]["prefilled"] == 0
    md = out.read_text()
    assert "| validate | 2 |" in md and "ours CPU µs/req" in md
    if plots.have_matplotlib():
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_says_when_destroys_ran_out(tmp_path: Path) -> None:
    """Thirty prefilled instances last no warm-up of destroys: the table says they ran out
    (no rate of 0 req/s, no ratio) and how to measure the whole run."""
    out = tmp_path / "sweep.md"
    argv = ["--target", f"a={PLUGIN}", "--target", f"b={PLUGIN}", "--concurrency", "2", "--method", "destroy"]
    argv += ["--prefill", "30", "--warmup", "0.3", "--duration", "0.3", "--rounds", "1", "--out-md", str(out)]
    assert compare.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [p["exhausted"] for p in result["points"]] == [True, True]
    md = out.read_text()
    assert "| destroy | 2 | ran out ‡ | – | ran out ‡ | – | – | – |" in md, md
    assert "‡ the 30 prefilled instances ran out" in md and "a larger --prefill" in md


def _soak_folders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("ik-soak-")}


def test_soak_samples_memory_per_chunk_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    before = _soak_folders()
    argv = ["--requests", "600", "--chunk", "200", "--prefill", "100", "--command", PLUGIN, "--out-json", str(out)]
    assert soak.main(argv) == 0
    result = json.loads(out.read_text())
    assert [s["requests"] for s in result["samples"]] == [200, 400, 600]
    for s in result["samples"]:
        assert s["ok_rps"] > 0 and s["rss_kb"] > 0 and s["peak_kb"] >= s["rss_kb"] and s["cpu_us"] is not None
        assert s["errors"] == 0 and s["error_kinds"] == {}
    assert result["errors"] == {} and result["rss_after_prefill_kb"] > 0
    assert _soak_folders() == before  # the plugin's socket and state folder is removed


def test_soak_counts_errors_by_kind(tmp_path: Path) -> None:
    """Provisions over the plugin's --max-body are refused (HTTP 413); the soak says so, by kind."""
    out = tmp_path / "soak.json"
    command = PLUGIN + " --max-body 200"
    argv = ["--requests", "200", "--chunk", "100", "--prefill", "0", "--mix", "provision=1,validate=1"]
    assert soak.main([*argv, "-c", "2", "--command", command, "--out-json", str(out)]) == 0
    result = json.loads(out.read_text())
    kinds = [s["error_kinds"] for s in result["samples"]]
    assert all(set(k) == {"http:413"} and k["http:413"] > 0 for k in kinds), kinds
    assert result["errors"] == {"http:413": sum(k["http:413"] for k in kinds)}


def test_scaling_and_compare_report_cpu(tmp_path: Path) -> None:
    out = tmp_path / "scaling.md"
    argv = ["--target", f"a={PLUGIN}", "--target", f"c={PLUGIN}", "--baseline", "c"]
    assert compare.main([*argv, "--scaling", "0,30", "--max-seconds", "0.3", "--out-md", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    cells = [c for c in result["cells"] if c["status"] == "ok"]
    assert len(cells) == 12 and all(c["cpu_us"] for c in cells)
    assert "a CPU µs/req" in out.read_text()
    if plots.have_matplotlib():
        svg = tmp_path / "scaling.svg"
        assert plots.main([str(out.with_suffix(".json")), str(svg)]) == 0
        text = svg.read_text()
        assert "C plugin" in text and "p99 latency" in text and "empty" in text

    side = tmp_path / "side.md"
    assert compare.main([*argv, "--mix", "validate", "--rounds", "1", "--duration", "0.3", "--out-md", str(side)]) == 0
    summary = json.loads(side.with_suffix(".json").read_text())["summary"]
    assert summary["a"]["cpu_us"] > 0 and summary["c"]["cpu_us"] > 0
    assert "server CPU µs/req" in side.read_text()


def test_without_matplotlib_the_tools_measure_and_say_how_to_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep.md"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib now raises ImportError
        f"sys.path.insert(0, {HERE!r}); import compare\n"
        "sys.exit(compare.main(sys.argv[1:]))\n"
    )
    argv = ["--target", f"ours={PLUGIN}", "--concurrency", "1", "--method", "validate", "--duration", "0.2"]
    p = subprocess.run(
        [sys.executable, "-c", code, *argv, "--out-md", str(out)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert plots.MISSING in p.stderr
    assert out.exists() and not out.with_suffix(".png").exists()


# ---------------------------------------------------------------------------------------------
# The ceiling server and pipelined load

needs_cc = pytest.mark.skipif(ceiling.compiler() is None, reason="no C compiler to build benchmarks/ceiling.c")
# As README gives it: relative to where compare.py runs (the command itself runs in a fresh directory).
CEILING = f"{sys.executable} {{cwd}}/{os.path.relpath(os.path.join(HERE, 'ceiling.py'))} --listen unix://{{socket}}"


def _request(rpc_id: bytes, params: bytes = b'{"Type":"","Properties":{"id":7}}') -> bytes:
    body = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":%s,"id":%s}' % (params, rpc_id)
    return b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (
        len(body),
        body,
    )


def _answers(data: bytes) -> list[tuple[bytes, dict[str, object]]]:
    """The (head, JSON body) of every complete answer in ``data``."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        length = int(next(v for k, _, v in (x.partition(b": ") for x in head.split(b"\r\n")) if k == b"Content-Length"))
        out.append((head, json.loads(rest[:length])))
        data = rest[length:]
    return out


def _read_answers(s: socket.socket, n: int) -> list[tuple[bytes, dict[str, object]]]:
    data = b""
    s.settimeout(10)
    while True:
        try:
            got = _answers(data)
        except (AssertionError, StopIteration, ValueError):
            got = []
        if len(got) >= n:
            return got
        chunk = s.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk


def _silent(s: socket.socket, seconds: float = 0.1) -> bool:
    """Nothing to read within ``seconds``: the server did not answer an incomplete request."""
    return not select.select([s], [], [], seconds)[0]


@pytest.fixture
def ceiling_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The ceiling server, built from scratch into a cache directory of this test's own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    sock = str(tmp_path / "ceiling.sock")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ceiling.py"), "--listen", f"unix://{sock}"])
    try:
        _wait(lambda: os.path.exists(sock) or proc.poll() is not None, "the ceiling server", 60)
        assert proc.poll() is None
        built = list((cache / "infrakit-instance").glob("ceiling-*"))
        assert len(built) == 1 and os.access(built[0], os.X_OK)  # outside the repository, not in it
        assert not any(Path(HERE).glob("ceiling-*"))
        yield sock, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _instance_of(request: bytes) -> str:
    return orjson.loads(request[request.index(b"\r\n\r\n") + 4 :])["params"]["Instance"]


def test_a_destroy_passes_over_an_instance_being_labelled() -> None:
    # Labels pick any of our ids, destroys the oldest. A destroy sent on another connection after a
    # Label of the same id may reach the server first and fail that Label as unknown (soak runs saw
    # it): an error of the load tool's making, charged to the server.
    s = ikload.Session(ikload.parse_target("/nowhere"), seed=1)
    s.own_ids.append("i-a")
    label = s.request("label")
    assert label is not None and _instance_of(label) == "i-a"
    s.own_ids.extend(["i-b", "i-c"])
    first = s.request("destroy")
    assert first is not None and _instance_of(first) == "i-b"  # the oldest, i-a, is being labelled
    s.label_done(label)
    rest = [s.request("destroy"), s.request("destroy")]
    assert sorted(_instance_of(r) for r in rest if r) == ["i-a", "i-c"] and not s.own_ids
    assert s.request("destroy") is None
    # Only labelled ids left: the destroy goes on with the oldest rather than stall the run.
    s.own_ids.append("i-d")
    assert (label := s.request("label")) is not None and _instance_of(s.request("destroy") or b"") == "i-d"


def test_ikload_releases_every_label_against_the_plugin() -> None:
    with compare.Running(compare.TargetSpec("ours", command=PLUGIN), 30.0, None) as srv:
        session = ikload.Session(ikload.parse_target(srv.address), seed=7)
        p = ikload.run_load(srv.address, mix="provision", connections=4, requests=20, session=session)
        assert p["ok"] == 20
        r = ikload.run_load(
            srv.address, mix="provision=1,label=4,destroy=1", connections=16, pipeline=2, requests=3000, session=session
        )
        assert r["errors"] == {} and r["ok"] == 3000 and r["by_method"]["label"]["count"] > 1500
        assert not session.labelling and not session._label_ids  # every Label's mark released


@needs_cc
def test_ceiling_answers_validate_with_its_id_split_and_pipelined(
    ceiling_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    sock, proc = ceiling_server
    # It is the C program itself that listens (ceiling.py execs it): its pid is the socket's peer.
    assert ikload.probe(sock)["pid"] == proc.pid
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        req = _request(b"4611686018427387905")
        s.sendall(req)
        [(head, doc)] = _read_answers(s, 1)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert doc == {"jsonrpc": "2.0", "result": {"Type": "", "OK": True}, "id": 4611686018427387905}

        # One request in pieces: inside the head, inside the blank line, inside the body.
        req = _request(b'"abc\\"d"')
        cuts = [20, req.index(b"\r\n\r\n") + 2, len(req) - 10]
        for a, b in zip([0, *cuts[:-1]], cuts, strict=True):
            s.sendall(req[a:b])
            assert _silent(s), "answered an incomplete request"
        s.sendall(req[cuts[-1] :])
        [(_, doc)] = _read_answers(s, 1)
        assert doc["id"] == 'abc"d'  # a string id, escapes and all; the params' own "id" is not it

        # Eight pipelined in one write: eight answers in order, all in the server's one write.
        ids = [str(1000 + i).encode() for i in range(8)]
        s.sendall(b"".join(_request(i) for i in ids))
        _wait(lambda: not _silent(s, 0), "the answers")
        got = _answers(s.recv(65536))  # one write on a unix socket arrives whole
        assert [d["id"] for _, d in got] == [int(i) for i in ids]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0 and not os.path.exists(sock)  # SIGINT: the socket file is removed


@needs_cc
def test_ceiling_closes_on_a_request_it_cannot_frame(ceiling_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    sock, proc = ceiling_server
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(_request(b"1") + b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.settimeout(10)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert [d["id"] for _, d in _answers(data)] == [1]  # the request before it answered, then EOF
    r = ikload.run_load(sock, mix="validate", connections=2, pipeline=4, requests=400)
    assert r["ok"] == 400 and r["pipeline"] == 4 and proc.poll() is None


class _HoldingServer(threading.Thread):
    """One connection; answers nothing until ``hold`` requests are unanswered (or all ``total`` came),
    then answers all it holds in one write, the first two swapped if ``swap``. Records the most
    requests it ever held."""

    def __init__(self, path: str, hold: int, total: int, swap: bool = False) -> None:
        super().__init__(daemon=True)
        self.lsock = socket.socket(socket.AF_UNIX)
        self.lsock.bind(path)
        self.lsock.listen(4)
        self.hold, self.total, self.swap = hold, total, swap
        self.most = self.received = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # reported by the test
            self.error = e

    def _serve(self) -> None:
        # The probe first: two handshakes, one at a time, on a connection of its own.
        conn, _ = self.lsock.accept()
        with conn:
            for _ in range(2):
                [rpc_id] = self._read(conn, b"", 1)[0]
                conn.sendall(self._answer(rpc_id))
        conn, _ = self.lsock.accept()
        conn.settimeout(20)
        held: list[bytes] = []
        buf = b""
        with conn:
            while self.received < self.total:
                ids, buf = self._read(conn, buf, 0)
                held += ids
                self.received += len(ids)
                self.most = max(self.most, len(held))
                if len(held) >= self.hold or self.received >= self.total:
                    out = [self._answer(i) for i in held]
                    if self.swap and len(out) > 1:
                        out[0], out[1] = out[1], out[0]
                        self.swap = False
                    conn.sendall(b"".join(out))
                    held = []

    @staticmethod
    def _answer(rpc_id: bytes) -> bytes:
        body = b'{"jsonrpc":"2.0","result":{"Type":"","OK":true},"id":%s}' % rpc_id
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    @staticmethod
    def _read(conn: socket.socket, buf: bytes, at_least: int) -> tuple[list[bytes], bytes]:
        """Read once (more while fewer than ``at_least`` requests are complete); their ids, and the rest."""
        ids: list[bytes] = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError(buf)
            buf += chunk
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head = buf[:end].lower()
                i = head.find(b"content-length:")
                n = int(head[i + 15 :].split(b"\r\n")[0])
                if len(buf) < end + 4 + n:
                    break
                body = buf[end + 4 : end + 4 + n]
                ids.append(body[body.rindex(b'"id":') + 5 : -1])
                buf = buf[end + 4 + n :]
            if len(ids) >= at_least:
                return ids, buf


def test_ikload_pipeline_keeps_n_in_flight(tmp_path: Path) -> None:
    # Without pipelining this server would never answer: it waits until it holds 8 requests.
    srv = _HoldingServer(str(tmp_path / "hold.sock"), hold=8, total=40)
    srv.start()
    r = ikload.run_load(str(tmp_path / "hold.sock"), mix="validate", connections=1, pipeline=8, requests=40, timeout=20)
    srv.join(20)
    assert srv.error is None, srv.error
    assert srv.most == 8 and srv.received == 40  # never more than 8 in flight, and one more per answer
    assert r["requests"] == r["ok"] == 40 and r["error_total"] == 0 and r["pipeline"] == 8
    assert "1 connections x 8 pipelined" in ikload._fmt_report(r)


def test_ikload_checks_each_answer_carries_its_request_id(tmp_path: Path) -> None:
    # Two answers out of order: each then carries the other's id, and both count as errors.
    srv = _HoldingServer(str(tmp_path / "swap.sock"), hold=4, total=8, swap=True)
    srv.start()
    r = ikload.run_load(str(tmp_path / "swap.sock"), mix="validate", connections=1, pipeline=4, requests=8, timeout=20)
    srv.join(20)
    assert srv.error is None, srv.error
    assert r["requests"] == 8 and r["ok"] == 6 and r["errors"] == {"id-mismatch": 2}


def test_ikload_pipelined_against_the_plugin_counts_every_request_and_answer() -> None:
    with compare.Running(compare.TargetSpec("ours", command=PLUGIN), 30.0, None) as srv:
        r = ikload.run_load(srv.address, mix="validate=3,handshake=1", connections=4, pipeline=8, requests=3200)
        assert r["pipeline"] == 8 and r["keepalive"]
        assert r["requests"] == r["ok"] == 3200 and r["error_total"] == 0
        assert sum(m["count"] for m in r["by_method"].values()) == 3200
        assert r["by_method"]["validate"]["count"] == 2400  # 50 turns of the mix's cycle of 48 + 16
        # The server's CPU is read in /proc ticks of 10 ms, more than 3,200 fixed answers may take:
        # a second of the same load is sure to span several.
        timed = ikload.run_load(srv.address, mix="validate=3,handshake=1", connections=4, pipeline=8, duration=1.0)
        assert timed["error_total"] == 0 and timed["server_cpu"]["us_per_request"] > 0
        # Provisions pipelined too: each answer's ID is kept, so a destroy run can remove all of them.
        session = ikload.Session(ikload.parse_target(srv.address))
        p = ikload.run_load(srv.address, mix="provision", connections=2, pipeline=8, requests=300, session=session)
        assert p["ok"] == 300 and len(session.own_ids) == 300
        d = ikload.run_load(srv.address, mix="destroy", connections=2, pipeline=8, requests=300, session=session)
        assert d["ok"] == 300 and not session.own_ids and d["error_total"] == 0


@needs_cc
def test_sweep_with_pipeline_depths_against_the_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.md"
    argv = ["--target", f"ours={PLUGIN}", "--target", f"ceiling={CEILING}", "--baseline", "ceiling"]
    argv += ["--concurrency", "2", "--pipeline", "1,8", "--method", "validate", "--duration", "0.3"]
    assert compare.main([*argv, "--out-md", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert not result["failures"] and result["pipelines"] == [1, 8]
    points = {(p["target"], p["pipeline"]): p for p in result["points"]}
    assert set(points) == {("ours", 1), ("ours", 8), ("ceiling", 1), ("ceiling", 8)}
    for (_, depth), p in points.items():
        assert p["status"] == "ok" and p["pipelined"] == depth and p["ok_rps"] > 0 and not p["errors"]
        assert p["cpu_us"] is not None and p["cpu_us"] > 0
    md = out.read_text()
    assert "| validate | 2 |" in md and "| validate ×8 pipelined | 2 |" in md and "ours CPU vs ceiling" in md
    with pytest.raises(SystemExit, match="need a --concurrency sweep"):
        compare.main(["--target", f"ours={PLUGIN}", "--pipeline", "1,8"])


def test_ikload_does_not_pipeline_a_server_that_closes_after_each_answer(
    canned: tuple[str, subprocess.Popen[bytes]],
) -> None:
    sock, _ = canned
    r = ikload.run_load(sock + ".close", mix="validate", connections=4, pipeline=8, requests=300)
    assert r["requests"] == r["ok"] == 300 and r["error_total"] == 0
    assert not r["keepalive"] and r["pipeline"] == 1 and r["pipeline_requested"] == 8
    assert "--pipeline 8 not used: the server closes after each answer" in ikload._fmt_report(r)


@needs_cc
def test_ceiling_over_tcp() -> None:
    with socket.socket() as probe_port:  # a port free a moment ago
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ceiling.py"), "--listen", f"tcp://127.0.0.1:{port}"])
    try:

        def up() -> bool:
            assert proc.poll() is None, "the ceiling server exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(up, "the ceiling server on TCP", 60)
        r = ikload.run_load(f"tcp://127.0.0.1:{port}", mix="validate", connections=2, pipeline=8, requests=800)
        assert r["ok"] == 800 and r["error_total"] == 0 and r["pipeline"] == 8
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
