"""The single-file store: in-place edits, layout, journal recovery, faults."""

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
from infrakit_instance.store import FileStore, StoreError, UnknownInstance, load_state_file
from infrakit_instance.store import journal as journal_mod
from infrakit_instance.store.journal import Journal, Region, recover, repair_torn_append

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


def test_appends_need_one_fsync_per_batch_and_in_place_changes_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "s.json")
    syncs: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append("journal" if os.readlink(f"/proc/self/fd/{fd}").endswith(".journal") else "data")
        real(fd)

    monkeypatch.setattr(journal_mod.os, "fdatasync", fdatasync)

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        syncs.clear()
        await provision(store, record(1))
        await provision(store, record(2))
        assert syncs == ["data", "data"]
        syncs.clear()
        await store.destroy("id-1")
        assert syncs == ["journal", "data"]
        syncs.clear()
        await provision(store, record(3))  # the journal is cleared once before appends resume
        await provision(store, record(4))
        assert syncs == ["journal", "data", "data"]
        await store.close()

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
    good = path.read_bytes().rstrip(b" ")  # the document, without its padding
    ids = [d["ID"] for d in json.loads(good)["Instances"]]
    tail = codec.TAIL
    # What power loss can leave of an append: the closing bytes overwritten,
    # the new element cut anywhere, possibly with zeros where pages never landed.
    new = b",\n" + record(6, extra=300).element() + tail
    for cut in (1, 2, 3, 50, len(new) - 6):
        for filler in (b"", b"\0" * 700):
            torn = good[: -len(tail)] + new[:cut] + filler + b" " * 500  # what is left of the padding
            repaired = repair_torn_append(torn, tail)
            assert repaired is not None, cut
            assert [d["ID"] for d in json.loads(repaired)["Instances"]] == ids
            path.write_bytes(torn)

            async def reopen() -> None:
                store = FileStore(str(path))
                await store.open()
                assert [d["ID"] for d in described(store)] == ids
                await provision(store, record(7))
                await store.close()

            run(reopen)
            assert [d["ID"] for d in on_disk(str(path))] == ids + ["id-7"]
    # A complete append whose closing bytes did not land keeps the new element.
    repaired = repair_torn_append(good[: -len(tail)] + new[:-2], tail)
    assert repaired is not None and json.loads(repaired)["Instances"][-1]["ID"] == "id-6"
    # Garbage that is no torn append is left alone.
    assert repair_torn_append(b'{"Provider": {}, "Instances": [{"ID": "x"', tail) is None


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(journal_mod.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))

    async def main() -> None:
        store = FileStore(str(tmp_path / "s.json"))
        await store.open()
        await asyncio.gather(*(provision(store, record(i)) for i in range(100)))
        await store.close()

    run(main)
    assert 1 <= len(calls) <= 10  # one data sync per batch of appends, not per change


def test_fsync_never_skips_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(journal_mod.os, "fdatasync", lambda fd: calls.append(fd))

    async def main() -> None:
        store = FileStore(str(tmp_path / "s.json"), fsync=False)
        await store.open()
        await provision(store, record(1))
        await store.close()

    run(main)
    assert calls == []
    assert on_disk(str(tmp_path / "s.json"))[0]["ID"] == "id-1"


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


def _prepare(tmp_path: Path) -> tuple[str, str, bytes]:
    data = tmp_path / "d"
    old = b'{"Instances":[\n{"ID":"a"},\n{"ID":"b"}\n]}\n'
    data.write_bytes(old)
    return str(data), str(tmp_path / "d.journal"), old


def test_journal_rolls_back_a_torn_batch(tmp_path: Path) -> None:
    path, jpath, old = _prepare(tmp_path)
    new_tail = b',\n{"ID":"c","pad":"' + b"x" * 5000 + b'"}\n]}\n'
    fd = os.open(path, os.O_RDWR)
    j = Journal(jpath)
    # What a crash in the middle of write_batch leaves: the journal synced, half the data written.
    region = Region(len(old) - 4, new_tail)
    record = journal_mod._undo_record(
        lambda n, off: old[off : off + n], len(old), len(old) - 4 + len(new_tail), [region]
    )
    Path(jpath).write_bytes(record.encode())
    os.pwrite(fd, new_tail[:3000], region.offset)
    os.close(fd)
    j.close()
    assert "rolled back" in (recover(path, jpath) or "")
    assert Path(path).read_bytes() == old
    assert recover(path, jpath) is None  # journal cleared: nothing more to do


def test_journal_keeps_a_complete_batch_and_ignores_a_torn_record(tmp_path: Path) -> None:
    path, jpath, old = _prepare(tmp_path)
    fd = os.open(path, os.O_RDWR)
    j = Journal(jpath)
    tail = b',\n{"ID":"c"}\n]}\n'
    j.write_batch(fd, len(old), len(old) - 4 + len(tail), [Region(len(old) - 4, tail)])
    j.close()
    os.close(fd)
    complete = Path(path).read_bytes()
    assert json.loads(complete)["Instances"][-1] == {"ID": "c"}
    assert recover(path, jpath) is None
    assert Path(path).read_bytes() == complete
    # A record torn while being written never touched the data: it is ignored.
    Path(jpath).write_bytes(b"IKJ1" + os.urandom(40))
    assert recover(path, jpath) is None
    assert Path(path).read_bytes() == complete


def test_journal_restores_bytes_past_a_shrunk_end(tmp_path: Path) -> None:
    path, jpath, old = _prepare(tmp_path)
    fd = os.open(path, os.O_RDWR)
    j = Journal(jpath)
    start = old.index(b'{"ID":"b"}') - 2
    new = b"\n]}\n"
    j.write_batch(fd, len(old), start + len(new), [Region(start, new)])
    assert json.loads(Path(path).read_bytes())["Instances"] == [{"ID": "a"}]
    # Pretend the truncate and sync never reached the disk: put garbage back past the end.
    os.pwrite(fd, b"garbage", start + len(new))
    os.close(fd)
    j.close()
    assert "rolled back" in (recover(path, jpath) or "")
    assert Path(path).read_bytes() == old


# -- faults while serving -------------------------------------------------------------------------


@pytest.mark.parametrize("persist", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("fault", ["ENOSPC", "EIO", "short", "fsync"])
def test_write_faults_give_errors_and_keep_the_file_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, persist: bool
) -> None:
    """The faulty write fails its clients; the file (with its journal, as the next
    start reads it) stays the last acknowledged state; serving goes on.  A
    transient fault lets the rollback through at once; a persistent one defers it."""
    path = str(tmp_path / "s.json")
    real_pwrite, real_sync = os.pwrite, os.fdatasync
    armed = {"on": False}

    def pwrite(fd: int, data: Any, off: int) -> int:
        if armed["on"] and fault != "fsync" and fd != store._journal.fd:  # type: ignore[union-attr]
            if not persist:
                armed["on"] = False
            if fault == "short":
                real_pwrite(fd, bytes(data[: max(1, len(data) // 2)]), off)
                return 0
            if fault in ("ENOSPC", "EIO"):
                real_pwrite(fd, bytes(data[:1]), off)  # a partial write first, then the error
                raise OSError(getattr(errno, fault), os.strerror(getattr(errno, fault)))
        return real_pwrite(fd, data, off)

    def fdatasync(fd: int) -> None:
        if armed["on"] and fault == "fsync" and fd != store._journal.fd:  # type: ignore[union-attr]
            if not persist:
                armed["on"] = False
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(journal_mod.os, "pwrite", pwrite)
    monkeypatch.setattr(journal_mod.os, "fdatasync", fdatasync)
    store = FileStore(path)
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
        first = await call("Instance.Provision", {"Spec": {"Tags": {"g": "1"}}})
        keep = first["result"]["ID"]
        good = on_disk(path)
        armed["on"] = True
        failed = await call("Instance.Provision", {"Spec": {"Tags": {"g": "2"}}})
        assert failed["error"]["code"] == -32000 and "could not write the state file" in failed["error"]["message"]
        if persist:
            failed = await call("Instance.Destroy", {"Instance": keep})
            assert failed["error"]["code"] == -32000
            # What the next start will read, once it has undone the failed batch:
            undo = store._undo
            assert json.loads(journal_mod.rolled_back(path, path + ".journal", undo))["Instances"] == good
        else:
            assert on_disk(path) == good  # rolled back at once
        armed["on"] = False
        described_now = await call("Instance.DescribeInstances", {"Tags": None})
        assert [d["ID"] for d in described_now["result"]["Descriptions"]] == [keep]
        ok = await call("Instance.Provision", {"Spec": {"Tags": {"g": "3"}}})
        assert "result" in ok
        assert [d["ID"] for d in on_disk(path)] == [keep, ok["result"]["ID"]]
        await store.close()

    run(main)


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


def test_check_reports_a_pending_rollback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from infrakit_instance.cli import main

    path, jpath, old = _prepare(tmp_path)
    region = Region(len(old) - 4, b',\n{"ID":"c"}\n]}\n')
    record = journal_mod._undo_record(lambda n, off: old[off : off + n], len(old), len(old) + 12, [region])
    Path(jpath).write_bytes(record.encode())
    os.truncate(path, len(old) - 2)  # torn: the batch never completed
    out = CliRunner().invoke(main, ["state", "check", path])
    assert out.exit_code == 3 and "rolls it back" in out.output
    assert Path(path).read_bytes() == old[:-2]  # check changed nothing


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
    assert after[second:] == before[second:]  # nothing after it moved
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
