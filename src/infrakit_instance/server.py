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
import gc
import hmac
import ipaddress
import itertools
import logging
import os
import resource
import signal
import socket
import stat
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._impl import conn as connection
from ._impl import http
from .logs import conn_id
from .plugin import Plugin
from .provider import BoundedProvider, LogicalProvider, Provider, ProviderError
from .rpc import MAX_BATCH, MAX_BATCH_BYTES, Dispatcher, Parts, Pending
from .state import set_cache_bytes
from .store import FileStore, Store
from .sync import Syncer

__all__ = ["Config", "Connection", "EdgeError", "Server", "SocketInUse", "check_edge", "is_loopback", "run"]

connection.use(Parts, Pending)

log = logging.getLogger(__name__)

_MAX_PENDING = connection.MAX_PENDING  # pipelined requests in flight per connection before reading pauses
_TEXT = b"text/plain; charset=utf-8"


class SocketInUse(Exception):
    """Another live process answers on the socket path."""


class EdgeError(ValueError):
    """A listen address that the edge options do not allow (e.g. remote without a token)."""


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
    # Bounds on what clients can hold (docs: README "The TCP edge and limits").
    request_timeout: float = 30.0  # a request must arrive whole within this, from its first byte
    min_body_rate: int = 1024  # bytes/s a body must keep up, over each RATE_WINDOW
    max_connections: int = 1000
    max_buffered: int = 256 * 1024 * 1024  # request bytes held across all connections
    max_batch: int = MAX_BATCH
    max_batch_bytes: int = MAX_BATCH_BYTES
    describe_cache: int = 64 * 1024 * 1024
    # The TCP edge: a non-loopback address needs allow_remote and a token.
    allow_remote: bool = False
    auth_token: bytes | None = None
    allow_hosts: tuple[str, ...] = ()
    # etcd://host:port,.../prefix instead of the state file, and its options (store.etcd.EtcdOptions).
    store_url: str = ""
    etcd: Any = None


#: Seconds between syncs with a provider other than the logical one, unless configured.
DEFAULT_SYNC_INTERVAL = 60.0
#: Seconds over which a body's rate is measured against --min-body-rate.
RATE_WINDOW = 2.0
#: How long accepting pauses after running out of file descriptors.
EMFILE_PAUSE = 0.5

_ids = itertools.count(1)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one."""
    host = host.strip("[]")
    if host in ("", "localhost"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_edge(config: Config) -> None:
    """Refuse a TCP listener the edge options do not allow; :class:`EdgeError` says why."""
    listen = config.listen
    if not listen.startswith("tcp://"):
        if config.auth_token is not None:
            raise EdgeError("--auth-token-file is for tcp:// listeners (the unix socket's mode is its guard)")
        return
    host = listen[6:].rpartition(":")[0]
    if not is_loopback(host):
        if not config.allow_remote:
            raise EdgeError(
                f"{listen} is not a loopback address: add --allow-remote and --auth-token-file to serve other hosts"
            )
        if config.auth_token is None:
            raise EdgeError(f"{listen} is not a loopback address: --allow-remote needs --auth-token-file")


class Connection(connection.Core, asyncio.Protocol):
    """One client connection: the state and per-read work of :class:`_conn_py.Core` (compiled,
    or its pure twin), and everything else a connection does."""

    __slots__ = ()

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cid = f"c{next(_ids)}"
        self.parser = http.HttpParser(server.config.max_body)
        self.transport: asyncio.Transport | None = None
        self._slots: deque[list[Any]] = deque()
        # The store's batch futures this connection waits on, each with its (pending, slot, keep_alive)s.
        self._waiting: dict[asyncio.Future[None], list[tuple[Pending, list[Any], bool]]] = {}
        self._backlog: deque[Any] = deque()  # parsed requests waiting for the output to drain
        self._closing = False
        self._dead = False  # refused (408/503): nothing more is read
        self._paused = False
        self._busy = False
        self._busy_since = 0.0  # when the client stopped reading our answers
        self._last = time.monotonic()
        self._req_start = -1.0  # when the request being received sent its first byte
        self._body_bytes = 0  # bytes received while a body arrives
        self._win_start = -1.0  # the body-rate window
        self._win_bytes = 0
        self._held = 0  # request bytes this connection counts in server.buffered
        self.quick = server.quick  # what is answered without the dispatcher (None: nothing)
        # Fixed for the server's life, read on every request: held here, not looked up on it.
        self._debug = server.debug
        self._tcp = server.tcp
        self._dispatch = server.dispatcher.handle

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if self.server.debug:
            token = conn_id.set(self.cid)
            log.debug("connection opened")
            conn_id.reset(token)

    def connection_lost(self, exc: Exception | None) -> None:
        token = conn_id.set(self.cid)
        try:
            if self.server.debug:
                log.debug("connection closed%s", f": {exc}" if exc else "")
            self.server.connections.discard(self)
            self.server.connection_closed()
            self._closing = True
            self._dead = True
            self._backlog.clear()
            self._account()
            self.server.idle_changed()
        finally:
            conn_id.reset(token)

    def pause_writing(self) -> None:
        self._busy = True
        self._busy_since = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self._busy = False
        token = conn_id.set(self.cid)
        try:
            self._process()
            self._flush()
            self._update_reading()
        finally:
            conn_id.reset(token)

    def _fed(self, now: float, data: bytes, items: list[Any], in_body: bool) -> None:
        server = self.server
        parser = self.parser
        if in_body or parser.in_body:
            self._body_bytes += len(data)
        if items and not parser.idle:
            self._req_start = now  # a new request began in this read
        if parser.in_body and (not in_body or items):
            self._win_start, self._win_bytes = now, self._body_bytes
        self._backlog.extend(items)
        self._account()
        if parser.buffered and server.buffered > server.config.max_buffered:
            message = (
                f"the plugin holds more than {server.config.max_buffered} bytes of unfinished requests"
                " (--max-buffered); retry later"
            )
            self.refuse(503, message)
            return
        self._process()
        self._flush()
        self._update_reading()

    def _account(self) -> None:
        if self._dead:
            held = 0
        else:
            held = self.parser.buffered
            if self._backlog:
                held += sum(len(getattr(r, "body", b"")) for r in self._backlog)
        if held != self._held:
            self.server.buffered += held - self._held
            self._held = held

    def _process(self) -> None:
        """Handle parsed requests while the answers ahead of them are not piling up."""
        backlog = self._backlog
        if not backlog:
            return
        while backlog and not self._closing and not self._busy and len(self._slots) < _MAX_PENDING:
            self._handle(backlog.popleft())
        if self._closing:
            backlog.clear()
        self._account()

    def _handle(self, item: Any) -> None:
        if item is http.CONTINUE:
            self._slots.append([b"HTTP/1.1 100 Continue\r\n\r\n", False])
        elif isinstance(item, http.HttpError):
            self._http_error(item.status, item.message, True)
            self._closing = True
        else:
            self._request(item)

    def _http_error(self, status: int, message: str, close: bool, extra: bytes = b"") -> None:
        log.info("HTTP %d: %s", status, message)
        body = (message + "\n").encode()
        self._slots.append([http.build_response(status, body, not close, _TEXT, extra), close])

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the answers already due, and close: nothing more is read."""
        self._dead = True
        self._backlog.clear()
        self._account()
        self._http_error(status, message, True)
        self._closing = True
        self._flush()

    def eof_received(self) -> bool | None:
        # A client that half-closes still gets the answers it asked for.
        token = conn_id.set(self.cid)
        try:
            self._process()
            if not self._slots and not self._backlog and self.transport is not None:
                self.transport.close()
            self._closing = True
        finally:
            conn_id.reset(token)
        return True

    # -- requests ------------------------------------------------------------------

    # -- requests: _request (and the answers it waits for) is conn.Core's ---------------

    def _guard(self, req: Any, keep_alive: bool) -> bool:
        """The TCP edge's checks (Host, Origin, token, Content-Type); False if refused (answered)."""
        server = self.server
        close = not keep_alive
        if req.host is None or not server.host_allowed(req.host):
            shown = "none" if req.host is None else repr(req.host.decode("latin-1"))[:200]
            self._http_error(403, f"Host {shown} is not this plugin's address (see --allow-host)", close)
            return False
        if req.origin is not None and not server.origin_allowed(req.origin):
            shown = repr(req.origin.decode("latin-1"))[:200]
            self._http_error(403, f"requests from the web page of origin {shown} are refused", close)
            return False
        expected = server.bearer
        if expected is not None and not hmac.compare_digest(req.authorization or b"", expected):
            self._http_error(
                401, "a valid 'Authorization: Bearer <token>' header is needed", close, b"WWW-Authenticate: Bearer\r\n"
            )
            return False
        if req.method == b"POST" and req.content_type is None:
            self._http_error(415, "Content-Type must be application/json", close)
            return False
        return True

    def _answered(self, fut: asyncio.Future[bytes | None], *, slot: list[Any], keep_alive: bool) -> None:
        self.server.inflight -= 1
        slot[0] = self._respond(fut.result(), keep_alive)
        self._after_answer()

    def _info(self, req: Any, keep_alive: bool) -> bytes:
        if req.method != b"GET":
            return http.build_response(405, b"use GET for /info\n", keep_alive, _TEXT, b"Allow: GET\r\n")
        path = req.path.split(b"?", 1)[0]
        if path.endswith(b"/info/api.json"):
            return http.build_response(200, self.server.api_info, keep_alive)
        if path.endswith(b"/info/functions.json"):
            return http.build_response(200, b"{}", keep_alive)
        return http.build_response(404, b"no such info document\n", keep_alive, _TEXT)

    # -- timeouts and shutdown -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._slots and not self._backlog and self.parser.idle

    def check(self, now: float) -> None:
        """The server's periodic sweep: close what makes no progress."""
        if self._dead or self.transport is None:
            return
        config = self.server.config
        parser = self.parser
        if self._busy and now - self._busy_since > config.request_timeout:
            # The client stopped reading its answers: it cannot hold the connection forever.
            token = conn_id.set(self.cid)
            log.info("closing a connection whose client read no answer for %g s", config.request_timeout)
            conn_id.reset(token)
            self._dead = True
            self.transport.abort()
            return
        if not parser.idle and not self._backlog:
            token = conn_id.set(self.cid)
            try:
                if now - self._req_start > config.request_timeout:
                    self.refuse(
                        408, f"the request did not arrive whole within {config.request_timeout:g} s (--request-timeout)"
                    )
                elif parser.in_body and config.min_body_rate > 0 and now - self._win_start >= RATE_WINDOW:
                    rate = (self._body_bytes - self._win_bytes) / (now - self._win_start)
                    if rate < config.min_body_rate:
                        self.refuse(
                            408,
                            f"the request body arrived at {rate:.0f} bytes/s, below the minimum of"
                            f" {config.min_body_rate} bytes/s (--min-body-rate)",
                        )
                    else:
                        self._win_start, self._win_bytes = now, self._body_bytes
            finally:
                conn_id.reset(token)
        elif self.idle and now - self._last > config.idle_timeout:
            if self.server.debug:
                token = conn_id.set(self.cid)
                log.debug("closing a connection idle for %.0f s", config.idle_timeout)
                conn_id.reset(token)
            self.transport.close()

    def close_when_idle(self) -> None:
        self._closing = True
        if self.idle and self.transport is not None:
            self.transport.close()


class Server:
    """Owns the listening socket, the connections, the plugin and its store."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        set_cache_bytes(config.describe_cache)
        self.store = store or _make_store(config)
        provider = BoundedProvider(config.provider or LogicalProvider(), config.provider_timeout)
        self.plugin = Plugin(self.store, provider, config.name)
        interval = config.sync_interval
        if interval is None:
            interval = 0.0 if provider.logical else DEFAULT_SYNC_INTERVAL
        self.syncer = Syncer(self.store, provider, interval)
        self.election: Any = None  # with etcd and a provider: who runs the sync loop
        self.dispatcher = Dispatcher(self.plugin.methods, config.max_batch, config.max_batch_bytes)
        self.api_info = self.plugin.api_info()
        # Requests whose answer is fixed, answered as they are read (not with debug logging
        # of every body, nor behind the TCP edge's checks).
        entries = self.plugin.quick_answers()
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.tcp = config.listen.startswith("tcp://")
        self.quick = entries if entries and not self.debug and not self.tcp else None
        self.connections: set[Connection] = set()
        self.inflight = 0
        self.store.all_waiting = self.all_waiting
        self.stopping = False
        self.bearer = None if config.auth_token is None else b"Bearer " + config.auth_token
        self.buffered = 0  # request bytes held by all connections
        self.open = 0  # accepted connections not yet closed
        self._hosts: set[str] = set()
        self._port = ""
        self._lsock: socket.socket | None = None
        self._accepting = False
        self._full = False  # paused at --max-connections (logged once per episode)
        self._starved = False  # out of descriptors (logged once per episode)
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None
        self._listen_file: str | None = None
        self._socket_path: str | None = None

    def all_waiting(self) -> bool:
        """Every open connection waits for a store batch (holds a change whose batch is not done
        yet; one that is done is being answered): none can send anything meanwhile.  Asked once
        a batch, it costs nothing per request; it stops at the first connection that does not
        wait, and a batch that every one of many connections waits for holds a change of each."""
        for conn in self.connections:
            for batch in conn._waiting:  # the futures of the batches its changes are in
                if not batch.done():
                    break
            else:
                return False
        return True

    def idle_changed(self) -> None:
        if self._idle is not None and self.stopping and self.inflight == 0:
            self._idle.set()

    # -- the TCP edge ---------------------------------------------------------------

    def host_allowed(self, host: bytes) -> bool:
        text = host.decode("latin-1").lower()
        if text.startswith("["):
            name, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        else:
            name, colon, port_text = text.rpartition(":")
            if not colon:
                name, port_text = text, ""
            port = port_text
        if port is None or (port and port != self._port):
            return False
        return name in self._hosts

    def origin_allowed(self, origin: bytes) -> bool:
        text = origin.decode("latin-1").lower()
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("http", "https") or "/" in rest:
            return False
        return self.host_allowed(rest.encode("latin-1"))

    # -- listening --------------------------------------------------------------------

    async def start(self) -> None:
        check_edge(self.config)
        listen = self.config.listen
        unix_path = None
        if not listen.startswith("tcp://"):
            unix_path = listen[7:] if listen.startswith("unix://") else listen
            os.makedirs(os.path.dirname(os.path.abspath(unix_path)), exist_ok=True)
            claim_socket_path(unix_path)
        _raise_descriptor_limit(self.config.max_connections)
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
        if unix_path is None:
            host, _, port = listen[6:].rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            try:
                sock = socket.create_server((host, int(port)), family=_family(host), backlog=1024)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
            bound = sock.getsockname()
            self._port = str(bound[1])
            self._hosts = {"localhost", "127.0.0.1", "::1", host.lower(), str(bound[0]).lower()}
            self._hosts.update(h.lower() for h in self.config.allow_hosts)
            address = f"tcp://{host}:{bound[1]}" if ":" not in host else f"tcp://[{host}]:{bound[1]}"
            self._listen_file = os.path.join(self.config.plugins_dir, self.config.name + ".listen")
            os.makedirs(self.config.plugins_dir, exist_ok=True)
            # Written beside it and renamed over it: a symlink or file planted at
            # that name is replaced, never followed or written through.
            fd, tmp = tempfile.mkstemp(dir=self.config.plugins_dir, prefix=f".{self.config.name}.listen.")
            with os.fdopen(fd, "w") as f:
                f.write(address)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._listen_file)
            if not is_loopback(host):
                log.warning(
                    "listening on %s, reachable from other hosts: every request needs the bearer token", address
                )
            log.info("listening on %s (discovery file %s)", address, self._listen_file)
        else:
            path = unix_path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o777 & ~self.config.socket_mode)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"cannot listen on unix://{path}: {exc.strerror}") from None
            finally:
                os.umask(old)
            os.chmod(path, self.config.socket_mode)
            sock.listen(1024)
            self._socket_path = path
            log.info("listening on unix://%s, state %s", path, getattr(self.store, "path", "?"))
        sock.setblocking(False)
        self._lsock = sock
        self._resume_accepting()
        self._sweep()

    def _resume_accepting(self) -> None:
        if self._lsock is not None and not self._accepting and not self.stopping:
            asyncio.get_running_loop().add_reader(self._lsock.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._lsock is not None and self._accepting:
            asyncio.get_running_loop().remove_reader(self._lsock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        sock = self._lsock
        assert sock is not None
        loop = asyncio.get_running_loop()
        limit = self.config.max_connections
        for _ in range(128):
            if self.open >= limit:
                if not self._full:
                    self._full = True
                    log.warning("%d connections open (--max-connections): not accepting until one closes", self.open)
                self._pause_accepting()
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._starved:
                        self._starved = True
                        log.warning(
                            "cannot accept a connection: %s (%d open); pausing accepting for %g s at a time until"
                            " descriptors are free",
                            exc.strerror,
                            self.open,
                            EMFILE_PAUSE,
                        )
                    self._pause_accepting()
                    loop.call_later(EMFILE_PAUSE, self._resume_accepting)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log.error("accept failed: %s", exc)
                return
            if self._starved:
                self._starved = False
                log.info("accepting connections again (%d open)", self.open)
            conn.setblocking(False)
            self.open += 1
            loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: Connection(self), conn)
        except Exception as exc:
            log.warning("could not set up an accepted connection: %s", exc)
            conn.close()
            self.connection_closed()

    def connection_closed(self) -> None:
        self.open -= 1
        if self._full and self.open < self.config.max_connections:
            self._full = False
            log.info("below --max-connections again (%d open): accepting", self.open)
            self._resume_accepting()

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check(now)
        c = self.config
        tick = max(0.05, min(1.0, c.request_timeout / 4, c.idle_timeout / 4, RATE_WINDOW / 2))
        self._sweeper = asyncio.get_running_loop().call_later(tick, self._sweep)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, flush the state, clean up."""
        self.stopping = True
        self._pause_accepting()
        if self._lsock is not None:
            self._lsock.close()
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
        if self._sweeper is not None:
            self._sweeper.cancel()
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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _raise_descriptor_limit(connections: int) -> None:
    """Raise the soft limit on open files towards the hard one, to fit ``connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        if soft < want:
            log.warning(
                "the open-file limit (%d) is below --max-connections + 64: clients may be refused for lack of"
                " descriptors",
                soft,
            )


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
        # Handlers before start(): a SIGINT or SIGTERM at any point of it (the
        # socket appears part-way) shuts down cleanly instead of killing the
        # process with the signal's default action.  A stop asked for while a
        # provider's start() or the etcd connection is still pending cancels
        # that wait; the state file's own opening never awaits, so it is never
        # cut short.
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for sig in (signal.SIGHUP, signal.SIGUSR1):  # sync with the provider now
            loop.add_signal_handler(sig, server.syncer.request)
        starting = loop.create_task(server.start())
        stopped = loop.create_task(stop.wait())
        try:
            await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a failed start ends here, with its error
                await stopped
            else:
                log.info("stop asked for while starting")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            stopped.cancel()
        log.info("shutting down")
        await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
