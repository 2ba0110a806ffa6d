"""The file store over either twin of its pending batch (``_batch_c``, ``_batch_py``).

The same store class is built on each twin's :class:`Core`; both take the same random
sequence of provisions, destroys (oldest first and at random), labels and failures,
and must end with byte-identical state files, the same placements in memory and the
same answers and errors, after every batch.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance import _batch_py
from infrakit_instance._impl import codec
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore, StoreError, UnknownInstance
from infrakit_instance.store.file import StoreStopped, load_state_file, tell_core
from infrakit_instance.store.journal import Region

pytestmark = pytest.mark.compiled
_batch_c = impls.compiled_modules()[impls.MODULES.index("_batch")]
for _twin in (_batch_c, _batch_py):  # store.file tells the selected twin only
    tell_core(_twin)


def _store_class(core: Any, one_pass: bool = True) -> type[FileStore]:
    """FileStore's own methods over ``core``'s Core (the class the plugin uses has the selected one);
    without ``one_pass``, every batch is cut the general way (``FileStore._cut``), appends too."""
    body = {k: v for k, v in vars(FileStore).items() if k not in ("__dict__", "__weakref__")}
    if not one_pass:
        body["_cut_appends"] = lambda self: None
    return type(f"FileStore_{core.__name__}_{one_pass}", (core.Core, *FileStore.__bases__[1:]), body)


def test_the_store_class_is_built_on_the_selected_twin() -> None:
    from infrakit_instance._impl import batch

    assert FileStore.__mro__[1] is batch.Core
    for twin in (_batch_c, _batch_py):
        cls = _store_class(twin)
        assert cls.__mro__[1] is twin.Core
        for name in ("provision", "destroy", "_queue", "_waiter", "_head", "_joined_writes"):
            assert name not in vars(FileStore), name  # the core's, in both
            assert getattr(cls, name) is getattr(twin.Core, name)


def _record(n: int, tags: dict[str, str], spec: bytes | None) -> Record:
    iid = f"instance-{n}"
    return Record(iid, codec.encode_brief(iid, None if n % 3 else f"10.0.0.{n}", tags), spec)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("provision"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("destroy-oldest"), st.just(0), st.booleans()),
        st.tuples(st.just("destroy"), st.integers(0, 1000), st.booleans()),
        st.tuples(st.just("label"), st.integers(0, 1000), st.integers(0, 40)),
        st.tuples(st.just("unknown"), st.just(0), st.booleans()),
        st.tuples(st.just("twice"), st.integers(0, 1000), st.booleans()),
        st.tuples(st.just("cut"), st.just(0), st.booleans()),
    ),
    min_size=1,
    max_size=60,
)


async def _drive(cls: type[FileStore], path: str, ops: list[tuple[str, int, Any]]) -> list[Any]:
    store = cls(path, fsync=False)
    await store.open()
    seen: list[Any] = []
    made = 0
    futures: list[asyncio.Future[None]] = []
    try:
        for kind, arg, flag in ops:
            live = list(store.state.instances)
            try:
                if kind == "provision":
                    tags = {"g": f"g{arg}", "role": "worker"} if flag else {}
                    spec = b'{"n":%d,"Init":"x"}' % made if made % 4 else None
                    futures.append(store.provision(_record(made, tags, spec), tags))
                    made += 1
                elif kind == "destroy-oldest" and live:
                    futures.append(store.destroy(live[0]))
                elif kind == "destroy" and live:
                    futures.append(store.destroy(live[arg % len(live)]))
                elif kind == "label" and live:
                    futures.append(store.label(live[arg % len(live)], {"l": "v" * flag}))
                elif kind == "unknown":
                    store.destroy("instance-none")
                elif kind == "twice" and live:
                    iid = live[arg % len(live)]
                    store.provision(Record(iid, codec.encode_brief(iid, None, {}), None), {})
                elif kind == "cut":
                    await asyncio.gather(*futures)
                    futures.clear()
                    seen.append(("file", open(path, "rb").read()))
            except (StoreError, UnknownInstance) as exc:
                seen.append(("raised", type(exc).__name__, str(exc)))
            seen.append(
                (
                    "memory",
                    [(r.id, r.off, r.size, r.brief, r.spec) for r in store.state.instances.values()],
                    store._tip,
                    store._end,
                    store._live,
                    store._append_from,
                    store._run_end,
                    store._in_place,
                    store._changes,
                    [(o, bytes(d)) for o, d in store._writes],
                    [bytes(d) for d in store._run],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await store.close()
    seen.append(("file", open(path, "rb").read()))
    loaded = load_state_file(path)
    seen.append(("reloaded", [(r.id, r.brief, r.spec) for r in loaded.state.instances.values()]))
    return seen


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_both_twins_write_the_same_file_and_keep_the_same_memory(tmp_path: Any, ops: list[Any]) -> None:
    # Each twin, cutting append batches in one pass (the core's _cut_appends) and the general
    # way (seal, merge, sign): the same files and memory, all four.
    runs = []
    for twin in (_batch_c, _batch_py):
        for one_pass in (True, False):
            d = tmp_path / twin.__name__ / str(os.urandom(4).hex())
            d.mkdir(parents=True)
            runs.append(asyncio.run(_drive(_store_class(twin, one_pass), str(d / "state.json"), ops)))
    assert runs[0] == runs[1] == runs[2] == runs[3]


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_both_twins_write_the_same_trailers(length: int, crc: int) -> None:
    from infrakit_instance.store import trailer

    made = _batch_c.trailer(length, crc)
    assert made == _batch_py.trailer(length, crc)
    assert len(made) == trailer.SIZE and trailer.decode(made) == (length, crc)


@pytest.mark.parametrize("twin", [_batch_c, _batch_py], ids=["compiled", "pure"])
def test_trailers_refuse_what_32_bits_cannot_hold(twin: Any) -> None:
    for length, crc in ((2**32, 0), (0, 2**32), (-1, 0), (0, -1)):
        with pytest.raises(ValueError, match="32-bit"):
            twin.trailer(length, crc)


@pytest.mark.parametrize("twin", [_batch_c, _batch_py], ids=["compiled", "pure"])
def test_append_batches_are_cut_in_one_pass(tmp_path: Any, twin: Any) -> None:
    # The one-pass cut is what the writer uses for appends (not only an equal alternative).
    cuts: list[Any] = []
    cls = _store_class(twin)
    plain = cls._cut_appends

    def spy(self: Any) -> Any:
        cut = plain(self)
        cuts.append(cut is not None)
        return cut

    cls._cut_appends = spy  # type: ignore[method-assign]

    async def go() -> None:
        store = cls(str(tmp_path / "state.json"), fsync=False)
        await store.open()
        await asyncio.gather(*(store.provision(_record(n, {"g": "1"}, None), {"g": "1"}) for n in range(5)))
        await store.destroy("instance-0")
        await store.close()

    asyncio.run(go())
    assert cuts == [True, False]  # the appends' batch in one pass; the destroy's the general way
    assert [r.id for r in load_state_file(str(tmp_path / "state.json")).state.instances.values()] == [
        f"instance-{n}" for n in range(1, 5)
    ]


@pytest.mark.parametrize("twin", [_batch_c, _batch_py], ids=["compiled", "pure"])
def test_a_stopped_store_refuses_provisions_and_destroys_with_its_reason(tmp_path: Any, twin: Any) -> None:
    async def go() -> None:
        store = _store_class(twin)(str(tmp_path / "state.json"), fsync=False)
        await store.open()
        await store.provision(_record(1, {}, None), {})
        store.stopped = "a write could not be undone"
        with pytest.raises(StoreStopped, match="a write could not be undone"):
            store.provision(_record(2, {}, None), {})
        with pytest.raises(StoreStopped, match="a write could not be undone"):
            store.destroy("instance-1")
        assert list(store.state.instances) == ["instance-1"]
        store.stopped = None
        await store.close()

    asyncio.run(go())


# -- a journal span's image: what the journal logs and writes of a batch, in each twin ------


@st.composite
def _spans(draw: st.DrawFn) -> tuple[Any, ...]:
    chunk = draw(st.sampled_from([8, 16, 512]))
    first = draw(st.integers(0, 4))
    count = draw(st.integers(1, 4))
    base = first * chunk
    # Bytes, or spaces (what destroys write: the compiled twin knows a blank chunk's crc).
    old = draw(st.one_of(st.binary(max_size=count * chunk), st.integers(0, count * chunk).map(lambda n: b" " * n)))
    regions = []
    for _ in range(draw(st.integers(0, 5))):
        lo = draw(st.integers(0, count * chunk - 1))
        most = count * chunk - lo
        data = draw(st.one_of(st.binary(min_size=1, max_size=most), st.integers(1, most).map(lambda n: b" " * n)))
        regions.append(Region(base + lo, data))
    new_size = base + draw(st.integers(-chunk, count * chunk + chunk))
    return old, regions, first, count, base, new_size, chunk


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spans())
def test_a_journal_spans_image_is_each_twins_alike(span: tuple[Any, ...]) -> None:
    import struct
    import zlib

    old, regions, first, count, base, new_size, chunk = span
    got = [twin.span_image(old, regions, first, count, base, new_size, chunk) for twin in (_batch_c, _batch_py)]
    assert got[0] == got[1]
    # And what they compute, from a plain model: the writes applied in order over the old bytes
    # (zeros past them), the file cut at new_size, chunks zero-padded.
    image = bytearray(old)
    for r in regions:
        lo = r.offset - base
        image.extend(bytes(max(0, lo + len(r.data) - len(image))))
        image[lo : lo + len(r.data)] = r.data
    cut = bytes(image[: max(0, new_size - base)])
    if regions:
        start = min(r.offset for r in regions) - base
        stop = min(max(r.offset + len(r.data) for r in regions) - base, new_size - base)
        assert got[0][0] == ((base + start, cut[start:stop]) if stop > start else None)
    else:
        assert got[0][0] is None

    def padded(b: bytes, k: int) -> int:
        return zlib.crc32(b[k * chunk : (k + 1) * chunk].ljust(chunk, b"\0"))

    rows = [struct.unpack_from("<QII", got[0][1], 16 * k) for k in range(count)]
    assert len(got[0][1]) == 16 * count
    assert rows == [(first + k, padded(old, k), padded(cut, k)) for k in range(count)]
