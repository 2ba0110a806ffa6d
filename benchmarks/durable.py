#!/usr/bin/env python3
"""The durable path's ratios, side by side in one run.

    python benchmarks/durable.py --rounds 2 --duration 3

Starts the same plugin twice, once durable (``--fsync always``, the default) and once with
``--fsync never``, each on a fresh state in a folder of its own, prefills both (``--prefill``
provisions, untimed), and drives both with ``ikload.py`` at the same concurrency.  Each timed
phase is cut into ``--slices`` slices, run interleaved (provision on one plugin, then on the
other, then destroy on each, and again; the order swaps between rounds), so that a change of
load on a shared machine falls on every phase alike:

* **provision**: ``--duration`` seconds of Provision in all;
* **destroy**: ``--duration`` seconds of Destroy of the instances provisioned so far, oldest
  first (the prefill must outlast it: the tool says so when the destroys ran out);
* **syncs**: with ``--syncs``, one more Provision and one more Destroy phase on the durable plugin
  under ``strace -f -c -e trace=fdatasync -p PID`` (strace slows the server, so these phases are
  not used for the ratios): changes per fdatasync.

Between slices it times ``pwrite`` of 4 KiB + ``fdatasync`` on a file beside the durable state,
and prints the ceiling that this puts on durable ÷ never when every client is in one batch.
It prints, per round and over all rounds (the sums of both runs' requests over their seconds), durable
provision ÷ never provision, durable destroy ÷ durable provision, and the server's CPU per request
(from ``/proc/PID/stat``, as ikload reports it) for each phase.  ``--json FILE`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ikload  # noqa: E402

COMMAND = "infrakit-instance --log 2 --listen unix://{socket} --state {state}"


class Plugin:
    """One plugin process on a fresh state folder."""

    def __init__(self, command: str, flags: str, folder: str) -> None:
        os.makedirs(folder)
        self.folder = folder
        self.socket = os.path.join(folder, "sock")
        self.state = os.path.join(folder, "state.json")
        self.cmd = command.format(socket=self.socket, state=self.state) + (" " + flags if flags else "")
        self.proc = subprocess.Popen(shlex.split(self.cmd))
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"durable.py: the plugin did not start: {self.cmd}") from None
                time.sleep(0.05)
        self.session = ikload.Session(ikload.parse_target(self.socket))

    def load(self, mix: str, connections: int, **kw: Any) -> dict[str, Any]:
        return ikload.run_load(self.socket, mix=mix, connections=connections, session=self.session, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _strace_calls(text: str, name: str) -> int | None:
    """The ``calls`` column of ``name`` in an ``strace -c`` summary."""
    for line in text.splitlines():
        cols = line.split()
        if cols and cols[-1] == name:
            nums = [c for c in cols[:-1] if re.fullmatch(r"[\d.]+", c)]
            # % time, seconds, usecs/call, calls[, errors]
            return int(nums[3]) if len(nums) >= 4 else None
    return None


def counted_syncs(plugin: Plugin, mix: str, connections: int, duration: float) -> dict[str, Any]:
    """One phase under ``strace -f -c -e trace=fdatasync``: changes per fdatasync."""
    out = os.path.join(plugin.folder, f"strace-{mix.split('=')[0]}.txt")
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=fdatasync", "-o", out, "-p", str(plugin.proc.pid)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # strace attaches to every thread
    try:
        r = plugin.load(mix, connections, duration=duration)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    with open(out) as f:
        calls = _strace_calls(f.read(), "fdatasync")
    ok = r["ok"]
    return {
        "mix": mix,
        "changes": ok,
        "fdatasync": calls,
        "per_sync": round(ok / calls, 2) if calls else None,
        "rps_under_strace": r["ok_rps"],
    }


def sync_probe(folder: str, samples: list[float], count: int = 50) -> None:
    """What one durable write costs on this disk now: ``pwrite`` of 4 KiB into a file whose
    blocks are allocated, then ``fdatasync`` (what a batch of appends does), in µs."""
    path = os.path.join(folder, "probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size == 0:
            os.pwrite(fd, b" " * (1 << 20), 0)
            os.fsync(fd)
        for i in range(count):
            t = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i * 4096) % (1 << 20))
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)


def _cpu(r: dict[str, Any]) -> float | None:
    return (r.get("server_cpu") or {}).get("us_per_request")


def _joined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The slices of one phase as one: requests over seconds, server CPU over requests."""
    ok = sum(r["ok"] for r in parts)
    seconds = sum(r["seconds"] for r in parts)
    cpu = [(r.get("server_cpu") or {}).get("seconds") for r in parts]
    return {
        "ok": ok,
        "seconds": round(seconds, 3),
        "ok_rps": round(ok / seconds, 1),
        "errors": sum(r["error_total"] for r in parts),
        "cpu_us": round(sum(cpu) / ok * 1e6, 1) if ok and None not in cpu else None,  # type: ignore[arg-type]
        "p50_ms": [r["latency_ms"]["p50"] for r in parts],
        "ran_out": any(r.get("exhausted") for r in parts),
        "slices": [{"ok_rps": r["ok_rps"], "cpu_us": _cpu(r)} for r in parts],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of each timed phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed provisions first")
    parser.add_argument("--slices", type=int, default=4, help="each phase in this many interleaved slices")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("--prefill", type=int, default=30_000, help="instances provisioned first (untimed)")
    parser.add_argument("--command", default=COMMAND, help="the plugin ({socket} and {state} are filled in)")
    parser.add_argument("--syncs", action="store_true", help="count fdatasyncs with strace (extra phases)")
    parser.add_argument("--json", dest="json_out", help="write every figure to this file")
    args = parser.parse_args()
    if args.syncs and shutil.which("strace") is None:
        parser.error("--syncs needs strace")

    top = tempfile.mkdtemp(prefix="ik-durable-")
    rounds: list[dict[str, Any]] = []
    c = args.connections
    try:
        for n in range(args.rounds):
            order = ["durable", "never"] if n % 2 == 0 else ["never", "durable"]
            plugins = {
                "durable": Plugin(args.command, "", os.path.join(top, f"r{n}-durable")),
                "never": Plugin(args.command, "--fsync never", os.path.join(top, f"r{n}-never")),
            }
            rec: dict[str, Any] = {"round": n + 1, "order": order}
            try:
                for name in order:
                    p = plugins[name]
                    if args.prefill:
                        p.load("provision=1", c, requests=args.prefill)
                    if args.warmup:
                        p.load("provision=1", c, duration=args.warmup)
                # The phases in slices, interleaved: a change of the machine's load falls on all alike.
                runs: dict[str, list[dict[str, Any]]] = {}
                syncs: list[float] = []
                for _ in range(args.slices):
                    for kind in ("provision", "destroy"):
                        for name in order:
                            r = plugins[name].load(f"{kind}=1", c, duration=args.duration / args.slices)
                            runs.setdefault(f"{name}_{kind}", []).append(r)
                    sync_probe(plugins["durable"].folder, syncs)
                for key, parts in runs.items():
                    rec[key] = _joined(parts)
                syncs.sort()
                rec["disk_sync_us"] = {"p50": round(syncs[len(syncs) // 2]), "p90": round(syncs[len(syncs) * 9 // 10])}
                if args.syncs:
                    p = plugins["durable"]
                    rec["syncs_provision"] = counted_syncs(p, "provision=1", c, args.duration)
                    rec["syncs_destroy"] = counted_syncs(p, "destroy=1", c, args.duration)
            finally:
                for p in plugins.values():
                    p.stop()
            dp, np_, dd = rec["durable_provision"], rec["never_provision"], rec["durable_destroy"]
            rec["provision_durable_vs_never"] = round(dp["ok_rps"] / np_["ok_rps"], 3)
            rec["destroy_vs_provision_durable"] = round(dd["ok_rps"] / dp["ok_rps"], 3)
            # Clients that each wait for their answer, all in one batch: nothing overlaps that batch's
            # sync, so each batch takes what the --fsync never plugin takes for as many requests, plus
            # the sync.  The ratio cannot pass that ceiling (thread hops and wake-ups come on top).
            batch = rec.get("syncs_provision", {}).get("per_sync") or c
            t = batch / np_["ok_rps"] * 1e6
            rec["ceiling_one_batch"] = round(t / (t + rec["disk_sync_us"]["p50"]), 3)
            rounds.append(rec)
            _print_round(rec)
    finally:
        shutil.rmtree(top, ignore_errors=True)

    def rate(key: str) -> float:
        return sum(r[key]["ok"] for r in rounds) / sum(r[key]["seconds"] for r in rounds)

    total = {
        "provision_durable_vs_never": round(rate("durable_provision") / rate("never_provision"), 3),
        "destroy_vs_provision_durable": round(rate("durable_destroy") / rate("durable_provision"), 3),
    }
    print(
        f"all rounds: durable provision ÷ never {total['provision_durable_vs_never']:.2f}×,"
        f" durable destroy ÷ durable provision {total['destroy_vs_provision_durable']:.2f}×"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"connections": c, "prefill": args.prefill, "rounds": rounds, "all": total}, f, indent=2)
    return 0


def _print_round(rec: dict[str, Any]) -> None:
    print(f"round {rec['round']} (order: {', '.join(rec['order'])}); load average {os.getloadavg()[0]:.2f}")
    for key in ("durable_provision", "never_provision", "durable_destroy", "never_destroy"):
        ph = rec[key]
        note = " (ran out of instances)" if ph.get("ran_out") else ""
        slices = " ".join(f"{x['ok_rps']:,.0f}" for x in ph["slices"])
        print(
            f"  {key.replace('_', ' '):18s} {ph['ok_rps']:>9,.0f}/s  CPU {ph['cpu_us'] or 0:>6.1f} µs/req"
            f"  (slices {slices})  errors {ph['errors']}{note}"
        )
    for key in ("syncs_provision", "syncs_destroy"):
        if key in rec:
            s = rec[key]
            print(
                f"  {key.replace('_', ' '):18s} {s['changes']} changes,"
                f" {s['fdatasync']} fdatasync = {s['per_sync']} per sync"
            )
    d = rec["disk_sync_us"]
    print(
        f"  disk: pwrite 4 KiB + fdatasync p50 {d['p50']} µs, p90 {d['p90']} µs; with every client in one batch,"
        f" durable provision ÷ never cannot pass {rec['ceiling_one_batch']:.2f}×"
    )
    print(
        f"  durable provision ÷ never {rec['provision_durable_vs_never']:.2f}×;"
        f" durable destroy ÷ durable provision {rec['destroy_vs_provision_durable']:.2f}×"
    )


if __name__ == "__main__":
    sys.exit(main())
