"""The exec provider, with real scripts: success, failure carrying stderr, timeouts
that kill the whole process group, malformed output; and end to end through the
console script."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from infrakit_instance import examples
from infrakit_instance.plugin import Plugin
from infrakit_instance.provider import BoundedProvider, Health, Instance, ProviderError
from infrakit_instance.providers.exec import Command, ExecProvider
from infrakit_instance.rpc import Dispatcher
from infrakit_instance.store import FileStore
from plugin_proc import rpc, start_plugin, stop_plugin, wait_for

EXAMPLE = Path(examples.__file__).parent / "exec_devices.sh"
CONSOLE = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or "infrakit-instance"


def script(tmp: Path, name: str, body: str) -> str:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- options -------------------------------------------------------------------------------


def test_commands_run_directly_unless_they_need_a_shell() -> None:
    c = Command("provision", "./p.sh --zone 'a b'")
    assert not c.shell and c.argv == ["./p.sh", "--zone", "a b"]
    c = Command("provision", "./p.sh --zone=a")
    assert not c.shell
    for text in ("./p.sh | tee log", "./p.sh > out", "a; b", "echo $HOME", "ZONE=a ./p.sh", "ls *.sh", "cd ~"):
        c = Command("provision", text)
        assert c.shell and c.argv == ["/bin/sh", "-c", text], text
    c = Command("provision", ["./p.sh", "a|b"])
    assert not c.shell and c.argv == ["./p.sh", "a|b"]
    with pytest.raises(ProviderError, match="must be a string or a non-empty list"):
        Command("provision", 3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"destroy": "true"}, "give a provision command"),
        ({"provision": "true", "destroy": "true", "timeout": 0}, "timeout must be a positive number"),
        ({"provision": "true", "destroy": "true", "env": {"A": 1}}, "env must be an object of strings"),
        ({"provision": "true", "destroy": "true", "cwd": "/no/such/dir"}, "is not a directory"),
        ({"provision": "true", "destroy": "true", "stauts": "x"}, "unknown option"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        ExecProvider(options)


# -- hooks ----------------------------------------------------------------------------


def test_provision_gets_the_spec_and_environment_and_returns_its_id(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    prov = script(
        tmp_path,
        "prov.sh",
        f"cat > {seen}.stdin\nenv | grep ^INFRAKIT_ | sort > {seen}.env\n"
        """echo '{"ID": "dev-7", "Tags": {"rack": "3"}}'\n""",
    )
    p = ExecProvider({"provision": prov, "destroy": "true", "env": {"MY_VAR": "x"}})
    spec = {"Properties": {"cpu": 2}, "Tags": {"g": "w"}, "Init": "", "LogicalID": "db1", "Attachments": []}
    made = run(p.provision(spec))
    assert (made.id, made.tags) == ("dev-7", {"rack": "3"})
    assert json.loads(Path(f"{seen}.stdin").read_text()) == spec
    env = dict(line.split("=", 1) for line in Path(f"{seen}.env").read_text().splitlines())
    assert env["INFRAKIT_HOOK"] == "provision"
    assert env["INFRAKIT_LOGICAL_ID"] == "db1"
    assert json.loads(env["INFRAKIT_TAGS"]) == {"g": "w"}


def test_provision_may_print_nothing_and_let_the_plugin_choose(tmp_path: Path) -> None:
    p = ExecProvider({"provision": "true", "destroy": "true"})
    assert run(p.provision({})) is None


def test_destroy_gets_the_description_and_reason(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    destroy = script(tmp_path, "d.sh", f'cat > {seen}\necho "$INFRAKIT_INSTANCE_ID $INFRAKIT_REASON" >> {seen}.env\n')
    p = ExecProvider({"provision": "true", "destroy": destroy})
    desc = {"ID": "dev-1", "LogicalID": None, "Tags": {"a": "b"}, "Properties": {"x": 1}}
    run(p.destroy("dev-1", desc, {"Reason": "rolling_update"}))
    assert json.loads(seen.read_text()) == desc
    assert Path(f"{seen}.env").read_text() == "dev-1 rolling_update\n"


def test_status_gets_both_arrays_and_answers_health(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    status = script(
        tmp_path,
        "s.sh",
        f'cat > {seen}\nprintf "%s\\n" "$INFRAKIT_INSTANCE_IDS" > {seen}.ids\n'
        """echo '{"a": "healthy", "b": "BROKEN", "c": "gone"}'\n""",
    )
    p = ExecProvider({"provision": "true", "destroy": "true", "status": status})
    instances = [Instance("a", None, {}, None, True), Instance("c", "L", {"t": "1"}, {"P": 1}, False)]
    health = run(p.status(instances))
    assert health == {"a": Health.HEALTHY, "b": Health.BROKEN, "c": Health.GONE}
    doc = json.loads(seen.read_text())
    assert [d["ID"] for d in doc["Instances"]] == ["a"]
    assert doc["NonFunctional"] == [{"ID": "c", "LogicalID": "L", "Tags": {"t": "1"}, "Properties": {"P": 1}}]
    assert Path(f"{seen}.ids").read_text().split() == ["a", "c"]


def test_without_a_status_command_nothing_changes() -> None:
    p = ExecProvider({"provision": "true", "destroy": "true"})
    assert run(p.status([Instance("a", None, {}, None, True)])) == {}


# -- failures --------------------------------------------------------------------------------


def test_a_failing_command_reports_its_exit_status_and_stderr(tmp_path: Path) -> None:
    prov = script(tmp_path, "fail.sh", 'echo "partial output"\necho "zone eu-1 has no free devices" >&2\nexit 3\n')
    p = ExecProvider({"provision": prov, "destroy": "true"})
    with pytest.raises(ProviderError) as err:
        run(p.provision({}))
    assert str(err.value) == f"provision command {prov!r} exited with status 3: zone eu-1 has no free devices"


def test_long_stderr_is_trimmed_to_its_end(tmp_path: Path) -> None:
    noise = 'i=0\nwhile [ $i -lt 500 ]; do echo "line $i of noise" >&2; i=$((i+1)); done\nexit 1\n'
    prov = script(tmp_path, "noisy.sh", noise)
    p = ExecProvider({"provision": prov, "destroy": "true"})
    with pytest.raises(ProviderError) as err:
        run(p.provision({}))
    message = str(err.value)
    assert len(message) < 2200
    assert message.endswith("line 499 of noise")
    assert ": ..." in message


def test_a_missing_program_is_reported(tmp_path: Path) -> None:
    p = ExecProvider({"provision": str(tmp_path / "nope.sh"), "destroy": "true"})
    with pytest.raises(ProviderError, match="could not start: No such file or directory"):
        run(p.provision({}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent, the script, was killed first).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group_and_keeps_stderr(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prov = script(tmp_path, "hang.sh", f'echo "contacting controller" >&2\nsleep 60 &\necho $! > {pidfile}\nwait\n')
    p = ExecProvider({"provision": prov, "destroy": "true", "timeout": 0.5})
    with pytest.raises(ProviderError) as err:
        run(p.provision({}))
    expected = f"provision command {prov!r} did not finish within 0.5 s and was killed: contacting controller"
    assert str(err.value) == expected
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 5, "the background child to be killed")


def test_provider_timeout_cancellation_also_kills_the_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prov = script(tmp_path, "hang.sh", f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    guarded = BoundedProvider(ExecProvider({"provision": prov, "destroy": "true"}), 0.5)
    with pytest.raises(ProviderError, match="did not finish provision within 0.5 s"):
        run(guarded.provision({}))
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 5, "the background child to be killed")


@pytest.mark.parametrize(
    "hook, output, message",
    [
        ("provision", "dev-1", "printed malformed output 'dev-1'"),
        ("provision", '["dev-1"]', "expected nothing, or an object"),
        ("provision", '{"ID": 5}', '"ID" to be a non-empty string'),
        ("provision", '{"ID": "a", "Tags": {"x": 1}}', '"Tags" to be an object of strings'),
        ("status", "all good", "printed malformed output 'all good'"),
        ("status", '["a"]', '"<instance ID>": "healthy" | "broken" | "gone"'),
        ("status", '{"a": "sick"}', "healthy, broken or gone for 'a', not 'sick'"),
    ],
)
def test_malformed_output_is_a_clear_error(tmp_path: Path, hook: str, output: str, message: str) -> None:
    cmd = script(tmp_path, "out.sh", f"cat <<'EOF'\n{output}\nEOF\n")
    p = ExecProvider({"provision": cmd, "destroy": "true", "status": cmd})
    with pytest.raises(ProviderError) as err:
        if hook == "provision":
            run(p.provision({}))
        else:
            run(p.status([Instance("a", None, {}, None, True)]))
    assert message in str(err.value)
    assert f"{hook} command" in str(err.value)


def test_failures_reach_the_jsonrpc_client_with_stderr(tmp_path: Path) -> None:
    prov = script(tmp_path, "fail.sh", 'echo "no power on rack 4" >&2\nexit 1\n')

    async def scenario() -> dict[str, Any]:
        store = FileStore(str(tmp_path / "state.json"), fsync=False)
        await store.open()
        plugin = Plugin(store, BoundedProvider(ExecProvider({"provision": prov, "destroy": "true"}), 10))
        body = json.dumps({"jsonrpc": "2.0", "method": "Instance.Provision", "params": {"Spec": {}}, "id": 1})
        answer = await Dispatcher(plugin.methods).handle(body.encode())  # type: ignore[misc]
        await store.close()
        return json.loads(answer)  # type: ignore[no-any-return]

    answer = run(scenario())
    assert answer["error"]["code"] == -32000
    expected = f"provision failed: provision command {prov!r} exited with status 1: no power on rack 4"
    assert answer["error"]["message"] == expected
    assert json.loads((tmp_path / "state.json").read_text())["Instances"] == []


# -- end to end: the console script with the shipped example ------------------------------------


def describe_ids(sock: str) -> list[str]:
    return [d["ID"] for d in rpc(sock, "Instance.DescribeInstances", {"Tags": {}})["result"]["Descriptions"]]


def test_exec_example_end_to_end(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    config = tmp_path / "exec.json"
    config.write_text(
        json.dumps(
            {
                "provision": f"{EXAMPLE} provision",
                "destroy": f"{EXAMPLE} destroy",
                "status": f"{EXAMPLE} status",
                "validate": f"{EXAMPLE} validate",
                "timeout": 10,
                "env": {"DEVICES_DIR": str(devices)},
            }
        )
    )
    proc, sock = start_plugin(tmp_path, "--provider", "exec", "--provider-config", str(config), "--sync-interval", "0")
    try:
        assert rpc(sock, "Instance.Validate", {"Properties": {"ok": 1}})["result"]["OK"] is True
        err = rpc(sock, "Instance.Validate", {"Properties": {"reject": True}})["error"]
        assert err["code"] == -32000 and err["message"].endswith("these Properties ask to be rejected")
        ids = [rpc(sock, "Instance.Provision", {"Spec": {"Tags": {"g": "w"}}})["result"]["ID"] for _ in range(3)]
        assert all((devices / i).read_text() == "healthy\n" for i in ids)
        desc = rpc(sock, "Instance.DescribeInstances", {"Tags": {"g": "w"}})["result"]["Descriptions"]
        assert [(d["ID"], d["Tags"]["device"]) for d in desc] == [(i, i) for i in ids]
        # The device breaks: on demand (SIGHUP) the plugin stops reporting it.
        (devices / ids[1]).write_text("broken\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: describe_ids(sock) == [ids[0], ids[2]], 10, "the broken instance to leave")
        assert rpc(sock, "Instance.Destroy", {"Instance": ids[0], "Context": {"Reason": "terminate"}})["result"]["OK"]
        assert not (devices / ids[0]).exists()
    finally:
        stop_plugin(proc)
    doc = json.loads((tmp_path / "state.json").read_text())
    assert [d["ID"] for d in doc["Instances"]] == [ids[2]]
    assert [d["ID"] for d in doc["NonFunctional"]] == [ids[1]]
