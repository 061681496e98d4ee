#!/usr/bin/env bash
# Stop the local Kafka started by start.sh (every broker of a cluster):
# SIGTERM, wait up to KAFKA_STOP_TIMEOUT (default 30) seconds, then SIGKILL.
# No-op if not running.
# Usage: stop.sh [--clean]   --clean (or KAFKA_CLEAN=1) also deletes data/.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=node.sh
source "$KAFKA_DIR/node.sh"

clean="${KAFKA_CLEAN:-0}"
for arg in "$@"; do
  case "$arg" in
    --clean) clean=1 ;;
    -h | --help) sed -n '2,5p' "$0"; exit 0 ;;
    *) log "unknown argument: $arg (usage: stop.sh [--clean])"; exit 2 ;;
  esac
done

SIZE="$(KAFKA_BROKERS='' cluster_size)"
# Every broker is asked to stop at once (a cluster that lost its quorum
# midway would otherwise hang the last ones), then each is waited for.
pids=()
for ((n = 1; n <= SIZE; n++)); do
  node_env "$n" "$SIZE"
  if pid="$(term_node)" && [[ -n "$pid" ]]; then
    pids+=("$pid")
  fi
done
failed=0
for pid in "${pids[@]}"; do
  reap "$pid" || failed=1
done
for ((n = 1; n <= SIZE; n++)); do
  node_env "$n" "$SIZE"
  running_pid >/dev/null || rm -f "$PID_FILE"
done
((failed == 0)) || exit 1
if ((${#pids[@]} > 0)); then log "stopped"; else log "not running"; fi

if [[ "$clean" == 1 ]]; then
  log "removing $DATA_DIR"
  rm -rf "$DATA_DIR"
fi
