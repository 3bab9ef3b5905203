#!/usr/bin/env bash
# rollbackd benchmarks: bench/run.sh (about 5-10 minutes on 2 cores; not part of `cargo test`).
# Builds the release binaries, installs wrk and Alertmanager from Debian when missing, runs every
# measurement on 127.0.0.1, prints a table and writes bench/results.json. See bench/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
type -P wrk >/dev/null || need+=(wrk)
type -P prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
if ((${#need[@]})); then
    echo "installing ${need[*]} (Debian packages)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

cargo build --release --bin rollbackd --example hello_axum --example bench_store
exec python3 bench/bench.py "$@"
