"""``infrakit-instance state ...``: check, compact, salvage and show a state file."""

from __future__ import annotations

import asyncio
import os
import sys

import click
import orjson

from .paths import DEFAULT_NAME, state_path
from .state import StateError
from .store import FileStore, StoreLocked, compacted_size, load_state_bytes
from .store.damage import salvage as salvage_elements
from .store.file import inspect_state

__all__ = ["state_group"]


def _path(ctx: click.Context, path: str | None) -> str:
    if path:
        return path
    root = ctx.find_root()
    return root.params.get("state") or state_path(root.params.get("name") or DEFAULT_NAME)


def _existing(ctx: click.Context, path: str | None) -> str:
    """The state file to work on; a missing one is a usage error (exit 2) naming it,
    never a new empty state."""
    path = _path(ctx, path)
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "does not exist"
        raise click.UsageError(f"state file {path} {what}")
    return path


@click.group("state")
def state_group() -> None:
    """Inspect and maintain a state file (the plugin's --state, or PATH)."""


@state_group.command("check")
@click.argument("path", required=False)
@click.pass_context
def check(ctx: click.Context, path: str | None) -> None:
    """Say whether the file is valid or recoverable, and what it holds. Changes nothing.

    Exit status: 0 valid, 1 not usable (damage that is not a torn last append: see
    ``state salvage``), 2 no such file, 3 valid once the next start finishes recovery."""
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
