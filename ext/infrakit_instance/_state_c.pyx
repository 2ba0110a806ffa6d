# cython: language_level=3
"""Compiled twin of ``_state_py`` (the instances in memory): the same classes
and behaviour, as cdef classes with typed attributes and no per-instance
``__dict__``; :mod:`.state` re-exports the twin :mod:`._impl` picks."""

import gc

cimport cython

import orjson

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp, memcpy, memset

from infrakit_instance import _codec_c as codec
from infrakit_instance import _state_py
from infrakit_instance._state_py import StateError

__all__ = ["Record", "State", "StateError", "read_elements", "set_cache_bytes"]

cdef object _encode_brief = codec.encode_brief
cdef object _encode_spec = codec.encode_spec
cdef object _element = codec.element
cdef object _parse_element = codec.parse_element
cdef object _join_descriptions = codec.join_descriptions
cdef object _loads = orjson.loads


cdef extern from "Python.h":
    Py_ssize_t PyDict_GET_SIZE(object)
    bint PyUnicode_IS_ASCII(object)
    const void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


cdef inline Py_ssize_t _str_end(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """``p[i]`` opens a JSON string without escapes: the index of its closing quote; else -1."""
    cdef const char* q
    if i >= n or p[i] != 34:
        return -1
    q = <const char*>memchr(p + i + 1, 34, <size_t>(n - i - 1))
    if q == NULL:
        return -1
    return q - p


cdef tuple _brief_parts(bytes brief):
    """``(LogicalID, Tags)`` of a brief description, as ``orjson.loads`` gives them.

    A brief is always ``{"ID":…,"LogicalID":…,"Tags":{…}}`` (``encode_brief`` writes it, or
    orjson in that key order), so one without escapes is read here, without a parse of the
    whole and its ID; anything else (an escape, any surprise) goes to orjson."""
    cdef const char* p = PyBytes_AS_STRING(brief)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(brief)
    cdef Py_ssize_t i, j, k
    cdef object lid, key
    cdef dict tags
    if n < 37 or memcmp(p, b'{"ID":', 6) != 0 or memchr(p, 92, <size_t>n) != NULL:
        return _slow_parts(brief)
    i = _str_end(p, 6, n)
    if i < 0 or n - i < 14 or memcmp(p + i + 1, b',"LogicalID":', 13) != 0:
        return _slow_parts(brief)
    i += 14
    if n - i >= 4 and memcmp(p + i, b"null", 4) == 0:
        lid = None
        i += 4
    else:
        j = _str_end(p, i, n)
        if j < 0:
            return _slow_parts(brief)
        lid = PyUnicode_DecodeUTF8(p + i + 1, j - i - 1, NULL)
        i = j + 1
    if n - i < 11 or memcmp(p + i, b',"Tags":{', 9) != 0:
        return _slow_parts(brief)
    i += 9
    tags = {}
    if p[i] == 125:  # {}
        i += 1
    else:
        while True:
            j = _str_end(p, i, n)
            if j < 0 or j + 1 >= n or p[j + 1] != 58:  # :
                return _slow_parts(brief)
            k = _str_end(p, j + 2, n)
            if k < 0 or k + 1 >= n:
                return _slow_parts(brief)
            key = PyUnicode_DecodeUTF8(p + i + 1, j - i - 1, NULL)
            tags[key] = PyUnicode_DecodeUTF8(p + j + 3, k - j - 3, NULL)
            i = k + 1
            if p[i] == 125:
                i += 1
                break
            if p[i] != 44:  # ,
                return _slow_parts(brief)
            i += 1
    if i != n - 1 or p[i] != 125:
        return _slow_parts(brief)
    return lid, tags


cdef inline Py_ssize_t _placed_len(Record r) noexcept:
    """The length of ``r.element()`` (a ``spec`` of bytes, or None)."""
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(r.brief)
    if r.spec is None:
        return nb
    return (nb - 1 if nb else 0) + 15 + PyBytes_GET_SIZE(<bytes>r.spec)


cdef tuple _slow_parts(bytes brief):
    desc = _loads(brief)
    return desc["LogicalID"], desc["Tags"]


#: Bytes of Describe answers kept for reuse until the state changes (LRU; --describe-cache).
cdef Py_ssize_t _cache_bytes = 64 * 1024 * 1024


def set_cache_bytes(Py_ssize_t limit):
    """Set how many bytes of Describe answers every state's cache keeps; the limit before."""
    global _cache_bytes
    old, _cache_bytes = _cache_bytes, limit
    return old


cdef Record make_record(str instance_id, bytes brief, object spec):
    """``Record(instance_id, brief, spec)`` without the call's argument parsing."""
    cdef Record rec = Record.__new__(Record)
    rec.id = instance_id
    rec.brief = brief
    rec.spec = spec
    rec.pos = 0
    rec.off = -1
    rec.size = 0
    return rec


@cython.no_gc
cdef class Record:
    # Not tracked by the cyclic garbage collector: a record refers to its ID (str), its brief
    # description and Spec (bytes, or None), never to a container that could lead back to it;
    # a state of 100,000 instances is then 100,000 objects fewer for every collection to scan.
    """One instance: its encoded brief description and Spec, and its place."""

    def __init__(self, str instance_id, bytes brief, spec):
        self.id = instance_id
        self.brief = brief
        self.spec = spec
        self.pos = 0
        self.off = -1
        self.size = 0

    @property
    def tags(self):
        return _brief_parts(self.brief)[1]

    def element(self):
        return _element(self.brief, self.spec)

    def description(self):
        """The decoded element, for providers and tools (not the hot path)."""
        return _loads(self.element())

    @classmethod
    def from_description(cls, desc, where):
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
        spec_json = None if spec is None and "Properties" not in desc else _encode_spec(spec)
        return cls(instance_id, _encode_brief(instance_id, logical_id, tags), spec_json), tags


cdef class _AnswerCache:
    """Describe answers by query, least recently used dropped first once they hold
    more than :func:`set_cache_bytes` allows (an answer bigger than that is not kept)."""

    def __init__(self):
        self._answers = {}
        self.size = 0

    cpdef object get(self, object key):
        answer = self._answers.pop(key, None)
        if answer is not None:
            self._answers[key] = answer  # now the most recently used
        return answer

    def __setitem__(self, key, answer):
        limit = _cache_bytes
        if len(answer) > limit:
            return
        answers = self._answers
        self.size += len(answer)
        answers[key] = answer
        while self.size > limit:
            self.size -= len(answers.pop(next(iter(answers))))

    def __len__(self):
        return len(self._answers)

    cpdef clear(self):
        self._answers.clear()
        self.size = 0


cdef class State:
    """Active instances in array order, the non-functional ones, and the Provider object."""

    def __init__(self):
        self.instances = {}
        self.nonfunctional = {}
        self.provider = b"{}"
        self._index = {}
        self._unsorted = set()
        self._cache = _AnswerCache()
        self._first = 0
        self._last = 0

    # -- loading and saving -------------------------------------------------

    @classmethod
    def from_document(cls, doc):
        cdef State state
        cdef Record rec
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

    cpdef load(self, Record rec, dict tags):
        """Add an instance read from a state file at the end (no cache to clear yet)."""
        self._last += 1
        rec.pos = self._last
        self.instances[rec.id] = rec
        self._index_add(rec, tags, True)

    def document(self, slack=0):
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

    def placed_document(self, Py_ssize_t slack, close):
        """The full state file as a rewrite writes it, every active instance placed in it
        (see the pure twin): the records' sizes summed first, then the bytes written once
        into the document, without an element made for any of them."""
        cdef bytes head = codec.encode_document(self.provider, [r.element() for r in self.nonfunctional.values()], [])[0]
        cdef Py_ssize_t start = PyBytes_GET_SIZE(head) - PyBytes_GET_SIZE(codec.TAIL)
        cdef Py_ssize_t pos = start, nb, ns
        cdef Record r
        cdef bytes tail, out
        cdef char* w
        cdef bint first = True
        for r in self.instances.values():
            if r.spec is not None and type(r.spec) is not bytes:
                return _state_py.State.placed_document(self, slack, close)
            pos += (1 if first else 2) + _placed_len(r) + slack
            first = False
        tail = close(pos)
        out = PyBytes_FromStringAndSize(NULL, pos + PyBytes_GET_SIZE(tail))
        w = PyBytes_AS_STRING(out)
        memcpy(w, PyBytes_AS_STRING(head), start)
        pos = start
        first = True
        for r in self.instances.values():
            if first:
                w[pos] = 10
                pos += 1
                first = False
            else:
                w[pos] = 44
                w[pos + 1] = 10
                pos += 2
            r.off = pos
            nb = PyBytes_GET_SIZE(r.brief)
            if r.spec is None:
                memcpy(w + pos, PyBytes_AS_STRING(r.brief), nb)
                pos += nb
            else:
                nb = nb - 1 if nb else 0
                ns = PyBytes_GET_SIZE(<bytes>r.spec)
                memcpy(w + pos, PyBytes_AS_STRING(r.brief), nb)
                memcpy(w + pos + nb, b',"Properties":', 14)
                memcpy(w + pos + nb + 14, PyBytes_AS_STRING(<bytes>r.spec), ns)
                w[pos + nb + 14 + ns] = 125
                pos += nb + 15 + ns
            memset(w + pos, 32, slack)
            pos += slack
            r.size = pos - r.off
        memcpy(w + pos, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
        return out

    # -- reading ---------------------------------------------------------------

    def placed_size(self, Py_ssize_t extra):
        """The sum of the active instances' ``size`` (their place in the file), ``extra`` more each."""
        cdef Py_ssize_t total = 0
        cdef Record rec
        for rec in self.instances.values():
            total += rec.size
        return total + extra * len(self.instances)

    def __len__(self):
        return len(self.instances)

    def __contains__(self, instance_id):
        return instance_id in self.instances

    def get(self, instance_id):
        return self.instances.get(instance_id)

    cpdef bint known(self, object instance_id):
        return instance_id in self.instances or instance_id in self.nonfunctional

    def describe(self, tags, properties):
        """The Descriptions array of the active instances matching every tag."""
        key = (frozenset(tags.items()) if tags else None, properties)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = _join_descriptions(self.select(tags), properties)
        self._cache[key] = answer
        return answer

    def select(self, tags):
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
        buckets.sort(key=_first_item)
        _, pair, bucket = buckets[0]
        if pair in self._unsorted:
            ordered = sorted(bucket.values(), key=_pos)
            bucket.clear()
            bucket.update((r.id, r) for r in ordered)
            self._unsorted.discard(pair)
        if len(buckets) == 1:
            return list(bucket.values())
        others = [b[2] for b in buckets[1:]]
        return [r for r in bucket.values() if all(r.id in other for other in others)]

    # -- changing ----------------------------------------------------------------

    cpdef append(self, Record rec, dict tags):
        self.load(rec, tags)
        self._cache.clear()

    cpdef remove(self, object instance_id):
        cdef Record rec = self.instances.pop(instance_id)
        self._index_remove(rec)
        self._cache.clear()
        return rec

    def relabel(self, Record rec, labels):
        """Add or overwrite tags of an active instance; the returned record replaces ``rec``."""
        cdef Record new
        cdef dict old
        cdef dict tags, index = self._index
        cdef list kept = []
        lid, old = _brief_parts(rec.brief)
        tags = {**old, **labels}
        new = make_record(rec.id, _encode_brief(rec.id, lid, tags), rec.spec)
        new.pos, new.off, new.size = rec.pos, rec.off, rec.size
        self.instances[rec.id] = new
        # As the pure twin: a tag kept as it was keeps the record's place in its bucket.
        for key, value in old.items():
            if tags[key] == value:
                (<dict>(<dict>index[key])[value])[rec.id] = new
                kept.append(key)
            else:
                self._unindex(rec, key, value)
        for key in kept:
            del tags[key]
        self._index_add(new, tags, False)
        self._cache.clear()
        return new

    def to_nonfunctional(self, instance_id):
        rec = self.remove(instance_id)
        self.nonfunctional[instance_id] = rec
        return rec

    def restore_front(self, instance_id):
        """A recovered instance goes to the front of the array (first candidate kept)."""
        cdef Record rec = self.nonfunctional.pop(instance_id)
        self._first -= 1
        rec.pos = self._first
        self.instances = {rec.id: rec, **self.instances}
        self._index_add(rec, rec.tags, False)
        self._cache.clear()
        return rec

    def drop_nonfunctional(self, instance_id):
        return self.nonfunctional.pop(instance_id)

    # -- index -------------------------------------------------------------------

    cpdef _index_add(self, Record rec, dict tags, bint at_end):
        cdef dict index = self._index
        cdef dict by_value, bucket
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

    cpdef _index_remove(self, Record rec):
        if not self._index_drop_brief(rec):
            self._index_drop(rec, <dict>_brief_parts(rec.brief)[1])

    cdef bint _index_drop_brief(self, Record rec) except -1:
        """Take ``rec`` out of the tag index by the tags read from its brief (as
        :func:`_brief_parts` reads them, without making their dict, and finding each tag's
        name among the index's few names by its bytes); False if the brief is not of that
        plain form, perhaps after some of its tags were taken out (taking a tag out twice
        does nothing, so the caller then takes them all out the slow way)."""
        cdef bytes brief = rec.brief
        cdef const char* p = PyBytes_AS_STRING(brief)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(brief)
        cdef Py_ssize_t i, j, k, pos
        cdef dict index = self._index
        cdef dict by_value
        cdef PyObject* name
        cdef PyObject* values
        cdef object key
        if n < 37 or memcmp(p, b'{"ID":', 6) != 0 or memchr(p, 92, <size_t>n) != NULL:
            return False
        i = _str_end(p, 6, n)
        if i < 0 or n - i < 14 or memcmp(p + i + 1, b',"LogicalID":', 13) != 0:
            return False
        i += 14
        if n - i >= 4 and memcmp(p + i, b"null", 4) == 0:
            i += 4
        else:
            i = _str_end(p, i, n)
            if i < 0:
                return False
            i += 1
        if n - i < 11 or memcmp(p + i, b',"Tags":{', 9) != 0:
            return False
        i += 9
        if p[i] == 125:
            return i == n - 2 and p[n - 1] == 125
        while True:
            j = _str_end(p, i, n)
            if j < 0 or j + 1 >= n or p[j + 1] != 58:
                return False
            k = _str_end(p, j + 2, n)
            if k < 0 or k + 1 >= n:
                return False
            by_value = None
            if PyDict_GET_SIZE(index) <= 8:
                # The tag's name among the index's names by its bytes (no str made, no hash)
                pos = 0
                while PyDict_Next(index, &pos, &name, &values):
                    if (PyUnicode_IS_ASCII(<object>name) and PyUnicode_GET_LENGTH(<object>name) == j - i - 1
                            and memcmp(PyUnicode_DATA(<object>name), p + i + 1, <size_t>(j - i - 1)) == 0):
                        key = <object>name
                        by_value = <dict>values
                        break
            if by_value is None:  # a big index, a name not in it, or one not ASCII: looked up
                key = PyUnicode_DecodeUTF8(p + i + 1, j - i - 1, NULL)
                by_value = index.get(key)
            if by_value is not None:
                self._unbucket(rec, by_value, key, PyUnicode_DecodeUTF8(p + j + 3, k - j - 3, NULL))
            i = k + 1
            if p[i] == 125:
                return i == n - 2 and p[n - 1] == 125
            if p[i] != 44:
                return False
            i += 1

    cdef void _index_drop(self, Record rec, dict tags) except *:
        for key, value in tags.items():
            self._unindex(rec, key, value)

    cdef void _unindex(self, Record rec, object key, object value) except *:
        """Take ``rec`` out of the bucket of one of its tags (dropping the bucket if it empties)."""
        cdef dict by_value = self._index.get(key)
        if by_value is not None:
            self._unbucket(rec, by_value, key, value)

    cdef void _unbucket(self, Record rec, dict by_value, object key, object value) except *:
        """``_unindex`` once the tag's name is found: ``by_value`` is the index's entry for ``key``."""
        cdef dict bucket = by_value.get(value)
        if bucket is not None:
            bucket.pop(rec.id, None)
            if not bucket:
                del by_value[value]
                if not by_value:
                    del self._index[key]
                self._unsorted.discard((key, value))


def _first_item(b):
    return b[0]


def _pos(r):
    return (<Record>r).pos


def read_elements(it, State state, Py_ssize_t pos, strip_trailer, bytes close):
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


cdef Py_ssize_t _read_elements(it, State state, Py_ssize_t pos, strip_trailer, bytes close) except -2:
    cdef dict instances = state.instances
    cdef dict known = state.nonfunctional
    cdef bint after_comma = False  # the line before ends with the comma that owns the next element
    cdef bint comma
    cdef Py_ssize_t end = -1, start, n
    cdef Record rec
    cdef tuple parsed
    for line in it:
        start = pos
        n = len(line)
        pos += n
        # A batch's trailer follows its last element's room (never part of the slot).
        if type(line) is bytes:
            if memchr(PyBytes_AS_STRING(line), 13, <size_t>n) != NULL:
                line = strip_trailer(line)[0]
        elif b"\r" in line:
            line = strip_trailer(line)[0]
        if end >= 0:
            if line.strip(b" "):  # only padding may follow the document
                return -1
            continue
        if line == close:
            end = pos
            continue
        parsed = _parse_element(line)
        if parsed is None:
            return -1
        comma = parsed[0]
        instance_id = parsed[2]
        if instance_id is not None:
            # Each live element but the first owns the comma before it.
            if after_comma == (not instances) or instance_id in instances or instance_id in known:
                return -1
            rec = make_record(instance_id, parsed[4], parsed[5])
            # The element's slot runs to the end of its line (its room for labels),
            # short of the comma there, which belongs to the next element.
            rec.off = start
            rec.size = len(line) - line.endswith(b"\n") - comma
            state.load(rec, parsed[3])
        after_comma = comma
    if end < 0 or after_comma:
        return -1
    return end
