#!/usr/bin/env bash
# Console producer / consumer from the same jars, against the local broker.
# Usage:
#   console.sh produce TOPIC [extra ConsoleProducer args]    lines from stdin
#   console.sh consume TOPIC [extra ConsoleConsumer args]    from the beginning
#   e.g. echo hi | console.sh produce t1
#        console.sh consume t1 --max-messages 1 --timeout-ms 10000
# Env: KAFKA_PORT (default 9092).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_java
[[ -d "$LIB_DIR" ]] || "$KAFKA_DIR/fetch.sh"
port_open "$KAFKA_PORT" || { log "nothing listening on $KAFKA_BOOTSTRAP (run start.sh)"; exit 1; }

usage() { sed -n '3,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd="$1" topic="$2"
shift 2
case "$cmd" in
  produce)
    run_tool org.apache.kafka.tools.ConsoleProducer \
      --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" "$@" ;;
  consume)
    run_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
      --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" --from-beginning "$@" ;;
  *) usage ;;
esac
