"""The ``infrakit-instance`` command: a superset of the C plugin's command line."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from . import IMPLEMENTATION, __version__
from .paths import DEFAULT_NAME, plugins_dir, state_path
from .state import StateError
from .store import StoreError
from .tools import state_group

if TYPE_CHECKING:
    from .provider import Provider

__all__ = ["main"]

#: --log 0..5 as in the C plugin: 0 critical ... 4 info (default), 5 debug.
LOG_LEVELS = {
    0: logging.CRITICAL,
    1: logging.ERROR,
    2: logging.WARNING,
    3: logging.WARNING,  # "notice" has no logging equivalent; warnings are the nearest
    4: logging.INFO,
    5: logging.DEBUG,
}


class _KeyValue(click.types.StringParamType):
    """``key=value``; from the environment variable, one per line."""

    name = "key=value"
    envvar_list_splitter = "\n"


def _load_provider(spec: str, config_file: str | None, opts: tuple[str, ...]) -> Provider:
    """The provider, or a click error saying what is wrong with its name or options."""
    from .providers import ProviderSpecError, load_provider, parse_option, read_options_file

    hint = "--provider-config"
    try:
        options = read_options_file(config_file) if config_file else {}
        hint = "--provider-opt"
        for opt in opts:
            key, value = parse_option(opt)
            options[key] = value
        hint = "--provider"
        return load_provider(spec, options)
    except ProviderSpecError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _setup_logging(level: int, fmt: str = "text") -> None:
    from .logs import setup

    setup(LOG_LEVELS[level], fmt)


def _version_text() -> str:
    import orjson

    try:
        import uvloop

        uv = getattr(uvloop, "__version__", "unknown")
    except ImportError:
        uv = "not installed (asyncio event loop)"
    return "\n".join(
        [
            f"infrakit-instance {__version__}",
            f"implementation: {IMPLEMENTATION}",
            f"python: {sys.version.split()[0]}",
            f"uvloop: {uv}",
            f"orjson: {orjson.__version__}",
            "instance API: 0.1.0 0.3.0 0.5.0 0.6.0 0.6.1",
        ]
    )


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit()


class _Main(click.Group):
    """Runs the plugin when no subcommand is given (``infrakit-instance --name x``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            ctx.meta["subcommand_first"] = True
        return super().parse_args(ctx, args)


@click.group(
    cls=_Main,
    invoke_without_command=True,
    context_settings={"auto_envvar_prefix": "INFRAKIT_INSTANCE", "help_option_names": ["-h", "--help"]},
)
@click.option(
    "--name",
    default=DEFAULT_NAME,
    show_default=True,
    show_envvar=True,
    help="Plugin name: the socket's file name in the plugins directory.",
)
@click.option(
    "--log",
    "log_level",
    type=click.IntRange(0, 5),
    default=4,
    show_default=True,
    show_envvar=True,
    help="0 critical, 1 error, 2 warning, 3 notice, 4 info, 5 debug (every request and response).",
)
@click.option(
    "--state",
    "state",
    default=None,
    show_envvar=True,
    help="State file. [default: $INFRAKIT_HOME/state/NAME.json, INFRAKIT_HOME defaulting to ~/.infrakit]",
)
@click.option(
    "--listen",
    default=None,
    show_envvar=True,
    help="unix:///path/to/socket or tcp://host:port. [default: unix://PLUGINS_DIR/NAME]",
)
@click.option(
    "--fsync",
    type=click.Choice(["always", "never"]),
    default="always",
    show_default=True,
    show_envvar=True,
    help=(
        "always: answer a change only once it is on disk; never: leave flushing to the OS"
        " (faster, may lose the last changes on power loss)."
    ),
)
@click.option(
    "--max-body",
    type=click.IntRange(1),
    default=16 * 1024 * 1024,
    show_default=True,
    show_envvar=True,
    help="Largest request body accepted, in bytes (larger: HTTP 413).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    show_envvar=True,
    help="Seconds before an idle keep-alive connection is closed.",
)
@click.option(
    "--socket-mode",
    default="0600",
    show_default=True,
    show_envvar=True,
    help="Permissions of the unix socket, in octal.",
)
@click.option(
    "--provider",
    "provider_spec",
    envvar="INFRAKIT_INSTANCE_PROVIDER",
    default="logical",
    show_default=True,
    show_envvar=True,
    help=(
        "What provisions real instances: a registered name (logical, exec, or one from the"
        " infrakit_instance.providers entry points) or module:attribute (or path/to/file.py:attribute)."
    ),
)
@click.option(
    "--provider-config",
    type=click.Path(dir_okay=False),
    default=None,
    show_envvar=True,
    help="JSON file (YAML for .yaml/.yml, with PyYAML) holding the provider's options object.",
)
@click.option(
    "--provider-opt",
    "provider_opts",
    envvar="INFRAKIT_INSTANCE_PROVIDER_OPT",
    type=_KeyValue(),
    multiple=True,
    show_envvar=True,
    help=(
        "A provider option as key=value (value parsed as JSON when it parses, else a string);"
        " repeatable, overrides --provider-config. In the environment variable: one per line."
    ),
)
@click.option(
    "--sync-interval",
    type=click.FloatRange(min=0),
    default=None,
    show_envvar=True,
    help=(
        "Seconds between syncs with the provider (broken instances to NonFunctional, recovered ones"
        " back, gone ones removed); 0: only on SIGHUP/SIGUSR1. [default: 0 for the logical provider,"
        " 60 otherwise]"
    ),
)
@click.option(
    "--provider-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    show_envvar=True,
    help="Seconds any provider call (provision, destroy, status...) may take before it fails; 0: no limit.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    show_envvar=True,
    help="Log lines as text, or as one JSON object a line (time, level, logger, conn, message).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    show_envvar=True,
    help="Seconds a request may take to arrive whole, from its first byte (later: HTTP 408, closed).",
)
@click.option(
    "--min-body-rate",
    type=click.IntRange(0),
    default=1024,
    show_default=True,
    show_envvar=True,
    help="Bytes per second a request body must keep up, over each 2 s (slower: HTTP 408); 0: no minimum.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    show_envvar=True,
    help="Open connections at most; at the limit, accepting pauses until one closes.",
)
@click.option(
    "--max-buffered",
    type=click.IntRange(1),
    default=256 * 1024 * 1024,
    show_default=True,
    show_envvar=True,
    help="Bytes of unfinished requests held across all connections (past it: HTTP 503, closed).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    show_envvar=True,
    help="Requests in one JSON-RPC batch at most (more: -32600).",
)
@click.option(
    "--max-batch-bytes",
    type=click.IntRange(1),
    default=16 * 1024 * 1024,
    show_default=True,
    show_envvar=True,
    help="Bytes of answers one batch may get; answers past it are -32000 errors saying so.",
)
@click.option(
    "--describe-cache",
    type=click.IntRange(0),
    default=64 * 1024 * 1024,
    show_default=True,
    show_envvar=True,
    help="Bytes of DescribeInstances answers kept for reuse (least recently used dropped first).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="Allow a tcp:// address other hosts can reach (needs --auth-token-file).",
)
@click.option(
    "--auth-token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    show_envvar=True,
    help="File holding the token every TCP request must send as 'Authorization: Bearer <token>'.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    show_envvar=True,
    help="A further name TCP requests may give in Host or Origin (besides localhost and the listen address).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print version information (as the version command) and exit.",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    show_envvar=True,
    help=(
        "Keep the state in etcd instead of the state file: etcd://host:port[,host:port...]/prefix"
        " (one replica per manager may share a prefix). [default: the --state file]"
    ),
)
@click.option(
    "--etcd-cacert",
    type=click.Path(dir_okay=False),
    default=None,
    show_envvar=True,
    help="CA bundle that signs etcd's server certificates (TLS).",
)
@click.option(
    "--etcd-cert",
    type=click.Path(dir_okay=False),
    default=None,
    show_envvar=True,
    help="Client certificate for etcd (TLS).",
)
@click.option(
    "--etcd-key", type=click.Path(dir_okay=False), default=None, show_envvar=True, help="Client key for etcd (TLS)."
)
@click.option(
    "--etcd-user",
    default=None,
    show_envvar=True,
    help="etcd user; the password comes from --etcd-password-file or INFRAKIT_INSTANCE_ETCD_PASSWORD.",
)
@click.option(
    "--etcd-password-file",
    type=click.Path(dir_okay=False),
    default=None,
    show_envvar=True,
    help="File holding the etcd user's password.",
)
@click.option(
    "--etcd-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    show_envvar=True,
    help="Seconds a change may wait for etcd to commit it (retries included) before it fails with -32000.",
)
@click.option(
    "--max-txn-ops",
    type=click.IntRange(2),
    default=128,
    show_default=True,
    show_envvar=True,
    help="Operations per etcd transaction when concurrent changes are committed together (etcd's --max-txn-ops).",
)
@click.option(
    "--consistent-reads",
    is_flag=True,
    default=False,
    show_envvar=True,
    help="With etcd: each Describe first catches up with a quorum revision (every replica's acknowledged changes).",
)
@click.pass_context
def main(
    ctx: click.Context,
    name: str,
    log_level: int,
    state: str | None,
    listen: str | None,
    fsync: str,
    max_body: int,
    idle_timeout: float,
    socket_mode: str,
    provider_spec: str,
    provider_config: str | None,
    provider_opts: tuple[str, ...],
    sync_interval: float | None,
    provider_timeout: float,
    log_format: str,
    request_timeout: float,
    min_body_rate: int,
    max_connections: int,
    max_buffered: int,
    max_batch: int,
    max_batch_bytes: int,
    describe_cache: int,
    allow_remote: bool,
    auth_token_file: str | None,
    allow_hosts: tuple[str, ...],
    store_url: str | None,
    etcd_cacert: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
    etcd_user: str | None,
    etcd_password_file: str | None,
    etcd_timeout: float,
    max_txn_ops: int,
    consistent_reads: bool,
) -> None:
    """InfraKit instance plugin: serves InfraKit's Instance API (0.1.0 to 0.6.1) on a
    unix socket and keeps every instance in one JSON state file."""
    _setup_logging(log_level, log_format)
    if ctx.invoked_subcommand is not None:
        return
    from .provider import ProviderError
    from .server import Config, EdgeError, SocketInUse, check_edge, run

    try:
        mode = int(socket_mode, 8)
    except ValueError:
        raise click.BadParameter(
            f"{socket_mode!r} is not an octal mode such as 0600", param_hint="--socket-mode"
        ) from None
    pdir = plugins_dir()
    if listen is None:
        listen = "unix://" + os.path.join(pdir, name)
    elif not (listen.startswith("unix://") or listen.startswith("tcp://")):
        raise click.BadParameter("use unix:///path or tcp://host:port", param_hint="--listen")
    if listen.startswith("tcp://") and not listen[6:].rpartition(":")[2].isdigit():
        raise click.BadParameter("tcp:// needs host:port, e.g. tcp://127.0.0.1:24864", param_hint="--listen")
    token = None
    if auth_token_file is not None:
        with open(auth_token_file, "rb") as f:
            token = f.read().strip()
        if not token or any(c <= 32 or c > 126 for c in token):
            raise click.BadParameter(
                "the token file must hold one token of printable ASCII characters", param_hint="--auth-token-file"
            )
    etcd = None
    if store_url:
        etcd = _etcd_options(
            store_url, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, etcd_timeout, max_txn_ops
        )
        etcd.consistent_reads = consistent_reads
    config = Config(
        store_url=store_url or "",
        etcd=etcd,
        name=name,
        listen=listen,
        state=state or state_path(name),
        plugins_dir=pdir,
        fsync=fsync == "always",
        max_body=max_body,
        idle_timeout=idle_timeout,
        socket_mode=mode,
        provider=_load_provider(provider_spec, provider_config, provider_opts),
        provider_timeout=provider_timeout,
        sync_interval=sync_interval,
        request_timeout=request_timeout,
        min_body_rate=min_body_rate,
        max_connections=max_connections,
        max_buffered=max_buffered,
        max_batch=max_batch,
        max_batch_bytes=max_batch_bytes,
        describe_cache=describe_cache,
        allow_remote=allow_remote,
        auth_token=token,
        allow_hosts=allow_hosts,
    )
    try:
        check_edge(config)
    except EdgeError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        code = run(config)
    except (SocketInUse, StateError, StoreError) as exc:
        click.echo(f"infrakit-instance: {exc}", err=True)
        sys.exit(1)
    except ProviderError as exc:
        click.echo(f"infrakit-instance: provider {provider_spec!r} could not start: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"infrakit-instance: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


def _etcd_options(
    url: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    user: str | None,
    password_file: str | None,
    timeout: float,
    max_txn_ops: int,
) -> Any:
    """The etcd options, or a click error saying what is wrong with the URL or the credentials."""
    from .store.etcd import EtcdOptions, parse_url, password_from

    try:
        parse_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None
    if bool(cert) != bool(key):
        raise click.BadParameter("give both --etcd-cert and --etcd-key, or neither", param_hint="--etcd-cert")
    try:
        password = password_from(password_file)
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-password-file") from None
    if user and password is None:
        raise click.BadParameter(
            "--etcd-user needs a password: --etcd-password-file or INFRAKIT_INSTANCE_ETCD_PASSWORD",
            param_hint="--etcd-user",
        )
    return EtcdOptions(
        cacert=cacert,
        cert=cert,
        key=key,
        user=user,
        password=password if user else None,
        timeout=timeout,
        max_txn_ops=max_txn_ops,
    )


@main.command()
def version() -> None:
    """Print version information: this package, the implementation, uvloop and orjson."""
    click.echo(_version_text())


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def examples(directory: str) -> None:
    """Copy the exec provider's example (a script for every hook and its config) into DIRECTORY."""
    from .examples import copy_examples

    try:
        script, config = copy_examples(directory)
    except FileExistsError as exc:
        raise click.UsageError(f"{exc}: choose another directory") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the examples: {exc}") from None
    click.echo(f"wrote {script} and {config}; run the plugin with them:")
    click.echo(f"  infrakit-instance --provider exec --provider-config {config} --sync-interval 30")


main.add_command(state_group)
