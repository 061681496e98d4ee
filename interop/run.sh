#!/usr/bin/env bash
# Interop checks against a real switchboard-embedded: a Python grpcio client, a Go
# grpc-go client and grpcurl.
#
#   interop/run.sh                                              # builds the server with cargo
#   SWITCHBOARD_EMBEDDED_BIN=/path/to/switchboard-embedded interop/run.sh
#
# Sets up interop/.venv (pinned, see python/requirements.txt), interop/bin/grpcurl and
# the Go client (go.sh --build-only: protoc-gen-go and protoc-gen-go-grpc pinned and
# `go install`ed, code generated with the venv's protoc, dependencies pinned in
# go/go.sum) when missing, starts the server on free 127.0.0.1 ports, runs
# python/client.py, go.sh and grpcurl.sh, always stops the server, and exits non-zero
# if anything failed.
#
# Env (all optional): SWITCHBOARD_EMBEDDED_BIN, PYTHON (for the venv, default python3),
# GRPCURL, INTEROP_STARTUP_TIMEOUT (s, 60), INTEROP_CHECK_TIMEOUT (s, 180),
# INTEROP_BUILD_TIMEOUT (s, 3600), INTEROP_KEEP_LOGS=1 (keep the server's logs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv"
REQUIREMENTS="$HERE/python/requirements.txt"
STARTUP_TIMEOUT="${INTEROP_STARTUP_TIMEOUT:-60}"
CHECK_TIMEOUT="${INTEROP_CHECK_TIMEOUT:-180}"
BUILD_TIMEOUT="${INTEROP_BUILD_TIMEOUT:-3600}"
STOP_TIMEOUT=15

log() { printf '[interop %3ds] %s\n' "$SECONDS" "$*"; }

passed=0
failed=0
ok()   { passed=$((passed + 1)); log "ok   $1"; }
fail() { failed=$((failed + 1)); log "FAIL $1"; }

server_pid=""
server_rc=""
workdir="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-interop.XXXXXX")"

# Stops the server: SIGTERM (not SIGINT: a background job may have SIGINT ignored),
# then SIGKILL if it has not exited within STOP_TIMEOUT. Sets server_rc.
stop_server() {
  [[ -n "$server_pid" ]] || return 0
  local pid="$server_pid" i
  server_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "server (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  server_rc=0
  wait "$pid" 2>/dev/null || server_rc=$?
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$server_pid" ]]; then
    log "stopping the server (pid $server_pid)"
    stop_server
  fi
  if [[ $rc -ne 0 || -n "${INTEROP_KEEP_LOGS:-}" ]]; then
    log "server logs kept in $workdir"
    if [[ $rc -ne 0 && -s "$workdir/server.err" ]]; then
      log "last lines of the server's stderr:"
      tail -n 20 "$workdir/server.err" | sed 's/^/    | /'
    fi
  else
    rm -rf "$workdir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools --------------------------------------------------------------------
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" == "$want" ]]; then
  log "venv ready: $VENV"
else
  log "creating venv $VENV from python/requirements.txt"
  rm -rf "$VENV"
  timeout 120 "${PYTHON:-python3}" -m venv "$VENV"
  timeout 900 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
  log "venv installed: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(grpcio|protobuf|googleapis)' | tr '\n' ' ')"
fi
PY="$VENV/bin/python"

GRPCURL="$("$HERE/install-grpcurl.sh")"
export GRPCURL
log "grpcurl: $GRPCURL ($("$GRPCURL" -version 2>&1))"

log "Go client: fetching, generating and building (go.sh --build-only)"
PYTHON="$PY" "$HERE/go.sh" --build-only

# --- server binary --------------------------------------------------------------
if [[ -n "${SWITCHBOARD_EMBEDDED_BIN:-}" ]]; then
  BIN="$SWITCHBOARD_EMBEDDED_BIN"
else
  log "building switchboard-embedded (cargo build --bin switchboard-embedded)"
  (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --bin switchboard-embedded)
  target_dir="${CARGO_TARGET_DIR:-target}"
  [[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
  BIN="$target_dir/debug/switchboard-embedded"
fi
[[ -x "$BIN" ]] || { log "server binary $BIN is missing or not executable"; exit 1; }
log "server binary: $BIN"

# --- start the server -------------------------------------------------------------
free_ports() {
  # Four distinct free ports on 127.0.0.1 (held together while picking).
  "$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()'
}

healthy() {
  timeout 5 "$GRPCURL" -plaintext -connect-timeout 1 -max-time 2 "$1" grpc.health.v1.Health/Check 2>/dev/null \
    | grep -q '"status": "SERVING"'
}

# Starts the server and waits for health SERVING. Returns 1 if it exited during
# startup (e.g. a port was taken in between), 2 if it never became healthy.
start_server() {
  local ports deadline started=$SECONDS
  read -r -a ports <<<"$(free_ports)"
  ADDR="127.0.0.1:${ports[0]}"
  log "starting server: --grpc-addr $ADDR --bot-addr 127.0.0.1:${ports[1]} --metrics-addr 127.0.0.1:${ports[2]} --http-addr 127.0.0.1:${ports[3]}"
  NO_COLOR=1 "$BIN" --grpc-addr "$ADDR" --bot-addr "127.0.0.1:${ports[1]}" \
    --metrics-addr "127.0.0.1:${ports[2]}" --http-addr "127.0.0.1:${ports[3]}" \
    >"$workdir/server.out" 2>"$workdir/server.err" &
  server_pid=$!
  deadline=$((SECONDS + STARTUP_TIMEOUT))
  while true; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      server_rc=0
      wait "$server_pid" 2>/dev/null || server_rc=$?
      server_pid=""
      log "server exited during startup (rc=$server_rc): $(grep -m1 -i 'error' "$workdir/server.err" || true)"
      return 1
    fi
    if healthy "$ADDR"; then
      log "server (pid $server_pid) healthy after $((SECONDS - started))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "server not healthy within ${STARTUP_TIMEOUT}s"
      return 2
    fi
    sleep 0.2
  done
}

attempt=1
while true; do
  rc=0
  start_server || rc=$?
  [[ $rc -eq 0 ]] && break
  if [[ $rc -eq 1 && $attempt -lt 3 ]]; then
    attempt=$((attempt + 1))
    log "retrying with new ports (attempt $attempt of 3)"
    continue
  fi
  exit 1
done

# --- checks -----------------------------------------------------------------------
# Runs one check script, echoing its output, and adds its `N passed, M failed` line.
run_suite() {
  local name="$1" rc=0 last p f
  shift
  log "== $name"
  set +e
  timeout "$CHECK_TIMEOUT" "$@" 2>&1 | tee "$workdir/$name.log" | sed 's/^/    /'
  rc="${PIPESTATUS[0]}"
  set -e
  last="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$workdir/$name.log" | tail -n 1 || true)"
  if [[ -z "$last" ]]; then
    fail "$name: no result line (rc=$rc)"
    return
  fi
  p="${last%% passed*}"
  f="${last#*, }"
  f="${f%% failed}"
  passed=$((passed + p))
  failed=$((failed + f))
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    fail "$name: exited $rc"
  fi
  log "$name: $last (rc=$rc)"
}

run_suite python "$PY" -u "$HERE/python/client.py" "$ADDR"
run_suite go env PYTHON="$PY" "$HERE/go.sh" "$ADDR"
run_suite grpcurl "$HERE/grpcurl.sh" "$ADDR"

if kill -0 "$server_pid" 2>/dev/null; then
  ok "server still running after the checks"
else
  fail "server died during the checks"
fi
log "stopping the server (pid $server_pid) with SIGTERM"
pid="$server_pid"
stop_server
if [[ "$server_rc" == 0 ]]; then
  ok "server stopped cleanly on SIGTERM (exit 0)"
else
  fail "server stop: exit status $server_rc"
fi
if kill -0 "$pid" 2>/dev/null; then
  fail "server pid $pid still present after stop"
fi

log "done in ${SECONDS}s"
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
