"""The hot path, compiled and pure side by side: ``pytest benchmarks --benchmark-only``.

Each benchmark is grouped by function so the report puts the two
implementations of one step next to each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

WIRE = Path(__file__).resolve().parents[1] / "tests" / "wire"

# The Go client's Instance.Provision request (wire/new-Instance.Provision.txt),
# used when the captures are not next to the checkout.
_BODY = (
    b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"","Spec":{"Properties":{"key":"value","n":42},'
    b'"Tags":{"infrakit.config_sha":"abc123","infrakit.group":"workers","role":"worker"},'
    b'"Init":"#!/bin/sh\\necho hello\\n","LogicalID":"lid-1","Attachments":[{"ID":"att-1","Type":"disk"}]}},'
    b'"id":7848944122355444675}'
)
_PROVISION = (
    b"POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n%s" % (len(_BODY), _BODY)
)


def provision_request() -> bytes:
    path = WIRE / "new-Instance.Provision.txt"
    if not path.is_file():
        return _PROVISION
    first, rest = path.read_bytes().split(b"\n", 1)
    return rest[: int(first.split(b"(")[1].split(b" ")[0])]


REQUEST = provision_request()
TAGS = {"infrakit.config_sha": "abc123", "infrakit.group": "workers", "role": "worker"}
SPEC = (
    b'{"Properties":{"key":"value","n":42},"Tags":{"infrakit.config_sha":"abc123","infrakit.group":"workers",'
    b'"role":"worker"},"Init":"#!/bin/sh\\necho hello\\n","LogicalID":"lid-1",'
    b'"Attachments":[{"ID":"att-1","Type":"disk"}]}'
)
RESULT = b'{"Type":"","ID":"instance-541032319213741517"}'
ID_JSON = b"7848944122355444675"


class Record:
    """What the store keeps per instance (see state.Record): the parts the codec joins."""

    __slots__ = ("brief", "spec")

    def __init__(self, brief: bytes, spec: bytes | None) -> None:
        self.brief = brief
        self.spec = spec


def test_parse_provision_request(benchmark: Any, impl: Any) -> None:
    """One keep-alive connection's parser turning a Go client's Provision into a Request."""
    benchmark.group = "parse Provision request"
    parser = impl.http.HttpParser()
    [req] = benchmark(parser.feed, REQUEST)
    assert req.method == b"POST" and len(req.body) == 319


def test_build_response(benchmark: Any, impl: Any) -> None:
    """The Provision answer: JSON-RPC envelope around the result, then the HTTP response."""
    benchmark.group = "build response"
    encode_result, build_response = impl.rpc.encode_result, impl.http.build_response

    def respond() -> bytes:
        return build_response(200, encode_result(ID_JSON, RESULT), True)

    assert benchmark(respond).endswith(b',"id":7848944122355444675}')


def test_envelope(benchmark: Any, impl: Any) -> None:
    """Body to Call: orjson parses in both implementations; the checks around it differ."""
    benchmark.group = "decode + split envelope"
    decode_body, split_call = impl.rpc.decode_body, impl.rpc.split_call
    body = REQUEST.split(b"\r\n\r\n", 1)[1]

    def split() -> Any:
        return split_call(decode_body(body))

    assert benchmark(split).id_json == ID_JSON


def test_encode_description(benchmark: Any, impl: Any) -> None:
    """A provisioned instance's brief description and its state-file element."""
    benchmark.group = "encode description (encode_brief + element)"
    encode_brief, element = impl.codec.encode_brief, impl.codec.element

    def encode() -> bytes:
        return element(encode_brief("instance-541032319213741517", "lid-1", TAGS), SPEC)

    assert benchmark(encode).endswith(SPEC + b"}")


def test_append_bytes(benchmark: Any, impl: Any) -> None:
    """What a Provision writes over the state file's tail: the element of the new instance."""
    benchmark.group = "append bytes (element)"
    element = impl.codec.element
    brief = impl.codec.encode_brief("instance-541032319213741517", "lid-1", TAGS)
    assert benchmark(element, brief, SPEC).startswith(brief[:-1])


@pytest.mark.parametrize("properties", [False, True], ids=["brief", "properties"])
def test_join_describe_answer(benchmark: Any, impl: Any, properties: bool) -> None:
    """The Descriptions array of a DescribeInstances answer over 10,000 instances."""
    benchmark.group = f"join 10,000 descriptions ({'with' if properties else 'without'} Properties)"
    records = [Record(impl.codec.encode_brief(f"instance-{n}", None, TAGS), SPEC) for n in range(10_000)]
    answer = benchmark(impl.codec.join_descriptions, records, properties)
    assert answer.count(b'{"ID":"instance-') == 10_000


def test_encode_document(benchmark: Any, impl: Any) -> None:
    """A whole state-file rewrite (compaction) of 10,000 elements with their offsets."""
    benchmark.group = "encode state document (10,000 elements)"
    elements = [impl.codec.element(impl.codec.encode_brief(f"instance-{n}", None, TAGS), SPEC) for n in range(10_000)]
    doc, offsets = benchmark(impl.codec.encode_document, b"{}", [], elements)
    assert len(offsets) == 10_000


def _layout_lines(codec: Any, n: int) -> list[bytes]:
    """The ``Instances`` lines of an ``n``-instance state file, as a file read gives them."""
    elements = [
        codec.element(codec.encode_brief(f"instance-{k}", None, {**TAGS, "infrakit.group": f"g{k // 1000}"}), SPEC)
        for k in range(n)
    ]
    doc, _ = codec.encode_document(b"{}", [], elements)
    return doc.splitlines(keepends=True)[1:-1]


def test_load_elements(benchmark: Any, impl: Any) -> None:
    """Start-up: every element line of a 10,000-instance state file checked and split
    into what a record needs (ID, tags, brief, Spec), as the store's loader does."""
    benchmark.group = "load 10,000 state-file elements (parse_element)"
    parse_element = impl.codec.parse_element
    lines = _layout_lines(impl.codec, 10_000)

    def load() -> int:
        n = 0
        for line in lines:
            if parse_element(line)[2] is not None:
                n += 1
        return n

    assert benchmark(load) == 10_000


def test_check_spec(benchmark: Any, impl: Any) -> None:
    """The Spec of an element checked to be JSON (orjson in the pure twin, a validator in the compiled one)."""
    benchmark.group = "check a Spec is JSON (is_json)"
    assert benchmark(impl.codec.is_json, SPEC) is True
