"""The dispatcher's single-request path (``DispatchCore``) and ``provision_params`` of the
``_rpc`` twins: both twins agree with each other and with the old, interpreted path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance import _rpc_py, rpc
from infrakit_instance.rpc import Dispatcher, Pending, _texts, error_answer

pytestmark = pytest.mark.compiled
_http_c, _rpc_c, _codec_c, _conn_c, _batch_c, _state_c = impls.compiled_modules()

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TWINS = [_rpc_c, _rpc_py]


class _BothError(_rpc_c.RpcError, _rpc_py.RpcError):  # type: ignore[misc]
    """An RpcError to either twin (a method's error is the selected twin's class)."""


# -- provision_params against the checks Plugin.provision made itself ----------------------


def _old_provision_checks(params: dict[str, Any]) -> tuple[bytes, Any, Any, Any]:
    """The checks of Plugin.provision before they moved to the twins (its _type and _string_map)."""

    def bad(message: str) -> rpc.RpcError:
        return rpc.RpcError(rpc.envelope.INVALID_PARAMS, f"invalid params: {message}")

    kind = params.get("Type")
    if kind is None or kind == "":
        type_json = b'""'
    elif not isinstance(kind, str):
        raise bad('"Type" must be a string')
    else:
        raise rpc.RpcError(rpc.envelope.PLUGIN_ERROR, f"no-plugin:{kind}")
    spec = params.get("Spec")
    if not isinstance(spec, dict):
        raise bad('"Spec" must be an object')
    tags = spec.get("Tags")
    if tags is None:
        tags = {}
    elif not isinstance(tags, dict):
        raise bad("Spec.Tags must be an object of strings")
    else:
        for k, v in tags.items():
            if not isinstance(v, str):
                raise bad(f"Spec.Tags[{k!r}] must be a string, not {type(v).__name__}")
    logical_id = spec.get("LogicalID")
    if logical_id is not None and not isinstance(logical_id, str):
        raise bad('"Spec.LogicalID" must be a string or null')
    init = spec.get("Init")
    if init is not None and not isinstance(init, str):
        raise bad('"Spec.Init" must be a string or null')
    attachments = spec.get("Attachments")
    if attachments is not None and (
        not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments)
    ):
        raise bad('"Spec.Attachments" must be a list of {"ID","Type"} objects or null')
    return type_json, spec, tags, logical_id


def _outcome(fn: Any, params: Any) -> Any:
    try:
        return ("ok", fn(params))
    except Exception as exc:  # the code and message, whichever twin's RpcError class raised it
        return ("error", type(exc).__name__, getattr(exc, "code", None), getattr(exc, "message", str(exc)))


_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=4))
_ANY = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=4,
)


@st.composite
def provision_params(draw: st.DrawFn) -> Any:
    """Provision params, mostly valid, with one part or another of any shape."""
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["Tags"] = draw(st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3), _ANY))
    for key, good in (
        ("LogicalID", st.one_of(st.none(), st.text(max_size=4))),
        ("Init", st.one_of(st.none(), st.text(max_size=4))),
        (
            "Attachments",
            st.one_of(st.none(), st.lists(st.dictionaries(st.text(max_size=2), _SCALAR, max_size=2), max_size=2)),
        ),
        ("Properties", _ANY),
    ):
        if draw(st.booleans()):
            spec[key] = draw(st.one_of(good, _ANY) if draw(st.booleans()) else good)
    params: dict[str, Any] = {}
    if draw(st.booleans()):
        params["Type"] = draw(st.one_of(st.sampled_from(["", None, "aws"]), _ANY))
    if draw(st.integers(0, 9)):
        params["Spec"] = spec
    elif draw(st.booleans()):
        params["Spec"] = draw(_ANY)
    return params


@SETTINGS
@given(provision_params())
def test_provision_params_twins_agree_with_the_old_checks(params: Any) -> None:
    old = _outcome(_old_provision_checks, params)
    for twin in TWINS:
        got = _outcome(twin.provision_params, params)
        assert got == old, (twin.__name__, params)
        if got[0] == "ok":
            assert got[1][1] is params["Spec"]  # the Spec itself, not a copy
            assert got[1][0] == twin.EMPTY_TYPE


def test_provision_params_errors() -> None:
    cases = [
        ({"Type": 3, "Spec": {}}, rpc.envelope.INVALID_PARAMS, 'invalid params: "Type" must be a string'),
        ({"Type": "x", "Spec": {}}, rpc.envelope.PLUGIN_ERROR, "no-plugin:x"),
        ({}, rpc.envelope.INVALID_PARAMS, 'invalid params: "Spec" must be an object'),
        (
            {"Spec": {"Tags": {"a": 1}}},
            rpc.envelope.INVALID_PARAMS,
            "invalid params: Spec.Tags['a'] must be a string, not int",
        ),
        (
            {"Spec": {"Attachments": [{}, 1]}},
            rpc.envelope.INVALID_PARAMS,
            'invalid params: "Spec.Attachments" must be a list of {"ID","Type"} objects or null',
        ),
    ]
    for twin in TWINS:
        for params, code, message in cases:
            with pytest.raises(twin.RpcError) as info:
                twin.provision_params(params)
            assert (info.value.code, info.value.message) == (code, message)
        assert twin.provision_params({"Spec": {}}) == (b'""', {}, {}, None)


# -- DispatchCore.handle: each twin's core under the same Dispatcher, and the old path ------


def _dispatcher_on(core: type) -> type:
    """rpc.Dispatcher's own methods on the given core."""
    own = {k: v for k, v in vars(Dispatcher).items() if k not in ("__dict__", "__weakref__")}
    return type(f"Dispatcher_{core.__module__}", (core,), own)


_LOOP = asyncio.new_event_loop()


def _methods() -> dict[str, Any]:
    def change(params: dict[str, Any]) -> Pending:
        return Pending(_LOOP.create_future(), orjson.dumps(params))

    def fails(params: dict[str, Any]) -> bytes:
        raise _BothError(-32000, f"failed: {sorted(params)!r}")

    def bug(params: dict[str, Any]) -> bytes:
        raise ValueError("a bug")

    def provision(params: dict[str, Any], spec_json: bytes | None = None) -> bytes:
        return b'{"Spec":' + (spec_json if spec_json is not None else orjson.dumps(params.get("Spec"))) + b"}"

    return {
        "Echo": lambda params: orjson.dumps(params),
        "Change": change,
        "Fails": fails,
        "Bug": bug,
        "Instance.Provision": provision,
    }


def _old_handle(d: Any, body: bytes) -> Any:
    """The answer the way the dispatcher gave it without its single-request path."""
    try:
        doc = rpc.envelope.decode_body(body)
    except rpc.RpcError as exc:
        return error_answer(exc.id_json, exc.code, exc.message, None)
    if isinstance(doc, list):
        return d._batch(doc, body)
    raw = _texts(body, rpc.envelope.scan(body)[1]) if d._needs_text(doc, body) else None
    return d._one(doc, raw[0] if raw else None)[0]


def _same(answer: Any) -> Any:
    if isinstance(answer, Pending):
        return ("pending", answer.answer, answer.id_json, answer.method)
    if isinstance(answer, asyncio.Future):  # a batch that waits: compared as such
        answer.cancel()
        return "future"
    return answer


_CORES = [m.DispatchCore for m in TWINS]


def _answers(body: bytes) -> Iterator[Any]:
    asyncio.set_event_loop(_LOOP)  # a batch that waits makes a task on it
    for core in _CORES:
        yield _same(_dispatcher_on(core)(_methods()).handle(body))
    d = Dispatcher(_methods())
    yield _same(d.handle(body))
    yield _same(_old_handle(d, body))


_IDS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=4),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=1),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    members: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        members["jsonrpc"] = "2.0"
    elif draw(st.booleans()):
        members["jsonrpc"] = draw(_ANY)
    if draw(st.integers(0, 9)):
        members["method"] = draw(st.sampled_from(["Echo", "Change", "Fails", "Bug", "Instance.Provision", "Nope"]))
    elif draw(st.booleans()):
        members["method"] = draw(_ANY)
    if draw(st.integers(0, 5)):
        members["id"] = draw(_IDS)
    if draw(st.booleans()):
        spec = draw(st.dictionaries(st.text(max_size=3), _ANY, max_size=3))
        members["params"] = draw(st.sampled_from([{"Spec": spec}, [{"Spec": spec}], None, [], 3, [1, 2]]))
    text = json.dumps(members, separators=(",", ":") if draw(st.booleans()) else (", ", ": "))
    if draw(st.booleans()):
        text = text.replace(" ", "\n")
    return text.encode()


@SETTINGS
@given(requests())
def test_dispatch_core_twins_answer_as_the_old_path(body: bytes) -> None:
    got = list(_answers(body))
    assert all(g == got[-1] for g in got), (body, got)


@SETTINGS
@given(
    st.one_of(requests(), st.lists(requests(), max_size=2).map(lambda b: b"[" + b",".join(b) + b"]")),
    st.integers(0, 200),
    st.binary(max_size=3),
)
def test_dispatch_core_twins_on_damaged_bodies(body: bytes, at: int, junk: bytes) -> None:
    at = at % (len(body) + 1)
    for damaged in (body, body[:at] + junk + body[at:], body[:at] + body[at + 1 :]):
        got = list(_answers(damaged))
        assert all(g == got[-1] for g in got), (damaged, got)


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","method":"Change","params":{"a":1},"id":5}',
        b'{"jsonrpc":"2.0","method":"Bug","id":"x"}',
        b'{"jsonrpc":"2.0","method":"Fails","params":{"b":1},"id":-0}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"n":1.50}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"s":"\\u0041"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Echo","id":"\\u0041"}',
        b'{"jsonrpc":"2.0","method":"Echo","id":1.0}',
        b'{"jsonrpc":"2.0","method":"Echo","id":123456789012345678901234567890}',
        b'{"jsonrpc":"2.0","method":"Echo"}',
        b'{"jsonrpc":"1.0","method":"Echo","id":2}',
        b'{"jsonrpc":"2.0","method":"Echo","params":3,"id":2}',
        b"[]",
        b"{",
    ],
)
def test_dispatch_core_twins_on_edge_requests(body: bytes) -> None:
    got = list(_answers(body))
    assert all(g == got[-1] for g in got), (body, got)
    if b'"Change"' in body:
        assert got[0] == ("pending", b'{"jsonrpc":"2.0","result":{"a":1},"id":5}', b"5", "Change")
    if b'"Bug"' in body:
        assert b"internal error in Bug: ValueError('a bug')" in got[0]


# -- LogicalProvision: Provision for the logical provider, whole in each twin ---------------


def _logical_run(twin: Any, path: str, steps: list[Any], seed: int, taken: list[str]) -> list[Any]:
    import random

    from infrakit_instance.state import Record
    from infrakit_instance.store import FileStore, StoreError

    async def go() -> list[Any]:
        store = FileStore(path, fsync=False)
        await store.open()
        for iid in taken:  # IDs already in the state: never chosen again
            await store.provision(Record(iid, _codec_c.encode_brief(iid, None, {}), None), {})
        rand = random.Random(seed)
        rand.getrandbits(63)
        proposed = {f"instance-{rand.getrandbits(63)}"}  # the second draw: a provision under way
        lp = twin.LogicalProvision(store, random.Random(seed), proposed, StoreError, Record)
        seen: list[Any] = []
        for params, spec_json in steps:
            try:
                pending = lp(params, spec_json)
            except (_rpc_c.RpcError, _rpc_py.RpcError) as exc:
                seen.append(("error", exc.code, exc.message))
                continue
            assert isinstance(pending, Pending)
            await pending.done
            rec = store.state.get(orjson.loads(pending.answer)["ID"])
            seen.append(("ok", pending.answer, pending.settle(), rec.brief, rec.spec))
        store.stopped = "the disk is full"
        try:
            lp({"Spec": {}}, None)
        except (_rpc_c.RpcError, _rpc_py.RpcError) as exc:
            seen.append(("stopped", exc.code, exc.message))
        store.stopped = None
        seen.append([r.id for r in store.state.instances.values()])
        await store.close()
        with open(path, "rb") as f:
            seen.append(f.read())
        return seen

    return asyncio.run(go())


_LOGICAL_STEPS = st.lists(
    st.tuples(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "Type": st.sampled_from(["", None]),
                    "Spec": st.fixed_dictionaries(
                        {
                            "Tags": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
                            "LogicalID": st.one_of(st.none(), st.text(max_size=4)),
                            "Properties": _ANY,
                        }
                    ),
                }
            ),
            provision_params(),
        ),
        st.sampled_from([None, b'{"n":1.50}']),
    ),
    max_size=12,
)


@SETTINGS
@given(_LOGICAL_STEPS, st.integers(0, 2**32), st.booleans())
def test_logical_provision_twins_agree(steps: list[Any], seed: int, collide: bool) -> None:
    import random
    import tempfile

    _rpc_py.use_pending(Pending)  # what envelope.use_pending does for the selected twin
    taken = [f"instance-{random.Random(seed).getrandbits(63)}"] if collide else []
    runs = []
    for twin in TWINS:
        with tempfile.TemporaryDirectory() as d:
            runs.append(_logical_run(twin, f"{d}/state.json", steps, seed, taken))
    assert runs[0] == runs[1]
    outcomes = runs[0][:-3]
    assert runs[0][-3] == ("stopped", rpc.envelope.PLUGIN_ERROR, "the disk is full")
    for (params, spec_json), outcome in zip(steps, outcomes, strict=True):
        # the same outcome as the checks alone, and what they pass is recorded as sent
        checked = _outcome(_rpc_py.provision_params, params)
        if checked[0] != "ok":
            assert outcome == ("error", checked[2], checked[3])
            continue
        _, answer, settled, brief, spec = outcome
        assert settled == answer
        iid = orjson.loads(answer)["ID"]
        assert answer == b'{"Type":"","ID":"' + iid.encode() + b'"}'
        tags, logical_id = checked[1][2], checked[1][3]
        assert brief == _codec_c.encode_brief(iid, logical_id, tags)
        assert spec == (spec_json if spec_json is not None else orjson.dumps(params["Spec"]))
    ids = [orjson.loads(o[1])["ID"] for o in outcomes if o[0] == "ok"]
    # Fresh IDs in the seed's order, skipping one in the state already and one proposed.
    rand = random.Random(seed)
    draws = [f"instance-{rand.getrandbits(63)}" for _ in range(len(ids) + 2)]
    skipped = {draws[1], *taken}
    assert ids == [d for d in draws if d not in skipped][: len(ids)]
    assert runs[0][-2] == taken + ids


# -- LogicalDestroy and LogicalLabel: changes for the logical provider, whole in each twin --

_DESTROY_IDS = [f"instance-{n}" for n in range(5)]


@st.composite
def destroy_params(draw: st.DrawFn) -> Any:
    """Destroy params, mostly of instances the store holds, with one part or another of any shape."""
    params: dict[str, Any] = {}
    if draw(st.booleans()):
        params["Type"] = draw(st.one_of(st.sampled_from(["", None, "aws"]), _ANY))
    if draw(st.integers(0, 9)):
        params["Instance"] = draw(st.one_of(st.sampled_from([*_DESTROY_IDS, "", "instance-9"]), _ANY))
    if draw(st.booleans()):
        params["Context"] = draw(st.one_of(st.sampled_from([None, {}, {"Reason": "terminate"}]), _ANY))
    return params


@st.composite
def label_params(draw: st.DrawFn) -> Any:
    """Label params, mostly of instances the store holds, with one part or another of any shape."""
    params: dict[str, Any] = {}
    if draw(st.booleans()):
        params["Type"] = draw(st.one_of(st.sampled_from(["", None, "aws"]), _ANY))
    if draw(st.integers(0, 9)):
        params["Instance"] = draw(st.one_of(st.sampled_from([*_DESTROY_IDS, "", "instance-9"]), _ANY))
    if draw(st.integers(0, 4)):
        labels = st.dictionaries(st.sampled_from(["t", "u", "v"]), st.text(max_size=3), max_size=3)
        params["Labels"] = draw(st.one_of(labels, st.none(), _ANY) if draw(st.booleans()) else labels)
    return params


def _destroy_run(destroy: Any, path: str, steps: list[Any]) -> list[Any]:
    """Run ``steps`` one by one over a store holding ``_DESTROY_IDS``, with what
    ``destroy(store)`` (a Destroy or a Label) makes of the store: each outcome, then the store
    stopped, the instances left with their descriptions, the tag index and the file."""
    from infrakit_instance.state import Record
    from infrakit_instance.store import FileStore

    async def go() -> list[Any]:
        store = FileStore(path, fsync=False)
        await store.open()
        for iid in _DESTROY_IDS:
            await store.provision(Record(iid, _codec_c.encode_brief(iid, None, {"t": iid}), None), {"t": iid})
        call = destroy(store)
        seen: list[Any] = []
        for params in steps:
            try:
                pending = call(params)
            except (_rpc_c.RpcError, _rpc_py.RpcError) as exc:
                seen.append(("error", exc.code, exc.message))
                continue
            assert isinstance(pending, Pending)
            await pending.done
            seen.append(("ok", pending.answer, pending.settle()))
        left = [(r.id, r.brief) for r in store.state.instances.values()]
        if left:
            store.stopped = "the disk is full"
            try:
                call({"Instance": left[0][0]})
            except (_rpc_c.RpcError, _rpc_py.RpcError) as exc:
                seen.append(("stopped", exc.code, exc.message))
            store.stopped = None
        seen.append(left)
        index = store.state._index
        seen.append(sorted(((k, v), sorted(b)) for k, by in index.items() for v, b in by.items()))
        await store.close()
        with open(path, "rb") as f:
            seen.append(f.read())
        return seen

    return asyncio.run(go())


@SETTINGS
@given(st.lists(destroy_params(), max_size=10))
def test_logical_destroy_twins_agree_with_plugin_destroy(steps: list[Any]) -> None:
    import tempfile

    from infrakit_instance.plugin import Plugin
    from infrakit_instance.provider import LogicalProvider
    from infrakit_instance.store import StoreError, UnknownInstance

    _rpc_py.use_pending(Pending)
    makers = [lambda store, twin=twin: twin.LogicalDestroy(store, StoreError, UnknownInstance) for twin in TWINS]
    # The interpreted path it replaces for the logical provider: Plugin.destroy itself.
    makers.append(lambda store: Plugin(store, LogicalProvider()).destroy)
    runs = []
    for make in makers:
        with tempfile.TemporaryDirectory() as d:
            runs.append(_destroy_run(make, f"{d}/state.json", steps))
    assert runs[0] == runs[1] == runs[2]
    destroyed = [p["Instance"] for p, o in zip(steps, runs[0], strict=False) if o[0] == "ok"]
    left = [i for i in _DESTROY_IDS if i not in destroyed]
    assert [i for i, _ in runs[0][-3]] == left
    # The tag index forgets what was destroyed.
    assert runs[0][-2] == [(("t", i), [i]) for i in left]
    for outcome in runs[0][: len(steps)]:
        if outcome[0] == "ok":
            assert outcome[1] == outcome[2] == b'{"Type":"","OK":true}'


@SETTINGS
@given(st.lists(label_params(), max_size=10))
def test_logical_label_twins_agree_with_plugin_label(steps: list[Any]) -> None:
    import tempfile

    from infrakit_instance.plugin import Plugin
    from infrakit_instance.provider import LogicalProvider
    from infrakit_instance.store import StoreError, UnknownInstance

    _rpc_py.use_pending(Pending)
    makers = [lambda store, twin=twin: twin.LogicalLabel(store, StoreError, UnknownInstance) for twin in TWINS]
    # The interpreted path it replaces for the logical provider: Plugin.label itself.
    makers.append(lambda store: Plugin(store, LogicalProvider()).label)
    runs = []
    for make in makers:
        with tempfile.TemporaryDirectory() as d:
            runs.append(_destroy_run(make, f"{d}/state.json", steps))
    assert runs[0] == runs[1] == runs[2]
    # What each label that succeeded did: its tags on the instance, in the index too.
    want = {i: {"t": i} for i in _DESTROY_IDS}
    for params, outcome in zip(steps, runs[0], strict=False):
        if outcome[0] == "ok":
            assert outcome[1] == outcome[2] == b'{"Type":"","OK":true}'
            want[params["Instance"]].update(params.get("Labels") or {})
    assert [(i, orjson.loads(b)["Tags"]) for i, b in runs[0][-3]] == list(want.items())
    assert runs[0][-2] == sorted(
        ((k, v), sorted(i for i in want if want[i].get(k) == v))
        for k, v in {(k, v) for t in want.values() for k, v in t.items()}
    )


# -- Describe: DescribeInstances over the state, whole in each twin -------------------------


@st.composite
def describe_params(draw: st.DrawFn) -> Any:
    """Describe params, mostly valid, with one part or another of any shape."""
    params: dict[str, Any] = {}
    if draw(st.booleans()):
        params["Type"] = draw(st.one_of(st.sampled_from(["", None, "aws"]), _ANY))
    if draw(st.booleans()):
        tags = st.dictionaries(
            st.sampled_from(["group", "n", "x"]), st.sampled_from(["g0", "g1", "1", "y"]), max_size=2
        )
        params["Tags"] = draw(st.one_of(tags, st.none(), _ANY) if draw(st.booleans()) else tags)
    if draw(st.booleans()):
        params["Properties"] = draw(st.one_of(st.booleans(), st.none(), _ANY))
    return params


@SETTINGS
@given(st.lists(describe_params(), min_size=1, max_size=6), st.sampled_from([0, 200, 1 << 20]))
def test_describe_twins_agree_and_answer_the_states_descriptions(steps: list[Any], big: int) -> None:
    import tempfile

    from infrakit_instance.rpc import Parts
    from infrakit_instance.state import Record
    from infrakit_instance.store import FileStore

    async def go(twin: Any, path: str) -> list[Any]:
        store = FileStore(path, fsync=False)
        await store.open()
        for n in range(4):
            iid = f"instance-{n}"
            tags = {"group": f"g{n % 2}", "n": str(n)}
            await store.provision(Record(iid, _codec_c.encode_brief(iid, None, tags), b'{"k":%d}' % n), tags)
        waited: list[Any] = []
        barrier: Any = None
        describe = twin.Describe(store, lambda b, *args: waited.append((b is barrier, *args)) or "after", big, Parts)
        seen: list[Any] = []
        for params in steps:
            try:
                answer = describe(params)
            except (_rpc_c.RpcError, _rpc_py.RpcError) as exc:
                seen.append(("error", exc.code, exc.message))
                continue
            body = answer.join() if isinstance(answer, Parts) else answer
            seen.append(("parts" if isinstance(answer, Parts) else "bytes", body))
            # What the state describes, in the envelope, for the params as checked.
            tags = params.get("Tags") or None
            descriptions = store.describe(tags, bool(params.get("Properties")))
            assert body == b'{"Type":"","Descriptions":' + descriptions + b"}"
            assert isinstance(answer, Parts) == (len(descriptions) >= big)
        # A store that must catch up first: the answer is the one made after its barrier.
        barrier = asyncio.get_running_loop().create_future()
        store.read_barrier = lambda: barrier  # type: ignore[method-assign]
        seen.append(describe({"Tags": {"group": "g1"}, "Properties": True}))
        seen.append(waited)
        await store.close()
        return seen

    runs = []
    for twin in TWINS:
        with tempfile.TemporaryDirectory() as d:
            runs.append(asyncio.run(go(twin, f"{d}/state.json")))
    assert runs[0] == runs[1]
    assert runs[0][-2:] == ["after", [(True, b'""', {"group": "g1"}, True)]]
    for params, outcome in zip(steps, runs[0], strict=False):
        kind = params.get("Type")
        if kind not in ("", None):
            assert outcome[0] == "error"
