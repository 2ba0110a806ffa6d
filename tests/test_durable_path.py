"""The durable path's own costs: destroys oldest first, and how a batch's writes become
the regions that reach the file and the journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

from infrakit_instance.store import FileStore
from test_store import described, on_disk, provision, record, run


def test_destroys_oldest_first_keep_order_across_rebuilds_of_the_instances(tmp_path: Path) -> None:
    """InfraKit destroys in sorted-ID order, so oldest first: every destroy then takes the
    first element (and blanks the comma of the one after it).  Over more destroys than the
    store lets pile up in its dict before rebuilding it, with provisions between them, memory,
    the file and a reopened store agree on every instance and their order."""
    path = str(tmp_path / "s.json")

    async def main() -> None:
        store = FileStore(path)
        await store.open()
        for i in range(0, 1200, 16):
            await asyncio.gather(*(provision(store, record(i + k)) for k in range(16)))
        alive = [f"id-{i}" for i in range(1200)]
        n = 1200
        rebuilt = 0
        for _ in range(60):
            batch = [store.destroy(alive.pop(0)) for _ in range(12)]
            batch += [provision(store, record(n + k)) for k in range(4)]
            alive += [f"id-{n + k}" for k in range(4)]
            n += 4
            holes = store._holes
            await asyncio.gather(*batch)
            rebuilt += holes < 12  # the dict was rebuilt during this batch
        assert rebuilt >= 2, "the test must cross the rebuild threshold more than once"
        assert [d["ID"] for d in described(store)] == alive
        assert [d["ID"] for d in on_disk(path)] == alive
        await store.close()
        again = FileStore(path)
        await again.open()
        assert [d["ID"] for d in described(again)] == alive
        await again.close()

    run(main)
