# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared settings for the deploy/kafka scripts. Sourced, not executed.
# Every path is absolute, derived from this file's location, so the scripts
# work from any current directory.

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIB_DIR="$KAFKA_DIR/lib"
DATA_DIR="${KAFKA_DATA_DIR:-$KAFKA_DIR/data}"
LOG_DIRS="$DATA_DIR/kraft-combined-logs"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
PROPS_FILE="$DATA_DIR/server.properties"

KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
# A cluster of several brokers keeps its size here (absent for one broker).
CLUSTER_FILE="$DATA_DIR/cluster.env"

for _p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
  if ! [[ "$_p" =~ ^[0-9]+$ ]] || ((_p < 1 || _p > 65535)); then
    echo "kafka: invalid port '$_p' (KAFKA_PORT / KAFKA_CONTROLLER_PORT)" >&2
    exit 2
  fi
done
unset _p

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="$(command -v java || true)"
fi

log() { echo "kafka: $*" >&2; }

require_java() {
  if [[ -z "$JAVA" ]]; then
    log "java not found (Kafka 4.x needs Java 17+); set JAVA_HOME or install a JDK"
    exit 1
  fi
  local v
  v="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  if [[ -z "$v" || "${v%%.*}" -lt 17 ]]; then
    log "$JAVA is Java ${v:-?}; Kafka 4.x needs Java 17+"
    exit 1
  fi
}

# Run a Kafka CLI class from lib/ (small, fast-starting JVM; warnings only).
# TOOL_TIMEOUT=N kills it after N seconds.
run_tool() {
  local main="$1"
  shift
  ${TOOL_TIMEOUT:+timeout "$TOOL_TIMEOUT"} "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
    -cp "$LIB_DIR/*" "$main" "$@"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null
}

# The number of brokers: KAFKA_BROKERS if set, else the size recorded in
# $CLUSTER_FILE by the start.sh that formatted $DATA_DIR, else 1.
cluster_size() {
  local n="${KAFKA_BROKERS:-}"
  if [[ -z "$n" && -f "$CLUSTER_FILE" ]]; then
    n="$(sed -n 's/^KAFKA_BROKERS=//p' "$CLUSTER_FILE")"
  fi
  n="${n:-1}"
  if ! [[ "$n" =~ ^[0-9]+$ ]] || ((n < 1 || n > 9)); then
    log "invalid broker count '$n' (KAFKA_BROKERS / --brokers: 1 to 9)"
    exit 2
  fi
  echo "$n"
}

# Points the per-broker variables at broker $1 of a cluster of $2 brokers.
# One broker keeps the single-node layout (everything straight in
# $DATA_DIR, ports KAFKA_PORT and KAFKA_CONTROLLER_PORT). In a cluster,
# broker n (1-based) lives in $DATA_DIR/node-n and listens on
# KAFKA_PORT + 2(n-1), its controller on the port after that.
node_env() {
  local n="$1" size="$2"
  NODE_ID="$n"
  if ((size == 1)); then
    NODE_DIR="$DATA_DIR"
    NODE_PORT="$KAFKA_PORT"
    NODE_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT"
  else
    NODE_DIR="$DATA_DIR/node-$n"
    NODE_PORT=$((KAFKA_PORT + 2 * (n - 1)))
    NODE_CONTROLLER_PORT=$((NODE_PORT + 1))
  fi
  LOG_DIRS="$NODE_DIR/kraft-combined-logs"
  PID_FILE="$NODE_DIR/kafka.pid"
  LOG_FILE="$NODE_DIR/kafka.log"
  PROPS_FILE="$NODE_DIR/server.properties"
}

# Comma-separated client addresses of every broker of a cluster of $1.
cluster_bootstrap() {
  local size="$1" n list=""
  for ((n = 1; n <= size; n++)); do
    node_env "$n" "$size"
    list+="${list:+,}$KAFKA_HOST:$NODE_PORT"
  done
  echo "$list"
}

# Prints the PID of our broker if it is running, else returns 1.
# Only trusts the PID file if that process really is kafka.Kafka with our config.
running_pid() {
  local pid cmd
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *kafka.Kafka*"$PROPS_FILE"* ]] || return 1
  echo "$pid"
}
