#!/usr/bin/env python3
"""Checks of deploy/ that a schema validator cannot make; run by deploy/validate.sh.

    validate.py render [DIR]              print the kustomization's objects as YAML, without kubectl
                                          (resources as written, an overlay's base rendered first,
                                          ConfigMaps from configMapGenerator without the hash suffix,
                                          JSON 6902 patches applied, namespace set); DIR defaults to
                                          kubernetes/
    validate.py check RENDERED QUERIES    cross-check the rendered objects, the alert rules, the
                                          dashboard and src/metrics.rs; write the dashboard's PromQL
                                          to QUERIES (a rule file, for `promtool check rules`)
    validate.py check-cluster RENDERED    cross-check the rendered three-node variant
                                          (kubernetes-cluster/): replicas, headless peer Service,
                                          anti-affinity, PDB, peer NetworkPolicy, POD_NAME, the
                                          config's `cluster:` members against the pods' addresses
    validate.py secret-keys [DIR]         print the keys of DIR/secret.example.yaml (default
                                          kubernetes/)
    validate.py smoke BIN CONFIG RULES    start `BIN serve` with CONFIG on a loopback port
                                          and a scratch data dir, as the StatefulSet does; check the
                                          probes and that /metrics has every series the alerts and
                                          the dashboard use; SIGTERM; it must exit 0 within 35 s
    validate.py write-prometheusrule      copy prometheus/rollbackd-alerts.yaml's groups into
                                          kubernetes/prometheusrule.yaml

Needs PyYAML (the validator venv has it). Exit 1 with one line per problem.
"""

import fnmatch
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
CLUSTER_DIR = DEPLOY / "kubernetes-cluster"
ALERTS = DEPLOY / "prometheus" / "rollbackd-alerts.yaml"
PROMETHEUS_RULE = KUSTOMIZE_DIR / "prometheusrule.yaml"
SECRET_EXAMPLE = KUSTOMIZE_DIR / "secret.example.yaml"
DASHBOARD = DEPLOY / "grafana" / "rollbackd-dashboard.json"
METRICS_RS = ROOT / "src" / "metrics.rs"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/rollbackd-alerts.yaml by
# `deploy/validate.py write-prometheusrule`; edit that file, not this one. deploy/validate.sh fails
# when the two differ.
"""

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def load_all(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    if len(found) != 1:
        problem(f"expected exactly one {kind}, found {len(found)}")
        return {}
    return found[0]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in by_kind(docs, kind) if d.get("metadata", {}).get("name") == name]
    if len(found) != 1:
        problem(f"expected exactly one {kind} named {name}, found {len(found)}")
        return {}
    return found[0]


def finish(ok: str) -> None:
    """Every problem found, one line each, and exit 1; or `ok`."""
    if problems:
        for p in problems:
            print(f"deploy/validate.py: {p}", file=sys.stderr)
        sys.exit(1)
    print(ok)


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- render (fallback when kubectl is missing) --------------------------------------------------


def render_docs(kdir: Path) -> list[dict]:
    """The objects of the kustomization in `kdir`: resources (a directory is a kustomization
    rendered first, as an overlay's base), ConfigMaps from configMapGenerator (`behavior: replace`
    or `merge` acts on the base's), JSON 6902 patches, the namespace."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    ns = k.get("namespace")
    docs = []
    for res in k.get("resources", []):
        path = kdir / res
        docs.extend(render_docs(path.resolve()) if path.is_dir() else load_all(path))
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, path = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (kdir / path).read_text()
        base = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == gen["name"]]
        behavior = gen.get("behavior", "create")
        if behavior == "create" or not base:
            if behavior != "create":
                sys.exit(f"deploy/validate.py render: {kdir}: {behavior} of ConfigMap {gen['name']}, which the base lacks")
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
        elif behavior == "replace":
            base[0]["data"] = data
        else:
            base[0].setdefault("data", {}).update(data)
    for p in k.get("patches", []):
        target = p.get("target", {})
        matched = [
            d for d in docs
            if d.get("kind") == target.get("kind") and d.get("metadata", {}).get("name") == target.get("name")
        ]
        if len(matched) != 1 or "patch" not in p:
            sys.exit(f"deploy/validate.py render: {kdir}: patch target {target} matches {len(matched)} objects")
        for op in yaml.safe_load(p["patch"]):
            json_patch(matched[0], op)
    for d in docs:
        if ns and d.get("kind") != "Namespace":
            d.setdefault("metadata", {})["namespace"] = ns
    return docs


def json_patch(doc: dict, op: dict) -> None:
    """One JSON 6902 operation (add, replace, remove) on `doc`."""
    *parents, last = [s.replace("~1", "/").replace("~0", "~") for s in op["path"].split("/")[1:]]
    node = doc
    for s in parents:
        node = node[int(s)] if isinstance(node, list) else node[s]
    if isinstance(node, list):
        if op["op"] == "add":
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] == "replace":
            node[int(last)] = op["value"]
        else:
            del node[int(last)]
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace" and last not in node:
            sys.exit(f"deploy/validate.py render: replace of {op['path']}, which does not exist")
        node[last] = op["value"]
    else:
        del node[last]


def render(kdir: Path = KUSTOMIZE_DIR) -> None:
    yaml.safe_dump_all(render_docs(kdir), sys.stdout, sort_keys=False)


# --- write-prometheusrule -----------------------------------------------------------------------


def prometheus_rule_from_alerts() -> dict:
    alerts = yaml.safe_load(ALERTS.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "rollbackd",
            "labels": {
                "app.kubernetes.io/name": "rollbackd",
                # EDIT: the label your Prometheus' ruleSelector wants.
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": alerts["groups"]},
    }


class IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key, as the hand-written manifests do."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def write_prometheus_rule() -> None:
    body = yaml.dump(prometheus_rule_from_alerts(), Dumper=IndentedDumper, sort_keys=False, width=100)
    PROMETHEUS_RULE.write_text(PROMETHEUS_RULE_HEADER + body)
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")


# --- check --------------------------------------------------------------------------------------


def metric_names() -> set[str]:
    """Series names /metrics exposes, read from src/metrics.rs (histograms expand to 3)."""
    text = METRICS_RS.read_text()
    names = set(re.findall(r'"(rollbackd_[a-z0-9_]+)"', text))
    for h in re.findall(r'HistogramOpts::new\(\s*"(rollbackd_[a-z0-9_]+)"', text):
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names | {"up"}


def series_in(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers followed by { or [ or standing alone)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    return set(re.findall(r"\b((?:rollbackd_[a-z0-9_]+)|up)\b(?=\s*[{\[)]|\s*$|\s*[=!<>])", expr))


def env_refs(v) -> set[str]:
    """${env:NAME} references in the parsed config's string values (comments do not count)."""
    if isinstance(v, str):
        return set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", v))
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, list):
        return set().union(*(env_refs(x) for x in v)) if v else set()
    return set()


def check_statefulset(docs: list[dict], secret_keys: set[str], replicas: int = 1) -> None:
    sts = one(docs, "StatefulSet")
    if not sts:
        return
    spec = sts["spec"]
    if spec.get("replicas") != replicas:
        problem(
            "StatefulSet: replicas must be 1 (rollbackd is the single writer of its state)"
            if replicas == 1
            else f"StatefulSet: replicas must be {replicas} (one pod per member in rollbackd.yaml)"
        )
    pod = spec["template"]["spec"]
    if pod.get("automountServiceAccountToken") is not False:
        problem("StatefulSet: automountServiceAccountToken must be false")
    psc = pod.get("securityContext", {})
    for key, want in [("runAsNonRoot", True), ("runAsUser", 65532), ("fsGroup", 65532)]:
        if psc.get(key) != want:
            problem(f"StatefulSet: pod securityContext.{key} must be {want}")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem("StatefulSet: pod seccompProfile must be RuntimeDefault")
    containers = pod.get("containers", [])
    if len(containers) != 1:
        problem("StatefulSet: expected one container")
        return
    c = containers[0]
    csc = c.get("securityContext", {})
    if csc.get("readOnlyRootFilesystem") is not True or csc.get("allowPrivilegeEscalation") is not False:
        problem("StatefulSet: container needs readOnlyRootFilesystem: true, allowPrivilegeEscalation: false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem("StatefulSet: container must drop ALL capabilities")
    args = c.get("args", [])
    grace = 30
    for i, a in enumerate(args):
        if a == "--grace-seconds" and i + 1 < len(args):
            grace = int(args[i + 1])
        elif a.startswith("--grace-seconds="):
            grace = int(a.split("=", 1)[1])
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= grace:
        problem(f"StatefulSet: terminationGracePeriodSeconds ({tgps}) must exceed --grace-seconds ({grace})")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        if c.get(probe, {}).get("httpGet", {}).get("path") != path:
            problem(f"StatefulSet: {probe} must GET {path}")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        problem("StatefulSet: container needs resource requests and limits")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    if ports.get("http") != 9750:
        problem("StatefulSet: container port `http` must be 9750")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    data = mounts.get("/var/lib/rollbackd")
    if not data or data["name"] not in claims:
        problem("StatefulSet: /var/lib/rollbackd must be a volumeClaimTemplate volume")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for path, key in [("/etc/rollbackd/rollbackd.yaml", "rollbackd.yaml"), ("/etc/rollbackd/rules", None)]:
        m = mounts.get(path)
        if not m:
            problem(f"StatefulSet: nothing mounted at {path}")
            continue
        cm_name = volumes.get(m["name"], {}).get("configMap", {}).get("name")
        cm = configmaps.get(cm_name)
        if cm is None:
            problem(f"StatefulSet: {path} mounts ConfigMap {cm_name!r}, which the kustomization does not make")
            continue
        if key and key not in cm.get("data", {}):
            problem(f"ConfigMap {cm_name}: no key {key}")
        if key is None:
            keys = list(cm.get("data", {}))
            if not keys or not all(k.endswith((".yaml", ".yml")) for k in keys):
                problem(f"ConfigMap {cm_name}: rules keys must be *.yaml/*.yml files, got {keys}")
        if key == "rollbackd.yaml" and key in cm.get("data", {}):
            cfg_text = cm["data"][key]
            cfg = yaml.safe_load(cfg_text) or {}
            if cfg.get("data_dir") != "/var/lib/rollbackd":
                problem("rollbackd.yaml: data_dir must be /var/lib/rollbackd (the volume)")
            if cfg.get("rules_dir") != "/etc/rollbackd/rules":
                problem("rollbackd.yaml: rules_dir must be /etc/rollbackd/rules (the rules ConfigMap)")
            if not str(cfg.get("listen", "")).endswith(":9750") or str(cfg.get("listen", "")).startswith("127."):
                problem("rollbackd.yaml: listen must be 0.0.0.0:9750 in a cluster")
            provided = secret_keys | {e["name"] for e in c.get("env", [])}
            secret_refs = {e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])}
            if "rollbackd-secrets" not in secret_refs:
                problem("StatefulSet: envFrom must reference Secret rollbackd-secrets")
            for ref in sorted(env_refs(cfg)):
                if ref not in provided:
                    problem(f"rollbackd.yaml: ${{env:{ref}}} is neither a key of secret.example.yaml nor a container env")


def check_service_and_monitoring(docs: list[dict], governing: str = "rollbackd") -> None:
    """Service `rollbackd` and what refers to it; `governing` is the StatefulSet's serviceName."""
    sts = one(docs, "StatefulSet")
    pod_labels = sts.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) if sts else {}
    svc = named(docs, "Service", "rollbackd")
    svc_ports = {}
    if svc:
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problem("Service: type must be ClusterIP")
        if not labels_match(svc["spec"].get("selector", {}), pod_labels):
            problem("Service: selector does not select the StatefulSet's pods")
        svc_ports = {p.get("name"): p.get("port") for p in svc["spec"].get("ports", [])}
        if svc_ports.get("http") != 9750:
            problem("Service: port `http` must be 9750")
        if sts and sts["spec"].get("serviceName") != governing:
            problem(f"StatefulSet: serviceName must be {governing}")
    # Custom resources have no schema in kubernetes-validate: check their structure here.
    sm = one(docs, "ServiceMonitor")
    if sm:
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            problem("ServiceMonitor: apiVersion must be monitoring.coreos.com/v1")
        if svc and not labels_match(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}), svc["metadata"].get("labels", {})):
            problem("ServiceMonitor: selector.matchLabels does not select the Service")
        eps = sm.get("spec", {}).get("endpoints", [])
        if not eps:
            problem("ServiceMonitor: no endpoints")
        for ep in eps:
            if ep.get("port") not in svc_ports:
                problem(f"ServiceMonitor: endpoint port {ep.get('port')!r} is not a named port of the Service")
            if ep.get("path", "/metrics") != "/metrics":
                problem("ServiceMonitor: endpoint path must be /metrics")
            for k in ep:
                if k not in {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}:
                    problem(f"ServiceMonitor: unexpected endpoint field {k!r}")
    pr = one(docs, "PrometheusRule")
    if pr:
        if pr.get("apiVersion") != "monitoring.coreos.com/v1":
            problem("PrometheusRule: apiVersion must be monitoring.coreos.com/v1")
        want = yaml.safe_load(ALERTS.read_text()).get("groups")
        if pr.get("spec", {}).get("groups") != want:
            problem(
                "PrometheusRule: spec.groups differ from deploy/prometheus/rollbackd-alerts.yaml; "
                "run `deploy/validate.py write-prometheusrule`"
            )
    pdb = one(docs, "PodDisruptionBudget")
    if pdb and not labels_match(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
        problem("PodDisruptionBudget: selector does not select the StatefulSet's pods")
    np = named(docs, "NetworkPolicy", "rollbackd")
    if np:
        if not labels_match(np["spec"].get("podSelector", {}).get("matchLabels", {}), pod_labels):
            problem("NetworkPolicy: podSelector does not select the StatefulSet's pods")
        ingress_ports = {p.get("port") for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if ingress_ports != {9750}:
            problem(f"NetworkPolicy: ingress must open only port 9750, opens {sorted(map(str, ingress_ports))}")
        egress_ports = {p.get("port") for rule in np["spec"].get("egress", []) for p in rule.get("ports", [])}
        for p in (53, 443):
            if p not in egress_ports:
                problem(f"NetworkPolicy: egress must allow port {p}")
    sa = one(docs, "ServiceAccount")
    if sa and sa.get("automountServiceAccountToken") is not False:
        problem("ServiceAccount: automountServiceAccountToken must be false")


def check_alerts(known: set[str]) -> None:
    groups = yaml.safe_load(ALERTS.read_text()).get("groups", [])
    names = []
    for g in groups:
        for r in g.get("rules", []):
            names.append(r.get("alert"))
            for s in series_in(r.get("expr", "")):
                if s not in known:
                    problem(f"alert {r.get('alert')}: uses {s}, which src/metrics.rs does not define")
            if r.get("labels", {}).get("severity") not in {"critical", "warning"}:
                problem(f"alert {r.get('alert')}: severity must be critical or warning")
    if len(set(names)) != len(names):
        problem("alerts: duplicate alert names")


def check_dashboard(known: set[str], queries_out: Path) -> None:
    d = json.loads(DASHBOARD.read_text())
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        problem(f"dashboard: schemaVersion {d.get('schemaVersion')} (expected ~39)")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem("dashboard: needs a `datasource` variable of type datasource, query prometheus")
    ids = [p.get("id") for p in d.get("panels", [])]
    if len(set(ids)) != len(ids):
        problem("dashboard: panel ids are not unique")
    rules = []
    for p in d.get("panels", []):
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problem(f"dashboard panel {p.get('title')!r}: datasource must be ${{datasource}}")
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problem(f"dashboard panel {p.get('title')!r}: wider than the grid")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            for s in series_in(expr):
                if s not in known:
                    problem(f"dashboard panel {p.get('title')!r}: uses {s}, which src/metrics.rs does not define")
            # Grafana's variables, replaced by what they stand for, so promtool can parse the query.
            concrete = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
            concrete = concrete.replace("$job", "rollbackd")
            if "$" in concrete:
                problem(f"dashboard panel {p.get('title')!r}: unknown variable in {expr!r}")
            rules.append({"record": f"dashboard:panel{p.get('id')}:{t.get('refId')}", "expr": concrete})
    queries_out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sort_keys=False))


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns leave `path` out of the build context (a matched directory
    takes its contents along; `!` re-includes; `**` spans directories)."""
    parts = path.split("/")
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            out = not neg
    return out


def check_docker_context() -> None:
    """The build stage copies the context; everything cargo needs to build must be in it."""
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*") if p.is_file()]
    defaults = {"bin": "src/bin", "bench": "benches", "test": "tests", "example": "examples"}
    for kind, folder in defaults.items():
        for t in manifest.get(kind, []):
            if "path" in t:
                needed.append(t["path"])
            else:
                flat, nested = f"{folder}/{t['name']}.rs", f"{folder}/{t['name']}/main.rs"
                needed.append(nested if (ROOT / nested).exists() else flat)
    if "path" in manifest.get("lib", {}):
        needed.append(manifest["lib"]["path"])
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            needed += [w for w in words[1:-1] if not w.startswith("--") and w != "."]
    for path in needed:
        if not (ROOT / path).exists():
            problem(f"docker build: {path} is needed but does not exist")
        elif docker_ignored(path, patterns):
            problem(f"docker build: {path} is needed but deploy/Dockerfile.dockerignore leaves it out")


def check(rendered: Path, queries_out: Path) -> None:
    docs = load_all(rendered)
    secret_keys = check_secret_example(SECRET_EXAMPLE)
    if by_kind(docs, "Secret"):
        problem("kustomization: must not carry a Secret (apply -k would overwrite the real one)")
    kust = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    listed = {
        f.rpartition("=")[2]
        for g in kust.get("configMapGenerator", [])
        if g.get("name") == "rollbackd-rules"
        for f in g.get("files", [])
    }
    present = {f"rules/{p.name}" for p in (KUSTOMIZE_DIR / "rules").iterdir() if p.suffix in (".yaml", ".yml")}
    for f in sorted(present - listed):
        problem(f"kustomization.yaml: {f} is not listed under configMapGenerator rollbackd-rules")
    for f in sorted(listed - present):
        problem(f"kustomization.yaml: lists {f}, which does not exist")
    known = metric_names()
    check_statefulset(docs, secret_keys)
    check_service_and_monitoring(docs)
    check_alerts(known)
    check_dashboard(known, queries_out)
    check_docker_context()
    kinds = sorted({d.get("kind") for d in docs})
    finish(
        f"cross-checks OK: {len(docs)} objects ({', '.join(kinds)}), alerts, dashboard, "
        "metric names, docker build context"
    )


def check_secret_example(path: Path) -> set[str]:
    """The example Secret's keys; its values must stay placeholders."""
    secret = load_all(path)
    if len(secret) != 1 or secret[0].get("kind") != "Secret":
        problem(f"{path.relative_to(DEPLOY)}: must hold one Secret")
        return set()
    for k, v in secret[0].get("stringData", {}).items():
        if str(v) != "CHANGE-ME":
            problem(f"{path.relative_to(DEPLOY)}: {k} looks like a real value; keep the placeholder CHANGE-ME (the daemon refuses to start with it)")
    return set(secret[0].get("stringData", {}))


def check_cluster(rendered: Path) -> None:
    """The three-node variant (deploy/kubernetes-cluster): what the single-replica one must be, except
    for the replicas, plus what a Raft cluster on a StatefulSet needs."""
    docs = load_all(rendered)
    found = check_cluster_objects(docs)
    finish(f"cluster cross-checks OK: {len(docs)} objects, {found}")


def check_cluster_objects(docs: list[dict]) -> str:
    """Notes each problem; says what it found."""
    if by_kind(docs, "Secret"):
        problem("kubernetes-cluster: must not carry a Secret (apply -k would overwrite the real one)")
    base_keys = check_secret_example(SECRET_EXAMPLE)
    keys = check_secret_example(CLUSTER_DIR / "secret.example.yaml")
    if keys != base_keys | {"ROLLBACKD_CLUSTER_SECRET"}:
        problem(
            "kubernetes-cluster/secret.example.yaml: keys must be those of kubernetes/secret.example.yaml "
            f"plus ROLLBACKD_CLUSTER_SECRET; differs by {sorted(keys ^ (base_keys | {'ROLLBACKD_CLUSTER_SECRET'}))}"
        )
    sts = one(docs, "StatefulSet")
    replicas = sts.get("spec", {}).get("replicas", 0) if sts else 0
    if replicas < 3 or replicas % 2 == 0:
        problem(f"StatefulSet: replicas must be odd and at least 3 (got {replicas})")
    check_statefulset(docs, keys, replicas=replicas)
    check_service_and_monitoring(docs, governing="rollbackd-peers")
    if not sts:
        return "no StatefulSet"
    spec = sts["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    pod = spec["template"]["spec"]
    ns = sts["metadata"].get("namespace", "default")
    if spec.get("podManagementPolicy") != "Parallel":
        problem("StatefulSet: podManagementPolicy must be Parallel (a node is ready only once a majority is up)")
    terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(
        t.get("topologyKey") == "kubernetes.io/hostname"
        and labels_match(t.get("labelSelector", {}).get("matchLabels", {}), pod_labels)
        for t in terms
    ):
        problem("StatefulSet: needs a required pod anti-affinity on kubernetes.io/hostname selecting its own pods")
    env = {e.get("name"): e for e in pod["containers"][0].get("env", [])}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problem("StatefulSet: env POD_NAME must come from the downward API (fieldRef metadata.name)")

    peers = named(docs, "Service", "rollbackd-peers")
    if peers:
        ps = peers["spec"]
        if ps.get("clusterIP") != "None" or ps.get("publishNotReadyAddresses") is not True:
            problem("Service rollbackd-peers: must be headless (clusterIP: None) with publishNotReadyAddresses: true")
        if not labels_match(ps.get("selector", {}), pod_labels):
            problem("Service rollbackd-peers: selector does not select the StatefulSet's pods")
        if {p.get("port") for p in ps.get("ports", [])} != {9750}:
            problem("Service rollbackd-peers: must expose port 9750")
        sm = one(docs, "ServiceMonitor")
        if sm and labels_match(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}), peers["metadata"].get("labels", {})):
            problem("Service rollbackd-peers: the ServiceMonitor selects it too (every pod would be scraped twice)")
    pdb = one(docs, "PodDisruptionBudget")
    if pdb and pdb["spec"].get("maxUnavailable") != 1:
        problem("PodDisruptionBudget: maxUnavailable must be 1 (a majority of the voters stays up)")
    np = named(docs, "NetworkPolicy", "rollbackd-peers")
    if np:
        nps = np["spec"]
        if not labels_match(nps.get("podSelector", {}).get("matchLabels", {}), pod_labels):
            problem("NetworkPolicy rollbackd-peers: podSelector does not select the StatefulSet's pods")
        for direction, peer_key in (("ingress", "from"), ("egress", "to")):
            if direction.capitalize() not in nps.get("policyTypes", []) or not any(
                {p.get("port") for p in rule.get("ports", [])} == {9750}
                and any(
                    "namespaceSelector" not in peer and labels_match(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels)
                    for peer in rule.get(peer_key, [])
                )
                for rule in nps.get(direction, [])
            ):
                problem(f"NetworkPolicy rollbackd-peers: {direction} must allow the rollbackd pods on 9750")

    cm_name = next(
        (v["configMap"]["name"] for v in pod.get("volumes", []) if v["name"] == "config" and "configMap" in v), None
    )
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name]
    if not cms or "rollbackd.yaml" not in cms[0].get("data", {}):
        problem("StatefulSet: the config volume mounts no ConfigMap with rollbackd.yaml")
        return "no config"
    cfg = yaml.safe_load(cms[0]["data"]["rollbackd.yaml"]) or {}
    cluster = cfg.pop("cluster", None) or {}
    base_cfg = yaml.safe_load((KUSTOMIZE_DIR / "rollbackd.yaml").read_text()) or {}
    if cfg != base_cfg:
        diff = sorted(k for k in set(cfg) | set(base_cfg) if cfg.get(k) != base_cfg.get(k))
        problem(f"kubernetes-cluster/rollbackd.yaml: differs from kubernetes/rollbackd.yaml outside `cluster:` in {diff}")
    if not cluster:
        problem("kubernetes-cluster/rollbackd.yaml: no `cluster:` section")
        return "no cluster section"
    if "node_id" in cluster:
        problem("rollbackd.yaml: cluster.node_id must be absent (one file for every pod; the id comes from advertise)")
    if cluster.get("secret") != "${env:ROLLBACKD_CLUSTER_SECRET}":
        problem("rollbackd.yaml: cluster.secret must be ${env:ROLLBACKD_CLUSTER_SECRET}")
    members = cluster.get("members", [])
    urls = {m.get("id"): m.get("url") for m in members}
    if sorted(urls) != list(range(1, replicas + 1)) or len(members) != replicas:
        problem(f"rollbackd.yaml: cluster.members must have the ids 1..{replicas}, one per pod; got {sorted(map(str, urls))}")
    advertise = str(cluster.get("advertise", ""))
    if "${env:POD_NAME}" not in advertise:
        problem("rollbackd.yaml: cluster.advertise must contain ${env:POD_NAME}")
    name, governing = sts["metadata"]["name"], spec.get("serviceName")
    for ordinal in range(replicas):
        pod_name = f"{name}-{ordinal}"
        want = f"http://{pod_name}.{governing}.{ns}.svc:9750"
        if advertise.replace("${env:POD_NAME}", pod_name) != want:
            problem(f"rollbackd.yaml: cluster.advertise for pod {pod_name} is not its peer address {want}")
        if urls.get(ordinal + 1) != want:
            problem(f"rollbackd.yaml: member {ordinal + 1} must be pod {pod_name} at {want}, is {urls.get(ordinal + 1)!r}")
    return (
        f"{replicas} members = pods {name}-0..{replicas - 1} at http://{name}-N.{governing}.{ns}.svc:9750, "
        "headless Service, anti-affinity, PDB, peer NetworkPolicy, config = single-replica config + cluster"
    )


def smoke(binary: str, config: str, rules: str) -> None:
    import os
    import signal
    import subprocess
    import tempfile
    import time
    import urllib.error
    import urllib.request

    known = metric_names()
    used = set()
    for g in yaml.safe_load(ALERTS.read_text()).get("groups", []):
        for r in g.get("rules", []):
            used |= series_in(r.get("expr", ""))
    for p in json.loads(DASHBOARD.read_text()).get("panels", []):
        for t in p.get("targets", []):
            used |= series_in(t.get("expr", ""))
    used = {m for m in used if m in known and m != "up"}

    with tempfile.TemporaryDirectory() as data:
        args = [binary, "serve", "--config", config, "--grace-seconds", "30",
                "--listen", "127.0.0.1:0", "--data-dir", data, "--rules", rules]
        log = Path(data) / "stderr.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            line = proc.stdout.readline().strip()
            m = re.match(r"rollbackd listening on (http://\S+)", line)
            if not m:
                proc.kill()
                proc.wait(timeout=10)
                sys.exit(f"deploy/validate.py smoke: rollbackd did not start: {line!r}\n{log.read_text()}")
            url = m.group(1)

            def get(path: str) -> tuple[int, str]:
                try:
                    with urllib.request.urlopen(url + path, timeout=5) as r:
                        return r.status, r.read().decode()
                except urllib.error.HTTPError as e:
                    return e.code, e.read().decode()
                except (urllib.error.URLError, OSError) as e:
                    return 0, str(e)

            deadline = time.monotonic() + 20
            while (ready := get("/readyz"))[0] != 200:
                if time.monotonic() > deadline:
                    sys.exit(f"deploy/validate.py smoke: {url}/readyz did not answer 200 within 20 s: {ready}")
                time.sleep(0.1)
            status, _ = get("/healthz")
            if status != 200:
                problem(f"smoke: /healthz answered {status}")
            status, text = get("/metrics")
            exposed = set(re.findall(r"^([a-z_:][a-z0-9_:]*)[{ ]", text, re.M))
            for name in sorted(used):
                if name not in exposed:
                    problem(f"smoke: /metrics does not expose {name}, which the alerts or the dashboard use")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()
                sys.exit("deploy/validate.py smoke: rollbackd did not stop within 35 s of SIGTERM")
            if rc != 0:
                problem(f"smoke: rollbackd exited {rc} after SIGTERM")
            stopped = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finish(f"smoke OK: {url} answered /healthz, /readyz and /metrics ({len(used)} series in use), "
           f"stopped {stopped:.1f} s after SIGTERM with exit 0")


def main(argv: list[str]) -> None:
    if argv[1:2] == ["render"] and len(argv) <= 3:
        render(Path(argv[2]).resolve() if len(argv) == 3 else KUSTOMIZE_DIR)
    elif argv[1:2] == ["secret-keys"] and len(argv) <= 3:
        for d in load_all(Path(argv[2]) / "secret.example.yaml" if len(argv) == 3 else SECRET_EXAMPLE):
            print("\n".join(d.get("stringData", {})))
    elif argv[1:2] == ["check-cluster"] and len(argv) == 3:
        check_cluster(Path(argv[2]))
    elif argv[1:2] == ["smoke"] and len(argv) == 5:
        smoke(argv[2], argv[3], argv[4])
    elif argv[1:2] == ["write-prometheusrule"]:
        write_prometheus_rule()
    elif argv[1:2] == ["check"] and len(argv) == 4:
        check(Path(argv[2]), Path(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
