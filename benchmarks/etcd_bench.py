"""Figures for the etcd store, each measured in one run (ratios, not absolute rates).

* durable provision and destroy at 16 connections through the plugin, on a single
  member and on a 3-member cluster, each against a raw put loop of the same client
  library (aetcd) at the same concurrency on the same cluster, in the same run;
* Describe of a group from memory: the etcd store against the file store;
* replica-to-replica visibility (a change acknowledged on one replica, seen in the
  other's memory through its watch): p50 and p99;
* unavailability after a leader kill: from the kill to the first acknowledged change.

    python benchmarks/etcd_bench.py [--seconds 3] [--json]

It starts its own etcd members (Debian's etcd-server) and plugins on loopback
ports and temporary directories, and kills them on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from etcd_cluster import EtcdCluster  # noqa: E402
from plugin_proc import Client, console_script, spec, wait_for  # noqa: E402

PROCS: list[subprocess.Popen[bytes]] = []


def ikload(sock: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "ikload.py"), "unix://" + sock, "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def plugin(tmp: Path, name: str, *args: str) -> str:
    sock = str(tmp / f"{name}.sock")
    logf = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process writes it
    cmd = [console_script(), "--log", "2", "--listen", "unix://" + sock, "--state", str(tmp / f"{name}.json"), *args]
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    PROCS.append(proc)
    wait_for(lambda: os.path.exists(sock), 30, f"plugin {name}")
    return sock


async def raw_puts(url: str, seconds: float, concurrency: int) -> float:
    """Puts per second: ``concurrency`` coroutines each putting in a loop, one aetcd client."""
    from infrakit_instance.store.etcd import EtcdOptions, connect, parse_url

    client = await connect(parse_url(url), EtcdOptions())
    count = 0
    stop = time.monotonic() + seconds
    value = b"x" * 250  # about an instance's element

    async def loop(n: int) -> None:
        nonlocal count
        i = 0
        while time.monotonic() < stop:
            await client.put(f"/raw/{n}/{i}".encode(), value)
            i += 1
            count += 1

    start = time.monotonic()
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    rate = count / (time.monotonic() - start)
    await client.close()
    return rate


def durable(tmp: Path, cluster: EtcdCluster, label: str, seconds: float) -> dict[str, Any]:
    rate = asyncio.run(raw_puts(cluster.url("/raw"), seconds, 16))
    sock = plugin(tmp, f"p-{label}", "--store", cluster.url(f"/bench/{label}"))
    prov = ikload(sock, "-c", "16", "--mix", "provision=1", "--duration", str(seconds))
    dest = ikload(sock, "-c", "16", "--mix", "destroy=1", "--prefill", "20000", "--duration", str(seconds))
    return {
        "raw_put_per_s": round(rate, 1),
        "provision_per_s": prov["ok_rps"],
        "provision_p99_ms": prov["latency_ms"]["p99"],
        "provision_vs_raw": round(prov["ok_rps"] / rate, 2),
        "destroy_per_s": dest["ok_rps"],
        "destroy_vs_raw": round(dest["ok_rps"] / rate, 2),
        "errors": prov["error_total"] + dest["error_total"],
    }


def describe_group(tmp: Path, cluster: EtcdCluster, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    file_sock = plugin(tmp, "d-file")
    etcd_sock = plugin(tmp, "d-etcd", "--store", cluster.url("/bench/describe"))
    args = ["-c", "1", "--mix", "describe-group=1", "--prefill", "10000", "--group-size", "1000"]
    for name, sock in (("file", file_sock), ("etcd", etcd_sock), ("file2", file_sock), ("etcd2", etcd_sock)):
        r = ikload(sock, *args, "--duration", str(seconds), "--seed", "1")
        out[name] = {"rps": r["ok_rps"], "p50_ms": r["latency_ms"]["p50"]}
    out["etcd_vs_file_p50"] = round(
        (out["etcd"]["p50_ms"] + out["etcd2"]["p50_ms"]) / (out["file"]["p50_ms"] + out["file2"]["p50_ms"]), 2
    )
    return out


async def visibility(url: str, samples: int) -> dict[str, float]:
    """From submitting a provision on replica A: when A acknowledges it, and when replica B
    (another client connection and watch, in this process) holds it in memory."""
    from infrakit_instance._impl import codec
    from infrakit_instance.state import Record
    from infrakit_instance.store.etcd import EtcdStore

    a, b = EtcdStore(url), EtcdStore(url)
    await a.open()
    await b.open()
    acks, seen = [], []
    for i in range(samples):
        tags = {"infrakit.group": "vis"}
        rec = Record(f"v-{i}", codec.encode_brief(f"v-{i}", None, tags), b"{}")
        t0 = time.perf_counter()
        fut = a.provision(rec, tags)
        while rec.id not in b.state:
            await asyncio.sleep(0)
        seen.append((time.perf_counter() - t0) * 1000)
        await fut
        acks.append((time.perf_counter() - t0) * 1000)
    await a.close()
    await b.close()

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(xs[max(0, int(len(xs) * q) - 1)], 3)

    return {
        "acked_on_a_p50_ms": pct(acks, 0.5),
        "acked_on_a_p99_ms": pct(acks, 0.99),
        "visible_on_b_p50_ms": pct(seen, 0.5),
        "visible_on_b_p99_ms": pct(seen, 0.99),
    }


def leader_kill(tmp: Path, cluster: EtcdCluster) -> dict[str, Any]:
    sock = plugin(tmp, "k", "--store", cluster.url("/bench/kill"), "--etcd-timeout", "2")
    c = Client(sock)
    for _ in range(20):
        c.call("Instance.Provision", {"Spec": spec()})
    results = []
    for _ in range(3):
        leader = cluster.leader()
        cluster.kill(leader)
        killed = time.monotonic()
        failed = 0
        while "result" not in c.call_raw("Instance.Provision", {"Spec": spec()}):
            failed += 1
        results.append({"seconds": round(time.monotonic() - killed, 3), "failed_first": failed})
        cluster.restart(leader)
        cluster.wait_healthy()
    c.close()
    return {"after_kills": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of each timed load")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = ap.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clusters = []
        try:
            one = EtcdCluster(tmp / "one" if (tmp / "one").mkdir() is None else tmp, long_lived=True).start()
            clusters.append(one)
            figures["single member"] = durable(tmp, one, "one", opts.seconds)
            figures["describe a group of 1,000 among 10,000"] = describe_group(tmp, one, opts.seconds)
            figures["replica visibility"] = asyncio.run(visibility(one.url("/bench/vis"), 500))
            three = EtcdCluster(tmp / "three" if (tmp / "three").mkdir() is None else tmp, n=3, long_lived=True)
            clusters.append(three.start())
            figures["3-member cluster"] = durable(tmp, three, "three", opts.seconds)
            figures["leader kill"] = leader_kill(tmp, three)
        finally:
            for p in PROCS:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for c in clusters:
                c.stop()
    if opts.json:
        print(json.dumps(figures, indent=2))
    else:
        for k, v in figures.items():
            print(f"{k}: {json.dumps(v)}")


if __name__ == "__main__":
    main()
