#!/usr/bin/env bash
# Runs Switchboard's fault scenarios on real processes and a real Kafka of
# their own, and prints the results table (benches/README.md, "Fault scenarios").
#
# Usage: benches/faults/run.sh [--quick] [SCENARIO ...]
#   SCENARIO: ingest-kill worker-kill worker-stop broker-kill kafka-restart bot-outage
#             (default: all of them)
#   --quick   shorter runs at a lower rate, on a debug build: every scenario
#             but bot-outage unless scenarios are named (CI)
# Env:
#   FAULTS_KAFKA_PORT   first port of the 3-broker cluster (default 19092; uses 6 ports)
#   FAULTS_SINGLE_PORT  port of the one-broker Kafka of kafka-restart (default 19192)
#   FAULTS_OUT          reports, logs and Kafka data (default target/faults)
#   FAULTS_RATE, FAULTS_DURATION   load of each scenario (default 300/s for 40s; quick 150/s for 12s)
#   FAULTS_PROFILE      release or debug build (default release; quick debug),
#                       from CARGO_TARGET_DIR if set
#   FAULTS_RUST_LOG     RUST_LOG of the nodes and workers (default info)
# Both Kafkas are started here, on their own ports and data folders (never
# the shared one on 9092), and stopped and deleted at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

quick=0
scenarios=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    ingest-kill | worker-kill | worker-stop | broker-kill | kafka-restart | bot-outage) scenarios+=("$arg") ;;
    *) echo "faults: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if ((${#scenarios[@]} == 0)); then
  if ((quick)); then
    scenarios=(ingest-kill worker-kill worker-stop broker-kill kafka-restart)
  else
    scenarios=(ingest-kill worker-kill worker-stop broker-kill kafka-restart bot-outage)
  fi
fi

out="${FAULTS_OUT:-$root/target/faults}"
cluster_port="${FAULTS_KAFKA_PORT:-19092}"
single_port="${FAULTS_SINGLE_PORT:-19192}"
cluster_dir="$out/kafka-cluster"
single_dir="$out/kafka-single"
if ((quick)); then
  rate="${FAULTS_RATE:-150}" duration="${FAULTS_DURATION:-12s}" freeze=14s profile="${FAULTS_PROFILE:-debug}"
else
  rate="${FAULTS_RATE:-300}" duration="${FAULTS_DURATION:-40s}" freeze=20s profile="${FAULTS_PROFILE:-release}"
fi
[[ "$profile" == release || "$profile" == debug ]] || { echo "faults: FAULTS_PROFILE is release or debug" >&2; exit 2; }
mkdir -p "$out"

# Each Kafka's controller port follows its broker's, whatever the caller's
# environment says (a KAFKA_CONTROLLER_PORT meant for the shared Kafka).
cluster() { KAFKA_PORT="$cluster_port" KAFKA_CONTROLLER_PORT=$((cluster_port + 1)) KAFKA_DATA_DIR="$cluster_dir" "$@"; }
single() { KAFKA_PORT="$single_port" KAFKA_CONTROLLER_PORT=$((single_port + 1)) KAFKA_DATA_DIR="$single_dir" "$@"; }
cleanup() {
  echo "faults: stopping the scenarios' Kafkas" >&2
  cluster deploy/kafka/stop.sh --clean >/dev/null 2>&1 || true
  single deploy/kafka/stop.sh --clean >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "faults: building ($profile)" >&2
if [[ "$profile" == release ]]; then
  cargo build --release -p switchboard-broker -p switchboard-workers -p switchboard-benches --bins
else
  cargo build -p switchboard-broker -p switchboard-workers -p switchboard-benches --bins
fi
bench="${CARGO_TARGET_DIR:-$root/target}/$profile/switchboard-bench"

need_cluster=0 need_single=0
for s in "${scenarios[@]}"; do
  if [[ "$s" == kafka-restart ]]; then need_single=1; else need_cluster=1; fi
done
if ((need_cluster)); then
  echo "faults: starting a 3-broker Kafka on $cluster_port.." >&2
  cluster_bootstrap="$(cluster deploy/kafka/start.sh --brokers 3 | sed -n 's/^KAFKA_BOOTSTRAP=//p')"
fi
if ((need_single)); then
  echo "faults: starting a one-broker Kafka on $single_port" >&2
  single_bootstrap="$(single deploy/kafka/start.sh --brokers 1 | sed -n 's/^KAFKA_BOOTSTRAP=//p')"
fi

common=(--out "$out" --rate "$rate" --duration "$duration" --freeze "$freeze" --kafka-scripts "$root/deploy/kafka")
results="$out/results.md"
status=0
: >"$results"
for s in "${scenarios[@]}"; do
  echo "faults: scenario $s" >&2
  if [[ "$s" == kafka-restart ]]; then
    run() { single "$bench" faults --scenarios "$s" --kafka "$single_bootstrap" --replication 1 "${common[@]}" "$@"; }
  else
    run() { cluster "$bench" faults --scenarios "$s" --kafka "$cluster_bootstrap" --replication 3 "${common[@]}" "$@"; }
  fi
  rm -f "$out/$s.md" "$out/$s.json"
  if ! run --markdown "$out/$s.md" --json "$out/$s.json" >/dev/null; then
    status=1
  fi
  if [[ -f "$out/$s.md" ]]; then
    # The table's header once, then each scenario's row.
    if [[ -s "$results" ]]; then sed -n '3p' "$out/$s.md" >>"$results"; else cat "$out/$s.md" >>"$results"; fi
  else
    echo "| $s | did not run to the end: see its log above | | | | | | | | | | | FAIL |" >>"$results"
  fi
  # Each scenario ends with its Kafka whole again.
  if [[ "$s" == broker-kill ]]; then cluster deploy/kafka/broker.sh start 2 >/dev/null 2>&1 || true; fi
  if [[ "$s" == kafka-restart ]]; then single deploy/kafka/broker.sh start 1 >/dev/null 2>&1 || true; fi
done
cat "$results"
echo "faults: reports and logs in $out" >&2
((status == 0)) && echo "faults: all scenarios passed" >&2 || echo "faults: some scenarios FAILED" >&2
exit "$status"
