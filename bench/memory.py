#!/usr/bin/env python3
"""Memory against delivery size: RSS of the real daemon after 104,000 distinct alerts, posted as
8 Alertmanager webhooks of 13,000 alerts and as 208 of 500.

    python3 bench/memory.py [--binary LABEL=PATH ...] [--alerts N]

Each binary runs every shape in a fresh daemon and data dir, on 127.0.0.1, one request at a time
(bounded: each request has a 120 s timeout). A rule with `group_by: [instance]` gives every alert
its own breach. A binary labelled `base` gets no `max_open_breaches_per_rule` (a daemon older than
the key rejects it); others run with the default cap (10,000) and with it raised above the alert
count (200,000). Printed per run: idle VmRSS after start (the baseline of the same run), VmRSS
2 s after the last delivery, VmHWM (the peak), each also as a ratio to idle, the statuses seen and
the open breaches at the end. Default binary: target/release/rollbackd (build it first).
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BENCH_RULE, ROOT, WORK, am_webhook, hostport, start, stop  # noqa: E402

RULE = BENCH_RULE.format(sustained="1h", step='"/bin/true"')


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def body(start, n, stamp):
    return am_webhook([{
        "status": "firing",
        "labels": {"alertname": "BenchHighErrorRate", "service": "web",
                   "environment": "production", "severity": "page",
                   "instance": f"i-{i:08d}"},
        "annotations": {"summary": "error rate above 5% for 5m",
                        "runbook_url": "https://runbooks.example.com/web-errors"},
        "startsAt": stamp, "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=job%3Aerrors%3Arate5m",
        "fingerprint": f"{i:016x}",
    } for i in range(start, start + n)])


def run(binary, work, name, per, total, cap):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "rules"))
    with open(os.path.join(d, "rules", "bench.yaml"), "w") as f:
        f.write(RULE)
    limits = "ingest_per_second: 1000000, ingest_burst: 1000000, max_body_bytes: 16777216"
    if cap is not None:
        limits += f", max_open_breaches_per_rule: {cap}"
    cfg = os.path.join(d, "rollbackd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:0\ndata_dir: {d}/data\nrules_dir: {d}/rules\n"
                f"limits: {{{limits}}}\n")
    env = dict(os.environ, ROLLBACKD_LOG="error")
    p, url = start([binary, "serve", "--config", cfg], name, "rollbackd listening on ", env)
    try:
        host, port = hostport(url)
        time.sleep(1)
        idle = status_kb(p.pid)["VmRSS"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = {}
        t0 = time.time()
        c = http.client.HTTPConnection(host, port, timeout=120)
        for first in range(0, total, per):
            b = body(first, min(per, total - first), stamp)
            c.request("POST", "/v1/webhooks/alertmanager", body=b,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        took = time.time() - t0
        time.sleep(2)
        m = status_kb(p.pid)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        open_ = next((int(float(l.split()[1])) for l in text.splitlines()
                      if l.startswith("rollbackd_breaches_open ")), None)
        return {"run": name, "alerts_per_webhook": per, "webhooks": -(-total // per),
                "cap": cap, "idle_mb": round(idle / 1024, 1),
                "rss_mb": round(m["VmRSS"] / 1024, 1), "hwm_mb": round(m["VmHWM"] / 1024, 1),
                "rss_x_idle": round(m["VmRSS"] / idle, 1), "hwm_x_idle": round(m["VmHWM"] / idle, 1),
                "statuses": statuses, "open_breaches": open_, "post_s": round(took, 1)}
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", default=[],
                    help="LABEL=PATH; a label `base` runs without the cap key")
    ap.add_argument("--alerts", type=int, default=104_000)
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.binary] or [
        ["new", os.path.join(ROOT, "target", "release", "rollbackd")]]
    work = WORK
    results = []
    for label, path in bins:
        caps = [None] if label == "base" else [None, 200_000]
        for per in (13_000, 500):
            for cap in caps:
                name = f"{label}-{per}-{'default' if cap is None else cap}"
                r = run(path, work, name, per, args.alerts, cap)
                r["binary"] = label
                results.append(r)
                print(json.dumps(r), flush=True)
    print()
    print(f"{'binary':8} {'per webhook':>11} {'cap':>8} {'idle MB':>8} {'RSS MB':>8} "
          f"{'HWM MB':>8} {'RSS/idle':>8} {'HWM/idle':>8} {'open':>7}  statuses")
    for r in results:
        cap = "none" if r["binary"] == "base" else (r["cap"] or 10_000)
        print(f"{r['binary']:8} {r['alerts_per_webhook']:>11} {cap:>8} {r['idle_mb']:>8} "
              f"{r['rss_mb']:>8} {r['hwm_mb']:>8} {r['rss_x_idle']:>8} {r['hwm_x_idle']:>8} "
              f"{r['open_breaches']!s:>7}  {r['statuses']}")
    print(f"(work dir {work})")


if __name__ == "__main__":
    sys.exit(main())
