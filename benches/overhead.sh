#!/usr/bin/env bash
# CPU cost per proxied request, plain HTTP/1.1 keep-alive: modelgate vs nginx, same
# machine, same run, same backend.
#
#   bash benches/overhead.sh        # needs nginx and wrk (apt-get install nginx wrk)
#
# backend : a separate nginx (1 worker) answering 200 "ok"
# fronts  : nginx (proxy_pass, upstream keepalive) and modelgate (release build),
#           each with WORKERS workers, proxying to the backend
# For each front, wrk runs DURATION seconds with CONNS connections; the front's CPU
# time (utime+stime of all its processes, from /proc) divided by the requests served
# is its cost per request. Ratios are what to compare; absolute numbers move with
# the machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
export PATH="$PATH:/usr/sbin"
for tool in nginx wrk; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
cargo build --release --quiet --bin modelgate
T=$(mktemp -d -t modelgate-overhead.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACK=$(port); NG=$(port); MG=$(port)

cat > "$T/backend.conf" <<CONF
worker_processes 1; daemon off; pid $T/backend.pid; error_log $T/backend.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$BACK; location / { return 200 "ok\n"; } } }
CONF
cat > "$T/front.conf" <<CONF
worker_processes $WORKERS; daemon off; pid $T/front.pid; error_log $T/front.err;
events { worker_connections 4096; }
http { access_log off;
  upstream b { server 127.0.0.1:$BACK; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$T/modelgate.toml" <<CONF
[listen]
http = "127.0.0.1:$MG"
workers = $WORKERS
[log]
access = "off"
[[route]]
name = "all"
path = "/"
upstream = "b"
[upstream.b]
backends = ["127.0.0.1:$BACK"]
CONF
nginx -c "$T/backend.conf" -p "$T" & PIDS+=($!)
nginx -c "$T/front.conf" -p "$T" & PIDS+=($!); NGINX_PID=$!
RUST_LOG=error target/release/modelgate run -c "$T/modelgate.toml" & PIDS+=($!); MG_PID=$!
for p in $BACK $NG $MG; do for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done; done

# CPU ticks of a process and its children threads/processes (nginx: master + workers).
ticks() { local total=0; for p in "$@"; do for pid in $p $(pgrep -P "$p" || true); do
  total=$((total + $(awk '{print $14+$15}' "/proc/$pid/stat"))); done; done; echo $total; }
hz=$(getconf CLK_TCK)
measure() { # name port pid
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$2/" >/dev/null  # warm-up
  local before; before=$(ticks "$3")
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$2/")
  local after; after=$(ticks "$3")
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local us; us=$(python3 -c "print(round(($after-$before)/$hz/$reqs*1e6, 2))")
  echo "$1 $rps $us"
}
echo "front req/s cpu_us_per_request"
N=$(measure nginx "$NG" "$NGINX_PID"); echo "$N"
M=$(measure modelgate "$MG" "$MG_PID"); echo "$M"
python3 - "$N" "$M" <<'PY'
import sys
n=sys.argv[1].split(); m=sys.argv[2].split()
print(f"modelgate/nginx: throughput {float(m[1])/float(n[1]):.2f}x, CPU per request {float(m[2])/float(n[2]):.2f}x")
PY
