#!/usr/bin/env bash
# Interop check with grpcurl, through server reflection only (no .proto files given).
#   interop/grpcurl.sh [HOST:PORT]     # or SWITCHBOARD_ADDR; default 127.0.0.1:50051
# Prints one line per check and a last line `N passed, M failed`; exits 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ADDR="${1:-${SWITCHBOARD_ADDR:-127.0.0.1:50051}}"
GRPCURL="$("$HERE/install-grpcurl.sh")"

passed=0
failed=0
out=""
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; printf '%s\n' "$out" | sed 's/^/     | /' | head -n 30; }

# grpcurl with bounded connect/call times, plus an outer timeout. Sets $out and $rc.
g() {
  rc=0
  out="$(timeout 30 "$GRPCURL" -plaintext -connect-timeout 5 -max-time 15 "$@" 2>&1)" || rc=$?
}

echo "target $ADDR ($("$GRPCURL" -version 2>&1))"
run_id="$(date +%s)-$$"

# 1. list: the services a user would discover.
g "$ADDR" list
if [[ $rc -eq 0 ]] && grep -qx 'switchboard.v1.Ingest' <<<"$out" && grep -qx 'grpc.health.v1.Health' <<<"$out"; then
  ok "list shows switchboard.v1.Ingest and grpc.health.v1.Health"
else
  fail "list (rc=$rc)"
fi

# 2. describe the canonical envelope.
g "$ADDR" describe switchboard.v1.Envelope
if [[ $rc -eq 0 ]] && grep -q 'switchboard.v1.Envelope is a message' <<<"$out" \
   && grep -q 'string tenant_id = 2;' <<<"$out" && grep -q 'oneof content' <<<"$out"; then
  ok "describe switchboard.v1.Envelope"
else
  fail "describe switchboard.v1.Envelope (rc=$rc)"
fi

# 3. Publish with -d JSON (proto3 JSON names, enums by name). -emit-defaults
#    shows partition and offset even when they are 0 (proto3 JSON omits zeros).
g -emit-defaults -d "{\"envelope\":{\"tenantId\":\"interop-grpcurl\",\"channel\":\"WEBCHAT\",\"direction\":\"INBOUND\",\"conversationId\":\"$run_id\",\"text\":{\"body\":\"hello from grpcurl\"}}}" \
  "$ADDR" switchboard.v1.Ingest/Publish
if [[ $rc -eq 0 ]] && grep -Eq '"messageId": "[0-9a-f-]{36}"' <<<"$out" && grep -q '"partition"' <<<"$out" \
   && grep -q '"offset"' <<<"$out"; then
  ok "Publish with -d JSON returns a messageId, partition and offset"
else
  fail "Publish with -d JSON (rc=$rc)"
fi

# 4. Health.
g "$ADDR" grpc.health.v1.Health/Check
if [[ $rc -eq 0 ]] && grep -q '"status": "SERVING"' <<<"$out"; then
  ok "grpc.health.v1.Health/Check is SERVING"
else
  fail "grpc.health.v1.Health/Check (rc=$rc)"
fi

# 5. Invalid Publish (no tenantId): InvalidArgument, grpcurl exits 64 + code = 67.
#    Reflection serves google.rpc, so grpcurl decodes the BadRequest detail
#    itself and prints the field violation.
g -d "{\"envelope\":{\"channel\":\"WEBCHAT\",\"direction\":\"INBOUND\",\"conversationId\":\"$run_id\",\"text\":{\"body\":\"no tenant\"}}}" \
  "$ADDR" switchboard.v1.Ingest/Publish
if [[ $rc -eq 67 ]] && grep -q 'Code: InvalidArgument' <<<"$out" \
   && grep -q 'type.googleapis.com/google.rpc.BadRequest' <<<"$out" \
   && grep -q '"field": "envelope.tenant_id"' <<<"$out"; then
  ok "Publish without tenantId -> InvalidArgument with a decoded BadRequest(envelope.tenant_id)"
else
  fail "invalid Publish (rc=$rc): $out"
fi

# 6. PublishBatch with -d JSON: one result per envelope, in order; the envelope
#    without content fails alone with its field path, and its conversation's
#    later envelope is ABORTED (code 10) naming it.
batch_env() { echo "{\"tenantId\":\"interop-grpcurl\",\"channel\":\"WEBCHAT\",\"direction\":\"INBOUND\",\"conversationId\":\"$run_id-$1\"$2}"; }
g -emit-defaults -d "{\"envelopes\":[$(batch_env a ',"text":{"body":"a0"}'),$(batch_env a ''),$(batch_env b ',"text":{"body":"b0"}'),$(batch_env a ',"text":{"body":"a2"}')]}" \
  "$ADDR" switchboard.v1.Ingest/PublishBatch
if [[ $rc -eq 0 ]] && [[ "$(grep -c '"messageId": "[0-9a-f-]\{36\}"' <<<"$out")" == 2 ]] \
   && grep -q '"envelopes\[1\].content"' <<<"$out" && grep -q '"code": 10' <<<"$out" \
   && grep -q '"envelopes\[1\]"' <<<"$out" && grep -q '"failedCount": 2' <<<"$out"; then
  ok "PublishBatch with -d JSON: 2 published, INVALID_ARGUMENT envelopes[1].content, then ABORTED"
else
  fail "PublishBatch with -d JSON (rc=$rc)"
fi

# 5. A web-form subscription, then a broadcast to the topic's subscribers,
#    followed until the workers completed it (README: Subscriptions and broadcasts).
g -d '{"envelope":{"tenantId":"demo","channel":"WHATSAPP","direction":"INBOUND",
  "conversationId":"interop-sub-'"$run_id"'","customer":{"id":"1650555'"${run_id: -4}"'"},
  "subscription":{"topic":"news","subscribe":true,"detail":"web form"}}}' \
  "$ADDR" switchboard.v1.Ingest/Publish
if [[ $rc -eq 0 ]] && grep -q '"messageId"' <<<"$out"; then
  ok "Publish a subscription change (web form)"
else
  fail "Publish a subscription change (rc=$rc)"
fi
# States are written behind (`state_flush_interval`, 1 s by default), and a
# broadcast reads its audience when it starts: until the subscription's
# state is on the state topic, a broadcast targets nobody. So a broadcast
# is started again, under a new id, until one targets the subscriber (at
# most 10 tries, about 30 s).
started=0
completed=0
for try in $(seq 1 10); do
  sleep 2
  id="interop-$run_id-$try"
  g -d '{"broadcast":{"broadcastId":"'"$id"'","tenantId":"demo",
    "template":{"name":"spring_sale","language":"en_US","parameters":["20%"]},
    "topic":"news","channels":["WHATSAPP"]}}' \
    "$ADDR" switchboard.v1.Broadcasts/Start
  # Every try's Start must succeed: one that fails is reported as such,
  # with its own answer, even after earlier tries started.
  if ! { [[ $rc -eq 0 ]] && grep -q "\"broadcastId\": \"$id\"" <<<"$out"; }; then
    started=0
    break
  fi
  started=1
  completed=0
  for _ in $(seq 1 40); do
    g -d '{"tenantId":"demo","broadcastId":"'"$id"'"}' "$ADDR" switchboard.v1.Broadcasts/Get
    if [[ $rc -eq 0 ]] && grep -q '"status": "COMPLETED"' <<<"$out"; then
      completed=1
      break
    fi
    sleep 0.5
  done
  [[ $completed -eq 1 ]] && grep -q '"targeted": "[1-9]' <<<"$out" && break
done
if [[ $started -eq 1 ]]; then
  ok "Broadcasts/Start to the subscribers of news"
else
  fail "Broadcasts/Start (rc=$rc)"
fi
if [[ $completed -eq 1 ]] && grep -q '"targeted": "[1-9]' <<<"$out"; then
  ok "Broadcasts/Get: COMPLETED, with its subscribers targeted"
else
  fail "Broadcasts/Get (rc=$rc)"
fi
g -d '{"tenantId":"demo","broadcastId":"no-such-broadcast"}' "$ADDR" switchboard.v1.Broadcasts/Get
if [[ $rc -ne 0 ]] && grep -q 'NotFound' <<<"$out"; then
  ok "Broadcasts/Get of an unknown broadcast: NOT_FOUND"
else
  fail "Broadcasts/Get of an unknown broadcast (rc=$rc)"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
