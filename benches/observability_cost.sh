#!/usr/bin/env bash
# Throughput cost of metrics and of the access log, measured with wrk in one run.
#
#   base       the build before metrics existed (BASE, default: the parent of the commit adding proxy/metrics/)
#   metrics    this build, [log] access = "off"          (metrics only)
#   access     this build, [log] access = a file         (metrics + access log)
#
# One nginx worker answers "ok" as the backend; the proxy runs one worker thread;
# the variants take turns (ROUNDS times, SECS each) and the median req/s is kept.
# Usage: bash benches/observability_cost.sh   (ROUNDS=3 SECS=10 CONNS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
CONNS=${CONNS:-32}
# Default base: the commit just before proxy/metrics/ was added.
BASE=${BASE:-$(git rev-parse "$(git log --diff-filter=A --format=%H -- proxy/metrics/mod.rs | tail -1)^")}
export PATH="$PATH:/usr/sbin"
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -d "$work/base-src" ] && git worktree remove --force "$work/base-src"
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "building base ($BASE) and this tree, release..."
cached="$target/observability-cost/modelgate-$BASE"
if [ ! -x "$cached" ]; then
  git worktree add --detach -q "$work/base-src" "$BASE"
  (cd "$work/base-src" && cargo build -q --release --bin modelgate)
  git worktree remove --force "$work/base-src"
  mkdir -p "$(dirname "$cached")"
  cp "$target/release/modelgate" "$cached"
fi
cp "$cached" "$work/modelgate-base"
cargo build -q --release --bin modelgate
cp "$target/release/modelgate" "$work/modelgate-head"

backend=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' &
pids+=($!)

run_variant() { # name binary access
  local http admin
  http=$(free_port); admin=$(free_port)
  cat >"$work/$1.toml" <<EOF
[listen]
http = "127.0.0.1:$http"
admin = "127.0.0.1:$admin"
workers = 1

[log]
access = "$3"

[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = ["127.0.0.1:$backend"]
EOF
  "$2" run -c "$work/$1.toml" 2>"$work/$1.stderr" &
  local pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  wrk -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$http/v1/x" \
    | awk '/Requests\/sec/ {print $2}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

declare -A results
for round in $(seq "$ROUNDS"); do
  for v in base metrics access; do
    case $v in
      base) r=$(run_variant base "$work/modelgate-base" off) ;;
      metrics) r=$(run_variant metrics "$work/modelgate-head" off) ;;
      access) r=$(run_variant access "$work/modelgate-head" "$work/access.log") ;;
    esac
    echo "round $round  $v  $r req/s"
    results[$v]="${results[$v]:-} $r"
  done
done
[ -s "$work/access.log" ] && echo "access log lines written: $(wc -l <"$work/access.log")"

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(echo "${results[base]}" | median)
m=$(echo "${results[metrics]}" | median)
a=$(echo "${results[access]}" | median)
echo
printf "%-34s %10s %8s\n" variant "req/s" ratio
printf "%-34s %10.0f %8.3f\n" "base (no metrics, no access log)" "$b" 1
printf "%-34s %10.0f %8.3f\n" "metrics, access log off" "$m" "$(echo "$m / $b" | bc -l)"
printf "%-34s %10.0f %8.3f\n" "metrics + access log (file)" "$a" "$(echo "$a / $b" | bc -l)"
printf "access log alone (vs metrics only): %.3f\n" "$(echo "$a / $m" | bc -l)"
