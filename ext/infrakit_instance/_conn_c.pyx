# cython: language_level=3
"""A connection's work per read (compiled twin of ``_conn_py``).

Same class, same steps: :class:`Core` holds the connection's state in C and does
what every read does, from the bytes received to the answer bytes written; the
reads that are not the common one go to the methods the server's class adds.
"""

import functools
import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.contextvars cimport get_value_no_default
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memcmp
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from infrakit_instance._build cimport has
from infrakit_instance._http_c cimport HttpParser, Request, json_ok
from infrakit_instance._rpc_c cimport PendingCore, quick_answer
from infrakit_instance._http_c import build_head, build_response
from infrakit_instance.logs import conn_id, dump

__all__ = ["MAX_PENDING", "Core", "use"]

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
cdef bytes _ALLOW_POST = b"Allow: POST\r\n"


cdef inline bint _info_path(object path) except -1:
    """``path.startswith(_INFO) or path.startswith(_HTTP) and _INFO in path``: a request for
    the plugin's /info/ pages, by path or absolute URL (read in C for the parser's bytes)."""
    cdef const char* p
    cdef Py_ssize_t n
    if type(path) is not bytes:
        return path.startswith(_INFO) or path.startswith(_HTTP) and _INFO in path
    p = PyBytes_AS_STRING(path)
    n = PyBytes_GET_SIZE(path)
    if n >= 6 and memcmp(p, b"/info/", 6) == 0:
        return True
    return n >= 7 and memcmp(p, b"http://", 7) == 0 and has(<bytes>path, b"/info/", 6)
cdef object _build_response = build_response
cdef object _build_head = build_head
cdef object _partial = functools.partial
cdef object _tuple_iter = tuple.__iter__

# The dispatcher's answer types (``infrakit_instance.rpc`` imports this package's twins, so
# the server hands them over once, with use()).
cdef object _Parts = None
cdef object _Pending = None


def use(parts, pending):
    """Tell the connections the dispatcher's ``Parts`` and ``Pending``."""
    global _Parts, _Pending
    _Parts, _Pending = parts, pending


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
    cdef public bint _debug
    cdef public object _dispatch
    cdef public Py_ssize_t _held
    cdef public double _last
    cdef public bint _paused
    cdef public double _req_start
    cdef public object _slots
    cdef public bint _tcp
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
        cdef object item, answer, quick_entries
        cdef HttpParser parser
        cdef bint in_body
        if self._dead:
            return
        # The event loop runs a connection's callbacks in a context of the connection's own
        # (uvloop and asyncio copy one per transport), so the id set here stays for the
        # connection: no set and reset on every read.
        if get_value_no_default(_conn_id) is not self.cid:
            _conn_id.set(self.cid)
        now = _monotonic()
        self._last = now
        if self._debug:
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
                    if quick_entries is not None and PyList_GET_SIZE(items) == 1 and not self._slots:
                        # One request, nothing before it: a fixed answer is written as it is.
                        item = items[0]
                        if type(item) is Request:
                            answer = self._quick(<Request>item, quick_entries)
                            if answer is not None:
                                if self.transport is not None and not self.transport.is_closing():
                                    self.transport.write(answer)
                                if self._paused:
                                    self._update_reading()
                                return
                            quick_entries = None  # asked once: not a fixed answer
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
        if _info_path(req.path):
            return None
        ctype = req.content_type
        if ctype is not None and ctype is not _JSON and ctype != _JSON:
            return None
        body = quick_answer(req.body, entries)
        if body is None:
            return None
        return json_ok(body)

    # -- requests --------------------------------------------------------------------

    cpdef _request(self, req):
        cdef object server = self.server
        cdef object path, ctype, answer, slot, done, waiting, method
        cdef Request r
        if type(req) is Request:  # the parser's: its fields read in C
            r = <Request>req
            keep_alive_obj, path, method, ctype = r.keep_alive, r.path, r.method, r.content_type
        else:
            keep_alive_obj, path, method, ctype = req.keep_alive, req.path, req.method, req.content_type
        cdef bint keep_alive = keep_alive_obj and not server.stopping
        if self._tcp and not self._guard(req, keep_alive):
            if not keep_alive:
                self._closing = True
            return
        if _info_path(path):
            self._slots.append([self._info(req, keep_alive), not keep_alive])
        elif method is not _POST and method != _POST:
            self._http_error(405, "JSON-RPC requests must use POST", not keep_alive, _ALLOW_POST)
        elif ctype and ctype is not _JSON and ctype != _JSON and ctype.split(b";", 1)[0].strip().lower() != _JSON:
            self._http_error(415, "Content-Type must be application/json", not keep_alive)
        else:
            body = req.body
            if self._debug:
                log.debug("request: %s", _dump(body))
            answer = self._dispatch(body)
            if answer is None or type(answer) is bytes or isinstance(answer, _Parts):
                self._slots.append([self._respond(answer, keep_alive), not keep_alive])
            else:
                # Answered when the change is durable (Pending) or the work is done (a future).
                slot = [None, not keep_alive]
                self._slots.append(slot)
                server.inflight += 1
                if isinstance(answer, _Pending):
                    # One callback per store batch and connection answers every slot it holds.
                    done = (<PendingCore>answer).done if isinstance(answer, PendingCore) else answer.done
                    waiting = self._waiting.get(done)
                    if waiting is None:
                        waiting = self._waiting[done] = []
                        done.add_done_callback(self._batch_done)
                    waiting.append((answer, slot, keep_alive))
                else:
                    answer.add_done_callback(_partial(self._answered, slot=slot, keep_alive=keep_alive))
        if not keep_alive:
            self._closing = True

    def _batch_done(self, done):
        cdef list waiting = self._waiting.pop(done)
        cdef object pending, slot, keep_alive
        cdef bint ok = not done.cancelled() and done.exception() is None
        self.server.inflight -= len(waiting)
        for pending, slot, keep_alive in waiting:
            # The batch succeeded: every answer is its Pending's own (settle() without asking
            # the shared future again for each); else each settles to its error.
            slot[0] = self._respond(
                ((<PendingCore>pending).answer if isinstance(pending, PendingCore) else pending.answer) if ok else pending.settle(),
                keep_alive,
            )
        self._after_answer()

    cpdef _after_answer(self):
        self._flush()
        if self._backlog:
            self._process()
            self._flush()
        self._update_reading()
        if self.server.stopping:  # only a shutdown waits for the plugin to be idle
            self.server.idle_changed()

    cpdef _respond(self, body, keep_alive):
        cdef object head, middle, tail
        if self._debug:
            log.debug("-> %s", _dump(body.join() if isinstance(body, _Parts) else body or b""))
        if type(body) is bytes:
            if keep_alive is True:
                return json_ok(<bytes>body)
            return _build_response(200, body, keep_alive)
        if isinstance(body, _Parts):
            head, middle, tail = _tuple_iter(body)
            return [_build_head(200, len(body), keep_alive) + head, middle, tail]
        return _build_response(200, body or b"", keep_alive)

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
