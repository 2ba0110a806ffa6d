# cython: language_level=3
"""The file store's pending batch: a change taken into it (compiled twin of ``_batch_py``).

Same class, same steps: :class:`Core` holds what every change reads and writes in C
and does the per-change work of a provision and a destroy; the store's class adds the
rest.
"""

import asyncio
import collections

import zlib

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from libc.string cimport memcmp, memcpy, memset
from cpython.list cimport PyList_GET_SIZE

from infrakit_instance._codec_c import TAIL
from infrakit_instance._state_c cimport Record, State

__all__ = ["SLACK", "Core", "span_image", "trailer", "use"]

#: Spaces after each element, so that most labels rewrite it where it stands.
SLACK = 32
cdef bytes _PAD = b" " * SLACK
cdef bytes _SPACE = b" "
cdef Py_ssize_t _SLACK = SLACK
cdef Py_ssize_t _TAIL_LEN = len(TAIL)
cdef bytes _PROPERTIES = b',"Properties":'
cdef Py_ssize_t _PROPERTIES_LEN = len(_PROPERTIES)
cdef bytes _CLOSE = b"}"
cdef bytes _COMMA_NL = b",\n"
cdef bytes _NL = b"\n"
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _crc32 = zlib.crc32
cdef char _SPACES[512]
memset(_SPACES, 32, 512)
cdef unsigned long _SPACES_CRC = zlib.crc32(b" " * 512)
cdef object _deque = collections.deque

# The store's errors and its file layout's numbers (``store.file`` imports this module,
# so it hands them over once, with use()).
cdef object _Stopped = None
cdef object _Error = None
cdef object _Unknown = None
cdef Py_ssize_t _TRAILER = 0, _PAD_KEEP = 0
cdef object _place = None
cdef object _padding = None
cdef Py_ssize_t _COMPACT_MIN = 0


def use(stopped, error, unknown, *, Py_ssize_t trailer, Py_ssize_t pad_keep, place, padding, Py_ssize_t compact_min):
    """Tell the cores the store's ``StoreStopped``, ``StoreError`` and ``UnknownInstance``, and
    its layout (see the pure twin)."""
    global _Stopped, _Error, _Unknown, _TRAILER, _PAD_KEEP, _place, _padding, _COMPACT_MIN
    if trailer != 66:
        raise ValueError("a trailer is 66 bytes: two CRs around 64 bits")
    _Stopped, _Error, _Unknown = stopped, error, unknown
    _TRAILER, _PAD_KEEP, _place, _padding = trailer, pad_keep, place, padding
    _COMPACT_MIN = compact_min


cdef void _put_trailer(char* p, unsigned long length, unsigned long crc) noexcept:
    cdef int i
    p[0] = 13
    for i in range(32):
        p[1 + i] = 9 if (crc >> (31 - i)) & 1 else 32
        p[33 + i] = 9 if (length >> (31 - i)) & 1 else 32
    p[65] = 13


def trailer(length, crc):
    """The trailer of a batch of ``length`` bytes whose crc32 is ``crc`` (see the pure twin)."""
    if length < 0 or crc < 0 or length >> 32 or crc >> 32:
        raise ValueError("a trailer holds a 32-bit length and crc32")
    cdef unsigned long n = length, c = crc
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 66)
    _put_trailer(PyBytes_AS_STRING(out), n, c)
    return out


def span_image(bytes old, list placed, Py_ssize_t first, Py_ssize_t count, Py_ssize_t base, Py_ssize_t new_size,
               Py_ssize_t chunk):
    """A journal span's new bytes and its chunks' crc32 before and after (see the pure twin)."""
    cdef Py_ssize_t n_old = PyBytes_GET_SIZE(old)
    cdef Py_ssize_t size = n_old, start = count * chunk, stop = 0, lo, hi, cut
    cdef object r
    cdef bytes data, image
    cdef char* w
    cdef list offsets = []
    for r in placed:
        data = <bytes?>r.data
        lo = <Py_ssize_t>r.offset - base
        hi = lo + PyBytes_GET_SIZE(data)
        if lo < 0:
            raise ValueError("a write before the span")
        offsets.append(lo)
        if hi > size:
            size = hi
    # The new image: the old bytes, zeros where the writes reach past them, then each write.
    image = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(image)
    memcpy(w, PyBytes_AS_STRING(old), n_old)
    memset(w + n_old, 0, size - n_old)
    for i, r in enumerate(placed):
        data = <bytes>r.data
        lo = offsets[i]
        hi = lo + PyBytes_GET_SIZE(data)
        memcpy(w + lo, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if lo < start:
            start = lo
        if hi > stop:
            stop = hi
    cut = new_size - base
    if cut < 0:
        cut = 0
    if cut > size:
        cut = size
    if stop > new_size - base:
        stop = new_size - base
    joined = (base + start, PyBytes_FromStringAndSize(w + start, stop - start)) if stop > start else None
    # The chunk table's rows (<QII: index, crc before, crc after), written in place.
    cdef bytes table = PyBytes_FromStringAndSize(NULL, count * 16)
    cdef unsigned char* t = <unsigned char*>PyBytes_AS_STRING(table)
    cdef Py_ssize_t k
    for k in range(count):
        _le(t, <unsigned long long>(first + k), 8)
        _le(t + 8, <unsigned long long>_chunk_crc(PyBytes_AS_STRING(old), n_old, k * chunk, chunk), 4)
        _le(t + 12, <unsigned long long>_chunk_crc(w, cut, k * chunk, chunk), 4)
        t += 16
    return joined, table


cdef inline void _le(unsigned char* p, unsigned long long v, int n) noexcept:
    """``v`` in ``n`` little-endian bytes."""
    cdef int i
    for i in range(n):
        p[i] = <unsigned char>(v & 0xFF)
        v >>= 8


cdef unsigned long _chunk_crc(const char* p, Py_ssize_t size, Py_ssize_t at, Py_ssize_t chunk) except? 0:
    """crc32 of the chunk at ``at`` of an image of ``size`` bytes, zero-padded to a whole chunk."""
    cdef Py_ssize_t piece
    if at + chunk <= size:
        if chunk == 512 and p[at] == 32 and memcmp(p + at, _SPACES, 512) == 0:
            return _SPACES_CRC  # blanked by destroys: most chunks a journaled batch writes
        return _crc32(PyMemoryView_FromMemory(<char*>p + at, chunk, PyBUF_READ))
    piece = size - at if at < size else 0
    crc = _crc32(PyMemoryView_FromMemory(<char*>p + at, piece, PyBUF_READ)) if piece else 0
    return _crc32(bytes(chunk - piece), crc)


cdef class Core:
    # Set by the store's class.
    cdef public object _state
    cdef public object _order
    cdef public object _gather
    cdef public object _batch
    cdef public object _wake
    cdef public object stopped
    cdef public list _writes
    cdef public list _run
    cdef public list _waiters
    cdef public Py_ssize_t _tip
    cdef public Py_ssize_t _end
    cdef public Py_ssize_t _append_from
    cdef public Py_ssize_t _live
    cdef public Py_ssize_t _run_end
    cdef public Py_ssize_t _changes
    cdef public Py_ssize_t _want
    cdef public bint _in_place
    cdef public Py_ssize_t _size
    cdef public bint _checked
    cdef public bint _rewrite
    cdef public double compact_ratio
    cdef public Py_ssize_t _relayout_at
    cdef public set _grown

    def __cinit__(self, *args, **kwargs):
        self._writes = []
        self._run = []
        self._waiters = []
        self._tip = self._append_from = self._run_end = self._relayout_at = -1
        self._grown = set()

    @property
    def state(self):
        return self._state

    def _check(self):
        if self.stopped is not None:
            raise _Stopped(self.stopped)

    def provision(self, record, tags):
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        state = self._state
        instance_id = record.id
        cdef bint had_live
        if type(state) is State and type(record) is Record and type(tags) is dict:
            # The compiled state's own methods, called in C.
            if (<State>state).known(instance_id):
                raise _Error(f"instance ID {instance_id} already exists")
            had_live = len((<State>state).instances) > 0
            (<State>state).append(<Record>record, <dict>tags)
        else:
            if state.known(instance_id):
                raise _Error(f"instance ID {instance_id} already exists")
            had_live = len(state) > 0
            state.append(record, tags)
        order = self._order
        if order is not None:
            if len(order) > 2 * len(state) + 1024:  # gone elements pile up behind a long-lived first one
                self._order = None
            else:
                order.append(record)
        cdef Record rec
        cdef bytes brief, data
        cdef Py_ssize_t start = self._tip, size, lead = 2 if had_live else 1, nb, ns
        cdef char* w
        if start < 0:  # the batch's first: right after the last batch's trailer
            start = self._append_from = self._end - _TAIL_LEN
        if type(record) is Record:
            rec = <Record>record
            brief, spec = rec.brief, rec.spec
        else:
            rec = None
            brief, spec = record.brief, record.spec
        # The queued write: a comma unless first, a newline, then the element: the brief
        # description, with the Spec as its Properties, and room for labels (most then fit
        # in place); written once into one bytes object.
        nb = PyBytes_GET_SIZE(brief)
        if spec is None:
            size = nb + _SLACK
            data = PyBytes_FromStringAndSize(NULL, lead + size)
            w = PyBytes_AS_STRING(data)
            if had_live:
                w[0] = 44
            w[lead - 1] = 10
            memcpy(w + lead, PyBytes_AS_STRING(brief), nb)
        elif type(spec) is bytes:
            ns = PyBytes_GET_SIZE(<bytes>spec)
            size = nb - 1 + _PROPERTIES_LEN + ns + 1 + _SLACK
            data = PyBytes_FromStringAndSize(NULL, lead + size)
            w = PyBytes_AS_STRING(data)
            if had_live:
                w[0] = 44
            w[lead - 1] = 10
            memcpy(w + lead, PyBytes_AS_STRING(brief), nb - 1)
            memcpy(w + lead + nb - 1, PyBytes_AS_STRING(_PROPERTIES), _PROPERTIES_LEN)
            memcpy(w + lead + nb - 1 + _PROPERTIES_LEN, PyBytes_AS_STRING(<bytes>spec), ns)
            w[lead + size - _SLACK - 1] = 125
        else:
            data = (_COMMA_NL if had_live else _NL) + b"".join((brief[:-1], _PROPERTIES, spec, _CLOSE, _PAD))
            size = PyBytes_GET_SIZE(data) - lead
        memset(PyBytes_AS_STRING(data) + lead + size - _SLACK, 32, _SLACK)
        if rec is not None:
            rec.off = start + lead
            rec.size = size
        else:
            record.off = start + lead
            record.size = size
        self._put(start, data, False)
        self._tip = start + lead + size
        self._live += lead + size
        return self._take()

    def label(self, instance_id, labels):
        """Add or overwrite tags (see the pure twin): the element rewritten in its slot,
        padded in one allocation, or the batch's relayout marked."""
        cdef object rec, new
        cdef bytes elem, data
        cdef Py_ssize_t n, size, off
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise _Unknown(instance_id)
        new = state.relabel(rec, labels)
        elem = new.element()
        n = PyBytes_GET_SIZE(elem)
        size = rec.size
        off = rec.off
        if n <= size:
            data = PyBytes_FromStringAndSize(NULL, size)
            memcpy(PyBytes_AS_STRING(data), PyBytes_AS_STRING(elem), n)
            memset(PyBytes_AS_STRING(data) + n, 32, size - n)
            self._put(off, data, True)
        else:
            self._live += n - size
            self._relayout_at = off if self._relayout_at < 0 else min(self._relayout_at, off)
            self._grown.add(instance_id)
            self._in_place = True
        return self._take()

    def destroy(self, instance_id):
        cdef Record rec, head, nxt
        cdef State state
        cdef bint first
        cdef Py_ssize_t size, off
        cdef bytes blank
        if self.stopped is not None:
            raise _Stopped(self.stopped)
        if type(self._state) is not State:
            return self._destroy_any(instance_id)
        state = <State>self._state
        found = state.instances.get(instance_id)
        if found is None:
            raise _Unknown(instance_id)
        rec = <Record?>found
        head = self._first()
        first = head is not None and head.id == instance_id
        state.remove(instance_id)
        size = rec.size
        off = rec.off
        self._live -= size + 2
        # Blanked where it stands: with the comma before it (the newline stays) or, for the
        # first element, from the newline before it (every element starts a line), so that
        # destroys oldest first make one run of writes: this one goes on from the comma
        # blanked by the destroy before it.
        blank = PyBytes_FromStringAndSize(NULL, size + (1 if first else 2))
        memset(PyBytes_AS_STRING(blank), 32, PyBytes_GET_SIZE(blank))
        if first:
            PyBytes_AS_STRING(blank)[0] = 10
            self._put(off - 1, blank, True)
            nxt = self._first()
            if nxt is not None:
                self._put(nxt.off - 2, _SPACE, True)  # the new first element has no comma before it
        else:
            PyBytes_AS_STRING(blank)[1] = 10
            self._put(off - 2, blank, True)
        self._maybe_compact()
        return self._take()

    def _destroy_any(self, instance_id):
        """destroy() over a state of the pure twin (tests mix the twins)."""
        state = self._state
        rec = state.get(instance_id)
        if rec is None:
            raise _Unknown(instance_id)
        head = self._first()
        cdef bint first = head is not None and head.id == instance_id
        state.remove(instance_id)
        cdef Py_ssize_t size = rec.size
        cdef Py_ssize_t off = rec.off
        self._live -= size + 2
        if not first:
            self._put(off - 2, b" \n" + b" " * size, True)
        else:
            self._put(off - 1, b"\n" + b" " * size, True)
            nxt = self._first()
            if nxt is not None:
                self._put(nxt.off - 2, _SPACE, True)
        self._maybe_compact()
        return self._take()

    cdef inline void _maybe_compact(self) noexcept:
        # Rewritten whole once the file holds more than compact_ratio times what it would take.
        if self._end > _COMPACT_MIN and self._end > self.compact_ratio * self._live:
            self._rewrite = True

    def _head(self):
        """The first live element (see the pure twin)."""
        return self._first()

    cdef object _first(self):
        cdef object order = self._order
        cdef object live, rec
        cdef dict instances
        if type(self._state) is State:
            instances = (<State>self._state).instances
        else:
            instances = self._state.instances
        if order is None:
            order = self._order = _deque(instances.values())
        while order:
            rec = order[0]
            if type(rec) is Record:
                live = instances.get((<Record>rec).id)
                if live is not None and type(live) is Record and (<Record>live).pos == (<Record>rec).pos:
                    return live  # the same element (a label replaces the record)
            else:
                live = instances.get(rec.id)
                if live is not None and live.pos == rec.pos:
                    return live
            order.popleft()
        return None

    def _queue(self, Py_ssize_t offset, bytes data, bint in_place=True):
        self._put(offset, data, in_place)

    cdef void _put(self, Py_ssize_t offset, bytes data, bint in_place) except *:
        if offset == self._run_end and PyList_GET_SIZE(self._writes):
            # It goes on where the write before it ends (appends, destroys oldest first):
            # one write, joined when the batch is cut (_joined_writes).
            self._run.append(data)
        else:
            if PyList_GET_SIZE(self._run):
                self._join()
            self._writes.append((offset, data))
        self._run_end = offset + PyBytes_GET_SIZE(data)
        if in_place:
            self._in_place = True

    def _join_run(self):
        self._join()

    cdef void _join(self) except *:
        off, data = self._writes[-1]
        self._writes[-1] = (off, b"".join([data, *self._run]))
        self._run = []

    def _joined_writes(self):
        """The pending batch's writes, in the order made, each run of adjacent ones joined."""
        if PyList_GET_SIZE(self._run):
            self._join()
        return self._writes

    def _cut_appends(self):
        """Cut a batch of appends only: sealed, joined and signed at once (see the pure
        twin); the bytes made in one buffer, the checksum written into it."""
        cdef Py_ssize_t pos = self._tip, start = self._append_from, pad, end, reach, size, total, n, k
        cdef list writes = self._writes
        cdef tuple first
        cdef bytes data, out
        cdef char* p
        if pos < 0 or start < 0 or self._in_place or PyList_GET_SIZE(writes) != 1:
            return None
        first = <tuple>writes[0]
        if first[0] != start:
            return None
        pad = _place(pos)
        end = pos + pad + _TRAILER + _TAIL_LEN
        reach = self._end
        size = self._size
        if end + _PAD_KEEP > size:
            size = end + _padding(end)
            total = size - start
        else:
            total = max(end, reach) - start
        n = PyBytes_GET_SIZE(<bytes>first[1])
        for data in self._run:
            n += PyBytes_GET_SIZE(data)
        if n != pos - start:
            raise AssertionError("an append batch's writes run from its first append to its tip")
        out = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(out)
        data = <bytes>first[1]
        k = PyBytes_GET_SIZE(data)
        memcpy(p, PyBytes_AS_STRING(data), k)
        for data in self._run:
            memcpy(p + k, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            k += PyBytes_GET_SIZE(data)
        memset(p + k, 32, pad)
        k += pad
        crc = _crc32(PyMemoryView_FromMemory(p, k, PyBUF_READ))
        _put_trailer(p + k, <unsigned long>k, <unsigned long>crc)
        k += _TRAILER
        memcpy(p + k, PyBytes_AS_STRING(TAIL), _TAIL_LEN)
        k += _TAIL_LEN
        memset(p + k, 32, total - k)  # up to the old end, and the padding grown
        if size != self._size:
            self._size = size
        self._tip = self._append_from = -1
        self._writes = []
        self._run = []
        self._run_end = start + total
        self._end = end
        self._checked = True
        return start, out

    def _waiter(self):
        return self._take()

    cdef object _take(self):
        # One future per batch, shared by all its changes: one completion answers them all.
        self._changes += 1
        if self._gather is not None and self._changes >= self._want:
            self._gather.set()
        fut = self._batch
        if fut is None:
            fut = self._batch = _get_running_loop().create_future()
            self._waiters.append(fut)
            assert self._wake is not None
            self._wake.set()
        return fut
