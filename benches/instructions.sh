#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a CPU cost that does not move
# with the machine's load, for measuring one change at a time.
#
#   bash benches/instructions.sh [BINARY]      # REQUESTS=4000 CONNS=16; default target/release/modelgate
#
# modelgate (workers = 1, access log off) runs under `valgrind --tool=callgrind` in
# front of one nginx backend answering "ok\n"; after a warm-up the counters are zeroed,
# h2load sends REQUESTS HTTP/1.1 keep-alive requests (CONNS connections), and the
# instructions of the whole process (all threads) are divided by REQUESTS. Prints
# "instructions/request N", "allocations/request N" (calls into the allocator) and,
# with TOP=1, the costliest functions (inclusive); with KEEP=FILE the callgrind dump
# is kept there for callgrind_annotate or kcachegrind.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
REQUESTS=${REQUESTS:-4000}
CONNS=${CONNS:-16}
BIN=${1:-target/release/modelgate}
export PATH="$PATH:/usr/sbin"
need valgrind:valgrind nginx:nginx h2load:nghttp2-client
[ -x "$BIN" ] || cargo build --release --quiet --bin modelgate
scratch instr
BACK=$(free_port); MG=$(free_port)
cat >"$T/backend.conf" <<EOF
worker_processes 1; daemon off; pid $T/backend.pid; error_log $T/backend.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $T; proxy_temp_path $T; fastcgi_temp_path $T; uwsgi_temp_path $T; scgi_temp_path $T;
  server { listen 127.0.0.1:$BACK; location / { return 200 "ok\n"; } } }
EOF
cat >"$T/modelgate.toml" <<EOF
[listen]
http = "127.0.0.1:$MG"
workers = 1
shutdown_grace = "1s"
[log]
access = "off"
[[route]]
name = "all"
path = "/"
upstream = "b"
[upstream.b]
backends = ["127.0.0.1:$BACK"]
balance = "round_robin"
max_inflight = 0
EOF
nginx -c "$T/backend.conf" -p "$T" & PIDS+=($!)
RUST_LOG=error valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$T/cg.out" \
  "$BIN" run -c "$T/modelgate.toml" 2>"$T/valgrind.log" & PIDS+=($!)
VG=$!
for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$MG/" && break; sleep 0.2; done
h2load --h1 -t1 -c"$CONNS" -n $((CONNS * 50)) "http://127.0.0.1:$MG/" >/dev/null 2>&1 # warm-up
callgrind_control --zero "$VG" >/dev/null
out=$(h2load --h1 -t1 -c"$CONNS" -n "$REQUESTS" "http://127.0.0.1:$MG/" 2>&1)
ok=$(awk '/^requests:/ {print $8}' <<<"$out")
callgrind_control --dump "$VG" >/dev/null
sleep 1
dump=$(ls -t "$T"/cg.out.* 2>/dev/null | head -1)
[ -n "$dump" ] || { echo "no callgrind dump" >&2; cat "$T/valgrind.log" >&2; exit 1; }
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
[ "$ok" = "$REQUESTS" ] || echo "warning: $ok of $REQUESTS requests succeeded" >&2
echo "instructions/request $((total / ok))"
# Heap allocations: calls into the allocator's allocating entry points from outside it,
# counted from the dump's call records: jemalloc's (`_rjem_malloc`, `_rjem_mallocx`,
# `_rjem_calloc`, `_rjem_realloc`, `_rjem_rallocx`, ...) and, for builds before it,
# mimalloc's (`mi_malloc`, `mi_zalloc`, `mi_realloc` and their aligned forms). Those
# mimalloc builds re-executed themselves at start unless MIMALLOC_PURGE_DELAY and
# MIMALLOC_ARENA_EAGER_COMMIT were set, which leaves valgrind: set both (to 0) to
# measure one.
allocs=$(python3 - "$dump" <<'PY'
import re, sys
entry = re.compile(
    r"^(_rjem_(malloc|mallocx|calloc|realloc|rallocx|aligned_alloc|posix_memalign)"
    r"|_?mi_(heap_)?(malloc|zalloc|calloc|realloc|rezalloc|recalloc)(_aligned|_aligned_at|_small)?)$"
)
internal = ("_rjem_", "mi_", "_mi_")
caller = callee = None
total = 0
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):
        caller = line[3:].split(" ", 1)[-1].strip()
    elif line.startswith("cfn="):
        callee = line[4:].split(" ", 1)[-1].strip()
    elif line.startswith("calls=") and callee and caller:
        if entry.match(callee) and not caller.startswith(internal):
            total += int(line[6:].split()[0])
print(total)
PY
)
echo "allocations/request $(python3 -c "print(f'{$allocs / $ok:.1f}')")"
[ -z "${KEEP:-}" ] || cp "$dump" "$KEEP"
if [ "${TOP:-0}" = 1 ]; then
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -60
fi
