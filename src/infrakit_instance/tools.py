"""``infrakit-instance state ...``: check, compact, salvage and show a state file."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click
import orjson

from .paths import DEFAULT_NAME, state_path
from .state import State, StateError
from .store import FileStore, StoreError, StoreLocked, compacted_size, load_state_bytes
from .store.damage import salvage as salvage_elements
from .store.file import inspect_state

__all__ = ["state_group"]


def _path(ctx: click.Context, path: str | None) -> str:
    if path:
        return path
    root = ctx.find_root()
    return (
        root.params.get("store_url") or root.params.get("state") or state_path(root.params.get("name") or DEFAULT_NAME)
    )


def _existing(ctx: click.Context, path: str | None) -> str:
    """The state file to work on; a missing one is a usage error (exit 2) naming it,
    never a new empty state."""
    path = _path(ctx, path)
    if path.startswith("etcd://"):
        return path  # an etcd prefix: read as it is
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "does not exist"
        raise click.UsageError(f"state file {path} {what}")
    return path


@click.group("state")
def state_group() -> None:
    """Inspect and maintain a state file (the plugin's --state, or PATH), or an etcd:// prefix."""


def _etcd_options(ctx: click.Context) -> Any:
    """The etcd options given to the plugin's command (``--etcd-*``, ``--max-txn-ops``)."""
    from .cli import _etcd_options as options

    p = ctx.find_root().params
    return options(
        "etcd://x:1/p",
        p.get("etcd_cacert"),
        p.get("etcd_cert"),
        p.get("etcd_key"),
        p.get("etcd_user"),
        p.get("etcd_password_file"),
        p.get("etcd_timeout") or 5.0,
        p.get("max_txn_ops") or 128,
    )


def _read_etcd(ctx: click.Context, url: str) -> tuple[State, int]:
    from .store.etcd import parse_url, read_prefix

    try:
        where = parse_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    options = _etcd_options(ctx)
    options.start_timeout = options.timeout
    try:
        return asyncio.run(read_prefix(where, options))
    except (StoreError, StateError) as exc:
        click.echo(f"infrakit-instance: {exc}", err=True)
        sys.exit(1)


def _read_file(path: str) -> State:
    if not os.path.exists(path):
        click.echo(f"infrakit-instance: {path}: no such file", err=True)
        sys.exit(2)
    try:
        return load_state_bytes(inspect_state(path).image, path).state
    except (StateError, OSError) as exc:
        click.echo(f"infrakit-instance: {exc}", err=True)
        sys.exit(1)


@state_group.command("migrate")
@click.argument("src")
@click.argument("dst")
@click.pass_context
def migrate(ctx: click.Context, src: str, dst: str) -> None:
    """Copy a state from SRC to DST, each a state file (the C plugin's included) or an
    etcd://host:port,.../prefix URL, keeping every instance, its Spec and the order.
    Refuses a destination that holds anything. Stop the plugins using either first."""
    from .store.etcd import is_etcd_url, parse_url, write_prefix

    state = _read_etcd(ctx, src)[0] if is_etcd_url(src) else _read_file(src)
    if is_etcd_url(dst):
        options = _etcd_options(ctx)
        options.start_timeout = options.timeout
        try:
            asyncio.run(write_prefix(parse_url(dst), options, state))
        except (StoreError, ValueError) as exc:
            click.echo(f"infrakit-instance: {exc}", err=True)
            sys.exit(1)
    else:
        if os.path.exists(dst) and os.path.getsize(dst) > 0:
            click.echo(f"infrakit-instance: {dst} exists and is not empty: refusing to overwrite it", err=True)
            sys.exit(1)
        doc, _ = state.document(32)
        tmp = dst + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(doc)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    click.echo(f"{src} -> {dst}: {len(state.instances)} instances, {len(state.nonfunctional)} non-functional")


@state_group.command("check")
@click.argument("path", required=False)
@click.pass_context
def check(ctx: click.Context, path: str | None) -> None:
    """Say whether the file is valid or recoverable, and what it holds. Changes nothing.

    Exit status: 0 valid, 1 not usable (damage that is not a torn last append: see
    ``state salvage``), 2 no such file, 3 valid once the next start finishes recovery."""
    path = _path(ctx, path)
    from .store.etcd import is_etcd_url

    if is_etcd_url(path):
        state, keys = _read_etcd(ctx, path)
        click.echo(f"{path}: valid state, {keys} keys")
        click.echo(f"  instances: {len(state.instances)}")
        click.echo(f"  non-functional: {len(state.nonfunctional)}")
        return
    path = _existing(ctx, path)
    try:
        seen = inspect_state(path)
    except OSError as exc:
        click.echo(f"{path}: cannot read: {exc}", err=True)
        sys.exit(1)
    image = seen.image
    try:
        loaded = load_state_bytes(image, path)
    except StateError as exc:
        click.echo(f"{path}: {exc}", err=True)
        if seen.mismatch:
            click.echo(f"  its journal does not apply: {seen.mismatch}", err=True)
        sys.exit(1)
    state, end, repaired = loaded.state, loaded.end, loaded.repaired is not None
    document = loaded.repaired or image
    in_place = end >= 0
    click.echo(f"{path}: valid JSON state, {len(document)} bytes")
    click.echo(f"  instances: {len(state.instances)}")
    click.echo(f"  non-functional: {len(state.nonfunctional)}")
    click.echo(f"  layout: {'in-place editable' if in_place else 'other (the plugin rewrites it at start)'}")
    if in_place:
        holes = max(0, end - compacted_size(state))
        click.echo(f"  whitespace left by removals: {holes} bytes ({holes * 100 // max(1, len(image))}%)")
    if seen.replayed:
        click.echo(f"  {seen.replayed} interrupted batches are pending in the journal: the next start replays them")
    if seen.mismatch:
        click.echo(f"  a journal is present but does not apply, and never will: {seen.mismatch}")
    if repaired:
        click.echo(
            f"  the last append was cut short: the next start drops its"
            f" {len(image.rstrip(b' ')) - len(document)} incomplete bytes"
        )
    if seen.replayed or repaired:
        sys.exit(3)


@state_group.command("salvage")
@click.argument("path")
@click.option("--out", "out", required=True, metavar="NEW", help="The new state file to write (must not exist).")
def salvage(path: str, out: str) -> None:
    """Write every intact instance of a damaged state file to a new file.

    Keeps the elements before and after any damage (and the journal's pending
    batches, if it applies); says exactly what it could not keep.  Never
    changes PATH.  Exit status: 0 written, 1 nothing could be read."""
    try:
        seen = inspect_state(path)
        state, lost = salvage_elements(seen.image)
    except (OSError, StateError) as exc:
        click.echo(f"{path}: {exc}", err=True)
        sys.exit(1)
    doc = state.document(32)[0] + b" " * 65536
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        click.echo(f"{out}: {exc.strerror or exc} (salvage writes a new file only)", err=True)
        sys.exit(1)
    with os.fdopen(fd, "wb") as f:
        f.write(doc)
        f.flush()
        os.fsync(f.fileno())
    if seen.replayed:
        click.echo(f"{path}: applied {seen.replayed} batches pending in its journal (in the copy only)")
    if seen.mismatch:
        click.echo(f"{path}: its journal does not apply and was not used: {seen.mismatch}")
    click.echo(f"{out}: {len(state.instances)} instances, {len(state.nonfunctional)} non-functional kept")
    if not lost:
        click.echo("  nothing was lost")
    for start, stop, why in lost:
        click.echo(f"  not kept: bytes {start}-{stop - 1} of {path}: {why}")


@state_group.command("compact")
@click.argument("path", required=False)
@click.pass_context
def compact(ctx: click.Context, path: str | None) -> None:
    """Recover and rewrite the file without the whitespace removals leave.
    Refuses while a plugin has the file open."""
    path = _existing(ctx, path)
    before = os.path.getsize(path)

    async def run() -> None:
        store = FileStore(path)
        await store.open()
        try:
            await store.compact()
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except (StateError, StoreLocked, OSError) as exc:
        click.echo(f"infrakit-instance: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{path}: {before} -> {os.path.getsize(path)} bytes")


@state_group.command("show")
@click.argument("path", required=False)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only instances with this tag (repeatable: all must match).",
)
@click.option("--properties", is_flag=True, help="Include each instance's provisioned Spec.")
@click.option("--nonfunctional", is_flag=True, help="Show the NonFunctional array instead.")
@click.pass_context
def show(ctx: click.Context, path: str | None, tags: tuple[str, ...], properties: bool, nonfunctional: bool) -> None:
    """Print the instances as DescribeInstances would (JSON)."""
    path = _existing(ctx, path)
    wanted: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep:
            raise click.BadParameter(f"{t!r} is not KEY=VALUE", param_hint="--tag")
        wanted[key] = value
    from .store.etcd import is_etcd_url

    if is_etcd_url(path):
        state = _read_etcd(ctx, path)[0]
    else:
        try:
            state = load_state_bytes(inspect_state(path).image, path).state
        except (StateError, OSError) as exc:
            click.echo(f"infrakit-instance: {exc}", err=True)
            sys.exit(1)
    if nonfunctional:
        records = [r for r in state.nonfunctional.values() if all(r.tags.get(k) == v for k, v in wanted.items())]
        from ._impl import codec

        answer = codec.join_descriptions(records, properties)
    else:
        answer = state.describe(wanted or None, properties)
    click.echo(orjson.dumps(orjson.loads(answer), option=orjson.OPT_INDENT_2).decode())
