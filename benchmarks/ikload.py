#!/usr/bin/env python3
"""ikload: drive an InfraKit instance plugin the way InfraKit's Go client does, and measure it.

Speaks JSON-RPC 2.0 over HTTP/1.1 on a unix socket (``/path``, ``unix:///path``) or TCP
(``tcp://host:port``), with the Go client's exact request headers. N connections each send one request
at a time (no pipelining, like Go's transport), or with ``--pipeline K`` keep K requests in flight (K
sent in one write, then one more per answer, answers matched in order). Servers that close after
every answer (the C plugin) are detected by a handshake probe and driven with one connection per
request instead (never pipelined).

Command line: ``python benchmarks/ikload.py --help``. Library: :func:`run_load`, :func:`probe`,
:class:`Session`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

try:
    import uvloop
except ImportError:  # the tool still works, only slower; the report says which loop ran
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "METHODS",
    "LoadError",
    "Session",
    "Target",
    "parse_mix",
    "parse_target",
    "probe",
    "run_load",
    "self_test_ceiling",
    "main",
]

# Kinds a --mix may name, and the JSON-RPC method each sends.
METHODS: dict[str, str] = {
    "provision": "Instance.Provision",
    "describe": "Instance.DescribeInstances",
    "describe-group": "Instance.DescribeInstances",
    "describe-props": "Instance.DescribeInstances",
    "destroy": "Instance.Destroy",
    "label": "Instance.Label",
    "validate": "Instance.Validate",
    "handshake": "Handshake.Hello",
    "implements": "Plugin.Implements",
    "handshake-implements": "Handshake.Implements",
}
_NEEDS_OWN_ID = frozenset({"destroy", "label"})

# Go's client headers, in Go's order (see tests/wire). Content-Length is filled per body.
_HEAD = (
    b"POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n"
)
# Every id is in [2**62, 2**63): unsigned, above 2**53 (catches float rounding in servers), always
# 19 digits so a template's Content-Length is fixed, and below 2**63 so jansson (C plugin) parses it.
_ID_LOW = 1 << 62
_ID_SPAN = 1 << 62
_MAX_HEAD = 64 * 1024

_RESULT_HEAD = re.compile(rb'\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"(result|error)"\s*:\s*(.)', re.S)
_ERROR_NULL = re.compile(rb'"error"\s*:\s*null')


class LoadError(Exception):
    """The target could not be driven at all (bad target string, no answer to the probe...)."""


# ---------------------------------------------------------------------------------------------
# Targets, mixes, request templates


@dataclass(frozen=True)
class Target:
    """Where to connect: a unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"tcp://{self.host}:{self.port}"


def parse_target(spec: str) -> Target:
    """``/path``, ``unix:///path`` or ``tcp://host:port``."""
    if spec.startswith("tcp://"):
        host, _, port = spec[6:].rpartition(":")
        if not host or not port.isdigit():
            raise LoadError(f"bad tcp target {spec!r}: want tcp://host:port")
        return Target(host=host.strip("[]"), port=int(port))
    if spec.startswith("unix://"):
        spec = spec[7:]
    if not spec:
        raise LoadError("empty target")
    return Target(path=spec)


def parse_mix(mix: str | Mapping[str, float]) -> dict[str, float]:
    """``"provision=3,destroy=1"`` (a bare name weighs 1) -> ``{"provision": 3.0, "destroy": 1.0}``."""
    items = (
        mix.items()
        if isinstance(mix, Mapping)
        else (
            (name, weight or "1") for name, _, weight in (p.strip().partition("=") for p in mix.split(",") if p.strip())
        )
    )
    out: dict[str, float] = {}
    for name, weight in items:
        if name not in METHODS:
            raise LoadError(f"unknown method {name!r} in mix; known: {', '.join(METHODS)}")
        w = float(weight)
        if w < 0:
            raise LoadError(f"negative weight for {name!r}")
        if w:
            out[name] = out.get(name, 0.0) + w
    if not out:
        raise LoadError("empty mix")
    return out


def _template(method: str, params: bytes) -> tuple[bytes, bytes]:
    """Pre-encoded (HTTP head + body up to the id, body tail) for a 19-digit id."""
    prefix = b'{"jsonrpc":"2.0","method":"%s","params":%s,"id":' % (method.encode(), params)
    return _HEAD % (len(prefix) + 19 + 1), prefix


def _one_off(method: str, params: bytes, rpc_id: int) -> bytes:
    body = b'{"jsonrpc":"2.0","method":"%s","params":%s,"id":%d}' % (method.encode(), params, rpc_id)
    return (_HEAD % len(body)) + body


def _provision_params(group: str) -> bytes:
    # The shape of wire/new-Instance.Provision.txt, with what the group controller really sends:
    # group and config hash tags plus a flavor tag, LogicalID and Attachments null.
    spec = {
        "Properties": {"key": "value", "n": 42},
        "Tags": {"infrakit.config_sha": "abc123", "infrakit.group": group, "role": "worker"},
        "Init": "#!/bin/sh\necho hello\n",
        "LogicalID": None,
        "Attachments": None,
    }
    return orjson.dumps({"Type": "", "Spec": spec})


@dataclass
class Session:
    """What survives between :func:`run_load` calls against one server: the ids it gave us.

    compare.py keeps one per started server so a destroy run can remove what earlier runs provisioned.
    """

    target: Target
    group_size: int = 10
    seed: int | None = None
    keepalive: bool | None = None  # None until the probe has looked
    peer_pid: int | None = None  # the server's pid from SO_PEERCRED, when the probe could see it
    own_ids: collections.deque[str] = field(default_factory=collections.deque)
    provisioned: int = 0  # provisions issued so far; spreads them over groups of group_size
    rng: random.Random = field(init=False)
    tag: str = field(init=False)
    _next_id: int = field(init=False)
    _cache: dict[tuple[str, int], tuple[bytes, bytes]] = field(init=False, default_factory=dict)
    # Ids with a Label in flight, and each such request's bytes -> its id. A destroy passes over
    # them: destroyed first, on another connection, the Label would fail as unknown to no fault of
    # the server's.
    labelling: collections.Counter[str] = field(init=False, default_factory=collections.Counter)
    _label_ids: dict[bytes, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tag = f"{self.rng.getrandbits(24):06x}"  # keeps groups of two sessions on one state apart
        # Random start: the C plugin names instances after the RPC id, so ids must not repeat across runs.
        self._next_id = _ID_LOW + self.rng.randrange(_ID_SPAN // 2)

    def label_done(self, data: bytes) -> None:
        """The Label sent as ``data`` is answered (or failed): its id may be destroyed again."""
        iid = self._label_ids.pop(data, None)
        if iid is not None:
            self.labelling[iid] -= 1
            if not self.labelling[iid]:
                del self.labelling[iid]

    def group_name(self, index: int) -> str:
        return f"ikload-{self.tag}-g{index}"

    def provision(self) -> bytes:
        """An encoded Provision; every ``group_size`` of them share one infrakit.group tag."""
        rpc_id = self._next_id
        self._next_id += 1
        key = ("p", self.provisioned // self.group_size)
        self.provisioned += 1
        tpl = self._cache.get(key) or self._cache.setdefault(
            key, _template(METHODS["provision"], _provision_params(self.group_name(key[1])))
        )
        return b"%s%s%d}" % (tpl[0], tpl[1], rpc_id)

    def request(self, kind: str) -> bytes | None:
        """Encoded request for ``kind``; None when it needs one of our ids and we have none."""
        if kind == "provision":
            return self.provision()
        rpc_id = self._next_id
        self._next_id += 1
        if kind == "describe-group":
            key = ("g", self.rng.randrange(max(1, self.provisioned // self.group_size)))
            tpl = self._cache.get(key) or self._cache.setdefault(
                key,
                _template(
                    METHODS[kind],
                    b'{"Type":"","Tags":{"infrakit.group":"%s"},"Properties":false}' % self.group_name(key[1]).encode(),
                ),
            )
        elif kind in _NEEDS_OWN_ID:
            if not self.own_ids:
                return None
            if kind == "destroy":
                # Oldest first, like the group controller's sorted-ID order, passing over ids being labelled.
                ids = self.own_ids
                for _ in range(len(ids) - 1):
                    if ids[0] not in self.labelling:
                        break
                    ids.rotate(-1)
                iid = ids.popleft()
                params = b'{"Type":"","Instance":%s,"Context":{"Reason":"terminate"}}' % orjson.dumps(iid)
                return _one_off(METHODS[kind], params, rpc_id)
            iid = self.own_ids[self.rng.randrange(len(self.own_ids))]
            params = b'{"Type":"","Instance":%s,"Labels":{"ikload":"%d"}}' % (orjson.dumps(iid), rpc_id)
            data = _one_off(METHODS[kind], params, rpc_id)
            self.labelling[iid] += 1
            self._label_ids[data] = iid
            return data
        else:
            tpl = self._cache.get((kind, 0)) or self._cache.setdefault((kind, 0), _STATIC[kind]())
        return b"%s%s%d}" % (tpl[0], tpl[1], rpc_id)


_STATIC: dict[str, Callable[[], tuple[bytes, bytes]]] = {
    "describe": lambda: _template(METHODS["describe"], b'{"Type":"","Tags":null,"Properties":false}'),
    "describe-props": lambda: _template(METHODS["describe"], b'{"Type":"","Tags":null,"Properties":true}'),
    "validate": lambda: _template(
        METHODS["validate"], b'{"Type":"","Properties":{"exampleInt":1,"exampleString":"a_string"}}'
    ),
    "handshake": lambda: _template(METHODS["handshake"], b"{}"),
    "implements": lambda: _template(METHODS["implements"], b"{}"),
    "handshake-implements": lambda: _template(METHODS["handshake-implements"], b"{}"),
}


def _classify(body: bytes) -> int | None:
    """None when ``body`` is a JSON-RPC success with a non-null result, else the error code.

    Avoids parsing big describe answers: a result-first body (ours compact, the C plugin's with
    spaces and a trailing ``"error": null``) is judged from its head and tail. Anything else is parsed.
    """
    m = _RESULT_HEAD.match(body, 0, 256)
    if m is not None and m.group(1) == b"result" and m.group(2) != b"n":
        tail = body[-256:]
        if b'"error"' not in tail or _ERROR_NULL.search(tail):
            return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _BAD
    if not isinstance(doc, dict):
        return _BAD
    if doc.get("result") is not None and doc.get("error") is None:
        return None
    err = doc.get("error")
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        return int(err["code"])
    return _BAD


_BAD = 1 << 40  # sentinel code: not a JSON-RPC response at all
_STREAM_OVER = 64 * 1024  # answers at least this big are streamed, not buffered
_ID_TAIL = 96  # an answer's id is within its last bytes (ours compact; the C plugin's spaced, before "error")
_KEEP = 256  # bytes of a streamed answer's head and tail that are kept for _classify
# A _Conn's transport until connection_made; a bare Transport whose methods all raise.
_NO_TRANSPORT = asyncio.Transport()
# Answer heads seen, each with what it parses to: (status, Content-Length, server closes after it).
_HEADS: dict[bytes, tuple[int, int, bool]] = {}
_HEADS_MAX = 256
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Statistics


class _Phase:
    """Counters of one timed (or warmup, or prefill) part."""

    __slots__ = (
        "lat",
        "errors",
        "count",
        "ok",
        "bytes",
        "substituted",
        "t0",
        "t1",
        "cpu0",
        "cpu1",
        "server_cpu0",
        "server_cpu1",
    )

    def __init__(self, kinds: list[str]) -> None:
        self.lat: dict[str, list[float]] = {k: [] for k in kinds}
        self.errors: collections.Counter[str] = collections.Counter()
        self.count = 0
        self.ok = 0
        self.bytes = 0
        self.substituted = 0
        self.t0 = self.t1 = time.perf_counter()
        self.cpu0 = self.cpu1 = time.process_time()
        self.server_cpu0: float | None = None
        self.server_cpu1: float | None = None

    def server_cpu(self) -> dict[str, Any] | None:
        """The server's CPU time over this phase: total, per answered request, and in cores."""
        if self.server_cpu0 is None or self.server_cpu1 is None:
            return None
        used = max(0.0, self.server_cpu1 - self.server_cpu0)
        wall = max(self.t1 - self.t0, 1e-9)
        return {
            "seconds": round(used, 3),
            "us_per_request": round(used / self.count * 1e6, 2) if self.count else None,
            "cores": round(used / wall, 3),
            "resolution_s": round(1 / _CLK_TCK, 4),
        }

    def report(self) -> dict[str, Any]:
        wall = max(self.t1 - self.t0, 1e-9)
        every = sorted(x for v in self.lat.values() for x in v)
        by_method = {}
        for kind, v in self.lat.items():
            v.sort()
            by_method[kind] = {"count": len(v), **_percentiles(v)}
        return {
            "seconds": round(wall, 4),
            "requests": self.count,
            "ok": self.ok,
            "rps": round(self.count / wall, 1),
            "ok_rps": round(self.ok / wall, 1),
            "latency_ms": _percentiles(every),
            "by_method": by_method,
            "errors": dict(self.errors.most_common()),
            "error_total": sum(self.errors.values()),
            "substituted": self.substituted,
            "response_bytes": self.bytes,
            "response_bytes_per_s": round(self.bytes / wall),
            # Near 1.0 means ikload itself was the bottleneck.
            "client_cpu": round((self.cpu1 - self.cpu0) / wall, 3),
            # The server's user+system time (and its children's) over the phase, from /proc/PID/stat.
            "server_cpu": self.server_cpu(),
        }


def _percentiles(sorted_s: list[float]) -> dict[str, float | None]:
    if not sorted_s:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    n = len(sorted_s)

    def rank(q: float) -> float:  # nearest-rank percentile
        return round(sorted_s[max(0, math.ceil(q * n) - 1)] * 1e3, 3)

    return {
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": rank(1.0),
        "mean": round(sum(sorted_s) / n * 1e3, 3),
    }


def _read_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode()):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_ticks(pid: int) -> tuple[int, int] | None:
    """(utime+stime, cutime+cstime) of ``pid`` in clock ticks, from /proc/PID/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:  # fields 14-17 of proc(5), counted from the state (field 3) here
        return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except (OSError, ValueError):
            pass
    return kids


def server_cpu_seconds(pid: int) -> float | None:
    """CPU time (user+system) used so far by ``pid``, its live descendants and the children they reaped.

    From /proc/PID/stat (clock-tick resolution, usually 10 ms); None if ``pid`` is gone. A child that
    exits between two readings moves from "live" to its parent's reaped total, so differences stay right
    once it is reaped.
    """
    own = _stat_ticks(pid)
    if own is None:
        return None
    total = own[0] + own[1]
    todo, seen = _children(pid), {pid}
    while todo:
        kid = todo.pop()
        if kid in seen:
            continue
        seen.add(kid)
        t = _stat_ticks(kid)
        if t is not None:
            total += t[0] + t[1]  # its own time and that of the children it reaped
            todo.extend(_children(kid))
    return total / _CLK_TCK


def peer_pid(sock: Any) -> int | None:
    """The pid of the process on the other end of a connected unix socket (SO_PEERCRED), if known."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None or sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except (OSError, AttributeError, TypeError):
        return None
    pid = int(struct.unpack("3i", raw)[0])
    # 0 when the server is in another pid namespace; check it is a process we can read.
    return pid if pid > 0 and os.path.exists(f"/proc/{pid}/stat") else None


# ---------------------------------------------------------------------------------------------
# The connection: an asyncio Protocol parsing HTTP/1.x answers incrementally


class _Conn(asyncio.Protocol):
    """One connection; its requests in flight are answered in the order they were sent."""

    __slots__ = (
        "drv",
        "transport",
        "buf",
        "q",
        "out",
        "corked",
        "served",
        "closed",
        "status",
        "head_end",
        "need",
        "close_after",
        "chunk_pos",
        "chunks",
        "skip",
        "skipped_head",
        "skipped_tail",
        "skipped_total",
    )

    def __init__(self, drv: _Driver | _Probe) -> None:
        self.drv = drv
        self.transport: asyncio.Transport = _NO_TRANSPORT
        self.buf = bytearray()
        # The requests in flight, oldest first: (kind, the bytes sent, kept in case they must be
        # resent, and when they were sent).
        self.q: collections.deque[tuple[str, bytes, float]] = collections.deque()
        self.out: list[bytes] = []  # requests issued while answers are being read: one write after
        self.corked = False
        self.served = 0
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head_end = -1
        self.need = 0  # body bytes wanted; -1 chunked, -2 until EOF
        self.close_after = False
        self.chunk_pos = 0
        self.chunks: list[bytes] = []
        self.skip = 0  # body bytes still to stream past without keeping them
        self.skipped_head = b""
        self.skipped_tail = b""
        self.skipped_total = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def in_flight(self) -> bool:
        return bool(self.q)

    def send(self, kind: str, data: bytes) -> None:
        self.q.append((kind, data, time.perf_counter()))
        if self.corked:
            self.out.append(data)
        else:
            self.transport.write(data)  # one write: the C plugin reads a request with a single recv()

    def send_many(self, batch: list[tuple[str, bytes]]) -> None:
        """Pipelined: every request of ``batch`` in one write."""
        now = time.perf_counter()
        self.q.extend((kind, data, now) for kind, data in batch)
        self.transport.write(b"".join(data for _, data in batch))

    def data_received(self, data: bytes) -> None:
        # What the answers of this read make the driver issue on this connection leaves in one write.
        self.corked = True
        try:
            self._received(data)
        finally:
            self.corked = False
            if self.out:
                out = self.out[0] if len(self.out) == 1 else b"".join(self.out)
                self.out.clear()
                if not self.closed and not self.transport.is_closing():
                    self.transport.write(out)

    def _received(self, data: bytes) -> None:
        if not self.q:
            self.drv.fail(self, "bad-response")  # bytes nobody asked for: the stream is out of step
            return
        if self.skip:
            self._stream(data)
            return
        buf = self.buf
        buf += data
        while self.q:
            if self.head_end < 0 and not self._parse_head():
                return
            if self.need >= 0:
                end = self.head_end + self.need
                if len(buf) < end:
                    if self.need >= _STREAM_OVER and len(buf) - self.head_end >= _KEEP:
                        self._start_streaming(end)
                    return
                body = bytes(buf[self.head_end : end])
            elif self.need == -1:
                chunked = self._parse_chunks()
                if chunked is None:
                    return
                body = chunked
                end = self.chunk_pos
            else:
                return  # body runs to EOF
            nbytes = end
            del buf[:end]
            self._finish(body, nbytes)

    def _start_streaming(self, end: int) -> None:
        """A big answer (a Describe of thousands): keep its head and tail only.

        Copying megabytes per answer made the tool, not the server, the bottleneck;
        :func:`_classify` judges a success from the head and the tail anyway."""
        buf = self.buf
        self.skipped_head = bytes(buf[self.head_end : self.head_end + _KEEP])
        self.skipped_tail = bytes(buf[-_KEEP:])
        self.skipped_total = end
        self.skip = end - len(buf)
        buf.clear()

    def _stream(self, data: bytes) -> None:
        take = min(self.skip, len(data))
        self.skip -= take
        piece = data[:take] if take < len(data) else data
        self.skipped_tail = (self.skipped_tail + piece[-_KEEP:])[-_KEEP:]
        if self.skip:
            return
        self._finish(self.skipped_head + self.skipped_tail, self.skipped_total)
        if take < len(data):
            self._received(data[take:])

    def _parse_head(self) -> bool:
        buf = self.buf
        crlf = buf.find(b"\r\n\r\n")
        if crlf >= 0:
            # Most answers of a run share a few heads: known ones are not parsed again.
            known = _HEADS.get(bytes(buf[: crlf + 4]))
            if known is not None:
                self.status, self.need, self.close_after = known
                self.head_end = crlf + 4
                return True
        # Lines may end in a bare LF: the C plugin's Date header ends "...2026\n\r\n".
        i = buf.find(b"\n\r\n")
        j = buf.find(b"\n\n")
        if i < 0 and j < 0:
            if len(buf) > _MAX_HEAD:
                self.drv.fail(self, "bad-response")
            return False
        end = i + 3 if j < 0 or (0 <= i < j) else j + 2
        lines = bytes(buf[:end]).split(b"\n")
        status = lines[0].split(None, 2)
        try:
            version, code = status[0], int(status[1])
        except (IndexError, ValueError):
            self.drv.fail(self, "bad-response")
            return False
        if 100 <= code < 200:  # "100 Continue" and friends: skip and wait for the real answer
            del buf[:end]
            return self._parse_head() if buf else False
        length = -2
        conn_hdr = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self.drv.fail(self, "bad-response")
                    return False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                length = -1
            elif name == b"connection":
                conn_hdr = value.strip().lower()
        if length == -1:
            self.chunk_pos = end
        elif length == -2 and (code in (204, 304)):
            length = 0
        self.status = code
        self.head_end = end
        self.need = length
        self.close_after = (
            conn_hdr == b"close" or (version == b"HTTP/1.0" and conn_hdr != b"keep-alive") or length == -2
        )
        if end == crlf + 4 and length >= 0:
            # The same bytes always parse the same: remember this head (a few hundred at most).
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[bytes(buf[:end])] = (code, length, self.close_after)
        return True

    def _parse_chunks(self) -> bytes | None:
        buf = self.buf
        pos = self.chunk_pos
        while True:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0].strip(), 16)
            except ValueError:
                self.drv.fail(self, "bad-response")
                return None
            if size == 0:
                # Trailers (usually none) end with an empty line.
                term = buf.find(b"\r\n\r\n", eol - 1) if buf[eol - 1 : eol] == b"\r" else buf.find(b"\n\n", eol - 1)
                if term < 0:
                    return None
                self.chunk_pos = term + (4 if buf[term : term + 1] == b"\r" else 2)
                return b"".join(self.chunks)
            start = eol + 1
            if len(buf) < start + size + 2:
                return None
            self.chunks.append(bytes(buf[start : start + size]))
            pos = start + size + (2 if buf[start + size : start + size + 1] == b"\r" else 1)
            self.chunk_pos = pos

    def _finish(self, body: bytes, nbytes: int) -> None:
        status, close_after = self.status, self.close_after
        self._reset()
        sent = self.q.popleft()
        self.served += 1
        self.drv.done(self, sent, status, body, nbytes, close_after)

    def eof_received(self) -> bool | None:
        if self.q and self.head_end >= 0 and self.need == -2:
            body = bytes(self.buf[self.head_end :])
            nbytes = len(self.buf)
            self.buf.clear()
            self._finish(body, nbytes)
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.drv.lost(self, exc)


# ---------------------------------------------------------------------------------------------
# The driver: keeps connections x pipeline requests in flight


class _Driver:
    def __init__(
        self, session: Session, connections: int, timeout: float, progress: bool, pid: int | None, pipeline: int = 1
    ) -> None:
        self.s = session
        self.loop = asyncio.get_running_loop()
        self.connections = connections
        # Requests in flight per connection; 1 for a server that closes after each answer.
        self.pipeline = pipeline if session.keepalive else 1
        self.timeout = timeout
        self.progress = progress
        self.pid = pid
        self.idle: list[_Conn] = []
        self.live: set[_Conn] = set()
        self.phase = _Phase([])
        self.done_fut: asyncio.Future[None] = self.loop.create_future()
        self.schedule: list[str] = []
        self.sched_i = 0
        self.remaining = 0  # requests still to issue; -1 means unbounded (deadline only)
        self.deadline = math.inf
        self.busy = 0  # requests in flight or connections being opened for one
        self.stop_issuing = False
        self.exhausted = False  # stopped because no ids of ours were left to destroy/label
        self.can_substitute = False
        self.label = ""
        self.peak_rss_kb = 0
        self.resent = 0

    # -- phases --------------------------------------------------------------------------------

    async def run_phase(
        self, mix: dict[str, float], *, duration: float | None, requests: int | None, label: str
    ) -> _Phase:
        phase = _Phase(list(mix))
        self.phase = phase
        self.label = label
        # A shuffled cycle holding each kind in proportion: exact ratios, no per-request random().
        cycle = [k for k, w in mix.items() for _ in range(max(1, round(w * 16)))]
        self.s.rng.shuffle(cycle)
        self.schedule, self.sched_i = cycle, 0
        self.can_substitute = "provision" in mix
        self.remaining = requests if requests is not None else -1
        self.deadline = time.perf_counter() + duration if duration is not None else math.inf
        self.stop_issuing = self.remaining == 0
        self.exhausted = False
        self.done_fut = self.loop.create_future()
        ticker = self.loop.create_task(self._tick())
        if self.pid is not None:
            phase.server_cpu0 = server_cpu_seconds(self.pid)
        phase.t0, phase.cpu0 = time.perf_counter(), time.process_time()
        for _ in range(self.connections):
            self._issue(self.idle.pop() if self.idle else None, self.pipeline)
        if self.busy == 0:
            self.done_fut.set_result(None)
        try:
            await self.done_fut
        finally:
            ticker.cancel()
        phase.t1, phase.cpu1 = time.perf_counter(), time.process_time()
        if self.pid is not None:
            phase.server_cpu1 = server_cpu_seconds(self.pid)
        if self.progress:
            sys.stderr.write("\r\033[K")
        return phase

    def _next_request(self) -> tuple[str, bytes] | None:
        if self.stop_issuing:
            return None
        if self.remaining == 0 or time.perf_counter() >= self.deadline:
            self.stop_issuing = True
            return None
        kind = self.schedule[self.sched_i]
        self.sched_i = (self.sched_i + 1) % len(self.schedule)
        data = self.s.request(kind)
        if data is None:
            if not self.can_substitute:
                self.stop_issuing = self.exhausted = True  # nothing left, and nothing makes more
                return None
            self.phase.substituted += 1
            kind = "provision"
            data = self.s.provision()
        if self.remaining > 0:
            self.remaining -= 1
        return kind, data

    def _issue(self, conn: _Conn | None, n: int = 1) -> None:
        """Issue up to ``n`` requests on ``conn``, or (None, or closed) on one new connection."""
        if conn is not None and not conn.closed:
            for _ in range(n):
                nxt = self._next_request()
                if nxt is None:
                    if not conn.q and conn not in self.idle:
                        self.idle.append(conn)
                    return
                self.busy += 1
                conn.send(*nxt)
            return
        batch = []
        for _ in range(n):
            nxt = self._next_request()
            if nxt is None:
                break
            batch.append(nxt)
        if batch:
            self.busy += len(batch)
            self.loop.create_task(self._open_and_send(batch))

    async def _open_and_send(self, batch: list[tuple[str, bytes]]) -> None:
        t = self.s.target
        try:
            if t.path is not None:
                _, conn = await self.loop.create_unix_connection(lambda: _Conn(self), t.path)
            else:
                _, conn = await self.loop.create_connection(lambda: _Conn(self), t.host, t.port)
        except OSError:
            self.phase.errors["connect"] += len(batch)
            self.phase.count += len(batch)
            await asyncio.sleep(0.05)  # a dead server would otherwise be hammered in a busy loop
            self._settle(None, len(batch))
            return
        self.live.add(conn)
        # Right away: the C plugin exits if a connection closes unused.
        if len(batch) == 1:
            conn.send(*batch[0])
        else:
            conn.send_many(batch)

    def _settle(self, conn: _Conn | None, n: int = 1) -> None:
        """``n`` requests finished (either way): issue as many on ``conn``, or on a new connection."""
        self.busy -= n
        self._issue(conn, n)
        if self.busy == 0 and self.stop_issuing and not self.done_fut.done():
            self.done_fut.set_result(None)

    # -- callbacks from _Conn --------------------------------------------------------------------

    def done(
        self, conn: _Conn, sent: tuple[str, bytes, float], status: int, body: bytes, nbytes: int, close_after: bool
    ) -> None:
        phase = self.phase
        kind, data, t0 = sent
        if kind == "label":
            self.s.label_done(data)
        phase.lat[kind].append(time.perf_counter() - t0)
        phase.count += 1
        phase.bytes += nbytes
        if status != 200:
            phase.errors[f"http:{status}"] += 1
        else:
            code = _classify(body) if body else _BAD
            if code is None and data[data.rindex(b":") + 1 : -1] not in body[-_ID_TAIL:]:
                # Every request's id is its body's last member; the answer must carry it back. Pipelined,
                # this is what shows answers matched in order.
                phase.errors["id-mismatch"] += 1
            elif code is None:
                phase.ok += 1
                if kind == "provision":
                    self._keep_id(body, phase)
            elif code == _BAD:
                phase.errors["bad-response"] += 1
            else:
                phase.errors[f"rpc:{code}"] += 1
        if close_after or not self.s.keepalive:
            if close_after:
                self.s.keepalive = False
                self.pipeline = 1
                if conn.q:
                    # Pipelined requests behind an answer that closes: the server never read them.
                    self._resend(conn)
            if not conn.q:  # else its pipelined answers still come; it is dropped after the last
                self._drop(conn)
            self._settle(None)
        else:
            self._settle(conn)

    def _keep_id(self, body: bytes, phase: _Phase) -> None:
        try:
            iid = orjson.loads(body)["result"]["ID"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            iid = None
        if isinstance(iid, str) and iid:
            self.s.own_ids.append(iid)
        else:
            phase.errors["no-id"] += 1  # a Provision answer without an ID is useless to InfraKit

    def fail(self, conn: _Conn, kind: str) -> None:
        """The requests on ``conn`` failed: count each, drop the connection, go on with a new one."""
        n = len(conn.q)
        if not n:
            self._drop(conn)
            return
        now = time.perf_counter()
        for k, data, t0 in conn.q:
            self.phase.lat[k].append(now - t0)
            if k == "label":
                self.s.label_done(data)
        conn.q.clear()
        self.phase.errors[kind] += n
        self.phase.count += n
        self._drop(conn)
        self._settle(None, n)

    def _resend(self, conn: _Conn) -> None:
        """Send the requests still queued on ``conn`` again, each on a fresh connection (they stay busy)."""
        self.resent += len(conn.q)
        for k, data, _ in conn.q:
            self.loop.create_task(self._open_and_send([(k, data)]))
        conn.q.clear()

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        self.live.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
            if conn.served:
                self.s.keepalive = False  # it closes idle connections: no point keeping them
            return
        if not conn.in_flight:
            return
        if conn.served and not conn.buf:
            # A reused connection closed (EOF, or a reset from writing into it) before any answer
            # byte: the server closes after answering and never read this request. Switch the
            # target to a connection per request and resend on a fresh one (never reused, so this
            # happens at most once per request).
            self.s.keepalive = False
            self.pipeline = 1
            self._resend(conn)
            return
        self.fail(conn, "reset" if exc is not None else "eof")

    def _drop(self, conn: _Conn) -> None:
        if conn.transport is not _NO_TRANSPORT and not conn.closed:
            conn.transport.close()
        self.live.discard(conn)

    # -- periodic work ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Timeouts, RSS sampling and the progress line, without a timer per request."""
        last_n, last_t = 0, time.perf_counter()
        while True:
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            for conn in list(self.live):
                if conn.q and now - conn.q[0][2] > self.timeout:
                    conn.transport.abort()
                    self.fail(conn, "timeout")
            if self.pid is not None:
                rss = _read_status_kb(self.pid, "VmRSS:")
                if rss:
                    self.peak_rss_kb = max(self.peak_rss_kb, rss)
            if self.progress and now - last_t >= 0.5:
                ph = self.phase
                rate = (ph.count - last_n) / (now - last_t)
                last_n, last_t = ph.count, now
                sys.stderr.write(
                    f"\r\033[K{self.label} {now - ph.t0:6.1f}s  {ph.count} req  {rate:,.0f} req/s  "
                    f"errors {sum(ph.errors.values())}"
                )
                sys.stderr.flush()

    async def close(self) -> None:
        for conn in list(self.idle) + list(self.live):
            self._drop(conn)
        self.idle.clear()
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------
# Probe (readiness and keep-alive detection)


class _Probe:
    """Stands in for the driver while a probe sends single requests over a :class:`_Conn`."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[tuple[int, bytes, bool] | None] = asyncio.get_running_loop().create_future()

    async def ask(self, conn: _Conn, kind: str, timeout: float) -> tuple[int, bytes, bool] | None:
        """(status, body, server closes after it), or None if the connection closed unanswered."""
        self.fut = asyncio.get_running_loop().create_future()
        if conn.closed:
            return None
        conn.send(kind, _one_off(METHODS[kind], b"{}", _ID_LOW + random.randrange(_ID_SPAN)))
        return await asyncio.wait_for(self.fut, timeout)

    def done(
        self, conn: _Conn, sent: tuple[str, bytes, float], status: int, body: bytes, nbytes: int, close_after: bool
    ) -> None:
        if not self.fut.done():
            self.fut.set_result((status, body, close_after))

    def fail(self, conn: _Conn, kind: str) -> None:
        conn.q.clear()
        if not self.fut.done():
            self.fut.set_exception(LoadError(f"{kind} while probing"))

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


async def _probe(target: Target, timeout: float) -> tuple[bool, dict[str, Any], int | None]:
    """Send Plugin.Implements twice on one connection: (second answered, the result, the server's pid).

    The pid comes from the unix socket's peer credentials (SO_PEERCRED), None over TCP.

    Plugin.Implements is the one handshake every generation of plugin answers (the C plugin knows no
    other). Writes right after connecting: the C plugin exits when a connection closes unused.
    """
    loop = asyncio.get_running_loop()
    pr = _Probe()
    if target.path is not None:
        opening = loop.create_unix_connection(lambda: _Conn(pr), target.path)
    else:
        opening = loop.create_connection(lambda: _Conn(pr), target.host, target.port)
    transport, conn = await asyncio.wait_for(opening, timeout)
    pid = peer_pid(transport.get_extra_info("socket")) if target.path is not None else None
    try:
        # The oldest handshake first (the C plugin knows no other); InfraKit's own Go plugins answer only
        # Handshake.Implements (0.5) or, in the last releases, only Handshake.Hello.
        for kind in ("implements", "handshake-implements", "handshake"):
            first = await pr.ask(conn, kind, timeout)
            if first is None:
                raise LoadError(f"{target}: closed the connection without answering {METHODS[kind]}")
            status, body, close_after = first
            if status != 200 or close_after or _classify(body) in (None, _BAD):
                break
        if status != 200 or _classify(body) is not None:
            raise LoadError(f"{target}: {METHODS[kind]} answered HTTP {status}: {body[:200]!r}")
        info = orjson.loads(body)["result"]
        if close_after:
            return False, info, pid
        # Give a server that closes after each answer a moment to do so before writing again.
        await asyncio.sleep(0.02)
        second = await pr.ask(conn, kind, timeout)
        return second is not None and second[0] == 200, info, pid
    finally:
        if not conn.closed:
            conn.transport.close()


def probe(target: str | Target, timeout: float = 5.0) -> dict[str, Any]:
    """Handshake once; raise :class:`LoadError` or OSError when the plugin does not answer.

    Returns ``{"keepalive": bool, "implements": <Plugin.Implements result>, "pid": <SO_PEERCRED pid or None>}``.
    """
    t = parse_target(target) if isinstance(target, str) else target
    keepalive, info, pid = _run(_probe(t, timeout))
    return {"keepalive": keepalive, "implements": info, "pid": pid}


# ---------------------------------------------------------------------------------------------
# run_load


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def run_load(
    target: str | Target,
    *,
    mix: str | Mapping[str, float] = "provision=1",
    connections: int = 16,
    duration: float | None = None,
    requests: int | None = None,
    warmup: float = 0.0,
    prefill: int = 0,
    max_prefill_seconds: float | None = None,
    group_size: int = 10,
    timeout: float = 30.0,
    pid: int | None = None,
    progress: bool = False,
    session: Session | None = None,
    seed: int | None = None,
    pipeline: int = 1,
) -> dict[str, Any]:
    """Drive ``target`` and return the figures as a JSON-able dict.

    Each of the ``connections`` keeps ``pipeline`` requests in flight (sends that many in one write,
    then one more per answer); a server that closes after every answer is driven one request per
    connection whatever ``pipeline`` says, and the report's ``pipeline`` is what ran.

    Stops issuing at ``duration`` seconds or after ``requests`` requests, whichever comes first
    (5 s if neither is given), then waits for the answers in flight: closing a connection with a
    request outstanding kills the C plugin (SIGPIPE). ``prefill`` provisions instances first with the
    same concurrency (untimed, reported separately, capped by ``max_prefill_seconds``). ``pid`` is the
    server's process, for its CPU time and RSS; without it a unix socket's peer credentials name it. Pass a
    :class:`Session` to carry provisioned ids over to a later call (e.g. a destroy run).
    """
    if duration is None and requests is None:
        duration = 5.0
    if pipeline < 1:
        raise LoadError(f"pipeline must be at least 1, got {pipeline}")
    if connections < 1:
        raise LoadError(f"connections must be at least 1, got {connections}")
    if session is None:
        t = parse_target(target) if isinstance(target, str) else target
        session = Session(t, group_size=group_size, seed=seed)
    weights = parse_mix(mix)
    return _run(
        _run_load(
            session,
            weights,
            connections,
            duration,
            requests,
            warmup,
            prefill,
            max_prefill_seconds,
            timeout,
            pid,
            progress,
            pipeline,
        )
    )


async def _run_load(
    s: Session,
    mix: dict[str, float],
    connections: int,
    duration: float | None,
    requests: int | None,
    warmup: float,
    prefill: int,
    max_prefill_seconds: float | None,
    timeout: float,
    pid: int | None,
    progress: bool,
    pipeline: int = 1,
) -> dict[str, Any]:
    if s.keepalive is None:
        s.keepalive, _, s.peer_pid = await _probe(s.target, timeout)
    pid_from = "given" if pid is not None else "SO_PEERCRED" if s.peer_pid is not None else None
    if pid is None:
        pid = s.peer_pid
    drv = _Driver(s, connections, timeout, progress, pid, pipeline)
    out: dict[str, Any] = {
        "target": str(s.target),
        "connections": connections,
        "pipeline": drv.pipeline,
        "pipeline_requested": pipeline,
        "mix": mix,
        "keepalive": s.keepalive,
        "loop": "uvloop" if uvloop is not None else "asyncio",
    }
    try:
        if prefill:
            before = len(s.own_ids)
            ph = await drv.run_phase(
                {"provision": 1.0}, duration=max_prefill_seconds, requests=prefill, label="prefill"
            )
            rep = ph.report()
            out["prefill"] = {
                "requested": prefill,
                "reached": len(s.own_ids) - before,
                "seconds": rep["seconds"],
                "rps": rep["ok_rps"],
                "errors": rep["errors"],
                "capped": ph.count < prefill,
                "server_cpu": rep["server_cpu"],
            }
        if warmup:
            await drv.run_phase(mix, duration=warmup, requests=None, label="warmup")
        drv.peak_rss_kb = 0
        ph = await drv.run_phase(mix, duration=duration, requests=requests, label="run")
        out.update(ph.report())
        out["exhausted"] = drv.exhausted
        out["resent"] = drv.resent
        out["keepalive"] = s.keepalive
        out["pipeline"] = drv.pipeline  # 1 if the server turned out to close after each answer
        out["own_instances"] = len(s.own_ids)
        if pid is not None:
            out["server"] = {
                "pid": pid,
                "rss_peak_kb_sampled": drv.peak_rss_kb or None,
                "vmhwm_kb": _read_status_kb(pid, "VmHWM:"),
                "rss_end_kb": _read_status_kb(pid, "VmRSS:"),
                "pid_from": pid_from,
            }
    finally:
        await drv.close()
    return out


# ---------------------------------------------------------------------------------------------
# Self-test: the tool's own ceiling against a server that does nothing


_CANNED_BODY = b'{"jsonrpc":"2.0","result":{"Type":"","OK":true},"id":%s}'
_CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


class _CannedServer(asyncio.Protocol):
    """Answers every complete request with the same tiny JSON-RPC result (keep-alive or not)."""

    def __init__(self, close: bool) -> None:
        self.close = close
        self.buf = bytearray()
        self.transport: asyncio.Transport = _NO_TRANSPORT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            i = buf.find(b"Content-Length: ", 0, end)
            n = int(buf[i + 16 : buf.find(b"\r\n", i)]) if i >= 0 else 0
            if len(buf) < end + 4 + n:
                return
            body = bytes(buf[end + 4 : end + 4 + n])
            del buf[: end + 4 + n]
            at = body.rfind(b'"id":')
            answer = _CANNED_BODY % (body[at + 5 :].rstrip(b"} \r\n") if at >= 0 else b"null")
            self.transport.write(_CANNED % len(answer) + answer)
            if self.close:
                self.transport.close()
                return


async def _serve_canned(path: str) -> None:
    loop = asyncio.get_running_loop()
    keep = await loop.create_unix_server(lambda: _CannedServer(close=False), path)
    close = await loop.create_unix_server(lambda: _CannedServer(close=True), path + ".close")
    async with keep, close:
        await asyncio.gather(keep.serve_forever(), close.serve_forever())


def self_test_ceiling(seconds: float = 3.0, connections: int = 16) -> dict[str, dict[str, Any]]:
    """ikload's own ceiling: a canned uvloop server in a subprocess (so on its own core).

    Measured twice: keep-alive, and one connection per request (how the C plugin is driven).
    A plugin measured near these figures is measuring ikload, not the plugin.
    """
    with tempfile.TemporaryDirectory(prefix="ikload-") as tmp:
        sock = os.path.join(tmp, "canned.sock")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-canned", sock])
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock + ".close"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise LoadError("canned server did not start")
                time.sleep(0.02)
            return {
                name: run_load(
                    path, mix="validate=1", connections=connections, duration=seconds, warmup=0.5, pid=proc.pid
                )
                for name, path in (("keepalive", sock), ("per_request", sock + ".close"))
            }
        finally:
            proc.terminate()
            proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Command line


def _fmt_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = []
    if "prefill" in r:
        p = r["prefill"]
        lines.append(
            f"prefill     {p['reached']} instances in {p['seconds']:.2f} s ({p['rps']:,.0f}/s)"
            + ("  CAPPED" if p["capped"] else "")
            + (f"  errors {p['errors']}" if p["errors"] else "")
        )
    pipe = r.get("pipeline", 1)
    asked = r.get("pipeline_requested", pipe)
    lines += [
        f"target      {r['target']}  ({r['connections']} connections"
        + (f" x {pipe} pipelined" if pipe > 1 else "")
        + f", {'keep-alive' if r['keepalive'] else 'one connection per request'}, {r['loop']})"
        + (f"  (--pipeline {asked} not used: the server closes after each answer)" if asked > pipe else ""),
        f"mix         {', '.join(f'{k}={v:g}' for k, v in r['mix'].items())}",
        f"requests    {r['requests']} in {r['seconds']:.2f} s = {r['rps']:,.1f} req/s ({r['ok_rps']:,.1f} ok/s)",
        f"latency ms  p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"responses   {r['response_bytes_per_s'] / 1e6:,.2f} MB/s",
        f"errors      {r['error_total']}" + (f"  {r['errors']}" if r["errors"] else ""),
        f"client cpu  {r['client_cpu'] * 100:.0f}% of one core",
    ]
    if len(r["by_method"]) > 1:
        for k, m in r["by_method"].items():
            lines.append(f"  {k:<15} {m['count']:>8}  p50 {m['p50']} ms  p99 {m['p99']} ms")
    if r.get("substituted"):
        lines.append(f"substituted {r['substituted']} destroy/label by provision (no ids of ours left)")
    if r.get("exhausted"):
        lines.append("stopped early: no ids of ours left to destroy/label")
    if "server" in r:
        srv = r["server"]
        lines.append(
            f"server      pid {srv['pid']} ({srv.get('pid_from') or 'given'}), RSS peak sampled "
            f"{srv['rss_peak_kb_sampled']} kB, VmHWM {srv['vmhwm_kb']} kB"
        )
    cpu = r.get("server_cpu")
    if cpu:
        lines.append(
            f"server cpu  {cpu['us_per_request']} µs/request ({cpu['seconds']:.2f} s, "
            f"{cpu['cores'] * 100:.0f}% of one core; /proc ticks of {cpu['resolution_s'] * 1e3:g} ms)"
        )
    elif r.get("target", "").startswith("tcp://") and "server" not in r:
        lines.append("server cpu  unknown: give --pid for a TCP target")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ikload.py",
        description="Load generator for InfraKit instance plugins (JSON-RPC 2.0 over HTTP/1.1).",
        epilog=f"methods for --mix: {', '.join(METHODS)}",
    )
    p.add_argument("target", nargs="?", help="socket path, unix:///path or tcp://host:port")
    p.add_argument("-c", "--connections", type=int, default=16, help="concurrent connections (16)")
    p.add_argument(
        "--pipeline",
        type=int,
        default=1,
        metavar="N",
        help="requests in flight per connection: N sent in one write, then one more per answer (1, as Go's client)",
    )
    p.add_argument("--mix", default="provision=1", help="weighted methods, e.g. provision=3,destroy=1")
    p.add_argument("--duration", type=float, help="seconds of timed load (default 5 unless --requests)")
    p.add_argument("--requests", type=int, help="stop after this many requests")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of untimed load first")
    p.add_argument("--prefill", type=int, default=0, help="provision this many instances first (untimed)")
    p.add_argument("--max-prefill-seconds", type=float, help="stop the prefill after this long")
    p.add_argument("--group-size", type=int, default=10, help="instances per infrakit.group tag (10)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (30)")
    p.add_argument(
        "--pid",
        type=int,
        help="server pid, for its CPU per request and RSS (default: a unix socket's peer, by SO_PEERCRED)",
    )
    p.add_argument("--seed", type=int, help="random seed (ids, groups, mix order)")
    p.add_argument("--progress", action="store_true", help="live progress line even if stderr is no tty")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--self-test-ceiling",
        action="store_true",
        help="measure ikload's own ceiling against a canned server (16 connections)",
    )
    p.add_argument("--serve-canned", metavar="SOCKET", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_canned:
        try:
            _run(_serve_canned(args.serve_canned))
        except KeyboardInterrupt:
            pass
        return 0
    try:
        if args.self_test_ceiling:
            res = self_test_ceiling(args.duration or 3.0, args.connections)
        elif not args.target:
            _parser().error("a target is needed (or --self-test-ceiling)")
        else:
            res = run_load(
                args.target,
                mix=args.mix,
                connections=args.connections,
                duration=args.duration,
                requests=args.requests,
                warmup=args.warmup,
                prefill=args.prefill,
                max_prefill_seconds=args.max_prefill_seconds,
                group_size=args.group_size,
                timeout=args.timeout,
                pid=args.pid,
                progress=args.progress or sys.stderr.isatty(),
                seed=args.seed,
                pipeline=args.pipeline,
            )
    except asyncio.TimeoutError:
        print(f"ikload: no answer to the handshake probe within {args.timeout:g} s", file=sys.stderr)
        return 2
    except (LoadError, OSError) as e:
        print(f"ikload: {e or type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    elif args.self_test_ceiling:
        print("\n\n".join(f"== ceiling, {name.replace('_', ' ')}\n{_fmt_report(r)}" for name, r in res.items()))
    else:
        print(_fmt_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
