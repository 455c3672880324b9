#!/usr/bin/env bash
# The CPU cost of the OpenAI front door end to end, counted by callgrind (instructions
# do not move with the machine's load): per streamed token and per request, through
# the same proxy and the same replica, on three routes told apart by Host:
#
#   plain    path "/": no model routing, no token accounting
#   openai   path "/v1", model = "demo", api = "openai": the body's model is read to
#            route, every stream is scanned for tokens and usage
#   usage    the same plus stream_usage = true: usage asked for and cut from the stream
#
#   bash benches/openai_cost.sh [BINARY]   # STREAMS=16 TOKENS=100 REQUESTS=400 REPEATS=2
#
# The replica is `modelgate demo --replica-only` (the mock OpenAI server: one event per
# token, 50 ms apart, so every token reaches the proxy as its own read). modelgate
# (workers = 1, access log off) runs under `valgrind --tool=callgrind`; for each route,
# the counters are zeroed, STREAMS concurrent streamed chat completions of TOKENS tokens
# each (then REQUESTS whole JSON answers of one token, 8 at a time) go through it, and
# the instructions of the whole process are divided by the tokens (requests) received.
# Prints one line per route and phase, and the ratio to `plain`; then, per streamed
# token, the instructions inside the gateway's response body filter (the token meter,
# its clock read and gap histogram: the accounting itself), as a share of `plain`'s.
#
# STREAMS stays low enough that the proxy, slowed down by callgrind, keeps up with
# the tokens: once it falls behind, several events arrive in one read and the count
# per token drops with the machine's load (64 streams on a busy 2-core machine moved
# it by +-25% from run to run), which hides a cost of a few percent.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
STREAMS=${STREAMS:-16}
TOKENS=${TOKENS:-100}
REQUESTS=${REQUESTS:-400}
REPEATS=${REPEATS:-2}
BIN=${1:-target/release/modelgate}
need valgrind:valgrind curl:curl
[ -x "$BIN" ] || cargo build --release --quiet --bin modelgate
scratch openai
REP=$(free_port); MG=$(free_port)
cat >"$T/modelgate.toml" <<EOF
[listen]
http = "127.0.0.1:$MG"
workers = 1
shutdown_grace = "1s"
[log]
access = "off"
[[route]]
name = "plain"
host = "plain"
path = "/"
upstream = "r"
[[route]]
name = "openai"
host = "openai"
path = "/v1"
model = "demo"
api = "openai"
upstream = "r"
[[route]]
name = "usage"
host = "usage"
path = "/v1"
model = "demo"
api = "openai"
stream_usage = true
upstream = "r"
[upstream.r]
backends = ["127.0.0.1:$REP"]
max_inflight = 0
EOF
"$BIN" demo --replica-only --listen "127.0.0.1:$REP" --name r >/dev/null & PIDS+=($!)
RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$T/cg.out" \
  "$BIN" run -c "$T/modelgate.toml" 2>"$T/valgrind.log" & PIDS+=($!)
VG=$!
URL="http://127.0.0.1:$MG/v1/chat/completions"
for _ in $(seq 1 600); do curl -s -o /dev/null -H 'Host: plain' "http://127.0.0.1:$MG/health" && break; sleep 0.2; done
STREAM_BODY="{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me about proxies.\"}],\"stream\":true,\"max_tokens\":$TOKENS}"
WHOLE_BODY='{"model":"demo","messages":[{"role":"user","content":"Tell me about proxies."}],"max_tokens":1}'

# Runs `n` requests of `body` to `host`, `par` at a time; prints the tokens received
# (content chunks of streams, or answers).
load() {
  local host=$1 body=$2 n=$3 par=$4
  seq 1 "$n" | xargs -P "$par" -I{} curl -sN -H "Host: $host" -H 'Content-Type: application/json' \
    -d "$body" -o "$T/out.{}" "$URL"
  if [[ $body == *'"stream":true'* ]]; then
    cat "$T"/out.* | grep -c '"content":"[^"]' || true
  else
    # whole answers end without a newline: count matches, not lines
    cat "$T"/out.* | grep -o '"object":"chat.completion"' | wc -l
  fi
  rm -f "$T"/out.*
}

# Instructions of the proxy process since the last zeroing, then those inside the
# gateway's response body filter (the token meter, its clock read and gap histogram).
count() {
  callgrind_control --dump "$VG" >/dev/null
  sleep 1
  local dump ann
  dump=$(ls -t "$T"/cg.out.* | head -1)
  ann=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null)
  awk '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%s ", $1; exit}' <<<"$ann"
  awk '/Gateway as pingora_proxy::proxy_trait::ProxyHttp>::response_body_filter/ {
         gsub(",", "", $1); n = $1; exit } END { print n + 0 }' <<<"$ann"
  rm -f "$T"/cg.out.*
}

for host in plain openai usage; do # warm-up
  load "$host" "$STREAM_BODY" 4 4 >/dev/null
  load "$host" "$WHOLE_BODY" 8 8 >/dev/null
done
declare -A per meter
for rep in $(seq 1 "$REPEATS"); do
  for host in plain openai usage; do
    callgrind_control --zero "$VG" >/dev/null
    got=$(load "$host" "$STREAM_BODY" "$STREAMS" "$STREAMS")
    [ "$got" = $((STREAMS * TOKENS)) ] || echo "warning: $host: $got of $((STREAMS * TOKENS)) tokens" >&2
    read -r n f < <(count)
    per[stream,$host]="${per[stream,$host]:-} $((n / got))"
    meter[$host]="${meter[$host]:-} $((f / got))"
    callgrind_control --zero "$VG" >/dev/null
    got=$(load "$host" "$WHOLE_BODY" "$REQUESTS" 8)
    [ "$got" = "$REQUESTS" ] || echo "warning: $host: $got of $REQUESTS answers" >&2
    read -r n f < <(count)
    per[whole,$host]="${per[whole,$host]:-} $((n / got))"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for phase in stream whole; do
  unit=$([ "$phase" = stream ] && echo "streamed token" || echo "whole request")
  base=$(median <<<"${per[$phase,plain]}")
  for host in plain openai usage; do
    m=$(median <<<"${per[$phase,$host]}")
    printf '%-6s instructions per %s: %8d (runs:%s)  %.3fx plain\n' \
      "$host" "$unit" "$m" "${per[$phase,$host]}" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')"
  done
done
# The body filter's share does not move with the machine's load the way the whole
# process does (timers, wake-ups, how many events one read brings).
base=$(median <<<"${per[stream,plain]}")
for host in openai usage; do
  f=$(median <<<"${meter[$host]}")
  printf '%-6s response body filter per streamed token: %6d (runs:%s)  %.1f%% of plain per token\n' \
    "$host" "$f" "${meter[$host]}" "$(awk -v a="$f" -v b="$base" 'BEGIN {print 100 * a / b}')"
done
