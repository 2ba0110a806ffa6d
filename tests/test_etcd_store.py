"""The Store behaviour, against both backends: the file store and the etcd store
(a real etcd member on a loopback port), and what only a shared backend does."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from etcd_cluster import EtcdCluster
from infrakit_instance._impl import codec
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore, Store, StoreError, UnknownInstance

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), long_lived=True).start()
    yield cluster
    cluster.stop()


Factory = Callable[[], Store]


@pytest.fixture(params=["file", "etcd"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A function making stores on one place: the same state file, or the same etcd prefix."""
    if request.param == "file":
        path = str(tmp_path / "s.json")
        return lambda: FileStore(path)
    from infrakit_instance.store.etcd import EtcdStore

    cluster = request.getfixturevalue("etcd")
    url = cluster.url(f"/test/{next(_prefixes)}")
    return lambda: EtcdStore(url)


def record(i: int, group: str = "g", extra: int = 0) -> tuple[Record, dict[str, str]]:
    tags = {"infrakit.group": group, "n": str(i)}
    spec = {"Tags": tags, "Properties": {"pad": "x" * extra, "float": 1.5, "list": [1, None, "ü"]}}
    return Record(f"id-{i}", codec.encode_brief(f"id-{i}", None, tags), orjson.dumps(spec)), tags


def described(store: Store, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return json.loads(store.describe(tags, True))


def run(fn: Callable[[], Any]) -> Any:
    return asyncio.run(fn())


async def opened(make: Factory) -> Store:
    store = make()
    await store.open()
    return store


def test_random_changes_match_a_model_and_survive_reopening(make_store: Factory) -> None:
    rng = random.Random(11)

    async def main() -> None:
        store = await opened(make_store)
        model: dict[str, dict[str, Any]] = {}
        n = 0
        for _ in range(150):
            futs = []
            touched: set[str] = set()
            for _ in range(rng.randint(1, 6)):  # several changes share a batch
                op = rng.random()
                free = [i for i in model if i not in touched]
                if op < 0.45 or not free:
                    n += 1
                    rec, tags = record(n, rng.choice("ab"), rng.randint(0, 40))
                    futs.append(store.provision(rec, tags))
                    model[rec.id] = json.loads(rec.element())
                    touched.add(rec.id)
                elif op < 0.75:
                    victim = rng.choice(free)
                    futs.append(store.destroy(victim))
                    del model[victim]
                else:
                    victim = rng.choice(free)
                    labels = {"l": "v" * rng.randint(0, 80)} if rng.random() < 0.7 else {"n": "1"}
                    futs.append(store.label(victim, labels))
                    model[victim]["Tags"].update(labels)
                    touched.add(victim)
            await asyncio.gather(*futs)
            # Changes made in one batch are concurrent: compare as sets, order checked below.
            assert sorted(described(store), key=lambda d: d["ID"]) == sorted(model.values(), key=lambda d: d["ID"])
        order = [d["ID"] for d in described(store)]
        for group in "ab":
            want = [d for d in described(store) if d["Tags"]["infrakit.group"] == group]
            assert described(store, {"infrakit.group": group}) == want
        await store.close()
        again = await opened(make_store)
        assert [d["ID"] for d in described(again)] == order
        assert sorted(described(again), key=lambda d: d["ID"]) == sorted(model.values(), key=lambda d: d["ID"])
        await again.close()

    run(main)


def test_sequential_order_nonfunctional_and_restored_to_the_front(make_store: Factory) -> None:
    async def main() -> None:
        store = await opened(make_store)
        for i in range(6):
            await store.provision(*record(i))
        await store.set_functional("id-2", False)
        await store.set_functional("id-4", False)
        assert [d["ID"] for d in described(store)] == ["id-0", "id-1", "id-3", "id-5"]
        assert list(store.state.nonfunctional) == ["id-2", "id-4"]
        await store.set_functional("id-4", True)
        await store.set_functional("id-2", True)
        await store.label("id-4", {"k": "v"})  # a label keeps the place
        await store.provision(*record(9))
        order = ["id-2", "id-4", "id-0", "id-1", "id-3", "id-5", "id-9"]
        assert [d["ID"] for d in described(store)] == order
        await store.set_functional("id-1", False)
        await store.forget("id-1")
        await store.forget("id-3")
        assert not store.state.nonfunctional
        await store.close()
        again = await opened(make_store)
        assert [d["ID"] for d in described(again)] == ["id-2", "id-4", "id-0", "id-5", "id-9"]
        assert described(again, {"k": "v"})[0]["Tags"] == {"infrakit.group": "g", "n": "4", "k": "v"}
        await again.close()

    run(main)


def test_exact_spec_text_and_unknown_ids(make_store: Factory) -> None:
    async def main() -> None:
        store = await opened(make_store)
        rec, tags = record(1, extra=5)
        spec = rec.spec
        await store.provision(rec, tags)
        with pytest.raises(UnknownInstance):
            store.destroy("nope")
        with pytest.raises(UnknownInstance):
            store.label("nope", {"a": "b"})
        with pytest.raises(UnknownInstance):
            store.set_functional("nope", True)
        with pytest.raises(StoreError):
            store.provision(*record(1))
        await store.close()
        again = await opened(make_store)
        got = again.state.get("id-1")
        assert got is not None and got.spec == spec
        assert b'"Properties":' + spec in again.describe(None, True)
        await again.close()

    run(main)


# -- etcd only -------------------------------------------------------------------------------


async def _etcd_stores(url: str, n: int, **opts: Any) -> list[Any]:
    from infrakit_instance.store.etcd import EtcdOptions, EtcdStore

    stores = [EtcdStore(url, EtcdOptions(**opts)) for _ in range(n)]
    for s in stores:
        await s.open()
    return stores


def test_two_replicas_changing_concurrently_converge_on_what_etcd_holds(etcd: EtcdCluster) -> None:
    url = etcd.url(f"/test/{next(_prefixes)}")
    rng = random.Random(5)

    async def main() -> None:
        a, b = await _etcd_stores(url, 2)
        n = itertools.count()

        async def worker(store: Any, mine: list[str]) -> None:
            for _ in range(120):
                op = rng.random()
                try:
                    if op < 0.5 or not mine:
                        rec, tags = record(next(n) + (0 if store is a else 100000))
                        await store.provision(rec, tags)
                        mine.append(rec.id)
                    elif op < 0.75:
                        victim = rng.choice(mine)
                        mine.remove(victim)
                        await store.destroy(victim)
                    else:
                        # Label any instance, also the other replica's: conflicts are retried.
                        pool = list(store.state.instances) or mine
                        await store.label(rng.choice(pool), {"by": "a" if store is a else "b"})
                except (UnknownInstance, StoreError):
                    pass  # the other replica destroyed it first

        await asyncio.gather(worker(a, []), worker(a, []), worker(b, []), worker(b, []))
        await a.caught_up(b.revision)
        await b.caught_up(a.revision)
        assert a.describe(None, True) == b.describe(None, True)
        (fresh,) = await _etcd_stores(url, 1)
        assert fresh.describe(None, True) == a.describe(None, True)
        assert len(a.state) > 50
        for s in (a, b, fresh):
            await s.close()

    run(main)


def test_consistent_reads_see_the_other_replicas_acknowledged_change(etcd: EtcdCluster) -> None:
    url = etcd.url(f"/test/{next(_prefixes)}")

    async def main() -> None:
        a, b = await _etcd_stores(url, 2, consistent_reads=True)
        for i in range(20):
            await a.provision(*record(i))
            barrier = b.read_barrier()
            assert barrier is not None
            await barrier
            assert f"id-{i}" in b.state  # acknowledged on a: visible on b after the barrier
        for s in (a, b):
            await s.close()

    run(main)


def test_a_watch_lost_to_compaction_reloads_the_prefix(etcd: EtcdCluster) -> None:
    url = etcd.url(f"/test/{next(_prefixes)}")

    async def main() -> None:
        a, b = await _etcd_stores(url, 2)
        await a.provision(*record(1))
        await b.caught_up(a.revision)
        # Cut b off (its watch goes), change a lot, compact past b's revision, let b back.
        b._watcher.cancel()
        try:
            await b._watcher
        except asyncio.CancelledError:
            pass
        for i in range(2, 12):
            await a.provision(*record(i))
        await a.destroy("id-1")
        await a.client.compact(a.revision)
        b._watcher = asyncio.get_running_loop().create_task(b._watch_loop())
        await asyncio.wait_for(b.caught_up(a.revision), 10)
        assert b.reloads == 1
        assert b.describe(None, True) == a.describe(None, True)
        for s in (a, b):
            await s.close()

    run(main)


def test_etcd_unreachable_at_start_is_waited_for_then_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cluster = EtcdCluster(tmp_path)  # not started yet
    url = cluster.url("/test/late")

    async def main() -> None:
        from infrakit_instance.store.etcd import EtcdStore

        store = EtcdStore(url)
        opening = asyncio.get_running_loop().create_task(store.open())
        while "waiting for etcd" not in caplog.text:
            assert not opening.done()
            await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start)
        await asyncio.wait_for(opening, 30)
        await store.provision(*record(1))
        await store.close()

    caplog.set_level("WARNING")
    try:
        run(main)
    finally:
        cluster.stop()
    assert f"waiting for etcd at {url}" in caplog.text
