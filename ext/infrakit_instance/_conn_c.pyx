# cython: language_level=3
"""A connection's work per read (compiled twin of ``_conn_py``).

Same class, same steps: :class:`Core` holds the connection's state in C and does
what every read does, from the bytes received to the answer bytes written; the
reads that are not the common one go to the methods the server's class adds.
"""

import logging

from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from infrakit_instance._http_c cimport HttpParser, Request, json_ok
from infrakit_instance._rpc_c cimport quick_answer
from infrakit_instance.logs import conn_id, dump

__all__ = ["MAX_PENDING", "Core"]

log = logging.getLogger("infrakit_instance.server")

#: Pipelined requests in flight per connection before reading pauses.
MAX_PENDING = 128
cdef Py_ssize_t _MAX_PENDING = MAX_PENDING

cdef object _conn_id = conn_id
cdef object _dump = dump
cdef bytes _POST = b"POST"
cdef bytes _JSON = b"application/json"
cdef bytes _INFO = b"/info/"
cdef bytes _HTTP = b"http://"


cdef inline double _monotonic() noexcept:
    # time.monotonic()'s clock
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Core:
    # Set by the server's class.
    cdef public object _backlog
    cdef public Py_ssize_t _body_bytes
    cdef public bint _busy
    cdef public double _busy_since
    cdef public bint _closing
    cdef public bint _dead
    cdef public Py_ssize_t _held
    cdef public double _last
    cdef public bint _paused
    cdef public double _req_start
    cdef public object _slots
    cdef public object _waiting
    cdef public Py_ssize_t _win_bytes
    cdef public double _win_start
    cdef public object cid
    cdef public object parser
    cdef public object quick
    cdef public object server
    cdef public object transport

    def data_received(self, data):
        cdef double now
        cdef list items
        cdef object server, item, answer, quick_entries
        cdef HttpParser parser
        cdef bint in_body
        if self._dead:
            return
        # The event loop runs a connection's callbacks in a context of the connection's own
        # (uvloop and asyncio copy one per transport), so the id set here stays for the
        # connection: no set and reset on every read.
        if _conn_id.get() is not self.cid:
            _conn_id.set(self.cid)
        now = _monotonic()
        self._last = now
        server = self.server
        if server.debug:
            log.debug("<- %s", _dump(data))
        parser = <HttpParser?>self.parser
        if parser._idle():
            if not self._backlog:
                items = parser._feed(data)
                if (
                    items
                    and parser._idle()
                    and not self._busy
                    and not self._closing
                    and len(self._slots) + PyList_GET_SIZE(items) <= _MAX_PENDING
                ):
                    # The common read: whole requests and nothing left over; nothing is
                    # held (no bytes to count), nothing waits in the backlog.
                    quick_entries = self.quick
                    for item in items:
                        if self._closing:
                            break
                        if type(item) is Request:
                            if quick_entries is not None:
                                answer = self._quick(<Request>item, quick_entries)
                                if answer is not None:
                                    self._slots.append([answer, False])
                                    continue
                            self._request(item)
                        else:
                            self._handle(item)
                    self._flush()
                    if self._paused or len(self._slots) >= _MAX_PENDING or self._busy or self._backlog:
                        self._update_reading()  # otherwise reading stays on, as it is
                    return
                self._req_start = now
                self._fed(now, data, items, False)
                return
            self._req_start = now
        in_body = parser.in_body
        self._fed(now, data, parser._feed(data), in_body)

    cdef object _quick(self, Request req, object entries):
        """The whole response to a request whose answer is fixed, or None (the usual way)."""
        cdef object path, ctype, body
        if not req.keep_alive or self.server.stopping:
            return None
        if req.method is not _POST and req.method != _POST:
            return None
        path = req.path
        if PyBytes_GET_SIZE(path) != 1 and (
            path.startswith(_INFO) or path.startswith(_HTTP) and _INFO in path
        ):
            return None
        ctype = req.content_type
        if ctype is not None and ctype is not _JSON and ctype != _JSON:
            return None
        body = quick_answer(req.body, entries)
        if body is None:
            return None
        return json_ok(body)

    # -- output ----------------------------------------------------------------------

    cpdef _flush(self):
        cdef object slots = self._slots
        cdef object transport = self.transport
        cdef object slot, data, close
        cdef list out
        if transport is None or transport.is_closing():
            return
        if len(slots) == 1:
            slot = slots[0]
            data = slot[0]
            if type(data) is bytes and not slot[1]:
                # The common turn: one answer ready, the connection stays open.
                slots.clear()
                transport.write(data)
                if self._closing and not self._backlog:
                    transport.close()
                return
        if slots and slots[0][0] is not None:
            # Every answer ready now goes out in one write (uvloop: one writev; big
            # Describe answers stay buffers of their own, not copied).
            out = []
            while slots and slots[0][0] is not None:
                data, close = slots.popleft()
                if type(data) is list:
                    out.extend(data)
                else:
                    out.append(data)
                if close:
                    transport.writelines(out)
                    slots.clear()
                    self._backlog.clear()
                    transport.close()
                    return
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
        if self._closing and not slots and not self._backlog:
            transport.close()

    cpdef _update_reading(self):
        cdef object transport = self.transport
        cdef bint want_pause
        if transport is None or transport.is_closing():
            return
        want_pause = self._busy or len(self._slots) >= _MAX_PENDING or bool(self._backlog)
        if want_pause and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif not want_pause and self._paused:
            transport.resume_reading()
            self._paused = False
