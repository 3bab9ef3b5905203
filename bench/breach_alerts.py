#!/usr/bin/env python3
"""One breach, ever more distinct alerts: what a delivery costs as a rule's group gathers alerts
with a label that has a value per pod. Each delivery is one Alertmanager webhook with 10 alerts
no delivery sent before; the breach's record is read and written again by every event that
changes it, so without a bound its cost follows the number of alerts it holds. A breach keeps
at most 1,000 alerts (`MAX_ALERTS_PER_BREACH`).

    cargo build --release --bin rollbackd
    python3 bench/breach_alerts.py                      # ROLLBACKD_BIN=target/release/rollbackd
    python3 bench/breach_alerts.py --binary old=PATH --binary new=target/release/rollbackd

Prints, per binary, the median time of 20 deliveries at every 700 alerts sent, and its ratio to
the first row (measured in the same run). Not part of the tests.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

RULE = """rules:
  - name: wide
    match: ['alertname="Wide"']
    group_by: [alertname]
    service: web
    breach: { sustained: 1h, clear_after: 1h }
    approval: none
    steps:
      - name: noop
        run: [/bin/true]
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def delivery(first, n):
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Wide", "pod": f"p{i}"},
            "annotations": {},
            "startsAt": "2026-12-04T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"pod-{i:06}",
        }
        for i in range(first, first + n)
    ]
    return json.dumps(
        {"receiver": "r", "status": "firing", "version": "4", "groupKey": "g",
         "truncatedAlerts": 0, "externalURL": "http://am", "groupLabels": {},
         "commonLabels": {}, "commonAnnotations": {}, "alerts": alerts}
    ).encode()


def run(binary, rows, batch=10, every=70, samples=20):
    d = tempfile.mkdtemp()
    port = free_port()
    os.mkdir(f"{d}/rules")
    with open(f"{d}/rules/wide.yaml", "w") as f:
        f.write(RULE)
    with open(f"{d}/rollbackd.yaml", "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\ndata_dir: {d}/data\nrules_dir: {d}/rules\n"
                "limits: {ingest_per_second: 1000000, ingest_burst: 1000000}\n")
    proc = subprocess.Popen([binary, "serve", "--config", f"{d}/rollbackd.yaml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/readyz")
                break
            except OSError:
                time.sleep(0.05)
        sent, out, first = 0, [], None

        def post():
            nonlocal sent
            req = urllib.request.Request(url + "/v1/webhooks/alertmanager",
                                         data=delivery(sent, batch),
                                         headers={"content-type": "application/json"})
            t = time.perf_counter()
            urllib.request.urlopen(req).read()
            sent += batch
            return time.perf_counter() - t

        for _ in range(rows):
            times = sorted(post() for _ in range(samples))
            med = times[samples // 2]
            first = first or med
            out.append((sent, med * 1000, med / first))
            for _ in range(every - samples):
                post()
        return out
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", action="append", default=[],
                    help="NAME=PATH; default new=$ROLLBACKD_BIN or target/release/rollbackd")
    ap.add_argument("--rows", type=int, default=7)
    args = ap.parse_args()
    binaries = [b.split("=", 1) for b in args.binary] or [
        ["new", os.environ.get("ROLLBACKD_BIN", "target/release/rollbackd")]]
    for name, path in binaries:
        print(f"== {name} ({path})")
        print(f"{'alerts sent':>12} | {'ms per delivery of 10 new alerts':>33} | x first row")
        for sent, ms, x in run(path, args.rows):
            print(f"{sent:>12} | {ms:>33.2f} | {x:5.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
