"""The instances in memory: ordered, indexed by ID and by tag, answers cached
(the pure-Python twin of ``_state_c``; :mod:`.state` re-exports the one picked).

Stores keep one :class:`State` and persist what changes in it; the RPC layer
reads from it.  Nothing here touches a file.

An instance is held as the two pieces of JSON text it is served as (see
:mod:`._codec_py`); its tags live only in the tag index, and are decoded from
the brief description on the rare paths that need them as a dict.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from . import _codec_py as codec

__all__ = ["Record", "State", "StateError", "read_elements", "set_cache_bytes"]


class StateError(ValueError):
    """A state document that cannot be used, with what is wrong and where."""


#: Bytes of Describe answers kept for reuse until the state changes (LRU; --describe-cache).
_cache_bytes = 64 * 1024 * 1024


def set_cache_bytes(limit: int) -> int:
    """Set how many bytes of Describe answers every state's cache keeps; the limit before."""
    global _cache_bytes
    old, _cache_bytes = _cache_bytes, limit
    return old


class Record:
    """One instance: its encoded brief description and Spec, and its place."""

    __slots__ = ("brief", "id", "off", "pos", "size", "spec")

    def __init__(self, instance_id: str, brief: bytes, spec: bytes | None) -> None:
        self.id = instance_id
        self.brief = brief
        self.spec = spec
        self.pos = 0  # sort key of the array order (set by State)
        self.off = -1  # where the element starts in the state file (store-managed)
        self.size = 0  # bytes the element occupies there (store-managed)

    @property
    def tags(self) -> dict[str, str]:
        tags: dict[str, str] = orjson.loads(self.brief)["Tags"]
        return tags

    def element(self) -> bytes:
        return codec.element(self.brief, self.spec)

    def description(self) -> dict[str, Any]:
        """The decoded element, for providers and tools (not the hot path)."""
        desc: dict[str, Any] = orjson.loads(self.element())
        return desc

    @classmethod
    def from_description(cls, desc: Any, where: str) -> tuple[Record, dict[str, str]]:
        """A record of a decoded state-file element, and its tags; :class:`StateError` if malformed."""
        if not isinstance(desc, dict):
            raise StateError(f"{where} is not an object")
        instance_id = desc.get("ID")
        if not isinstance(instance_id, str) or not instance_id:
            raise StateError(f"{where} has no string ID")
        logical_id = desc.get("LogicalID")
        if logical_id is not None and not isinstance(logical_id, str):
            raise StateError(f"{where} ({instance_id}): LogicalID must be a string or null")
        tags = desc.get("Tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise StateError(f"{where} ({instance_id}): Tags must be an object of strings")
        spec = desc.get("Properties")
        spec_json = None if spec is None and "Properties" not in desc else codec.encode_spec(spec)
        return cls(instance_id, codec.encode_brief(instance_id, logical_id, tags), spec_json), tags


class _AnswerCache:
    """Describe answers by query, least recently used dropped first once they hold
    more than :func:`set_cache_bytes` allows (an answer bigger than that is not kept)."""

    __slots__ = ("_answers", "size")

    def __init__(self) -> None:
        self._answers: dict[Any, bytes] = {}
        self.size = 0

    def get(self, key: Any) -> bytes | None:
        answer = self._answers.pop(key, None)
        if answer is not None:
            self._answers[key] = answer  # now the most recently used
        return answer

    def __setitem__(self, key: Any, answer: bytes) -> None:
        limit = _cache_bytes
        if len(answer) > limit:
            return
        answers = self._answers
        self.size += len(answer)
        answers[key] = answer
        while self.size > limit:
            self.size -= len(answers.pop(next(iter(answers))))

    def __len__(self) -> int:
        return len(self._answers)

    def clear(self) -> None:
        self._answers.clear()
        self.size = 0


class State:
    """Active instances in array order, the non-functional ones, and the Provider object."""

    def __init__(self) -> None:
        self.instances: dict[str, Record] = {}
        self.nonfunctional: dict[str, Record] = {}
        self.provider: bytes = b"{}"
        # tag key -> tag value -> the instances having it (by ID, in array order unless unsorted)
        self._index: dict[str, dict[str, dict[str, Record]]] = {}
        self._unsorted: set[tuple[str, str]] = set()
        self._cache = _AnswerCache()
        self._first = 0
        self._last = 0

    # -- loading and saving -------------------------------------------------

    @classmethod
    def from_document(cls, doc: Any) -> State:
        if not isinstance(doc, dict):
            raise StateError("the state document is not a JSON object")
        state = cls()
        provider = doc.get("Provider", {})
        state.provider = orjson.dumps({} if provider is None else provider)
        for key in ("Instances", "NonFunctional"):
            items = doc.get(key)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise StateError(f'"{key}" is not an array')
            for i, desc in enumerate(items):
                rec, tags = Record.from_description(desc, f"{key}[{i}]")
                if state.known(rec.id):
                    raise StateError(f"{key}[{i}]: instance ID {rec.id!r} appears twice; remove or rename one copy")
                if key == "Instances":
                    state.load(rec, tags)
                else:
                    state.nonfunctional[rec.id] = rec
        return state

    def load(self, rec: Record, tags: dict[str, str]) -> None:
        """Add an instance read from a state file at the end (no cache to clear yet)."""
        self._last += 1
        rec.pos = self._last
        self.instances[rec.id] = rec
        self._index_add(rec, tags, at_end=True)

    def document(self, slack: int = 0) -> tuple[bytes, list[int]]:
        """The full state file, and each active element's offset in it; each
        active element followed by ``slack`` spaces (room for labels)."""
        pad = b" " * slack
        return codec.encode_document(
            self.provider,
            [r.element() for r in self.nonfunctional.values()],
            [r.element() + pad for r in self.instances.values()]
            if slack
            else [r.element() for r in self.instances.values()],
        )

    def placed_document(self, slack: int, close: Callable[[int], bytes]) -> bytes:
        """The full state file as a rewrite writes it, every active instance placed in it.

        The document of :meth:`document` up to the end of its last element, each active
        element followed by ``slack`` spaces and its record's ``off`` and ``size`` set to
        where it now stands, then ``close(n)`` (the closing bytes, for the ``n`` bytes
        before them) instead of :data:`~._codec_py.TAIL`; the bytes made once."""
        head = codec.encode_document(self.provider, [r.element() for r in self.nonfunctional.values()], [])[0]
        pos = len(head) - len(codec.TAIL)
        parts = [head[:pos]]
        pad = b" " * slack
        sep = b"\n"
        for r in self.instances.values():
            elem = r.element() + pad
            pos += len(sep)
            r.off, r.size = pos, len(elem)
            parts += (sep, elem)
            pos += len(elem)
            sep = b",\n"
        parts.append(close(pos))
        return b"".join(parts)

    # -- reading ---------------------------------------------------------------

    def placed_size(self, extra: int) -> int:
        """The sum of the active instances' ``size`` (their place in the file), ``extra`` more each."""
        return sum(r.size for r in self.instances.values()) + extra * len(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self.instances

    def get(self, instance_id: str) -> Record | None:
        return self.instances.get(instance_id)

    def known(self, instance_id: str) -> bool:
        return instance_id in self.instances or instance_id in self.nonfunctional

    def describe(self, tags: dict[str, str] | None, properties: bool) -> bytes:
        """The Descriptions array of the active instances matching every tag."""
        key: Any = (frozenset(tags.items()) if tags else None, properties)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = codec.join_descriptions(self.select(tags), properties)
        self._cache[key] = answer
        return answer

    def select(self, tags: dict[str, str] | None) -> Iterator[Record] | list[Record]:
        """The active instances having every tag, in array order."""
        if not tags:
            return iter(self.instances.values())
        buckets = []
        index = self._index
        for pair in tags.items():
            by_value = index.get(pair[0])
            bucket = by_value.get(pair[1]) if by_value is not None else None
            if not bucket:
                return []
            buckets.append((len(bucket), pair, bucket))
        buckets.sort(key=lambda b: b[0])
        _, pair, bucket = buckets[0]
        if pair in self._unsorted:
            ordered = sorted(bucket.values(), key=lambda r: r.pos)
            bucket.clear()
            bucket.update((r.id, r) for r in ordered)
            self._unsorted.discard(pair)
        if len(buckets) == 1:
            return list(bucket.values())
        others = [b[2] for b in buckets[1:]]
        return [r for r in bucket.values() if all(r.id in other for other in others)]

    # -- changing ----------------------------------------------------------------

    def append(self, rec: Record, tags: dict[str, str]) -> None:
        self.load(rec, tags)
        self._cache.clear()

    def remove(self, instance_id: str) -> Record:
        rec = self.instances.pop(instance_id)
        self._index_remove(rec)
        self._cache.clear()
        return rec

    def relabel(self, rec: Record, labels: dict[str, str]) -> Record:
        """Add or overwrite tags of an active instance; the returned record replaces ``rec``."""
        desc = orjson.loads(rec.brief)
        old = desc["Tags"]
        tags = {**old, **labels}
        new = Record(rec.id, codec.encode_brief(rec.id, desc["LogicalID"], tags), rec.spec)
        new.pos, new.off, new.size = rec.pos, rec.off, rec.size
        self.instances[rec.id] = new
        # A tag the labels keep as it was: the new record takes the old one's place in its
        # bucket (which stays in array order); the others leave their buckets or join new ones.
        index = self._index
        for key, value in old.items():
            if tags[key] == value:
                index[key][value][rec.id] = new
            else:
                self._unindex(rec, key, value)
        self._index_add(new, {k: v for k, v in tags.items() if old.get(k) != v}, at_end=False)
        self._cache.clear()
        return new

    def to_nonfunctional(self, instance_id: str) -> Record:
        rec = self.remove(instance_id)
        self.nonfunctional[instance_id] = rec
        return rec

    def restore_front(self, instance_id: str) -> Record:
        """A recovered instance goes to the front of the array (first candidate kept)."""
        rec = self.nonfunctional.pop(instance_id)
        self._first -= 1
        rec.pos = self._first
        self.instances = {rec.id: rec, **self.instances}
        self._index_add(rec, rec.tags, at_end=False)
        self._cache.clear()
        return rec

    def drop_nonfunctional(self, instance_id: str) -> Record:
        return self.nonfunctional.pop(instance_id)

    # -- index -------------------------------------------------------------------

    def _index_add(self, rec: Record, tags: dict[str, str], at_end: bool) -> None:
        index = self._index
        for key, value in tags.items():
            by_value = index.get(key)
            if by_value is None:
                index[key] = {value: {rec.id: rec}}
                continue
            bucket = by_value.get(value)
            if bucket is None:
                by_value[value] = {rec.id: rec}
            else:
                bucket[rec.id] = rec
                if not at_end:
                    self._unsorted.add((key, value))

    def _index_remove(self, rec: Record) -> None:
        index = self._index
        for key, value in rec.tags.items():  # _unindex inline: a call per tag costs a destroy more
            by_value = index.get(key)
            bucket = by_value.get(value) if by_value is not None else None
            if bucket is not None:
                bucket.pop(rec.id, None)
                if not bucket:
                    del by_value[value]  # type: ignore[union-attr]
                    if not by_value:
                        del index[key]
                    self._unsorted.discard((key, value))

    def _unindex(self, rec: Record, key: str, value: str) -> None:
        """Take ``rec`` out of the bucket of one of its tags (dropping the bucket if it empties)."""
        index = self._index
        by_value = index.get(key)
        bucket = by_value.get(value) if by_value is not None else None
        if bucket is not None:
            bucket.pop(rec.id, None)
            if not bucket:
                del by_value[value]  # type: ignore[union-attr]
                if not by_value:
                    del index[key]
                self._unsorted.discard((key, value))


def read_elements(
    it: Iterator[bytes], state: State, pos: int, strip_trailer: Callable[[bytes], tuple[bytes, int]], close: bytes
) -> int:
    """The element lines of a file of our own layout (after its head, which
    ended at byte ``pos``) loaded into ``state``, each placed as it is read: where
    the document ends, or -1 if the file is not of our layout or anything in
    it is off (see :func:`.store.file.read_layout`).

    The cyclic garbage collector is paused meanwhile: the hundreds of thousands
    of objects made would trigger collections that find nothing to free (a third
    of a start-up's time)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _read_elements(it, state, pos, strip_trailer, close)
    finally:
        if paused:
            gc.enable()


def _read_elements(
    it: Iterator[bytes], state: State, pos: int, strip_trailer: Callable[[bytes], tuple[bytes, int]], close: bytes
) -> int:
    instances, known = state.instances, state.nonfunctional
    after_comma = False  # the line before ends with the comma that owns the next element
    end = -1
    for line in it:
        start = pos
        pos += len(line)
        # A batch's trailer follows its last element's room (never part of the slot).
        if b"\r" in line:
            line = strip_trailer(line)[0]
        if end >= 0:
            if line.strip(b" "):  # only padding may follow the document
                return -1
            continue
        if line == close:
            end = pos
            continue
        parsed = codec.parse_element(line)
        if parsed is None:
            return -1
        comma, _, instance_id, tags, brief, spec = parsed
        if instance_id is not None:
            # Each live element but the first owns the comma before it.
            if after_comma == (not instances) or instance_id in instances or instance_id in known:
                return -1
            assert brief is not None and tags is not None  # an element always has both
            rec = Record(instance_id, brief, spec)
            # The element's slot runs to the end of its line (its room for labels),
            # short of the comma there, which belongs to the next element.
            rec.off, rec.size = start, len(line) - line.endswith(b"\n") - comma
            state.load(rec, tags)
        after_comma = comma
    if end < 0 or after_comma:
        return -1
    return end
