#!/usr/bin/env python3
"""Interop check: a plain grpcio client against a running Switchboard ingestion node.

Stubs are generated at run time from the repo's proto/ with grpcio-tools, so
this checks the .proto contract as a Python user would consume it.

    python client.py [HOST:PORT]     # or SWITCHBOARD_ADDR; default 127.0.0.1:50051

Env: SWITCHBOARD_PROTO_DIR (default: <repo>/proto), SWITCHBOARD_GEN_DIR (keep the
generated stubs there instead of a temporary directory).

Prints one line per check and a last line `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

RPC_TIMEOUT = 10.0  # seconds, for every call
REPO = Path(__file__).resolve().parents[2]


def generate_stubs(proto_dir: Path, out_dir: Path) -> None:
    """`python -m grpc_tools.protoc -I proto --python_out --grpc_python_out` for every .proto."""
    protos = sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    subprocess.run(cmd, check=True, timeout=120)
    sys.path.insert(0, str(out_dir))


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then we go on
            self.failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            if os.environ.get("INTEROP_VERBOSE"):
                traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok   {name}", flush=True)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    """Field paths from the google.rpc.BadRequest in the grpc-status-details-bin trailer."""
    status = rpc_status.from_call(err)
    check(status is not None, "no grpc-status-details-bin trailer")
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields.extend(v.field for v in br.field_violations)
    check(bool(fields), f"no google.rpc.BadRequest field violations in details: {status.details}")
    return fields


def main() -> int:
    addr = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("SWITCHBOARD_ADDR") or "127.0.0.1:50051"
    proto_dir = Path(os.environ.get("SWITCHBOARD_PROTO_DIR") or REPO / "proto").resolve()

    keep = os.environ.get("SWITCHBOARD_GEN_DIR")
    gen_dir = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="switchboard-pygen-"))
    try:
        if keep:
            shutil.rmtree(gen_dir, ignore_errors=True)  # no stale stubs
        try:
            generate_stubs(proto_dir, gen_dir)
        except Exception as exc:  # noqa: BLE001
            print(f"FAIL generate stubs from {proto_dir}: {exc}", flush=True)
            print("0 passed, 1 failed", flush=True)
            return 1
        return run_checks(addr)
    finally:
        if not keep:
            shutil.rmtree(gen_dir, ignore_errors=True)


def run_checks(addr: str) -> int:
    pb = importlib.import_module("switchboard.v1.envelope_pb2")
    ingest = importlib.import_module("switchboard.v1.ingest_pb2")
    ingest_grpc = importlib.import_module("switchboard.v1.ingest_pb2_grpc")

    print(f"target {addr}", flush=True)
    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
    except grpc.FutureTimeoutError:
        print(f"FAIL connect to {addr}: not ready within {RPC_TIMEOUT:.0f}s", flush=True)
        print("0 passed, 1 failed", flush=True)
        return 1
    stub = ingest_grpc.IngestStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    run_id = uuid.uuid4().hex[:8]  # keeps conversations of separate runs apart
    checks = Checks()

    def envelope(conversation: str, body: str, tenant: str = "interop-py"):
        return pb.Envelope(
            tenant_id=tenant,
            channel=pb.WEBCHAT,
            direction=pb.INBOUND,
            conversation_id=f"{run_id}-{conversation}",
            text=pb.Text(body=body),
        )

    def health_serving():
        for service in ("", "switchboard.v1.Ingest"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
            check(resp.status == health_pb2.HealthCheckResponse.SERVING,
                  f"health({service!r}) = {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}")

    def publish_valid():
        resp = stub.Publish(ingest.PublishRequest(envelope=envelope("unary", "hello")), timeout=RPC_TIMEOUT)
        check(resp.message_id != "", "empty message_id")
        check(uuid.UUID(resp.message_id).version == 7, f"message_id {resp.message_id} is not a UUIDv7")
        check(resp.partition >= 0, f"partition {resp.partition}")
        check(resp.offset >= 0, f"offset {resp.offset}")
        check(not resp.HasField("error"), f"unexpected error {resp.error}")

    def publish_missing_tenant():
        try:
            stub.Publish(ingest.PublishRequest(envelope=envelope("unary", "no tenant", tenant="")),
                         timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            check(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {err.code()}: {err.details()}")
            fields = bad_request_fields(err)
            check("envelope.tenant_id" in fields, f"BadRequest fields {fields}")
        else:
            raise AssertionError("Publish without tenant_id succeeded")

    def publish_stream():
        conversations = [f"stream-{i}" for i in range(4)]
        requests = [
            ingest.PublishRequest(envelope=envelope(conversations[n % 4], f"msg {n}"), sequence=n + 1)
            for n in range(20)
        ]
        bad_seq = 1000
        requests.insert(10, ingest.PublishRequest(envelope=envelope("stream-x", "no tenant", tenant=""),
                                                  sequence=bad_seq))
        responses = list(stub.PublishStream(iter(requests), timeout=RPC_TIMEOUT))

        by_seq = {}
        for r in responses:
            check(r.sequence not in by_seq, f"sequence {r.sequence} answered twice")
            by_seq[r.sequence] = r
        sent = {r.sequence for r in requests}
        check(set(by_seq) == sent, f"unanswered {sorted(sent - set(by_seq))}, unexpected {sorted(set(by_seq) - sent)}")
        check(len(responses) == 21, f"{len(responses)} responses for 21 requests")

        good = [r for r in responses if not r.HasField("error")]
        errors = [r for r in responses if r.HasField("error")]
        check(len(good) == 20, f"{len(good)} good responses")
        check(len(errors) == 1, f"{len(errors)} in-band errors")
        err = errors[0]
        check(err.sequence == bad_seq, f"error on sequence {err.sequence}")
        check(err.error.code == code_pb2.INVALID_ARGUMENT, f"error code {err.error.code}")
        check("envelope.tenant_id" in err.error.fields, f"error fields {list(err.error.fields)}")
        for r in good:
            check(r.message_id != "" and r.partition >= 0 and r.offset >= 0, f"bad response {r}")

        # The Kafka key is tenant/channel/conversation: one partition per conversation,
        # offsets rising in the order the stream sent them.
        for conv in conversations:
            mine = [by_seq[q.sequence] for q in requests if q.envelope.conversation_id.endswith(conv)]
            check(len({r.partition for r in mine}) == 1, f"{conv} spread over partitions")
            offsets = [r.offset for r in mine]
            check(offsets == sorted(offsets) and len(set(offsets)) == len(offsets),
                  f"{conv} offsets out of order: {offsets}")

    def webhook_webchat():
        payload = json_format.MessageToJson(envelope("webhook", "via webhook")).encode()
        json.loads(payload)  # proto3 JSON, camelCase names: {"tenantId": ..., "text": {"body": ...}}
        resp = stub.IngestWebhook(
            ingest.WebhookRequest(tenant_id="interop-py", channel=pb.WEBCHAT,
                                  payload=payload, content_type="application/json"),
            timeout=RPC_TIMEOUT,
        )
        check(len(resp.results) == 1, f"{len(resp.results)} results")
        r = resp.results[0]
        check(not r.HasField("error"), f"error {r.error}")
        check(r.message_id != "" and r.partition >= 0 and r.offset >= 0, f"bad result {r}")

    def publish_batch():
        bad = envelope("batch-a", "a1: no content")
        bad.ClearField("text")
        envelopes = [
            envelope("batch-a", "a0"),
            envelope("batch-b", "b0"),
            bad,
            envelope("batch-b", "b1"),
            envelope("batch-a", "a2"),
            envelope("batch-b", "b2"),
        ]
        resp = stub.PublishBatch(ingest.PublishBatchRequest(envelopes=envelopes), timeout=RPC_TIMEOUT)
        codes = [r.error.code if r.HasField("error") else code_pb2.OK for r in resp.results]
        check(codes == [code_pb2.OK, code_pb2.OK, code_pb2.INVALID_ARGUMENT, code_pb2.OK, code_pb2.ABORTED,
                        code_pb2.OK], f"codes {codes}")
        check([r.sequence for r in resp.results] == list(range(6)), "sequences are the indexes")
        check(resp.failed_count == 2, f"failed_count {resp.failed_count}")
        check(list(resp.results[2].error.fields) == ["envelopes[2].content"],
              f"bad envelope's fields {list(resp.results[2].error.fields)}")
        check(list(resp.results[4].error.fields) == ["envelopes[2]"],
              f"aborted envelope's fields {list(resp.results[4].error.fields)}")
        b = [resp.results[i] for i in (1, 3, 5)]
        check(len({r.partition for r in b}) == 1, "batch-b spread over partitions")
        check([r.offset for r in b] == sorted({r.offset for r in b}), f"batch-b out of order: {b}")
        check(uuid.UUID(resp.results[0].message_id).version == 7, "a UUIDv7 message_id")

    def publish_batch_over_limit():
        envelopes = [envelope("batch-big", "x") for _ in range(501)]
        try:
            stub.PublishBatch(ingest.PublishBatchRequest(envelopes=envelopes), timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            check(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {err.code()}: {err.details()}")
            check("max_batch_messages" in err.details(), err.details())
            check("envelopes" in bad_request_fields(err), "BadRequest names envelopes")
        else:
            raise AssertionError("a batch of 501 envelopes was accepted")

    checks.run("health Check is SERVING", health_serving)
    checks.run("Publish valid text envelope", publish_valid)
    checks.run("Publish without tenant_id -> INVALID_ARGUMENT + BadRequest(envelope.tenant_id)",
               publish_missing_tenant)
    checks.run("PublishStream 20 good + 1 invalid, all sequences answered, per-conversation order",
               publish_stream)
    checks.run("IngestWebhook WEBCHAT with a proto3 JSON envelope", webhook_webchat)
    checks.run("PublishBatch: results in order, a bad envelope fails alone, its conversation's later ones ABORTED",
               publish_batch)
    checks.run("PublishBatch of 501 -> INVALID_ARGUMENT naming max_batch_messages", publish_batch_over_limit)
    channel.close()

    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
