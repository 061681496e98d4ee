#!/usr/bin/env bash
# shellcheck disable=SC2016  # the single-quoted bash -c scripts below take their values as "$1"..., on purpose
# Checks Switchboard's deployment files, with real tools and a real scrape:
#   Prometheus  promtool check config / check rules / test rules (alerts_test.yml);
#               alert expressions name only metrics the code exports; runbook links resolve
#   Grafana     dashboards are valid and query only exported metrics; provisioning fits compose
#   live        switchboard-broker + switchboard-workers on random 127.0.0.1 ports against the
#               Kafka at $SWITCHBOARD_TEST_KAFKA, driven by switchboard-bench, scraped by a real
#               Prometheus (1 s) and asserted through its HTTP API; alert rules evaluated live;
#               every dashboard/alert expression run; promtool check metrics on both /metrics;
#               the deploy/k8s ConfigMaps and Secret loaded by the real binaries
#   Kubernetes  kubeconform (offline schemas), the KEDA ScaledObject schema, cross-checks
#   compose     the compose-spec JSON schema, plus wiring checks
#   Dockerfile  BuildKit's parser and lint rules; stages, non-root user, runtime libraries
#               against `ldd` of the built binaries (Docker itself is not needed)
# Tools come from package registries into deploy/ops/.tools (tools.sh) on first use.
# A tool that cannot be obtained makes its checks FAIL; nothing is skipped.
#
#   SWITCHBOARD_TEST_KAFKA=127.0.0.1:9092 deploy/ops/check.sh
#
# Env: SWITCHBOARD_TEST_KAFKA (required for the live checks), SWITCHBOARD_BIN_DIR (built
# binaries; default target/debug, built with cargo when missing there),
# SWITCHBOARD_OPS_TOOLS (default deploy/ops/.tools), SWITCHBOARD_OPS_VERBOSE=1 (print every
# check's output), SWITCHBOARD_OPS_KEEP=1 (keep the work dir with logs).
# Prints one line per check and ends with "N passed, M failed"; exits non-zero on any failure.
set -uo pipefail

OPS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$OPS/../.." && pwd)"
TOOLS="${SWITCHBOARD_OPS_TOOLS:-$OPS/.tools}"
export SWITCHBOARD_OPS_TOOLS="$TOOLS"
PROM_DIR="$ROOT/deploy/prometheus"
VERBOSE="${SWITCHBOARD_OPS_VERBOSE:-0}"
cd "$ROOT" || exit 1

passed=0
failed=0
warnings=0
failures=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-ops.XXXXXX")"

cleanup() {
  local pids
  pids="$(jobs -pr)"
  # shellcheck disable=SC2086
  [[ -z "$pids" ]] || kill $pids 2>/dev/null
  wait 2>/dev/null
  if [[ "${SWITCHBOARD_OPS_KEEP:-0}" == 1 ]]; then
    echo "ops: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[ops %3ds] %s\n' "$SECONDS" "$*"; }
ok() { passed=$((passed + 1)); log "ok   $1"; }
fail() {
  failed=$((failed + 1))
  failures+=("$1")
  log "FAIL $1"
  if [[ -n "${2:-}" && -f "$2" ]]; then tail -n 60 "$2" | sed 's/^/       /'; fi
}
warn() { warnings=$((warnings + 1)); log "WARN $*"; }

# run_check NAME LIMIT_SECONDS CMD...: runs CMD with a time limit; its output goes to a
# log, shown on failure (or always with SWITCHBOARD_OPS_VERBOSE=1). "WARN: " lines count
# as warnings and are always shown.
n=0
run_check() {
  local name="$1" limit="$2" out rc
  shift 2
  n=$((n + 1))
  out="$WORK/check-$n.log"
  timeout --kill-after=10 "$limit" "$@" >"$out" 2>&1
  rc=$?
  [[ $rc == 124 || $rc == 137 ]] && echo "timed out after ${limit}s" >>"$out"
  if [[ $rc == 0 ]]; then
    ok "$name"
    [[ "$VERBOSE" == 1 ]] && sed 's/^/       /' "$out"
    while IFS= read -r line; do warn "${line#WARN: }"; done < <(grep '^WARN: ' "$out")
  else
    fail "$name (exit $rc)" "$out"
  fi
}

# need TOOL CHECK_NAME: true when TOOL was obtained; else fails CHECK_NAME, saying why.
need() {
  local tool="$1" name="$2"
  if [[ "$(cat "$WORK/tool-$tool.rc" 2>/dev/null)" == 0 ]]; then return 0; fi
  echo "needs the tool '$tool', which could not be obtained (deploy/ops/tools.sh $tool):" >"$WORK/need-$tool.log"
  cat "$WORK/tool-$tool.log" >>"$WORK/need-$tool.log" 2>/dev/null
  fail "$name" "$WORK/need-$tool.log"
  return 1
}

# ------------------------------------------------------------------ tools (in parallel)
log "tools: fetching what is missing into ${TOOLS#"$ROOT"/}"
TOOL_NAMES=(prometheus kubeconform venv k8s-schemas keda compose-schema dockerfile-lint)
# Each fetch runs as a background job bounded by timeout (which passes a TERM
# from the EXIT trap on to tools.sh).
declare -A TOOL_PIDS
for tool in "${TOOL_NAMES[@]}"; do
  timeout --kill-after=10 1200 "$OPS/tools.sh" "$tool" >"$WORK/tool-$tool.log" 2>&1 &
  TOOL_PIDS[$tool]=$!
done
for tool in "${TOOL_NAMES[@]}"; do
  wait "${TOOL_PIDS[$tool]}"
  echo $? >"$WORK/tool-$tool.rc"
done
for tool in "${TOOL_NAMES[@]}"; do
  if [[ "$(cat "$WORK/tool-$tool.rc")" == 0 ]]; then
    log "tools: $tool ready"
  else
    log "tools: $tool could NOT be obtained (its checks fail):"
    sed 's/^/       /' "$WORK/tool-$tool.log" | tail -n 20
  fi
done
PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
PROMETHEUS="$TOOLS/prometheus/usr/bin/prometheus"
PY="$TOOLS/venv/bin/python"
OPSCHECK="$OPS/lib/opscheck.py"

# ------------------------------------------------------------------ Prometheus
if need prometheus "promtool check config prometheus.yml"; then
  run_check "promtool check config prometheus.yml" 60 "$PROMTOOL" check config "$PROM_DIR/prometheus.yml"
fi
if need prometheus "promtool check config prometheus.compose.yml"; then
  run_check "promtool check config prometheus.compose.yml" 60 "$PROMTOOL" check config "$PROM_DIR/prometheus.compose.yml"
fi
if need prometheus "promtool check rules alerts.yml"; then
  run_check "promtool check rules alerts.yml" 60 "$PROMTOOL" check rules "$PROM_DIR/alerts.yml"
fi
if need prometheus "promtool test rules alerts_test.yml"; then
  run_check "promtool test rules alerts_test.yml (alerts fire on synthetic series)" 120 \
    bash -c 'cd "$1" && "$2" test rules alerts_test.yml' _ "$PROM_DIR" "$PROMTOOL"
fi
if need venv "alerts.yml: exported metric names, annotations, runbook links"; then
  run_check "alerts.yml: exported metric names, annotations, runbook links" 60 "$PY" "$OPSCHECK" alerts
fi

# ------------------------------------------------------------------ Grafana
if need venv "Grafana dashboards: valid, exported metric names, provisioning"; then
  run_check "Grafana dashboards: valid, exported metric names, provisioning" 60 "$PY" "$OPSCHECK" dashboards
fi

# ------------------------------------------------------------------ Kubernetes
mapfile -t K8S_FILES < <(find "$ROOT/deploy/k8s" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
if [[ -f "$TOOLS/k8s-schemas/.ok" ]]; then
  read -r -a KUBE_VERSIONS <<<"$(cut -d' ' -f2- "$TOOLS/k8s-schemas/.ok")"
else
  KUBE_VERSIONS=(any)
fi
for kv in "${KUBE_VERSIONS[@]}"; do
  name="kubeconform -strict (Kubernetes $kv, offline schemas; ScaledObject checked separately)"
  if need kubeconform "$name" && need k8s-schemas "$name"; then
    run_check "$name" 120 "$TOOLS/bin/kubeconform" -strict -summary -kubernetes-version "$kv" \
      -skip ScaledObject \
      -schema-location "$TOOLS/k8s-schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      "${K8S_FILES[@]}"
  fi
done
if need keda "KEDA ScaledObject schema (@kubernetes-models/keda)" && need venv "KEDA ScaledObject schema (@kubernetes-models/keda)"; then
  run_check "KEDA ScaledObject schema (@kubernetes-models/keda)" 60 bash -c \
    '"$1" "$2" k8s-scaledobjects | node "$3" "$4"' _ "$PY" "$OPSCHECK" "$OPS/lib/keda_validate.mjs" "$TOOLS/keda/node_modules"
fi
if need venv "Kubernetes cross-checks (probes, ports, mounts, KEDA vs partitions, PDBs)"; then
  run_check "Kubernetes cross-checks (probes, ports, mounts, KEDA vs partitions, PDBs)" 60 "$PY" "$OPSCHECK" k8s
fi

# ------------------------------------------------------------------ compose, Dockerfile
if need compose-schema "compose.yaml: compose-spec schema and wiring" && need venv "compose.yaml: compose-spec schema and wiring"; then
  run_check "compose.yaml: compose-spec schema and wiring" 60 "$PY" "$OPSCHECK" compose "$TOOLS/compose-spec/compose.schema.json"
fi

if need dockerfile-lint "Dockerfile: BuildKit parser, no lint findings"; then
  run_check "Dockerfile: BuildKit parser, no lint findings" 60 "$TOOLS/bin/dockerfile-lint" "$ROOT/deploy/Dockerfile"
fi

# ------------------------------------------------------------------ binaries
BIN_DIR="${SWITCHBOARD_BIN_DIR:-$ROOT/target/debug}"
BINS=(switchboard-broker switchboard-workers switchboard-bench switchboard-desk)
missing=()
for b in "${BINS[@]}"; do [[ -x "$BIN_DIR/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -gt 0 && -z "${SWITCHBOARD_BIN_DIR:-}" ]]; then
  log "binaries: ${missing[*]} missing in target/debug; building them (cargo build)"
  run_check "cargo build ${BINS[*]}" 2400 cargo build --bin switchboard-broker --bin switchboard-workers --bin switchboard-bench --bin switchboard-desk
fi
bins_ok=1
for b in "${BINS[@]}"; do [[ -x "$BIN_DIR/$b" ]] || bins_ok=0; done
if [[ $bins_ok == 0 ]]; then
  echo "no ${BINS[*]} in $BIN_DIR (set SWITCHBOARD_BIN_DIR, or run cargo build)" >"$WORK/bins.log"
fi

if [[ $bins_ok == 1 ]] && need venv "Dockerfile: stages, non-root user, runtime libraries (ldd)"; then
  run_check "Dockerfile: stages, non-root user, runtime libraries (ldd)" 120 "$PY" "$OPSCHECK" dockerfile "$BIN_DIR"
elif [[ $bins_ok == 0 ]]; then
  fail "Dockerfile: runtime libraries (ldd) need the built binaries" "$WORK/bins.log"
fi

# ------------------------------------------------------------------ live
live_name="live scrape test (real Kafka, binaries, Prometheus)"
if [[ -z "${SWITCHBOARD_TEST_KAFKA:-}" ]]; then
  echo "SWITCHBOARD_TEST_KAFKA is not set: the live checks need a real Kafka (deploy/test.sh sets it; or run deploy/kafka/start.sh and set it to 127.0.0.1:9092)" >"$WORK/live.log"
  fail "$live_name" "$WORK/live.log"
elif ! timeout 5 bash -c 'h="${1%:*}"; p="${1##*:}"; exec 3<>"/dev/tcp/$h/$p"' _ "${SWITCHBOARD_TEST_KAFKA%%,*}" 2>/dev/null; then
  echo "nothing answers at SWITCHBOARD_TEST_KAFKA=$SWITCHBOARD_TEST_KAFKA (start it with deploy/kafka/start.sh)" >"$WORK/live.log"
  fail "$live_name" "$WORK/live.log"
elif [[ $bins_ok == 0 ]]; then
  fail "$live_name" "$WORK/bins.log"
elif need prometheus "$live_name" && need venv "$live_name"; then
  log "live: binaries from ${BIN_DIR#"$ROOT"/}, Kafka at $SWITCHBOARD_TEST_KAFKA"
  # live.py runs as a background job under timeout, so the EXIT trap's TERM
  # reaches it (it then stops every process it started); its output is
  # followed as it comes.
  run_id="$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')"
  timeout --kill-after=20 480 "$PY" "$OPS/lib/live.py" --bin-dir "$BIN_DIR" --kafka "$SWITCHBOARD_TEST_KAFKA" \
    --prometheus "$PROMETHEUS" --promtool "$PROMTOOL" --work "$WORK/live" --timeout 420 --run "$run_id" \
    >"$WORK/live.out" 2>&1 &
  live_pid=$!
  while IFS= read -r line; do
    case "$line" in
      "RESULT ok "*) ok "${line#RESULT ok }" ;;
      "RESULT fail "*) fail "${line#RESULT fail }" ;;
      "RESULT warn "*) warn "${line#RESULT warn }" ;;
      "WARN: "*) warn "${line#WARN: }" ;;
      "INFO: "*) [[ "$VERBOSE" == 1 || "$line" == *"gave up"* || "$line" == *"no data"* ]] && log "     ${line#INFO: }" ;;
      *) printf '       %s\n' "$line" ;;
    esac
  done < <(touch "$WORK/live.out"; tail -n +1 -f --pid="$live_pid" "$WORK/live.out")
  wait "$live_pid"
  live_rc=$?
  if [[ "$live_rc" != 0 && "$live_rc" != 1 ]]; then
    fail "$live_name ended abnormally (exit $live_rc)"
  fi
  # Best effort: drop the run's topics (ops-RUN.*) from a local Kafka of deploy/kafka.
  kafka_first="${SWITCHBOARD_TEST_KAFKA%%,*}"
  if [[ "${kafka_first%:*}" == 127.0.0.1 || "${kafka_first%:*}" == localhost ]] && [[ -d "$ROOT/deploy/kafka/lib" ]] \
    && KAFKA_PORT="${kafka_first##*:}" timeout 60 "$ROOT/deploy/kafka/topics.sh" delete "ops-$run_id\\..*" \
      >"$WORK/topics-delete.log" 2>&1; then
    log "live: deleted this run's topics (ops-$run_id.*)"
  else
    log "live: left this run's topics in Kafka (ops-$run_id.*): could not delete them here"
  fi
fi

# ------------------------------------------------------------------ summary
if [[ $failed -gt 0 ]]; then
  log "failed:"
  for f in "${failures[@]}"; do printf '       - %s\n' "$f"; done
fi
[[ $warnings -gt 0 ]] && log "$warnings warning(s) above (not failures)"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
