"""Faults a user's machine can impose, set from outside the real console script:
damaged files, stale and foreign journals, an offline rewrite, a small
RLIMIT_NOFILE during whole-file rewrites, symlinked and hard-linked state paths,
planted symlinks, skewed Describe sizes.  Each test asserts that every
acknowledged change is present, or that start-up is refused with a message
naming the file and the byte offset and the file is left byte-identical.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infrakit_instance import _codec_py
from plugin_proc import Client, Plugin, console_script, spawn, spec, wait_for

TWINS = [
    pytest.param({"INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS": "1"}, id="compiled", marks=pytest.mark.compiled),
    pytest.param({"INFRAKIT_INSTANCE_NO_EXTENSIONS": "1"}, id="pure"),
]


def fill(tmp: Path, n: int, **kw: Any) -> tuple[Plugin, list[str]]:
    plugin = Plugin(tmp, **kw).start()
    with plugin.client() as c:
        ids = [c.call("Instance.Provision", {"Spec": spec("g", n=str(i))})["ID"] for i in range(n)]
    return plugin, ids


def refused(plugin: Plugin) -> tuple[int, str]:
    """Start the plugin expecting it to refuse; its exit code and output."""
    plugin.start(wait=False)
    assert plugin.proc is not None
    code = plugin.proc.wait(30)
    plugin._logf.close()
    return code, plugin.output()


def described_ids(plugin: Plugin) -> list[str]:
    with plugin.client() as c:
        return [d["ID"] for d in c.call("Instance.DescribeInstances", {"Tags": None})["Descriptions"]]


# -- 1. damage that is no torn append ------------------------------------------------------------


def _damaged_cases(good: bytes) -> list[tuple[str, bytes]]:
    doc_end = len(good.rstrip(b" "))
    cases = []
    for k in range(24):  # flipped bytes at offsets spread over the whole document
        off = 60 + (doc_end - 70) * k // 23
        cases.append((f"flip@{off}", good[:off] + bytes([good[off] ^ 0x80]) + good[off + 1 :]))
    for off in (200, doc_end // 3, doc_end // 2, doc_end - 300):
        cases.append((f"zero64@{off}", good[:off] + bytes(64) + good[off + 64 :]))
    for off in (0, doc_end // 4 & ~4095, (doc_end - 4096) & ~4095):
        cases.append((f"zero4k@{off}", good[:off] + bytes(4096) + good[off + 4096 :]))
    mid = good.index(b"\n", doc_end // 2) + 1
    cases.append(("stray-close", good[:mid] + b"]}\n" + good[mid:]))
    inside = mid + 40
    cases.append(("truncated-inside", good[:inside]))
    cases.append(("truncated-between", good[:mid]))
    cases.append(("truncated-inside-last", good[: doc_end - 60]))
    return cases


@pytest.mark.parametrize("env", TWINS)
def test_damage_that_is_no_torn_append_is_refused_and_left_as_it_is(tmp_path: Path, env: dict[str, str]) -> None:
    plugin, ids = fill(tmp_path, 300, env=env)
    assert plugin.stop() == 0
    good = Path(plugin.state).read_bytes()
    cases = _damaged_cases(good)
    started = 0
    for name, data in cases:
        Path(plugin.state).write_bytes(data)
        probe = Plugin(tmp_path, env=env)
        probe.start(wait=False)
        assert probe.proc is not None

        def settled(probe: Plugin = probe) -> bool:
            assert probe.proc is not None
            return probe.proc.poll() is not None or probe._ready()

        try:
            wait_for(settled, 30, f"the plugin to start or refuse ({name})")
        except AssertionError:
            pass
        if probe.proc.poll() is None:  # it started: nothing acknowledged may be missing
            started += 1
            assert set(described_ids(probe)) == set(ids), name
            assert probe.stop() == 0
            continue
        out = probe.output()
        probe._logf.close()
        assert probe.proc.returncode == 1, (name, out)
        assert plugin.state in out and re.search(r"at byte \d+", out), (name, out)
        assert Path(plugin.state).read_bytes() == data, name  # byte-identical
        assert not os.path.exists(plugin.state + ".journal"), name
        probe.log.unlink()
    # Every case broke the JSON somewhere the plugin cannot prove to be a torn
    # append, except flips in the padding past the document, which lose nothing.
    assert started <= 2, started
    print(f"damage cases: {len(cases)}, refused: {len(cases) - started}, started intact: {started}")


def test_check_exits_1_and_salvage_keeps_everything_intact(tmp_path: Path) -> None:
    plugin, ids = fill(tmp_path, 200)
    assert plugin.stop() == 0
    good = Path(plugin.state).read_bytes()
    at = good.index(ids[120].encode())
    damaged = good[:at] + b"\xff\xfe" + good[at + 2 :]  # the 121st element's ID is broken
    Path(plugin.state).write_bytes(damaged)
    env = {**os.environ, "INFRAKIT_HOME": str(tmp_path / "home")}
    check = subprocess.run([console_script(), "state", "check", plugin.state], capture_output=True, env=env)
    assert check.returncode == 1, check
    err = check.stderr.decode()
    assert "120 intact instances before it, 79 after it" in err and "state salvage" in err, err
    new = tmp_path / "new.json"
    out = subprocess.run(
        [console_script(), "state", "salvage", plugin.state, "--out", str(new)], capture_output=True, env=env
    )
    assert out.returncode == 0, out
    assert "199 instances" in out.stdout.decode() and "not kept: bytes" in out.stdout.decode()
    assert [d["ID"] for d in json.loads(new.read_bytes())["Instances"]] == ids[:120] + ids[121:]
    assert Path(plugin.state).read_bytes() == damaged  # the original is never edited
    again = subprocess.run(
        [console_script(), "state", "salvage", plugin.state, "--out", str(new)], capture_output=True, env=env
    )
    assert again.returncode == 1  # never overwrites an existing file
    salvaged = Plugin(tmp_path, "--state", str(new)).start()
    assert described_ids(salvaged) == ids[:120] + ids[121:]
    assert salvaged.stop() == 0


# -- 2. descriptor exhaustion during whole-file rewrites -------------------------------------------


def _nofile(n: int) -> Any:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def test_descriptor_exhaustion_during_whole_file_rewrites_never_diverges(tmp_path: Path) -> None:
    """Destroys that trigger whole-file rewrites while every descriptor of the plugin
    is taken by idle connections: each destroy is answered truthfully, and after a
    restart the file holds exactly what was acknowledged."""
    big = {"Properties": {"blob": "p" * 700}}
    plugin = Plugin(tmp_path)
    env = plugin.env
    log = open(tmp_path / "limited.log", "ab")  # noqa: SIM115 - the process writes it
    proc = spawn(
        [console_script(), "--listen", "unix://" + plugin.socket, "--state", plugin.state, "--log", "3"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_nofile(40),
    )
    wait_for(lambda: os.path.exists(plugin.socket), 20, "the socket")
    main = Client(plugin.socket)
    ids = [main.call("Instance.Provision", {"Spec": {**spec("g"), **big}})["ID"] for _ in range(2500)]
    inodes = {os.stat(plugin.state).st_ino}
    hogs = []
    for _ in range(60):  # more than the plugin may hold: it runs out of descriptors
        s = socket.socket(socket.AF_UNIX)
        s.connect(plugin.socket)
        hogs.append(s)
    acked, failed = set(), set()
    for victim in ids[:2000]:
        answer = main.call_raw("Instance.Destroy", {"Instance": victim})
        (acked if "result" in answer else failed).add(victim)
        inodes.add(os.stat(plugin.state).st_ino)
    live = main.call("Instance.DescribeInstances", {"Tags": None})["Descriptions"]
    assert {d["ID"] for d in live} == set(ids) - acked  # what is served is what was acknowledged
    # The rewrites happened with every descriptor taken: the store keeps one in reserve for them.
    assert len(inodes) > 1
    for s in hogs:
        s.close()
    main.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    log.close()
    again = Plugin(tmp_path).start()
    assert set(described_ids(again)) == set(ids) - acked
    assert {d["ID"] for d in json.loads(Path(plugin.state).read_bytes())["Instances"]} == set(ids) - acked
    assert again.stop() == 0
    print(f"destroys under RLIMIT_NOFILE=40: {len(acked)} acknowledged, {len(failed)} refused")


# -- 3. stale and foreign journals, an offline rewrite --------------------------------------------


def _crashed_with_journal(tmp: Path) -> tuple[Plugin, list[str]]:
    """A plugin killed -9 after acknowledged destroys: its journal holds their records."""
    plugin, ids = fill(tmp, 40)
    with plugin.client() as c:
        for victim in ids[:10]:
            c.call("Instance.Destroy", {"Instance": victim})
        c.call("Instance.Label", {"Instance": ids[20], "Labels": {"big": "z" * 300}})
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGKILL)
    plugin.proc.wait(10)
    assert os.path.getsize(plugin.state + ".journal") > 0
    return plugin, ids[10:]


@pytest.mark.parametrize("how", ["same-inode", "renamed"])
def test_a_journal_is_not_applied_to_a_file_rewritten_offline(tmp_path: Path, how: str) -> None:
    plugin, live = _crashed_with_journal(tmp_path)
    # A tool rewrites the file while the plugin is stopped (a compactor, a backup restore).
    doc = {"Provider": {}, "NonFunctional": [], "Instances": [{"ID": i, "LogicalID": None, "Tags": {}} for i in live]}
    data = json.dumps(doc).encode()
    if how == "same-inode":
        with open(plugin.state, "r+b") as f:
            f.write(data)
            f.truncate()
    else:
        Path(plugin.state + ".new").write_bytes(data)
        os.replace(plugin.state + ".new", plugin.state)
    again = Plugin(tmp_path).start()
    assert described_ids(again) == live
    assert "was not applied" in again.output()
    assert os.path.exists(plugin.state + ".journal.unapplied")
    assert again.stop() == 0
    assert not os.path.exists(plugin.state + ".journal")  # a clean shutdown leaves none


def test_a_foreign_journal_is_never_applied(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    crashed, _ = _crashed_with_journal(tmp_path / "a")
    other, ids = fill(tmp_path / "b", 30)
    assert other.stop() == 0
    before = Path(other.state).read_bytes()
    shutil.copy(crashed.state + ".journal", other.state + ".journal")
    again = Plugin(tmp_path / "b").start()
    assert described_ids(again) == ids
    assert "another file" in again.output()
    assert again.stop() == 0
    assert json.loads(Path(other.state).read_bytes()) == json.loads(before)


def test_a_truncated_file_with_a_complete_journal_is_refused(tmp_path: Path) -> None:
    plugin, _ = _crashed_with_journal(tmp_path)
    data = Path(plugin.state).read_bytes()
    cut = data[: len(data.rstrip(b" ")) // 2]
    Path(plugin.state).write_bytes(cut)
    code, out = refused(Plugin(tmp_path))
    assert code == 1 and plugin.state in out and "at byte" in out, out
    assert Path(plugin.state).read_bytes() == cut


def test_the_journal_replays_after_kill_9_and_a_clean_stop_leaves_none(tmp_path: Path) -> None:
    plugin, live = _crashed_with_journal(tmp_path)
    again = Plugin(tmp_path).start()
    assert described_ids(again) == live
    assert "replayed" in again.output()
    with again.client() as c:
        described = c.call("Instance.DescribeInstances", {"Tags": None})["Descriptions"]
    assert next(d for d in described if d["ID"] == live[10])["Tags"]["big"] == "z" * 300
    assert again.stop() == 0
    assert not os.path.exists(plugin.state + ".journal")


# -- 4. one plugin per file, whatever the path -----------------------------------------------------


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_second_plugin_through_another_path_is_refused(tmp_path: Path, link: str) -> None:
    first, ids = fill(tmp_path, 5)
    other = tmp_path / "other"
    other.mkdir()
    alias = other / "alias.json"
    if link == "symlink":
        alias.symlink_to(first.state)
    else:
        os.link(first.state, alias)
    second = Plugin(other, "--state", str(alias))
    code, out = refused(second)
    assert code == 1 and "in use by process" in out and str(first.proc.pid) in out, out  # type: ignore[union-attr]
    with first.client() as c:
        ids.append(c.call("Instance.Provision", {"Spec": spec("g")})["ID"])
    assert described_ids(first) == ids
    assert first.stop() == 0
    assert [d["ID"] for d in first.state_doc()["Instances"]] == ids


# -- 5. planted symlinks and directory modes ---------------------------------------------------------


def test_a_symlink_planted_at_the_journal_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    plugin = Plugin(tmp_path)
    os.symlink(victim, plugin.state + ".journal")
    code, out = refused(plugin)
    assert code == 1 and "symbolic link" in out and plugin.state + ".journal" in out, out
    assert victim.read_bytes() == b"precious"


def test_planted_tmp_and_listen_symlinks_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    fixture = Path(__file__).parent / "fixtures" / "c-plugin-state.json"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = Plugin(tmp_path, "--listen", "tcp://127.0.0.1:0", env={"INFRAKIT_PLUGINS_DIR": str(plugins)})
    shutil.copy(fixture, plugin.state)  # another layout: rewritten whole at start
    for name in (plugin.state + ".tmp", str(plugins / "instance-py.listen")):
        os.symlink(victim, name)
    plugin.start(wait=False)
    listen = plugins / "instance-py.listen"
    wait_for(lambda: not listen.is_symlink() and listen.exists(), 20, "the listen file")
    assert listen.read_text().startswith("tcp://127.0.0.1:")
    host, port = listen.read_text()[6:].rsplit(":", 1)

    def answers() -> bool:  # serving (and so ready for SIGTERM), not just listening
        body = b'{"jsonrpc":"2.0","method":"Plugin.Implements","params":{},"id":1}'
        with socket.create_connection((host, int(port)), timeout=5) as s:
            # On TCP the Host must name the listen address (the guard against DNS rebinding).
            s.sendall(
                b"POST / HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n" % (host.encode(), port.encode())
            )
            s.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return b"result" in s.recv(65536)

    wait_for(answers, 20, "an answer over TCP")
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(plugin.state) and len(plugin.state_doc()["Instances"]) == 3
    assert plugin.stop() == 0
    assert victim.read_bytes() == b"precious"


def test_created_directories_are_0700_under_umask_000(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "er" / "state.json"
    proc = spawn(
        [console_script(), "--listen", f"unix://{tmp_path}/s", "--state", str(state)],
        env={**os.environ, "INFRAKIT_HOME": str(tmp_path / "home")},
        preexec_fn=lambda: os.umask(0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: os.path.exists(tmp_path / "s"), 20, "the socket")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    for d in (tmp_path / "deep", tmp_path / "deep" / "er"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600


_SLOW_START = """
import asyncio, os
from infrakit_instance.provider import Provider

class SlowStart(Provider):
    async def start(self):
        open(self.options["marker"], "w").close()
        await asyncio.sleep(30)

    async def stop(self):
        open(self.options["marker"] + ".stopped", "w").close()
"""


def test_sigterm_during_start_shuts_down_cleanly(tmp_path: Path) -> None:
    # A stop asked for while the plugin is still starting (here: its provider's
    # start() takes 30 s) must end it cleanly and at once: exit 0, the provider
    # stopped, no socket left behind; not the default action of SIGTERM.
    (tmp_path / "slow.py").write_text(_SLOW_START)
    marker = tmp_path / "started"
    proc = spawn(
        [
            console_script(),
            "--listen",
            f"unix://{tmp_path}/s",
            "--state",
            str(tmp_path / "state.json"),
            "--provider",
            f"{tmp_path}/slow.py:SlowStart",
            "--provider-opt",
            f"marker={marker}",
        ],
        env={**os.environ, "INFRAKIT_HOME": str(tmp_path / "home")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(marker.exists, 20, "the provider's start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "started.stopped").exists()
    assert not (tmp_path / "s").exists()


# -- 6. skewed Describe sizes --------------------------------------------------------------------------


class _Rec:
    __slots__ = ("brief", "spec")

    def __init__(self, brief: bytes, spec: bytes | None) -> None:
        self.brief, self.spec = brief, spec


@pytest.mark.compiled
@pytest.mark.parametrize("properties", [False, True])
def test_both_joins_agree_on_skewed_sizes(properties: bool) -> None:
    _codec_c = importlib.import_module("infrakit_instance._codec_c")
    big = _Rec(b'{"ID":"a","Tags":{"x":"' + b"v" * (8 << 20) + b'"}}', b'{"k":1}')
    small = [_Rec(b'{"ID":"b%d","Tags":{}}' % i, None if i % 3 else b"{}") for i in range(5000)]
    for records in ([big, *small], [*small, big], [big, big, *small[:10]], [small[0], big, *small]):
        c = _codec_c.join_descriptions(iter(records), properties)
        assert c == _codec_py.join_descriptions(iter(records), properties)
        assert len(json.loads(c)) == len(records)


@pytest.mark.parametrize("env", TWINS)
def test_describe_never_fails_on_a_large_first_instance(tmp_path: Path, env: dict[str, str]) -> None:
    plugin, ids = fill(tmp_path, 5000, env=env)
    with plugin.client() as c:
        c.call("Instance.Label", {"Instance": ids[0], "Labels": {"big": "x" * (8 << 20)}})
        for props in (False, True):
            got = c.call("Instance.DescribeInstances", {"Tags": None, "Properties": props})["Descriptions"]
            assert [d["ID"] for d in got] == ids and len(got[0]["Tags"]["big"]) == 8 << 20
    assert plugin.stop() == 0
