"""A Provision read from its text (``_rpc_c.scan_provision``) answers as one read by orjson.

The compiled dispatcher takes a plain Provision for the logical provider without building
its JSON objects: the Spec's text is kept as sent and the brief description is spliced from
the request's own text. Every body here goes through the dispatcher as the plugin runs it
(which scans it) and with that path switched off (orjson reads it, as the pure twin always
does), each over its own store with the same random source; the answers, the records, the
tag index and the state files must be the same.
Bodies orjson would write the same way must be taken by the scan (so the test is not
vacuous); anything else must be declined, never misread.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance.rpc import Dispatcher, Pending
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore, StoreError

pytestmark = pytest.mark.compiled
_http_c, _rpc_c, _codec_c, _conn_c, _batch_c, _state_c = impls.compiled_modules()

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that orjson writes as it is, and text it writes another way than a client may.
_PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=5)
_ANY_TEXT = st.text(st.sampled_from(list('ab"\\/\n\t\x01\x7fé\u2028 ')), max_size=5)
_TEXT = st.one_of(_PLAIN, _ANY_TEXT)
_NUMBER = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _NUMBER, _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)


# What the scan reads: ASCII text with the escapes orjson writes, integers of 64 bits.
_READABLE_TEXT = st.text(st.sampled_from(list('ab/{}[]:, "\\\n\t\r\x08\x0c')), max_size=5)
_READABLE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**18) + 1, 10**19 - 1), _READABLE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_READABLE_TEXT, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def provision_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A Provision request, and whether its text is what orjson writes of it (so the scan must take it)."""
    canonical = True
    readable = draw(st.booleans())  # half of them made of what the scan reads, the rest of anything
    text, value = (_READABLE_TEXT, _READABLE) if readable else (_TEXT, _JSON)
    spec: dict[str, Any] = {}
    for key in draw(st.permutations(["Tags", "LogicalID", "Init", "Attachments", "Properties", "Other"])):
        if not draw(st.integers(0, 3)):
            continue
        if key == "Tags":
            spec[key] = draw(
                st.one_of(st.none(), st.dictionaries(_PLAIN, _PLAIN, max_size=4))
                if readable
                else st.one_of(
                    st.none(), st.dictionaries(_TEXT, _TEXT, max_size=4), st.dictionaries(_PLAIN, _JSON, max_size=2)
                )
            )
        elif key in ("LogicalID", "Init"):
            spec[key] = draw(st.one_of(st.none(), text) if readable else st.one_of(st.none(), _TEXT, _JSON))
        elif key == "Attachments":
            spec[key] = draw(
                st.one_of(st.none(), st.lists(st.dictionaries(_PLAIN, value, max_size=2), max_size=2))
                if readable
                else st.one_of(st.none(), st.lists(st.dictionaries(_PLAIN, _JSON, max_size=2), max_size=2), _JSON)
            )
        else:
            spec[key] = draw(value)
    params: dict[str, Any] = {"Spec": spec}
    kind = draw(st.integers(0, 2 if readable else 4))
    if kind == 1:
        params["Type"] = ""
    elif kind == 2:
        params["Type"] = None
    elif kind == 3:
        params["Type"] = draw(st.sampled_from(["aws", 3]))
    if not readable and not draw(st.integers(0, 9)):
        params["Other"] = 1
    members = {
        "jsonrpc": "2.0",
        "method": "Instance.Provision",
        "params": params,
        "id": draw(
            st.one_of(st.integers(-(10**18) + 1, 10**19 - 1), _PLAIN)
            if readable
            else st.one_of(st.integers(0, 2**64 - 1), st.integers(-(2**63), 0), _TEXT, st.none(), st.just(1.5))
        ),
    }
    order = draw(st.permutations(list(members)))
    body = orjson.dumps({k: members[k] for k in order})
    how = draw(st.integers(0, 19))
    if how == 1:
        body = json.dumps(json.loads(body), separators=(",", ":")).encode()  # \u escapes for non-ASCII
        canonical = False
    elif how == 2:
        body = json.dumps(json.loads(body)).encode()  # spaces
        canonical = False
    elif how == 3:
        body = body.replace(b'"Spec":{', b'"Spec":{"dup":1,"dup":2,', 1)
        canonical = False
    elif how == 4:
        body += b"\n"  # trailing whitespace is outside the request's text
    elif how == 5:
        body = body.replace(b"/", b"\\/")
        canonical = False
    return body, canonical


class _Methods(dict):  # type: ignore[type-arg]
    """A method table the dispatcher reads only the usual way (its text path wants a plain dict)."""


def _dispatch(body: bytes, seed: int, scan: bool) -> list[Any]:
    """``body`` answered by the dispatcher with the logical provider's Provision over a store of
    its own; with ``scan``, as the plugin runs it, else with the text path switched off."""

    async def go(path: str) -> list[Any]:
        store = FileStore(path, fsync=False)
        await store.open()
        provision = _rpc_c.LogicalProvision(store, random.Random(seed), set(), StoreError, Record)
        table = {"Instance.Provision": provision}
        answer = Dispatcher(table if scan else _Methods(table)).handle(body)
        seen: list[Any] = []
        if isinstance(answer, Pending):
            await answer.done
            seen.append(("pending", answer.answer, answer.id_json, answer.method, answer.settle()))
        else:
            seen.append(("answer", answer))
        state = store.state
        seen.append([(r.id, r.brief, r.spec) for r in state.instances.values()])
        seen.append(
            sorted(((k, v), [r.id for r in b.values()]) for k, by in state._index.items() for v, b in by.items())
        )
        await store.close()
        with open(path, "rb") as f:
            seen.append(f.read())
        return seen

    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(go(f"{d}/state.json"))


def _compare(body: bytes) -> list[Any]:
    seen = _dispatch(body, 11, True)
    assert seen == _dispatch(body, 11, False), body
    return seen


@SETTINGS
@given(provision_bodies())
def test_a_provision_read_from_its_text_answers_as_one_read_by_orjson(made: tuple[bytes, bool]) -> None:
    body, canonical = made
    scan = _rpc_c.scan_provision(body)
    seen = _compare(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert scan is None and seen[0][0] == "answer"
        return
    params, ident = doc["params"], doc["id"]
    spec = params["Spec"]
    tags = spec.get("Tags")
    plain_parts = (
        canonical
        and "Other" not in params
        and params.get("Type") in ("", None)
        and isinstance(ident, (int, str))
        and not isinstance(ident, bool)
        and (not isinstance(ident, str) or "\\" not in json.dumps(ident))
        and (tags is None or (isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())))
        and (tags is None or "\\" not in orjson.dumps(tags).decode())
        and isinstance(spec.get("LogicalID"), (str, type(None)))
        and isinstance(spec.get("Init"), (str, type(None)))
        and (
            spec.get("Attachments") is None
            or (isinstance(spec["Attachments"], list) and all(isinstance(a, dict) for a in spec["Attachments"]))
        )
    )
    text = body.rstrip(b"\n")
    # orjson writes it so, and the scan reads such text: no floats, 64-bit integers of at most
    # 19 digits (18 negative), ASCII without \u escapes
    numbers = _numbers(doc)
    readable = (
        all(isinstance(v, int) and -(10**18) < v < 10**19 for v in numbers)
        and b"\\u" not in text
        and not any(c >= 0x7F for c in text)
    )
    if plain_parts and readable:
        assert orjson.dumps(doc) == text
        assert scan is not None, body  # the scan takes what it can read
    if scan is None:
        return
    assert seen[0][0] == "pending"
    id_json, tags_read, lid_json, tags_json, spec_text = scan
    assert id_json == orjson.dumps(ident)
    assert tags_read == (tags or {})
    assert lid_json == orjson.dumps(spec.get("LogicalID"))
    assert tags_json == orjson.dumps(tags or {})
    assert spec_text == orjson.dumps(spec)


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [n for v in value.values() for n in _numbers(v)]


@pytest.mark.parametrize(
    "body",
    [
        # taken
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":1}',
        b'{"id":"x","params":{"Type":"","Spec":{"Tags":{"a":"b"},"LogicalID":"10.0.0.1","Init":"#!/bin/sh\\n"}},'
        b'"method":"Instance.Provision","jsonrpc":"2.0"}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Properties":{"n":9223372036854775807}}},'
        b'"id":9999999999999999999}',
        # declined, answered the usual way
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"n":1.50}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"n":-0}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"n":01}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"s":"\\u0041"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Tags":{"a":"\\n"}}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Tags":{"a":1}}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Tags":{"a":"b","a":"c"}}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"LogicalID":5}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Attachments":[1]}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"aws","Spec":{}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":[]},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":null}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}}}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":1,"id":2}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":1} x',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":1',
        b'{"jsonrpc":"2.0", "method":"Instance.Provision","params":{"Spec":{}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"x":'
        + b"[" * 40
        + b"]" * 40
        + b'}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"x":"\xff"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{'
        + b",".join(b'"k%d":1' % i for i in range(30))
        + b'}},"id":1}',
    ],
)
def test_provision_texts_taken_and_declined(body: bytes) -> None:
    seen = _compare(body)
    taken = _rpc_c.scan_provision(body) is not None
    assert taken == (body in _TAKEN), body
    if taken:
        assert seen[0][0] == "pending"


_TAKEN = {
    b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{}},"id":1}',
    b'{"id":"x","params":{"Type":"","Spec":{"Tags":{"a":"b"},"LogicalID":"10.0.0.1","Init":"#!/bin/sh\\n"}},'
    b'"method":"Instance.Provision","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Properties":{"n":9223372036854775807}}},'
    b'"id":9999999999999999999}',
}


def test_a_taken_provision_is_recorded_from_its_own_text() -> None:
    body = (
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"","Spec":{"Tags":{"g":"w","r":"x"},'
        b'"LogicalID":null,"Properties":{"n":42,"s":"a\\"b"}}},"id":7}'
    )
    assert _rpc_c.scan_provision(body) == (
        b"7",
        {"g": "w", "r": "x"},
        b"null",
        b'{"g":"w","r":"x"}',
        b'{"Tags":{"g":"w","r":"x"},"LogicalID":null,"Properties":{"n":42,"s":"a\\"b"}}',
    )
    seen = _compare(body)
    kind, answer, id_json, method, settled = seen[0]
    iid = orjson.loads(answer)["result"]["ID"]
    assert (kind, id_json, method, settled) == ("pending", b"7", "Instance.Provision", answer)
    assert seen[1] == [
        (
            iid,
            b'{"ID":"' + iid.encode() + b'","LogicalID":null,"Tags":{"g":"w","r":"x"}}',
            b'{"Tags":{"g":"w","r":"x"},"LogicalID":null,"Properties":{"n":42,"s":"a\\"b"}}',
        )
    ]
    assert seen[2] == [(("g", "w"), [iid]), (("r", "x"), [iid])]


@pytest.mark.parametrize("name", ["new-Instance.Provision.txt", "old-Instance.Provision.txt"])
def test_the_go_clients_provision_is_read_from_its_text(name: str) -> None:
    # The exact bytes InfraKit's Go clients send: the shape the scan is for.
    from pathlib import Path

    text = (Path(__file__).parent / "wire" / name).read_text()
    request = text.split("### reference")[0]
    body = request.split("\n\n", 1)[1].strip().encode()
    scan = _rpc_c.scan_provision(body)
    assert scan is not None
    doc = orjson.loads(body)
    assert scan[0] == str(doc["id"]).encode()
    assert scan[4] == orjson.dumps(doc["params"]["Spec"])
    assert _compare(body)[0][0] == "pending"


def test_tags_read_through_the_scans_text_cache_are_the_tags_sent() -> None:
    # The scan keeps recent tag texts by a hash of 256 slots: thousands of distinct texts of
    # the same lengths must collide there, and each must still come back as sent (and as the
    # same str when read again), whatever was read between; texts past 64 bytes bypass it.
    rng = random.Random(13)
    texts = [f"{i:04d}" for i in range(3000)] + ["v" * 64, "w" * 65, "x" * 200, ""]
    rng.shuffle(texts)
    for round_ in range(2):
        for i, text in enumerate(texts):
            other = texts[(i * 7 + round_) % len(texts)]
            body = (
                b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Tags":{"'
                + text.encode()
                + b'":"'
                + other.encode()
                + b'","k":"'
                + text.encode()
                + b'"}}},"id":1}'
            )
            scan = _rpc_c.scan_provision(body)
            assert scan is not None
            expected = orjson.loads(body)["params"]["Spec"]["Tags"]
            assert scan[1] == expected, body
            assert list(scan[1]) == list(expected)
