#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/seed-* from realistic payloads: the repository's
tests (golden replay inputs, unit-test bodies, the PagerDuty vector, the fake PagerDuty's bodies),
the shipped rules and config, and a few hand-made edge cases. Run from anywhere; idempotent."""
import hashlib, hmac, json, pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SECRET = "ChAnGeMe+fuzz/secret=="  # the fixed secret of fuzz_targets/pagerduty.rs


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


def dumps(v):
    return json.dumps(v, separators=(",", ":"))


# ---- inputs recorded in the golden replay tests, by source ----
golden = sorted((ROOT / "tests/golden/replay").glob("*.jsonl"))
n = {}
for f in golden:
    if f.name.endswith(".expected.jsonl"):
        continue
    for line in f.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        src = rec.get("source")
        target = {"alertmanager": "alertmanager", "signal": "signals", "release": "releases"}.get(src)
        if target and "body" in rec:
            n[target] = n.get(target, 0) + 1
            put(target, f"golden-{f.stem}-{n[target]}", dumps(rec["body"]))

# ---- Alertmanager / Grafana ----
AM = {
    "receiver": "rollbackd", "status": "firing", "version": "4",
    "groupKey": '{}:{alertname="PortalHighErrorRate", service="portal"}', "truncatedAlerts": 0,
    "externalURL": "http://am:9093", "groupLabels": {"alertname": "PortalHighErrorRate"},
    "commonLabels": {"alertname": "PortalHighErrorRate", "service": "portal"},
    "commonAnnotations": {"summary": "5xx above 1%"},
    "alerts": [
        {"status": "firing", "labels": {"alertname": "PortalHighErrorRate", "service": "portal",
                                         "environment": "production", "severity": "page"},
         "annotations": {"summary": "5xx above 1%"}, "startsAt": "2026-11-24T10:00:00.123456789Z",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph?g0.expr=x",
         "fingerprint": "c7a1d3f0e5b2a4c6"},
        {"status": "resolved", "labels": {"alertname": "X"}, "annotations": {},
         "startsAt": "2026-11-24T09:00:00Z", "endsAt": "2026-11-24T09:30:00+02:00", "fingerprint": ""},
    ],
    "notification_reason": 1,
}
put("alertmanager", "unit-two-alerts", json.dumps(AM, indent=1))
one = dict(AM, alerts=AM["alerts"][:1])
put("alertmanager", "one-alert", dumps(one))
put("alertmanager", "empty-alerts", dumps(dict(AM, alerts=[])))
put("alertmanager", "no-fingerprint", dumps(dict(AM, alerts=[{k: v for k, v in AM["alerts"][0].items() if k != "fingerprint"}])))
put("alertmanager", "version3", '{"version":"3","alerts":[]}')
put("alertmanager", "year0", dumps(dict(AM, alerts=[dict(AM["alerts"][0], startsAt="0000-01-01T00:00:00Z")])))
put("alertmanager", "year9999", dumps(dict(AM, alerts=[dict(AM["alerts"][0], startsAt="9999-12-31T23:59:59.999999999Z")])))
put("alertmanager", "offset", dumps(dict(AM, alerts=[dict(AM["alerts"][0], startsAt="2026-11-24T12:00:00.5-14:00")])))
put("alertmanager", "routeLabels", dumps(dict(one, routeLabels={"team": "web"})))

GRAFANA = {
    "receiver": "r", "status": "firing", "orgId": 1, "state": "alerting", "title": "t", "message": "m",
    "version": "1", "groupKey": "{}", "truncatedAlerts": 0, "externalURL": "http://grafana",
    "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
    "alerts": [{"status": "firing", "labels": {"alertname": "A", "service": "portal"}, "annotations": {},
                "startsAt": "2026-11-24T12:00:00.123456+02:00", "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "abc", "silenceURL": "s", "dashboardURL": "d", "panelURL": "p",
                "values": {"B": 1.5, "C": 0}, "valueString": "[ var='B' value=1.5 ]"}],
}
put("grafana", "unit", json.dumps(GRAFANA, indent=1))
put("grafana", "no-version", dumps({k: v for k, v in GRAFANA.items() if k != "version"}))
put("grafana", "resolved", dumps(dict(GRAFANA, status="resolved", alerts=[dict(GRAFANA["alerts"][0], status="resolved", endsAt="2026-11-24T12:05:00Z")])))
put("grafana", "alertmanager-shape", dumps(one))

# ---- signals ----
put("signals", "one", '{"labels":{"alertname":"A"},"status":"firing","starts_at":"2026-01-01T00:00:00Z"}')
put("signals", "many", '[{"labels":{"a":"1"},"status":"firing","key":"k"},{"labels":{"a":"2"},"status":"resolved","ends_at":"2026-01-01T00:05:00Z"}]')
put("signals", "empty-list", "[]")
put("signals", "unknown-field", '{"labels":{"a":"b"},"status":"firing","extra":1}')

# ---- releases ----
put("releases", "unit", '{"service":"portal","environment":"production","version":"v1.2.3","deployment_id":"dpl_1"}')
put("releases", "full", '{"service":"portal","environment":"production","version":"v1.2.3","deployment_id":"dpl_8Kq2","deployed_at":"2026-11-24T11:58:00Z"}')
put("releases", "future", '{"service":"a","version":"1","deployment_id":"d","deployed_at":"2099-01-01T00:00:00Z"}')
put("releases", "unsafe", '{"service":"a b","version":"$(id)","deployment_id":"--force"}')

# ---- PagerDuty: first line the signature header, then the body ----
def signed(body):
    tag = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    return f"v1={tag}\n{body}"

def envelope(eid, etype, agent, data):
    user = None if agent is None else {"html_url": f"https://acme.pagerduty.com/users/{agent}", "id": agent,
                                        "self": f"https://api.pagerduty.com/users/{agent}",
                                        "summary": f"User {agent}", "type": "user_reference"}
    return dumps({"event": {"id": eid, "event_type": etype, "resource_type": etype.split(".")[0],
                            "occurred_at": "2026-11-24T10:00:00.000Z", "agent": user, "client": None, "data": data}})

vector = (ROOT / "src/ingest/testdata/pagerduty_webhookv3_vector.json").read_text().strip()
put("pagerduty", "vector-signed", signed(vector))
put("pagerduty", "vector-unsigned", "-\n" + vector)
inc = {"id": "Q1XYZ", "type": "incident", "number": 1, "status": "triggered", "created_at": "2026-11-24T10:00:00Z",
       "title": "portal errors", "service": {"id": "PSVC001", "summary": "portal", "type": "service_reference"},
       "priority": None, "urgency": "high", "incident_key": "rollbackd/inc-000002", "conference_bridge": None}
put("pagerduty", "triggered", signed(envelope("01A", "incident.triggered", None, inc)))
put("pagerduty", "resolved", signed(envelope("01B", "incident.resolved", "PABC123", dict(inc, status="resolved"))))
wf = {"id": "P3SNKQS", "type": "incident_workflow_instance", "summary": "Rollback decision",
      "incident_workflow": {"id": "PAPPRV1", "summary": "Approve rollback", "type": "incident_workflow_reference"},
      "incident": {"id": "Q1XYZ", "summary": "rollback", "type": "incident_reference"}}
put("pagerduty", "workflow-approve", signed(envelope("01C", "incident.workflow.started", "PABC123", wf)))
note = {"incident": {"id": "Q1XYZ", "type": "incident_reference"}, "id": "PNOTE99",
        "content": "/reject  the error rate is from a partner outage", "trimmed": False, "type": "incident_note"}
put("pagerduty", "note-reject", signed(envelope("01D", "incident.annotated", "PDEF456", note)))
put("pagerduty", "ping", signed(envelope("01E", "pagey.ping", None, {"message": "Hello from your friend Pagey!", "type": "ping"})))
body = envelope("01F", "incident.acknowledged", "PABC123", inc)
put("pagerduty", "rotation", "v1=" + "0" * 64 + ", v0=abc," + signed(body))
put("pagerduty", "malformed-sig", "v1=zz\n" + body)

# ---- rules and config: the shipped files and the test fixtures ----
for f in sorted((ROOT / "rules").glob("*.yaml")) + sorted((ROOT / "tests/golden/replay/rules").glob("*.yaml")):
    put("rules", f"{f.parent.name}-{f.stem}", f.read_text())
for f in sorted((ROOT / "rules/presets").glob("*.yaml")):
    put("rules", f"preset-{f.stem}", f.read_text())
put("rules", "anchors", "x: &a [1,2]\nrules:\n  - name: r\n    service: s\n    breach: {sustained: 1s}\n    match: *a\n")
put("rules", "http-url-redirects", """rules:
  - name: r
    match: ['alertname="X"']
    service: s
    breach: {sustained: 1s}
    steps:
      - name: ok
        http: { url: "https://api.example.com/v1/{{ labels.c }}/x?to={{ release.previous.deployment_id }}", follow_redirects: same_origin }
      - name: host
        http: { url: "http://{{ labels.c }}.invalid:8080/x#{{ labels.f }}", follow_redirects: always }
      - name: argv secret
        run: [tool, --token, "${env:TOKEN}"]
        env: { TOKEN: "${env:TOKEN}" }
""")
for f in [ROOT / "rollbackd.yaml", ROOT / "tests/golden/replay/rollbackd.yaml"]:
    put("config", f"{f.parent.name}-{f.stem}", f.read_text())
put("config", "contract", """listen: 0.0.0.0:9750
data_dir: /var/lib/rollbackd
rules_dir: /etc/rollbackd/rules
public_url: https://rollbackd.example.com
tokens: { ingest: "ingest-token-0123456789", read: "read-token-0123456789", admin: "${env:HOME}-admin-token-0123456789" }
pagerduty:
  webhook_secrets: ["s1", "s2"]
  api_url: https://api.pagerduty.com
  api_token: "tok"
  from: rollbackd@example.com
  events_url: https://events.pagerduty.com
  routing_key: "0123456789abcdef0123456789abcdef"
  workflows: { approve: PAPPRV1, reject: PREJCT1 }
people:
  - { id: ada, name: Ada Founder, pagerduty_user: PABC123, roles: [founder] }
  - { id: cy, name: Cy Lead, pagerduty_user: PDEF456, roles: [client-success-lead] }
notifiers:
  incidents: { slack_webhook: "https://hooks.slack.com/services/T/B/X" }
  ops: { webhook: "http://127.0.0.1:1/hook", secret: "whsec" }
grafana: { webhook_secret: "g" }
limits: { ingest_per_second: 200, ingest_burst: 400, max_body_bytes: 4096 }
step_output_bytes: 100
""")
put("config", "security", """tokens: { ingest: "ingest-token-0123456789", releases: "releases-token-0123456789", admin: "admin-token-0123456789" }
grafana: { webhook_secret: "${env:HOME}", signature_max_age: 90s }
limits: { header_read_timeout: 2s, body_read_timeout: 1m, max_connections: 8, ingest_per_second: 1, ingest_burst: 1 }
""")
put("config", "empty", "")
put("config", "bad-ref", 'tokens: { admin: "${vault:x}" }\n')

# ---- template: arbitrary-crate input; seeds are raw bytes the fuzzer mutates ----
for i, s in enumerate([
    "svc-1_a.b:c/d@e+f=g\x00{{ labels.service }}\x00dpl-\x00/x",
    "a;rm -rf /\x00run {{ release.previous.deployment_id }} --yes\x00\x00",
    "../../etc\x00${env:X} {{ service }}\x00",
    "-rf\x00{{ incident.id }}{{labels.team}}\x00pre\x00post",
    "a/../../b?x=1#@127.0.0.1:9\x00https://h.example:8/{{ labels.x }}?q={{ service }}\x00\x00",
]):
    put("template", f"{i}", s)
print("seeds written under", CORPUS)
