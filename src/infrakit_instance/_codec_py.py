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

Each line of ``Instances`` holds one element (or the spaces a removed one
left), then the comma that owns the next element, if any: the comma may sit
on a blank line, after a removal.  :func:`parse_element` reads one such line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

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
    "parse_element",
]

TAIL = b"\n]}\n"

# What parse_element gives for a line of our layout.
_Element = tuple[bool, int, str | None, dict[str, str] | None, bytes | None, bytes | None]

_PROPS = b',"Properties":'
_BRIEF_KEYS = frozenset(("ID", "LogicalID", "Tags"))
_BLANK: _Element = (False, 0, None, None, None, None)
_BLANK_COMMA: _Element = (True, 0, None, None, None, None)


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


def parse_element(line: bytes) -> _Element | None:
    """One line of the ``Instances`` array as read from the file, checked.

    ``(comma, size, instance_id, tags, brief, spec)``: whether the line ends
    with the comma that owns the next element; for an element, its length in
    the line (without the comma and the spaces around it), its ID, its tags,
    its brief description and its Spec (the bytes in the file, checked to be
    JSON; None if it has no Properties).  A blank line (spaces, maybe the
    comma) gives ``instance_id`` None.  None: the line is not of our layout
    (an element that does not start its line, not JSON, other keys, ...).
    """
    if type(line) is not bytes:
        raise TypeError(f"parse_element() needs bytes, not {type(line).__name__}")
    content = line.rstrip(b"\n").rstrip(b" ")
    comma = content.endswith(b",")
    if comma:
        content = content[:-1].rstrip(b" ")
    if not content:
        return _BLANK_COMMA if comma else _BLANK
    if content[:1] == b" ":
        return None  # an element that does not start its line: not written by us
    # Split at the element's own "Properties" key: the first place where what
    # comes before is a whole brief description (a tag named "Properties" puts
    # the same bytes inside the brief, where the cut leaves it unclosed).
    k = content.find(_PROPS)
    while True:
        parts = _element_at(content, k)
        if parts is not None:
            return (comma, len(content), *parts)
        if k < 0:
            return None
        k = content.find(_PROPS, k + 1)


def _element_at(content: bytes, k: int) -> tuple[str, dict[str, str], bytes, bytes | None] | None:
    """The element ``content`` split at ``k`` (-1: no Properties), checked; None if that is no element."""
    if k < 0:
        brief, spec = content, None
    else:
        spec = content[k + len(_PROPS) : -1]
        if not content.endswith(b"}") or not is_json(spec):
            return None
        brief = content[:k] + b"}"
    try:
        desc = orjson.loads(brief)
    except orjson.JSONDecodeError:
        return None
    if type(desc) is not dict or desc.keys() != _BRIEF_KEYS:
        return None
    instance_id, logical_id, tags = desc["ID"], desc["LogicalID"], desc["Tags"]
    if (
        type(instance_id) is not str
        or not instance_id
        or (logical_id is not None and type(logical_id) is not str)
        or type(tags) is not dict
    ):
        return None
    for value in tags.values():
        if type(value) is not str:
            return None
    return instance_id, tags, brief, spec


def encode_spec(spec: Any) -> bytes:
    """A provisioned Spec as compact JSON, in a buffer of its own size (orjson
    may hand back a much larger allocation, which a long-lived record would keep)."""
    return bytes(memoryview(orjson.dumps(spec)))


def encode_brief(instance_id: str, logical_id: str | None, tags: dict[str, str]) -> bytes:
    """The Description of an instance without Properties (kept for the instance's
    lifetime, so copied out of orjson's oversized buffer like :func:`encode_spec`)."""
    return bytes(memoryview(orjson.dumps({"ID": instance_id, "LogicalID": logical_id, "Tags": tags})))


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


def encode_document(provider: bytes, nonfunctional: list[bytes], instances: list[bytes]) -> tuple[bytes, list[int]]:
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
