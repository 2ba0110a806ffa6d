"""End to end: the whole server, compiled and pure, driven by the load tool.

Each benchmark is one ``ikload`` run of a fixed number of requests over 16
keep-alive connections against a real ``infrakit-instance`` process, so the
compiled and pure servers appear side by side per workload.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import ikload  # noqa: E402
import impls  # noqa: E402  (tests/impls.py, put on the path by conftest.py)

REQUESTS = 4000


def _console_script() -> str:
    exe = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or shutil.which("infrakit-instance")
    assert exe, "the infrakit-instance console script is not installed"
    return exe


def _answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", params=impls.impl_params())
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp(request.param)
    sock = str(folder / "sock")
    env = {**os.environ}
    env.pop("INFRAKIT_INSTANCE_NO_EXTENSIONS", None)
    env.pop("INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS", None)
    env["INFRAKIT_INSTANCE_NO_EXTENSIONS" if request.param == "pure" else "INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS"] = "1"
    cmd = [_console_script(), "--log", "1", "--listen", "unix://" + sock, "--state", str(folder / "state.json")]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 20
    while not _answers(sock):
        assert proc.poll() is None, f"the {request.param} server exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.02)
    yield request.param, sock
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0


@pytest.mark.parametrize("mix", ["provision=1", "describe-group=1", "provision=2,destroy=1,label=1", "validate=1"])
def test_server(benchmark: Any, server: tuple[str, str], mix: str) -> None:
    name, sock = server
    benchmark.group = f"e2e {mix}"
    benchmark.extra_info["implementation"] = name
    session = ikload.Session(ikload.parse_target(sock), group_size=100)
    ikload.run_load(sock, mix="provision=1", requests=1000, session=session)  # something to describe and destroy
    results: list[dict[str, Any]] = []

    def run() -> None:
        results.append(ikload.run_load(sock, mix=mix, requests=REQUESTS, session=session))

    benchmark.pedantic(run, rounds=3, iterations=1)
    for r in results:
        assert r["error_total"] == 0, r["errors"]
        assert r["ok"] == REQUESTS
    benchmark.extra_info["requests_per_s"] = max(r["ok_rps"] for r in results)
