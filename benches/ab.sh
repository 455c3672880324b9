#!/usr/bin/env bash
# Two modelgate builds side by side, for one change at a time: proxy CPU per request and
# minor page faults per request, pinned as in compare.sh, the two builds alternating.
#
#   bash benches/ab.sh BIN_A BIN_B   # REPEATS=5 SECS=5 CASES="tiny 16k h2" ENV_A= ENV_B=
#
# Cases: tiny, 16k (HTTP/1.1 keep-alive), h2 (HTTPS HTTP/2, 16 connections x 4 streams),
# tls (a new TLS 1.3 connection per request, as compare.sh's; not in the default CASES).
#
# ENV_A / ENV_B: extra environment for one side
# ("_RJEM_MALLOC_CONF=dirty_decay_ms:10000"), so one binary can be compared with itself
# under other settings. Both builds get the same config as in compare.sh (one worker,
# round robin over three nginx backend ports with upstream keep-alive, access log off,
# HTTP/1.1 and HTTPS). Each proxy runs on CPU $PROXY_CPU, the backend and wrk/h2load on
# $LOAD_CPU; one proxy is loaded at a time, and the order alternates every repeat. Prints,
# per case, the median (min-max) of each side and B/A.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
[ $# -eq 2 ] || { sed -n 2,16p "$0" >&2; exit 2; }
declare -A BIN=([a]=$(realpath "$1") [b]=$(realpath "$2"))
REPEATS=${REPEATS:-5}
SECS=${SECS:-5}
CASES=${CASES:-tiny 16k h2}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
export PATH="$PATH:/usr/sbin"
need nginx:nginx wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl python3:python3
systemctl stop nginx 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

scratch ab
B1=$(free_port); B2=$(free_port); B3=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$T/bench.key" -out "$T/bench.crt" 2>/dev/null
mkdir -p "$T/www" "$T/backend"
chmod 755 "$T" "$T/www"
head -c 16384 /dev/zero | tr '\0' x >"$T/www/16k"
cat >"$T/backend/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $T/backend/nginx.pid; error_log $T/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $T/backend; proxy_temp_path $T/backend;
  fastcgi_temp_path $T/backend; uwsgi_temp_path $T/backend; scgi_temp_path $T/backend;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; listen 127.0.0.1:$B3;
    root $T/www; location = / { return 200 "ok\n"; }
  }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$T/backend/nginx.conf" -p "$T/backend" & PIDS+=($!)

declare -A HTTP HTTPS PID
for side in a b; do
  HTTP[$side]=$(free_port); HTTPS[$side]=$(free_port)
  cat >"$T/$side.toml" <<EOF
[listen]
http = "127.0.0.1:${HTTP[$side]}"
https = "127.0.0.1:${HTTPS[$side]}"
workers = 1
shutdown_grace = "1s"

[log]
access = "off"

[tls]
certs = [{ cert = "$T/bench.crt", key = "$T/bench.key" }]

[[route]]
name = "all"
path = "/"
upstream = "b"

[upstream.b]
backends = ["127.0.0.1:$B1", "127.0.0.1:$B2", "127.0.0.1:$B3"]
balance = "round_robin"
max_inflight = 0
EOF
  env_var=ENV_${side^^}
  # shellcheck disable=SC2086
  env ${!env_var:-} RUST_LOG=error taskset -c "$PROXY_CPU" "${BIN[$side]}" run -c "$T/$side.toml" \
    2>"$T/$side.log" &
  PID[$side]=$!
  PIDS+=("${PID[$side]}")
done
for url in "http://127.0.0.1:$B1/" "http://127.0.0.1:${HTTP[a]}/" "http://127.0.0.1:${HTTP[b]}/" \
  "https://localhost:${HTTPS[a]}/" "https://localhost:${HTTPS[b]}/"; do
  for _ in $(seq 1 200); do curl -sk -o /dev/null "$url" && continue 2; sleep 0.1; done
  echo "not up: $url" >&2; cat "$T"/*.log >&2; exit 1
done

# utime+stime ticks and minor faults of a process (all its threads).
stat_of() { awk '{print $14+$15, $10}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
on_load() { taskset -c "$LOAD_CPU" "$@"; }
load() { # CASE SIDE: runs the load, prints the requests completed
  local out
  case $1 in
    tiny) out=$(on_load wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:${HTTP[$2]}/") ;;
    16k) out=$(on_load wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:${HTTP[$2]}/16k") ;;
    h2) out=$(on_load h2load -t1 -c16 -m4 -D "$SECS" "https://localhost:${HTTPS[$2]}/" 2>&1) ;;
    tls) out=$(on_load h2load --h1 -t1 -c16 -n $((SECS * 800)) -H 'Connection: close' \
      "https://localhost:${HTTPS[$2]}/" 2>&1) ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
  esac
  awk '/requests in/ {print $1} /^requests:/ {print $8}' <<<"$out"
}
SAMPLES="$T/samples.tsv"
for side in a b; do on_load wrk -t1 -c32 -d1s "http://127.0.0.1:${HTTP[$side]}/" >/dev/null; done
for r in $(seq 1 "$REPEATS"); do
  order=(a b); [ $((r % 2)) -eq 0 ] && order=(b a)
  echo "$(date -u +%H:%M:%S) repeat $r/$REPEATS: ${order[*]}" >&2
  for c in $CASES; do
    for side in "${order[@]}"; do
      read -r t0 f0 < <(stat_of "${PID[$side]}")
      reqs=$(load "$c" "$side")
      read -r t1 f1 < <(stat_of "${PID[$side]}")
      printf '%s\t%s\t%s\t%s\t%s\n' "$c" "$side" "$reqs" $((t1 - t0)) $((f1 - f0)) >>"$SAMPLES"
    done
  done
done
python3 - "$SAMPLES" "$HZ" "${BIN[a]} ${ENV_A:-}" "${BIN[b]} ${ENV_B:-}" <<'PY'
import collections, statistics, sys
samples, hz, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cpu = collections.defaultdict(list)
faults = collections.defaultdict(list)
for line in open(samples):
    case, side, reqs, ticks, flt = line.split("\t")
    reqs = int(reqs)
    cpu[case, side].append(int(ticks) / hz / reqs * 1e6)
    faults[case, side].append(int(flt) / reqs)
print(f"A = {a}\nB = {b}\n")
print("| case | A µs/req | B µs/req | B/A | A faults/req | B faults/req |")
print("|---|---:|---:|---:|---:|---:|")
for case in dict.fromkeys(c for c, _ in cpu):
    m = {s: statistics.median(cpu[case, s]) for s in "ab"}
    f = {s: statistics.median(faults[case, s]) for s in "ab"}
    span = {s: f"{min(cpu[case, s]):.1f}-{max(cpu[case, s]):.1f}" for s in "ab"}
    print(f"| {case} | {m['a']:.1f} ({span['a']}) | {m['b']:.1f} ({span['b']}) | "
          f"{m['b'] / m['a']:.3f} | {f['a']:.2f} | {f['b']:.2f} |")
PY
