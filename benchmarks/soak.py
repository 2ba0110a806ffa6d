#!/usr/bin/env python3
"""Soak: drive a plugin through many requests at a steady state size and watch its memory.

    python benchmarks/soak.py --requests 1000000 --prefill 10000

Starts ``infrakit-instance`` (or the command given with ``--command``, with
``{socket}`` and ``{state}`` filled in), prefills it, then runs a balanced mix
(provisions and destroys in equal numbers, so the state size stays put, plus
describes and labels) in chunks, printing the server's RSS after each chunk.
RSS that keeps growing once the caches are warm is a leak.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ikload  # noqa: E402

MIX = "provision=4,destroy=4,describe-group=1,label=1,validate=1"


def rss_kb(pid: int) -> tuple[int, int]:
    """The process's resident set size now, and its peak, in kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def main() -> int:
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
    args = parser.parse_args()

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
        pre = ikload.run_load(sock, mix="provision=1", requests=args.prefill, session=session)
        print(f"prefill {args.prefill} instances at {pre['ok_rps']:,.0f}/s; RSS {rss_kb(proc.pid)[0] / 1024:.1f} MB")
        print(f"{'requests':>10} {'req/s':>9} {'errors':>7} {'RSS MB':>8} {'peak MB':>8} {'state MB':>9}")
        done = 0
        samples = []
        while done < args.requests:
            n = min(args.chunk, args.requests - done)
            r = ikload.run_load(sock, mix=args.mix, requests=n, session=session, connections=args.connections)
            done += n
            rss, peak = rss_kb(proc.pid)
            samples.append(rss)
            print(
                f"{done:>10,} {r['ok_rps']:>9,.0f} {r['error_total']:>7} {rss / 1024:>8.1f} {peak / 1024:>8.1f}"
                f" {os.path.getsize(state) / 1e6:>9.1f}",
                flush=True,
            )
        if len(samples) >= 3:
            warm = samples[1]
            print(
                f"RSS after the first chunk {warm / 1024:.1f} MB, at the end {samples[-1] / 1024:.1f} MB "
                f"({(samples[-1] - warm) / 1024:+.1f} MB over {done - args.chunk:,} requests)"
            )
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
