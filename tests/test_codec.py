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


# -- JSON validation (the compiled twin has its own validator; it must answer as orjson) ---

# The largest double plus half an ulp: from here up a number rounds to infinity.
_HALFWAY = str(2**1024 - 2**970).encode()

_JSON_CASES = [
    # RFC 8259 values, whitespace around them
    (b"0", True),
    (b"-0", True),
    (b"-0.0e-0", True),
    (b"1E+2", True),
    (b"1e01", True),
    (b"12.5e-3", True),
    (b' \t\r\n"s" \n', True),
    (b"true", True),
    (b"false", True),
    (b"null", True),
    (b'{"a":[1,{"b":null}],"c":"d"}', True),
    (b'{ "a" : 1 , "b" : [ ] }', True),
    (b'{"a":1,"a":2}', True),  # repeated names are JSON
    (b"", False),
    (b" ", False),
    (b"\x0c1", False),  # form feed is not JSON whitespace
    (b"\xef\xbb\xbf1", False),  # no byte order mark
    (b"1\x00", False),
    (b"[1,]", False),
    (b'{"a":1,}', False),
    (b"[,1]", False),
    (b"{,}", False),
    (b'{"a" 1}', False),
    (b"{1:1}", False),
    (b"[1 2]", False),
    (b"[1]]", False),
    (b"tru", False),
    (b"True", False),
    (b"NaN", False),
    (b"Infinity", False),
    (b"-Infinity", False),
    # numbers
    (b"01", False),
    (b"-01", False),
    (b"00", False),
    (b"1.", False),
    (b".5", False),
    (b"-", False),
    (b"+1", False),
    (b"1e", False),
    (b"1.5e+", False),
    (b"0x10", False),
    (b"18446744073709551616", True),  # beyond 64 bits: a double
    (b"1e-400", True),  # underflows to zero: accepted
    (b"0e99999999999999999999", True),
    (b"1e99999999999999999999", False),  # infinite as a double: refused
    (b"1e400", False),
    (b"-1e400", False),
    (b"1" * 400, False),
    (b"1" * 308, True),
    (b"1.7976931348623157e308", True),
    (b"1.7976931348623158e308", True),  # rounds down to the largest double
    (b"1.7976931348623159e308", False),
    (_HALFWAY[:-1] + b"1", True),
    (_HALFWAY, False),  # a tie rounds to even: infinity
    (b"-" + _HALFWAY, False),
    (b"0.000000000000000000000000000000000000000000000001e350", True),
    (b"100000000000000000000000000000000000000e300", False),
    # strings
    (b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', True),
    (b'"\\u0000\\u00e9\\uFFFF"', True),
    (b'"\\ud83d\\ude00"', True),
    (b'"\\uD83D\\uDE00"', True),
    (b'"\\ud800"', False),  # a high surrogate alone
    (b'"\\udc00"', False),  # a low surrogate alone
    (b'"\\ud800\\ud800"', False),
    (b'"\\ud800\\u0041"', False),
    (b'"\\ud800x"', False),
    (b'"\\u00"', False),
    (b'"\\U0041"', False),
    (b'"\\x"', False),
    (b'"\\', False),
    (b'"abc', False),
    (b'"\x00"', False),  # raw control characters
    (b'"\x1f"', False),
    (b'"\x7f"', True),
    (b'"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbe \xf4\x8f\xbf\xbf"', True),
    (b'"\xff"', False),  # not UTF-8
    (b'"\x80"', False),
    (b'"\xc0\x80"', False),  # overlong
    (b'"\xe0\x80\x80"', False),
    (b'"\xf0\x8f\xbf\xbf"', False),
    (b'"\xed\xa0\x80"', False),  # a surrogate in UTF-8
    (b'"\xf4\x90\x80\x80"', False),  # past U+10FFFF
    (b'"\xc2"', False),  # cut short
    (b'"\xe2\x82"', False),
    (b"\xc3\xa9", False),
    # depth: orjson allows 1024 open arrays and objects
    (b"[" * 1024 + b"]" * 1024, True),
    (b"[" * 1025 + b"]" * 1025, False),
    (b"[" * 1024 + b"{}" + b"]" * 1024, False),
    (b'{"a":' * 1024 + b"1" + b"}" * 1024, True),
    (b'{"a":' * 1025 + b"1" + b"}" * 1025, False),
    (b"[" * 5000, False),
]


@pytest.mark.parametrize("data, ok", _JSON_CASES, ids=[repr(d[:24]) for d, _ in _JSON_CASES])
def test_is_json_agrees_with_orjson(impl: Any, data: bytes, ok: bool) -> None:
    try:
        orjson.loads(data)
        parsed = True
    except orjson.JSONDecodeError:
        parsed = False
    assert parsed is ok  # the expectation is orjson's answer
    assert impl.codec.is_json(data) is ok


@pytest.mark.parametrize("data", [bytearray(b"[1]"), memoryview(b"[1]"), "[1]", '"\ud800"', b"[1"[:2], 5, None])
def test_is_json_other_inputs(impl: Any, data: Any) -> None:
    """Anything but ``bytes`` is for orjson to judge, in both twins."""
    try:
        orjson.loads(data)
        want = True
    except orjson.JSONDecodeError:
        want = False
    assert impl.codec.is_json(data) is want


# -- reading state-file lines ----------------------------------------------------------

BRIEF = b'{"ID":"instance-1","LogicalID":null,"Tags":{"infrakit.group":"workers","role":"worker"}}'
ELEMENT = BRIEF[:-1] + b',"Properties":' + SPEC + b"}"
WORKER_TAGS = {"infrakit.group": "workers", "role": "worker"}


@pytest.mark.parametrize(
    "line, comma",
    [
        (ELEMENT + b",\n", True),
        (ELEMENT + b"\n", False),
        (ELEMENT, False),
        (ELEMENT + b"   ,\n", True),  # relabelled shorter in place: spaces before the comma
        (ELEMENT + b"  \n", False),
        (ELEMENT + b" , \n\n", True),
    ],
)
def test_parse_element(impl: Any, line: bytes, comma: bool) -> None:
    got = impl.codec.parse_element(line)
    assert got == (comma, len(ELEMENT), "instance-1", WORKER_TAGS, BRIEF, SPEC)
    assert [type(x) for x in got] == [bool, int, str, dict, bytes, bytes]
    # Everything a record needs to be written back the same.
    assert impl.codec.element(got[4], got[5]) == ELEMENT


def test_parse_element_without_properties(impl: Any) -> None:
    """Elements of C-plugin files (and hand-made ones) may have no Properties."""
    assert impl.codec.parse_element(BRIEF + b",\n") == (True, len(BRIEF), "instance-1", WORKER_TAGS, BRIEF, None)
    brief = b'{"ID":"i","LogicalID":"lid","Tags":{}}'
    assert impl.codec.parse_element(brief) == (False, len(brief), "i", {}, brief, None)


@pytest.mark.parametrize(
    "line, comma",
    [(b"", False), (b"\n", False), (b"      \n", False), (b"    ", False), (b"      ,\n", True), (b",", True)],
)
def test_parse_blank_lines(impl: Any, line: bytes, comma: bool) -> None:
    """What a removal leaves: spaces, and the comma of the next element if it had one after it."""
    assert impl.codec.parse_element(line) == (comma, 0, None, None, None, None)


@pytest.mark.parametrize(
    "brief, instance_id, tags",
    [
        # Written by someone else, still a description of ours: orjson reads it.
        (b'{ "ID" : "a" , "LogicalID" : null , "Tags" : { "k" : "v" } }', "a", {"k": "v"}),
        (b'{"Tags":{"k":"v"},"LogicalID":"l","ID":"a"}', "a", {"k": "v"}),
        (b'{"ID":"caf\xc3\xa9","LogicalID":null,"Tags":{"\\u2603":"\\n"}}', "caf\u00e9", {"\u2603": "\n"}),
        (b'{"ID":"a\\"b","LogicalID":null,"Tags":{"k":"a\\\\b"}}', 'a"b', {"k": "a\\b"}),
        (b'{"ID":"a","LogicalID":null,"Tags":{"k":"1","k":"2","j":"3"}}', "a", {"k": "2", "j": "3"}),
        (
            b'{"ID":"a","LogicalID":null,"Tags":{"' + b"k" * 100 + b'":"' + b"v" * 100 + b'"}}',
            "a",
            {"k" * 100: "v" * 100},
        ),
        (b'{"ID":"a","LogicalID":null,"Tags":{"Properties":"x"}}', "a", {"Properties": "x"}),
        (b'{"ID":"a","LogicalID":null,"Tags":{}}\t', "a", {}),
    ],
)
def test_parse_element_any_writer(impl: Any, brief: bytes, instance_id: str, tags: dict[str, str]) -> None:
    got = impl.codec.parse_element(brief + b",\n")
    assert got == (True, len(brief), instance_id, tags, brief, None)
    assert list(got[3].items()) == list(tags.items())  # orjson's order for repeated names
    if brief.endswith(b"}"):
        line = brief[:-1] + b',"Properties":{"x":[1]}}'
        assert impl.codec.parse_element(line) == (False, len(line), instance_id, tags, brief, b'{"x":[1]}')


@pytest.mark.parametrize(
    "line",
    [
        b" " + ELEMENT + b",\n",  # not at the start of its line
        b"]}\n",
        b"garbage\n",
        b"{}\n",
        b"null\n",
        b'["ID"]\n',
        BRIEF[:-1],  # cut short
        ELEMENT[:-1] + b",\n",
        ELEMENT[:-2] + b"}\n",  # the Spec is cut short
        BRIEF[:-1] + b',"Properties":}',
        BRIEF[:-1] + b',"Properties":1e400}',  # a Spec orjson refuses
        BRIEF[:-1] + b',"Properties":{"a":1}}\r\n',
        BRIEF[:-1] + b',"Properties":{"a":1}}x',
        b'{"ID":"a","LogicalID":null}',
        b'{"ID":"a","Tags":{}}',
        b'{"ID":"a","LogicalID":null,"Tags":{},"X":1}',
        b'{"ID":"","LogicalID":null,"Tags":{}}',
        b'{"ID":1,"LogicalID":null,"Tags":{}}',
        b'{"ID":null,"LogicalID":null,"Tags":{}}',
        b'{"ID":"a","LogicalID":1,"Tags":{}}',
        b'{"ID":"a","LogicalID":null,"Tags":[]}',
        b'{"ID":"a","LogicalID":null,"Tags":null}',
        b'{"ID":"a","LogicalID":null,"Tags":{"k":1}}',
        b'{"ID":"a","LogicalID":null,"Tags":{"k":null}}',
        b'{"ID":"a","LogicalID":null,"Tags":{"k":"v","Properties":"x"},"Properties":1e400}',  # no split works
        b'{"ID":"a","LogicalID":null,"Tags":{"k":"\xff"}}',
        b'{"ID":"a","LogicalID":null,"Tags":{"k":"\\ud800"}}',
        b'{"ID":"a","LogicalID":null,"Tags":{}}}',
        b'{"ID":"a","LogicalID":null,"Tags":{}',
    ],
)
def test_parse_element_refuses(impl: Any, line: bytes) -> None:
    assert impl.codec.parse_element(line) is None


@pytest.mark.parametrize("line", [bytearray(ELEMENT), memoryview(ELEMENT), ELEMENT.decode(), None, 1])
def test_parse_element_needs_bytes(impl: Any, line: Any) -> None:
    with pytest.raises(TypeError, match="parse_element\\(\\) needs bytes"):
        impl.codec.parse_element(line)


def test_parse_a_written_layout(impl: Any) -> None:
    """Every line of a document the codec writes, back to what was written."""
    elems = [
        impl.codec.element(
            impl.codec.encode_brief(f"i-{n}", None if n % 3 else f"l-{n}", {"g": f"g{n % 4}"}), SPEC if n % 2 else None
        )
        for n in range(20)
    ]
    doc, offsets = impl.codec.encode_document(b"{}", [], elems)
    lines = doc.splitlines(keepends=True)
    assert lines[0].endswith(b'"Instances":[\n') and lines[-1] == b"]}\n"
    got = [impl.codec.parse_element(line) for line in lines[1:-1]]
    assert [g[0] for g in got] == [True] * 19 + [False]
    assert [doc[o : o + g[1]] for o, g in zip(offsets, got, strict=True)] == elems
    assert [impl.codec.element(g[4], g[5]) for g in got] == elems
    assert [g[3] for g in got] == [{"g": f"g{n % 4}"} for n in range(20)]


def test_parse_element_with_a_tag_named_properties(impl: Any) -> None:
    # Without a Spec: the only ,"Properties": is the tag's, and the whole line is the brief.
    bare = b'{"ID":"a","LogicalID":null,"Tags":{"k":"v","Properties":"x"}}'
    assert impl.codec.parse_element(bare) == (False, len(bare), "a", {"k": "v", "Properties": "x"}, bare, None)
    # The bytes ,"Properties": then occur inside the brief too; the split is at the element's own key.
    tags = {"a": "b", "Properties": "x", "q": 'said "hi",\n"Properties":1'}
    spec = {"Properties": {"a": 1, "Properties": [',"Properties":']}}
    brief = impl.codec.encode_brief("i-1", None, tags)
    line = impl.codec.element(brief, impl.codec.encode_spec(spec)) + b" " * 5 + b",\n"
    comma, size, instance_id, got_tags, got_brief, got_spec = impl.codec.parse_element(line)
    assert (comma, instance_id, got_tags, got_brief) == (True, "i-1", tags, brief)
    assert json.loads(got_spec) == spec
