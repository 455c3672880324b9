#!/usr/bin/env bash
# Side-by-side latency of modelgate, nginx and HAProxy in front of slow replicas.
# Usage: bash benches/balance_compare.sh   (SECS=60 per system by default; proxies pinned
# to CPU 0 and the load generator and replicas to CPU 1 when taskset is present)
# Also scenario (c): a replica loaded by clients outside the proxy, load.metrics on vs
# off; SCENARIO=c runs only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v cmake >/dev/null || need+=(cmake)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
export PATH="$PATH:/usr/sbin"
cargo build --release --bin modelgate
MODELGATE_BIN="$PWD/target/release/modelgate" cargo bench --bench balance
