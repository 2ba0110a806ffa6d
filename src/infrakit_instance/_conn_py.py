"""A connection's work per read (pure-Python twin of ``_conn_c``).

:class:`Core` is the base of the server's ``Connection``: it holds the
connection's state and does what every read does, from the bytes received to
the answer bytes written.  The common read (whole requests, nothing left over,
nothing waiting) is handled here; anything else is handed to the methods the
server's class adds (``_fed``, ``_request``, ``_handle``).  A request whose
answer is fixed (``quick``: a handshake, a Validate of the logical provider) is
answered here, without the dispatcher.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from ._http_py import Request, build_head, build_response
from ._rpc_py import quick
from .logs import conn_id, dump

__all__ = ["MAX_PENDING", "Core", "use"]

log = logging.getLogger("infrakit_instance.server")

#: Pipelined requests in flight per connection before reading pauses.
MAX_PENDING = 128

_POST = b"POST"
_JSON = b"application/json"
_METHOD = b'"method":"'

# The dispatcher's answer types (``infrakit_instance.rpc`` imports this package's twins, so
# the server hands them over once, with :func:`use`).
_Parts: Any = None
_Pending: Any = None


# The quick entries last seen, and their methods as a body's text ends them (``Name"``).
_marks: tuple[Any, tuple[bytes, ...]] = (None, ())


def _mark(entries: tuple[tuple[bytes, bytes, bool], ...]) -> None:
    global _marks
    _marks = (entries, tuple(name + b'"' for name, _, _ in entries))


def use(parts: type, pending: type) -> None:
    """Tell the connections the dispatcher's ``Parts`` and ``Pending``."""
    global _Parts, _Pending
    _Parts, _Pending = parts, pending


class Core:
    __slots__ = (
        "_backlog",
        "_body_bytes",
        "_busy",
        "_busy_since",
        "_closing",
        "_dead",
        "_debug",
        "_dispatch",
        "_held",
        "_last",
        "_paused",
        "_req_start",
        "_slots",
        "_tcp",
        "_waiting",
        "_win_bytes",
        "_win_start",
        "cid",
        "parser",
        "quick",
        "server",
        "transport",
    )

    # Set by the server's class (declared here so the compiled twin can hold them in C).
    _backlog: Any
    _body_bytes: int
    _busy: bool
    _busy_since: float
    _closing: bool
    _dead: bool
    _debug: bool
    _dispatch: Any
    _held: int
    _last: float
    _paused: bool
    _req_start: float
    _slots: Any
    _tcp: bool
    _waiting: Any
    _win_bytes: int
    _win_start: float
    cid: str
    parser: Any
    quick: tuple[tuple[bytes, bytes, bool], ...] | None
    server: Any
    transport: Any

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        # The event loop runs a connection's callbacks in a context of the connection's own
        # (uvloop and asyncio copy one per transport), so the id set here stays for the
        # connection: no set and reset on every read.
        if conn_id.get() is not self.cid:
            conn_id.set(self.cid)
        now = self._last = time.monotonic()
        if self._debug:
            log.debug("<- %s", dump(data))
        parser = self.parser
        if parser.idle:
            if not self._backlog:
                items = parser.feed(data)
                if (
                    items
                    and parser.idle
                    and not self._busy
                    and not self._closing
                    and len(self._slots) + len(items) <= MAX_PENDING
                ):
                    # The common read: whole requests and nothing left over; nothing is
                    # held (no bytes to count), nothing waits in the backlog.
                    quick_entries = self.quick
                    if quick_entries is not None and _marks[0] is not quick_entries:
                        _mark(quick_entries)
                    if quick_entries is not None and len(items) == 1 and not self._slots:
                        # One request, nothing before it: a fixed answer is written as it is.
                        item = items[0]
                        if (
                            type(item) is Request
                            and ((at := item.body.find(_METHOD)) < 0 or item.body.startswith(_marks[1], at + 10))
                            and (answer := self._quick(item, quick_entries)) is not None
                        ):
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
                            # In this twin quick() parses the whole body: it is called only for a
                            # body that names one of its methods where Go's clients put the method.
                            if (
                                quick_entries is not None
                                and ((at := item.body.find(_METHOD)) < 0 or item.body.startswith(_marks[1], at + 10))
                                and (answer := self._quick(item, quick_entries)) is not None
                            ):
                                self._slots.append([answer, False])
                            else:
                                self._request(item)
                        else:
                            self._handle(item)  # type: ignore[attr-defined]
                    self._flush()
                    if self._paused or len(self._slots) >= MAX_PENDING or self._busy or self._backlog:
                        self._update_reading()  # otherwise reading stays on, as it is
                    return
                self._req_start = now
                self._fed(now, data, items, False)  # type: ignore[attr-defined]
                return
            self._req_start = now
        in_body = parser.in_body
        self._fed(now, data, parser.feed(data), in_body)  # type: ignore[attr-defined]

    def _quick(self, req: Any, entries: tuple[tuple[bytes, bytes, bool], ...]) -> bytes | None:
        """The whole response to a request whose answer is fixed, or None (the usual way)."""
        if not req.keep_alive or self.server.stopping or req.method != _POST:
            return None
        path = req.path
        if path.startswith(b"/info/") or path.startswith(b"http://") and b"/info/" in path:
            return None
        ctype = req.content_type
        if ctype is not None and ctype != _JSON:
            return None
        body = quick(req.body, entries)
        if body is None:
            return None
        return build_response(200, body, True)

    # -- requests --------------------------------------------------------------------

    def _request(self, req: Any) -> None:
        server = self.server
        keep_alive = req.keep_alive and not server.stopping
        if self._tcp and not self._guard(req, keep_alive):  # type: ignore[attr-defined]
            if not keep_alive:
                self._closing = True
            return
        path = req.path
        if path.startswith(b"/info/") or path.startswith(b"http://") and b"/info/" in path:
            self._slots.append([self._info(req, keep_alive), not keep_alive])  # type: ignore[attr-defined]
        elif req.method != _POST:
            self._http_error(405, "JSON-RPC requests must use POST", not keep_alive, b"Allow: POST\r\n")  # type: ignore[attr-defined]
        elif (ctype := req.content_type) and ctype != _JSON and ctype.split(b";", 1)[0].strip().lower() != _JSON:
            self._http_error(415, "Content-Type must be application/json", not keep_alive)  # type: ignore[attr-defined]
        else:
            if self._debug:
                log.debug("request: %s", dump(req.body))
            answer = self._dispatch(req.body)
            if answer is None or isinstance(answer, bytes) or isinstance(answer, _Parts):
                self._slots.append([self._respond(answer, keep_alive), not keep_alive])
            else:
                # Answered when the change is durable (Pending) or the work is done (a future).
                slot: list[Any] = [None, not keep_alive]
                self._slots.append(slot)
                server.inflight += 1
                if isinstance(answer, _Pending):
                    # One callback per store batch and connection answers every slot it holds.
                    done = answer.done
                    waiting = self._waiting.get(done)
                    if waiting is None:
                        waiting = self._waiting[done] = []
                        done.add_done_callback(self._batch_done)
                    waiting.append((answer, slot, keep_alive))
                else:
                    answered = self._answered  # type: ignore[attr-defined]
                    answer.add_done_callback(functools.partial(answered, slot=slot, keep_alive=keep_alive))
        if not keep_alive:
            self._closing = True

    def _batch_done(self, done: Any) -> None:
        waiting = self._waiting.pop(done)
        ok = not done.cancelled() and done.exception() is None
        self.server.inflight -= len(waiting)
        respond = self._respond
        for pending, slot, keep_alive in waiting:
            # The batch succeeded: every answer is its Pending's own (settle() without asking
            # the shared future again for each); else each settles to its error.
            slot[0] = respond(pending.answer if ok else pending.settle(), keep_alive)
        self._after_answer()

    def _after_answer(self) -> None:
        self._flush()
        if self._backlog:
            self._process()  # type: ignore[attr-defined]
            self._flush()
        self._update_reading()
        if self.server.stopping:  # only a shutdown waits for the plugin to be idle
            self.server.idle_changed()

    def _respond(self, body: Any, keep_alive: bool) -> bytes | list[bytes]:
        if self._debug:
            log.debug("-> %s", dump(body.join() if isinstance(body, _Parts) else body or b""))
        if type(body) is bytes:
            return build_response(200, body, keep_alive)
        if isinstance(body, _Parts):
            head, middle, tail = tuple.__iter__(body)
            return [build_head(200, len(body), keep_alive) + head, middle, tail]
        return build_response(200, body or b"", keep_alive)

    # -- output ----------------------------------------------------------------------

    def _flush(self) -> None:
        slots = self._slots
        transport = self.transport
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
            out: list[bytes] = []
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

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_pause = self._busy or len(self._slots) >= MAX_PENDING or bool(self._backlog)
        if want_pause and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif not want_pause and self._paused:
            transport.resume_reading()
            self._paused = False
