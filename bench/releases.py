#!/usr/bin/env python3
"""Releases from the tools that deploy, against releases from CI: the same number of new releases
(each a new ledger entry, committed and flushed) posted as `POST /v1/releases` (the baseline), as
GitHub `deployment_status` deliveries (GitHub's published example payload, HMAC-signed) and as
Argo CD notifications (bearer token); figures as ratios to the baseline measured in the same run (first and last; their mean).

    cargo build --release --bin rollbackd
    python3 bench/releases.py           # BENCH_SECONDS=5, ROLLBACKD_BIN=target/release/rollbackd

Needs wrk (Debian package `wrk`). Not part of the tests. Every request is made before wrk starts
(bodies and signatures), so the figures are the daemon's, not the client's.
"""
import hashlib
import hmac
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
LUA = os.path.join(ROOT, "bench/releases.lua")
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
# More than wrk can send in SECONDS at the baseline's rate, per thread: no request repeats.
PER_THREAD = int(os.environ.get("BENCH_REQUESTS_PER_THREAD", str(12_000 * SECONDS)))
WRK = ["-t2", "-c32", f"-d{SECONDS}s", "--latency"]
GITHUB_SECRET = "bench-github-secret-0123456789"
TOKEN = "bench-releases-token-0123456789"
EXAMPLE = os.path.join(ROOT, "src/ingest/testdata/github-deployment_status.json")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def stamp(seconds_ago):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def requests(kind, tid, at):
    """Yields (path, headers, body) of PER_THREAD distinct releases for wrk thread `tid`."""
    example = json.load(open(EXAMPLE))
    for k in range(PER_THREAD):
        n = tid * 10_000_000 + k
        if kind == "ci":
            body = json.dumps({"service": f"svc-{n % 64}", "environment": "production",
                               "version": f"v{n}", "deployment_id": f"dpl_{n}",
                               "revision": f"{n:040x}", "deployed_at": at},
                              separators=(",", ":"))
            yield "/v1/releases", f"Authorization: Bearer {TOKEN}", body
        elif kind == "github":
            example["deployment"]["id"] = n
            example["deployment"]["sha"] = f"{n:040x}"
            example["deployment"]["payload"] = {"service": f"svc-{n % 64}"}
            example["deployment_status"]["created_at"] = at
            body = json.dumps(example, separators=(",", ":"))
            sig = hmac.new(GITHUB_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
            yield ("/v1/webhooks/github",
                   f"X-GitHub-Event: deployment_status|X-Hub-Signature-256: sha256={sig}", body)
        else:
            body = json.dumps({"app": f"svc-{n % 64}", "project": "default",
                               "revision": f"{n:040x}", "history_id": n, "deployed_at": at,
                               "sync_status": "Synced", "health_status": "Healthy",
                               "service": "", "environment": "production"},
                              separators=(",", ":"))
            yield "/v1/webhooks/argocd", f"Authorization: Bearer {TOKEN}", body


def run(work, kind, label):
    at = stamp(60)
    prefix = os.path.join(work, kind)
    size = 0
    for tid in (1, 2):
        with open(f"{prefix}-{tid}.tsv", "w") as f:
            for path, headers, body in requests(kind, tid, at):
                size = len(body)
                f.write(f"{path}\t{headers}\t{body}\n")
    d = tempfile.mkdtemp(prefix=f"daemon-{kind}-", dir=work)
    os.makedirs(os.path.join(d, "rules"))
    port = free_port()
    cfg = os.path.join(d, "rollbackd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\ndata_dir: {d}/data\nrules_dir: {d}/rules\n"
                f"tokens: {{releases: \"{TOKEN}\"}}\n"
                f"github: {{webhook_secret: \"{GITHUB_SECRET}\"}}\n"
                "limits: {ingest_per_second: 1000000000, ingest_burst: 1000000000}\n")
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "stderr.log"), "w"),
                            env=dict(os.environ, ROLLBACKD_LOG="warn"))
    try:
        assert ready(port), f"{label}: daemon not ready"
        out = subprocess.run(["wrk", *WRK, "-s", LUA, f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=SECONDS + 120,
                             env=dict(os.environ, BENCH_REQUESTS=prefix)).stdout
    finally:
        proc.kill()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {p: re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out) for p in ("50", "99")}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests_sent = int(total.group(1)) if total else 0
    return {
        "target": label,
        "body_bytes": size,
        "rps": float(rps.group(1)) if rps else None,
        "p50_ms": float(pct["50"].group(1)) * unit[pct["50"].group(2)] if pct["50"] else None,
        "p99_ms": float(pct["99"].group(1)) * unit[pct["99"].group(2)] if pct["99"] else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "repeated": requests_sent > 2 * PER_THREAD,
    }


def main():
    if not shutil.which("wrk"):
        sys.exit("bench/releases.py: needs wrk (apt-get install wrk)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench/releases.py: no rollbackd binary at {BIN}; cargo build --release first")
    work = tempfile.mkdtemp(prefix="rollbackd-releases-bench-")
    try:
        # The baseline first and last: its mean is what the others are compared with, and the
        # two runs show how much the machine drifted meanwhile.
        results = [
            run(work, "ci", "POST /v1/releases (CI)"),
            run(work, "github", "POST /v1/webhooks/github"),
            run(work, "argocd", "POST /v1/webhooks/argocd"),
            run(work, "ci", "POST /v1/releases (CI) again"),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = ((results[0]["rps"] or 0) + (results[-1]["rps"] or 0)) / 2 or 1.0
    print(f"\n{'target':30} {'body B':>7} {'req/s':>9} {'x CI':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'non-2xx':>8}")
    for r in results:
        print(f"{r['target']:30} {r['body_bytes']:7d} {r['rps'] or 0:9.0f} "
              f"{(r['rps'] or 0) / base:6.2f} {r['p50_ms'] or 0:7.2f} {r['p99_ms'] or 0:7.2f} "
              f"{r['non_2xx']:8d}" + ("  (requests repeated: raise BENCH_REQUESTS_PER_THREAD)"
                                      if r["repeated"] else ""))
    with open(os.path.join(ROOT, "bench/releases-results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
