#!/usr/bin/env bash
# Fetch the Kafka broker + CLI jars from Maven Central into deploy/kafka/lib/.
# Idempotent: does nothing if lib/ is complete for the pinned version.
# Env: KAFKA_VERSION (default: the version pinned in pom.xml), FORCE_FETCH=1.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

POM="$KAFKA_DIR/pom.xml"
PINNED="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
VERSION="${KAFKA_VERSION:-$PINNED}"
MARKER="$LIB_DIR/.complete"
# Stamp = version + hash of pom.xml, so editing the POM triggers a re-fetch.
STAMP="$VERSION $(sha256sum "$POM" | cut -c1-16)"

lib_complete() {
  # Marker: line 1 = stamp, then one jar name per line.
  [[ -f "$MARKER" && "$(head -n1 "$MARKER")" == "$STAMP" ]] || return 1
  local j
  while read -r j; do
    [[ -z "$j" || -s "$LIB_DIR/$j" ]] || return 1
  done < <(sed '1d' "$MARKER")
  [[ -s "$LIB_DIR/kafka_2.13-$VERSION.jar" && -s "$LIB_DIR/kafka-tools-$VERSION.jar" ]]
}

if [[ "${FORCE_FETCH:-0}" != 1 ]] && lib_complete; then
  log "lib/ is complete (Kafka $VERSION, $(find "$LIB_DIR" -maxdepth 1 -name "*.jar" | wc -l) jars)"
  exit 0
fi

command -v mvn >/dev/null || { log "mvn not found (apt-get install maven)"; exit 1; }
require_java

log "fetching Kafka $VERSION jars from Maven Central into $LIB_DIR ..."
start=$SECONDS
tmp="$KAFKA_DIR/lib.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
# Jars go to a temp dir first so an interrupted fetch never leaves a
# half-filled lib/ that looks complete. Maven's output is shown only on failure.
mkdir -p "$tmp"
if ! mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$VERSION" \
  dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp/mvn.log" 2>&1; then
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/mvn.log" | grep -v '^\s*$' | tail -n 40 >&2
  log "maven fetch failed"
  exit 1
fi
rm -f "$tmp/mvn.log"
n=$(find "$tmp" -maxdepth 1 -name "*.jar" | wc -l)
if [[ ! -s "$tmp/kafka_2.13-$VERSION.jar" || "$n" -lt 20 ]]; then
  log "maven fetch produced an incomplete set ($n jars)"
  exit 1
fi
{ echo "$STAMP"; (cd "$tmp" && ls -1 -- *.jar); } >"$tmp/.complete"
rm -rf "$LIB_DIR"
mv "$tmp" "$LIB_DIR"
trap - EXIT
log "fetched $n jars for Kafka $VERSION in $((SECONDS - start))s"
