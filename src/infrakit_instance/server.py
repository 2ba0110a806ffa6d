"""The HTTP/1.1 server: protocol callbacks on uvloop (asyncio where it is missing).

One :class:`Connection` per client.  Requests are parsed as bytes arrive,
handled as soon as they are complete (so a provision waiting for its fsync
does not hold up a describe on another connection), and answered in the
order they came on each connection, as pipelining requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import signal
import socket
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._impl import http
from .plugin import Plugin
from .provider import BoundedProvider, LogicalProvider, Provider, ProviderError
from .rpc import Dispatcher, Parts, Pending
from .store import FileStore, Store
from .sync import Syncer

__all__ = ["Config", "Connection", "Server", "SocketInUse", "run"]

log = logging.getLogger(__name__)

_MAX_PENDING = 128  # pipelined requests in flight per connection before reading pauses
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


class SocketInUse(Exception):
    """Another live process answers on the socket path."""


@dataclass
class Config:
    name: str = "instance-py"
    listen: str = ""  # unix:///path or tcp://host:port
    state: str = ""
    plugins_dir: str = ""
    fsync: bool = True
    max_body: int = 16 * 1024 * 1024
    idle_timeout: float = 120.0
    socket_mode: int = 0o600
    shutdown_timeout: float = 10.0
    provider: Provider | None = None
    # Provider wiring: every provider call is bounded by provider_timeout (0: unbounded);
    # sync_interval None means 0 (off) for the logical provider, DEFAULT_SYNC_INTERVAL otherwise.
    provider_timeout: float = 30.0
    sync_interval: float | None = None
    # etcd://host:port,.../prefix instead of the state file, and its options (store.etcd.EtcdOptions).
    store_url: str = ""
    etcd: Any = None


#: Seconds between syncs with a provider other than the logical one, unless configured.
DEFAULT_SYNC_INTERVAL = 60.0


class Connection(asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_closing",
        "_last",
        "_paused",
        "_slots",
        "_timer",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = http.HttpParser(server.config.max_body)
        self.transport: asyncio.Transport | None = None
        self._slots: deque[list[Any]] = deque()
        self._closing = False
        self._paused = False
        self._busy = False
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._arm_timer(self.server.config.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.idle_changed()

    def pause_writing(self) -> None:
        self._busy = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._busy = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        self._last = time.monotonic()
        if self.server.debug:
            log.debug("<- %r", data)
        for item in self.parser.feed(data):
            if self._closing:
                break
            if item is http.CONTINUE:
                self._slots.append([b"HTTP/1.1 100 Continue\r\n\r\n", False])
            elif isinstance(item, http.HttpError):
                body = (item.message + "\n").encode()
                self._slots.append([http.build_response(item.status, body, False, _TEXT), True])
                self._closing = True
            else:
                self._request(item)
        self._flush()
        self._update_reading()

    def eof_received(self) -> bool | None:
        # A client that half-closes still gets the answers it asked for.
        if not self._slots and self.transport is not None:
            self.transport.close()
        self._closing = True
        return True

    # -- requests ------------------------------------------------------------------

    def _request(self, req: Any) -> None:
        keep_alive = req.keep_alive and not self.server.stopping
        path = req.path
        if path.startswith(b"/info/") or path.startswith(b"http://") and b"/info/" in path:
            self._slots.append([self._info(req, keep_alive), not keep_alive])
        elif req.method != b"POST":
            body = b"JSON-RPC requests must use POST\n"
            self._slots.append([http.build_response(405, body, keep_alive, _TEXT, b"Allow: POST\r\n"), not keep_alive])
        elif req.content_type and req.content_type.split(b";", 1)[0].strip().lower() != _JSON:
            body = b"Content-Type must be application/json\n"
            self._slots.append([http.build_response(415, body, keep_alive, _TEXT), not keep_alive])
        else:
            answer = self.server.dispatcher.handle(req.body)
            if answer is None or isinstance(answer, (bytes, Parts)):
                self._slots.append([self._respond(answer, keep_alive), not keep_alive])
            else:
                # Answered when the change is durable (Pending) or the work is done (a future).
                slot: list[Any] = [None, not keep_alive]
                self._slots.append(slot)
                self.server.inflight += 1
                if isinstance(answer, Pending):
                    callback = functools.partial(self._settled, pending=answer, slot=slot, keep_alive=keep_alive)
                    answer.done.add_done_callback(callback)
                else:
                    answer.add_done_callback(functools.partial(self._answered, slot=slot, keep_alive=keep_alive))
        if not keep_alive:
            self._closing = True

    def _answered(self, fut: asyncio.Future[bytes | None], *, slot: list[Any], keep_alive: bool) -> None:
        self.server.inflight -= 1
        slot[0] = self._respond(fut.result(), keep_alive)
        self._flush()
        self._update_reading()
        self.server.idle_changed()

    def _settled(self, _: asyncio.Future[None], *, pending: Pending, slot: list[Any], keep_alive: bool) -> None:
        self.server.inflight -= 1
        slot[0] = self._respond(pending.settle(), keep_alive)
        self._flush()
        self._update_reading()
        self.server.idle_changed()

    def _respond(self, body: bytes | Parts | None, keep_alive: bool) -> bytes | list[bytes]:
        if self.server.debug:
            log.debug("-> %s", body.join() if isinstance(body, Parts) else body)
        if isinstance(body, Parts):
            head, middle, tail = tuple.__iter__(body)
            return [http.build_head(200, len(body), keep_alive) + head, middle, tail]
        return http.build_response(200, body or b"", keep_alive)

    def _info(self, req: Any, keep_alive: bool) -> bytes:
        if req.method != b"GET":
            return http.build_response(405, b"use GET for /info\n", keep_alive, _TEXT, b"Allow: GET\r\n")
        path = req.path.split(b"?", 1)[0]
        if path.endswith(b"/info/api.json"):
            return http.build_response(200, self.server.api_info, keep_alive)
        if path.endswith(b"/info/functions.json"):
            return http.build_response(200, b"{}", keep_alive)
        return http.build_response(404, b"no such info document\n", keep_alive, _TEXT)

    # -- output ----------------------------------------------------------------------

    def _flush(self) -> None:
        slots = self._slots
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        while slots and slots[0][0] is not None:
            data, close = slots.popleft()
            if type(data) is list:
                transport.writelines(data)
            else:
                transport.write(data)
            if close:
                slots.clear()
                transport.close()
                return
        if self._closing and not slots:
            transport.close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_pause = self._busy or len(self._slots) >= _MAX_PENDING
        if want_pause and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif not want_pause and self._paused:
            transport.resume_reading()
            self._paused = False

    # -- idle and shutdown -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._slots and self.parser.idle

    def _arm_timer(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.server.config.idle_timeout
        left = self._last + timeout - time.monotonic()
        if left <= 0 and self.idle:
            log.debug("closing a connection idle for %.0f s", timeout)
            self._timer = None
            if self.transport is not None:
                self.transport.close()
            return
        self._arm_timer(max(left, 1.0))

    def close_when_idle(self) -> None:
        self._closing = True
        if self.idle and self.transport is not None:
            self.transport.close()


class Server:
    """Owns the listening socket, the connections, the plugin and its store."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or _make_store(config)
        provider = BoundedProvider(config.provider or LogicalProvider(), config.provider_timeout)
        self.plugin = Plugin(self.store, provider, config.name)
        interval = config.sync_interval
        if interval is None:
            interval = 0.0 if provider.logical else DEFAULT_SYNC_INTERVAL
        self.syncer = Syncer(self.store, provider, interval)
        self.election: Any = None  # with etcd and a provider: who runs the sync loop
        self.dispatcher = Dispatcher(self.plugin.methods)
        self.api_info = self.plugin.api_info()
        self.connections: set[Connection] = set()
        self.inflight = 0
        self.stopping = False
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event | None = None
        self._listen_file: str | None = None
        self._socket_path: str | None = None

    def idle_changed(self) -> None:
        if self._idle is not None and self.stopping and self.inflight == 0:
            self._idle.set()

    async def start(self) -> None:
        listen = self.config.listen
        unix_path = None
        if not listen.startswith("tcp://"):
            unix_path = listen[7:] if listen.startswith("unix://") else listen
            os.makedirs(os.path.dirname(os.path.abspath(unix_path)), exist_ok=True)
            claim_socket_path(unix_path)
        await self.store.open()
        # The loaded state is long-lived and acyclic: keep the cyclic GC from
        # rescanning it on every full collection (cost would grow with the state).
        gc.collect()
        gc.freeze()
        await self.plugin.provider.start()
        if self.config.store_url and not self.plugin.provider.logical:
            from .store.election import Election

            # One sync loop among the replicas: the one holding the election key.
            self.election = Election(self.store, on_elected=self.syncer.start, on_lost=self.syncer.stop)
            self.election.start()
        else:
            self.syncer.start()
        loop = asyncio.get_running_loop()
        if unix_path is None:
            host, _, port = listen[6:].rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            self._server = await loop.create_server(lambda: Connection(self), host, int(port), backlog=1024)
            bound = self._server.sockets[0].getsockname()
            address = f"tcp://{host}:{bound[1]}" if ":" not in host else f"tcp://[{host}]:{bound[1]}"
            self._listen_file = os.path.join(self.config.plugins_dir, self.config.name + ".listen")
            os.makedirs(self.config.plugins_dir, exist_ok=True)
            with open(self._listen_file, "w") as f:
                f.write(address)
            log.info("listening on %s (discovery file %s)", address, self._listen_file)
        else:
            path = unix_path
            old = os.umask(0o777 & ~self.config.socket_mode)
            try:
                self._server = await loop.create_unix_server(lambda: Connection(self), path, backlog=1024)
            finally:
                os.umask(old)
            os.chmod(path, self.config.socket_mode)
            self._socket_path = path
            log.info("listening on unix://%s, state %s", path, getattr(self.store, "path", "?"))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, flush the state, clean up."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self.election is not None:
            await self.election.stop()
        await self.syncer.stop()
        for path in (self._socket_path, self._listen_file):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._idle = asyncio.Event()
        if self.inflight:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.shutdown_timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "%d requests still in flight after %.0f s; stopping anyway",
                    self.inflight,
                    self.config.shutdown_timeout,
                )
        for conn in list(self.connections):
            conn.close_when_idle()
        try:
            await self.plugin.provider.stop()
        except ProviderError as exc:
            log.error("provider: %s", exc)
        await self.store.close()


def _make_store(config: Config) -> Store:
    if config.store_url:
        from .store.etcd import EtcdStore

        return EtcdStore(config.store_url, config.etcd)
    return FileStore(config.state, fsync=config.fsync)


def claim_socket_path(path: str) -> None:
    """Remove a stale socket; refuse if a live process answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another --name/--listen")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another plugin is already listening on {path}; stop it or choose another --name")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: using the slower asyncio event loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(config: Config) -> int:
    """Serve until SIGINT or SIGTERM; the process exit status."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    server = Server(config)

    async def main() -> None:
        await server.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for sig in (signal.SIGHUP, signal.SIGUSR1):  # sync with the provider now
            loop.add_signal_handler(sig, server.syncer.request)
        await stop.wait()
        log.info("shutting down")
        await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
