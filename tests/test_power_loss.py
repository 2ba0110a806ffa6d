"""Power loss, model-checked: every crash state of the store's recorded writes recovers
with nothing acknowledged lost and no acknowledged destroy come back.

A seeded workload (concurrent provisions, destroys that punch holes and trigger
whole-file rewrites, labels that outgrow their room, NonFunctional moves and
restores, forgets, compaction) runs against a real directory through a
:class:`~powerloss.RecordingDisk`.  For every sync point of the trace, the crash
states of :mod:`powerloss` are laid out in a directory and the store is opened on
each, as after a reboot.  The state it comes up with must be the state after some
prefix of the changes (in the order they were written) that holds every change
acknowledged before the crash,
the file must parse with ``json``, and opening it again must give the same.

``INFRAKIT_CRASH_STATES=N`` checks N crash states (default: a CI-sized run of a few
seconds); ``INFRAKIT_CRASH_SEED`` picks the first workload seed.  A failure prints
the seed, the crash state shrunk to as little persisted as still fails, and a
``replay(...)`` call that reproduces it in a regression test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from infrakit_instance._impl import codec
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore
from infrakit_instance.store.disk import Disk
from powerloss import SECTOR, CrashState, RecordingDisk, Trace, apply_state, crash_states, materialize, pending

FIXTURE = Path(__file__).parent / "fixtures" / "c-plugin-state.json"
STATE = "s.json"


# -- the workload ----------------------------------------------------------------------------


@dataclass
class Change:
    kind: str
    instance: str
    arg: Any
    issued: int  # trace length when it was issued
    fut: asyncio.Future[None] | None = None


@dataclass
class Run:
    trace: Trace
    initial: tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]
    changes: list[Change] = field(default_factory=list)
    #: id(batch future) -> (trace length at its ack, order of acks)
    acks: dict[int, tuple[int, int]] = field(default_factory=dict)


def _record(n: int, rng: random.Random) -> tuple[Record, dict[str, str]]:
    tags = {"infrakit.group": rng.choice("ab"), "n": str(n)}
    # Specs from a few bytes to over two sectors: elements straddle sector boundaries.
    spec = {"Tags": tags, "Properties": {"pad": "x" * rng.choice([0, 10, 200, 700, 1300])}}
    instance = f"pl-{n}"
    return Record(instance, codec.encode_brief(instance, None, tags), orjson.dumps(spec)), tags


def describe(store: FileStore) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Instances in order, NonFunctional by ID: what recovery must get right."""
    instances = json.loads(store.describe(None, True))
    # As Describe shows them (an instance from a C plugin file has no Spec: Properties null).
    nonfunctional = {r.id: {"Properties": None, **json.loads(r.element())} for r in store.state.nonfunctional.values()}
    return instances, nonfunctional


async def run_workload(
    directory: str, seed: int, steps: int, start: str, disk_class: type[RecordingDisk] = RecordingDisk
) -> Run:
    rng = random.Random(seed)
    if start == "c-plugin":  # a file of the C plugin's layout: rewritten whole at the first open
        shutil.copy(FIXTURE, os.path.join(directory, STATE))
    scratch = os.path.join(directory, "..", f"initial-{seed}")
    os.makedirs(scratch, exist_ok=True)
    if start == "c-plugin":
        shutil.copy(FIXTURE, os.path.join(scratch, STATE))
    first = FileStore(os.path.join(scratch, STATE), fsync=False)
    await first.open()
    initial = describe(first)
    await first.close()

    disk = disk_class(directory)
    run = Run(disk.trace, initial)
    # A small compaction threshold, so that destroys trigger whole-file rewrites.
    store = FileStore(os.path.join(directory, STATE), disk=disk, compact_ratio=1.3)
    await store.open()
    live = [d["ID"] for d in initial[0]]
    broken = list(initial[1])
    n = 0

    def issue(kind: str, instance: str, arg: Any = None) -> asyncio.Future[None]:
        change = Change(kind, instance, arg, len(disk.trace.ops))
        if kind == "provision":
            fut = store.provision(*arg)
        elif kind == "destroy":
            fut = store.destroy(instance)
        elif kind == "label":
            fut = store.label(instance, arg)
        elif kind == "functional":
            fut = store.set_functional(instance, arg)
        elif kind == "forget":
            fut = store.forget(instance)
        else:
            fut = store.compact()
        change.fut = fut
        fut.add_done_callback(lambda f: run.acks.setdefault(id(f), (len(disk.trace.ops), len(run.acks))))
        run.changes.append(change)
        return fut

    in_flight: list[asyncio.Future[None]] = []
    for _ in range(steps):
        for _ in range(rng.randint(1, 5)):  # a burst of concurrent changes: one or two batches
            op = rng.random()
            if op < 0.4 or len(live) < 3:
                n += 1
                rec, tags = _record(n, rng)
                in_flight.append(issue("provision", rec.id, (rec, tags)))
                live.append(rec.id)
            elif op < 0.65:
                victim = live.pop(rng.randrange(len(live)))
                in_flight.append(issue("destroy", victim))
            elif op < 0.85:
                victim = rng.choice(live)
                # Up to 90 bytes: past the room left for labels, so elements move too.
                in_flight.append(issue("label", victim, {"l": "v" * rng.randint(0, 90)}))
            elif op < 0.91:
                victim = live.pop(rng.randrange(len(live)))
                in_flight.append(issue("functional", victim, False))
                broken.append(victim)
            elif op < 0.95 and broken:
                back = broken.pop(rng.randrange(len(broken)))
                in_flight.append(issue("functional", back, True))
                live.insert(0, back)
            elif op < 0.97 and broken:
                in_flight.append(issue("forget", broken.pop(rng.randrange(len(broken)))))
            else:
                in_flight.append(issue("compact", ""))
        if rng.random() < 0.6:
            await asyncio.gather(*in_flight)
            in_flight = []
        else:  # let the batch start writing, then add to the next one while it does
            for _ in range(rng.randint(1, 3)):
                await asyncio.sleep(0)
    await asyncio.gather(*in_flight)
    await store.close()
    return run


# -- the model ------------------------------------------------------------------------------


def change_states(run: Run) -> tuple[list[Any], list[int], list[int]]:
    """The state after each prefix of the changes (in the order they were issued, which
    is the order the store writes them), with each change's acknowledgement point (its
    batch's) and issue point in the trace."""
    order = sorted({id(c.fut) for c in run.changes}, key=lambda b: run.acks[b])
    rank = {b: i for i, b in enumerate(order)}
    ranks = [rank[id(c.fut)] for c in run.changes]
    assert ranks == sorted(ranks), "batches must be written in the order their changes were issued"
    instances = {d["ID"]: d for d in copy.deepcopy(run.initial[0])}
    nonfunctional = copy.deepcopy(run.initial[1])
    states = [(copy.deepcopy(list(instances.values())), copy.deepcopy(nonfunctional))]
    for c in run.changes:
        if c.kind == "provision":
            instances[c.instance] = json.loads(c.arg[0].element())
        elif c.kind == "destroy":
            del instances[c.instance]
        elif c.kind == "label":
            instances[c.instance]["Tags"].update(c.arg)
        elif c.kind == "functional" and not c.arg:
            nonfunctional[c.instance] = instances.pop(c.instance)
        elif c.kind == "functional":
            instances = {c.instance: nonfunctional.pop(c.instance), **instances}
        elif c.kind == "forget":
            nonfunctional.pop(c.instance)
        states.append((copy.deepcopy(list(instances.values())), copy.deepcopy(nonfunctional)))
    return states, [run.acks[id(c.fut)][0] for c in run.changes], [c.issued for c in run.changes]


# -- checking one crash state ------------------------------------------------------------------


async def recovered(directory: str) -> Any:
    """What the store comes up with on this directory, checked to parse and to reopen alike."""
    path = os.path.join(directory, STATE)
    store = FileStore(path, fsync=False)
    await store.open()
    got = describe(store)
    await store.close()
    with open(path, "rb") as f:
        json.loads(f.read())  # the file parses with json, as the C plugin reads it
    again = FileStore(path, fsync=False)
    await again.open()
    assert describe(again) == got, "a second start came up with a different state"
    await again.close()
    return got


def violation(run: Run, model: Any, state: CrashState, directory: str) -> str | None:
    states, acked_at, issued_at = model
    materialize(run.trace, apply_state(run.trace, state), directory)
    try:
        got = asyncio.run(recovered(directory))
    except Exception as exc:  # a refusal or a crash: power loss alone must never cause either
        return f"the store did not open: {type(exc).__name__}: {exc}"
    # Acknowledged changes form a prefix (batches are written in order): every one of them
    # must be there, and after them any prefix of the changes issued before the crash.
    acked = sum(1 for a in acked_at if a <= state.cut)
    issued = sum(1 for i in issued_at if i < state.cut)
    if any(got == states[m] for m in range(acked, issued + 1)):
        return None
    earlier = [m for m in range(acked) if got == states[m]]
    if earlier:
        return f"came up as after change {earlier[-1]}: changes up to {acked} were acknowledged"
    return (
        f"came up in a state no prefix of the changes leads to: {len(got[0])} instances, {len(got[1])} non-functional"
    )


def shrink(run: Run, model: Any, state: CrashState, directory: str) -> CrashState:
    """The failing state with as little persisted as still fails: each unit taken
    back as far towards "as last synced" as the failure allows."""
    choice = list(state.choice)
    kind = (violation(run, model, state, directory) or "").split(":")[0]
    changed = True
    while changed:
        changed = False
        for i, c in enumerate(choice):
            for lower in range(c):
                trial = CrashState(state.cut, (*choice[:i], lower, *choice[i + 1 :]))
                found = violation(run, model, trial, directory)
                if found and found.split(":")[0] == kind:  # the same kind of failure
                    choice[i], changed = lower, True
                    break
    return CrashState(state.cut, tuple(choice))


_TMP = re.compile(r"\.[0-9a-f]{12}\.tmp$")


def digest(trace: Trace) -> str:
    """The trace, with files numbered by first appearance (inode numbers vary) and
    temporary names without their random part."""
    numbers: dict[int, int] = {}
    norm = []
    for op in trace.ops:
        if op[0] == "write":  # where and how much: the journal's bytes hold a random epoch
            op = (op[0], numbers.setdefault(op[1], len(numbers)), op[2], len(op[3]))
        elif op[0] in ("truncate", "sync"):
            op = (op[0], numbers.setdefault(op[1], len(numbers)), *op[2:])
        elif op[0] == "create":
            op = (op[0], _TMP.sub(".tmp", op[1]), numbers.setdefault(op[2], len(numbers)))
        elif op[0] in ("rename", "unlink"):
            op = (op[0], *(_TMP.sub(".tmp", name) for name in op[1:]))
        norm.append(op)
    return hashlib.sha256(repr(norm).encode()).hexdigest()[:16]


def record_run(tmp: Path, seed: int, steps: int, start: str, disk_class: type[RecordingDisk] = RecordingDisk) -> Run:
    directory = tmp / f"run-{seed}-{start}" / "d"
    directory.mkdir(parents=True)
    return asyncio.run(run_workload(str(directory), seed, steps, start, disk_class))


def append_torn_out_of_order(trace: Trace, state: CrashState) -> bool:
    """Whether the state holds a sector of an in-flight append (a write that starts by
    replacing the document's close with an element) but not every sector before it."""
    units = pending(trace, state.cut)
    kept = {(u.file, u.sector): u.versions[:c] for u, c in zip(units, state.choice, strict=True) if u.kind == "sector"}
    for i in {v for u in units for v in u.versions}:
        _, file, offset, *rest = trace.ops[i]
        if trace.ops[i][0] != "write" or not rest[0].startswith((b",\n{", b"\n{")):
            continue
        there = [
            i in kept.get((file, sector), ())
            for sector in range(offset // SECTOR, (offset + len(rest[0]) - 1) // SECTOR + 1)
        ]
        if any(there[j] and not there[j - 1] for j in range(1, len(there))):
            return True
    return False


def check_run(
    tmp: Path, seed: int, steps: int, start: str, budget: int, disk_class: type[RecordingDisk] = RecordingDisk
) -> tuple[int, int, Run]:
    """Check up to ``budget`` crash states of one workload; fail with a replayable report.
    The states checked, and how many of them tear an append out of order."""
    run = record_run(tmp, seed, steps, start, disk_class)
    model = change_states(run)
    rng = random.Random(seed)
    states = list(crash_states(run.trace, rng))
    if len(states) > budget:
        states = rng.sample(states, budget)
    target = tmp / f"crash-{seed}-{start}"
    target.mkdir()
    reordered = 0
    for state in states:
        reordered += append_torn_out_of_order(run.trace, state)
        problem = violation(run, model, state, str(target))
        if not problem:
            continue
        small = shrink(run, model, state, str(target))
        if problem:
            problem = violation(run, model, small, str(target)) or problem
            pytest.fail(
                f"power loss breaks the store (seed {seed}, {steps} steps, start {start}): {problem}\n"
                f"{small.describe(run.trace)}\n"
                f"replay: replay(tmp_path, {seed}, {steps}, {start!r}, {digest(run.trace)!r}, {small.cut},"
                f" {small.choice}) in a test returns the violation (None once fixed)"
            )
    return len(states), reordered, run


def replay(
    tmp: Path, seed: int, steps: int, start: str, trace_digest: str, cut: int, choice: tuple[int, ...]
) -> str | None:
    """A failing crash state as the checker printed it, for a regression test."""
    run = record_run(tmp, seed, steps, start)
    assert digest(run.trace) == trace_digest, f"the workload of seed {seed} writes differently now: rerun the checker"
    target = tmp / "replay"
    target.mkdir()
    return violation(run, change_states(run), CrashState(cut, choice), str(target))


# -- the tests --------------------------------------------------------------------------------


def test_the_store_does_every_durable_operation_through_the_seam(tmp_path: Path) -> None:
    run = record_run(tmp_path, 1, 30, "empty")  # RecordingDisk raises on a file changed around it
    kinds = {op[0] for op in run.trace.ops}
    assert {"write", "sync", "create"} <= kinds, kinds
    assert {c.kind for c in run.changes} >= {"provision", "destroy", "label"}


def test_the_checker_finds_a_store_that_acknowledges_before_syncing(tmp_path: Path) -> None:
    """The checker itself: with syncs turned into nothing (what --fsync never does), a
    power loss can lose acknowledged changes, and the checker must say so."""

    class Unsynced(RecordingDisk):
        def datasync(self, fd: int) -> None:
            pass

        def fsync(self, fd: int) -> None:
            pass

        def dirsync(self, dir_fd: int) -> None:
            pass

    run = record_run(tmp_path, 5, 20, "empty", Unsynced)
    assert not [op for op in run.trace.ops if op[0] in ("sync", "dirsync")]
    model = change_states(run)
    target = tmp_path / "crash"
    target.mkdir()
    states = crash_states(run.trace, random.Random(5))
    found = next((v for st in itertools.islice(states, 200) if (v := violation(run, model, st, str(target)))), None)
    assert found is not None and "acknowledged" in found, found


def test_crash_state_model() -> None:
    """The model on a hand-made trace: synced writes persist; a later write may be
    torn at sector boundaries, but a sector holds a version the page cache had; a
    rename without a directory sync may or may not have happened."""
    trace = Trace(names={"f": 1}, contents={1: b"a" * 1024})
    trace.ops = [
        ("write", 1, 0, b"b" * 1024),  # two sectors
        ("sync", 1),
        ("create", "t", 2),
        ("write", 2, 0, b"new"),
        ("sync", 2),
        ("rename", "t", "f"),
        ("write", 1, 1000, b"c" * 100),  # straddles a sector boundary
        ("write", 1, 1010, b"d" * 10),  # a second version of the same two sectors
    ]
    assert trace.sync_points() == [1, 4, 8]
    units = pending(trace, 8)
    assert [(u.kind, u.sector, u.versions) for u in units] == [
        ("sector", 1, (6, 7)),
        ("sector", 2, (6,)),
        ("size", 0, (6, 7)),
        ("dir", 0, ()),
        ("dir", 0, ()),
    ]

    def files(choice: tuple[int, ...]) -> dict[str, bytes]:
        return {name: data for name, (_, data) in apply_state(trace, CrashState(8, choice)).items()}

    everything = b"b" * 1000 + b"c" * 10 + b"d" * 10 + b"c" * 80
    assert files((2, 1, 2, 1, 1)) == {"f": b"new"}  # the rename happened: the old file is gone
    assert files((2, 1, 2, 0, 0)) == {"f": everything}
    assert files((0, 0, 0, 0, 0)) == {"f": b"b" * 1024}  # as synced: never the "a"s
    # Torn: the first sector as after the first write, the second not written, but the size is.
    assert files((1, 0, 1, 0, 0))["f"] == b"b" * 512 + (b"b" * 488 + b"c" * 24) + b"\0" * 76
    # A sector is written whole: the "d"s never come without the "c"s written before them.
    states = list(crash_states(trace, random.Random(0)))
    contents = [data for st in states for _, data in apply_state(trace, st).values()]
    assert all(b"d" not in data or b"bc" in data for data in contents)
    assert len(states) == (2 * 2 * 2) + (2 * 2 * 2) + (3 * 2 * 3 * 2 * 2)


@pytest.mark.parametrize("start", ["empty", "c-plugin"])
def test_every_crash_state_recovers_everything_acknowledged(tmp_path: Path, start: str) -> None:
    budget = int(os.environ.get("INFRAKIT_CRASH_STATES", "300")) // 2
    seed = int(os.environ.get("INFRAKIT_CRASH_SEED", "11"))
    checked = reordered = 0
    kinds: set[str] = set()
    first = seed
    while checked < budget:
        n, torn, run = check_run(tmp_path, seed, 40, start, budget - checked)
        checked += n
        reordered += torn
        kinds |= {c.kind for c in run.changes}
        seed += 1
    print(
        f"\n{start}: {checked} crash states, seeds {first}-{seed - 1}: 0 violations;"
        f" {reordered} of them tear an append out of order"
    )
    assert checked >= budget
    assert reordered > 0, "the run must cover appends whose sectors land out of order"
    assert kinds >= {"provision", "destroy", "label", "functional"}, kinds


class ThreadedRecorder(RecordingDisk):
    """The recorder with the writer as production runs it: each batch's I/O on the store's
    thread while the loop takes changes into the next batch."""

    overlap = True
    threads: set[str] = set()

    def datasync(self, fd: int) -> None:
        self.threads.add(threading.current_thread().name)
        super().datasync(fd)


@pytest.mark.parametrize("start", ["empty", "c-plugin"])
def test_every_crash_state_of_the_threaded_writer_recovers_everything_acknowledged(tmp_path: Path, start: str) -> None:
    """The main check records on the loop, so that a seed always gives the same trace and a
    failure replays; this one checks the pipelined writer itself, whose batches (and so its
    traces) depend on timing: a failure names the seed, but may not replay."""
    budget = int(os.environ.get("INFRAKIT_CRASH_STATES", "300")) // 4
    ThreadedRecorder.threads = set()
    checked, reordered, run = check_run(tmp_path, 31, 40, start, budget, ThreadedRecorder)
    assert checked >= budget
    assert any(name.startswith("infrakit-store") for name in ThreadedRecorder.threads), ThreadedRecorder.threads
    print(f"\nthreaded writer, {start}: {checked} crash states, seed 31: 0 violations; {reordered} tear an append")


def test_regression_a_rewrite_clears_the_journal_only_once_its_rename_is_durable(tmp_path: Path) -> None:
    """Found by this checker (seed 11): a whole-file rewrite cleared the journal before the
    directory sync of its rename, so a power loss could bring back the old file without the
    records that redo its unsynced writes (three acknowledged batches lost).  Every rewrite
    of the workload must sync the directory between its rename and any journal write."""
    run = record_run(tmp_path, 11, 40, "empty")
    ops = run.trace.ops
    journal = next(op[2] for op in ops if op[0] == "create" and op[1].endswith(".journal"))
    renames = [i for i, op in enumerate(ops) if op[0] == "rename" and op[2] == STATE]
    assert len(renames) >= 2, "the workload must rewrite the file whole"
    for i in renames:
        durable = next(j for j in range(i, len(ops)) if ops[j][0] == "dirsync")
        early = [op for op in ops[i:durable] if op[0] == "write" and op[1] == journal]
        assert not early, f"the journal was written between the rename at op {i} and its directory sync"


def test_a_plain_disk_is_what_the_store_uses_by_default(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / STATE))
    assert type(store.disk) is Disk


def test_regression_an_append_torn_out_of_order_recovers(tmp_path: Path) -> None:
    """Found by this checker (seed 11): a journal-free append whose sectors reached the disk
    out of order (one lost before one kept) was refused at start-up (the gap, or the old
    close still in place, looked like damage inside the document) or, where the gap fell
    inside a JSON string, read as whole, with a Spec changed and a later element of the
    batch kept without an earlier one.  Each append batch now ends in a checksummed
    trailer (store/trailer.py), and a batch that does not match it is cut back."""
    run = record_run(tmp_path, 11, 40, "empty")
    model = change_states(run)
    target = tmp_path / "crash"
    target.mkdir()
    states = itertools.islice(crash_states(run.trace, random.Random(11)), 3000)
    torn = [st for st in states if append_torn_out_of_order(run.trace, st)]
    assert len(torn) > 50, "the workload no longer tears appends out of order"
    assert [violation(run, model, st, str(target)) for st in torn] == [None] * len(torn)


def test_regression_a_journaled_batch_writes_each_sector_of_the_state_file_once(tmp_path: Path) -> None:
    """Found by this checker's long run (seed 11 from a C plugin file, 10,000 states): a
    journaled batch wrote two of its regions into one sector with two writes (a destroy's
    comma and the element after it), so that sector could reach the disk between them, in
    a version no journal record names.  The journal then did not match the file and was set
    aside as unapplied, and the store came up in a state no prefix of the changes leads to.
    The journal now joins the regions that share a sector into one write; every batch of
    the workload must write each sector of the state file at most once."""
    run = record_run(tmp_path, 11, 40, "c-plugin")
    ops = run.trace.ops
    journal = next(op[2] for op in ops if op[0] == "create" and op[1].endswith(".journal"))
    batch: dict[tuple[int, int], int] = {}
    batches = 0
    for i, op in enumerate(ops):
        if op[0] == "sync" and op[1] == journal:  # a journaled batch is durable; its writes follow
            batch, batches = {}, batches + 1
        elif op[0] == "write" and op[1] != journal:
            _, file, offset, data = op
            for sector in range(offset // SECTOR, (offset + len(data) - 1) // SECTOR + 1):
                assert (file, sector) not in batch, f"ops {batch[(file, sector)]} and {i} write sector {sector}"
                batch[(file, sector)] = i
        elif op[0] == "sync":
            batch = {}
    assert batches >= 5, "the workload must journal batches"


def test_regions_that_share_a_sector_are_journaled_and_written_as_one(tmp_path: Path) -> None:
    """The journal's side of the regression above, on a file of known bytes: two regions one
    byte apart in one sector leave as one region holding the byte between them."""
    from infrakit_instance.store.journal import Journal, Region, replay

    data = bytes(range(256)) * 8
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    jfd = os.open(tmp_path / "j", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        journal = Journal(Disk(False), jfd)
        st = os.fstat(fd)
        joined = journal.log(fd, st.st_dev, st.st_ino, len(data), len(data), [Region(600, b"A"), Region(602, b"BB")])
        assert joined == [Region(600, b"A" + data[601:602] + b"BB")]
        # Far apart (other sectors): left as they are.
        far = journal.log(fd, st.st_dev, st.st_ino, len(data), len(data), [Region(10, b"C"), Region(1500, b"D")])
        assert far == [Region(10, b"C"), Region(1500, b"D")]
        raw = os.pread(jfd, 1 << 16, 0)
    finally:
        os.close(fd)
        os.close(jfd)
    # The file as it was (nothing applied): the journal matches it and replays.
    assert replay(raw, data, st.st_dev, st.st_ino).applies
