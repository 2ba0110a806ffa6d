"""The exec provider: each hook runs a command the user gives.

Options (docs/providers.md has the full contract and an example):

``provision``, ``destroy`` (required), ``status``, ``validate``, ``label`` (optional)
    A command: a list of strings is run as is; a string is split like a
    shell would (``shlex``) and run directly, unless it holds shell syntax
    (a pipe, redirection, ``;``, ``&``, ``$``, a glob, backquotes, ``~``,
    a leading ``VAR=value``...), in which case it runs under ``/bin/sh -c``.
``timeout``
    Seconds a command may run before its whole process group is killed
    (SIGKILL) and the hook fails with the stderr it printed so far.
    Default: none of its own, ``--provider-timeout`` bounds it.
``env``
    An object of extra environment variables for every command.
``cwd``
    The directory commands run in (default: the plugin's).

Every command gets a JSON document on stdin (reading it is optional) and
``INFRAKIT_*`` environment variables (``INFRAKIT_INSTANCE_ID`` for provision is
the ID the plugin proposes); it fails by exiting non-zero, and its stderr
(trimmed) becomes the error the InfraKit user sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ..provider import Health, Instance, Provider, ProviderError, Provisioned

__all__ = ["Command", "ExecProvider"]

log = logging.getLogger(__name__)

HOOKS = ("provision", "destroy", "status", "validate", "label")
_REQUIRED = ("provision", "destroy")
_OPTIONS = (*HOOKS, "timeout", "env", "cwd")
_SHELL_CHARS = frozenset("|&;<>()$`*?[]{}~!#\n")
_STDERR_KEEP = 2000  # characters of stderr quoted in an error
_MAX_OUTPUT = 64 * 1024 * 1024  # stdout a command may print before it is an error


class Command:
    """One configured command: what to run, and whether through ``/bin/sh -c``."""

    def __init__(self, hook: str, value: Any) -> None:
        self.hook = hook
        if isinstance(value, str):
            if not value.strip():
                raise ProviderError(f"exec provider: the {hook} command is empty")
            self.text = value
            self.shell = _needs_shell(value)
            self.argv = ["/bin/sh", "-c", value] if self.shell else shlex.split(value)
        elif isinstance(value, list) and value and all(isinstance(a, str) for a in value):
            self.text = shlex.join(value)
            self.shell = False
            self.argv = list(value)
        else:
            raise ProviderError(
                f"exec provider: the {hook} command must be a string or a non-empty list of strings, not {value!r}"
            )

    def __repr__(self) -> str:
        return f"Command({self.hook!r}, {self.text!r}, shell={self.shell})"


def _needs_shell(text: str) -> bool:
    if any(c in _SHELL_CHARS for c in text):
        return True
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote: let the shell report it
        return True
    return bool(words) and "=" in words[0]


class ExecProvider(Provider):
    """Runs a command for each hook (see the module documentation)."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        opts = self.options
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise ProviderError(f"exec provider: unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
        missing = [h for h in _REQUIRED if not opts.get(h)]
        if missing:
            raise ProviderError(
                f"exec provider: give a {' and a '.join(missing)} command, e.g."
                " --provider-opt provision=./provision.sh --provider-opt destroy=./destroy.sh"
            )
        self.commands = {h: Command(h, opts[h]) for h in HOOKS if opts.get(h) is not None}
        timeout = opts.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ProviderError(f"exec provider: timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout: float | None = None if timeout is None else float(timeout)
        env = opts.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ProviderError("exec provider: env must be an object of strings")
        self.env: dict[str, str] = env
        cwd = opts.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
            raise ProviderError(f"exec provider: cwd {cwd!r} is not a directory")
        self.cwd: str | None = cwd

    # -- hooks ----------------------------------------------------------------

    async def validate(self, properties: Any) -> None:
        if "validate" in self.commands:
            await self.run("validate", properties, {})

    async def provision(self, spec: dict[str, Any], instance_id: str | None = None) -> Provisioned | None:
        env = {
            "INFRAKIT_INSTANCE_ID": instance_id or "",
            "INFRAKIT_LOGICAL_ID": spec.get("LogicalID") or "",
            "INFRAKIT_TAGS": json.dumps(spec.get("Tags") or {}),
        }
        out = await self.run("provision", spec, env)
        if not out.strip():
            return None
        doc = self._json(out, "provision", 'nothing, or {"ID": "...", "Tags": {...}}')
        if not isinstance(doc, dict):
            raise self._malformed("provision", out, 'nothing, or an object {"ID": "...", "Tags": {...}}')
        instance_id = doc.get("ID")
        if instance_id is not None and (not isinstance(instance_id, str) or not instance_id):
            raise self._malformed("provision", out, '"ID" to be a non-empty string (or absent)')
        tags = doc.get("Tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise self._malformed("provision", out, '"Tags" to be an object of strings (or absent)')
        return Provisioned(instance_id, tags)

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        env = {
            "INFRAKIT_INSTANCE_ID": instance_id,
            "INFRAKIT_LOGICAL_ID": description.get("LogicalID") or "",
            "INFRAKIT_TAGS": json.dumps(description.get("Tags") or {}),
            "INFRAKIT_REASON": str(context.get("Reason") or ""),
            "INFRAKIT_CONTEXT": json.dumps(context),
        }
        await self.run("destroy", description, env)

    async def label(self, instance_id: str, labels: dict[str, str]) -> None:
        if "label" in self.commands:
            env = {"INFRAKIT_INSTANCE_ID": instance_id, "INFRAKIT_LABELS": json.dumps(labels)}
            await self.run("label", labels, env)

    async def status(self, instances: Sequence[Instance]) -> Mapping[str, Health]:
        if "status" not in self.commands or not instances:
            return {}
        doc = {
            "Instances": [i.description() for i in instances if i.functional],
            "NonFunctional": [i.description() for i in instances if not i.functional],
        }
        env = {"INFRAKIT_INSTANCE_IDS": "\n".join(i.id for i in instances)}
        out = await self.run("status", doc, env)
        if not out.strip():
            return {}
        expect = 'an object {"<instance ID>": "healthy" | "broken" | "gone", ...}'
        answer = self._json(out, "status", expect)
        if not isinstance(answer, dict):
            raise self._malformed("status", out, expect)
        health: dict[str, Health] = {}
        for key, value in answer.items():
            try:
                health[key] = Health(value.lower() if isinstance(value, str) else value)
            except ValueError:
                raise self._malformed("status", out, f"healthy, broken or gone for {key!r}, not {value!r}") from None
        return health

    # -- running commands ------------------------------------------------------------

    async def run(self, hook: str, stdin_doc: Any, env: dict[str, str]) -> str:
        """Run ``hook``'s command with ``stdin_doc`` as JSON on stdin; its stdout, or
        :class:`ProviderError` on a non-zero exit or a timeout."""
        command = self.commands[hook]
        full_env = {**os.environ, **self.env, **env, "INFRAKIT_HOOK": hook}
        data = json.dumps(stdin_doc).encode()
        log.debug("exec %s: %s", hook, command.text)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group, so a timeout kills all of it
            )
        except OSError as exc:
            raise ProviderError(f"{hook} command {command.text!r} could not start: {exc.strerror or exc}") from None
        out, err = bytearray(), bytearray()
        steps = [
            asyncio.ensure_future(step)
            for step in (_feed(proc, data), _drain(proc.stdout, out), _drain(proc.stderr, err), proc.wait())
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*steps), self.timeout)
        except asyncio.TimeoutError:
            await _kill(proc)
            raise ProviderError(
                f"{hook} command {command.text!r} did not finish within {self.timeout:g} s and was killed"
                f"{_stderr_note(err)}"
            ) from None
        except _OutputTooLarge:
            await _kill(proc)
            raise ProviderError(f"{hook} command {command.text!r} printed more than {_MAX_OUTPUT} bytes") from None
        except BaseException:  # cancelled (--provider-timeout, shutdown): leave nothing running
            await asyncio.shield(_kill(proc))
            raise
        finally:
            for step in steps:
                step.cancel()
        code = proc.returncode
        if code != 0:
            assert code is not None
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
            raise ProviderError(f"{hook} command {command.text!r} {how}{_stderr_note(err)}")
        if err.strip():
            log.info("exec %s stderr: %s", hook, _trim(err))
        return out.decode("utf-8", errors="replace")

    def _json(self, out: str, hook: str, expect: str) -> Any:
        try:
            return json.loads(out)
        except ValueError:
            raise self._malformed(hook, out, expect) from None

    def _malformed(self, hook: str, out: str, expect: str) -> ProviderError:
        shown = out.strip()
        if len(shown) > 200:
            shown = shown[:200] + "..."
        return ProviderError(
            f"{hook} command {self.commands[hook].text!r} printed malformed output {shown!r}: expected {expect}"
        )


class _OutputTooLarge(Exception):
    pass


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    stdin = proc.stdin
    assert stdin is not None
    # A command may exit, or close its stdin, without reading its input: that is its
    # business.  The pipe then breaks, or (uvloop) its transport is already closed and
    # write() raises RuntimeError: none of it is a failure of the command.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        if not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        stdin.close()


async def _drain(stream: asyncio.StreamReader | None, buf: bytearray) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        buf += chunk
        if len(buf) > _MAX_OUTPUT:
            raise _OutputTooLarge


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def _trim(err: bytes | bytearray) -> str:
    text = bytes(err).decode("utf-8", errors="replace").strip()
    if len(text) > _STDERR_KEEP:
        text = "..." + text[-_STDERR_KEEP:]
    return text


def _stderr_note(err: bytes | bytearray) -> str:
    text = _trim(err)
    return f": {text}" if text else " (nothing on stderr)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
