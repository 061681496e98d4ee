#!/usr/bin/env bash
# Stop the local Kafka broker started by start.sh: SIGTERM, wait up to
# KAFKA_STOP_TIMEOUT (default 30) seconds, then SIGKILL. No-op if not running.
# Usage: stop.sh [--clean]   --clean (or KAFKA_CLEAN=1) also deletes data/.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

clean="${KAFKA_CLEAN:-0}"
for arg in "$@"; do
  case "$arg" in
    --clean) clean=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) log "unknown argument: $arg (usage: stop.sh [--clean])"; exit 2 ;;
  esac
done
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

if pid="$(running_pid)"; then
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    log "could not stop pid $pid"
    exit 1
  fi
  log "stopped"
else
  log "not running"
fi
rm -f "$PID_FILE"

if [[ "$clean" == 1 ]]; then
  log "removing $DATA_DIR"
  rm -rf "$DATA_DIR"
fi
