#!/usr/bin/env bash
# Measures routing with 1, 2 and 3 switchboard-workers processes on a
# 3-broker Kafka of its own (replication 3, min.insync.replicas 2), and
# prints the table of benches/README.md, "Scaling" (docs/capacity.md uses it).
#
# Usage: benches/scaling/run.sh [switchboard-bench scaling options]
#   e.g. benches/scaling/run.sh --workers 1,2,3,1 --messages 300000 \
#          --json benches/results/scaling.json --markdown benches/results/scaling.md
# Env:
#   SCALING_KAFKA_PORT  first port of the 3-broker cluster (default 19092; uses 6 ports)
#   SCALING_OUT         workers' logs and Kafka data (default target/scaling)
#   SCALING_TIMEOUT     the most the measurement may take, in seconds (default 1800)
# The cluster is started here, on its own ports and data folder (never the
# shared one on 9092), and stopped and deleted at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
case "${1:-}" in -h | --help) sed -n '2,14p' "$0"; exit 0 ;; esac

out="${SCALING_OUT:-$root/target/scaling}"
port="${SCALING_KAFKA_PORT:-19092}"
data_dir="$out/kafka-cluster"
mkdir -p "$out"

cluster() { KAFKA_PORT="$port" KAFKA_DATA_DIR="$data_dir" "$@"; }
cleanup() {
  echo "scaling: stopping and deleting the cluster" >&2
  cluster deploy/kafka/stop.sh --clean >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "scaling: building (release)" >&2
nice -n 10 cargo build --release -p switchboard-workers -p switchboard-benches --bins
echo "scaling: starting a 3-broker Kafka on $port.." >&2
bootstrap="$(cluster deploy/kafka/start.sh --brokers 3 | sed -n 's/^KAFKA_BOOTSTRAP=//p')"

timeout --kill-after=30 "${SCALING_TIMEOUT:-1800}" \
  target/release/switchboard-bench scaling --kafka "$bootstrap" --replication 3 \
  --kafka-data-dir "$data_dir" --out "$out" "$@"
