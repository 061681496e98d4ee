#!/usr/bin/env bash
# Start a local Apache Kafka (KRaft, combined broker+controller) bound to
# 127.0.0.1, in the background, and wait until it serves requests: one
# node by default, or a cluster of N with `--brokers N` (or KAFKA_BROKERS=N).
#
# Usage: start.sh [--brokers N]
# Env:
#   KAFKA_PORT             client port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
#   KAFKA_HEAP_OPTS        JVM heap (default "-Xms256m -Xmx1g")
#   KAFKA_OPTS             extra JVM options
#   KAFKA_LOG_LEVEL        broker root log level (default INFO)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   KAFKA_DATA_DIR         state dir (default deploy/kafka/data)
#   KAFKA_BROKERS          brokers (default 1, or the count the data dir was formatted for)
# A cluster of N: broker n in $KAFKA_DATA_DIR/node-n, client port
# KAFKA_PORT+2(n-1), controller port one above; all N are controller voters,
# topics default to replication 3 (or N if fewer) and min.insync.replicas 2.
# Prints "KAFKA_BOOTSTRAP=<host:port,...>" as its last line on success
# (a cluster also prints "KAFKA_BROKERS=N" before it).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

for arg in "$@"; do
  case "$arg" in
    --brokers=*) KAFKA_BROKERS="${arg#--brokers=}" ;;
    --brokers) want_count=1; continue ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *)
      if [[ "${want_count:-0}" == 1 ]]; then
        KAFKA_BROKERS="$arg"
      else
        log "unknown argument: $arg (usage: start.sh [--brokers N])"
        exit 2
      fi ;;
  esac
  want_count=0
done
[[ "${want_count:-0}" == 1 ]] && { log "--brokers needs a number"; exit 2; }
SIZE="$(cluster_size)"
if [[ -f "$CLUSTER_FILE" ]]; then
  formatted="$(KAFKA_BROKERS='' cluster_size)"
  if ((formatted != SIZE)); then
    log "$DATA_DIR holds a cluster of $formatted brokers, not $SIZE; use another KAFKA_DATA_DIR or stop.sh --clean"
    exit 1
  fi
elif ((SIZE > 1)) && [[ -f "$DATA_DIR/kraft-combined-logs/meta.properties" ]]; then
  log "$DATA_DIR holds a single broker; use another KAFKA_DATA_DIR for a cluster, or stop.sh --clean"
  exit 1
fi
# shellcheck source=node.sh
source "$KAFKA_DIR/node.sh"

"$KAFKA_DIR/fetch.sh"
require_java
mkdir -p "$DATA_DIR"

if ((SIZE == 1)); then
  node_env 1 1
  if pid="$(running_pid)"; then
    running_port="$(sed -n 's|^advertised.listeners=PLAINTEXT://.*:\([0-9]*\)$|\1|p' "$PROPS_FILE")"
    if [[ -n "$running_port" && "$running_port" != "$KAFKA_PORT" ]]; then
      log "a broker from $DATA_DIR is already running (pid $pid) on port $running_port, not $KAFKA_PORT; run stop.sh first"
      exit 1
    fi
    if port_open "$KAFKA_PORT"; then
      log "already running (pid $pid) on $KAFKA_BOOTSTRAP"
      echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
      exit 0
    fi
    log "pid $pid is alive but $KAFKA_BOOTSTRAP is not answering yet; waiting"
    wait_ready "$pid"
    log "ready (pid $pid)"
    echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
    exit 0
  fi
  rm -f "$PID_FILE"

  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      log "port $KAFKA_HOST:$p is already in use by another process (not our broker); set KAFKA_PORT/KAFKA_CONTROLLER_PORT"
      exit 1
    fi
  done

  write_props 1
  format_node "$(run_tool kafka.tools.StorageTool random-uuid)"
  launch_node
  pid="$(cat "$PID_FILE")"
  start=$SECONDS
  if ! wait_ready "$pid"; then
    log "startup failed; stopping pid $pid"
    "$KAFKA_DIR/stop.sh" >/dev/null 2>&1 || true
    exit 1
  fi
  log "ready in $((SECONDS - start))s (pid $pid)"
  echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
  exit 0
fi

# A cluster: every broker is formatted with one cluster id, kept in
# $CLUSTER_FILE; brokers already running are left alone.
cluster_id="$(sed -n 's/^KAFKA_CLUSTER_ID=//p' "$CLUSTER_FILE" 2>/dev/null || true)"
if [[ -z "$cluster_id" ]]; then
  cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)"
  printf 'KAFKA_BROKERS=%s\nKAFKA_CLUSTER_ID=%s\n' "$SIZE" "$cluster_id" >"$CLUSTER_FILE"
fi
launched=()
for ((n = 1; n <= SIZE; n++)); do
  node_env "$n" "$SIZE"
  if running_pid >/dev/null; then
    log "broker $n already running (pid $(running_pid))"
    launched+=("$(running_pid)")
    continue
  fi
  rm -f "$PID_FILE"
  for p in "$NODE_PORT" "$NODE_CONTROLLER_PORT"; do
    if port_open "$p"; then
      log "port $KAFKA_HOST:$p (broker $n) is already in use by another process; set KAFKA_PORT"
      exit 1
    fi
  done
  write_props "$SIZE"
  format_node "$cluster_id"
  launch_node
  launched+=("$(cat "$PID_FILE")")
done
# The brokers need a controller quorum (a majority) before any answers:
# all are started first, then each is waited for.
start=$SECONDS
for ((n = 1; n <= SIZE; n++)); do
  node_env "$n" "$SIZE"
  if ! wait_ready "${launched[n - 1]}"; then
    log "broker $n did not start; stopping the cluster"
    "$KAFKA_DIR/stop.sh" >/dev/null 2>&1 || true
    exit 1
  fi
done
log "cluster of $SIZE ready in $((SECONDS - start))s (pids ${launched[*]})"
echo "KAFKA_BROKERS=$SIZE"
echo "KAFKA_BOOTSTRAP=$(cluster_bootstrap "$SIZE")"
