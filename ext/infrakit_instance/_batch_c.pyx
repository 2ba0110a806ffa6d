# cython: language_level=3
"""The file store's pending batch: a change taken into it (compiled twin of ``_batch_py``).

Same class, same steps: :class:`Core` holds what every change reads and writes in C
and does the per-change work of a provision and a destroy; the store's class adds the
rest.
"""

import asyncio
import collections

from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

from infrakit_instance._codec_c import TAIL
from infrakit_instance._state_c cimport Record, State

__all__ = ["SLACK", "Core", "use"]

#: Spaces after each element, so that most labels rewrite it where it stands.
SLACK = 32
cdef bytes _PAD = b" " * SLACK
cdef Py_ssize_t _TAIL_LEN = len(TAIL)
cdef bytes _PROPERTIES = b',"Properties":'
cdef bytes _CLOSE = b"}"
cdef bytes _COMMA_NL = b",\n"
cdef bytes _NL = b"\n"
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _deque = collections.deque

# The store's errors (``store.file`` imports this module, so it hands them over once, with use()).
cdef object _Stopped = None
cdef object _Error = None
cdef object _Unknown = None


def use(stopped, error, unknown):
    """Tell the cores the store's ``StoreStopped``, ``StoreError`` and ``UnknownInstance``."""
    global _Stopped, _Error, _Unknown
    _Stopped, _Error, _Unknown = stopped, error, unknown


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

    def __cinit__(self, *args, **kwargs):
        self._writes = []
        self._run = []
        self._waiters = []
        self._tip = self._append_from = self._run_end = -1

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
        cdef bytes brief = record.brief
        spec = record.spec
        cdef bytes elem
        if spec is None:
            elem = brief + _PAD  # room for labels: most then fit in place
        else:
            elem = b"".join((brief[:-1], _PROPERTIES, spec, _CLOSE, _PAD))
        cdef Py_ssize_t start = self._tip
        if start < 0:  # the batch's first: right after the last batch's trailer
            start = self._append_from = self._end - _TAIL_LEN
        cdef Py_ssize_t size = PyBytes_GET_SIZE(elem)
        if had_live:
            record.off = start + 2
            self._put(start, _COMMA_NL + elem, False)
            self._tip = start + 2 + size
            self._live += 2 + size
        else:
            record.off = start + 1
            self._put(start, _NL + elem, False)
            self._tip = start + 1 + size
            self._live += 1 + size
        record.size = size
        return self._take()

    def destroy(self, instance_id):
        if self.stopped is not None:
            raise _Stopped(self.stopped)
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
            # The comma before this element goes with it; the newline stays.
            self._put(off - 2, b" \n" + b" " * size, True)
        else:
            # From the newline before it (every element starts a line), so that destroys
            # oldest first make one run of writes: this one goes on from the comma blanked
            # by the destroy before it.
            self._put(off - 1, b"\n" + b" " * size, True)
            nxt = self._first()
            if nxt is not None:
                self._put(nxt.off - 2, b" ", True)  # the new first element has no comma before it
        self._maybe_compact()
        return self._take()

    def _head(self):
        """The first live element (see the pure twin)."""
        return self._first()

    cdef object _first(self):
        order = self._order
        instances = self._state.instances
        if order is None:
            order = self._order = _deque(instances.values())
        while order:
            rec = order[0]
            live = instances.get(rec.id)
            if live is not None and live.pos == rec.pos:  # the same element (a label replaces the record)
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
