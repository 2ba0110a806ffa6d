"""The single-file store: in-place edits, layout, the redo journal, faults."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from infrakit_instance._impl import codec
from infrakit_instance.plugin import Plugin
from infrakit_instance.rpc import Dispatcher, Pending
from infrakit_instance.state import Record, StateError
from infrakit_instance.store import FileStore, StoreError, UnknownInstance, load_state_file, trailer
from infrakit_instance.store import journal as journal_mod
from infrakit_instance.store.disk import Disk
from infrakit_instance.store.file import inspect_state

FIXTURE = Path(__file__).parent / "fixtures" / "c-plugin-state.json"


class Rec(Record):
    """A record that remembers its tags, as the plugin passes them to provision()."""

    __slots__ = ("given_tags",)


def record(i: int, group: str = "g", extra: int = 0) -> Rec:
    tags = {"infrakit.group": group, "n": str(i)}
    spec = {"Tags": tags, "Properties": {"pad": "x" * extra}}
    rec = Rec(f"id-{i}", codec.encode_brief(f"id-{i}", None, tags), orjson.dumps(spec))
    rec.given_tags = tags
    return rec


class CountingDisk(Disk):
    """The store's disk seam, counting syncs by file (``data`` or ``journal``) and journal records."""

    def __init__(self, sync: bool = True) -> None:
        super().__init__(sync)
        self.syncs: list[str] = []

    def datasync(self, fd: int) -> None:
        self.syncs.append("journal" if os.readlink(f"/proc/self/fd/{fd}").endswith(".journal") else "data")
        super().datasync(fd)


def provision(store: FileStore, rec: Rec) -> asyncio.Future[None]:
    return store.provision(rec, rec.given_tags)


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def described(store: FileStore) -> list[dict[str, Any]]:
    return json.loads(store.describe(None, True))


def on_disk(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        doc = json.load(f)
    assert set(doc) == {"Provider", "Instances", "NonFunctional"}
    return doc["Instances"]


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_random_changes_match_a_model_on_disk_and_after_reopening(tmp_path: Path, seed: int) -> None:
    path = str(tmp_path / "s.json")
    rng = random.Random(seed)

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        model: dict[str, dict[str, Any]] = {}
        n = 0
        for _ in range(600):
            futs = []
            for _ in range(rng.randint(1, 6)):  # several changes share a batch
                op = rng.random()
                if op < 0.45 or not model:
                    n += 1
                    rec = record(n, rng.choice("ab"), rng.randint(0, 40))
                    futs.append(provision(store, rec))
                    model[rec.id] = json.loads(rec.element())
                elif op < 0.8:
                    victim = rng.choice(list(model))
                    futs.append(store.destroy(victim))
                    del model[victim]
                else:
                    victim = rng.choice(list(model))
                    # Up to 80 bytes: past the room left for labels, so elements move too.
                    labels = {"l": "v" * rng.randint(0, 80)} if rng.random() < 0.7 else {"n": "1"}
                    futs.append(store.label(victim, labels))
                    model[victim]["Tags"].update(labels)
            await asyncio.gather(*futs)
            # After every batch the file on disk is the model, as is what is served.
            assert on_disk(path) == list(model.values())
            assert described(store) == list(model.values())
        await store.close()
        again = FileStore(path)
        await again.open()
        assert described(again) == list(model.values())
        assert again._disk_size == os.path.getsize(path)
        await again.close()

    run(main)


def test_provision_appends_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        await asyncio.gather(*(provision(store, record(i, extra=200)) for i in range(50)))
        before = Path(path).read_bytes()
        inode = os.stat(path).st_ino
        await provision(store, record(99))
        after = Path(path).read_bytes()
        assert os.stat(path).st_ino == inode  # not replaced by a rename
        document = before.rstrip(b" ")  # the padding after the document is whitespace too
        assert after[: len(document) - len(codec.TAIL)] == document[: -len(codec.TAIL)]
        assert len(after) == len(before)  # written into the padding: the file size did not change
        await store.destroy("id-3")
        gone = Path(path).read_bytes()
        assert len(gone) == len(after) and os.stat(path).st_ino == inode
        await store.close()

    run(main)


def test_every_batch_needs_one_sync_whatever_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "s.json")
    disk = CountingDisk()
    logged: list[int] = []
    real_log = journal_mod.Journal.log

    def log(self: journal_mod.Journal, *args: Any) -> int:
        logged.append(1)
        return real_log(self, *args)

    monkeypatch.setattr(journal_mod.Journal, "log", log)

    async def main() -> None:
        store = FileStore(path, disk=disk)
        await store.open()
        for i in range(6):
            await provision(store, record(i))
        disk.syncs.clear()
        await provision(store, record(10))
        await provision(store, record(11))
        assert disk.syncs == ["data", "data"] and not logged  # appends: no journal work at all
        disk.syncs.clear()
        await store.destroy("id-1")
        assert disk.syncs == ["journal"]  # the record is the batch's only sync
        disk.syncs.clear()
        await store.label("id-2", {"rack": "r1"})
        assert disk.syncs == ["journal"]
        disk.syncs.clear()
        await store.label("id-3", {"big": "x" * 300})  # outgrows its slot: everything after it moves
        assert disk.syncs == ["journal"]
        disk.syncs.clear()
        await asyncio.gather(store.destroy("id-4"), provision(store, record(12)), store.label("id-5", {"a": "b"}))
        assert disk.syncs == ["journal"]  # a mixed batch: one sync too
        disk.syncs.clear()
        await provision(store, record(13))  # appends after journaled batches: still one sync each
        assert disk.syncs == ["journal"]
        for i in range(20):
            await provision(store, record(20 + i))
        # ... until, after a run of 16 of them, one checkpoint syncs the file: appends go direct again.
        assert disk.syncs == ["journal"] * 16 + ["data"] + ["data"] * 5
        disk.syncs.clear()
        logged.clear()
        await provision(store, record(99))
        assert disk.syncs == ["data"] and not logged
        await store.close()
        assert not os.path.exists(path + ".journal")  # a clean shutdown leaves no journal
        assert [d["ID"] for d in on_disk(path)] == [f"id-{i}" for i in [0, 2, 3, 5, 10, 11, 12, 13, *range(20, 40), 99]]

    run(main)


def test_a_torn_append_is_cut_back_to_the_last_complete_element(tmp_path: Path) -> None:
    path = tmp_path / "s.json"

    async def fill() -> None:
        store = FileStore(str(path))
        await store.open()
        for i in range(5):
            await provision(store, record(i, extra=300))
        await store.destroy("id-4")
        await provision(store, record(5, extra=300))
        await store.close()

    run(fill)
    good = path.read_bytes()
    ids = [d["ID"] for d in json.loads(good)["Instances"]]

    async def append() -> None:
        store = FileStore(str(path))
        await store.open()
        await provision(store, record(6, extra=1300))  # over three sectors
        await store.close()

    run(append)
    whole = path.read_bytes()  # the same file with one more append batch, as the store writes it
    assert len(whole) == len(good)
    start = next(i for i in range(len(good)) if good[i] != whole[i])
    stop = len(whole.rstrip(b" "))
    # What a crash can leave of an append: a prefix of its bytes over the old
    # closing bytes and padding (which stay where it did not reach).
    cuts = (1, 2, 3, 4, 50, stop - start - 140, stop - start - 70, stop - start - 5)
    assert sorted(cuts) == list(cuts)  # the batch is longer than these: each cuts it short
    for cut in cuts:
        torn = whole[: start + cut] + good[start + cut :]
        path.write_bytes(torn)

        async def reopen() -> None:
            store = FileStore(str(path))
            await store.open()
            # The batch's trailer (and the closing bytes, in its sector) never landed: it is
            # cut back whole, never acknowledged, even where its element is complete.
            assert [d["ID"] for d in described(store)] == ids
            await provision(store, record(7))
            await store.close()

        run(reopen)
        assert [d["ID"] for d in on_disk(str(path))] == ids + ["id-7"], cut

    # Torn inside the closing bytes, after a whole trailer: the batch checks out and is kept.
    async def kept() -> None:
        store = FileStore(str(path))
        await store.open()
        assert [d["ID"] for d in described(store)] == ids + ["id-6"]
        await store.close()

    for cut in (stop - start - 4, stop - start - 1):
        path.write_bytes(whole[: start + cut] + good[start + cut :])
        run(kept)
        assert [d["ID"] for d in on_disk(str(path))] == ids + ["id-6"], cut
    # Sectors of the batch landed out of order (one lost before one kept): the checksum
    # in its trailer tells, and it is cut back too.
    mid = (start // 512 + 1) * 512  # the batch's second sector, inside the Spec's long string
    assert whole[mid : mid + 512] == b"x" * 512
    torn = whole[:mid] + good[mid : mid + 512] + whole[mid + 512 :]
    path.write_bytes(torn)
    json.loads(torn)  # the gap is spaces inside a string: the document still parses
    run(reopen)
    # Garbage that is no torn append is refused: nothing after the damage is dropped.
    cut_short = whole[: start + 50]  # the file ends inside an element: no padding after it
    path.write_bytes(cut_short)
    with pytest.raises(StateError, match="damaged at byte"):
        run(reopen)
    assert path.read_bytes() == cut_short
    flipped = bytearray(whole)
    flipped[start + 100] ^= 1  # one bit of a synced batch: no sector is as before it
    path.write_bytes(bytes(flipped))
    with pytest.raises(StateError, match="do not match its checksum"):
        run(reopen)
    assert path.read_bytes() == bytes(flipped)


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    disk = CountingDisk()

    async def main() -> None:
        store = FileStore(str(tmp_path / "s.json"), disk=disk)
        await store.open()
        disk.syncs.clear()
        await asyncio.gather(*(provision(store, record(i)) for i in range(100)))
        await store.close()

    run(main)
    assert 1 <= len(disk.syncs) <= 10  # one data sync per batch of appends, not per change


def test_fsync_never_skips_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))

    async def main() -> None:
        store = FileStore(str(tmp_path / "s.json"), fsync=False)
        await store.open()
        await provision(store, record(1))
        await store.destroy("id-1")
        await provision(store, record(2))
        await store.close()

    run(main)
    assert calls == []
    assert on_disk(str(tmp_path / "s.json"))[0]["ID"] == "id-2"


def test_unknown_ids_raise_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        store = FileStore(str(tmp_path / "s.json"))
        await store.open()
        with pytest.raises(UnknownInstance):
            store.destroy("nope")
        with pytest.raises(UnknownInstance):
            store.label("nope", {})
        await provision(store, record(1))
        with pytest.raises(StoreError):
            provision(store, record(1))
        await store.close()

    run(main)


def test_c_plugin_file_is_converted_and_still_standard_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(FIXTURE.read_bytes())
    original = json.loads(FIXTURE.read_text())

    async def main() -> None:
        store = FileStore(str(path))
        await store.open()
        assert described(store) == [{**d, "Properties": None} for d in original["Instances"]]
        await provision(store, record(1))
        await store.close()

    run(main)
    doc = json.loads(path.read_text())
    assert doc["Instances"][:3] == original["Instances"]
    assert doc["Instances"][3]["ID"] == "id-1"
    assert doc["Provider"] == original["Provider"]


def test_nonfunctional_and_front_of_array(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        for i in range(4):
            await provision(store, record(i))
        await store.set_functional("id-2", False)
        doc = json.loads(Path(path).read_text())
        assert [d["ID"] for d in doc["Instances"]] == ["id-0", "id-1", "id-3"]
        assert [d["ID"] for d in doc["NonFunctional"]] == ["id-2"]
        assert "id-2" not in store.describe(None, False).decode()
        await store.set_functional("id-2", True)
        assert [d["ID"] for d in on_disk(path)] == ["id-2", "id-0", "id-1", "id-3"]
        assert [d["ID"] for d in described(store)] == ["id-2", "id-0", "id-1", "id-3"]
        assert [d["ID"] for d in json.loads(store.describe({"infrakit.group": "g"}, False))] == [
            "id-2",
            "id-0",
            "id-1",
            "id-3",
        ]
        await provision(store, record(9))  # appends still work after a whole rewrite
        await store.destroy("id-2")
        await store.forget("id-0")
        await store.close()
        again = FileStore(path)
        await again.open()
        assert [d["ID"] for d in described(again)] == ["id-1", "id-3", "id-9"]
        await again.close()

    run(main)


def test_bad_state_files_say_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for content, words in [
        ("", "empty"),
        ("{", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"Instances": {}}', '"Instances" is not an array'),
        ('{"Instances": [{"LogicalID": null}]}', "Instances[0] has no string ID"),
        ('{"Instances": [{"ID": "a", "Tags": {"x": 1}}]}', "Tags must be an object of strings"),
        ('{"Instances": [{"ID": "a"}, {"ID": "a"}]}', "appears twice"),
    ]:
        path.write_text(content)
        with pytest.raises(StateError, match=re.escape(words)):
            load_state_file(str(path))


# -- journal ---------------------------------------------------------------------------------


class DroppingDisk(CountingDisk):
    """A crash before the data writes of journaled batches reached the file: they are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.drop: Callable[[int], bool] | None = None
        self.n = 0

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        if self.drop is not None and os.readlink(f"/proc/self/fd/{fd}").endswith(".json"):
            self.n += 1
            if self.drop(self.n):
                return
        super().pwrite(fd, data, offset)


def _crash_mid_journal(tmp_path: Path, drop: Callable[[int], bool]) -> tuple[str, list[dict[str, Any]]]:
    """Fill a store, then journal batches whose data writes are dropped as ``drop`` says, and
    leave without closing (as a crash would); the file and what was acknowledged."""
    path = str(tmp_path / "s.json")
    disk = DroppingDisk()

    async def main() -> list[dict[str, Any]]:
        store = FileStore(path, disk=disk)
        await store.open()
        for i in range(12):
            await provision(store, record(i, extra=100))
        disk.drop = drop
        await store.destroy("id-3")
        await store.label("id-5", {"big": "y" * 200})  # moves every element after it
        await asyncio.gather(store.destroy("id-0"), provision(store, record(20)))
        await provision(store, record(21))
        acked = described(store)
        store._executor.shutdown()
        store._close_fds()  # no close(): the journal stays
        return acked

    return path, run(main)


@pytest.mark.parametrize("drop", ["all", "odd", "none"])
def test_journaled_batches_are_replayed_at_the_next_start(tmp_path: Path, drop: str) -> None:
    path, acked = _crash_mid_journal(
        tmp_path, {"all": lambda n: True, "odd": lambda n: n % 2 == 1, "none": lambda n: False}[drop]
    )
    assert os.path.getsize(path + ".journal") > 0
    seen = inspect_state(path)
    assert seen.replayed == 4 and seen.mismatch is None
    if drop != "none":
        assert seen.image != seen.data

    async def reopen() -> None:
        store = FileStore(path)
        await store.open()
        assert described(store) == acked
        await store.close()

    run(reopen)
    assert on_disk(path) == acked
    assert not os.path.exists(path + ".journal")


def test_a_journal_that_does_not_match_the_file_is_never_applied(tmp_path: Path) -> None:
    path, acked = _crash_mid_journal(tmp_path / "a", lambda n: True) if (tmp_path / "a").mkdir() is None else ("", [])
    journal = Path(path + ".journal").read_bytes()
    # The file rewritten while the plugin was stopped (same inode): its own content now.
    other = tmp_path / "b"
    other.mkdir()

    async def fill() -> None:
        store = FileStore(str(other / "s.json"))
        await store.open()
        for i in range(3):
            await provision(store, record(100 + i))
        await store.close()

    run(fill)
    rewritten = (other / "s.json").read_bytes()
    Path(path).write_bytes(rewritten)
    seen = inspect_state(path)
    assert seen.replayed == 0 and seen.mismatch and "none of the" in seen.mismatch
    # A journal of another state file next to this one: another inode.
    (other / "s.json.journal").write_bytes(journal)
    foreign = inspect_state(str(other / "s.json"))
    assert foreign.mismatch and "another file" in foreign.mismatch

    async def reopen(p: str) -> list[str]:
        store = FileStore(p)
        await store.open()
        ids = [d["ID"] for d in described(store)]
        await store.close()
        return ids

    for p in (path, str(other / "s.json")):
        assert run(lambda p=p: reopen(p)) == ["id-100", "id-101", "id-102"]
        assert os.path.exists(p + ".journal.unapplied") and not os.path.exists(p + ".journal")
    assert Path(path).read_bytes() == rewritten  # nothing was written over it


# -- faults while serving -------------------------------------------------------------------------


class FaultyDisk(Disk):
    """Faults of the disk seam: ENOSPC or EIO after a partial write, a short write, a failing sync."""

    def __init__(self, fault: str, persist: bool, target: str) -> None:
        super().__init__()
        self.fault, self.persist, self.target, self.armed = fault, persist, target, False

    def _hit(self, fd: int, kind: str) -> bool:
        name = os.readlink(f"/proc/self/fd/{fd}")
        which = "journal" if name.endswith(".journal") else "data"
        if not self.armed or kind != ("sync" if self.fault == "fsync" else "write") or which != self.target:
            return False
        if not self.persist:
            self.armed = False
        return True

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        if self._hit(fd, "write"):
            if self.fault == "short":
                os.pwrite(fd, bytes(data[: max(1, len(data) // 2)]), offset)
                raise OSError(errno.EIO, "short write")
            os.pwrite(fd, bytes(data[:1]), offset)  # a partial write first, then the error
            raise OSError(getattr(errno, self.fault), os.strerror(getattr(errno, self.fault)))
        super().pwrite(fd, data, offset)

    def datasync(self, fd: int) -> None:
        if self._hit(fd, "sync"):
            raise OSError(errno.EIO, "Input/output error")
        super().datasync(fd)


@pytest.mark.parametrize("target", ["data", "journal"])
@pytest.mark.parametrize("persist", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("fault", ["ENOSPC", "EIO", "short", "fsync"])
def test_write_faults_give_errors_and_never_diverge(tmp_path: Path, fault: str, persist: bool, target: str) -> None:
    """The faulty write fails its clients.  A transient fault is undone at once and
    serving goes on; one that defeats the undo too stops the store taking changes
    (each refused with the cause), reads go on, and the next start recovers every
    acknowledged change."""
    path = str(tmp_path / "s.json")
    disk = FaultyDisk(fault, persist, target)
    store = FileStore(path, disk=disk)
    plugin = Plugin(store)
    dispatcher = Dispatcher(plugin.methods)

    async def call(method: str, params: dict[str, Any]) -> Any:
        body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        answer = dispatcher.handle(body)
        if isinstance(answer, Pending):  # answered once the change is durable, or has failed
            await asyncio.wait([answer.done])
            answer = answer.settle()
        elif not isinstance(answer, bytes):
            answer = await answer
        return orjson.loads(answer)

    async def main() -> None:
        await store.open()
        keep = [(await call("Instance.Provision", {"Spec": {"Tags": {"g": str(i)}}}))["result"]["ID"] for i in range(3)]
        good = on_disk(path)
        disk.armed = True
        # An append goes straight to the file; a destroy goes through the journal.
        if target == "data":
            failed = await call("Instance.Provision", {"Spec": {"Tags": {"g": "x"}}})
        else:
            failed = await call("Instance.Destroy", {"Instance": keep[0]})
        assert failed["error"]["code"] == -32000, failed
        assert "could not write the state file" in failed["error"]["message"]
        if persist and store.stopped is None:
            again = await call("Instance.Destroy", {"Instance": keep[1]})
            assert again["error"]["code"] == -32000
        disk.armed = False
        described_now = await call("Instance.DescribeInstances", {"Tags": None})
        assert [d["ID"] for d in described_now["result"]["Descriptions"]] == keep  # memory never diverged
        ok = await call("Instance.Provision", {"Spec": {"Tags": {"g": "3"}}})
        if store.stopped is None:
            assert "result" in ok
            keep.append(ok["result"]["ID"])
            assert on_disk(path) == good + on_disk(path)[3:] and [d["ID"] for d in on_disk(path)] == keep
        else:
            assert persist
            assert ok["error"]["code"] == -32000 and "stopped taking changes" in ok["error"]["message"]
        await store.close()
        again = FileStore(path)  # the next start
        await again.open()
        assert [d["ID"] for d in described(again)] == keep
        await again.close()

    run(main)


def test_a_rewrite_without_descriptors_fails_its_batch_cleanly(tmp_path: Path) -> None:
    """No descriptor for the temporary file (even the reserved one gone): the batch fails,
    memory keeps the layout of the file as it is, and later changes land where they belong."""
    path = str(tmp_path / "s.json")

    class NoFiles(Disk):
        armed = False

        def create(self, name: str, dir_fd: int, mode: int = 0o600) -> int:
            if self.armed:
                raise OSError(errno.EMFILE, "Too many open files")
            return super().create(name, dir_fd, mode)

    disk = NoFiles()

    async def main() -> None:
        store = FileStore(path, disk=disk)
        await store.open()
        await asyncio.gather(*(provision(store, record(i, extra=2000)) for i in range(600)))
        disk.armed = True
        model = [d for d in described(store)]
        failed = 0
        for i in range(0, 500):  # destroys that make the file worth compacting
            try:
                await store.destroy(f"id-{i}")
                model = [d for d in model if d["ID"] != f"id-{i}"]
            except StoreError:
                failed += 1
        assert failed > 0  # some batches needed a whole-file rewrite and could not have it
        assert described(store) == model == on_disk(path)
        disk.armed = False
        await provision(store, record(900))
        await store.label("id-599", {"after": "x" * 100})
        assert described(store) == on_disk(path)
        await store.close()

    run(main)


@pytest.mark.parametrize("fullfsync", ["works", "unsupported", "absent"])
def test_without_fdatasync_the_seam_uses_fsync_and_full_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fullfsync: str
) -> None:
    """macOS has no fdatasync: every sync is an fsync, and with --fsync always an
    F_FULLFSYNC where the platform and file system have it."""
    import fcntl

    calls: list[str] = []
    real_fsync, real_fcntl = os.fsync, fcntl.fcntl
    monkeypatch.delattr(os, "fdatasync")
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    if fullfsync == "absent":
        monkeypatch.delattr(fcntl, "F_FULLFSYNC", raising=False)
    else:
        monkeypatch.setattr(fcntl, "F_FULLFSYNC", 12345, raising=False)

        def fake_fcntl(fd: int, cmd: int, *args: Any) -> Any:
            if cmd == 12345:
                calls.append("fullfsync")
                if fullfsync == "unsupported":
                    raise OSError(errno.ENOTSUP, "not supported")
                return 0
            return real_fcntl(fd, cmd, *args)

        monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    path = str(tmp_path / "s.json")

    async def main(fsync: bool) -> None:
        store = FileStore(path, fsync=fsync)
        await store.open()
        calls.clear()
        await provision(store, record(1 if fsync else 2))
        await store.destroy("id-1" if fsync else "id-2")
        await store.close()

    run(lambda: main(True))
    expect = {"works": ["fullfsync"], "unsupported": ["fullfsync", "fsync"], "absent": ["fsync"]}[fullfsync]
    assert calls[: len(expect) * 2] == expect * 2  # the append's data sync, the destroy's journal sync
    assert "fdatasync" not in calls
    run(lambda: main(False))
    assert calls == []  # --fsync never: none at all
    assert on_disk(path) == []


# -- the state tools ----------------------------------------------------------------------


def test_state_tools_check_compact_show(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from infrakit_instance.cli import main

    path = str(tmp_path / "s.json")

    async def fill() -> None:
        store = FileStore(path)
        await store.open()
        await asyncio.gather(*(provision(store, record(i, "ab"[i % 2], extra=100)) for i in range(40)))
        await asyncio.gather(*(store.destroy(f"id-{i}") for i in range(0, 40, 3)))
        await store.close()

    run(fill)
    runner = CliRunner()
    out = runner.invoke(main, ["state", "check", path])
    assert out.exit_code == 0, out.output
    assert "instances: 26" in out.output and "in-place editable" in out.output
    holes = int(out.output.split("removals: ")[1].split()[0])
    assert holes > 0
    shown = runner.invoke(main, ["state", "show", path, "--tag", "infrakit.group=b"])
    assert shown.exit_code == 0
    assert [d["ID"] for d in json.loads(shown.output)] == [f"id-{i}" for i in range(40) if i % 2 and i % 3]
    document = len(Path(path).read_bytes().rstrip(b" "))
    assert runner.invoke(main, ["state", "compact", path]).exit_code == 0
    assert len(Path(path).read_bytes().rstrip(b" ")) == document - holes
    assert "removals: 0 bytes" in runner.invoke(main, ["state", "check", path]).output
    assert len(on_disk(path)) == 26

    Path(path).write_text("{broken")
    bad = runner.invoke(main, ["state", "check", path])
    assert bad.exit_code == 1 and "not valid JSON" in bad.output


def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    from infrakit_instance.store import StoreLocked

    async def main() -> None:
        first = FileStore(str(tmp_path / "s.json"))
        await first.open()
        second = FileStore(str(tmp_path / "s.json"))
        with pytest.raises(StoreLocked, match="in use"):
            await second.open()
        await first.close()

    run(main)


def test_check_reports_a_pending_replay_and_changes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from infrakit_instance.cli import main

    path, acked = _crash_mid_journal(tmp_path, lambda n: True)
    before = Path(path).read_bytes(), Path(path + ".journal").read_bytes()
    out = CliRunner().invoke(main, ["state", "check", path])
    assert out.exit_code == 3 and "replays them" in out.output, out.output
    assert f"instances: {len(acked)}" in out.output
    assert (Path(path).read_bytes(), Path(path + ".journal").read_bytes()) == before  # check changed nothing


def test_labels_fit_in_the_room_after_each_element_even_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")

    async def fill() -> None:
        store = FileStore(path)
        await store.open()
        for i in range(3):
            await provision(store, record(i))
        await store.close()

    async def label(labels: dict[str, str]) -> None:
        store = FileStore(path)
        await store.open()
        await store.label("id-0", labels)
        await store.close()

    run(fill)
    before = Path(path).read_bytes()
    second = before.index(b'{"ID":"id-1"')
    run(lambda: label({"rack": "r12"}))  # grows the element by 13 bytes: fits in the room left for labels
    after = Path(path).read_bytes()
    last = trailer.find_last(after)
    assert after[second:last] == before[second:last]  # nothing after it moved
    # The in-place write went through the journal: the last append batch's checksum, which
    # covers bytes it may change, is turned into the trailer that asks for no check.
    assert after[last : last + trailer.SIZE] == trailer.NO_CHECK != before[last : last + trailer.SIZE]
    assert on_disk(path)[0]["Tags"]["rack"] == "r12"
    run(lambda: label({"big": "x" * 200}))  # does not fit: everything after it moves, order kept
    assert [d["ID"] for d in on_disk(path)] == ["id-0", "id-1", "id-2"]
    assert on_disk(path)[0]["Tags"] == {"infrakit.group": "g", "n": "0", "rack": "r12", "big": "x" * 200}


def test_an_element_that_grows_and_is_destroyed_in_one_batch(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        for i in range(4):
            await provision(store, record(i))
        for victim in ("id-1", "id-0"):  # a middle one, then the first
            grow = store.label(victim, {"big": "x" * 300})
            gone = store.destroy(victim)
            await asyncio.gather(grow, gone)
            assert [d["ID"] for d in on_disk(path)] == [d["ID"] for d in described(store)]
        assert [d["ID"] for d in on_disk(path)] == ["id-2", "id-3"]
        await store.close()

    run(main)


@pytest.mark.parametrize(
    "line",
    [
        b'{"ID":"a"}' + trailer.encode(10, 0xDEADBEEF) + b"\n",
        b'{"ID":"a"}' + trailer.NO_CHECK + b"    \n",
        b'{"ID":"a"}\r' + b" " * 64 + b"\n",  # one byte short of a trailer
        b'{"ID":"a"}\r' + b" " * 63 + b"x\r\n",  # a byte that is no bit
        b'{"ID":"a"}\r' + b"\t" * 64 + b"\r",
        b'{"ID":"a"}\r\n',
        b'{"ID":"a"}\n',
    ],
)
def test_a_line_loses_exactly_the_trailer_decode_reads(line: bytes) -> None:
    i = line.find(b"\r")
    is_one = i >= 0 and trailer.decode(line[i : i + trailer.SIZE]) is not None
    stripped, at = trailer.strip(line)
    if is_one:
        assert (stripped, at) == (line[:i] + line[i + trailer.SIZE :], i)
    else:
        assert (stripped, at) == (line, -1)


def test_close_writes_a_change_nobody_awaited(tmp_path: Path) -> None:
    # A change queued just before close() (a notification's: nobody waits for its write) is
    # written and close() returns: its wake-up and close()'s are one, the writer must see both.
    path = tmp_path / "state.json"

    async def go() -> None:
        store = FileStore(str(path), fsync=False)
        await store.open()
        rec = record(1)
        store.provision(rec, rec.given_tags)
        watchdog = asyncio.get_running_loop().call_later(10, asyncio.current_task().cancel)  # type: ignore[union-attr]
        await store.close()  # in this task, before the writer has run: not in a task of its own
        watchdog.cancel()

    asyncio.run(go())
    assert [r.id for r in load_state_file(str(path)).state.instances.values()] == ["id-1"]
