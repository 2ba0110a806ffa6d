"""A Destroy read from its text (``_rpc_c.scan_destroy``) answers as one read by orjson.

The compiled dispatcher takes a plain Destroy for the logical provider without building its
JSON objects: the request's id and instance ID are read from its text. Every body here goes
through the dispatcher as the plugin runs it (which scans it) and with that path switched off
(orjson reads it, as the pure twin always does), each over its own store holding the same
instances; the answers, the instances left, the tag index and the state files must be the
same. Bodies orjson would write the same way must be taken by the scan (so the test is not
vacuous); anything else must be declined, never misread.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance.rpc import Dispatcher, Pending
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore, StoreError, UnknownInstance

pytestmark = pytest.mark.compiled
_rpc_c = impls.compiled_modules()[impls.MODULES.index("_rpc")]

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_IDS = ["instance-1", "instance-2", "i/3", 'i"4', "é5"]  # held by every store here
_PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=5)
_ANY_TEXT = st.text(st.sampled_from(list('ab"\\/\n\x01é\u2028 ')), max_size=5)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), _ANY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(_PLAIN, inner, max_size=2)),
    max_leaves=5,
)


@st.composite
def destroy_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A Destroy request, and whether it is plain: its text what orjson writes of it, its parts
    what the scan reads (so the scan must take it)."""
    plain = True
    readable = draw(st.booleans())  # half of them made of what the scan reads, the rest of anything
    params: dict[str, Any] = {}
    members = ["Type", "Instance", "Context", "Other"]
    for key in draw(st.permutations(members)):
        if key == "Type" and draw(st.booleans()):
            params[key] = draw(
                st.sampled_from(["", None])
                if readable
                else st.one_of(st.sampled_from(["", None]), st.sampled_from(["aws", 3]), _JSON)
            )
            plain = plain and params[key] in ("", None)
        elif key == "Instance" and (readable or draw(st.integers(0, 9))):
            params[key] = draw(
                st.one_of(st.sampled_from(_IDS[:3] + ["instance-9"]), _PLAIN.filter(bool))
                if readable
                else st.one_of(st.sampled_from([*_IDS, "instance-9", ""]), _PLAIN, _JSON)
            )
            value = params[key]
            plain = plain and isinstance(value, str) and value != "" and "\\" not in orjson.dumps(value).decode()
            plain = plain and value.isascii()
        elif key == "Context" and draw(st.booleans()):
            params[key] = draw(
                st.one_of(st.sampled_from([None, {}, {"Reason": "terminate"}]), st.dictionaries(_PLAIN, _PLAIN))
                if readable
                else st.one_of(st.sampled_from([None, {}, {"Reason": "terminate"}]), _JSON)
            )
            plain = plain and (params[key] is None or isinstance(params[key], dict))
        elif key == "Other" and not readable and not draw(st.integers(0, 9)):
            params[key] = 1
            plain = False
    plain = plain and "Instance" in params
    envelope = {
        "jsonrpc": "2.0",
        "method": "Instance.Destroy",
        "params": params,
        "id": draw(request_ids(readable)),
    }
    ident = envelope["id"]
    plain = plain and (isinstance(ident, int) or (isinstance(ident, str) and "\\" not in orjson.dumps(ident).decode()))
    plain = plain and (not isinstance(ident, str) or ident.isascii())
    body = orjson.dumps({k: envelope[k] for k in draw(st.permutations(list(envelope)))})
    # the scan reads ASCII text without floats; a Context of anything else is declined
    plain = plain and body.isascii() and not any(isinstance(n, float) for n in _numbers(params.get("Context")))
    plain = plain and b"\\u" not in body
    return varied(draw, body, plain, readable)


def request_ids(readable: bool) -> st.SearchStrategy[Any]:
    """A request's id: an integer or a plain string, or (not ``readable``) anything an id may be."""
    if readable:
        return st.one_of(st.integers(-(10**18) + 1, 10**19 - 1), _PLAIN)
    return st.one_of(st.integers(-(10**18) + 1, 10**19 - 1), _PLAIN, _ANY_TEXT, st.none(), st.just(1.5))


def varied(draw: st.DrawFn, body: bytes, plain: bool, readable: bool) -> tuple[bytes, bool]:
    """``body`` as it is, mostly, or written another way: with spaces, a key twice or an escaped
    slash (then no longer plain), or trailing whitespace (outside the request's text)."""
    how = draw(st.integers(0, 19 if readable else 9))
    if how == 1:
        body = json.dumps(json.loads(body)).encode()  # spaces
        plain = False
    elif how == 2:
        body = body.replace(b'"params":{', b'"params":{"dup":1,"dup":2,', 1)
        plain = False
    elif how == 3:
        body += b"\n"
    elif how == 4 and b"/" in body:
        body = body.replace(b"/", b"\\/")
        plain = False
    return body, plain


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [n for v in value.values() for n in _numbers(v)]


class _Methods(dict):  # type: ignore[type-arg]
    """A method table the dispatcher reads only the usual way (its text path wants a plain dict)."""


def dispatch(body: bytes, scan: bool, method: str, make: Any) -> list[Any]:
    """``body`` answered by the dispatcher with ``method`` (``make(store)``, a logical provider's
    change) over a store of its own holding ``_IDS``; with ``scan``, as the plugin runs it, else
    with the text path off. What it saw: the answer, the instances (ID and brief), the tag index
    and the state file."""

    async def go(path: str) -> list[Any]:
        store = FileStore(path, fsync=False)
        await store.open()
        for n, iid in enumerate(_IDS):
            tags = {"group": f"g{n % 2}", "n": str(n)}
            brief = orjson.dumps({"ID": iid, "LogicalID": None, "Tags": tags})
            await store.provision(Record(iid, brief, None), tags)
        table = {method: make(store)}
        answer = Dispatcher(table if scan else _Methods(table)).handle(body)
        seen: list[Any] = []
        if isinstance(answer, Pending):
            await answer.done
            seen.append(("pending", answer.answer, answer.id_json, answer.method, answer.settle()))
        else:
            seen.append(("answer", answer))
        state = store.state
        seen.append([(r.id, r.brief) for r in state.instances.values()])  # in array order
        seen.append(
            sorted(((k, v), [r.id for r in b.values()]) for k, by in state._index.items() for v, b in by.items())
        )
        await store.close()
        with open(path, "rb") as f:
            seen.append(f.read())
        return seen

    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(go(f"{d}/state.json"))


def _destroyer(store: FileStore) -> Any:
    return _rpc_c.LogicalDestroy(store, StoreError, UnknownInstance)


def _compare(body: bytes) -> list[Any]:
    seen = dispatch(body, True, "Instance.Destroy", _destroyer)
    assert seen == dispatch(body, False, "Instance.Destroy", _destroyer), body
    return seen


@SETTINGS
@given(destroy_bodies())
def test_a_destroy_read_from_its_text_answers_as_one_read_by_orjson(made: tuple[bytes, bool]) -> None:
    body, plain = made
    scan = _rpc_c.scan_destroy(body)
    seen = _compare(body)
    if plain:
        assert scan is not None, body  # the scan takes what it can read
    if scan is None:
        return
    doc = orjson.loads(body)
    assert scan == (orjson.dumps(doc["id"]), doc["params"]["Instance"])
    if doc["params"]["Instance"] in _IDS:
        assert seen[0][0] == "pending" and doc["params"]["Instance"] not in dict(seen[1])
    else:
        assert seen[0][0] == "answer" and b"no such instance" in seen[0][1]


@pytest.mark.parametrize(
    "body",
    [
        # taken
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1}',
        b'{"id":"x","params":{"Context":{"Reason":"terminate"},"Instance":"i/3","Type":""},'
        b'"method":"Instance.Destroy","jsonrpc":"2.0"}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Type":null,"Instance":"instance-9","Context":null},'
        b'"id":9999999999999999999}',
        # declined, answered the usual way
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"i\\"4"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"i\\/3"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"\xc3\xa95"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":""},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":1},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1","Type":"aws"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1","Context":[]},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1","Context":{"n":1.5}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1","More":1},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1","Instance":"instance-2"},'
        b'"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":null}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"}}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1.0}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1} x',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1',
        b'{"jsonrpc":"2.0", "method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":[],"id":1}',
        b'{"jsonrpc":"1.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Instance":"Instance.Destroy"},"id":1}',
    ],
)
def test_destroy_texts_taken_and_declined(body: bytes) -> None:
    seen = _compare(body)
    taken = _rpc_c.scan_destroy(body) is not None
    assert taken == (body in _TAKEN), body
    if taken:
        assert seen[0][0] == ("answer" if b"instance-9" in body else "pending")


_TAKEN = {
    b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"instance-1"},"id":1}',
    b'{"id":"x","params":{"Context":{"Reason":"terminate"},"Instance":"i/3","Type":""},'
    b'"method":"Instance.Destroy","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Type":null,"Instance":"instance-9","Context":null},'
    b'"id":9999999999999999999}',
}


@pytest.mark.parametrize("name", ["new-Instance.Destroy.txt", "old-Instance.Destroy.txt"])
def test_the_go_clients_destroy_is_read_from_its_text(name: str) -> None:
    # The exact bytes InfraKit's Go clients send: the shape the scan is for.
    text = (Path(__file__).parent / "wire" / name).read_text()
    body = text.split("### reference")[0].split("\n\n", 1)[1].strip().encode()
    doc = orjson.loads(body)
    assert _rpc_c.scan_destroy(body) == (str(doc["id"]).encode(), doc["params"]["Instance"])
    held = body.replace(doc["params"]["Instance"].encode(), b"instance-2")
    seen = _compare(held)
    assert seen[0][:4] == (
        "pending",
        b'{"jsonrpc":"2.0","result":{"Type":"","OK":true},"id":%d}' % doc["id"],
        str(doc["id"]).encode(),
        "Instance.Destroy",
    )
    assert "instance-2" not in dict(seen[1])
