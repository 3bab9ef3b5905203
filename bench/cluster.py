#!/usr/bin/env python3
"""Ingest through Raft: Alertmanager webhooks (one new alert each, every one opening a breach) on
a single node, on a one-member cluster, on the leader of a three-node cluster and through a
follower of it (forwarded to the leader), all on this machine in one run; figures as ratios to
the single node measured in the same run.

    cargo build --release --bin rollbackd
    python3 bench/cluster.py            # BENCH_SECONDS=10, ROLLBACKD_BIN=target/release/rollbackd

Needs wrk (Debian package `wrk`). Not part of the tests.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROLLBACKD_BIN", os.path.join(ROOT, "target/release/rollbackd"))
LUA = os.path.join(ROOT, "bench/alert.lua")
SECONDS = os.environ.get("BENCH_SECONDS", "10")
WRK = ["-t2", "-c32", f"-d{SECONDS}s", "--latency"]
SECRET = "bench-cluster-secret-0123456789"
RULE = """rules:
  - name: bench-errors
    match: ['alertname="BenchHighErrorRate"']
    group_by: [instance]
    service: web
    environment: production
    breach: { sustained: 1h }
    approval: none
    steps:
      - { name: roll back, run: [/bin/true] }
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read() or b"null")
    except Exception:
        return None, None


def start(work, name, port, cluster=""):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "rules"), exist_ok=True)
    with open(os.path.join(d, "rules", "bench.yaml"), "w") as f:
        f.write(RULE)
    cfg = os.path.join(d, "rollbackd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\ndata_dir: {d}/data\nrules_dir: {d}/rules\n"
                "limits: {ingest_per_second: 1000000000, ingest_burst: 1000000000, "
                "max_open_breaches_per_rule: 100000000}\n" + cluster)
    err = open(os.path.join(d, "stderr.log"), "w")
    return subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=err, env=dict(os.environ, ROLLBACKD_LOG="warn"))


def cluster_yaml(me, ports):
    members = "".join(f"    - {{ id: {i + 1}, url: \"http://127.0.0.1:{p}\" }}\n"
                      for i, p in enumerate(ports))
    return (f"cluster:\n  node_id: {me}\n  advertise: http://127.0.0.1:{ports[me - 1]}\n"
            f"  secret: \"{SECRET}\"\n  members:\n{members}")


def wait_ready(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        s, _ = get(f"http://127.0.0.1:{port}/readyz")
        if s == 200:
            return True
        time.sleep(0.1)
    return False


def wrk(port, label):
    url = f"http://127.0.0.1:{port}/v1/webhooks/alertmanager"
    out = subprocess.run(["wrk", *WRK, "-s", LUA, url], capture_output=True, text=True,
                         timeout=int(SECONDS) + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "target": label,
        "rps": float(rps.group(1)) if rps else None,
        "p99_ms": float(p99.group(1)) * unit[p99.group(2)] if p99 else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def main():
    if not shutil.which("wrk"):
        sys.exit("bench/cluster.py: needs wrk (apt-get install wrk)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench/cluster.py: no rollbackd binary at {BIN}; cargo build --release first")
    work = tempfile.mkdtemp(prefix="rollbackd-cluster-bench-")
    results, procs = [], []
    try:
        p = free_port()
        procs.append(start(work, "single", p))
        assert wait_ready(p), "single node not ready"
        results.append(wrk(p, "single node"))

        p = free_port()
        procs.append(start(work, "one-member", p, cluster_yaml(1, [p])))
        assert wait_ready(p), "one-member cluster not ready"
        results.append(wrk(p, "one-member cluster"))

        ports = [free_port() for _ in range(3)]
        for i in range(3):
            procs.append(start(work, f"node{i + 1}", ports[i], cluster_yaml(i + 1, ports)))
        assert all(wait_ready(q) for q in ports), "three-node cluster not ready"
        _, view = get(f"http://127.0.0.1:{ports[0]}/v1/cluster")
        leader = view["leader"]
        follower = next(i for i in (1, 2, 3) if i != leader)
        results.append(wrk(ports[leader - 1], "three nodes, at the leader"))
        results.append(wrk(ports[follower - 1], "three nodes, through a follower"))
    finally:
        for pr in procs:
            pr.kill()
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]["rps"] or 1.0
    print(f"\n{'target':36} {'req/s':>9} {'x single':>9} {'p99 ms':>8} {'non-2xx':>8}")
    for r in results:
        ratio = (r["rps"] or 0) / base
        print(f"{r['target']:36} {r['rps'] or 0:9.0f} {ratio:9.2f} {r['p99_ms'] or 0:8.1f} "
              f"{r['non_2xx']:8d}")
    with open(os.path.join(ROOT, "bench/cluster-results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
