"""State-file and answer encoding, under both implementations (the ``impl`` fixture)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

TAGS = {"infrakit.config_sha": "abc123", "infrakit.group": "workers", "role": "worker"}
SPEC = b'{"Properties":{"key":"value"},"Tags":{"role":"worker"},"Init":"","LogicalID":null,"Attachments":null}'


class Rec:
    def __init__(self, brief: bytes, spec: bytes | None) -> None:
        self.brief = brief
        self.spec = spec


# -- descriptions ----------------------------------------------------------------------


def test_encode_brief(impl: Any) -> None:
    assert impl.codec.encode_brief("instance-1", "lid-1", TAGS) == (
        b'{"ID":"instance-1","LogicalID":"lid-1","Tags":'
        b'{"infrakit.config_sha":"abc123","infrakit.group":"workers","role":"worker"}}'
    )
    assert impl.codec.encode_brief("i", None, {}) == b'{"ID":"i","LogicalID":null,"Tags":{}}'


@pytest.mark.parametrize(
    "instance_id, logical_id, tags",
    [
        ("caf\u00e9", None, {"k": "v"}),
        ('quo"te', "back\\slash", {"new\nline": "\t"}),
        ("i", "\x00\x1f\x7f", {"\u2603": "\U0001f600"}),
        ("i", None, {"n": 1, "b": True}),  # not strings: whatever orjson writes
    ],
)
def test_encode_brief_matches_orjson(impl: Any, instance_id: str, logical_id: str | None, tags: dict[str, Any]) -> None:
    got = impl.codec.encode_brief(instance_id, logical_id, tags)
    assert got == orjson.dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})
    assert json.loads(got) == {"ID": instance_id, "LogicalID": logical_id, "Tags": tags}


def test_encode_brief_refuses_what_orjson_refuses(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.codec.encode_brief("i", None, {1: "v"})
    with pytest.raises(TypeError):
        impl.codec.encode_brief("\ud800", None, {})


def test_element(impl: Any) -> None:
    brief = impl.codec.encode_brief("i", None, {"a": "b"})
    assert impl.codec.element(brief, None) is brief
    elem = impl.codec.element(brief, SPEC)
    assert elem == b'{"ID":"i","LogicalID":null,"Tags":{"a":"b"},"Properties":' + SPEC + b"}"
    assert json.loads(elem)["Properties"] == json.loads(SPEC)


def test_join_without_properties(impl: Any) -> None:
    briefs = [impl.codec.encode_brief(f"i-{n}", None, {"n": str(n)}) for n in range(3)]
    got = impl.codec.join_descriptions([Rec(b, SPEC) for b in briefs], False)
    assert got == b"[" + b",".join(briefs) + b"]"
    assert [d["ID"] for d in json.loads(got)] == ["i-0", "i-1", "i-2"]


def test_join_with_properties(impl: Any) -> None:
    a = impl.codec.encode_brief("a", "l", {})
    b = impl.codec.encode_brief("b", None, {})
    got = impl.codec.join_descriptions(iter([Rec(a, SPEC), Rec(b, None)]), True)
    assert got == b"[" + a[:-1] + b',"Properties":' + SPEC + b"}," + b[:-1] + b',"Properties":null}]'
    assert [d["Properties"] for d in json.loads(got)] == [json.loads(SPEC), None]


@pytest.mark.parametrize("properties", [True, False])
def test_join_nothing(impl: Any, properties: bool) -> None:
    assert impl.codec.join_descriptions([], properties) == b"[]"
    assert impl.codec.join_descriptions((r for r in []), properties) == b"[]"


def test_join_reports_what_a_record_lacks(impl: Any) -> None:
    with pytest.raises(AttributeError):
        impl.codec.join_descriptions([object()], True)
    with pytest.raises(TypeError):
        impl.codec.join_descriptions([Rec("not bytes", None)], False)  # type: ignore[arg-type]


def test_describe_result(impl: Any) -> None:
    assert impl.codec.describe_result(b'""', b"[]") == b'{"Type":"","Descriptions":[]}'


# -- the state file --------------------------------------------------------------------


def test_encode_document_layout(impl: Any) -> None:
    doc, offsets = impl.codec.encode_document(b'{"k":1}', [b'{"ID":"nf"}'], [b'{"ID":"a"}', b'{"ID":"b"}'])
    assert doc == (
        b'{"Provider":{"k":1},"NonFunctional":[\n{"ID":"nf"}\n],"Instances":[\n{"ID":"a"},\n{"ID":"b"}\n]}\n'
    )
    assert doc.endswith(impl.codec.TAIL) and impl.codec.TAIL == b"\n]}\n"
    assert [doc[o : o + 10] for o in offsets] == [b'{"ID":"a"}', b'{"ID":"b"}']
    assert json.loads(doc) == {
        "Provider": {"k": 1},
        "NonFunctional": [{"ID": "nf"}],
        "Instances": [{"ID": "a"}, {"ID": "b"}],
    }


def test_encode_document_empty(impl: Any) -> None:
    doc, offsets = impl.codec.encode_document(b"{}", [], [])
    assert (doc, offsets) == (b'{"Provider":{},"NonFunctional":[],"Instances":[\n]}\n', [])
    assert json.loads(doc) == {"Provider": {}, "NonFunctional": [], "Instances": []}


def test_offsets_of_many_elements(impl: Any) -> None:
    elems = [
        impl.codec.element(impl.codec.encode_brief(f"i-{n}", None, {}), SPEC if n % 2 else None) for n in range(50)
    ]
    nonfunctional = [b'{"ID":"x"}', b'{"ID":"y"}']
    doc, offsets = impl.codec.encode_document(b"{}", nonfunctional, elems)
    assert [doc[o : o + len(e)] for o, e in zip(offsets, elems, strict=True)] == elems
    assert [d["ID"] for d in json.loads(doc)["Instances"]] == [f"i-{n}" for n in range(50)]


def test_append_rewrites_only_the_tail(impl: Any) -> None:
    """The store's append: overwrite the closing bytes with ``,\\n<element>`` and the tail."""
    elems = [b'{"ID":"a"}', b'{"ID":"b"}']
    doc, _ = impl.codec.encode_document(b"{}", [], elems[:1])
    appended = doc[: -len(impl.codec.TAIL)] + b",\n" + elems[1] + impl.codec.TAIL
    assert appended == impl.codec.encode_document(b"{}", [], elems)[0]


def test_encode_document_takes_any_iterables(impl: Any) -> None:
    want = impl.codec.encode_document(b"{}", [b"1", b"2"], [b"3"])
    assert impl.codec.encode_document(b"{}", (b"1", b"2"), iter([b"3"])) == want
    assert impl.codec.encode_document(bytearray(b"{}"), [b"1", b"2"], [b"3"]) == want


@pytest.mark.parametrize("properties", [True, False])
@pytest.mark.parametrize("sizes", [[2000, 1, 1, 1], [1, 1, 1, 5000], [300] * 40])
def test_join_uneven_records(impl: Any, properties: bool, sizes: list[int]) -> None:
    """Answers whose records differ in size from the first one, from a list or a generator."""
    recs = [Rec(b'{"ID":"' + b"x" * n + b'"}', None if n % 2 else b"[%d]" % n) for n in sizes]
    for records in (recs, (r for r in recs)):
        got = impl.codec.join_descriptions(records, properties)
        assert json.loads(got) == [
            json.loads(impl.codec.element(r.brief, r.spec if r.spec else b"null") if properties else r.brief)
            for r in recs
        ]
        assert hash(got) == hash(bytes(got))


@pytest.mark.parametrize(
    "data, ok", [(b"{}", True), (b' [1, "a"] ', True), (b"", False), (b"{", False), (b"1 2", False)]
)
def test_is_json(impl: Any, data: bytes, ok: bool) -> None:
    assert impl.codec.is_json(data) is ok


def test_encode_spec(impl: Any) -> None:
    spec = {"Properties": {"n": 2**63 - 1}, "Tags": {"a": "b"}, "Init": "", "LogicalID": None, "Attachments": []}
    got = impl.codec.encode_spec(spec)
    assert type(got) is bytes and got == orjson.dumps(spec)
