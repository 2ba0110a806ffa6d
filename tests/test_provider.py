"""The provider API: the base class, the timeout/failure guard, finding and building
providers by name, their options, the command line, and the plugin's use of hooks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infrakit_instance import examples
from infrakit_instance.cli import main as cli_main
from infrakit_instance.plugin import Plugin
from infrakit_instance.provider import (
    BoundedProvider,
    Health,
    Instance,
    LogicalProvider,
    Provider,
    ProviderError,
    Provisioned,
)
from infrakit_instance.providers import (
    GROUP,
    ProviderSpecError,
    load_provider,
    parse_option,
    read_options_file,
)
from infrakit_instance.providers.exec import ExecProvider
from infrakit_instance.store import FileStore

EXAMPLES = Path(examples.__file__).parent
CONSOLE = shutil.which("infrakit-instance", path=os.path.dirname(sys.executable)) or "infrakit-instance"


# -- the base class -------------------------------------------------------------------


def test_provider_keeps_its_options_and_defaults_do_nothing() -> None:
    p = Provider({"a": 1})
    assert p.options == {"a": 1}
    assert not p.logical
    inst = Instance("i-1", None, {"k": "v"}, {"Properties": 1}, True)
    assert asyncio.run(p.status([inst])) == {}
    assert asyncio.run(p.provision({})) is None
    assert inst.description() == {"ID": "i-1", "LogicalID": None, "Tags": {"k": "v"}, "Properties": {"Properties": 1}}


def test_health_is_its_word() -> None:
    assert [h.value for h in Health] == ["healthy", "broken", "gone"]
    assert Health("broken") is Health.BROKEN


def test_logical_provider_refuses_options() -> None:
    assert LogicalProvider().logical
    with pytest.raises(ProviderError, match="takes no options"):
        LogicalProvider({"x": 1})


# -- the guard ------------------------------------------------------------------------


class Scripted(Provider):
    """Each hook does what the test put in ``self.behaviour``."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.behaviour: dict[str, Any] = {}
        self.cancelled: list[str] = []

    async def _do(self, hook: str) -> Any:
        what = self.behaviour.get(hook)
        if what == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(hook)
                raise
        if isinstance(what, BaseException):
            raise what
        return what

    async def validate(self, properties: Any) -> None:
        await self._do("validate")

    async def provision(self, spec: dict[str, Any]) -> Any:
        return await self._do("provision")

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        await self._do("destroy")

    async def status(self, instances: Any) -> Any:
        return await self._do("status")


def test_guard_turns_a_hang_into_a_timeout_error_and_cancels_the_hook() -> None:
    inner = Scripted()
    inner.behaviour["destroy"] = "hang"
    guard = BoundedProvider(inner, 0.05)
    with pytest.raises(ProviderError, match=r"did not finish destroy within 0.05 s \(--provider-timeout\)"):
        asyncio.run(guard.destroy("i", {}, {}))
    assert inner.cancelled == ["destroy"]


def test_guard_reports_other_exceptions_by_type() -> None:
    inner = Scripted()
    inner.behaviour["validate"] = KeyError("zone")
    with pytest.raises(ProviderError, match="failed in validate: KeyError: 'zone'"):
        asyncio.run(BoundedProvider(inner, 1).validate({}))
    inner.behaviour["validate"] = ProviderError("no such zone")
    with pytest.raises(ProviderError, match="^no such zone$"):
        asyncio.run(BoundedProvider(inner, 1).validate({}))


@pytest.mark.parametrize(
    "made, message",
    [({"ID": "x"}, "not Provisioned"), (Provisioned(""), "invalid instance ID"), (Provisioned("x", {"a": 1}), "tags")],  # type: ignore[dict-item]
)
def test_guard_checks_what_provision_returns(made: Any, message: str) -> None:
    inner = Scripted()
    inner.behaviour["provision"] = made
    with pytest.raises(ProviderError, match=message):
        asyncio.run(BoundedProvider(inner, 1).provision({}))


def test_guard_checks_status_answers() -> None:
    inner = Scripted()
    guard = BoundedProvider(inner, 1)
    inner.behaviour["status"] = {"a": "Broken", "b": Health.GONE}
    assert asyncio.run(guard.status([])) == {"a": Health.BROKEN, "b": Health.GONE}
    inner.behaviour["status"] = {"a": "sick"}
    with pytest.raises(ProviderError, match="said 'sick' of instance 'a'"):
        asyncio.run(guard.status([]))
    inner.behaviour["status"] = ["a"]
    with pytest.raises(ProviderError, match="not a mapping"):
        asyncio.run(guard.status([]))


# -- the plugin calls hooks through the guard ------------------------------------------------


async def _call(plugin: Plugin, method: str, params: dict[str, Any]) -> Any:
    from infrakit_instance.rpc import Dispatcher

    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 7}).encode()
    answer = Dispatcher(plugin.methods).handle(body)
    if not isinstance(answer, bytes):
        answer = await answer  # type: ignore[misc]
    return json.loads(answer)  # type: ignore[arg-type]


def test_plugin_reports_provider_failures_and_timeouts_as_rpc_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(str(tmp_path / "state.json"), fsync=False)
        await store.open()
        inner = Scripted()
        plugin = Plugin(store, BoundedProvider(inner, 0.1))
        inner.behaviour["provision"] = "hang"
        answer = await _call(plugin, "Instance.Provision", {"Spec": {"Tags": {}}})
        assert answer["error"]["code"] == -32000
        assert "did not finish provision within 0.1 s" in answer["error"]["message"]
        inner.behaviour["provision"] = Provisioned("dev-1", {"rack": "3"})
        answer = await _call(plugin, "Instance.Provision", {"Spec": {"Tags": {"g": "w"}}})
        assert answer["result"]["ID"] == "dev-1"
        inner.behaviour["destroy"] = ProviderError("the device is locked")
        answer = await _call(plugin, "Instance.Destroy", {"Instance": "dev-1"})
        assert answer["error"] == {"code": -32000, "message": "the device is locked", "data": None}
        answer = await _call(plugin, "Instance.DescribeInstances", {})
        assert answer["result"]["Descriptions"] == [{"ID": "dev-1", "LogicalID": None, "Tags": {"g": "w", "rack": "3"}}]
        await store.close()
        # Only the successful provision reached the state file.
        doc = json.loads((tmp_path / "state.json").read_text())
        assert [d["ID"] for d in doc["Instances"]] == ["dev-1"]

    asyncio.run(scenario())


# -- finding providers ------------------------------------------------------------------


def test_shipped_providers_are_registered_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    assert names.get("logical") == "infrakit_instance.provider:LogicalProvider"
    assert names.get("exec") == "infrakit_instance.providers.exec:ExecProvider"


def test_load_by_name_module_attribute_and_file(tmp_path: Path) -> None:
    assert isinstance(load_provider("logical"), LogicalProvider)
    p = load_provider("exec", {"provision": "true", "destroy": "true"})
    assert isinstance(p, ExecProvider)
    assert isinstance(load_provider("infrakit_instance.provider:LogicalProvider"), LogicalProvider)
    flaky = load_provider(f"{EXAMPLES}/flaky_devices.py:FlakyDevices", {"dir": str(tmp_path)})
    assert type(flaky).__name__ == "FlakyDevices" and flaky.options == {"dir": str(tmp_path)}
    module = tmp_path / "factory_mod.py"
    module.write_text(
        textwrap.dedent(
            """
            from infrakit_instance.provider import Provider
            class Mine(Provider):
                pass
            def make(options):
                return Mine({**options, "made": True})
            READY = Mine()
            """
        )
    )
    made = load_provider(f"{module}:make", {"a": 1})
    assert made.options == {"a": 1, "made": True}
    assert load_provider(f"{module}:READY").options == {}


@pytest.mark.parametrize(
    "spec, options, message",
    [
        ("nosuch", {}, "no provider named 'nosuch'; known names: exec, logical"),
        ("nosuch_module_xyz:Thing", {}, "cannot import 'nosuch_module_xyz'"),
        ("infrakit_instance.provider:Nope", {}, "has no attribute 'Nope'"),
        ("infrakit_instance.provider:__all__", {}, "neither a Provider subclass nor a factory"),
        ("json:dumps", {}, "returned str"),
        ("logical", {"x": 1}, "rejected its options: the logical provider takes no options"),
        ("exec", {"provision": "true"}, "give a destroy command"),
        ("exec", {"provision": "true", "destroy": "true", "bogus": 1}, "unknown option"),
        ("/no/such/file.py:X", {}, "does not exist"),
    ],
)
def test_bad_provider_specs_say_what_is_wrong(spec: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderSpecError, match=message.replace("(", r"\(")):
        load_provider(spec, options)


def test_a_module_that_fails_to_import_is_reported_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken_provider.py"
    bad.write_text("raise RuntimeError('no licence key')\n")
    with pytest.raises(ProviderSpecError, match="RuntimeError: no licence key"):
        load_provider(f"{bad}:X")


def test_parse_option() -> None:
    assert parse_option("timeout=5") == ("timeout", 5)
    assert parse_option('env={"A": "b"}') == ("env", {"A": "b"})
    assert parse_option("provision=./p.sh --zone=a") == ("provision", "./p.sh --zone=a")
    assert parse_option("flag=true") == ("flag", True)
    assert parse_option("empty=") == ("empty", "")
    with pytest.raises(ProviderSpecError, match="not key=value"):
        parse_option("novalue")


def test_read_options_file(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('{"provision": "a", "timeout": 3}')
    assert read_options_file(str(f)) == {"provision": "a", "timeout": 3}
    f.write_text("[1]")
    with pytest.raises(ProviderSpecError, match="must hold an object"):
        read_options_file(str(f))
    f.write_text("{nope")
    with pytest.raises(ProviderSpecError, match="not valid JSON"):
        read_options_file(str(f))
    with pytest.raises(ProviderSpecError, match="cannot read"):
        read_options_file(str(tmp_path / "missing.json"))


def test_read_yaml_options_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("provision: ./p.sh\ntimeout: 3\n")
    try:
        import yaml  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        with pytest.raises(ProviderSpecError, match="pip install pyyaml"):
            read_options_file(str(f))
    else:
        assert read_options_file(str(f)) == {"provision": "./p.sh", "timeout": 3}


# -- the command line -----------------------------------------------------------------------


def _invoke(args: list[str], env: dict[str, str] | None, tmp: Path) -> Any:
    # Always a throw-away state and socket: a run that gets past the checks must not touch ~/.infrakit.
    args = ["--state", str(tmp / "s.json"), "--listen", f"unix://{tmp}/p.sock", *args]
    return CliRunner().invoke(cli_main, args, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--provider", "nosuch"], "no provider named 'nosuch'"),
        (["--provider", "exec"], "give a provision and a destroy command"),
        (["--provider-opt", "novalue"], "'novalue' is not key=value"),
        (["--provider-config", "/no/such.json"], "cannot read provider config"),
        (["--sync-interval", "-1"], "sync-interval"),
    ],
)
def test_cli_rejects_bad_provider_settings(tmp_path: Path, args: list[str], message: str) -> None:
    result = _invoke(args, None, tmp_path)
    assert result.exit_code == 2
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "p.sock").exists()


def test_cli_reads_provider_settings_from_the_environment(tmp_path: Path) -> None:
    env = {"INFRAKIT_INSTANCE_PROVIDER": "nosuch2"}
    assert "no provider named 'nosuch2'" in _invoke([], env, tmp_path).output
    # One key=value a line, so values may hold spaces.
    env = {"INFRAKIT_INSTANCE_PROVIDER_OPT": "a=1\nb=x y"}
    assert "takes no options (given: a, b)" in _invoke([], env, tmp_path).output
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"provision": "true"}')
    env = {"INFRAKIT_INSTANCE_PROVIDER": "exec", "INFRAKIT_INSTANCE_PROVIDER_CONFIG": str(cfg)}
    assert "give a destroy command" in _invoke([], env, tmp_path).output


def test_console_script_fails_cleanly_when_the_provider_cannot_start(tmp_path: Path) -> None:
    mod = tmp_path / "nostart.py"
    mod.write_text(
        textwrap.dedent(
            """
            from infrakit_instance.provider import Provider, ProviderError
            class NoStart(Provider):
                async def start(self):
                    raise ProviderError("cannot reach the device controller at 10.0.0.1")
            """
        )
    )
    base = [CONSOLE, "--state", str(tmp_path / "s.json"), "--listen", f"unix://{tmp_path}/p.sock"]
    proc = subprocess.run([*base, "--provider", f"{mod}:NoStart"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "could not start: cannot reach the device controller at 10.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([*base, "--provider", "nosuch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no provider named 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_destroy_overtaken_by_a_sync_still_removes_the_instance(tmp_path: Path) -> None:
    class Slow(Provider):
        def __init__(self) -> None:
            super().__init__()
            self.started = asyncio.Event()
            self.release = asyncio.Event()

        async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
            self.started.set()
            await self.release.wait()

    async def scenario() -> None:
        store = FileStore(str(tmp_path / "state.json"), fsync=False)
        await store.open()
        slow = Slow()
        plugin = Plugin(store, BoundedProvider(slow, 5))
        iid = (await _call(plugin, "Instance.Provision", {"Spec": {"Tags": {"g": "w"}}}))["result"]["ID"]
        destroying = asyncio.ensure_future(_call(plugin, "Instance.Destroy", {"Instance": iid}))
        await asyncio.wait_for(slow.started.wait(), 5)
        await store.set_functional(iid, False)  # a sync finds it broken while the device is being destroyed
        slow.release.set()
        answer = await asyncio.wait_for(destroying, 5)
        assert answer["result"]["OK"] is True
        assert not store.state.known(iid)
        await store.close()
        doc = json.loads((tmp_path / "state.json").read_text())
        assert doc["Instances"] == [] and doc["NonFunctional"] == []

    asyncio.run(scenario())
