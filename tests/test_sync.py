"""Syncing with the provider: broken instances move to NonFunctional, recovered ones
to the FRONT of Instances, gone ones go; the moves are durable; a failing or hanging
provider leaves the state alone.  In process, and end to end with the example
provider behind the real console script."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from infrakit_instance import examples
from infrakit_instance.plugin import Plugin
from infrakit_instance.provider import BoundedProvider, Health, Instance, Provider, Provisioned
from infrakit_instance.rpc import RpcError
from infrakit_instance.store import FileStore
from infrakit_instance.sync import Syncer
from plugin_proc import rpc, start_plugin, stop_plugin, wait_for

EXAMPLE = Path(examples.__file__).parent / "flaky_devices.py"
CONSOLE = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or "infrakit-instance"


class Switchboard(Provider):
    """Names instances in order and reports whatever health the test sets."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.health: dict[str, Any] = {}
        self.asked: list[list[tuple[str, bool]]] = []
        self.gate: asyncio.Event | None = None  # set: status waits for it
        self.fail: BaseException | None = None
        self.count = 0

    async def provision(self, spec: dict[str, Any]) -> Provisioned:
        self.count += 1
        return Provisioned(f"dev-{self.count}")

    async def status(self, instances: Sequence[Instance]) -> Mapping[str, Health]:
        self.asked.append([(i.id, i.functional) for i in instances])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return dict(self.health)


async def _rpc(plugin: Plugin, method: str, params: dict[str, Any]) -> Any:
    answer = plugin.methods[method](params)
    if not isinstance(answer, bytes):
        answer = await answer  # type: ignore[misc]
    return json.loads(answer)  # type: ignore[arg-type]


async def _ids(plugin: Plugin, tags: dict[str, str] | None = None) -> list[str]:
    result = await _rpc(plugin, "Instance.DescribeInstances", {"Tags": tags or {}})
    return [d["ID"] for d in result["Descriptions"]]


def _file(path: Path) -> tuple[list[str], list[str]]:
    doc = json.loads(path.read_text())
    return [d["ID"] for d in doc["Instances"]], [d["ID"] for d in doc["NonFunctional"]]


async def _open(path: Path, provider: Provider, timeout: float = 5.0) -> tuple[FileStore, Plugin, Syncer]:
    store = FileStore(str(path), fsync=False)
    await store.open()
    bounded = BoundedProvider(provider, timeout)
    return store, Plugin(store, bounded), Syncer(store, bounded)


def test_broken_recovered_and_gone_instances_move_and_the_moves_are_durable(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sw = Switchboard()

    async def scenario() -> None:
        store, plugin, syncer = await _open(path, sw)
        for _ in range(5):
            await _rpc(plugin, "Instance.Provision", {"Spec": {"Tags": {"infrakit.group": "w"}}})
        assert await _ids(plugin) == ["dev-1", "dev-2", "dev-3", "dev-4", "dev-5"]

        sw.health = {"dev-2": "broken", "dev-4": Health.BROKEN, "dev-1": "healthy"}
        result = await syncer.sync_once()
        assert (result.broken, result.restored, result.gone) == (["dev-2", "dev-4"], [], [])
        # Never reported again, with or without a tag filter, until it recovers.
        assert await _ids(plugin) == ["dev-1", "dev-3", "dev-5"]
        assert await _ids(plugin, {"infrakit.group": "w"}) == ["dev-1", "dev-3", "dev-5"]
        assert _file(path) == (["dev-1", "dev-3", "dev-5"], ["dev-2", "dev-4"])
        # The provider is asked about non-functional instances too.
        await syncer.sync_once()
        assert sw.asked[-1] == [("dev-1", True), ("dev-3", True), ("dev-5", True), ("dev-2", False), ("dev-4", False)]

        # Recovered: to the FRONT, keeping their relative order.
        sw.health = {"dev-2": "healthy", "dev-4": "healthy"}
        result = await syncer.sync_once()
        assert result.restored == ["dev-2", "dev-4"]
        assert await _ids(plugin) == ["dev-2", "dev-4", "dev-1", "dev-3", "dev-5"]
        assert await _ids(plugin, {"infrakit.group": "w"}) == ["dev-2", "dev-4", "dev-1", "dev-3", "dev-5"]
        assert _file(path) == (["dev-2", "dev-4", "dev-1", "dev-3", "dev-5"], [])

        # Gone, from either array.
        sw.health = {"dev-3": "broken"}
        await syncer.sync_once()
        sw.health = {"dev-3": "gone", "dev-5": "gone", "dev-99": "gone"}
        result = await syncer.sync_once()
        assert sorted(result.gone) == ["dev-3", "dev-5"]
        assert await _ids(plugin) == ["dev-2", "dev-4", "dev-1"]
        with pytest.raises(RpcError, match="no such instance"):
            await _rpc(plugin, "Instance.Destroy", {"Instance": "dev-5"})

        sw.health = {"dev-1": "broken"}
        await syncer.sync_once()
        await store.close()

    asyncio.run(scenario())
    # Restart: the file, read by the standard json module, and the reopened store agree.
    assert _file(path) == (["dev-2", "dev-4"], ["dev-1"])

    async def restart() -> None:
        sw.health = {}
        store, plugin, syncer = await _open(path, sw)
        assert await _ids(plugin) == ["dev-2", "dev-4"]
        assert list(store.state.nonfunctional) == ["dev-1"]
        sw.health = {"dev-1": "healthy"}
        await syncer.sync_once()
        assert await _ids(plugin) == ["dev-1", "dev-2", "dev-4"]
        await store.close()

    asyncio.run(restart())
    assert _file(path) == (["dev-1", "dev-2", "dev-4"], [])


def test_a_failing_or_hanging_provider_leaves_the_state_alone(tmp_path: Path) -> None:
    sw = Switchboard()

    async def scenario() -> None:
        store, plugin, syncer = await _open(tmp_path / "state.json", sw, timeout=0.2)
        await _rpc(plugin, "Instance.Provision", {"Spec": {}})
        sw.health = {"dev-1": "broken"}
        sw.fail = RuntimeError("controller unreachable")
        result = await syncer.sync_once()
        assert result.error == "the provider failed in status: RuntimeError: controller unreachable"
        assert not result.changed and await _ids(plugin) == ["dev-1"]
        sw.fail = None
        sw.gate = asyncio.Event()  # never set: status hangs
        result = await syncer.sync_once()
        assert result.error is not None and "did not finish status within 0.2 s" in result.error
        assert await _ids(plugin) == ["dev-1"]
        sw.gate = None
        sw.health = {"dev-1": "sick"}
        result = await syncer.sync_once()
        assert result.error is not None and "'sick'" in result.error
        await store.close()

    asyncio.run(scenario())


def test_changes_during_the_status_call_win(tmp_path: Path) -> None:
    """An instance destroyed while the provider answered is not resurrected or moved."""
    sw = Switchboard()

    async def scenario() -> None:
        store, plugin, syncer = await _open(tmp_path / "state.json", sw)
        for _ in range(2):
            await _rpc(plugin, "Instance.Provision", {"Spec": {}})
        sw.gate = asyncio.Event()
        sw.health = {"dev-1": "broken", "dev-2": "broken"}
        sync = asyncio.ensure_future(syncer.sync_once())
        while not sw.asked:
            await asyncio.sleep(0)
        await _rpc(plugin, "Instance.Destroy", {"Instance": "dev-1"})
        sw.gate.set()
        result = await sync
        assert result.broken == ["dev-2"]
        assert list(store.state.nonfunctional) == ["dev-2"] and await _ids(plugin) == []
        await store.close()

    asyncio.run(scenario())


def test_the_loop_syncs_periodically_and_on_request(tmp_path: Path) -> None:
    sw = Switchboard()

    async def scenario() -> None:
        store, plugin, _ = await _open(tmp_path / "state.json", sw)
        await _rpc(plugin, "Instance.Provision", {"Spec": {}})
        on_demand = Syncer(store, plugin.provider, 0)
        on_demand.start()
        await asyncio.sleep(0)
        assert on_demand.runs == 0  # interval 0: no sync until asked
        sw.health = {"dev-1": "broken"}
        on_demand.request()
        await asyncio.wait_for(_until(lambda: on_demand.runs >= 1), 5)
        assert await _ids(plugin) == []
        await on_demand.stop()

        periodic = Syncer(store, plugin.provider, 0.05)
        sw.health = {"dev-1": "healthy"}
        periodic.start()
        await asyncio.wait_for(_until(lambda: periodic.runs >= 3), 5)
        assert await _ids(plugin) == ["dev-1"]
        await periodic.stop()
        await store.close()

    asyncio.run(scenario())


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


# -- end to end: the console script, the example provider, HTTP over the unix socket ----------------


def test_end_to_end_with_the_example_provider(tmp_path: Path) -> None:
    rack = tmp_path / "rack"
    rack.mkdir()
    for name in ("dev-a", "dev-b", "dev-c", "dev-d"):
        (rack / f"{name}.device").write_text("healthy\n")
    state = tmp_path / "state.json"
    provider = ["--provider", f"{EXAMPLE}:FlakyDevices", "--provider-opt", f"dir={rack}"]

    def ids(sock: str) -> list[str]:
        answer = rpc(sock, "Instance.DescribeInstances", {"Tags": {"infrakit.group": "w"}})
        return [d["ID"] for d in answer["result"]["Descriptions"]]

    def sync_until(proc: subprocess.Popen[bytes], sock: str, expected: list[str]) -> None:
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ids(sock) == expected, 10, f"DescribeInstances to be {expected}")

    proc, sock = start_plugin(tmp_path, *provider, "--sync-interval", "0")
    try:
        spec = {"Tags": {"infrakit.group": "w"}, "Properties": {"model": "x1"}, "LogicalID": None}
        made = [rpc(sock, "Instance.Provision", {"Spec": spec})["result"]["ID"] for _ in range(3)]
        assert made == ["dev-a", "dev-b", "dev-c"]
        (rack / "dev-b.device").write_text("broken\n")
        sync_until(proc, sock, ["dev-a", "dev-c"])
        # A sync's changes are in memory (and answered from) at once, in the file once its batch is
        # written: on a loaded machine that comes a little later.
        wait_for(lambda: _file(state) == (["dev-a", "dev-c"], ["dev-b"]), 10, "the file to hold the sync")
        # InfraKit provisions a replacement: the last free device.
        assert rpc(sock, "Instance.Provision", {"Spec": spec})["result"]["ID"] == "dev-d"
        (rack / "dev-b.device").write_text("healthy\n")
        sync_until(proc, sock, ["dev-b", "dev-a", "dev-c", "dev-d"])
        wait_for(lambda: _file(state) == (["dev-b", "dev-a", "dev-c", "dev-d"], []), 10, "the file to hold the sync")
        (rack / "dev-c.device").unlink()
        (rack / "dev-a.device").write_text("broken\n")
        sync_until(proc, sock, ["dev-b", "dev-d"])
    finally:
        stop_plugin(proc)
    assert _file(state) == (["dev-b", "dev-d"], ["dev-a"])

    # Restart with periodic sync: the state held; dev-a recovers without a signal.
    proc, sock = start_plugin(tmp_path, *provider, "--sync-interval", "0.2")
    try:
        assert ids(sock) in (["dev-b", "dev-d"], ["dev-a", "dev-b", "dev-d"])
        (rack / "dev-a.device").write_text("healthy\n")
        wait_for(lambda: ids(sock) == ["dev-a", "dev-b", "dev-d"], 10, "dev-a to come back to the front")
    finally:
        stop_plugin(proc)
    assert _file(state) == (["dev-a", "dev-b", "dev-d"], [])
