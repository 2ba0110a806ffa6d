"""Stub of the compiled twin of ``_codec_py`` (same names, same behaviour)."""

from collections.abc import Iterable
from typing import Any, Final, Protocol

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

TAIL: Final[bytes]

# (comma, size, instance_id, tags, brief, spec); instance_id is None for a blank line.
_Element = tuple[bool, int, str | None, dict[str, str] | None, bytes | None, bytes | None]

class _HasParts(Protocol):
    brief: bytes
    spec: bytes | None

def encode_brief(instance_id: str, logical_id: str | None, tags: dict[str, str]) -> bytes: ...
def encode_spec(spec: Any) -> bytes: ...
def is_json(data: bytes) -> bool: ...
def parse_element(line: bytes) -> _Element | None: ...
def element(brief: bytes, spec: bytes | None) -> bytes: ...
def join_descriptions(records: Iterable[_HasParts], properties: bool) -> bytes: ...
def describe_result(type_json: bytes, descriptions: bytes) -> bytes: ...
def encode_document(provider: bytes, nonfunctional: list[bytes], instances: list[bytes]) -> tuple[bytes, list[int]]: ...
