#!/usr/bin/env bash
# TLS side by side: modelgate vs nginx, same machine, same run, same backend.
#
#   benches/tls_compare.sh            # needs nginx, h2load (nghttp2-client), openssl
#
# Setup (all on 127.0.0.1, temp files under one mktemp dir, removed on exit):
#   backend  : a separate nginx (1 worker) answering every request with 200 "ok\n"
#   nginx    : TLS front, http2, proxy_pass to the backend with keepalive
#   modelgate: TLS front (release build), proxying to the same backend
# Both fronts use the same ECDSA P-256 certificate, TLS 1.2/1.3, WORKERS workers.
#
# Measures, for each front:
#   handshakes/s : h2load --h1, one request per connection ("Connection: close"
#                  makes both servers close; h2load reconnects), full handshakes
#   h2 req/s     : h2load over TLS+h2, -c 20 -m 10 (200 streams in flight)
#   h1 req/s     : h2load --h1 over TLS, 50 keep-alive connections (for contrast)
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-$(nproc)}
HS_REQUESTS=${HS_REQUESTS:-4000}
HS_CLIENTS=${HS_CLIENTS:-50}
H2_REQUESTS=${H2_REQUESTS:-200000}
ROUNDS=${ROUNDS:-2}

for tool in nginx h2load openssl curl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "missing $tool (apt-get install nginx nghttp2-client openssl curl)" >&2
    exit 1
  }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
MODELGATE="$CARGO_TARGET_DIR/release/modelgate"

T=$(mktemp -d -t modelgate-tls-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port); NGINX_PORT=$(free_port); MG_PORT=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$T/bench.key" -out "$T/bench.crt" 2>/dev/null

mkdir -p "$T/backend" "$T/front"
cat >"$T/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/backend/nginx.pid;
error_log $T/backend/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $T/backend; proxy_temp_path $T/backend; fastcgi_temp_path $T/backend;
  uwsgi_temp_path $T/backend; scgi_temp_path $T/backend;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok\n"; } }
}
EOF
cat >"$T/front/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $T/front/nginx.pid;
error_log $T/front/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $T/front; proxy_temp_path $T/front; fastcgi_temp_path $T/front;
  uwsgi_temp_path $T/front; scgi_temp_path $T/front;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 128;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $T/bench.crt;
    ssl_certificate_key $T/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat >"$T/modelgate.toml" <<EOF
[listen]
https = "127.0.0.1:$MG_PORT"
workers = $WORKERS
shutdown_grace = "1s"

[log]
access = "off"

[tls]
certs = [{ cert = "$T/bench.crt", key = "$T/bench.key" }]

[[route]]
name = "all"
path = "/"
upstream = "backend"

[upstream.backend]
backends = ["127.0.0.1:$BACKEND"]
max_inflight = 0
EOF

"$NGINX" -c "$T/backend/nginx.conf" -p "$T/backend" 2>>"$T/backend/error.log" & PIDS+=($!)
"$NGINX" -c "$T/front/nginx.conf" -p "$T/front" 2>>"$T/front/error.log" & PIDS+=($!)
RUST_LOG=error "$MODELGATE" run -c "$T/modelgate.toml" 2>"$T/modelgate.log" & PIDS+=($!)

wait_up() {
  for _ in $(seq 1 100); do
    curl -sk -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "not up: $1" >&2; cat "$T"/*.log "$T"/*/error.log >&2; exit 1
}
wait_up "http://127.0.0.1:$BACKEND/"
wait_up "https://127.0.0.1:$NGINX_PORT/"
wait_up "https://127.0.0.1:$MG_PORT/"

# h2load output -> "req/s succeeded/total"
parse() {
  awk '/^finished in/ {rps=$4} /^requests:/ {total=$2; ok=$8} END {printf "%s %s/%s\n", rps, ok, total}'
}
handshakes() {
  h2load --h1 -t 1 -n "$HS_REQUESTS" -c "$HS_CLIENTS" -H 'Connection: close' "https://localhost:$1/" 2>&1 | parse
}
h2() {
  h2load -t 1 -n "$H2_REQUESTS" -c 20 -m 10 "https://localhost:$1/" 2>&1 | parse
}
h1() {
  h2load --h1 -t 1 -n "$H2_REQUESTS" -c 50 "https://localhost:$1/" 2>&1 | parse
}
best() { sort -g -r | head -1; }

echo "machine: $(nproc) cores; fronts use $WORKERS workers; h2load 1 thread; backend: nginx return 200"
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for name in nginx modelgate; do
    port=$NGINX_PORT; [ "$name" = modelgate ] && port=$MG_PORT
    R[$name-hs]+="$(handshakes "$port")"$'\n'
    R[$name-h2]+="$(h2 "$port")"$'\n'
    R[$name-h1]+="$(h1 "$port")"$'\n'
  done
done
printf '%-10s %22s %22s %22s\n' front "handshakes/s (ok/all)" "h2 req/s (ok/all)" "h1 keepalive req/s"
for name in nginx modelgate; do
  printf '%-10s %22s %22s %22s\n' "$name" "$(printf '%s' "${R[$name-hs]}" | best)" \
    "$(printf '%s' "${R[$name-h2]}" | best)" "$(printf '%s' "${R[$name-h1]}" | best)"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
hs_m=$(printf '%s' "${R[modelgate-hs]}" | best | cut -d' ' -f1); hs_n=$(printf '%s' "${R[nginx-hs]}" | best | cut -d' ' -f1)
h2_m=$(printf '%s' "${R[modelgate-h2]}" | best | cut -d' ' -f1); h2_n=$(printf '%s' "${R[nginx-h2]}" | best | cut -d' ' -f1)
h1_m=$(printf '%s' "${R[modelgate-h1]}" | best | cut -d' ' -f1); h1_n=$(printf '%s' "${R[nginx-h1]}" | best | cut -d' ' -f1)
echo "modelgate/nginx: handshakes $(ratio "$hs_m" "$hs_n"), h2 throughput $(ratio "$h2_m" "$h2_n"), h1 keep-alive $(ratio "$h1_m" "$h1_n") (best of $ROUNDS rounds)"
