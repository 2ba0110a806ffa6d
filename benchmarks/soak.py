#!/usr/bin/env python3
"""Soak: drive a plugin through many requests at a steady state size and watch its memory.

    python benchmarks/soak.py --requests 1000000 --prefill 10000

Starts ``infrakit-instance`` (or the command given with ``--command``, with
``{socket}`` and ``{state}`` filled in), prefills it, then runs a balanced mix
(provisions and destroys in equal numbers, so the state size stays put, plus
describes and labels) in chunks, printing the server's RSS after each chunk.
RSS that keeps growing once the caches are warm is a leak. ``--out-plot soak.png`` draws RSS over
requests (needs matplotlib, the ``bench`` extra); ``--out-json`` keeps the samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ikload  # noqa: E402
import plots  # noqa: E402

MIX = "provision=4,destroy=4,describe-group=1,label=1,validate=1"


def rss_kb(pid: int) -> tuple[int, int]:
    """The process's resident set size now, and its peak, in kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="requests between RSS samples")
    parser.add_argument("--prefill", type=int, default=10_000)
    parser.add_argument("--mix", default=MIX)
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument(
        "--command",
        default="infrakit-instance --log 2 --listen unix://{socket} --state {state}",
        help="the plugin to start ({socket} and {state} are filled in)",
    )
    parser.add_argument("--out-json", type=Path, help="write the samples as JSON")
    parser.add_argument("--out-plot", type=Path, help="plot RSS over requests (.png or .svg; needs matplotlib)")
    args = parser.parse_args(argv)
    if args.out_plot and not plots.have_matplotlib():
        print(f"soak: no plot: {plots.MISSING}", file=sys.stderr)
        args.out_plot = None

    folder = tempfile.mkdtemp(prefix="ik-soak-")
    sock, state = os.path.join(folder, "sock"), os.path.join(folder, "state.json")
    cmd = args.command.format(socket=sock, state=state)
    proc = subprocess.Popen(shlex.split(cmd))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(sock)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"the plugin did not start: {cmd}", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        session = ikload.Session(ikload.parse_target(sock), group_size=1000)
        if args.prefill:
            pre = ikload.run_load(sock, mix="provision=1", requests=args.prefill, session=session, pid=proc.pid)
            print(f"prefill {args.prefill} instances at {pre['ok_rps']:,.0f}/s", end="; ")
        rss0 = rss_kb(proc.pid)[0]
        print(f"RSS {rss0 / 1024:.1f} MB")
        print(
            f"{'requests':>10} {'req/s':>9} {'CPU µs/req':>10} {'errors':>7} {'RSS MB':>8} {'peak MB':>8} "
            f"{'state MB':>9}"
        )
        done = 0
        samples = []
        record: list[dict[str, Any]] = []
        kinds: collections.Counter[str] = collections.Counter()  # errors of the whole run, by kind
        while done < args.requests:
            n = min(args.chunk, args.requests - done)
            r = ikload.run_load(
                sock, mix=args.mix, requests=n, session=session, connections=args.connections, pid=proc.pid
            )
            done += n
            rss, peak = rss_kb(proc.pid)
            samples.append(rss)
            cpu = (r.get("server_cpu") or {}).get("us_per_request")
            record.append(
                {
                    "requests": done,
                    "ok_rps": r["ok_rps"],
                    "cpu_us": cpu,
                    "errors": r["error_total"],
                    "error_kinds": r["errors"],  # e.g. {"rpc:-32000": 2, "http:413": 1}
                    "rss_kb": rss,
                    "peak_kb": peak,
                    "state_bytes": os.path.getsize(state),
                }
            )
            print(
                f"{done:>10,} {r['ok_rps']:>9,.0f} {cpu if cpu is not None else '-':>10} {r['error_total']:>7} "
                f"{rss / 1024:>8.1f} {peak / 1024:>8.1f} {os.path.getsize(state) / 1e6:>9.1f}"
                + (f"  {r['errors']}" if r["errors"] else ""),
                flush=True,
            )
            kinds.update(r["errors"])
        if len(samples) >= 3:
            warm = samples[1]
            print(
                f"RSS after the first chunk {warm / 1024:.1f} MB, at the end {samples[-1] / 1024:.1f} MB "
                f"({(samples[-1] - warm) / 1024:+.1f} MB over {done - args.chunk:,} requests)"
            )
        print(f"errors {sum(kinds.values())}" + (f" by kind: {dict(kinds.most_common())}" if kinds else ""))
        result = {
            "mode": "soak",
            "command": args.command,
            "mix": args.mix,
            "connections": args.connections,
            "prefill": args.prefill,
            "rss_after_prefill_kb": rss0,
            "samples": record,
            "errors": dict(kinds.most_common()),
        }
        if args.out_json:
            args.out_json.write_text(json.dumps(result, indent=2))
            print(f"json: {args.out_json}")
        if args.out_plot:
            plots.plot_soak(result, args.out_plot)
            print(f"plot: {args.out_plot}")
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
