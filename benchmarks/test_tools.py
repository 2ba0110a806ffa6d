"""The benchmark tools themselves: CPU per request from /proc, the server's pid from the socket, the
concurrency sweep, and plots (with matplotlib, and a clear message without it). Real processes only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402
import ikload  # noqa: E402
import plots  # noqa: E402


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
