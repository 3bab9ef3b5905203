#!/usr/bin/env bash
# Runs the whole test suite: unit, black-box and the end-to-end test against the real Prometheus and
# Alertmanager. Installs what the tests need when it is missing (Debian/Ubuntu: apt-get), then runs
# `cargo test --all-targets --locked`. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

# Debian packages the tests need, each with the command it provides.
need_pkgs=()
type -P prometheus >/dev/null || need_pkgs+=(prometheus)
type -P prometheus-alertmanager >/dev/null || need_pkgs+=(prometheus-alertmanager)
type -P kill >/dev/null || need_pkgs+=(procps) # the black-box harness sends SIGTERM with kill(1)
type -P chromium >/dev/null || need_pkgs+=(chromium) # tests/status_page.rs renders the page in headless Chromium
# tests/presets.rs runs the GitOps presets for real: kubectl against a fake Kubernetes API over TLS
# (openssl makes its certificate).
type -P kubectl >/dev/null || need_pkgs+=(kubernetes-client)
type -P openssl >/dev/null || need_pkgs+=(openssl)

if ((${#need_pkgs[@]})); then
    say "installing missing test dependencies: ${need_pkgs[*]}"
    type -P apt-get >/dev/null ||
        die "apt-get not found; install ${need_pkgs[*]} (Debian/Ubuntu package names) by hand"
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif type -P sudo >/dev/null; then
        as_root=(sudo)
    else
        die "need root or sudo to run: apt-get install -y ${need_pkgs[*]}"
    fi
    # Keep the packages' system services from starting during the install: the tests start their
    # own Prometheus and Alertmanager on random loopback ports, and in a container without an init
    # system a service start would fail anyway. policy-rc.d exit 101 means "do not start"; an
    # existing policy is left as it is.
    policy=/usr/sbin/policy-rc.d
    added_policy=
    if [[ ! -e $policy ]]; then
        say "temporarily denying service starts ($policy)"
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    remove_policy() { [[ -z $added_policy ]] || "${as_root[@]}" rm -f "$policy"; }
    trap remove_policy EXIT
    say "apt-get update"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    say "apt-get install -y --no-install-recommends ${need_pkgs[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
    remove_policy
    trap - EXIT
    type -P prometheus >/dev/null && type -P prometheus-alertmanager >/dev/null ||
        die "prometheus or prometheus-alertmanager still not on PATH after the install"
else
    say "test dependencies present: $(type -P prometheus), $(type -P prometheus-alertmanager)"
fi

say "cargo test --all-targets --locked $*"
cargo test --all-targets --locked "$@"
say "all tests passed"
