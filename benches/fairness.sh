#!/usr/bin/env bash
# Scenario (f) of the balancing bench: one requester sending 10x the others' rate
# to a capped upstream; queue waits behind HAProxy (arrival order, then
# set-priority-class) and modelgate (arrival order, fair_share, priority, both).
# Usage: bash benches/fairness.sh   (SECS=20 per configuration by default;
# MODELGATE_BIN=path uses that binary instead of building a release one)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
need haproxy:haproxy
if [ -z "${MODELGATE_BIN:-}" ]; then
  cargo build --release --bin modelgate
  MODELGATE_BIN="$PWD/target/release/modelgate"
fi
MODELGATE_BIN="$MODELGATE_BIN" SCENARIO=f cargo bench --bench balance
