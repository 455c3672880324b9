#!/usr/bin/env bash
# Scenario (f) of the balancing bench: one requester sending 10x the others' rate
# to a capped upstream; queue waits with arrival order, fair_share, priority, both.
# Usage: bash benches/fairness.sh   (SECS=20 per configuration by default)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin modelgate
MODELGATE_BIN="$PWD/target/release/modelgate" SCENARIO=f cargo bench --bench balance
