"""Pipelined group commit: a batch's durable I/O runs on the store's writer thread
while the event loop takes changes into the next batch; a batch is answered only
once it is durable, and the next batch's I/O starts only after it."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from infrakit_instance.store import FileStore, StoreError
from infrakit_instance.store.disk import Disk
from test_store import described, on_disk, provision, record, run


def _which(fd: int) -> str:
    return "journal" if os.readlink(f"/proc/self/fd/{fd}").endswith(".journal") else "data"


class HeldDisk(Disk):
    """The real disk seam, recording each operation with its thread; when ``hold`` names
    an operation (``"sync data"``, ``"write journal"``, ``"write data"``) the next one of
    that kind waits for ``release`` and then, if ``fail`` is set, raises EIO."""

    overlap = True

    def __init__(self) -> None:
        super().__init__(sync=True)
        self.ops: list[tuple[str, str]] = []
        self.hold: str | None = None
        self.fail = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.delay = 0.0  # seconds each data sync takes more: a slow disk

    def _gate(self, op: str) -> None:
        self.ops.append((op, threading.current_thread().name))
        if op == self.hold:
            self.hold = None
            self.held.set()
            assert self.release.wait(10), "never released"
            if self.fail:
                raise OSError(errno.EIO, "Input/output error")

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self._gate(f"write {_which(fd)}")
        super().pwrite(fd, data, offset)

    def datasync(self, fd: int) -> None:
        self._gate(f"sync {_which(fd)}")
        if self.delay:
            time.sleep(self.delay)
        super().datasync(fd)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``predicate`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_the_loop_takes_the_next_batch_while_one_syncs(tmp_path: Path) -> None:
    """While a batch's fdatasync is held, the loop keeps taking changes and answers
    none of them; released, every change taken meanwhile is one more batch, one sync."""
    path = str(tmp_path / "s.json")
    disk = HeldDisk()

    async def main() -> None:
        store = FileStore(path, disk=disk)
        await store.open()
        await provision(store, record(0))
        disk.ops.clear()
        disk.hold = "sync data"
        first = provision(store, record(1))
        await until(disk.held.is_set, "the first batch's sync")
        # The loop is free: it takes fifteen more changes while the sync is held.
        rest = [provision(store, record(i)) for i in range(2, 17)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done() and not any(f.done() for f in rest)  # nothing answered before it is durable
        assert disk.ops == [("write data", disk.ops[0][1]), ("sync data", disk.ops[0][1])]
        assert disk.ops[0][1].startswith("infrakit-store")  # the I/O ran on the writer thread
        disk.release.set()
        await asyncio.gather(first, *rest)
        syncs = [op for op, _ in disk.ops if op.startswith("sync")]
        assert syncs == ["sync data", "sync data"]  # 16 provisions, 2 syncs
        # The second batch's writes come after the first batch's sync: the order is kept.
        assert [op for op, _ in disk.ops] == ["write data", "sync data", "write data", "sync data"]
        assert [d["ID"] for d in on_disk(path)] == [f"id-{i}" for i in range(17)]
        await store.close()
        again = FileStore(path)
        await again.open()
        assert [d["ID"] for d in described(again)] == [f"id-{i}" for i in range(17)]
        await again.close()

    run(main)


async def destroy_failing_at(
    path: str, disk: HeldDisk, hold: str
) -> tuple[FileStore, asyncio.Future[None], asyncio.Future[None]]:
    """A store of three instances whose destroy of id-1 fails at ``hold`` on the writer
    thread, held there until a provision is taken for the next batch."""
    store = FileStore(path, disk=disk)
    await store.open()
    for i in range(3):
        await provision(store, record(i))
    disk.hold, disk.fail = hold, True
    gone = store.destroy("id-1")
    await until(disk.held.is_set, f"the destroy's {hold}")
    later = provision(store, record(9))
    disk.release.set()
    return store, gone, later


def test_a_failed_batch_fails_the_changes_taken_while_it_was_written(tmp_path: Path) -> None:
    """The journal write of a destroy fails on the writer thread while a provision waits
    for the next batch: both fail, memory is what the file holds, serving goes on."""
    path = str(tmp_path / "s.json")
    disk = HeldDisk()

    async def main() -> None:
        store, gone, later = await destroy_failing_at(path, disk, "write journal")
        for fut in (gone, later):
            try:
                await fut
            except StoreError as exc:
                assert "could not write the state file" in str(exc)
            else:
                raise AssertionError("a change of a failed batch was answered")
        assert store.stopped is None
        ids = ["id-0", "id-1", "id-2"]
        assert [d["ID"] for d in described(store)] == ids == [d["ID"] for d in on_disk(path)]
        disk.fail = False
        await store.destroy("id-1")
        await provision(store, record(3))
        assert [d["ID"] for d in described(store)] == ["id-0", "id-2", "id-3"]
        await store.close()
        assert [d["ID"] for d in on_disk(path)] == ["id-0", "id-2", "id-3"]

    run(main)


def test_changes_taken_while_a_batch_stopped_the_store_are_refused(tmp_path: Path) -> None:
    """A journaled destroy is durable, then writing it into the state file fails: the
    store stops.  A provision taken meanwhile is refused with the cause and never shows;
    the destroy is answered and the next start has it."""
    path = str(tmp_path / "s.json")
    disk = HeldDisk()

    async def main() -> None:
        # The destroy's write into the file, after its journal record.
        store, gone, later = await destroy_failing_at(path, disk, "write data")
        await gone  # durable in the journal: answered
        try:
            await later
        except StoreError as exc:
            assert "stopped taking changes" in str(exc)
        else:
            raise AssertionError("a change taken after the store stopped was answered")
        assert store.stopped is not None
        assert [d["ID"] for d in described(store)] == ["id-0", "id-2"]
        disk.fail = False
        await store.close()
        again = FileStore(path)
        await again.open()
        assert [d["ID"] for d in described(again)] == ["id-0", "id-2"]
        await again.close()

    run(main)


def test_without_syncs_the_writes_stay_on_the_loop(tmp_path: Path) -> None:
    """``--fsync never``: nothing to wait for, so no thread hop."""
    path = str(tmp_path / "s.json")
    disk = HeldDisk()
    disk.sync = False

    async def main() -> None:
        store = FileStore(path, fsync=False, disk=disk)
        await store.open()
        await asyncio.gather(*(provision(store, record(i)) for i in range(4)))
        await store.destroy("id-2")
        await store.close()

    run(main)
    assert disk.ops and {thread for _, thread in disk.ops} == {threading.main_thread().name}


def test_a_stand_in_disk_runs_on_the_loop_unless_it_asks() -> None:
    class Quiet(Disk):
        pass

    assert Disk.overlap and HeldDisk.overlap and not Quiet.overlap


# -- on a server: the batch's I/O runs on the loop when every client waits for it -------------

_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def _provision(ident: int) -> bytes:
    body = b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"","Spec":{"Tags":{"g":"x"}}},"id":%d}'
    body %= ident
    return _HEAD % len(body) + body


async def _answers(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        out.append(await reader.readexactly(length))
    return out


def test_a_connection_waits_while_a_batch_of_its_changes_is_not_done(tmp_path: Path) -> None:
    """What the server tells the store: every open connection holds a change whose batch is not
    done.  A connection whose batch is done (its answers about to be written) waits no longer."""
    from infrakit_instance.server import Config, Connection, Server, new_event_loop

    loop = new_event_loop()
    try:
        server = Server(Config(listen="unix://" + str(tmp_path / "p.sock"), state=str(tmp_path / "s.json")))
        assert server.store.all_waiting == server.all_waiting
        assert server.all_waiting()  # nobody connected: nobody to keep the loop for
        first, second = Connection(server), Connection(server)
        server.connections.update((first, second))
        batch, later = loop.create_future(), loop.create_future()
        first._waiting[batch] = []
        assert not server.all_waiting()  # the second has nothing pending
        second._waiting[batch] = []
        assert server.all_waiting()
        first._waiting[later] = []
        batch.set_result(None)  # the first still has a change in a batch not done; the second not
        assert not server.all_waiting()
        second._waiting[later] = []
        assert server.all_waiting()
    finally:
        loop.close()


def test_a_batch_every_client_waits_for_syncs_on_the_loop(tmp_path: Path) -> None:
    """A plugin's server tells its store when every open connection waits for a change:
    then nobody could use the loop while the batch syncs, and its writes and sync run on
    the loop (no hand-off to the writer thread and back).  One open connection more, idle,
    and the batch goes to the writer thread, so that the loop stays free for it; so does the
    batch after a slow one."""
    from infrakit_instance.server import Config, Server, new_event_loop

    sock = str(tmp_path / "p.sock")
    disk = HeldDisk()
    store = FileStore(str(tmp_path / "s.json"), disk=disk)
    store.on_loop_max = 60.0  # where a batch syncs must not hang on this machine's sync times...
    server = Server(Config(listen="unix://" + sock, state=store.path, plugins_dir=str(tmp_path)), store=store)
    main_thread = threading.current_thread().name

    def syncs() -> list[str]:
        """The threads of the data syncs since the last call."""
        done = [thread for op, thread in disk.ops if op == "sync data"]
        disk.ops.clear()
        return done

    async def test() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        # The only connection, one change, then two pipelined in one write: on the loop.
        writer.write(_provision(1))
        assert len(await _answers(reader, 1)) == 1
        writer.write(_provision(2) + _provision(3))
        assert all(b'"result"' in a for a in await _answers(reader, 2))
        done = syncs()
        assert done and set(done) == {main_thread}, done
        assert not server.all_waiting()  # answered: the connection waits no longer
        # A second connection, open and idle: the batch syncs on the writer thread.
        idle_reader, idle_writer = await asyncio.open_unix_connection(sock)
        await until(lambda: len(server.connections) == 2, "the idle connection")
        disk.ops.clear()
        writer.write(_provision(4))
        await _answers(reader, 1)
        done = syncs()
        assert done and all(t.startswith("infrakit-store") for t in done), done
        # A connection lost while its change syncs (held; cut off as the server's own timeouts
        # do it): its change is made all the same, and the server goes on without it.
        # (A client that only half-closes still waits for its answer, and is open till then.)
        gone_reader, gone_writer = await asyncio.open_unix_connection(sock)
        disk.hold = "sync data"
        gone_writer.write(_provision(5))
        await until(disk.held.is_set, "the change's sync")
        (gone,) = [conn for conn in server.connections if conn._waiting]
        gone.transport.abort()
        await until(lambda: len(server.connections) == 2, "the lost connection gone")
        disk.release.set()
        await until(lambda: len(store.state) == 5 and not store._waiters, "the closed client's change")
        disk.ops.clear()
        writer.write(_provision(6))
        await _answers(reader, 1)
        done = syncs()
        assert done and all(t.startswith("infrakit-store") for t in done), done  # the idle one is still open
        idle_writer.close()
        await until(lambda: len(server.connections) == 1, "the idle connection closed")
        disk.ops.clear()
        writer.write(_provision(7))
        await _answers(reader, 1)
        assert syncs() == [main_thread]
        # ...but on a slow disk (syncs made 0.5 s slower; up to 0.1 s a batch counts as fast
        # here) the batch after a slow one goes to the thread, so that the loop stays free for
        # a client that connects meanwhile; fast again, back to the loop.
        store.on_loop_max = 0.1
        seen = []
        for i, delay in enumerate((0.5, 0.5, 0.0, 0.0)):
            disk.delay = delay
            writer.write(_provision(8 + i))
            await _answers(reader, 1)
            seen += syncs()
        assert ["loop" if t == main_thread else "thread" for t in seen] == ["loop", "thread", "thread", "loop"], seen
        writer.close()
        del idle_reader, gone_reader

    async def main() -> None:
        await server.start()
        try:
            await asyncio.wait_for(test(), 20)
        finally:
            disk.release.set()
            await server.stop()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
