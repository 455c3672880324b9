#!/usr/bin/env bash
# Cache affinity vs least outstanding vs round robin (and SGLang's router if it installs)
# on a seeded chat workload; prints the README tables. Usage:
#   bash benches/affinity_compare.sh             # three mock replicas with a prefix cache
#   LLAMA=1 bash benches/affinity_compare.sh     # three real llama-server replicas
# modelgate gets max_inflight = the replicas' slots (MAX_INFLIGHT, default 2 = PARALLEL;
# MAX_INFLIGHT=0 leaves capacity unknown: affinity then uses its abs/rel guard).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MODELGATE_BIN:-}" ]; then   # MODELGATE_BIN=path: use that binary, build none
  cargo build --release --bin modelgate
  MODELGATE_BIN="$PWD/target/release/modelgate"
fi
if [ -z "${SGLANG_ROUTER:-}" ]; then
  venv=${TMPDIR:-/tmp}/modelgate-sglang-router
  if [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q sglang-router; }; then
    "$venv/bin/python" -c 'import sglang_router' 2>/dev/null && export SGLANG_ROUTER="$venv/bin/python"
  fi
fi
if [ -n "${LLAMA:-}" ]; then
  # modelgate's max_inflight follows the replicas' slots (llama-server --parallel).
  export MAX_INFLIGHT=${MAX_INFLIGHT:-${PARALLEL:-2}}
  bash benches/llama.sh build
  export REPLICAS=127.0.0.1:18080,127.0.0.1:18081,127.0.0.1:18082
  export RESTART="bash benches/llama.sh stop; bash benches/llama.sh start 3 18080"
  trap 'bash benches/llama.sh stop' EXIT
fi
MODELGATE_BIN="$MODELGATE_BIN" cargo bench --bench affinity_compare
