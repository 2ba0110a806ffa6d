"""The command line as a user meets it: what README says of it is true, and mistakes
get clear errors that name the path, never a silently created state."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import click
import pytest

from infrakit_instance import __version__
from infrakit_instance.cli import main
from plugin_proc import Plugin, console_script, spec

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def readme_section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def cli_options() -> dict[str, click.Option]:
    return {
        opt: p
        for p in main.params
        if isinstance(p, click.Option)
        for opt in p.opts
        if opt.startswith("--") and opt not in ("--help", "--version")
    }


def test_readme_option_table_names_every_option_and_only_real_ones() -> None:
    table = [line for line in readme_section("Command line").splitlines() if line.startswith("| `--")]
    documented = {m for line in table for m in re.findall(r"`(--[a-z][a-z0-9-]*)", line.split(" | ")[0])}
    assert documented == set(cli_options()), (
        f"in README but not in --help: {sorted(documented - set(cli_options()))}; "
        f"in --help but not in README: {sorted(set(cli_options()) - documented)}"
    )


def test_every_environment_variable_readme_names_is_read() -> None:
    envvars = {p.envvar for p in main.params if isinstance(p, click.Option) and isinstance(p.envvar, str)}
    envvars |= {f"INFRAKIT_INSTANCE_{p.name.upper()}" for p in main.params if p.name and not p.envvar}
    code = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py")) + (ROOT / "setup.py").read_text()
    code += "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py"))
    # Lines that start InfraKit's own Go file plugin name its variables, not ours.
    ours = "\n".join(line for line in README.splitlines() if "infrakit plugin start" not in line)
    for name in sorted(set(re.findall(r"INFRAKIT_INSTANCE_[A-Z_]+[A-Z]", ours))):
        assert name in envvars or f'"{name}"' in code, f"README names {name}, which nothing reads"


def test_version_option_and_command_agree() -> None:
    opt, cmd = run("--version"), run("version")
    assert opt.returncode == cmd.returncode == 0, (opt.stderr, cmd.stderr)
    assert opt.stdout == cmd.stdout
    assert opt.stdout.startswith(f"infrakit-instance {__version__}\n")
    assert re.search(r"^implementation: (compiled|pure)$", opt.stdout, re.M)


@pytest.mark.parametrize("command", ["check", "compact", "show"])
def test_state_tools_refuse_a_missing_file_and_create_nothing(tmp_path: Path, command: str) -> None:
    typo = tmp_path / "no" / "such" / "stat.json"
    out = run("state", command, str(typo))
    assert out.returncode == 2, out
    assert f"state file {typo} does not exist" in out.stderr
    assert not (tmp_path / "no").exists(), "a typo must not create directories, a state or a journal"


@pytest.mark.parametrize("command", ["check", "compact", "show"])
def test_state_tools_refuse_a_directory(tmp_path: Path, command: str) -> None:
    out = run("state", command, str(tmp_path))
    assert out.returncode == 2 and f"state file {tmp_path} is not a regular file" in out.stderr, out
    assert os.listdir(tmp_path) == []


def test_the_readme_exec_example_runs_as_written(tmp_path: Path) -> None:
    """README's two exec-provider lines, from an installed package (no checkout paths):
    copy the shipped example out, start the plugin with it, provision a device."""
    assert "infrakit-instance examples ~/ik " in README
    assert "--provider exec --provider-config ~/ik/exec_devices.json" in README
    ik = tmp_path / "ik"
    out = run("examples", str(ik), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert os.access(ik / "exec_devices.sh", os.X_OK)
    p = Plugin(tmp_path, "--provider", "exec", "--provider-config", str(ik / "exec_devices.json")).start()
    with p.client() as c:
        instance = c.call("Instance.Provision", {"Spec": spec()})["ID"]
        assert (ik / "devices" / instance).read_text() == "healthy\n"  # the script made its devices directory
        described = c.call("Instance.DescribeInstances", {"Tags": {"device": instance}})
        assert [d["ID"] for d in described["Descriptions"]] == [instance], described
    assert p.stop() == 0
    again = run("examples", str(ik))
    assert again.returncode == 2 and "already exist" in again.stderr, again  # never overwrites


def test_a_socket_that_cannot_be_made_names_its_path(tmp_path: Path) -> None:
    # /sys refuses new files even to root: the bind fails with EPERM or EROFS.
    out = run("--listen", "unix:///sys/infrakit-instance-test.sock", "--state", str(tmp_path / "s.json"))
    assert out.returncode == 1
    assert "cannot listen on unix:///sys/infrakit-instance-test.sock" in out.stderr, out.stderr


def test_a_port_in_use_names_the_address(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "INFRAKIT_PLUGINS_DIR": str(tmp_path)}
        out = subprocess.run(
            [console_script(), "--listen", f"tcp://127.0.0.1:{port}", "--state", str(tmp_path / "s.json")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert out.returncode == 1
    assert f"cannot listen on tcp://127.0.0.1:{port}: Address already in use" in out.stderr, out.stderr
