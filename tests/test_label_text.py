"""A Label read from its text (``_rpc_c.scan_label``) answers as one read by orjson.

The compiled dispatcher takes a plain Label for the logical provider without building its JSON
objects: the request's id, the instance ID and the labels are read from its text. Every body here
goes through the dispatcher as the plugin runs it (which scans it) and with that path switched off
(orjson reads it, as the pure twin always does), each over its own store holding the same
instances; the answers, the instances' descriptions, the tag index and the state files must be the
same. Bodies orjson would write the same way must be taken by the scan, and read as orjson reads
them; anything else must be declined, never misread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import impls
from infrakit_instance.store import FileStore, StoreError, UnknownInstance
from test_destroy_text import _ANY_TEXT, _IDS, _JSON, _PLAIN, SETTINGS, dispatch, request_ids, varied

pytestmark = pytest.mark.compiled
_rpc_c = impls.compiled_modules()[impls.MODULES.index("_rpc")]

_LABELS = st.dictionaries(st.sampled_from(["group", "n", "owner", "x"]), _PLAIN, max_size=3)


@st.composite
def label_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A Label request, and whether it is plain: its text what orjson writes of it, its parts
    what the scan reads (so the scan must take it)."""
    plain = True
    readable = draw(st.booleans())  # half of them made of what the scan reads, the rest of anything
    params: dict[str, Any] = {}
    for key in draw(st.permutations(["Type", "Instance", "Labels", "Other"])):
        if key == "Type" and draw(st.booleans()):
            params[key] = draw(
                st.sampled_from(["", None]) if readable else st.one_of(st.sampled_from(["", None, "aws", 3]), _JSON)
            )
            plain = plain and params[key] in ("", None)
        elif key == "Instance" and (readable or draw(st.integers(0, 9))):
            params[key] = draw(
                st.one_of(st.sampled_from(_IDS[:3] + ["instance-9"]), _PLAIN.filter(bool))
                if readable
                else st.one_of(st.sampled_from([*_IDS, "instance-9", ""]), _PLAIN, _JSON)
            )
            value = params[key]
            plain = plain and isinstance(value, str) and value != ""
        elif key == "Labels" and draw(st.integers(0, 5)):
            params[key] = draw(
                st.one_of(st.none(), _LABELS)
                if readable
                else st.one_of(st.none(), _LABELS, st.dictionaries(_ANY_TEXT, st.one_of(_ANY_TEXT, _JSON)), _JSON)
            )
            value = params[key]
            strings = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            plain = plain and (value is None or strings)
        elif key == "Other" and not readable and not draw(st.integers(0, 9)):
            params[key] = 1
            plain = False
    plain = plain and "Instance" in params
    envelope = {
        "jsonrpc": "2.0",
        "method": "Instance.Label",
        "params": params,
        "id": draw(request_ids(readable)),
    }
    plain = plain and isinstance(envelope["id"], (int, str))
    body = orjson.dumps({k: envelope[k] for k in draw(st.permutations(list(envelope)))})
    # the scan reads ASCII text without escapes in the instance ID, the labels and the id
    plain = plain and body.isascii() and b"\\" not in body
    return varied(draw, body, plain, readable)


def _labeller(store: FileStore) -> Any:
    return _rpc_c.LogicalLabel(store, StoreError, UnknownInstance)


def _compare(body: bytes) -> list[Any]:
    seen = dispatch(body, True, "Instance.Label", _labeller)
    assert seen == dispatch(body, False, "Instance.Label", _labeller), body
    return seen


@SETTINGS
@given(label_bodies())
def test_a_label_read_from_its_text_answers_as_one_read_by_orjson(made: tuple[bytes, bool]) -> None:
    body, plain = made
    scan = _rpc_c.scan_label(body)
    seen = _compare(body)
    if plain:
        assert scan is not None, body  # the scan takes what it can read
    if scan is None:
        return
    doc = orjson.loads(body)
    params = doc["params"]
    assert scan == (orjson.dumps(doc["id"]), params["Instance"], params.get("Labels") or {})
    if params["Instance"] in _IDS:
        assert seen[0][0] == "pending"
        brief = dict(seen[1])[params["Instance"]]
        assert orjson.loads(brief)["Tags"].items() >= (params.get("Labels") or {}).items()
    else:
        assert seen[0][0] == "answer" and b"no such instance" in seen[0][1]


_TAKEN = [
    b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"owner":"m1"}},"id":1}',
    b'{"id":"x","params":{"Labels":{"group":"g9","n":""},"Instance":"i/3","Type":""},'
    b'"method":"Instance.Label","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Type":null,"Instance":"instance-9","Labels":null},'
    b'"id":9999999999999999999}',
    b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-2"},"id":2}',
    b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-2","Labels":{}},"id":3}',
]


@pytest.mark.parametrize(
    "body",
    [
        *_TAKEN,
        # declined, answered the usual way
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"i\\"4","Labels":{"a":"b"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"a":"b\\"c"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"a":"\xc3\xa9"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"a":1}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"a":null}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":["a"]},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Labels":{"a":"b","a":"c"}},'
        b'"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"","Labels":{}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Labels":{"a":"b"}},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","Type":"aws"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1","More":1},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1"},"id":null}',
        b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"instance-1"},"id":1.0}',
        b'{"jsonrpc":"2.0", "method":"Instance.Label","params":{"Instance":"instance-1"},"id":1}',
        b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{"Instance":"Instance.Label"},"id":1}',
    ],
)
def test_label_texts_taken_and_declined(body: bytes) -> None:
    seen = _compare(body)
    taken = _rpc_c.scan_label(body) is not None
    assert taken == (body in _TAKEN), body
    if taken:
        assert seen[0][0] == ("answer" if b"instance-9" in body else "pending")


def test_the_go_clients_label_is_read_from_its_text() -> None:
    # The exact bytes InfraKit's Go client sends (the old clients have no Label): the shape the scan is for.
    path = Path(__file__).parent / "wire" / "new-Instance.Label.txt"
    body = path.read_text().split("### reference")[0].split("\n\n", 1)[1].strip().encode()
    doc = orjson.loads(body)
    assert _rpc_c.scan_label(body) == (str(doc["id"]).encode(), doc["params"]["Instance"], doc["params"]["Labels"])
    held = body.replace(doc["params"]["Instance"].encode(), b"instance-2")
    seen = _compare(held)
    assert seen[0][0] == "pending"
