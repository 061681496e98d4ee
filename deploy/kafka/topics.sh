#!/usr/bin/env bash
# Kafka topics CLI (org.apache.kafka.tools.TopicCommand) against the local broker.
# Usage:
#   topics.sh list
#   topics.sh create TOPIC [PARTITIONS (default 12)] [REPLICATION (default 1)]
#   topics.sh describe [TOPIC]
#   topics.sh delete TOPIC
#   topics.sh -- ARGS...        raw TopicCommand arguments (--bootstrap-server is added)
# Env: KAFKA_PORT (default 9092).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_java
[[ -d "$LIB_DIR" ]] || "$KAFKA_DIR/fetch.sh"
port_open "$KAFKA_PORT" || { log "nothing listening on $KAFKA_BOOTSTRAP (run start.sh)"; exit 1; }

usage() { sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
tc() { run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" "$@"; }

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  list) tc --list "$@" ;;
  create)
    [[ $# -ge 1 ]] || usage
    tc --create --if-not-exists --topic "$1" --partitions "${2:-12}" --replication-factor "${3:-1}" ;;
  describe)
    if [[ $# -ge 1 ]]; then tc --describe --topic "$1"; else tc --describe; fi ;;
  delete)
    [[ $# -ge 1 ]] || usage
    tc --delete --topic "$1" ;;
  --) tc "$@" ;;
  *) usage ;;
esac
