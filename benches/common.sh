# Pieces the benchmark scripts share; sourced by them (`. benches/common.sh`), not run.

# need TOOL:PACKAGE ...: installs, in one apt-get call, the Debian packages of the
# tools that are not on PATH.
need() {
  local missing=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# scratch NAME: sets T to a new scratch directory; on exit every process whose PID
# was added to PIDS is stopped and waited for, and T is removed.
scratch() {
  T=$(mktemp -d -t "modelgate-$1.XXXXXX")
  PIDS=()
  trap _scratch_cleanup EXIT
}
_scratch_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
