#!/usr/bin/env python3
"""compare: run the same ikload workload against several InfraKit instance plugins, side by side.

Each ``--target NAME=COMMAND`` is a shell command starting a plugin; ``{socket}``, ``{state}`` and
``{home}`` in it become fresh temp paths per run. ``--target NAME=unix:///path`` (or tcp://) is a server
that is already running. The tool starts a target, waits until it answers a handshake, runs the
workload, stops it (SIGINT, then SIGTERM, then SIGKILL), and goes on to the next; rounds alternate.

``--scaling 0,1000,10000`` measures describe/provision/destroy throughput against state size and
writes a Markdown table, a JSON file and an SVG plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ikload  # noqa: E402  (a sibling file, not an installed package)

__all__ = [
    "TargetSpec",
    "StartError",
    "Running",
    "parse_targets",
    "compare",
    "compare_markdown",
    "scaling",
    "scaling_markdown",
    "render_svg",
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
        places = {"socket": str(tmp / "plugin.sock"), "state": str(tmp / "state.json"), "home": str(home)}
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
                    ikload.probe(str(path), timeout=5.0)
                except (OSError, ikload.LoadError) as e:
                    last_error = str(e) or type(e).__name__
                else:
                    self.address = f"unix://{path}"
                    self.pid = _leaf_pid(self.proc.pid)
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
    }


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}×"


def compare_markdown(result: dict[str, Any], baseline: str) -> str:
    s = result["summary"]
    base = s.get(baseline, {})
    lines = [
        f"Workload: {_describe_load(result['load'])}; {result['rounds']} round(s), median shown.",
        "",
        "| target | ok req/s (min–max) | p50 ms | p99 ms | max ms | MB/s | errors | peak RSS MB | keep-alive "
        f"| ikload CPU | req/s vs {baseline} | p99 vs {baseline} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s.items():
        rss = f"{m['peak_rss_kb'] / 1024:.1f}" if m["peak_rss_kb"] else "–"
        errs = ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "0"
        lines.append(
            f"| {name} | {m['ok_rps']:,.1f} ({m['ok_rps_min']:,.0f}–{m['ok_rps_max']:,.0f}) | {m['p50_ms']} "
            f"| {m['p99_ms']} | {m['max_ms']} | {(m['bytes_per_s'] or 0) / 1e6:.2f} | {errs} | {rss} "
            f"| {'yes' if m['keepalive'] else 'no'} "
            f"| {m['client_cpu']:.0%}{' †' if m['client_cpu'] > CLIENT_BOUND else ''} "
            f"| {_ratio(m['ok_rps'], base.get('ok_rps'))} "
            f"| {_ratio(m['p99_ms'], base.get('p99_ms'))} |"
        )
    for name, why in result["failures"].items():
        lines.append(f"| {name} | failed: {why.splitlines()[0]} | | | | | | | | | | |")
    if any(m["client_cpu"] > CLIENT_BOUND for m in s.values()):
        lines += ["", CLIENT_BOUND_NOTE]
    return "\n".join(lines) + "\n"


def _describe_load(load: dict[str, Any]) -> str:
    parts = [f"mix {load['mix']}", f"{load['connections']} connections"]
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
    }


def _merge_rounds(result: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
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
    merged = _merge_rounds(result)
    names = result["targets"]
    others = [n for n in names if n != baseline]
    lines = [
        f"State-size scaling: {result['connections']} connections, each measurement capped at "
        f"{result['max_seconds']:g} s, prefill capped at {result['max_prefill_seconds']:g} s, "
        f"{result['rounds']} round(s) (median). ‡ = prefill capped: measured at the size reached. "
        "† = ikload-bound.",
        "",
        "| state size | method | "
        + " | ".join(f"{n} req/s | {n} p99 ms" for n in names)
        + "".join(f" | {n} vs {baseline}" for n in others)
        + " |",
        "|---|---|" + "---|---|" * len(names) + "---|" * len(others),
    ]
    notes: list[str] = []
    for size in result["sizes"]:
        for method in SCALING_METHODS:
            row = [f"{size:,}", method]
            for n in names:
                c = merged.get((n, size, method))
                if c is None:
                    row += ["–", "–"]
                elif c["status"] != "ok":
                    row += [c["status"], ""]
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
                    row += [f"{c['ok_rps']:,.1f}{mark}" + (f" ({errs} err)" if errs else ""), f"{c['p99_ms']}"]
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
# SVG plot, written by hand so the tool needs nothing beyond ikload's own dependencies

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def render_svg(result: dict[str, Any]) -> str:
    """One panel per method: ok req/s (log y) against state size (log x), a line per target.

    Size 0 has no place on a log axis, so it sits one decade left of the smallest non-zero size and
    is labelled "0". Hollow markers are cells whose prefill was capped (plotted at the size reached).
    """
    merged = _merge_rounds(result)
    names = result["targets"]
    sizes = sorted(result["sizes"])
    nonzero = [s for s in sizes if s > 0]
    lo_x = math.log10(min(nonzero)) - 1 if nonzero else 0.0
    hi_x = math.log10(max(nonzero)) if nonzero else 1.0
    if hi_x <= lo_x:
        hi_x = lo_x + 1
    zero_x = lo_x
    pad = (hi_x - lo_x) * 0.06  # keep end points off the frame
    lo_x, hi_x = lo_x - pad, hi_x + pad

    def xval(size: int) -> float:
        return zero_x if size <= 0 else math.log10(size)

    rates = [c["ok_rps"] for c in merged.values() if c.get("status") == "ok" and c.get("ok_rps", 0) > 0]
    lo_y = math.floor(math.log10(min(rates))) if rates else 0
    hi_y = math.ceil(math.log10(max(rates))) if rates else 1
    if hi_y <= lo_y:
        hi_y = lo_y + 1

    pw, ph, ml, mr, mt, mb = 330, 250, 70, 20, 60, 55
    width = len(SCALING_METHODS) * (pw + ml + mr) + 10
    height = ph + mt + mb + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">'
        f"Throughput vs state size ({result['connections']} connections)</text>",
    ]
    for i, method in enumerate(SCALING_METHODS):
        ox = 10 + i * (pw + ml + mr) + ml
        oy = mt

        def px(v: float, ox: float = ox) -> float:
            return ox + (v - lo_x) / (hi_x - lo_x) * pw

        def py(v: float, oy: float = oy) -> float:
            return oy + ph - (v - lo_y) / (hi_y - lo_y) * ph

        out.append(
            f'<text x="{ox + pw / 2}" y="{oy - 10}" text-anchor="middle" font-size="14" '
            f'font-weight="bold">{escape(method)}</text>'
        )
        out.append(f'<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        for d in range(lo_y, hi_y + 1):
            y = py(d)
            out.append(f'<line x1="{ox}" y1="{y:.1f}" x2="{ox + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{ox - 6}" y="{y + 4:.1f}" text-anchor="end">{_si(10**d)}</text>')
        for s in sizes:
            x = px(xval(s))
            out.append(f'<line x1="{x:.1f}" y1="{oy}" x2="{x:.1f}" y2="{oy + ph}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{oy + ph + 16}" text-anchor="middle">{_si(s)}</text>')
        out.append(f'<text x="{ox + pw / 2}" y="{oy + ph + 36}" text-anchor="middle">instances in state (log)</text>')
        out.append(
            f'<text transform="translate({ox - 50},{oy + ph / 2}) rotate(-90)" '
            f'text-anchor="middle">ok requests/s (log)</text>'
        )
        for j, name in enumerate(names):
            color = _COLORS[j % len(_COLORS)]
            pts = []
            for s in sizes:
                c = merged.get((name, s, method))
                if c and c.get("status") == "ok" and c["ok_rps"] > 0:
                    x = px(xval(c["reached"] if c["capped"] else s))
                    pts.append((x, py(math.log10(c["ok_rps"])), c["capped"], c["ok_rps"]))
            if len(pts) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y, capped, v in pts:
                fill = "white" if capped else color
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{color}" '
                    f'stroke-width="2"><title>{escape(name)}: {v:,.1f} req/s</title></circle>'
                )
    ly = height - 14
    lx = 10 + ml
    for j, name in enumerate(names):
        color = _COLORS[j % len(_COLORS)]
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{lx + 30}" y="{ly}">{escape(name)}</text>')
        lx += 40 + 8 * len(name)
    out.append(f'<circle cx="{lx + 6}" cy="{ly - 4}" r="4" fill="white" stroke="#444" stroke-width="2"/>')
    out.append(f'<text x="{lx + 16}" y="{ly}">prefill capped (plotted at size reached)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _si(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Run one ikload workload against several InfraKit instance plugins, side by side.",
        epilog="Example: compare.py --target ours='infrakit-instance --listen unix://{socket} --state {state}' "
        "--target c='HOME={home} /path/to/infrakit-instance-c --name x --state {state}' "
        "--baseline c --scaling 0,1000,10000 --out-md /tmp/scaling.md",
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="NAME=COMMAND|unix:///PATH",
        help="a shell command ({socket}, {state}, {home} are filled in) or a running server",
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
        help="pid of an already running target, for its RSS",
    )
    p.add_argument("--baseline", help="target the ratios are against (default: the first)")
    p.add_argument("--rounds", type=int, default=None, help="repeats, targets alternating (3; scaling 1)")
    p.add_argument("-c", "--connections", type=int, default=16)
    p.add_argument("--mix", default="provision=1", help="ikload mix for the side-by-side run")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per side-by-side run (5)")
    p.add_argument("--requests", type=int, help="requests per side-by-side run instead of --duration")
    p.add_argument("--prefill", type=int, default=0, help="instances to provision before each run")
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--group-size", type=int, default=10)
    p.add_argument("--scaling", metavar="SIZES", help="comma-separated state sizes, e.g. 0,1000,10000,100000")
    p.add_argument("--max-seconds", type=float, default=5.0, help="cap of each scaling measurement (5)")
    p.add_argument("--max-prefill-seconds", type=float, default=60.0, help="cap of each scaling prefill (60)")
    p.add_argument("--start-timeout", type=float, default=15.0, help="seconds for a target to answer (15)")
    p.add_argument("--out-md", type=Path, help="Markdown table (JSON and SVG default next to it)")
    p.add_argument("--out-json", type=Path)
    p.add_argument("--out-svg", type=Path, help="scaling plot")
    p.add_argument("--keep-logs", type=Path, help="copy each started target's output into this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    specs = parse_targets(args.target, args.socket_for, args.pid_for)
    baseline = args.baseline or specs[0].name
    if baseline not in {s.name for s in specs}:
        raise SystemExit(f"compare: --baseline {baseline!r} is not a target")
    out_json = args.out_json or (args.out_md.with_suffix(".json") if args.out_md else None)
    if args.scaling:
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
        out_svg = args.out_svg or (args.out_md.with_suffix(".svg") if args.out_md else None)
        if out_svg is None:
            out_svg = Path(tempfile.mkdtemp(prefix="compare-", dir="/tmp")) / "scaling.svg"
        out_svg.write_text(render_svg(result))
        _log(f"plot: {out_svg}")
    else:
        load = {
            "mix": args.mix,
            "connections": args.connections,
            "duration": args.duration,
            "requests": args.requests,
            "prefill": args.prefill,
            "warmup": args.warmup,
            "group_size": args.group_size,
        }
        if args.requests:
            load["duration"] = None
        result = compare(
            specs, rounds=args.rounds or 3, load=load, start_timeout=args.start_timeout, keep_logs=args.keep_logs
        )
        md = compare_markdown(result, baseline)
    result["baseline"] = baseline
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
