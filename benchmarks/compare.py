#!/usr/bin/env python3
"""compare: run the same ikload workload against several InfraKit instance plugins, side by side.

Each ``--target NAME=COMMAND`` is a shell command starting a plugin; ``{socket}``, ``{state}`` and
``{home}`` in it become fresh temp paths per run (the command runs in a fresh directory: ``{cwd}`` is the
one compare.py was started in). ``--target NAME=unix:///path`` (or tcp://) is a server
that is already running. The tool starts a target, waits until it answers a handshake, runs the
workload, stops it (SIGINT, then SIGTERM, then SIGKILL), and goes on to the next; rounds alternate.

``--scaling 0,1000,10000`` measures describe/provision/destroy throughput against state size;
``--concurrency 1,4,16,64`` runs each ``--method`` at each number of connections. Both write a
Markdown table, a JSON file and (with matplotlib, the ``bench`` extra) a plot. Every figure comes with
the server's CPU time per request, read from /proc/PID/stat before and after each measured phase; the
pid is the process that listens on the socket (SO_PEERCRED), or ``--pid-for NAME=PID``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ikload  # noqa: E402  (a sibling file, not an installed package)
import plots  # noqa: E402

__all__ = [
    "TargetSpec",
    "StartError",
    "Running",
    "parse_targets",
    "compare",
    "compare_markdown",
    "scaling",
    "scaling_markdown",
    "merge_rounds",
    "sweep",
    "sweep_markdown",
    "main",
]

SCALING_METHODS = ("describe", "provision", "destroy")
# Above this share of a core, ikload itself was (nearly) the bottleneck of a measurement.
CLIENT_BOUND = 0.9
CLIENT_BOUND_NOTE = (
    f"† ikload used over {CLIENT_BOUND:.0%} of a core: this figure is near ikload's own "
    "ceiling (see ikload.py --self-test-ceiling), the target may be faster"
)


class StartError(Exception):
    """A target's command did not come up (exited, or never answered a handshake)."""


@dataclass(frozen=True)
class TargetSpec:
    name: str
    command: str | None = None  # shell command to start; None for an already running server
    address: str | None = None  # unix:///path or tcp://host:port of a running server
    socket_template: str | None = None  # where a started command's socket appears
    pid: int | None = None  # of a running server, for its RSS


def parse_targets(targets: list[str], socket_for: list[str], pid_for: list[str]) -> list[TargetSpec]:
    sockets = dict(_split(s, "--socket-for") for s in socket_for)
    pids = {k: int(v) for k, v in (_split(s, "--pid-for") for s in pid_for)}
    specs: list[TargetSpec] = []
    for item in targets:
        name, value = _split(item, "--target")
        if any(s.name == name for s in specs):
            raise SystemExit(f"compare: target name {name!r} given twice")
        if value.startswith(("unix://", "tcp://")):
            specs.append(TargetSpec(name, address=value, pid=pids.get(name)))
        else:
            specs.append(TargetSpec(name, command=value, socket_template=sockets.get(name)))
    for name in set(sockets) | set(pids):
        if not any(s.name == name for s in specs):
            raise SystemExit(f"compare: --socket-for/--pid-for names unknown target {name!r}")
    return specs


def _split(item: str, option: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"compare: {option} wants NAME=VALUE, got {item!r}")
    return name, value


# ---------------------------------------------------------------------------------------------
# Starting and stopping a target


def _leaf_pid(pid: int) -> int:
    """The plugin's own pid when ``sh -c`` did not exec it: follow single children down."""
    while True:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
        except OSError:
            return pid
        if len(kids) != 1:
            return pid
        pid = int(kids[0])


def _find_socket(directory: Path) -> Path | None:
    """InfraKit's discovery: the plugin's socket is the one socket file in its plugin directory."""
    try:
        found = [p for p in directory.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


class Running:
    """A target for the length of one run: started fresh from its command, or a running server."""

    def __init__(self, spec: TargetSpec, start_timeout: float, keep_logs: Path | None) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self.keep_logs = keep_logs
        self.address = spec.address or ""
        self.pid = spec.pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> Running:
        if self.spec.command is not None:
            try:
                self._start(self.spec.command)
            except BaseException:
                self.__exit__(None, None, None)  # remove the temp dir, keep the log if asked
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.exit_code = self._stop()
        if self.tmp is not None:
            if self.keep_logs is not None and (self.tmp / "log.txt").exists():
                self.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.tmp / "log.txt", self.keep_logs / f"{self.spec.name}-{int(time.time() * 1e3)}.log")
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self, template: str) -> None:
        # A short base path: unix socket paths are limited to 107 bytes.
        self.tmp = tmp = Path(tempfile.mkdtemp(prefix=f"cmp-{self.spec.name[:12]}-", dir="/tmp"))
        home = tmp / "home"
        home.mkdir()
        places = {
            "socket": str(tmp / "plugin.sock"),
            "state": str(tmp / "state.json"),
            "home": str(home),
            "cwd": shlex.quote(os.getcwd()),  # the command runs in tmp: this names the caller's files
        }
        command = template.format(**places)
        if self.spec.socket_template:
            sock: Path | None = Path(self.spec.socket_template.format(**places))
        elif "{socket}" in template:
            sock = Path(places["socket"])
        else:
            sock = None  # discover it under {home}/.infrakit/plugins, as InfraKit would
        log = open(tmp / "log.txt", "wb")
        self.proc = subprocess.Popen(
            command,
            shell=True,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        last_error = "no socket yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise StartError(
                    f"{self.spec.name}: command exited with status {rc} before answering{self._log_tail()}"
                )
            path = sock or _find_socket(home / ".infrakit" / "plugins")
            if path is not None and path.exists():
                try:
                    info = ikload.probe(str(path), timeout=5.0)
                except (OSError, ikload.LoadError) as e:
                    last_error = str(e) or type(e).__name__
                else:
                    self.address = f"unix://{path}"
                    # The process that listens (SO_PEERCRED), else the leaf under the shell.
                    self.pid = info["pid"] or _leaf_pid(self.proc.pid)
                    return
            time.sleep(0.05)
        self._stop()
        self.proc = None
        where = sock or home / ".infrakit" / "plugins" / "*"
        raise StartError(
            f"{self.spec.name}: no handshake answer on {where} within {self.start_timeout:g} s "
            f"({last_error}); use --socket-for NAME=TEMPLATE if it listens elsewhere"
            f"{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self.tmp is None:
            return ""
        try:
            text = (self.tmp / "log.txt").read_bytes()[-600:].decode(errors="replace").strip()
        except OSError:
            return ""
        return "\n  log: " + text.replace("\n", "\n  log: ") if text else ""

    def _stop(self) -> int | None:
        """SIGINT (the C plugin removes its socket on it), then SIGTERM, then SIGKILL, each bounded."""
        assert self.proc is not None
        pgid = self.proc.pid  # start_new_session made it a group leader
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            try:
                os.killpg(pgid, sig)  # the whole group: the shell and what it started
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            # Wait for the group, not only the shell: the plugin may outlive a shell that did not exec it.
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the shell, or it stays in the group as a zombie
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return self.proc.returncode
                time.sleep(0.02)
        return self.proc.poll()


# ---------------------------------------------------------------------------------------------
# Side-by-side comparison


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rounds_order(specs: list[TargetSpec], r: int) -> list[TargetSpec]:
    # Alternate the order so drift (thermal, page cache) does not always favour the same target.
    return specs if r % 2 == 0 else specs[::-1]


def compare(
    specs: list[TargetSpec], *, rounds: int, load: dict[str, Any], start_timeout: float, keep_logs: Path | None
) -> dict[str, Any]:
    """Each round, each target: start fresh, run ``load`` (run_load keyword args), stop."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
    failures: dict[str, str] = {}
    for r in range(rounds):
        for spec in _rounds_order(specs, r):
            if spec.name in failures:
                continue
            _log(f"[round {r + 1}/{rounds}] {spec.name}")
            try:
                with Running(spec, start_timeout, keep_logs) as srv:
                    res = ikload.run_load(srv.address, pid=srv.pid, **load)
                res["exit_code"] = srv.exit_code
                runs[spec.name].append(res)
            except StartError as e:
                failures[spec.name] = str(e)
                _log(f"  FAILED: {e}")
            except (OSError, ikload.LoadError) as e:
                failures[spec.name] = f"{spec.name}: {e or type(e).__name__}"
                _log(f"  FAILED: {failures[spec.name]}")
    summary = {name: _summarize(rs) for name, rs in runs.items() if rs}
    return {"mode": "compare", "load": load, "rounds": rounds, "summary": summary, "failures": failures, "runs": runs}


def _summarize(rs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, sub: str | None = None) -> float | None:
        vals = [(r[key][sub] if sub else r[key]) for r in rs]
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 3) if vals else None

    rss = [r["server"]["vmhwm_kb"] for r in rs if r.get("server") and r["server"]["vmhwm_kb"]]
    errors: dict[str, int] = {}
    for r in rs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "rounds": len(rs),
        "ok_rps": med("ok_rps"),
        "ok_rps_min": min(r["ok_rps"] for r in rs),
        "ok_rps_max": max(r["ok_rps"] for r in rs),
        "p50_ms": med("latency_ms", "p50"),
        "p99_ms": med("latency_ms", "p99"),
        "max_ms": max((r["latency_ms"]["max"] or 0) for r in rs),
        "bytes_per_s": med("response_bytes_per_s"),
        "errors": errors,
        "peak_rss_kb": max(rss) if rss else None,
        "keepalive": rs[-1]["keepalive"],
        "client_cpu": med("client_cpu"),
        "cpu_us": _med_cpu(rs),
    }


def _med_cpu(rs: list[dict[str, Any]]) -> float | None:
    """Median server CPU per request (µs) over runs that could read it."""
    vals = [r["server_cpu"]["us_per_request"] for r in rs if r.get("server_cpu")]
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def _us(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    r = value / base
    # Two decimals in the usual range; enough digits to tell small ratios apart, none for big ones.
    return f"{r:,.0f}×" if r >= 100 else f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def compare_markdown(result: dict[str, Any], baseline: str) -> str:
    s = result["summary"]
    base = s.get(baseline, {})
    lines = [
        f"Workload: {_describe_load(result['load'])}; {result['rounds']} round(s), median shown.",
        "",
        "| target | ok req/s (min–max) | p50 ms | p99 ms | max ms | server CPU µs/req | MB/s | errors "
        f"| peak RSS MB | keep-alive | ikload CPU | req/s vs {baseline} | p99 vs {baseline} "
        f"| CPU/req vs {baseline} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s.items():
        rss = f"{m['peak_rss_kb'] / 1024:.1f}" if m["peak_rss_kb"] else "–"
        errs = ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "0"
        lines.append(
            f"| {name} | {m['ok_rps']:,.1f} ({m['ok_rps_min']:,.0f}–{m['ok_rps_max']:,.0f}) | {m['p50_ms']} "
            f"| {m['p99_ms']} | {m['max_ms']} | {_us(m['cpu_us'])} | {(m['bytes_per_s'] or 0) / 1e6:.2f} "
            f"| {errs} | {rss} "
            f"| {'yes' if m['keepalive'] else 'no'} "
            f"| {m['client_cpu']:.0%}{' †' if m['client_cpu'] > CLIENT_BOUND else ''} "
            f"| {_ratio(m['ok_rps'], base.get('ok_rps'))} "
            f"| {_ratio(m['p99_ms'], base.get('p99_ms'))} "
            f"| {_ratio(m['cpu_us'], base.get('cpu_us'))} |"
        )
    for name, why in result["failures"].items():
        lines.append(f"| {name} | failed: {why.splitlines()[0]} |" + " |" * 12)
    if any(m["client_cpu"] > CLIENT_BOUND for m in s.values()):
        lines += ["", CLIENT_BOUND_NOTE]
    return "\n".join(lines) + "\n"


def _describe_load(load: dict[str, Any]) -> str:
    parts = [f"mix {load['mix']}", f"{load['connections']} connections"]
    if load.get("pipeline", 1) > 1:
        parts[-1] += f" x {load['pipeline']} pipelined"
    if load.get("prefill"):
        parts.append(f"prefill {load['prefill']}")
    if load.get("duration"):
        parts.append(f"{load['duration']:g} s")
    if load.get("requests"):
        parts.append(f"{load['requests']} requests")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Scaling curve


def scaling(
    specs: list[TargetSpec],
    sizes: list[int],
    *,
    rounds: int,
    connections: int,
    max_seconds: float,
    max_prefill_seconds: float,
    group_size: int,
    start_timeout: float,
    keep_logs: Path | None,
) -> dict[str, Any]:
    """For every state size: fresh target, prefill, then describe, provision and destroy runs.

    Destroy removes as many instances as the provision run added (oldest first), so both runs see a
    state between ``size`` and ``size`` plus what provision added.
    """
    cells: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    capped_at: dict[str, int] = {}  # target -> smallest size it could not prefill in time
    for size in sizes:
        for r in range(rounds):
            for spec in _rounds_order(specs, r):
                base = {"target": spec.name, "size": size, "round": r + 1}
                if spec.name in failures:
                    cells.append({**base, "status": "failed", "note": failures[spec.name]})
                    continue
                if spec.name in capped_at:
                    # Bigger states would only hit the same prefill cap again, slower; say so.
                    cells.append(
                        {**base, "status": "skipped", "note": f"prefill capped at size {capped_at[spec.name]}"}
                    )
                    continue
                _log(f"[size {size}, round {r + 1}/{rounds}] {spec.name}")
                try:
                    cells.extend(
                        _scaling_cell(
                            spec,
                            size,
                            base,
                            connections,
                            max_seconds,
                            max_prefill_seconds,
                            group_size,
                            start_timeout,
                            keep_logs,
                        )
                    )
                except StartError as e:
                    failures[spec.name] = str(e)
                    _log(f"  FAILED: {e}")
                    cells.append({**base, "status": "failed", "note": str(e)})
                except (OSError, ikload.LoadError) as e:
                    failures[spec.name] = f"{spec.name}: {e or type(e).__name__}"
                    _log(f"  FAILED: {failures[spec.name]}")
                    cells.append({**base, "status": "failed", "note": failures[spec.name]})
                else:
                    if cells[-1].get("capped"):
                        capped_at[spec.name] = size
    return {
        "mode": "scaling",
        "sizes": sizes,
        "targets": [s.name for s in specs],
        "rounds": rounds,
        "connections": connections,
        "max_seconds": max_seconds,
        "max_prefill_seconds": max_prefill_seconds,
        "group_size": group_size,
        "cells": cells,
        "failures": failures,
    }


def _scaling_cell(
    spec: TargetSpec,
    size: int,
    base: dict[str, Any],
    connections: int,
    max_seconds: float,
    max_prefill_seconds: float,
    group_size: int,
    start_timeout: float,
    keep_logs: Path | None,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with Running(spec, start_timeout, keep_logs) as srv:
        session = ikload.Session(ikload.parse_target(srv.address), group_size=group_size)
        t0 = time.monotonic()

        def measure(mix: str, **kw: Any) -> dict[str, Any]:
            return ikload.run_load(
                srv.address, mix=mix, duration=max_seconds, connections=connections, pid=srv.pid, session=session, **kw
            )

        res = measure("describe", prefill=size, max_prefill_seconds=max_prefill_seconds)
        pre = res.get("prefill") or {"reached": 0, "seconds": 0.0, "capped": False, "errors": {}}
        info = {
            **base,
            "reached": pre["reached"],
            "capped": pre["capped"],
            "prefill_seconds": pre["seconds"],
            "prefill_errors": pre["errors"],
        }
        if pre["capped"]:
            _log(f"  prefill capped: {pre['reached']}/{size} in {pre['seconds']:.1f} s")
        out.append(_cell(info, "describe", res))
        res = measure("provision")
        out.append(_cell(info, "provision", res))
        added = res["ok"]
        if added:
            res = measure("destroy", requests=added)
            out.append(_cell(info, "destroy", res))
        else:
            out.append({**info, "method": "destroy", "status": "n/a", "note": "provision added nothing"})
        _log(
            f"  done in {time.monotonic() - t0:.1f} s: "
            + ", ".join(f"{c['method']} {c.get('ok_rps', 0):,.0f}/s" for c in out)
        )
    for c in out:
        c["exit_code"] = srv.exit_code
    return out


def _cell(info: dict[str, Any], method: str, res: dict[str, Any]) -> dict[str, Any]:
    srv = res.get("server") or {}
    return {
        **info,
        "method": method,
        "status": "ok",
        "ok_rps": res["ok_rps"],
        "requests": res["requests"],
        "seconds": res["seconds"],
        "p50_ms": res["latency_ms"]["p50"],
        "p99_ms": res["latency_ms"]["p99"],
        "errors": res["errors"],
        "bytes_per_s": res["response_bytes_per_s"],
        "peak_rss_kb": srv.get("vmhwm_kb"),
        "keepalive": res["keepalive"],
        "client_cpu": res["client_cpu"],
        "cpu_us": (res.get("server_cpu") or {}).get("us_per_request"),
    }


def merge_rounds(result: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """(target, size, method) -> one cell, the median of its rounds' throughput."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for c in result["cells"]:
        methods = [c["method"]] if "method" in c else list(SCALING_METHODS)
        for m in methods:
            groups.setdefault((c["target"], c["size"], m), []).append(c)
    merged = {}
    for key, cs in groups.items():
        ok = [c for c in cs if c["status"] == "ok"]
        if not ok:
            merged[key] = cs[0]
            continue
        ok.sort(key=lambda c: c["ok_rps"])
        mid = ok[len(ok) // 2]
        merged[key] = {
            **mid,
            "capped": any(c.get("capped") for c in ok),
            "reached": min(c["reached"] for c in ok),
            "peak_rss_kb": max((c["peak_rss_kb"] or 0) for c in ok) or None,
        }
    return merged


def scaling_markdown(result: dict[str, Any], baseline: str) -> str:
    merged = merge_rounds(result)
    names = result["targets"]
    others = [n for n in names if n != baseline]
    lines = [
        f"State-size scaling: {result['connections']} connections, each measurement capped at "
        f"{result['max_seconds']:g} s, prefill capped at {result['max_prefill_seconds']:g} s, "
        f"{result['rounds']} round(s) (median). ‡ = prefill capped: measured at the size reached. "
        "† = ikload-bound.",
        "",
        "| state size | method | "
        + " | ".join(f"{n} req/s | {n} p99 ms | {n} CPU µs/req" for n in names)
        + "".join(f" | {n} vs {baseline}" for n in others)
        + " |",
        "|---|---|" + "---|---|---|" * len(names) + "---|" * len(others),
    ]
    notes: list[str] = []
    for size in result["sizes"]:
        for method in SCALING_METHODS:
            row = [f"{size:,}", method]
            for n in names:
                c = merged.get((n, size, method))
                if c is None:
                    row += ["–", "–", "–"]
                elif c["status"] != "ok":
                    row += [c["status"], "", ""]
                    # A failure repeats at every size; one note per target and reason is enough.
                    where = n if c["status"] == "failed" else f"{n} at {size:,}"
                    note = f"{where}: {c['status']}" + (f" ({c['note'].splitlines()[0]})" if c.get("note") else "")
                    if note not in notes:
                        notes.append(note)
                else:
                    mark = " ‡" if c["capped"] else ""
                    if c.get("client_cpu", 0) > CLIENT_BOUND:
                        mark += " †"
                        if CLIENT_BOUND_NOTE not in notes:
                            notes.append(CLIENT_BOUND_NOTE)
                    errs = sum(c["errors"].values())
                    row += [
                        f"{c['ok_rps']:,.1f}{mark}" + (f" ({errs} err)" if errs else ""),
                        f"{c['p99_ms']}",
                        _us(c.get("cpu_us")),
                    ]
                    if c["capped"]:
                        note = (
                            f"{n} at {size:,}: prefill capped, reached {c['reached']:,} instances "
                            f"in {c['prefill_seconds']:.1f} s"
                        )
                        if note not in notes:
                            notes.append(note)
            b = merged.get((baseline, size, method))
            for n in others:
                c = merged.get((n, size, method))
                if c is not None and b is not None and c["status"] == b["status"] == "ok":
                    row.append(_ratio(c["ok_rps"], b["ok_rps"]))
                else:
                    row.append("–")
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Prefill and memory:",
        "",
        "| state size | target | reached | prefill s | prefill/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        for n in names:
            c = merged.get((n, size, "describe"))
            if c is None or c["status"] != "ok":
                continue
            rate = f"{c['reached'] / c['prefill_seconds']:,.0f}" if c["prefill_seconds"] else "–"
            rss = f"{c['peak_rss_kb'] / 1024:.1f}" if c["peak_rss_kb"] else "–"
            lines.append(
                f"| {size:,} | {n} | {c['reached']:,}{' ‡' if c['capped'] else ''} "
                f"| {c['prefill_seconds']:.2f} | {rate} | {rss} |"
            )
    if notes:
        lines += ["", *(f"- {x}" for x in notes)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Concurrency sweep

# Methods whose answers depend on what the state holds: the sweep prefills before them.
_NEEDS_STATE = ("describe", "describe-group", "describe-props", "destroy", "label")


def sweep(
    specs: list[TargetSpec],
    methods: list[str],
    levels: list[int],
    *,
    rounds: int,
    duration: float,
    warmup: float,
    prefill: int,
    group_size: int,
    start_timeout: float,
    keep_logs: Path | None,
    pipelines: list[int] | None = None,
) -> dict[str, Any]:
    """Each method at each number of connections (and each pipeline depth: requests in flight per
    connection), targets alternating: a fresh start of each target per point (so a provision run never
    sees what the run before it added), a prefill of ``prefill`` instances before methods that read the
    state, ``warmup`` seconds untimed, ``duration`` timed."""
    pipelines = pipelines or [1]
    points: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    k = 0
    for method, pipe in ((m, d) for m in methods for d in pipelines):
        for n in levels:
            for r in range(rounds):
                order = _rounds_order(specs, k)
                k += 1
                for spec in order:
                    base = {"target": spec.name, "method": method, "pipeline": pipe, "connections": n, "round": r + 1}
                    if spec.name in failures:
                        points.append({**base, "status": "failed", "note": failures[spec.name]})
                        continue
                    _log(f"[{plots.series_name(method, pipe)}, {n} connections, round {r + 1}/{rounds}] {spec.name}")
                    try:
                        with Running(spec, start_timeout, keep_logs) as srv:
                            res = ikload.run_load(
                                srv.address,
                                mix=method,
                                connections=n,
                                duration=duration,
                                warmup=warmup,
                                prefill=prefill if method in _NEEDS_STATE else 0,
                                group_size=group_size,
                                pid=srv.pid,
                                pipeline=pipe,
                            )
                    except StartError as e:
                        failures[spec.name] = str(e)
                        _log(f"  FAILED: {e}")
                        points.append({**base, "status": "failed", "note": str(e)})
                        continue
                    except (OSError, ikload.LoadError) as e:
                        failures[spec.name] = f"{spec.name}: {e or type(e).__name__}"
                        _log(f"  FAILED: {failures[spec.name]}")
                        points.append({**base, "status": "failed", "note": failures[spec.name]})
                        continue
                    cpu = res.get("server_cpu") or {}
                    point = {
                        **base,
                        "status": "ok",
                        "ok_rps": res["ok_rps"],
                        "requests": res["requests"],
                        "p50_ms": res["latency_ms"]["p50"],
                        "p99_ms": res["latency_ms"]["p99"],
                        "errors": res["errors"],
                        "cpu_us": cpu.get("us_per_request"),
                        "server_cores": cpu.get("cores"),
                        "client_cpu": res["client_cpu"],
                        "keepalive": res["keepalive"],
                        "pipelined": res["pipeline"],  # what ran: 1 for a server closing after each answer
                        "prefilled": (res.get("prefill") or {}).get("reached", 0),
                        # A destroy or label run that used up the prefill's instances stopped early.
                        "exhausted": bool(res.get("exhausted")),
                        "exit_code": srv.exit_code,
                    }
                    points.append(point)
                    _log(
                        f"  {point['ok_rps']:,.0f} req/s, CPU {_us(point['cpu_us'])} µs/request, "
                        f"p99 {point['p99_ms']} ms"
                    )
    return {
        "mode": "sweep",
        "targets": [s.name for s in specs],
        "methods": methods,
        "pipelines": pipelines,
        "levels": levels,
        "rounds": rounds,
        "duration": duration,
        "warmup": warmup,
        "prefill": prefill,
        "group_size": group_size,
        "points": points,
        "failures": failures,
    }


def sweep_markdown(result: dict[str, Any], baseline: str) -> str:
    merged = plots.sweep_points(result)
    names = result["targets"]
    others = [n for n in names if n != baseline]
    lines = [
        f"Concurrency sweep: {result['duration']:g} s per point after {result['warmup']:g} s of warm-up, a fresh "
        f"start of every target per point, targets alternating, {result['rounds']} round(s) (median); "
        f"describe/destroy/label points prefilled with {result['prefill']:,} instances in groups of "
        f"{result['group_size']:,}. CPU is the server's user+system time per answered request (/proc/PID/stat). "
        "† = ikload-bound.",
        "",
        "| method | connections | "
        + " | ".join(f"{n} req/s | {n} CPU µs/req" for n in names)
        + "".join(f" | {n} req/s vs {baseline} | {n} CPU vs {baseline}" for n in others)
        + " |",
        "|---|---|" + "---|---|" * len(names) + "---|---|" * len(others),
    ]
    bound = ran_out = False
    for method in plots.series_of(result):
        for level in result["levels"]:
            row = [method, str(level)]
            for n in names:
                p = merged.get((n, method, level))
                if p is None:
                    row += ["–", "–"]
                    continue
                if p.get("exhausted") and not p["requests"]:
                    row += ["ran out ‡", "–"]  # every instance went in the warm-up: no figure at all
                    ran_out = True
                    continue
                mark = ""
                if p["client_cpu"] > CLIENT_BOUND:
                    mark, bound = " †", True
                if p.get("exhausted"):
                    mark, ran_out = mark + " ‡", True
                errs = sum(p["errors"].values())
                if p.get("pipelined", 1) < p.get("pipeline", 1):
                    mark += " (not pipelined: closes after each answer)"
                row += [f"{p['ok_rps']:,.1f}{mark}" + (f" ({errs} err)" if errs else ""), _us(p["cpu_us"])]
            b = merged.get((baseline, method, level))
            for n in others:
                p = merged.get((n, method, level))
                if p is None or b is None or not (p["requests"] and b["requests"]):
                    row += ["–", "–"]
                else:
                    row += [_ratio(p["ok_rps"], b["ok_rps"]), _ratio(p["cpu_us"], b["cpu_us"])]
            lines.append("| " + " | ".join(row) + " |")
    notes = [f"- {n}: {why.splitlines()[0]}" for n, why in result["failures"].items()]
    if bound:
        notes.append(f"- {CLIENT_BOUND_NOTE}")
    if ran_out:
        notes.append(
            f"- ‡ the {result['prefill']:,} prefilled instances ran out before the run's end (each destroy takes "
            "one): the figure is over the time they lasted, or there is none when the warm-up took them all; "
            "a larger --prefill measures the whole run"
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _draw(kind: str, result: dict[str, Any], path: Path | None, labels: dict[str, str]) -> None:
    if path is None:
        return
    if not plots.have_matplotlib():
        _log(f"no plot: {plots.MISSING}")
        return
    if kind == "scaling":
        plots.plot_scaling(result, path, merge_rounds(result), labels)
    else:
        plots.plot_sweep(result, path, labels)
    _log(f"plot: {path}")


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Run one ikload workload against several InfraKit instance plugins, side by side.",
        epilog="Example: compare.py --target ours='infrakit-instance --listen unix://{socket} --state {state}' "
        "--target c='HOME={home} /path/to/infrakit-instance-c --name x --state {state}' "
        "--baseline c --scaling 0,1000,10000 --out-md /tmp/scaling.md. "
        "A target the user starts: --target go='unix:///path/to/socket' (its pid from SO_PEERCRED, or --pid-for).",
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="NAME=COMMAND|unix:///PATH",
        help="a shell command ({socket}, {state}, {home} are filled in; {cwd} is where compare.py started, "
        "the command runs in a fresh directory) or a running server",
    )
    p.add_argument(
        "--socket-for",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="where NAME's socket appears, e.g. {home}/.infrakit/plugins/x (default: {socket} "
        "if the command uses it, else the one socket under {home}/.infrakit/plugins)",
    )
    p.add_argument(
        "--pid-for",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="pid of an already running target, for its CPU time and RSS (default: the socket's peer, by SO_PEERCRED)",
    )
    p.add_argument("--baseline", help="target the ratios are against (default: the first)")
    p.add_argument("--rounds", type=int, default=None, help="repeats, targets alternating (3; scaling 1)")
    p.add_argument("-c", "--connections", type=int, default=16)
    p.add_argument("--mix", default="provision=1", help="ikload mix for the side-by-side run")
    p.add_argument(
        "--pipeline",
        default="1",
        metavar="N[,N...]",
        help="requests in flight per connection (1, as Go's client); a sweep takes several, e.g. 1,8, "
        "and runs every method at each",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per side-by-side run (5)")
    p.add_argument("--requests", type=int, help="requests per side-by-side run instead of --duration")
    p.add_argument("--prefill", type=int, default=0, help="instances to provision before each run")
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--group-size", type=int, default=10)
    p.add_argument("--scaling", metavar="SIZES", help="comma-separated state sizes, e.g. 0,1000,10000,100000")
    p.add_argument(
        "--concurrency",
        metavar="LEVELS",
        help="sweep: comma-separated numbers of connections, e.g. 1,4,16,64; each --method at each, "
        "targets alternating, a fresh start per point (--duration, --warmup; --prefill for describe/destroy/label)",
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        help=f"sweep: a method to sweep (repeatable; default: --mix); one of {', '.join(ikload.METHODS)}",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="how a target is named in plots (defaults: c is 'C plugin', go 'Go file plugin')",
    )
    p.add_argument("--max-seconds", type=float, default=5.0, help="cap of each scaling measurement (5)")
    p.add_argument("--max-prefill-seconds", type=float, default=60.0, help="cap of each scaling prefill (60)")
    p.add_argument("--start-timeout", type=float, default=15.0, help="seconds for a target to answer (15)")
    p.add_argument("--out-md", type=Path, help="Markdown table (JSON and PNG plot default next to it)")
    p.add_argument("--out-json", type=Path)
    p.add_argument(
        "--out-plot", "--out-svg", type=Path, help="plot of a scaling or sweep run (.png or .svg; needs matplotlib)"
    )
    p.add_argument("--keep-logs", type=Path, help="copy each started target's output into this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    specs = parse_targets(args.target, args.socket_for, args.pid_for)
    baseline = args.baseline or specs[0].name
    if baseline not in {s.name for s in specs}:
        raise SystemExit(f"compare: --baseline {baseline!r} is not a target")
    out_json = args.out_json or (args.out_md.with_suffix(".json") if args.out_md else None)
    labels = dict(_split(x, "--label") for x in args.label)
    out_plot = args.out_plot or (args.out_md.with_suffix(".png") if args.out_md else None)
    if (args.scaling or args.concurrency) and out_plot is None:
        out_plot = Path(tempfile.mkdtemp(prefix="compare-", dir="/tmp")) / "plot.png"
    if args.scaling and args.concurrency:
        raise SystemExit("compare: --scaling and --concurrency are separate runs")
    try:
        pipelines = list(dict.fromkeys(int(x) for x in args.pipeline.split(",") if x.strip()))
    except ValueError:
        raise SystemExit(f"compare: --pipeline wants numbers, got {args.pipeline!r}") from None
    if not pipelines or min(pipelines) < 1:
        raise SystemExit("compare: --pipeline wants numbers of at least 1")
    if len(pipelines) > 1 and not args.concurrency:
        raise SystemExit("compare: several --pipeline depths need a --concurrency sweep")
    if args.scaling and pipelines != [1]:
        raise SystemExit("compare: --scaling runs unpipelined, as InfraKit's client does")
    if args.concurrency:
        try:
            levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
            methods = args.method or [args.mix]
            for m in methods:
                ikload.parse_mix(m)
        except (ValueError, ikload.LoadError) as e:
            raise SystemExit(f"compare: {e}") from None
        if not levels or levels[0] < 1:
            raise SystemExit("compare: --concurrency wants positive numbers of connections")
        result = sweep(
            specs,
            methods,
            levels,
            rounds=args.rounds or 1,
            duration=args.duration,
            warmup=args.warmup,
            prefill=args.prefill,
            group_size=args.group_size,
            start_timeout=args.start_timeout,
            keep_logs=args.keep_logs,
            pipelines=pipelines,
        )
        md = sweep_markdown(result, baseline)
        _draw("sweep", result, out_plot, labels)
    elif args.scaling:
        if any(s.command is None for s in specs):
            raise SystemExit("compare: --scaling needs fresh state per size: give commands, not running servers")
        sizes = sorted({int(x) for x in args.scaling.split(",") if x.strip()})
        result = scaling(
            specs,
            sizes,
            rounds=args.rounds or 1,
            connections=args.connections,
            max_seconds=args.max_seconds,
            max_prefill_seconds=args.max_prefill_seconds,
            group_size=args.group_size,
            start_timeout=args.start_timeout,
            keep_logs=args.keep_logs,
        )
        md = scaling_markdown(result, baseline)
        _draw("scaling", result, out_plot, labels)
    else:
        load = {
            "mix": args.mix,
            "connections": args.connections,
            "duration": args.duration,
            "requests": args.requests,
            "prefill": args.prefill,
            "warmup": args.warmup,
            "group_size": args.group_size,
            "pipeline": pipelines[0],
        }
        if args.requests:
            load["duration"] = None
        result = compare(
            specs, rounds=args.rounds or 3, load=load, start_timeout=args.start_timeout, keep_logs=args.keep_logs
        )
        md = compare_markdown(result, baseline)
    result["baseline"] = baseline
    result["labels"] = labels
    print(md)
    if args.out_md:
        args.out_md.write_text(md)
        _log(f"table: {args.out_md}")
    if out_json:
        out_json.write_text(json.dumps(result, indent=2, default=str))
        _log(f"json: {out_json}")
    return 1 if len(result["failures"]) == len(specs) else 0


if __name__ == "__main__":
    sys.exit(main())
