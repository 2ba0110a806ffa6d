"""A DescribeInstances read from its text (``_rpc_c.scan_describe``) answers as one read by orjson.

The compiled dispatcher takes a plain DescribeInstances without building its JSON objects: the
request's id, the tags asked for and Properties are read from its text, the tags' strings
through the same cache as a Provision's. Every body here goes through the dispatcher as the
plugin runs it (which scans it) and with that path switched off (orjson reads it, as the pure
twin always does), over one store; the answers must be the same, byte for byte. Bodies orjson
would write the same way must be taken by the scan (so the test is not vacuous), and what the
scan reads must be what orjson reads; anything else must be declined, never misread.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import impls
from infrakit_instance.plugin import Plugin
from infrakit_instance.rpc import Dispatcher, Parts
from infrakit_instance.state import Record
from infrakit_instance.store import FileStore
from test_destroy_text import _ANY_TEXT, _JSON, _PLAIN, SETTINGS, _Methods, request_ids, varied

pytestmark = pytest.mark.compiled
_rpc_c = impls.compiled_modules()[impls.MODULES.index("_rpc")]

_GROUPS = ["g0", "g1", 'g"2', "g/3", "é4"]  # every instance's "group" tag is one of these
_KEYS = st.sampled_from(["group", "role", "n", "none"])
_VALUES = st.one_of(st.sampled_from([*_GROUPS[:2], "g/3", "worker", "0", "1", "x"]), _PLAIN)


@st.composite
def describe_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A DescribeInstances request, and whether it is plain: its text what orjson writes of it,
    its parts what the scan reads (so the scan must take it)."""
    plain = True
    readable = draw(st.booleans())  # half of them made of what the scan reads, the rest of anything
    params: dict[str, Any] = {}
    for key in draw(st.permutations(["Type", "Tags", "Properties", "Other"])):
        if key == "Type" and draw(st.booleans()):
            params[key] = draw(
                st.sampled_from(["", None]) if readable else st.one_of(st.sampled_from(["", None, "aws", 3]), _JSON)
            )
            plain = plain and params[key] in ("", None)
        elif key == "Tags" and draw(st.integers(0, 5)):
            params[key] = draw(
                st.one_of(st.none(), st.dictionaries(_KEYS, _VALUES, max_size=3))
                if readable
                else st.one_of(
                    st.none(),
                    st.dictionaries(_KEYS, _VALUES, max_size=3),
                    st.dictionaries(_ANY_TEXT, st.one_of(_ANY_TEXT, _JSON), max_size=2),
                    _JSON,
                )
            )
            value = params[key]
            strings = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            plain = plain and (value is None or strings)
        elif key == "Properties" and draw(st.booleans()):
            params[key] = draw(st.sampled_from([True, False, None]) if readable else st.one_of(st.booleans(), _JSON))
            plain = plain and params[key] in (True, False, None)
        elif key == "Other" and not readable and not draw(st.integers(0, 9)):
            params[key] = 1
            plain = False
    envelope = {
        "jsonrpc": "2.0",
        "method": "Instance.DescribeInstances",
        "params": params,
        "id": draw(request_ids(readable)),
    }
    ident = envelope["id"]
    plain = plain and (isinstance(ident, int) or isinstance(ident, str))
    body = orjson.dumps({k: envelope[k] for k in draw(st.permutations(list(envelope)))})
    # the scan reads ASCII text without escapes (in the id and the tags) and without floats
    plain = plain and body.isascii() and b"\\" not in body and not any(isinstance(x, float) for x in _leaves(params))
    return varied(draw, body, plain, readable)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _answer(answer: Any) -> Any:
    return answer.join() if isinstance(answer, Parts) else answer


class _Store:
    """One store for the whole module: 40 instances, tags of five groups, roles and numbers."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.loop = asyncio.new_event_loop()
        self.store = FileStore(f"{self.dir.name}/state.json", fsync=False)
        self.loop.run_until_complete(self._fill())
        self.table = Plugin(self.store).methods

    async def _fill(self) -> None:
        await self.store.open()
        for n in range(40):
            iid = f"instance-{n}"
            tags = {"group": _GROUPS[n % 5], "role": "worker" if n % 3 else "manager", "n": str(n % 4)}
            brief = orjson.dumps({"ID": iid, "LogicalID": None, "Tags": tags})
            await self.store.provision(Record(iid, brief, b'{"k":%d}' % n), tags)

    def both(self, body: bytes) -> Any:
        scanned = _answer(Dispatcher(self.table).handle(body))
        read = _answer(Dispatcher(_Methods(self.table)).handle(body))
        assert scanned == read, body
        return scanned


_STORE: _Store | None = None


def _store() -> _Store:
    global _STORE
    if _STORE is None:
        _STORE = _Store()
    return _STORE


@SETTINGS
@given(describe_bodies())
def test_a_describe_read_from_its_text_answers_as_one_read_by_orjson(made: tuple[bytes, bool]) -> None:
    body, plain = made
    scan = _rpc_c.scan_describe(body)
    answer = _store().both(body)
    if plain:
        assert scan is not None, body  # the scan takes what it can read
    if scan is None:
        return
    doc = orjson.loads(body)
    params = doc["params"]
    assert scan == (orjson.dumps(doc["id"]), params.get("Tags") or None, bool(params.get("Properties")))
    result = orjson.loads(answer)["result"]
    asked = (params.get("Tags") or {}).items()
    want = [f"instance-{n}" for n in range(40) if all(_tags(n).get(k) == v for k, v in asked)]
    assert [d["ID"] for d in result["Descriptions"]] == want
    assert all(("Properties" in d) == bool(params.get("Properties")) for d in result["Descriptions"])


def _tags(n: int) -> dict[str, str]:
    return {"group": _GROUPS[n % 5], "role": "worker" if n % 3 else "manager", "n": str(n % 4)}


_TAKEN = [
    b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Type":"","Tags":{"group":"g1"},'
    b'"Properties":true},"id":1}',
    b'{"id":"x","params":{"Tags":{"role":"worker","n":"2"}},"method":"Instance.DescribeInstances","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Type":null,"Tags":null,"Properties":null},'
    b'"id":9999999999999999999}',
    b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{}},"id":2}',
    b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":"g/3"}},"id":3}',
    b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{},"id":4}',
]


@pytest.mark.parametrize(
    "body",
    [
        *_TAKEN,
        # declined, answered the usual way
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":"g\\"2"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":"g\\/3"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":"\xc3\xa94"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":1}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"group":null}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":["group"]},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":"group"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"a":"b","a":"c"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Properties":1},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Properties":"true"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Type":"aws"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"More":1},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{},"id":null}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{}}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{},"id":1.0}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{},"id":1} x',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{},"id":1',
        b'{"jsonrpc":"2.0", "method":"Instance.DescribeInstances","params":{},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":[],"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":null,"id":1}',
        b'{"jsonrpc":"1.0","method":"Instance.DescribeInstances","params":{},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"Instance.DescribeInstances"},"id":1}',
    ],
)
def test_describe_texts_taken_and_declined(body: bytes) -> None:
    answer = _store().both(body)
    taken = _rpc_c.scan_describe(body) is not None
    assert taken == (body in _TAKEN), body
    if taken:
        assert b'"result":{"Type":"","Descriptions":[' in answer


@pytest.mark.parametrize(
    "name",
    [
        "new-Instance.DescribeInstances-notags-noprops.txt",
        "new-Instance.DescribeInstances-tags-props.txt",
        "old-Instance.DescribeInstances-notags.txt",
        "old-Instance.DescribeInstances-tags.txt",
    ],
)
def test_the_go_clients_describe_is_read_from_its_text(name: str) -> None:
    # The exact bytes InfraKit's Go clients send: the shape the scan is for.
    text = (Path(__file__).parent / "wire" / name).read_text()
    body = text.split("### reference")[0].split("\n\n", 1)[1].strip().encode()
    doc = orjson.loads(body)
    params = doc["params"]
    assert _rpc_c.scan_describe(body) == (
        str(doc["id"]).encode(),
        params["Tags"] or None,
        bool(params.get("Properties")),
    )
    asked = body.replace(b'"infrakit.group":"workers"', b'"group":"g1"')
    answer = orjson.loads(_store().both(asked))
    assert answer["id"] == doc["id"]
    ids = [d["ID"] for d in answer["result"]["Descriptions"]]
    assert ids == [f"instance-{n}" for n in range(40) if params["Tags"] is None or n % 5 == 1]
