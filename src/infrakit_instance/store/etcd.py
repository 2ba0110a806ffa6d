"""The etcd store: the state as keys under one etcd prefix, shared by replicas.

Layout under the prefix ``P`` (``--store etcd://host:port,.../P``)::

    P/state/i/<ID>     one key per instance: its state-file element, exactly as
                       the file store writes it; a non-functional or restored
                       instance is {"NonFunctional":..,"Front":..,"Instance":<element>}
    P/state/provider   the Provider object
    P/state/rev        touched last by every change, so that its mod revision is
                       the revision of the last change under P/state/
    P/election/sync    who runs the sync with the provider (a lease key)

Memory holds only what etcd committed.  Every replica loads the prefix once,
then follows a watch from that revision and applies each event to the same
:class:`~infrakit_instance.state.State` the file store keeps, so reads are
served from memory and every replica's order is etcd's revision order:
``Instances`` by creation revision, restored ones at the front by their
``Front`` number.

A change is one operation with one compare guard (a provision's key must not
exist; anything else needs the key at the revision this replica knows).
Concurrent changes share transactions of at most ``max_txn_ops`` operations;
a change is answered only once its transaction is committed and the watch has
applied it here, so a replica sees its own acknowledged writes at once.  A
transaction whose guard failed (another replica got there first) is retried
once the watch has caught up, and each change is judged again on what etcd
holds.  A transaction that etcd does not confirm (no leader, partition,
unreachable) is retried until ``timeout``; then its changes fail with
:class:`StoreError` naming the cause.  Nothing is acknowledged that etcd did
not commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from .._impl import codec
from ..state import Record, State, StateError
from .base import Store, StoreError, UnknownInstance

__all__ = ["EtcdOptions", "EtcdStore", "EtcdURL", "EtcdUnavailable", "connect", "parse_url"]

log = logging.getLogger(__name__)

_WRAP = b'{"NonFunctional":'
_INSTANCE = b',"Instance":'
_PAGE = 2000  # keys per Range request while loading


class EtcdUnavailable(StoreError):
    """etcd could not be reached or did not confirm a change in time."""


# -- where: the URL ---------------------------------------------------------------------


@dataclass
class EtcdURL:
    endpoints: list[tuple[str, int]]
    prefix: str

    def __str__(self) -> str:
        return "etcd://" + ",".join(_hostport(h, p) for h, p in self.endpoints) + self.prefix


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_etcd_url(text: str) -> bool:
    return text.startswith("etcd://")


def parse_url(text: str) -> EtcdURL:
    """``etcd://host:port[,host:port...]/prefix``; ValueError saying what is wrong."""
    if not is_etcd_url(text):
        raise ValueError(f"{text!r} is not an etcd:// URL")
    rest = text[len("etcd://") :]
    hosts, slash, prefix = rest.partition("/")
    if not slash or not prefix.strip("/"):
        raise ValueError(f"{text!r} names no key prefix: use etcd://host:port/some/prefix")
    endpoints = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"{text!r} has an empty endpoint")
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = item.rpartition(":")
            if not host:
                host, port = item, "2379"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoint {item!r} of {text!r} needs a port number")
        endpoints.append((host, int(port)))
    return EtcdURL(endpoints, "/" + unquote(prefix).strip("/"))


@dataclass
class EtcdOptions:
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    #: Bound on one change (retries included), and on each request.
    timeout: float = 5.0
    #: Operations per transaction (etcd's --max-txn-ops, 128 by default).
    max_txn_ops: int = 128
    #: Transactions in flight at once.
    max_inflight: int = 4
    #: Describe waits until this replica has caught up with a quorum revision.
    consistent_reads: bool = False
    #: How long open() waits for etcd (0: forever).
    start_timeout: float = 0.0


# -- the client ----------------------------------------------------------------------------


def _target(endpoints: list[tuple[str, int]]) -> str:
    """A gRPC target for every endpoint: the channel moves to the next one when one fails."""
    addrs: list[str] = []
    family = None
    for host, port in endpoints:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for fam, _, _, _, sockaddr in infos[:1]:
            kind = "ipv6" if fam == socket.AF_INET6 else "ipv4"
            if family not in (None, kind):
                raise StoreError("etcd endpoints must all be IPv4 or all IPv6")
            family = kind
            addrs.append(_hostport(str(sockaddr[0]), port))
    return f"{family}:{','.join(addrs)}"


def _client_class() -> Any:
    try:
        import aetcd  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from aetcd import rpc, watcher  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise StoreError("the etcd store needs the aetcd client: pip install 'infrakit-instance[etcd]'") from None
    import grpc  # type: ignore[import-untyped,import-not-found,unused-ignore]

    class Client(aetcd.Client):  # type: ignore[misc]
        """aetcd's client on a channel to every endpoint, with TLS when asked for."""

        def __init__(self, url: EtcdURL, options: EtcdOptions) -> None:
            super().__init__(
                username=options.user,
                password=options.password,
                timeout=options.timeout,
                options={
                    "grpc.max_receive_message_length": 256 << 20,
                    "grpc.max_send_message_length": 64 << 20,
                    "grpc.initial_reconnect_backoff_ms": 100,
                    "grpc.max_reconnect_backoff_ms": 1000,
                    "grpc.keepalive_time_ms": 5000,
                    "grpc.keepalive_timeout_ms": 3000,
                },
            )
            self._url = url
            self._tls = options
            self.rpc = rpc

        async def connect(self) -> None:  # aetcd's connect(), on our channel
            if self._connected.is_set():
                return
            target = _target(self._url.endpoints)
            opts = list(self._options.items())
            o = self._tls
            if o.cacert or o.cert:

                def read(path: str | None) -> bytes | None:
                    if not path:
                        return None
                    with open(path, "rb") as f:
                        return f.read()

                creds = grpc.ssl_channel_credentials(read(o.cacert), read(o.key), read(o.cert))
                self.channel = rpc.secure_channel(target, creds, options=opts)
            else:
                self.channel = rpc.insecure_channel(target, options=opts)
            if self._username is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                await self.authenticate()
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
            self._connected.set()

        async def authenticate(self) -> None:
            """A fresh token (etcd's simple tokens expire after --auth-token-ttl without use).
            The metadata tuple is replaced, so the watcher's stream keeps its own until it restarts."""
            resp = await self.auth_stub.Authenticate(
                rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
            )
            self.metadata = (("token", resp.token),)
            if self._watcher is not None:
                self._watcher._metadata = self.metadata

    return Client


async def reauthenticate_if_expired(client: Any, exc: BaseException) -> None:
    """Log in again when etcd says the token is no longer valid."""
    if client is not None and client._username is not None and "auth token" in describe_error(exc):
        try:
            await client.authenticate()
            log.info("etcd: the auth token had expired: logged in again")
        except Exception as again:
            log.warning("etcd: could not log in again: %s", describe_error(again))


def describe_error(exc: BaseException) -> str:
    """What went wrong with an etcd request, in a few words."""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            text = details()
            if text:
                return str(text)
        except Exception:
            pass
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        return describe_error(cause)
    return str(exc) or type(exc).__name__


async def connect(url: EtcdURL, options: EtcdOptions, what: str = "etcd") -> Any:
    """A connected client, once etcd answers; retries with backoff, logging what it waits for."""
    client = _client_class()(url, options)
    delay = 0.2
    start = time.monotonic()
    while True:
        try:
            await client.connect()
            await client.kvstub.Range(
                client.rpc.RangeRequest(key=url.prefix.encode() + b"/state/rev"),
                timeout=options.timeout,
                metadata=client.metadata,
            )
            return client
        except Exception as exc:
            waited = time.monotonic() - start
            if options.start_timeout and waited + delay > options.start_timeout:
                await client.close()
                raise EtcdUnavailable(f"etcd at {url} unreachable for {waited:.1f} s: {describe_error(exc)}") from None
            log.warning("%s: waiting for etcd at %s (%s); retrying in %.1f s", what, url, describe_error(exc), delay)
            await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- values ------------------------------------------------------------------------------------


def encode_value(rec: Record, nonfunctional: bool = False, front: int = 0) -> bytes:
    element = rec.element()
    if not nonfunctional and not front:
        return element
    return b'{"NonFunctional":%s,"Front":%d,"Instance":%s}' % (b"true" if nonfunctional else b"false", front, element)


def decode_value(key: str, value: bytes) -> tuple[Record, dict[str, str], bool, int]:
    """The record, its tags, whether it is non-functional, and its Front number."""
    nonfunctional, front, element = False, 0, value
    if value.startswith(_WRAP):
        k = value.find(_INSTANCE)
        head = orjson.loads(value[:k] + b"}") if k > 0 else None
        if not isinstance(head, dict):
            raise StateError(f"etcd key {key}: not an instance value")
        nonfunctional, front = bool(head.get("NonFunctional")), int(head.get("Front") or 0)
        element = value[k + len(_INSTANCE) : -1]
    parsed = codec.parse_element(element)
    if parsed is None or parsed[2] is None:
        try:
            rec, tags = Record.from_description(orjson.loads(element), f"etcd key {key}")
        except orjson.JSONDecodeError as exc:
            raise StateError(f"etcd key {key}: not JSON: {exc}") from None
    else:
        _, _, instance_id, tags_, brief, spec = parsed
        assert instance_id is not None and brief is not None and tags_ is not None
        rec, tags = Record(instance_id, brief, spec), tags_
    return rec, tags, nonfunctional, front


@dataclass
class Meta:
    """What this replica knows of one key."""

    create: int
    mod: int
    nonfunctional: bool
    front: int


def build_state(kvs: Iterable[tuple[bytes, bytes, int, int]], prefix: bytes) -> tuple[State, dict[str, Meta], bytes]:
    """A State of ``(key, value, create_revision, mod_revision)`` under ``prefix``; the keys' metadata
    and the Provider object."""
    ipre = prefix + b"/state/i/"
    provider = b"{}"
    items = []
    for key, value, create, mod in kvs:
        if key == prefix + b"/state/provider":
            provider = value or b"{}"
        elif key.startswith(ipre):
            rec, tags, nf, front = decode_value(key.decode(errors="replace"), value)
            items.append((rec, tags, Meta(create, mod, nf, front)))
    state = State()
    state.provider = provider
    metas: dict[str, Meta] = {}
    active = [it for it in items if not it[2].nonfunctional]
    active.sort(key=lambda it: (0, -it[2].front, "") if it[2].front else (1, it[2].create, it[0].id))
    for rec, tags, meta in active:
        if state.known(rec.id):
            raise StateError(f"etcd prefix {prefix.decode()}: instance {rec.id} appears twice")
        state.load(rec, tags)
        metas[rec.id] = meta
    nonfunctional = sorted((it for it in items if it[2].nonfunctional), key=lambda it: it[2].mod)
    for rec, _, meta in nonfunctional:
        state.nonfunctional[rec.id] = rec
        metas[rec.id] = meta
    return state, metas, provider


# -- changes -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Change:
    kind: str  # provision, destroy, label, functional, forget, provider
    instance_id: str
    future: asyncio.Future[None]
    record: Record | None = None
    tags: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    functional: bool = False
    value: bytes = b""
    front: int = 0
    unsure: bool = False  # an attempt may have committed it
    tries: int = 0
    deadline: float = 0.0
    done: bool = False


@dataclass(eq=False)
class _Waiter:
    revision: int
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EtcdStore(Store):
    """The state under an etcd prefix, followed by a watch (see the module's doc)."""

    def __init__(self, url: EtcdURL | str, options: EtcdOptions | None = None) -> None:
        self.url = parse_url(url) if isinstance(url, str) else url
        self.options = options or EtcdOptions()
        self.path = str(self.url)  # what logs name
        self.prefix = self.url.prefix.encode()
        self._ipre = self.prefix + b"/state/i/"
        self._rev_key = self.prefix + b"/state/rev"
        self._state = State()
        self._meta: dict[str, Meta] = {}
        self._front = 0  # the highest Front number given
        self.client: Any = None
        self.revision = 0  # every change up to here is applied to memory
        self._waiters: list[_Waiter] = []
        self._queue: list[Change] = []
        self._busy: dict[str, Change] = {}  # keys with a change in flight
        self._inflight = 0
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watch: Any = None
        self._closing = False
        self.reloads = 0

    @property
    def state(self) -> State:
        return self._state

    # -- opening and closing ---------------------------------------------------------------

    async def open(self) -> None:
        self.client = await connect(self.url, self.options, "state")
        await self._load()
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(), name="etcd-writer")
        self._watcher = loop.create_task(self._watch_loop(), name="etcd-watch")
        log.info(
            "etcd %s: %d instances, %d non-functional, at revision %d",
            self.url,
            len(self._state),
            len(self._state.nonfunctional),
            self.revision,
        )

    async def _range_all(self) -> tuple[list[tuple[bytes, bytes, int, int]], int]:
        """Every key under P/state/ at one revision (paged), and that revision."""
        rpc = self.client.rpc
        start, end = self.prefix + b"/state/", self.prefix + b"/state0"
        kvs: list[tuple[bytes, bytes, int, int]] = []
        revision = 0
        while True:
            req = rpc.RangeRequest(key=start, range_end=end, limit=_PAGE, revision=revision)
            resp = await self.client.kvstub.Range(
                req, timeout=max(30.0, self.options.timeout), metadata=self.client.metadata
            )
            if not revision:
                revision = resp.header.revision
            kvs.extend((kv.key, kv.value, kv.create_revision, kv.mod_revision) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return kvs, revision
            start = resp.kvs[-1].key + b"\0"

    async def _load(self) -> None:
        kvs, revision = await self._range_all()
        state, meta, _ = build_state(kvs, self.prefix)
        self._state, self._meta = state, meta
        self._front = max((m.front for m in meta.values()), default=0)
        self.revision = revision
        self._release_waiters()

    async def close(self) -> None:
        self._closing = True
        deadline = time.monotonic() + self.options.timeout * 2
        while (self._queue or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in (self._writer, self._watcher, *self._tasks):
            if task is not None:
                task.cancel()
        pending = [t for t in (self._writer, self._watcher, *self._tasks) if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=3.0)
        self._writer = self._watcher = None
        err = StoreError("the store was closed before etcd confirmed the change")
        for ch in self._queue:
            if not ch.future.done():
                ch.future.set_exception(err)
        self._queue = []
        if self.client is not None:
            try:
                # Bounded: a channel to a member that is gone must not hold up the shutdown.
                await asyncio.wait_for(self.client.close(), 3.0)
            except (Exception, asyncio.TimeoutError):
                pass
            self.client = None

    # -- reads ---------------------------------------------------------------------------------

    def read_barrier(self) -> asyncio.Future[None] | None:
        """None when memory may answer now.  Else a future done once every change
        submitted before this read is settled (a read after a change on the same
        connection sees it, as with the file store) and, with consistent reads,
        once this replica has caught up with a quorum revision."""
        pending = [ch.future for ch in self._queue] + [ch.future for ch in self._busy.values()]
        if not self.options.consistent_reads and not pending:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._barrier(fut, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _barrier(self, fut: asyncio.Future[None], pending: list[asyncio.Future[None]]) -> None:
        if pending:
            await asyncio.gather(*(asyncio.shield(p) for p in pending), return_exceptions=True)
        if not self.options.consistent_reads:
            fut.set_result(None)
            return
        try:
            resp = await self.client.kvstub.Range(
                self.client.rpc.RangeRequest(key=self._rev_key),
                timeout=self.options.timeout,
                metadata=self.client.metadata,
            )
            target = resp.kvs[0].mod_revision if resp.kvs else 0
            await asyncio.wait_for(self.caught_up(target), self.options.timeout)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(EtcdUnavailable(f"etcd {self.url}: consistent read failed: {describe_error(exc)}"))
            return
        if not fut.done():
            fut.set_result(None)

    def caught_up(self, revision: int) -> asyncio.Future[None]:
        """Done once memory holds every change up to ``revision``."""
        w = _Waiter(revision)
        if revision <= self.revision:
            w.future.set_result(None)
        else:
            self._waiters.append(w)
        return w.future

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        keep = []
        for w in self._waiters:
            if w.revision <= self.revision:
                if not w.future.done():
                    w.future.set_result(None)
            else:
                keep.append(w)
        self._waiters = keep

    # -- the watch --------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                watch = await self.client.watch(
                    self.prefix + b"/state/", range_end=self.prefix + b"/state0", start_revision=self.revision + 1
                )
                self._watch = watch
                delay = 0.1
                async for event in watch:
                    self._apply(event)
                raise StoreError("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "RevisionCompactedError":
                    log.warning("etcd %s: the watch fell behind a compaction: reloading the prefix", self.url)
                    try:
                        await self._reload()
                    except Exception as again:
                        log.warning("etcd %s: reload failed: %s", self.url, describe_error(again))
                else:
                    await reauthenticate_if_expired(self.client, exc)
                    log.warning(
                        "etcd %s: watch lost at revision %d (%s); resuming in %.1f s",
                        self.url,
                        self.revision,
                        describe_error(exc),
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _reload(self) -> None:
        await self._load()
        self.reloads += 1

    def _apply(self, event: Any) -> None:
        kv = event.kv
        rev = kv.mod_revision
        if rev <= self.revision:
            return  # already loaded
        if rev > self.revision + 1:
            self.revision = rev - 1  # every earlier revision is complete
            self._release_waiters()
        key = kv.key
        if key.startswith(self._ipre):
            try:
                self._apply_instance(key, event.kind == "PUT", kv)
            except StateError as exc:
                log.error("etcd %s: ignoring %s", self.url, exc)
        elif key == self._rev_key:
            self.revision = rev  # written last: the revision is complete
            self._release_waiters()
        elif key == self.prefix + b"/state/provider" and event.kind == "PUT":
            self._state.provider = kv.value or b"{}"

    def _apply_instance(self, key: bytes, put: bool, kv: Any) -> None:
        state = self._state
        instance_id = key[len(self._ipre) :].decode()
        if not put:
            self._meta.pop(instance_id, None)
            if instance_id in state.instances:
                state.remove(instance_id)
            elif instance_id in state.nonfunctional:
                state.drop_nonfunctional(instance_id)
            return
        rec, tags, nf, front = decode_value(key.decode(errors="replace"), kv.value)
        self._meta[instance_id] = Meta(kv.create_revision, kv.mod_revision, nf, front)
        self._front = max(self._front, front)
        if instance_id in state.instances:
            if nf:
                state.to_nonfunctional(instance_id)
                state.nonfunctional[instance_id] = rec
            else:
                _replace(state, rec, tags)
        elif instance_id in state.nonfunctional:
            if nf:
                state.nonfunctional[instance_id] = rec
            else:
                state.nonfunctional[instance_id] = rec
                state.restore_front(instance_id)
        elif nf:
            state.nonfunctional[instance_id] = rec
        elif front:
            state.nonfunctional[instance_id] = rec
            state.restore_front(instance_id)
        else:
            state.append(rec, tags)

    # -- changes ------------------------------------------------------------------------------------

    def _pending(self, instance_id: str) -> Change | None:
        ch = self._busy.get(instance_id)
        for q in self._queue:
            if q.instance_id == instance_id:
                ch = q
        return ch

    def _active(self, instance_id: str) -> bool:
        """Whether the instance is active once every pending change is made."""
        ch = self._pending(instance_id)
        if ch is None:
            return instance_id in self._state.instances
        if ch.kind in ("destroy", "forget"):
            return False
        if ch.kind == "functional":
            return ch.functional
        return True

    def _known(self, instance_id: str) -> bool:
        ch = self._pending(instance_id)
        if ch is None:
            return self._state.known(instance_id)
        return ch.kind not in ("destroy", "forget")

    def _submit(self, ch: Change) -> asyncio.Future[None]:
        ch.deadline = time.monotonic() + self.options.timeout
        self._queue.append(ch)
        assert self._wake is not None
        self._wake.set()
        return ch.future

    def _new(self, kind: str, instance_id: str, **kw: Any) -> Change:
        return Change(kind, instance_id, asyncio.get_running_loop().create_future(), **kw)

    def provision(self, record: Record, tags: dict[str, str]) -> asyncio.Future[None]:
        if self._known(record.id):
            raise StoreError(f"instance ID {record.id} already exists")
        return self._submit(self._new("provision", record.id, record=record, tags=tags))

    def destroy(self, instance_id: str) -> asyncio.Future[None]:
        if not self._active(instance_id):
            raise UnknownInstance(instance_id)
        return self._submit(self._new("destroy", instance_id))

    def label(self, instance_id: str, labels: dict[str, str]) -> asyncio.Future[None]:
        if not self._active(instance_id):
            raise UnknownInstance(instance_id)
        return self._submit(self._new("label", instance_id, labels=labels))

    def set_functional(self, instance_id: str, functional: bool) -> asyncio.Future[None]:
        if functional:
            if not self._known(instance_id) or self._active(instance_id):
                raise UnknownInstance(instance_id)
        elif not self._active(instance_id):
            raise UnknownInstance(instance_id)
        return self._submit(self._new("functional", instance_id, functional=functional))

    def forget(self, instance_id: str) -> asyncio.Future[None]:
        if not self._known(instance_id):
            raise UnknownInstance(instance_id)
        return self._submit(self._new("forget", instance_id))

    def set_provider(self, provider: Any) -> asyncio.Future[None]:
        return self._submit(self._new("provider", "", value=orjson.dumps(provider)))

    # -- the writer -------------------------------------------------------------------------------

    def _plan(self, ch: Change) -> tuple[Any, Any] | str | None:
        """The compare and the operation of a change, judged on memory
        now; a string: why it cannot be made; None: it is already made (an unsure retry)."""
        rpc = self.client.rpc
        state = self._state
        iid = ch.instance_id
        if ch.kind == "provider":
            key = self.prefix + b"/state/provider"
            cmp = rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=-1)
            return cmp, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=ch.value))
        key = self._ipre + iid.encode()
        meta = self._meta.get(iid)
        if ch.kind == "provision":
            assert ch.record is not None
            value = encode_value(ch.record)
            if meta is not None:
                if ch.unsure and state.get(iid) is not None and state.instances[iid].element() == value:
                    return None
                return f"instance ID {iid} already exists"
            ch.value = value
            cmp = rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
            return cmp, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        if meta is None:
            if ch.unsure and ch.kind in ("destroy", "forget"):
                return None
            return f"no such instance: {iid}"
        cmp = rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=meta.mod)
        if ch.kind in ("destroy", "forget"):
            if ch.kind == "destroy" and meta.nonfunctional:
                return f"no such instance: {iid}"
            return cmp, rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        if ch.kind == "label":
            rec = state.get(iid)
            if rec is None:
                return f"no such instance: {iid}"
            assert ch.labels is not None
            desc = orjson.loads(rec.brief)
            new = Record(iid, codec.encode_brief(iid, desc["LogicalID"], {**desc["Tags"], **ch.labels}), rec.spec)
            value = encode_value(new, False, meta.front)
            if ch.unsure and value == encode_value(rec, False, meta.front):
                return None
            ch.value = value
            return cmp, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        # functional
        if ch.functional:
            rec = state.nonfunctional.get(iid)
            if rec is None:
                return None if ch.unsure and iid in state.instances else f"instance {iid} is not non-functional"
            self._front += 1
            ch.front = self._front
            value = encode_value(rec, False, ch.front)
        else:
            rec = state.instances.get(iid)
            if rec is None:
                return None if ch.unsure and iid in state.nonfunctional else f"no such instance: {iid}"
            value = encode_value(rec, True, 0)
        return cmp, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._inflight < self.options.max_inflight:
                batch: list[tuple[Change, Any, Any]] = []
                rest: list[Change] = []
                limit = max(1, self.options.max_txn_ops - 1)  # one op is the revision marker
                for ch in self._queue:
                    if len(batch) >= limit or ch.instance_id in self._busy:
                        rest.append(ch)
                        continue
                    plan = self._plan(ch)
                    if plan is None:
                        self._finish(ch, None)
                    elif isinstance(plan, str):
                        self._finish(ch, StoreError(plan) if "exists" in plan else UnknownInstanceError(plan))
                    else:
                        self._busy[ch.instance_id] = ch
                        batch.append((ch, *plan))
                self._queue = rest
                if not batch:
                    break
                # Events of one transaction come in the order of its operations, and a reload
                # orders instances of one creation revision by key, restored ones by Front:
                # put them in that order, so that following and reloading agree.
                batch.sort(
                    key=lambda b: (
                        (0, 0, b[0].instance_id) if b[0].kind == "provision" else (1, b[0].front, b[0].instance_id)
                    )
                )
                self._inflight += 1
                task = asyncio.get_running_loop().create_task(self._commit(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _finish(self, ch: Change, exc: BaseException | None) -> None:
        ch.done = True
        if not ch.future.done():
            if exc is None:
                ch.future.set_result(None)
            else:
                ch.future.set_exception(exc)

    async def _commit(self, batch: list[tuple[Change, Any, Any]]) -> None:
        rpc = self.client.rpc
        changes = [b[0] for b in batch]
        try:
            req = rpc.TxnRequest(
                compare=[b[1] for b in batch],
                success=[b[2] for b in batch] + [rpc.RequestOp(request_put=rpc.PutRequest(key=self._rev_key))],
            )
            deadline = min(ch.deadline for ch in changes)
            delay = 0.05
            while True:
                left = deadline - time.monotonic()
                try:
                    # Attempts shorter than the bound: a proposal lost with its leader is retried
                    # on the new one (its guard then says whether the lost attempt was made).
                    attempt = min(max(left, 0.05), max(0.5, self.options.timeout / 4))
                    resp = await self.client.kvstub.Txn(req, timeout=attempt, metadata=self.client.metadata)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await reauthenticate_if_expired(self.client, exc)
                    for ch in changes:
                        ch.unsure = True
                    left = deadline - time.monotonic()
                    if left <= delay:
                        err = EtcdUnavailable(
                            f"etcd {self.url} did not confirm the change within {self.options.timeout:g} s:"
                            f" {describe_error(exc)} (not acknowledged; it may still have been made)"
                        )
                        log.error("etcd %s: %d changes failed: %s", self.url, len(changes), describe_error(exc))
                        for ch in changes:
                            self._finish(ch, err)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            revision = resp.header.revision
            # Committed (or judged) at `revision`: answer once memory holds it.
            try:
                await asyncio.wait_for(self.caught_up(revision), max(self.options.timeout, 1.0))
            except asyncio.TimeoutError:
                log.warning("etcd %s: the watch has not delivered revision %d yet: reloading", self.url, revision)
                try:
                    await self._reload()
                except Exception as exc:
                    log.error("etcd %s: reload failed: %s", self.url, describe_error(exc))
            if resp.succeeded:
                for ch in changes:
                    self._finish(ch, None)
                return
            # A guard failed: judge each change again on what memory (now at `revision`) holds.
            for ch in changes:
                ch.tries += 1
                if ch.tries > 20:
                    self._finish(ch, StoreError(f"instance {ch.instance_id}: too many conflicting changes, try again"))
                else:
                    self._queue.append(ch)
        except asyncio.CancelledError:
            for ch in changes:
                self._finish(ch, StoreError("the store was closed before etcd confirmed the change"))
            raise
        except Exception as exc:  # a bug must not leave answers hanging
            log.exception("etcd %s: commit failed", self.url)
            for ch in changes:
                self._finish(ch, StoreError(f"etcd {self.url}: {describe_error(exc)}"))
        finally:
            for ch in changes:
                if self._busy.get(ch.instance_id) is ch:
                    del self._busy[ch.instance_id]
            self._inflight -= 1
            if self._wake is not None:
                self._wake.set()


class UnknownInstanceError(StoreError):
    """A change to an instance that another replica removed or moved first."""


def _replace(state: State, rec: Record, tags: dict[str, str]) -> None:
    """An active instance's new element (a label), in its place."""
    old = state.instances[rec.id]
    rec.pos = old.pos
    state._index_remove(old)
    state.instances[rec.id] = rec
    state._index_add(rec, tags, at_end=False)
    state._cache.clear()


# -- migration --------------------------------------------------------------------------------------


async def read_prefix(url: EtcdURL, options: EtcdOptions) -> tuple[State, int]:
    """The state under an etcd prefix, and how many keys the prefix holds (all of them)."""
    store = EtcdStore(url, options)
    store.client = await connect(url, options, "state")
    try:
        await store._load()
        resp = await store.client.kvstub.Range(
            store.client.rpc.RangeRequest(key=store.prefix + b"/", range_end=store.prefix + b"0", count_only=True),
            timeout=options.timeout,
            metadata=store.client.metadata,
        )
        return store.state, int(resp.count)
    finally:
        await store.client.close()


async def write_prefix(url: EtcdURL, options: EtcdOptions, state: State) -> int:
    """Copy ``state`` into an empty etcd prefix (refused if the prefix holds any key); keys written.
    Order is kept: instances in array order (creation revisions follow it), every one
    restored to the front keeps its place through its Front number."""
    client = await connect(url, options, "migrate")
    rpc = client.rpc
    prefix = url.prefix.encode()
    try:
        marker = rpc.Compare(
            key=prefix + b"/state/rev", target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
        )
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=prefix + b"/state/provider", value=state.provider))]
        for rec in state.nonfunctional.values():
            ops.append(
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=prefix + b"/state/i/" + rec.id.encode(), value=encode_value(rec, True)
                    )
                )
            )
        # Every copied instance gets a Front number in array order, so that order survives
        # (keys written in one transaction share a creation revision); written last first,
        # as a replica following the copy puts each one at the front.
        records = list(state.instances.values())
        n = len(records)
        for i in range(n - 1, -1, -1):
            rec = records[i]
            value = encode_value(rec, False, n - i)
            ops.append(
                rpc.RequestOp(request_put=rpc.PutRequest(key=prefix + b"/state/i/" + rec.id.encode(), value=value))
            )
        resp = await client.kvstub.Range(
            rpc.RangeRequest(key=prefix + b"/", range_end=prefix + b"0", count_only=True),
            timeout=options.timeout,
            metadata=client.metadata,
        )
        if resp.count:
            raise StoreError(f"{url} is not empty ({resp.count} keys): refusing to overwrite it")
        step = max(1, options.max_txn_ops - 1)
        first = True
        for i in range(0, len(ops), step):
            chunk = ops[i : i + step] + [rpc.RequestOp(request_put=rpc.PutRequest(key=prefix + b"/state/rev"))]
            compare = [marker] if first else []
            out = await client.kvstub.Txn(
                rpc.TxnRequest(compare=compare, success=chunk),
                timeout=max(30.0, options.timeout),
                metadata=client.metadata,
            )
            if not out.succeeded:
                raise StoreError(f"{url} was written by someone else during the copy")
            first = False
        return len(ops)
    finally:
        await client.close()


def password_from(file: str | None) -> str | None:
    """The etcd password: from a file, else INFRAKIT_INSTANCE_ETCD_PASSWORD."""
    if file:
        with open(file) as f:
            return f.read().rstrip("\n")
    return os.environ.get("INFRAKIT_INSTANCE_ETCD_PASSWORD")
