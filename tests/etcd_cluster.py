"""Real etcd processes on free loopback ports, each in its own data directory.

Every member is started through ``plugin_proc.spawn``, so the autouse
``reap_plugins`` fixture kills it (by PID) whatever the test's outcome.  When no
``etcd`` binary is found the tests that need one are skipped with that reason,
unless ``INFRAKIT_INSTANCE_REQUIRE_ETCD=1`` makes it an error.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from plugin_proc import spawn, wait_for

#: Members started for a whole module (not through spawn: the per-test reaper would end them);
#: the module fixture stops them, and this list is killed at exit whatever happens.
LONG_LIVED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_long_lived() -> None:
    for proc in LONG_LIVED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
REQUIRED = os.environ.get("INFRAKIT_INSTANCE_REQUIRE_ETCD") == "1"


def need_etcd() -> None:
    """Skip (or fail, where etcd is required) when etcd or the aetcd client is missing."""
    if ETCD is None:
        if REQUIRED:
            pytest.fail("INFRAKIT_INSTANCE_REQUIRE_ETCD=1 but no etcd binary is on PATH")
        pytest.skip("no etcd binary on PATH (apt-get install etcd-server)")
    try:
        import aetcd  # noqa: F401
    except ImportError:
        if REQUIRED:
            pytest.fail("INFRAKIT_INSTANCE_REQUIRE_ETCD=1 but the aetcd client is not installed")
        pytest.skip("the aetcd client is not installed (pip install '.[etcd]')")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Member:
    def __init__(self, name: str, client_port: int, peer_port: int, data: Path, scheme: str = "http") -> None:
        self.scheme = scheme
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{name}.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def healthy(self) -> bool:
        if self.scheme != "http":
            with socket.socket() as s:  # TLS: a listening port is enough
                return s.connect_ex(("127.0.0.1", self.client_port)) == 0
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self) -> bool:
        try:
            req = urllib.request.Request(f"http://{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=1) as r:
                status = json.loads(r.read())
            return bool(status.get("leader") and status["leader"] == status["header"]["member_id"])
        except (OSError, ValueError, KeyError):
            return False


class EtcdCluster:
    """``n`` members on loopback; ``url(prefix)`` is what ``--store`` takes."""

    def __init__(
        self, tmp: Path, n: int = 1, extra: list[str] | None = None, long_lived: bool = False, scheme: str = "http"
    ) -> None:
        need_etcd()
        self.scheme = scheme
        self.long_lived = long_lived
        self.tmp = tmp
        self.extra = extra or []
        ports = free_ports(2 * n)
        self.members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"etcd-m{i}", scheme) for i in range(n)]
        self.initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        self._logs: list[object] = []

    def start(self) -> EtcdCluster:
        for m in self.members:
            self.start_member(m, new=True)
        self.wait_healthy()
        return self

    def start_member(self, m: Member, new: bool = False) -> None:
        assert ETCD is not None
        cmd = [
            ETCD,
            "--name",
            m.name,
            "--data-dir",
            str(m.data),
            "--listen-client-urls",
            f"{self.scheme}://127.0.0.1:{m.client_port}",
            "--advertise-client-urls",
            f"{self.scheme}://127.0.0.1:{m.client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster",
            self.initial,
            "--initial-cluster-state",
            "new" if new else "existing",
            "--initial-cluster-token",
            f"t-{os.getpid()}-{self.members[0].client_port}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
            *self.extra,
        ]
        logf = open(m.log, "ab")  # noqa: SIM115 - the process writes it
        self._logs.append(logf)
        if self.long_lived:
            m.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
            LONG_LIVED.append(m.proc)
        else:
            m.proc = spawn(cmd, stdout=logf, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 30) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                wait_for(m.healthy, timeout, f"etcd member {m.name} healthy (log {m.log})")

    def url(self, prefix: str = "/infrakit/test") -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members) + prefix

    def leader(self, timeout: float = 20) -> Member:
        found: list[Member] = []

        def look() -> bool:
            found[:] = [m for m in self.members if m.proc is not None and m.proc.poll() is None and m.is_leader()]
            return bool(found)

        wait_for(look, timeout, "an etcd leader")
        return found[0]

    def kill(self, m: Member) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait()

    def restart(self, m: Member) -> None:
        self.start_member(m)
        wait_for(m.healthy, 30, f"etcd member {m.name} back")

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait()
        for f in self._logs:
            f.close()  # type: ignore[attr-defined]

    def etcdctl(self, *args: str) -> str:
        ctl = shutil.which("etcdctl")
        assert ctl, "etcdctl is not installed"
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run(
            [ctl, "--endpoints", ",".join(m.endpoint for m in self.members), *args],
            env=env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return out.stdout.decode()


def wait_seconds(since: float) -> float:
    return time.monotonic() - since
