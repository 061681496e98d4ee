#!/usr/bin/env bash
# One broker of the local Kafka (started by start.sh), by its number:
#   broker.sh kill N     SIGKILL (kill -9): a crash, no controlled shutdown
#   broker.sh stop N     SIGTERM, SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   broker.sh start N    start it again (same data and ports), wait until ready
#   broker.sh status     each broker's PID and port, or "down"
# N is 1 for a single broker. Env: KAFKA_DATA_DIR, KAFKA_PORT as for start.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=node.sh
source "$KAFKA_DIR/node.sh"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
SIZE="$(KAFKA_BROKERS='' cluster_size)"
cmd="${1:-}"
if [[ "$cmd" != status ]]; then
  [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] && (($2 >= 1 && $2 <= SIZE)) \
    || { log "broker number must be 1 to $SIZE"; usage; }
  node_env "$2" "$SIZE"
fi
case "$cmd" in
  kill)
    if pid="$(running_pid)"; then
      kill -KILL "$pid"
      reap "$pid"
      log "broker $NODE_ID killed (pid $pid)"
    else
      log "broker $NODE_ID is not running"
    fi ;;
  stop)
    if pid="$(term_node)" && [[ -n "$pid" ]]; then
      reap "$pid"
      log "broker $NODE_ID stopped"
    else
      log "broker $NODE_ID is not running"
    fi ;;
  start)
    [[ -f "$PROPS_FILE" && -f "$LOG_DIRS/meta.properties" ]] \
      || { log "broker $NODE_ID was never started here: run start.sh first"; exit 1; }
    if pid="$(running_pid)"; then
      log "broker $NODE_ID already running (pid $pid)"
      exit 0
    fi
    require_java
    launch_node
    pid="$(cat "$PID_FILE")"
    start=$SECONDS
    wait_ready "$pid"
    log "broker $NODE_ID ready in $((SECONDS - start))s (pid $pid)" ;;
  status)
    for ((n = 1; n <= SIZE; n++)); do
      node_env "$n" "$SIZE"
      if pid="$(running_pid)"; then
        echo "broker $n: pid $pid, $KAFKA_HOST:$NODE_PORT"
      else
        echo "broker $n: down ($KAFKA_HOST:$NODE_PORT)"
      fi
    done ;;
  *) usage ;;
esac
