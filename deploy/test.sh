#!/usr/bin/env bash
# Runs Switchboard's whole test suite against a real Apache Kafka:
#   1. starts the local Kafka (deploy/kafka/start.sh; fetched from Maven Central on first use),
#   2. runs every Rust test, including those marked #[ignore] because they need real Kafka,
#   3. runs the interop checks (Python grpcio, Go grpc-go and grpcurl clients),
#   4. runs the operations checks (a real Prometheus scraping both binaries, alert
#      rules and their unit tests, dashboards, Kubernetes and compose validation),
#   5. runs the quick fault scenarios (benches/faults/run.sh --quick: a node killed,
#      a worker killed, a worker frozen past its session, a Kafka broker killed,
#      Kafka restarted, on Kafkas of their own),
#   6. stops Kafka again if this script started it.
# Extra arguments go to `cargo test`, e.g. `deploy/test.sh -p switchboard-workers`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pid_file=deploy/kafka/data/kafka.pid
started_here=1
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  started_here=0
fi
stop_kafka() {
  if [[ "$started_here" == 1 ]]; then
    echo "test: stopping Kafka" >&2
    deploy/kafka/stop.sh || true
  fi
}
trap stop_kafka EXIT

echo "test: starting Apache Kafka" >&2
eval "$(deploy/kafka/start.sh | grep '^KAFKA_BOOTSTRAP=')"
export SWITCHBOARD_TEST_KAFKA="$KAFKA_BOOTSTRAP"
echo "test: Kafka at $SWITCHBOARD_TEST_KAFKA" >&2

echo "test: cargo test (all tiers)" >&2
cargo test --workspace --no-fail-fast "$@" -- --include-ignored

if [[ -x interop/run.sh && $# -eq 0 ]]; then
  echo "test: interop checks (Python grpcio, Go grpc-go, grpcurl)" >&2
  interop/run.sh
fi
if [[ -x deploy/ops/check.sh && $# -eq 0 ]]; then
  echo "test: operations checks (Prometheus scrape, alerts, dashboards, manifests)" >&2
  cargo build --bins
  deploy/ops/check.sh
fi
if [[ -x benches/faults/run.sh && $# -eq 0 ]]; then
  echo "test: fault scenarios, quick (their own Kafkas on ports 19092-19097 and 19192)" >&2
  benches/faults/run.sh --quick
fi
echo "test: all green" >&2
