#!/usr/bin/env python3
"""rollbackd benchmarks, driven by bench/run.sh (which builds the release binaries first).

Everything runs on 127.0.0.1 with bounded loops and time limits. Measures:
  1. ingest throughput and p50/p99 latency of POST /v1/webhooks/alertmanager under wrk
     (-t2 -c32 -d10s --latency, one matching alert per body, distinct fingerprints), against
     Alertmanager's own POST /api/v2/alerts and a hello-world axum server (the ceiling);
  2. decision latency (deadline -> incident durably written) with 10,000 open breaches whose
     deadlines fall over 3 s, from rollbackd_decision_latency_seconds;
  3. RSS after 250,000 distinct alert keys (rollbackd, and Alertmanager for comparison);
  4. cold start to /readyz 200 with 100,000 incidents and 1,000,000 timeline records in sled.
Prints a table and writes bench/results.json.
"""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
ROLLBACKD = os.path.join(REL, "rollbackd")
HELLO = os.path.join(REL, "examples", "hello_axum")
GEN_STORE = os.path.join(REL, "examples", "bench_store")
LUA = os.path.join(ROOT, "bench", "alert.lua")
ALERTMANAGER = shutil.which("prometheus-alertmanager")

WRK_ARGS = ["-t2", "-c32", "-d10s", "--latency"]
DECISION_BREACHES = int(os.environ.get("BENCH_DECISION_BREACHES", "10000"))
RSS_KEYS = int(os.environ.get("BENCH_RSS_KEYS", "250000"))
COLD_INCIDENTS = int(os.environ.get("BENCH_COLD_INCIDENTS", "100000"))
COLD_RECORDS = int(os.environ.get("BENCH_COLD_RECORDS", "1000000"))
PARTS = ("ingest", "decision", "rss", "cold_start")
# BENCH_ONLY=decision,cold_start runs only those parts (and leaves bench/results.json alone).
ONLY = [x for x in os.environ.get("BENCH_ONLY", ",".join(PARTS)).split(",") if x]
ALERTMANAGER_NOTES = {"rps": 27000, "rss_mb_276k": 760}

WORK = tempfile.mkdtemp(prefix="rollbackd-bench-")
PROCS = []


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def iso(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def start(argv, name, listening_prefix=None, env=None):
    """Starts a process; with listening_prefix, reads stdout until the line naming its URL."""
    err = open(os.path.join(WORK, f"{name}.stderr"), "w")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE if listening_prefix else subprocess.DEVNULL,
                         stderr=err, env=env, text=True)
    PROCS.append(p)
    url = None
    if listening_prefix:
        line = p.stdout.readline().strip()
        if listening_prefix not in line:
            raise SystemExit(f"{name}: unexpected first line {line!r}; see {err.name}")
        url = line.split(listening_prefix, 1)[1].strip()
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, url


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def request(host, port, method, path, body=None, headers=None, timeout=30):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def hostport(url):
    hp = url.split("://", 1)[1].rstrip("/")
    h, p = hp.rsplit(":", 1)
    return h, int(p)


def wait_http(url, path, want=200, timeout=30.0):
    h, p = hostport(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s, _ = request(h, p, "GET", path, timeout=2)
            if s == want:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def rollbackd(rules_yaml, name, extra_config=""):
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "rules"), exist_ok=True)
    with open(os.path.join(d, "rules", "bench.yaml"), "w") as f:
        f.write(rules_yaml)
    cfg = os.path.join(d, "rollbackd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:0\ndata_dir: {d}/data\nrules_dir: {d}/rules\n"
                "limits: {ingest_per_second: 1000000000, ingest_burst: 1000000000}\n" + extra_config)
    env = dict(os.environ, ROLLBACKD_LOG="warn")
    p, url = start([ROLLBACKD, "serve", "--config", cfg], name, "rollbackd listening on ", env)
    if not wait_http(url, "/readyz"):
        raise SystemExit(f"{name}: not ready")
    return p, url


def alertmanager(name):
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    cfg = os.path.join(d, "alertmanager.yml")
    with open(cfg, "w") as f:
        f.write("route:\n  receiver: blackhole\n  group_by: [alertname, service]\n"
                "  group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 4h\n"
                "receivers:\n  - name: blackhole\n")
    port = free_port()
    p, _ = start([ALERTMANAGER, f"--config.file={cfg}", f"--storage.path={d}/data",
                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                  "--log.level=warn"], name)
    url = f"http://127.0.0.1:{port}"
    if not wait_http(url, "/-/ready"):
        raise SystemExit(f"{name}: not ready")
    return p, url


BENCH_RULE = """rules:
  - name: bench-errors
    match:
      - alertname="BenchHighErrorRate"
    group_by: [instance]
    service: "web"
    environment: "production"
    breach:
      sustained: {sustained}
    approval: none
    steps:
      - name: roll back deployment
        run: [{step}]
        timeout: 5m
"""

# ---- 1. ingest throughput ----

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def run_wrk(url, mode, label):
    env = dict(os.environ, BENCH_MODE=mode)
    log(f"wrk {' '.join(WRK_ARGS)} against {label} ({url})")
    out = subprocess.run(["wrk", *WRK_ARGS, "-s", LUA, url], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    with open(os.path.join(WORK, f"wrk-{label}.txt"), "w") as f:
        f.write(out)
    res = {"target": label, "rps": None, "p50_ms": None, "p99_ms": None, "non_2xx": 0,
           "socket_errors": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        m = re.search(rf"^\s+{pct}\s+(\S+)", out, re.M)
        if m:
            res[key] = to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        res["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        res["socket_errors"] = m.group(1).strip()
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if m:
        res["requests"] = int(m.group(1))
    log(f"  {label}: {res}")
    return res


def bench_ingest():
    results = {}
    p, url = rollbackd(BENCH_RULE.format(sustained="1h", step='"/bin/true"'), "ingest")
    try:
        r = run_wrk(url + "/v1/webhooks/alertmanager", "webhook", "rollbackd")
        h, port = hostport(url)
        r["open_breaches_after"] = breaches_open(h, port)
        r["rss_mb_after"] = rss_mb(p.pid)
        results["rollbackd"] = r
    finally:
        stop(p)
    if ALERTMANAGER:
        p, url = alertmanager("am-ingest")
        try:
            r = run_wrk(url + "/api/v2/alerts", "alertmanager", "alertmanager")
            r["rss_mb_after"] = rss_mb(p.pid)
            results["alertmanager"] = r
        finally:
            stop(p)
    p, url = start([HELLO, "127.0.0.1:0"], "hello", "listening on ")
    try:
        wait_http(url, "/nothing", want=404)
        results["ceiling"] = run_wrk(url + "/v1/webhooks/alertmanager", "webhook", "hello_axum")
    finally:
        stop(p)
    return results


# ---- helpers for bulk posting ----

def am_webhook(alerts):
    return json.dumps({
        "receiver": "rollbackd", "status": "firing", "version": "4", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "alerts": alerts,
    }).encode()


def labels(i):
    return {"alertname": "BenchHighErrorRate", "service": "web", "environment": "production",
            "severity": "page", "instance": f"i-{i:08d}"}


def post_batches(url, path, bodies, what, time_limit):
    """POSTs each body on one keep-alive connection; stops at time_limit seconds."""
    h, port = hostport(url)
    c = http.client.HTTPConnection(h, port, timeout=60)
    t0 = time.time()
    sent = 0
    for body in bodies:
        if time.time() - t0 > time_limit:
            log(f"  {what}: time limit reached after {sent} requests")
            break
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise SystemExit(f"{what}: {r.status} {data[:300]!r}")
        sent += 1
    c.close()
    return sent, time.time() - t0


# ---- 2. decision latency ----

def breaches_open(h, port):
    """The daemon's own count (GET /v1/breaches lists at most 10,000)."""
    _, m = request(h, port, "GET", "/metrics")
    found = re.search(r"^rollbackd_breaches_open (\S+)", m.decode(), re.M)
    return int(float(found.group(1))) if found else None


def histogram(metrics_text, name):
    buckets = []
    count = None
    for line in metrics_text.splitlines():
        m = re.match(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
        m = re.match(rf"{name}_count (\S+)", line)
        if m:
            count = float(m.group(1))
    return sorted(buckets), count


def quantile(buckets, count, q):
    """Upper bound of the bucket holding quantile q, and a linear interpolation inside it."""
    if not count:
        return None, None
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return le, prev_le
            frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return le, prev_le + (le - prev_le) * frac
        prev_le, prev_c = le, c
    return None, None


def bench_decision():
    n = DECISION_BREACHES
    sustained = 30
    margin = 15.0
    spread = 3.0
    # The first incident runs a long step, so it holds the service's one rollback slot and every
    # later breach is decided the same way (opened, then suppressed: another incident is active).
    p, url = rollbackd(BENCH_RULE.format(sustained=f"{sustained}s", step='"/bin/sleep", "120"'),
                       "decision")
    h, port = hostport(url)
    try:
        now = datetime.now(timezone.utc)
        for dep, ago in (("dpl_prev", 600), ("dpl_cur", 120)):
            s, b = request(h, port, "POST", "/v1/releases", json.dumps({
                "service": "web", "environment": "production", "version": dep,
                "deployment_id": dep, "deployed_at": iso(now - timedelta(seconds=ago))}),
                {"Content-Type": "application/json"})
            assert s == 201, (s, b)
        first_deadline = now + timedelta(seconds=margin)
        per = 100
        bodies = []
        for start_i in range(0, n, per):
            alerts = []
            for i in range(start_i, min(n, start_i + per)):
                deadline = first_deadline + timedelta(seconds=spread * i / n)
                alerts.append({"status": "firing", "labels": labels(i), "annotations": {},
                               "startsAt": iso(deadline - timedelta(seconds=sustained)),
                               "endsAt": "0001-01-01T00:00:00Z", "fingerprint": f"d{i:015x}"})
            bodies.append(am_webhook(alerts))
        sent, took = post_batches(url, "/v1/webhooks/alertmanager", bodies, "decision alerts",
                                  margin - 2)
        posted_by = datetime.now(timezone.utc)
        log(f"  posted {n} alerts in {sent} requests, {took:.1f}s; first deadline in "
            f"{(first_deadline - posted_by).total_seconds():.1f}s")
        open_breaches = breaches_open(h, port)
        # Wait past the last deadline, then until every decision is counted (bounded).
        time.sleep(max(0.0, (first_deadline - datetime.now(timezone.utc)).total_seconds()) + spread)
        deadline = time.time() + 60
        buckets, count = [], 0
        while time.time() < deadline:
            _, m = request(h, port, "GET", "/metrics")
            buckets, count = histogram(m.decode(), "rollbackd_decision_latency_seconds")
            if count and count >= n:
                break
            time.sleep(0.5)
        le99, p99 = quantile(buckets, count, 0.99)
        le50, p50 = quantile(buckets, count, 0.50)
        le_max, _ = quantile(buckets, count, 1.0)
        res = {"breaches": n, "open_breaches_before_deadlines": open_breaches,
               "decisions_counted": count, "p50_s": p50, "p99_s": p99,
               "p99_bucket_le_s": le99, "max_bucket_le_s": le_max,
               "posted_before_first_deadline": posted_by < first_deadline,
               "buckets": [[("+Inf" if le == float("inf") else le), c] for le, c in buckets]}
        log(f"  decision: {res}")
        return res
    finally:
        stop(p)


# ---- 3. RSS after many distinct alert keys ----

def bench_rss():
    n = RSS_KEYS
    per = 500
    res = {}
    p, url = rollbackd(BENCH_RULE.format(sustained="1h", step='"/bin/true"'), "rss")
    try:
        idle = rss_mb(p.pid)
        bodies = (am_webhook([{"status": "firing", "labels": labels(i), "annotations": {},
                               "startsAt": iso(datetime.now(timezone.utc)),
                               "endsAt": "0001-01-01T00:00:00Z", "fingerprint": f"r{i:015x}"}
                              for i in range(s, min(n, s + per))])
                  for s in range(0, n, per))
        sent, took = post_batches(url, "/v1/webhooks/alertmanager", bodies, "rss alerts", 240)
        time.sleep(2)
        h, port = hostport(url)
        _, m = request(h, port, "GET", "/metrics")
        opened = re.search(r"^rollbackd_breaches_open (\S+)", m.decode(), re.M)
        res["rollbackd"] = {"keys": min(n, sent * per), "idle_mb": idle, "rss_mb": rss_mb(p.pid),
                            "post_s": round(took, 1),
                            "breaches_open": float(opened.group(1)) if opened else None}
        log(f"  rollbackd rss: {res['rollbackd']}")
    finally:
        stop(p)
    if ALERTMANAGER:
        p, url = alertmanager("am-rss")
        try:
            idle = rss_mb(p.pid)
            now = iso(datetime.now(timezone.utc))
            bodies = (json.dumps([{"labels": labels(i), "annotations": {"summary": "bench"},
                                   "startsAt": now, "generatorURL": "http://prometheus/graph"}
                                  for i in range(s, min(n, s + per))]).encode()
                      for s in range(0, n, per))
            sent, took = post_batches(url, "/api/v2/alerts", bodies, "alertmanager rss alerts", 240)
            time.sleep(2)
            res["alertmanager"] = {"keys": min(n, sent * per), "idle_mb": idle,
                                   "rss_mb": rss_mb(p.pid), "post_s": round(took, 1)}
            log(f"  alertmanager rss: {res['alertmanager']}")
        finally:
            stop(p)
    return res


# ---- 4. cold start ----

def bench_cold_start():
    d = os.path.join(WORK, "cold")
    os.makedirs(os.path.join(d, "rules"), exist_ok=True)
    t0 = time.time()
    subprocess.run([GEN_STORE, os.path.join(d, "data"), str(COLD_INCIDENTS), str(COLD_RECORDS)],
                   check=True, timeout=600)
    gen_s = time.time() - t0
    size = subprocess.run(["du", "-sm", os.path.join(d, "data")], capture_output=True,
                          text=True).stdout.split()[0]
    cfg = os.path.join(d, "rollbackd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:0\ndata_dir: {d}/data\nrules_dir: {d}/rules\n")
    times = []
    rss = None
    expired = None
    for attempt in range(3):
        t0 = time.monotonic()
        env = dict(os.environ, ROLLBACKD_LOG="warn")
        p, url = start([ROLLBACKD, "serve", "--config", cfg], f"cold-{attempt}",
                       "rollbackd listening on ", env)
        h, port = hostport(url)
        ready = None
        while time.monotonic() - t0 < 120:
            try:
                s, _ = request(h, port, "GET", "/readyz", timeout=5)
                if s == 200:
                    ready = round(time.monotonic() - t0, 4)
                    break
            except OSError:
                pass
            time.sleep(0.002)
        rss = rss_mb(p.pid)
        if attempt == 0 and ready is not None:
            _, b = request(h, port, "GET", "/v1/incidents?state=expired&limit=10000", timeout=60)
            expired = len(json.loads(b).get("items", []))
        stop(p)
        times.append(ready)
        log(f"  cold start {attempt + 1}: {ready}")
    ok = [t for t in times if t is not None]
    res = {"incidents": COLD_INCIDENTS, "timeline_records": COLD_RECORDS, "generate_s": round(gen_s, 1),
           "data_mb": int(size), "ready_s": times, "median_s": sorted(ok)[len(ok) // 2] if ok else None,
           "rss_mb_ready": rss, "expired_incidents_listed": expired}
    log(f"  cold start: {res}")
    return res


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main():
    started = time.time()
    machine = {"nproc": os.cpu_count(), "uname": os.uname().release,
               "alertmanager": subprocess.run([ALERTMANAGER, "--version"], capture_output=True,
                                              text=True).stdout.splitlines()[0]
               if ALERTMANAGER else None,
               "wrk": " ".join(WRK_ARGS)}
    results = {"when": iso(datetime.now(timezone.utc)), "machine": machine}
    try:
        unknown = set(ONLY) - set(PARTS)
        if unknown:
            raise SystemExit(f"BENCH_ONLY: unknown part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
        runs = {"ingest": ("ingest throughput", bench_ingest),
                "decision": ("decision latency", bench_decision),
                "rss": ("RSS after distinct alert keys", bench_rss),
                "cold_start": ("cold start", bench_cold_start)}
        for i, part in enumerate(PARTS):
            title, run = runs[part]
            if part in ONLY:
                log(f"{i + 1}/{len(PARTS)} {title}")
                results[part] = run()
            else:
                results[part] = {}
    finally:
        for p in list(PROCS):
            stop(p)
    results["total_s"] = round(time.time() - started, 1)

    ing = results["ingest"]
    rb, am, ceil = ing.get("rollbackd", {}), ing.get("alertmanager", {}), ing.get("ceiling", {})
    ratio_am = rb["rps"] / am["rps"] if rb.get("rps") and am.get("rps") else None
    ratio_ceil = rb["rps"] / ceil["rps"] if rb.get("rps") and ceil.get("rps") else None
    dec = results["decision"]
    rss = results["rss"]
    cold = results["cold_start"]
    p99_ms = dec["p99_s"] * 1000 if dec.get("p99_s") is not None else None
    targets = {
        "ingest_vs_alertmanager": {"value": ratio_am, "target": ">= 2.0",
                                   "met": ratio_am is not None and ratio_am >= 2.0},
        "ingest_vs_ceiling": {"value": ratio_ceil, "target": ">= 0.5",
                              "met": ratio_ceil is not None and ratio_ceil >= 0.5},
        "decision_p99_ms": {"value": p99_ms, "target": "< 50",
                            "met": dec.get("p99_bucket_le_s") is not None
                            and dec["p99_bucket_le_s"] <= 0.05},
        "rss_mb_250k_keys": {"value": rss.get("rollbackd", {}).get("rss_mb"), "target": "< 100",
                             "met": (rss.get("rollbackd", {}).get("rss_mb") or 1e9) < 100},
        "cold_start_s": {"value": cold.get("median_s"), "target": "< 1.0",
                         "met": (cold.get("median_s") or 1e9) < 1.0},
    }
    results["targets"] = targets
    results["alertmanager_notes"] = ALERTMANAGER_NOTES
    out = os.path.join(ROOT, "bench", "results.json")
    if set(ONLY) != set(PARTS):
        out = os.path.join(WORK, "results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")

    def met(k):
        return "yes" if targets[k]["met"] else "NO"

    rows = [
        ("ingest rollbackd POST /v1/webhooks/alertmanager", f"{fmt(rb.get('rps'), 0)} req/s",
         f"p50 {fmt(rb.get('p50_ms'), 2)} ms, p99 {fmt(rb.get('p99_ms'), 2)} ms, non-2xx {fmt(rb.get('non_2xx'))}", ""),
        ("ingest Alertmanager 0.25 POST /api/v2/alerts", f"{fmt(am.get('rps'), 0)} req/s",
         f"p50 {fmt(am.get('p50_ms'), 2)} ms, p99 {fmt(am.get('p99_ms'), 2)} ms (notes: ~27,000)", ""),
        ("ingest ceiling: hello-world axum", f"{fmt(ceil.get('rps'), 0)} req/s",
         f"p50 {fmt(ceil.get('p50_ms'), 2)} ms, p99 {fmt(ceil.get('p99_ms'), 2)} ms", ""),
        ("rollbackd / Alertmanager", f"{fmt(ratio_am, 2)}x", "target >= 2x", met("ingest_vs_alertmanager")),
        ("rollbackd / ceiling", f"{fmt(ratio_ceil, 2)}x", "target >= 0.5x", met("ingest_vs_ceiling")),
        (f"decision latency, {fmt(dec.get('breaches'))} open breaches", f"p99 {fmt(p99_ms, 1)} ms",
         f"p99 bucket le {fmt(dec.get('p99_bucket_le_s'), 4)} s, p50 {fmt((dec.get('p50_s') or 0) * 1000, 1)} ms, "
         f"max bucket le {fmt(dec.get('max_bucket_le_s'), 4)} s, {fmt(dec.get('decisions_counted'), 0)} decisions; target < 50 ms",
         met("decision_p99_ms")),
        (f"RSS rollbackd, {fmt(rss.get('rollbackd', {}).get('keys'))} keys",
         f"{fmt(rss.get('rollbackd', {}).get('rss_mb'))} MB",
         f"idle {fmt(rss.get('rollbackd', {}).get('idle_mb'))} MB; target < 100 MB", met("rss_mb_250k_keys")),
        (f"RSS Alertmanager, {fmt(rss.get('alertmanager', {}).get('keys'))} keys",
         f"{fmt(rss.get('alertmanager', {}).get('rss_mb'))} MB",
         "notes: ~760 MB after 276,000", ""),
        (f"cold start, {fmt(cold.get('incidents'))} incidents + {fmt(cold.get('timeline_records'))} records",
         f"{fmt(cold.get('median_s'), 3)} s", f"median of {cold.get('ready_s')}, {cold.get('data_mb')} MB in sled; target < 1 s",
         met("cold_start_s")),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print()
    print(f"rollbackd bench ({machine['nproc']} cores, wrk {machine['wrk']}, total {results['total_s']} s)")
    print(f"{'measure':<{w0}}  {'result':<{w1}}  met  detail")
    print(f"{'-' * w0}  {'-' * w1}  ---  ------")
    for name, value, detail, ok in rows:
        print(f"{name:<{w0}}  {value:<{w1}}  {ok:<3}  {detail}")
    print(f"\nwritten: {os.path.relpath(out, ROOT)}; logs in {WORK}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in list(PROCS):
            try:
                stop(p)
            except Exception:
                pass
