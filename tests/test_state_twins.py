"""The in-memory state's twins (``_state_c``, ``_state_py``) agree.

Both take the same random sequence of appends, removals, relabels, moves to and
from the non-functional set and Describe queries, and must give the same answers,
orders, placements and errors after every step; both read the same state-file
element lines to the same state, or refuse the same files.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance import _codec_py, _state_py
from infrakit_instance.store.file import _CLOSE, _strip_trailer

pytestmark = pytest.mark.compiled
_state_c = impls.compiled_modules()[impls.MODULES.index("_state")]
TWINS = (_state_c, _state_py)

# Plain tags, as InfraKit sets them, and tags whose text in a brief has escapes, non-ASCII
# bytes or brief-like punctuation; twelve names in all, so that the index sometimes has more
# than the eight names the compiled twin matches by their bytes before it hashes one.
_NAMES = ["group", "role", "zone", "infrakit.group", "", "ü", 'q"', "b\\s", ',"Tags":{', "}", "n:1", "x\n"]
TAGS = st.one_of(
    st.dictionaries(st.sampled_from(["group", "role", "zone"]), st.sampled_from(["a", "b", "c"]), max_size=3),
    st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(["a", "", "é", '"', "\\", '"}', ",", "a b"]), max_size=4),
)

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), TAGS, st.booleans()),
        st.tuples(st.just("remove"), st.integers(0, 100), st.booleans()),
        st.tuples(st.just("relabel"), st.integers(0, 100), TAGS),
        st.tuples(st.just("to_nonfunctional"), st.integers(0, 100), st.booleans()),
        st.tuples(st.just("restore_front"), st.integers(0, 100), st.booleans()),
        st.tuples(st.just("drop_nonfunctional"), st.integers(0, 100), st.booleans()),
        st.tuples(st.just("describe"), TAGS, st.booleans()),
        st.tuples(st.just("unknown"), st.integers(0, 100), st.booleans()),
    ),
    min_size=1,
    max_size=50,
)


def _buckets(state: Any) -> list[Any]:
    """The tag index's buckets, each with its (key, value): no empty one is ever kept."""
    found = [((k, v), bucket) for k, by_value in state._index.items() for v, bucket in by_value.items()]
    assert all(found_bucket for _, found_bucket in found)
    assert all(state._index.values())
    return found


def _pairs(state: Any) -> list[Any]:
    return sorted(pair for pair, _ in _buckets(state))


def _index_is_the_briefs(state: Any) -> None:
    """The tag index holds every active instance (its current record) under each of its
    tags, as its brief says, and nothing else."""
    want: dict[tuple[str, str], set[str]] = {}
    for rec in state.instances.values():
        for pair in orjson.loads(rec.brief)["Tags"].items():
            want.setdefault(pair, set()).add(rec.id)
    assert {pair: set(bucket) for pair, bucket in _buckets(state)} == want
    assert all(r is state.instances[i] for _, bucket in _buckets(state) for i, r in bucket.items())


def _snapshot(state: Any) -> Any:
    def recs(d: dict[str, Any]) -> list[Any]:
        return [(k, r.id, r.brief, r.spec, r.pos, r.off, r.size) for k, r in d.items()]

    return (
        recs(state.instances),
        recs(state.nonfunctional),
        state.provider,
        len(state),
        state.placed_size(2),
        {pair: [r.id for r in state.select(dict([pair]))] for pair in _pairs(state)},
        sorted((pair, sorted(b)) for pair, b in _buckets(state)),
        state.document(),
        state.document(3),
    )


def _run(twin: Any, ops: list[tuple[str, Any, Any]]) -> list[Any]:
    return _run_into(twin, twin.State(), ops)


def _run_into(twin: Any, state: Any, ops: list[tuple[str, Any, Any]]) -> list[Any]:
    seen: list[Any] = []
    made = 0
    for kind, arg, flag in ops:
        live, gone = list(state.instances), list(state.nonfunctional)
        try:
            if kind == "append":
                iid = f"instance-{made}"
                made += 1
                spec = orjson.dumps({"n": made}) if flag else None
                rec = twin.Record(iid, _codec_py.encode_brief(iid, None if made % 2 else "10.0.0.1", arg), spec)
                rec.off, rec.size = 100 + made, 7
                assert not state.known(iid)
                state.append(rec, arg)
                seen.append(state.known(iid))
            elif kind == "remove" and live:
                seen.append(state.remove(live[arg % len(live)]).id)
            elif kind == "relabel" and live:
                rec = state.get(live[arg % len(live)])
                new = state.relabel(rec, flag)
                seen.append((new.id, new.brief, new.tags, new.pos, new.off, new.size))
            elif kind == "to_nonfunctional" and live:
                seen.append(state.to_nonfunctional(live[arg % len(live)]).id)
            elif kind == "restore_front" and gone:
                rec = state.restore_front(gone[arg % len(gone)])
                seen.append((rec.id, rec.pos))
            elif kind == "drop_nonfunctional" and gone:
                seen.append(state.drop_nonfunctional(gone[arg % len(gone)]).id)
            elif kind == "describe":
                seen.append(state.describe(arg, flag))
                seen.append(state.describe(arg, flag))  # the cached answer is the same
            elif kind == "unknown":
                seen.append((state.get(f"nope-{arg}"), state.known(f"nope-{arg}"), f"nope-{arg}" in state))
                state.remove(f"nope-{arg}")
        except KeyError as exc:
            seen.append(("KeyError", exc.args))
        _index_is_the_briefs(state)
        seen.append(_snapshot(state))
    return seen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_both_twins_make_the_same_states(ops: list[tuple[str, Any, Any]]) -> None:
    assert _run(_state_c, ops) == _run(_state_py, ops)


def test_records_behave_alike() -> None:
    for twin in TWINS:
        brief = _codec_py.encode_brief("i-1", "lid", {"a": "b"})
        rec = twin.Record("i-1", brief, b'{"x":1}')
        assert (rec.id, rec.brief, rec.spec, rec.pos, rec.off, rec.size) == ("i-1", brief, b'{"x":1}', 0, -1, 0)
        assert rec.tags == {"a": "b"}
        for lid in (None, "lid", 'l"d', "é"):
            for tags in ({}, {"a": "b", "c": ""}, {'k"': "v\\", "ü": "ñ"}, {',"Tags":{': "}"}):
                other = _codec_py.encode_brief('i"1', lid, tags)
                assert list(twin.Record("i", other, None).tags.items()) == list(tags.items())
        assert rec.description() == {"ID": "i-1", "LogicalID": "lid", "Tags": {"a": "b"}, "Properties": {"x": 1}}
        made, tags = twin.Record.from_description(rec.description(), "Instances[0]")
        assert (made.id, made.brief, made.spec, tags) == ("i-1", brief, b'{"x":1}', {"a": "b"})
        for bad, message in (
            ([], "Instances[0] is not an object"),
            ({"ID": 5}, "Instances[0] has no string ID"),
            ({"ID": "x", "LogicalID": 3}, "LogicalID must be a string or null"),
            ({"ID": "x", "Tags": {"a": 1}}, "Tags must be an object of strings"),
        ):
            with pytest.raises(_state_py.StateError, match=re.escape(message)):
                twin.Record.from_description(bad, "Instances[0]")


def test_documents_are_read_alike() -> None:
    doc = {
        "Provider": {"k": [1, 2]},
        "Instances": [{"ID": "a", "Tags": {"g": "1"}}, {"ID": "b", "LogicalID": "l", "Properties": None}],
        "NonFunctional": [{"ID": "c", "Tags": {}}],
    }
    states = [twin.State.from_document(doc) for twin in TWINS]
    assert _snapshot(states[0]) == _snapshot(states[1])
    for twin in TWINS:
        with pytest.raises(_state_py.StateError, match="appears twice"):
            twin.State.from_document({"Instances": [{"ID": "a"}], "NonFunctional": [{"ID": "a"}]})
        with pytest.raises(_state_py.StateError, match='"Instances" is not an array'):
            twin.State.from_document({"Instances": {}})


def test_the_describe_cache_limit_is_each_twins_own_and_bounds_it() -> None:
    for twin in TWINS:
        old = twin.set_cache_bytes(100)
        try:
            cache = twin._AnswerCache()
            cache["a"] = b"x" * 60
            cache["b"] = b"y" * 60  # over the limit: a, the least recently used, goes
            assert cache.get("a") is None and cache.get("b") is not None and cache.size == 60
            cache["big"] = b"z" * 101
            assert cache.get("big") is None
            assert twin.set_cache_bytes(old) == 100
        finally:
            twin.set_cache_bytes(old)


def _element_lines(n: int) -> list[bytes]:
    """The lines of a state file of our layout with ``n`` instances, labels' room and a trailer."""
    lines = [b'{"Provider":{},"NonFunctional":[],"Instances":[\n']
    for i in range(n):
        elem = _codec_py.element(_codec_py.encode_brief(f"i-{i}", None, {"g": str(i % 2)}), None)
        lines.append(elem + b"    " + (b",\n" if i < n - 1 else b"\n"))
    lines.append(_CLOSE)
    return lines


@pytest.mark.parametrize(
    ("mutate", "readable"),
    [
        (lambda lines: lines, True),
        (lambda lines: [*lines, b" " * 40], True),  # padding after the document
        (lambda lines: lines[:-1], False),  # no close
        (lambda lines: [*lines, b" x\n"], False),  # something else after it
        (lambda lines: [lines[0], lines[1], lines[1], *lines[2:]], False),  # an ID twice
        (lambda lines: [lines[0], lines[1][:-2] + b"\n", *lines[2:]], False),  # a comma missing
        (lambda lines: [lines[0], b"{not json\n", *lines[2:]], False),
    ],
)
def test_element_lines_are_read_alike(mutate: Any, readable: bool) -> None:
    good = _element_lines(5)
    lines = mutate(good)
    head, rest = lines[0], lines[1:]
    results = []
    for twin in TWINS:
        state = twin.State()
        end = twin.read_elements(iter(rest), state, len(head), _strip_trailer, _CLOSE)
        results.append((end, _snapshot(state) if end >= 0 else None))
    assert results[0] == results[1]
    if readable:
        assert results[0][0] == sum(map(len, good))  # the document ends where its close does
        assert [r[0] for r in results[0][1][0]] == [f"i-{i}" for i in range(5)]
    else:
        assert results[0][0] == -1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(0, 40))
def test_a_placed_document_is_the_document_closed_and_places_every_element(ops: list[Any], slack: int) -> None:
    """``placed_document`` (what a rewrite writes) is ``document(slack)`` with its closing
    bytes replaced, the same in both twins, and each record's ``off``/``size`` then name
    its element and its slack in it."""

    def close(n: int) -> bytes:
        return b"<%d>" % n

    made = []
    for twin in TWINS:
        state = twin.State()
        state.provider = b'{"p":1}'
        _run_into(twin, state, ops)
        doc, offsets = state.document(slack)
        placed = state.placed_document(slack, close)
        body = len(doc) - len(_codec_py.TAIL)
        assert placed == doc[:body] + close(body)
        for rec, off in zip(state.instances.values(), offsets, strict=True):
            assert (rec.off, rec.size) == (off, len(rec.element()) + slack)
            assert placed[rec.off : rec.off + rec.size] == rec.element() + b" " * slack
        made.append((placed, [(r.off, r.size) for r in state.instances.values()]))
    assert made[0] == made[1]


def test_a_placed_document_takes_a_spec_that_is_not_bytes() -> None:
    """A record whose Spec is a bytes-like object other than ``bytes`` is placed as
    ``document()`` writes it (the compiled twin then goes the pure twin's way)."""
    for twin in TWINS:
        state = twin.State()
        for n, spec in enumerate((b'{"a":1}', bytearray(b'{"b":2}'), None)):
            iid = f"i-{n}"
            state.append(twin.Record(iid, _codec_py.encode_brief(iid, None, {"g": "x"}), spec), {"g": "x"})
        doc, offsets = state.document(2)
        placed = state.placed_document(2, lambda n: b"]}")
        assert placed == doc[: len(doc) - len(_codec_py.TAIL)] + b"]}"
        assert [(r.off, r.size) for r in state.instances.values()] == [
            (off, len(r.element()) + 2) for r, off in zip(state.instances.values(), offsets, strict=True)
        ]
