"""State-file and answer encoding (pure-Python twin of ``_codec_c``).

An instance is kept as two pieces of JSON text: its *brief* description
(``{"ID","LogicalID","Tags"}``, what DescribeInstances returns by default)
and its provisioned Spec.  Both are encoded once, when the instance is
provisioned or labelled; state-file elements and Describe answers are then
joined from them without decoding anything again.

The state file layout (one JSON document, readable by any JSON parser and by
the C plugin) puts every array element on a line of its own and ``Instances``
last, so an append only rewrites the four closing bytes::

    {"Provider":{},"NonFunctional":[
    {...}
    ],"Instances":[
    {...},
    {...}
    ]}
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import orjson

__all__ = [
    "TAIL",
    "describe_result",
    "element",
    "encode_brief",
    "encode_spec",
    "is_json",
    "encode_document",
    "join_descriptions",
]

TAIL = b"\n]}\n"


class _HasParts(Protocol):
    brief: bytes
    spec: bytes | None


def is_json(data: bytes) -> bool:
    """Whether ``data`` is one complete JSON value."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def encode_spec(spec: Any) -> bytes:
    """A provisioned Spec as compact JSON, in a buffer of its own size (orjson
    may hand back a much larger allocation, which a long-lived record would keep)."""
    return bytes(memoryview(orjson.dumps(spec)))


def encode_brief(instance_id: str, logical_id: str | None, tags: dict[str, str]) -> bytes:
    """The Description of an instance without Properties."""
    return orjson.dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})


def element(brief: bytes, spec: bytes | None) -> bytes:
    """The state-file element: the brief description plus ``"Properties": <Spec>``."""
    if spec is None:
        return brief
    return brief[:-1] + b',"Properties":' + spec + b"}"


def join_descriptions(records: Iterable[_HasParts], properties: bool) -> bytes:
    """A JSON array of descriptions, with or without Properties."""
    if properties:
        return b"[" + b",".join([_with_properties(r.brief, r.spec) for r in records]) + b"]"
    return b"[" + b",".join([r.brief for r in records]) + b"]"


def _with_properties(brief: bytes, spec: bytes | None) -> bytes:
    # An instance loaded from a C-plugin file has no recorded Spec: say so with null.
    return brief[:-1] + b',"Properties":' + (b"null" if spec is None else spec) + b"}"


def describe_result(type_json: bytes, descriptions: bytes) -> bytes:
    """The ``result`` object of Instance.DescribeInstances."""
    return b'{"Type":' + type_json + b',"Descriptions":' + descriptions + b"}"


def encode_document(
    provider: bytes, nonfunctional: list[bytes], instances: list[bytes]
) -> tuple[bytes, list[int]]:
    """The whole state file, and the offset of each element of ``instances`` in it."""
    head = b'{"Provider":' + provider + b',"NonFunctional":['
    if nonfunctional:
        head += b"\n" + b",\n".join(nonfunctional) + b"\n"
    head += b'],"Instances":['
    parts = [head]
    offsets = []
    pos = len(head)
    sep = b"\n"
    for e in instances:
        parts.append(sep)
        pos += len(sep)
        offsets.append(pos)
        parts.append(e)
        pos += len(e)
        sep = b",\n"
    parts.append(TAIL)
    return b"".join(parts), offsets
