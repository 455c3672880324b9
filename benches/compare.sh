#!/usr/bin/env bash
# modelgate, nginx and HAProxy side by side in one run: proxy CPU per request, latency
# at a fixed rate, and memory per connection. Writes the table to benches/RESULTS.md.
#
#   bash benches/compare.sh          # REPEATS=3 SECS=5 IDLE=10000 SSE=1000 RATE=10000 [MODELGATE_BIN=path]
#
# Installs what is missing (nginx, haproxy, wrk, nghttp2-client, openssl, curl, python3)
# with apt-get and builds the release binary. Setup, all on 127.0.0.1:
#   backends  one nginx (1 worker) serving three ports: "ok\n" on /, 16 KiB on /16k;
#             a Python SSE server (one event a second) on a fourth
#   proxies   nginx (1 worker), HAProxy (1 thread), modelgate (workers = 1), each with
#             HTTP/1.1 and HTTPS (h2 + http/1.1, TLS 1.2/1.3, the same ECDSA P-256 cert),
#             round robin over the three backends with upstream keep-alive, access log
#             off, and the same request work: X-Forwarded-For/-Proto/-Host and an
#             X-Request-Id to the backend, X-Request-Id back to the client
#   pinning   each proxy on CPU $PROXY_CPU (default 0), backends and load on $LOAD_CPU (1)
# Each repeat runs every case once per proxy, the proxies' order rotating between
# repeats; the table gives the median, the spread (min-max) and the ratio to nginx.
# CPU per request is the proxy's utime+stime (/proc/PID/stat, all its processes and
# threads) over the requests completed. Ratios are what to compare: on a shared machine
# absolute numbers move with the load, ratios measured in the same run much less.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
REPEATS=${REPEATS:-3}
SECS=${SECS:-5}
IDLE=${IDLE:-10000}
SSE=${SSE:-1000}
RATE=${RATE:-10000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-benches/RESULTS.md}
export PATH="$PATH:/usr/sbin"

need nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl \
  curl:curl python3:python3 taskset:util-linux
# nginx from the Debian package starts a system instance; ours run from a temp dir.
systemctl stop nginx haproxy 2>/dev/null || true

# MODELGATE_BIN=path compares that binary instead of building this checkout.
if [ -n "${MODELGATE_BIN:-}" ]; then
  MODELGATE=$MODELGATE_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build --release --quiet --bin modelgate
  MODELGATE="$CARGO_TARGET_DIR/release/modelgate"
fi
ulimit -n "$(ulimit -Hn)"
# HAProxy reserves two descriptors per connection: fit the idle count to the fd limit.
if [ $((IDLE * 2 + 1000)) -gt "$(ulimit -n)" ]; then
  IDLE=$((($(ulimit -n) - 1000) / 2))
  echo "fd limit $(ulimit -n): holding $IDLE idle connections" >&2
fi

scratch compare
B1=$(free_port); B2=$(free_port); B3=$(free_port); BSSE=$(free_port)
declare -A HTTP HTTPS PID
for p in nginx haproxy modelgate; do HTTP[$p]=$(free_port); HTTPS[$p]=$(free_port); done
on_load() { taskset -c "$LOAD_CPU" "$@"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$T/bench.key" -out "$T/bench.crt" 2>/dev/null
cat "$T/bench.crt" "$T/bench.key" >"$T/bench.pem"
mkdir -p "$T/www" "$T/backend" "$T/nginx"
chmod 755 "$T" "$T/www" # nginx workers run as an unprivileged user
printf 'ok\n' >"$T/www/index.html"
head -c 16384 /dev/zero | tr '\0' x >"$T/www/16k"
temp_paths() { for k in client_body proxy fastcgi uwsgi scgi; do printf '%s_temp_path %s; ' "$k" "$1"; done; }

cat >"$T/backend/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $T/backend/nginx.pid; error_log $T/backend/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
  access_log off; $(temp_paths "$T/backend")
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; listen 127.0.0.1:$B3;
    root $T/www; location = / { return 200 "ok\n"; }
  }
}
EOF

cat >"$T/nginx/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $T/nginx/nginx.pid; error_log $T/nginx/error.log warn;
worker_rlimit_nofile $((IDLE + 8192));
events { worker_connections $((IDLE + 4096)); }
http {
  access_log off; $(temp_paths "$T/nginx")
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  upstream b {
    server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3;
    keepalive 128; keepalive_requests 1000000;
  }
  upstream sse { server 127.0.0.1:$BSSE; keepalive 128; }
  server {
    listen 127.0.0.1:${HTTP[nginx]};
    listen 127.0.0.1:${HTTPS[nginx]} ssl http2;
    ssl_certificate $T/bench.crt; ssl_certificate_key $T/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host;
    proxy_set_header X-Request-Id \$request_id;
    add_header X-Request-Id \$request_id always;
    location / { proxy_pass http://b; }
    location /sse { proxy_pass http://sse; proxy_buffering off; proxy_read_timeout 600s; }
  }
}
EOF

cat >"$T/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((IDLE + 200))
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
  option http-keep-alive
  http-reuse always
frontend front
  bind 127.0.0.1:${HTTP[haproxy]}
  bind 127.0.0.1:${HTTPS[haproxy]} ssl crt $T/bench.pem alpn h2,http/1.1
  unique-id-format %{+X}o%[rand,hex]%[rand,hex]
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-Id %[unique-id]
  http-response set-header X-Request-Id %[unique-id]
  use_backend sse if { path_beg /sse }
  default_backend b
backend b
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
  server b3 127.0.0.1:$B3
backend sse
  server s1 127.0.0.1:$BSSE
EOF

mkdir -p "$T/certs"
cat >"$T/modelgate.toml" <<EOF
[listen]
http = "127.0.0.1:${HTTP[modelgate]}"
https = "127.0.0.1:${HTTPS[modelgate]}"
workers = 1
shutdown_grace = "1s"

[log]
access = "off"

[tls]
certs = [{ cert = "$T/bench.crt", key = "$T/bench.key" }]

[[route]]
name = "sse"
path = "/sse"
upstream = "sse"

[[route]]
name = "all"
path = "/"
upstream = "b"

[upstream.b]
backends = ["127.0.0.1:$B1", "127.0.0.1:$B2", "127.0.0.1:$B3"]
balance = "round_robin"
max_inflight = 0

[upstream.sse]
backends = ["127.0.0.1:$BSSE"]
max_inflight = 0
idle_timeout = "600s"
EOF

# taskset execs the program, so $! is the server's own pid (nginx: its master).
taskset -c "$LOAD_CPU" nginx -c "$T/backend/nginx.conf" -p "$T/backend" & PIDS+=($!)
taskset -c "$LOAD_CPU" python3 benches/conns.py sse-backend "$BSSE" & PIDS+=($!)
taskset -c "$PROXY_CPU" nginx -c "$T/nginx/nginx.conf" -p "$T/nginx" & PID[nginx]=$!
taskset -c "$PROXY_CPU" haproxy -f "$T/haproxy.cfg" -db 2>"$T/haproxy.log" & PID[haproxy]=$!
RUST_LOG=error taskset -c "$PROXY_CPU" "$MODELGATE" run -c "$T/modelgate.toml" 2>"$T/modelgate.log" &
PID[modelgate]=$!
PIDS+=("${PID[@]}")
wait_up() {
  for _ in $(seq 1 200); do curl -sk -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not up: $1" >&2; cat "$T"/*.log "$T"/*/error.log >&2 || true; exit 1
}
for port in $B1 $B2 $B3; do wait_up "http://127.0.0.1:$port/"; done
for p in nginx haproxy modelgate; do wait_up "http://127.0.0.1:${HTTP[$p]}/"; wait_up "https://localhost:${HTTPS[$p]}/"; done
for p in nginx haproxy modelgate; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:${HTTP[$p]}/16k")
  [ "$got" = "200 16384" ] || { echo "$p: /16k answered $got" >&2; exit 1; }
done

# CPU ticks (utime+stime) of a process and its child processes (nginx's worker).
ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14+$15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
rss_kib() { # the proxy's resident memory, all its processes
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
SAMPLES="$T/samples.tsv"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SAMPLES"; }

# run CASE PROXY CMD...: runs the load, records CPU µs per request and req/s.
run() {
  local case=$1 proxy=$2; shift 2
  local before after out reqs secs
  before=$(ticks "${PID[$proxy]}")
  secs=$(date +%s.%N)
  out=$("$@" 2>&1)
  secs=$(python3 -c "import time; print(time.time() - $secs)")
  after=$(ticks "${PID[$proxy]}")
  reqs=$(awk '/requests in/ {print $1} /^requests:/ {print $8}' <<<"$out")
  if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then echo "$case $proxy: no requests: $out" >&2; exit 1; fi
  record "$case|cpu" "$proxy" "$(python3 -c "print(($after - $before) / $HZ / $reqs * 1e6)")"
  record "$case|rps" "$proxy" "$(python3 -c "print($reqs / $secs)")"
}

h1_small() { run "HTTP/1.1 keep-alive, tiny body" "$1" on_load wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:${HTTP[$1]}/"; }
h1_16k() { run "HTTP/1.1 keep-alive, 16 KiB body" "$1" on_load wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:${HTTP[$1]}/16k"; }
h2_tls() { run "HTTPS HTTP/2, 16 connections x 4 streams" "$1" on_load h2load -t1 -c16 -m4 -D "$SECS" "https://localhost:${HTTPS[$1]}/"; }
tls_new() {
  run "TLS 1.3 new connection per request" "$1" on_load h2load --h1 -t1 -c16 -n $((SECS * 800)) \
    -H 'Connection: close' "https://localhost:${HTTPS[$1]}/"
}
fixed_rate() { # p50/p99 latency at RATE req/s, 16 keep-alive connections
  local log="$T/latency-$1.log"
  on_load h2load --h1 -t1 -c16 --rps $((RATE / 16)) -D "$SECS" --log-file="$log" \
    "http://127.0.0.1:${HTTP[$1]}/" >/dev/null 2>&1
  python3 - "$log" "$1" "$RATE" >>"$SAMPLES" <<'PY'
import sys
lat = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.strip())
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
print(f"fixed {int(sys.argv[3]) // 1000}k req/s: p50 latency|ms\t{sys.argv[2]}\t{q(0.50)}")
print(f"fixed {int(sys.argv[3]) // 1000}k req/s: p99 latency|ms\t{sys.argv[2]}\t{q(0.99)}")
PY
}

warm() { on_load wrk -t1 -c32 -d1s "http://127.0.0.1:${HTTP[$1]}/" >/dev/null; }
PROXIES=(nginx haproxy modelgate)
echo "$(date -u +%H:%M:%S) baseline RSS" >&2
for p in "${PROXIES[@]}"; do record "RSS at start|MiB" "$p" "$(($(rss_kib "${PID[$p]}") / 1024))"; done
for r in $(seq 1 "$REPEATS"); do
  order=("${PROXIES[@]:$((r % 3))}" "${PROXIES[@]:0:$((r % 3))}")
  echo "$(date -u +%H:%M:%S) repeat $r/$REPEATS: ${order[*]}" >&2
  for p in "${order[@]}"; do warm "$p"; h1_small "$p"; done
  for p in "${order[@]}"; do h1_16k "$p"; done
  for p in "${order[@]}"; do h2_tls "$p"; done
  for p in "${order[@]}"; do tls_new "$p"; done
  for p in "${order[@]}"; do fixed_rate "$p"; done
done
for p in "${PROXIES[@]}"; do record "RSS after load|MiB" "$p" "$(($(rss_kib "${PID[$p]}") / 1024))"; done

# Memory per connection: IDLE idle keep-alive clients (one request each), then closed;
# SSE concurrent event streams. One proxy at a time, RSS in MiB.
hold() { # PROXY LABEL conns.py-args...: RSS while the connections are held
  local proxy=$1 label=$2; shift 2
  coproc HOLD { on_load python3 benches/conns.py "$@"; }
  local line; read -r line <&"${HOLD[0]}" || { echo "conns.py failed for $proxy" >&2; exit 1; }
  sleep 1
  record "$label|MiB" "$proxy" "$(($(rss_kib "${PID[$proxy]}") / 1024))"
  eval "exec ${HOLD[1]}>&-"
  wait "$HOLD_PID" || true
}
for p in "${PROXIES[@]}"; do
  echo "$(date -u +%H:%M:%S) $IDLE idle connections, $SSE SSE streams: $p" >&2
  sleep 2
  record "RSS idle, before connections|MiB" "$p" "$(($(rss_kib "${PID[$p]}") / 1024))"
  hold "$p" "RSS with $IDLE idle keep-alive connections" idle "127.0.0.1:${HTTP[$p]}" "$IDLE"
  sleep 3
  record "RSS after they closed|MiB" "$p" "$(($(rss_kib "${PID[$p]}") / 1024))"
  hold "$p" "RSS with $SSE concurrent SSE streams" sse "127.0.0.1:${HTTP[$p]}" "$SSE" /sse
done

MODELGATE=$MODELGATE python3 - "$SAMPLES" "$OUT" "$REPEATS" "$SECS" "$PROXY_CPU" "$LOAD_CPU" <<'PY'
import collections, datetime, os, platform, statistics, subprocess, sys
samples, out, repeats, secs, pcpu, lcpu = sys.argv[1:]
data = collections.OrderedDict()
for line in open(samples):
    key, proxy, value = line.rstrip("\n").split("\t")
    data.setdefault(key, collections.defaultdict(list))[proxy].append(float(value))
def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except OSError:
        return "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
load = open("/proc/loadavg").read().split()[:3]
rows = []
for key, per in data.items():
    case, unit = key.split("|")
    base = statistics.median(per["nginx"]) if per.get("nginx") else None
    cells = []
    for p in ("nginx", "haproxy", "modelgate"):
        v = per.get(p, [])
        if not v:
            cells.append("-")
            continue
        m = statistics.median(v)
        fmt = (lambda x: f"{x:.0f}") if unit in ("MiB", "req/s") or m >= 100 else (lambda x: f"{x:.2f}")
        spread = f" ({fmt(min(v))}-{fmt(max(v))})" if len(v) > 1 else ""
        ratio = f" = {m / base:.2f}x" if p != "nginx" and base else ""
        cells.append(f"{fmt(m)}{spread}{ratio}")
    label = {"cpu": "proxy CPU per request, µs", "rps": "req/s"}.get(unit, unit)
    rows.append(f"| {case}: {label} | " + " | ".join(cells) + " |")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
text = f"""# modelgate vs nginx vs HAProxy

Written by `bash benches/compare.sh` on {now}.

- Machine: {os.cpu_count()} CPUs ({cpu}), {platform.platform()}; load average at the end {' '.join(load)}
- {version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; modelgate {version([os.environ['MODELGATE'], '--version'])}
- Each proxy: one worker, pinned to CPU {pcpu}; backends (one nginx, three ports) and load
  generators pinned to CPU {lcpu}. {repeats} repeats of {secs} s per case, proxies interleaved.
- Cells: median (min-max over repeats) and the ratio to nginx's median. Memory rows are one
  measurement each; RSS covers all of a proxy's processes.

| case | nginx | HAProxy | modelgate |
|---|---:|---:|---:|
""" + "\n".join(rows) + "\n"
open(out, "w").write(text)
print(text)
PY
