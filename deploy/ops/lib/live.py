#!/usr/bin/env python3
"""Live checks (run by deploy/ops/check.sh): real binaries, real Kafka, real Prometheus.

Phase 1, the scrape test: starts switchboard-broker and switchboard-workers on
random 127.0.0.1 ports against Kafka with random topic names, publishes with
switchboard-bench (unary and stream) plus one retried channel message, runs a
real Prometheus (1 s scrapes, deploy/prometheus/alerts.yml loaded) and asserts
through its HTTP API that the key series exist with sane values, that every
alert rule evaluates cleanly and none fires, and that every dashboard and alert
expression runs. Lints both /metrics outputs with `promtool check metrics`.

Phase 2: the Kubernetes ConfigMaps and Secret (deploy/k8s) load in the real
binaries: the broker serves gRPC health for both probe services and enforces
the tenants file; the workers load the rules and route to an agent queue.

Phase 3: the SWITCHBOARD_* variables of deploy/compose.yaml work in the real
binaries (addresses moved to free 127.0.0.1 ports).

Output: one "RESULT ok|fail|warn NAME[: detail]" line per check, plus INFO and
WARN lines. Every process started here is stopped on exit. Needs grpcio (the
deploy/ops venv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import opscheck  # noqa: E402

RESULTS = {"ok": 0, "fail": 0, "warn": 0}
DEADLINE = 0.0


def result(status: str, name: str, detail: str = "") -> None:
    RESULTS[status] += 1
    print(f"RESULT {status} {name}{': ' + detail if detail else ''}", flush=True)


def info(msg: str) -> None:
    print(f"INFO: {msg}", flush=True)


def remaining(cap: float) -> float:
    return max(0.5, min(cap, DEADLINE - time.monotonic()))


def wait_until(what: str, cap: float, probe, interval: float = 0.5):
    """Calls probe() until it returns a truthy value or the time is up (returns the last value)."""
    end = time.monotonic() + remaining(cap)
    value, error = None, None
    while True:
        try:
            value, error = probe(), None
        except Exception as e:  # noqa: BLE001 - a probe failing is "not yet"
            value, error = None, e
        if value:
            return value
        if time.monotonic() >= end:
            info(f"gave up waiting for {what} after {cap:.0f}s" + (f" (last error: {error})" if error else ""))
            return value
        time.sleep(interval)


# ------------------------------------------------------------------ processes
class Procs:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        full_env = {**os.environ, "RUST_LOG": "info", "NO_COLOR": "1", **(env or {})}
        # Variables of ours that would override the configs under test.
        for k in list(full_env):
            if k.startswith(("SWITCHBOARD_BROKER_", "SWITCHBOARD_WORKERS_")) and k not in (env or {}):
                del full_env[k]
        if "SWITCHBOARD_KAFKA_BOOTSTRAP" not in (env or {}):
            full_env.pop("SWITCHBOARD_KAFKA_BOOTSTRAP", None)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=full_env, start_new_session=True)
        self.running[name] = p
        info(f"started {name} (pid {p.pid}): {' '.join(argv)}")
        return p

    def alive(self, name: str) -> bool:
        return self.running[name].poll() is None

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join("      " + line for line in text[-lines:])

    def stop(self, name: str, grace: float = 15.0) -> int | None:
        p = self.running.pop(name, None)
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return p.poll()
        try:
            return p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            info(f"{name} ignored SIGTERM for {grace:.0f}s; killing it")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return p.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


# ------------------------------------------------------------------ gRPC without generated code
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _parse(data: bytes) -> dict[int, object]:
    fields, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            fields[num], i = _read_varint(data, i)
        elif wire == 2:
            length, i = _read_varint(data, i)
            fields[num], i = data[i:i + length], i + length
        elif wire == 1:
            fields[num], i = data[i:i + 8], i + 8
        elif wire == 5:
            fields[num], i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def envelope(tenant: str, conversation: str, text: str, channel_message_id: str = "") -> bytes:
    """A switchboard.v1.PublishRequest with a WEBCHAT inbound text Envelope (proto/switchboard/v1)."""
    env = (_field(2, tenant) + _field(3, 5) + _field(4, 1) + _field(5, conversation)
           + (_field(6, channel_message_id) if channel_message_id else b"") + _field(20, _field(1, text)))
    return _field(1, env)


def _raw(channel, method):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def health(port: int, service: str = "") -> int:
    """grpc.health.v1.Health/Check status (1 = SERVING)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = _raw(ch, "/grpc.health.v1.Health/Check")(_field(1, service) if service else b"", timeout=2)
        return int(_parse(resp).get(1, 0))


def publish(port: int, request: bytes, api_key: str | None = None) -> tuple[grpc.StatusCode, dict]:
    meta = [("authorization", f"Bearer {api_key}")] if api_key else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = _raw(ch, "/switchboard.v1.Ingest/Publish")(request, timeout=10, metadata=meta)
            return grpc.StatusCode.OK, _parse(resp)
        except grpc.RpcError as e:
            return e.code(), {"details": e.details()}


# ------------------------------------------------------------------ Prometheus
class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            body = http_get(url, timeout=10)
        except urllib.error.HTTPError as e:
            body = e.read().decode()
        return json.loads(body)

    def query(self, expr: str) -> list[tuple[dict, float]]:
        r = self.api("/api/v1/query", query=expr)
        if r.get("status") != "success":
            raise RuntimeError(f"{r.get('errorType')}: {r.get('error')}")
        data = r["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def scalar(self, expr: str) -> float | None:
        rows = self.query(expr)
        return rows[0][1] if rows else None


def scrape_metrics(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the samples of NAME whose labels include LABELS, from exposition text."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(2))
            seen = True
    return total if seen else None


LINT_SEEN: set[str] = set()


def promtool_lint(promtool: str, name: str, text: str) -> None:
    """promtool check metrics on one /metrics output: a parse error fails; lint
    findings (e.g. a metric without HELP) are warnings, each reported once."""
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    out = (p.stdout + p.stderr).strip()
    families = len(set(re.findall(r"^# TYPE (\S+)", text, re.M)))
    if p.returncode == 0:
        result("ok", f"promtool check metrics: {name} ({families} metric families, no lint findings)")
    elif p.returncode == 3:
        result("ok", f"promtool check metrics: {name} ({families} metric families) parses; lint findings are warnings")
        for line in out.splitlines():
            if line not in LINT_SEEN:
                LINT_SEEN.add(line)
                print(f"WARN: promtool lint: {line}", flush=True)
    else:
        result("fail", f"promtool check metrics: {name}", out[:2000])


# ------------------------------------------------------------------ phase 1
def bench(a, grpc_port: int, rpc: str, n: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = pathlib.Path(tmp) / "report.json"
        p = subprocess.run([str(pathlib.Path(a.bin_dir) / "switchboard-bench"), "--target", f"http://127.0.0.1:{grpc_port}",
                            "--rpc", rpc, "--messages", str(n), "--conversations", "50", "--json", str(report_path)],
                           capture_output=True, text=True, timeout=remaining(120))
        out = (p.stdout + p.stderr).strip()
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if p.returncode == 0 and report.get("acked") == n and not report.get("errors"):
        result("ok", f"switchboard-bench --rpc {rpc} --messages {n}: all acked")
        return True
    result("fail", f"switchboard-bench --rpc {rpc} --messages {n}", out[-1500:])
    return False


def phase_scrape(a, procs: Procs, work: pathlib.Path) -> None:
    run = a.run
    topics = {k: f"ops-{run}.{k}" for k in ("messages", "analytics", "agent-queue", "dlq", "state",
                                            "rejections", "outbound", "queue-state", "assignments")}
    group = f"ops-{run}-workers"
    grpc_port, broker_metrics, workers_metrics, prom_port, dead_bot, http_port = free_ports(6)
    bins = pathlib.Path(a.bin_dir)
    info(f"run {run}: Kafka {a.kafka}, topics {topics['messages']} (+analytics, agent-queue, dlq), group {group}")

    # Everything goes to analytics, except texts with the marker below: they go
    # to a bot nobody serves, fail max_attempts times and end in the DLQ.
    rules = work / "rules.toml"
    rules.write_text('default = ["analytics"]\n\n[[rules]]\nid = "ops-dead-letter"\n'
                     'keywords = ["ops-dead-letter"]\ndestinations = [{ bot = "down" }]\n\n'
                     '[[rules]]\nid = "ops-agent"\nkeywords = ["ops-agent"]\ndestinations = [{ agent = "support" }]\n')
    workers_toml = work / "workers.toml"
    workers_toml.write_text(
        f'messages_topic = "{topics["messages"]}"\n'
        f'analytics_topic = "{topics["analytics"]}"\n'
        f'agent_queue_topic = "{topics["agent-queue"]}"\n'
        f'dlq_topic = "{topics["dlq"]}"\n'
        f'state_topic = "{topics["state"]}"\n'
        f'rejections_topic = "{topics["rejections"]}"\n'
        f'outbound_topic_prefix = "{topics["outbound"]}"\n'
        f'group_id = "{group}"\n'
        f'metrics_addr = "127.0.0.1:{workers_metrics}"\n'
        f'rules_file = "{rules}"\n'
        'max_attempts = 3\nretry_backoff = "10ms"\nretry_backoff_max = "50ms"\n'
        f'[bots.down]\nendpoint = "http://127.0.0.1:{dead_bot}"\ntimeout = "1s"\n'
        f'[agents]\nqueue_state_topic = "{topics["queue-state"]}"\nassignments_topic = "{topics["assignments"]}"\n'
        'tick = "200ms"\n[agents.queues.support]\ncapacity = 2\n')
    procs.start("broker", [str(bins / "switchboard-broker"), "--grpc-addr", f"127.0.0.1:{grpc_port}",
                           "--metrics-addr", f"127.0.0.1:{broker_metrics}", "--http-addr", f"127.0.0.1:{http_port}",
                           "--kafka-bootstrap", a.kafka,
                           "--messages-topic", topics["messages"]])
    procs.start("workers", [str(bins / "switchboard-workers"), "--config", str(workers_toml),
                            "--kafka-bootstrap", a.kafka])

    serving = wait_until("broker gRPC health", 90, lambda: procs.alive("broker") and health(grpc_port) == 1
                         and health(grpc_port, "switchboard.v1.Ingest") == 1)
    if not serving:
        result("fail", "broker starts and serves gRPC health", "\n" + procs.log_tail("broker"))
        return
    result("ok", "broker starts and serves gRPC health (\"\" and switchboard.v1.Ingest: SERVING)")
    joined = wait_until("workers to join the group", 90, lambda: procs.alive("workers") and metric_value(
        scrape_metrics(workers_metrics), "switchboard_worker_rebalances_total", {"event": "assign"}))
    if not joined:
        result("fail", "workers start and join the consumer group", "\n" + procs.log_tail("workers"))
        return
    result("ok", "workers start and join the consumer group")

    prom_dir = work / "prometheus"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(f"""# generated by deploy/ops/lib/live.py
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {ROOT / 'deploy/prometheus/alerts.yml'}
scrape_configs:
  - job_name: switchboard-broker
    static_configs:
      - targets: ["127.0.0.1:{broker_metrics}"]
  - job_name: switchboard-workers
    static_configs:
      - targets: ["127.0.0.1:{workers_metrics}"]
""")
    procs.start("prometheus", [a.prometheus, f"--config.file={prom_dir / 'prometheus.yml'}",
                               f"--storage.tsdb.path={prom_dir / 'data'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"])
    prom = Prom(prom_port)
    if not wait_until("Prometheus ready", 60, lambda: procs.alive("prometheus")
                      and "Ready" in http_get(f"{prom.base}/-/ready")):
        result("fail", "Prometheus starts", "\n" + procs.log_tail("prometheus"))
        return

    # A channel retrying a webhook: the same channel message id twice. This
    # also gives birth to the histograms before the bench, so that rate()
    # sees them grow (a series first scraped at its final value has rate 0).
    cmid = f"ops-{run}-retry"
    first = publish(grpc_port, envelope("demo", f"ops-{run}-dedupe", "hello", cmid))
    second = publish(grpc_port, envelope("demo", f"ops-{run}-dedupe", "hello", cmid))
    if first[0] == grpc.StatusCode.OK and second[0] == grpc.StatusCode.OK and second[1].get(4) == 1 \
            and not first[1].get(4) and second[1].get(1) == first[1].get(1):
        result("ok", "a retried channel message is answered as a duplicate with the original message id")
    else:
        result("fail", "dedupe of a retried channel message", f"first={first} second={second}")
    wait_until("Prometheus to scrape the first ack and delivery", 30, lambda: (
        prom.scalar("sum(switchboard_ingest_kafka_ack_duration_seconds_count)") or 0) >= 1 and (
        prom.scalar('sum(switchboard_destination_duration_seconds_count{kind="analytics"})') or 0) >= 1)

    sent = 0
    for mode, n in (("unary", 300), ("stream", 100)):
        if bench(a, grpc_port, mode, n):
            sent += n
    info(f"bench: {sent} messages acked")
    code, _ = publish(grpc_port, envelope("demo", f"ops-{run}-dlq", "ops-dead-letter please"))
    if code != grpc.StatusCode.OK:
        result("fail", "publish a message routed to an unreachable bot", str(code))
    # Two conversations ask for the support queue; an agent comes online a
    # moment later (switchboard-desk) and takes both.
    for i in (1, 2):
        code, _ = publish(grpc_port, envelope("demo", f"ops-{run}-agent-{i}", "ops-agent please"))
        if code != grpc.StatusCode.OK:
            result("fail", "publish a message routed to the support queue", str(code))
    time.sleep(1)
    p = subprocess.run([str(bins / "switchboard-desk"), "--config", str(workers_toml), "--kafka-bootstrap", a.kafka,
                        "--tenant", "demo", "--agent", "ops-agent", "--queue", "support", "online"],
                       capture_output=True, text=True, timeout=remaining(60))
    if p.returncode != 0:
        result("fail", "switchboard-desk online", (p.stdout + p.stderr)[-1500:])

    checks = {
        'up{job="switchboard-broker"} == 1': ('up{job="switchboard-broker"}', lambda v: v == 1),
        'up{job="switchboard-workers"} == 1': ('up{job="switchboard-workers"}', lambda v: v == 1),
        f'switchboard_ingest_requests_total{{code="ok"}} >= {sent + 2}':
            ('sum(switchboard_ingest_requests_total{code="ok"})', lambda v: v >= sent + 2),
        'switchboard_ingest_requests_total is labelled by channel (webchat traffic counted)':
            ('sum(switchboard_ingest_requests_total{channel="webchat",code="ok"})', lambda v: v >= 2),
        'switchboard_ingest_requests_total has publish and publish_stream':
            ('count(sum by (rpc) (switchboard_ingest_requests_total{rpc=~"publish|publish_stream"}))', lambda v: v == 2),
        f'switchboard_worker_records_total{{outcome="routed"}} >= {sent}':
            ('sum(switchboard_worker_records_total{outcome="routed"})', lambda v: v >= sent),
        'switchboard_worker_records_total{outcome="poison"} == 0':
            ('sum(switchboard_worker_records_total{outcome="poison"})', lambda v: v == 0),
        f'switchboard_ingest_kafka_ack_duration_seconds_count >= {sent}':
            ('sum(switchboard_ingest_kafka_ack_duration_seconds_count)', lambda v: v >= sent),
        'ack p99 (histogram_quantile over rate of _bucket) is finite, > 0 and <= 10 s':
            ('histogram_quantile(0.99, sum by (le) (rate(switchboard_ingest_kafka_ack_duration_seconds_bucket[1m])))',
             lambda v: math.isfinite(v) and 0 < v <= 10),
        'analytics delivery p99 (histogram_quantile) is finite, > 0 and <= 10 s':
            ('histogram_quantile(0.99, sum by (le) (rate(switchboard_destination_duration_seconds_bucket{kind="analytics"}[1m])))',
             lambda v: math.isfinite(v) and 0 < v <= 10),
        f'analytics delivery attempts >= {sent}':
            ('sum(switchboard_destination_duration_seconds_count{kind="analytics"})', lambda v: v >= sent),
        'switchboard_ingest_in_flight back to 0': ('sum(switchboard_ingest_in_flight)', lambda v: v == 0),
        f'switchboard_end_to_end_duration_seconds_count >= {sent}':
            ('sum(switchboard_end_to_end_duration_seconds_count)', lambda v: v >= sent),
        'end-to-end p99 (received_at to all destinations acked) is finite, > 0 and <= 30 s':
            ('histogram_quantile(0.99, sum by (le) (rate(switchboard_end_to_end_duration_seconds_bucket[1m])))',
             lambda v: math.isfinite(v) and 0 < v <= 30),
        'consumer lag is exported per partition and the workers caught up (sum == 0)':
            ('sum(switchboard_worker_consumer_lag_records) and on () count(switchboard_worker_consumer_lag_records) > 0',
             lambda v: v == 0),
        'the unreachable bot has a circuit gauge (0 or 1)':
            ('max(switchboard_destination_circuit_open{destination="bot:down"})', lambda v: v in (0, 1)),
        'agent queue: 2 assigned by policy (switchboard_agent_assignments_total)':
            ('sum(switchboard_agent_assignments_total{queue="support",outcome="assigned"})', lambda v: v == 2),
        'agent queue: wait time recorded for both (switchboard_agent_wait_duration_seconds_count)':
            ('sum(switchboard_agent_wait_duration_seconds_count{queue="support"})', lambda v: v == 2),
        'agent queue: depth exported and back to 0':
            ('sum(switchboard_agent_queue_depth{queue="support"})', lambda v: v == 0),
        'agent queue: utilisation 1 (2 held, capacity 2)':
            ('max(switchboard_agent_utilization_ratio{queue="support"})', lambda v: v == 1),
        'switchboard_ingest_dedupe_hits_total >= 1': ('sum(switchboard_ingest_dedupe_hits_total)', lambda v: v >= 1),
        'switchboard_route_decisions_total{matched="default"} >= routed':
            ('sum(switchboard_route_decisions_total{matched="default"})', lambda v: v >= sent),
        f'switchboard_destination_deliveries_total{{kind="analytics"}} >= {sent}':
            ('sum(switchboard_destination_deliveries_total{kind="analytics"})', lambda v: v >= sent),
        'unreachable bot: switchboard_destination_errors_total{kind="bot"} == max_attempts (3)':
            ('sum(switchboard_destination_errors_total{kind="bot"})', lambda v: v == 3),
        'unreachable bot: switchboard_destination_retries_total{kind="bot"} >= 2':
            ('sum(switchboard_destination_retries_total{kind="bot"})', lambda v: v >= 2),
        'unreachable bot: switchboard_dlq_records_total{reason="destination"} == 1':
            ('sum(switchboard_dlq_records_total{reason="destination"})', lambda v: v == 1),
        'the dead letter is written: switchboard_destination_deliveries_total{kind="dlq"} == 1':
            ('sum(switchboard_destination_deliveries_total{kind="dlq"})', lambda v: v == 1),
    }
    last: dict[str, object] = {}

    def all_hold():
        good = True
        for name, (expr, pred) in checks.items():
            try:
                v = prom.scalar(expr)
            except Exception as e:  # noqa: BLE001
                v = f"error {e}"
            last[name] = v
            good &= isinstance(v, float) and pred(v)
        return good

    wait_until("the series to reach their values", 60, all_hold, interval=1)
    for name, (expr, pred) in checks.items():
        v = last.get(name)
        ok = isinstance(v, float) and pred(v)
        result("ok" if ok else "fail", f"Prometheus: {name}", f"{expr} = {v}")

    # Targets scraped cleanly.
    targets = prom.api("/api/v1/targets")["data"]["activeTargets"]
    bad = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets if t["health"] != "up" or t["lastError"]]
    result("fail" if bad or len(targets) != 2 else "ok", "Prometheus: both targets scraped without errors", str(bad))

    # Alert rules: loaded, evaluated without error; none firing on a healthy pipeline.
    def rules_evaluated():
        groups = prom.api("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else None

    rules = wait_until("every rule to be evaluated", 20, rules_evaluated) or []
    expected = len(opscheck.alert_rules())
    unhealthy = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
    if len(rules) == expected and not unhealthy:
        result("ok", f"Prometheus: all {expected} alert rules from alerts.yml evaluate with health ok")
    else:
        result("fail", "Prometheus: alert rules evaluate", f"{len(rules)}/{expected} rules, unhealthy: {unhealthy}")
    alerts = prom.api("/api/v1/alerts")["data"]["alerts"]
    firing = [a_["labels"]["alertname"] for a_ in alerts if a_["state"] == "firing"]
    pending = [a_["labels"]["alertname"] for a_ in alerts if a_["state"] == "pending"]
    if pending:
        info(f"pending alerts on the live pipeline: {pending}")
    result("fail" if firing else "ok", "Prometheus: no alert fires on a healthy pipeline", str(firing))

    # Every expression of the dashboards and alerts runs against the live data.
    exprs = json.loads(subprocess.run([sys.executable, str(pathlib.Path(__file__).parent / "opscheck.py"), "exprs"],
                                      capture_output=True, text=True, check=True, timeout=60).stdout)
    errors, empty = [], []
    for e in exprs:
        q = e["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
        try:
            if not prom.query(q):
                empty.append(f"{e['source']}: {e['title']}")
        except Exception as ex:  # noqa: BLE001
            errors.append(f"{e['source']}: {e['title']}: {ex}")
    if errors:
        result("fail", f"Prometheus: every dashboard and alert expression runs ({len(exprs)})", "; ".join(errors))
    else:
        result("ok", f"Prometheus: all {len(exprs)} dashboard and alert expressions run")
    if empty:
        info(f"{len(empty)} of them have no data on this pipeline (no outage, no bot, no agent routing, "
             f"or series missing): " + "; ".join(sorted(set(empty))))

    promtool_lint(a.promtool, "switchboard-broker /metrics", scrape_metrics(broker_metrics))
    promtool_lint(a.promtool, "switchboard-workers /metrics (after routing, retries, a dead letter)",
                  scrape_metrics(workers_metrics))

    # Restart the worker and publish more: the new partition owner rebuilds its
    # conversation state from Kafka, so the rebuild histogram is exported (and linted) too.
    rc = procs.stop("workers")
    result("ok" if rc == 0 else "fail", "workers exit 0 on SIGTERM (commit, leave the group)",
           f"exit {rc}" + ("" if rc == 0 else "\n" + procs.log_tail("workers")))
    procs.start("workers", [str(bins / "switchboard-workers"), "--config", str(workers_toml),
                            "--kafka-bootstrap", a.kafka])
    joined = wait_until("the restarted worker to join", 90, lambda: procs.alive("workers") and metric_value(
        scrape_metrics(workers_metrics), "switchboard_worker_rebalances_total", {"event": "assign"}))
    if joined and bench(a, grpc_port, "unary", 50):
        def caught_up():
            text = scrape_metrics(workers_metrics)
            routed = metric_value(text, "switchboard_worker_records_total", {"outcome": "routed"}) or 0
            rebuilt = metric_value(text, "switchboard_worker_state_rebuild_duration_seconds_count")
            return text if routed >= 50 and rebuilt else None

        text = wait_until("the restarted worker to route and rebuild", 60, caught_up)
        result("ok" if text else "fail",
               "restarted worker routes new messages and rebuilds conversation state (state_rebuild histogram)",
               "" if text else "\n" + procs.log_tail("workers"))
    else:
        result("fail", "restarted worker joins the group", "\n" + procs.log_tail("workers"))
    promtool_lint(a.promtool, "switchboard-workers /metrics (after a restart and a conversation state rebuild)",
                  scrape_metrics(workers_metrics))

    for name in ("broker", "workers"):
        rc = procs.stop(name)
        result("ok" if rc == 0 else "fail", f"{name} exits 0 on SIGTERM",
               f"exit {rc}" + ("" if rc == 0 else "\n" + procs.log_tail(name)))
    procs.stop("prometheus")


# ------------------------------------------------------------------ phase 2
class ConfigMapVolume:
    """A directory laid out as the kubelet mounts a ConfigMap: KEY -> ..data/KEY,
    ..data -> a timestamped directory, swapped atomically on every update."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path, self.version = path, 0
        path.mkdir(parents=True)

    def write(self, files: dict[str, str]) -> None:
        self.version += 1
        target = self.path / f"..v{self.version}"
        target.mkdir()
        for key, content in files.items():
            (target / key).write_text(content)
        tmp = self.path / "..data_tmp"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.path / "..data")
        for key in files:
            if not (self.path / key).is_symlink():
                os.symlink(f"..data/{key}", self.path / key)


def phase_k8s_configs(a, procs: Procs, work: pathlib.Path) -> None:
    files = work / "k8s"
    run = a.run
    configmaps = opscheck.configmap_files()
    for name, content in configmaps.items():
        (files / name).parent.mkdir(parents=True, exist_ok=True)
        (files / name).write_text(content)
    # The rules as the kubelet mounts them, so that updating the ConfigMap can
    # be replayed below.
    rules_volume = ConfigMapVolume(work / "k8s-rules-volume")
    k8s_rules = configmaps["switchboard-rules/rules.toml"]
    rules_volume.write({"rules.toml": k8s_rules})
    topic, analytics, agents = (f"ops-{run}.k8s.{k}" for k in ("messages", "analytics", "agent-queue"))
    grpc_port, broker_metrics, workers_metrics, http_port = free_ports(4)
    bins = pathlib.Path(a.bin_dir)
    # Only what must differ on this machine is overridden: addresses, Kafka,
    # topic names, replication (one local Kafka broker) and the mount paths.
    procs.start("k8s-broker", [str(bins / "switchboard-broker"),
                               "--config", str(files / "switchboard-broker-config/broker.toml"),
                               "--grpc-addr", f"127.0.0.1:{grpc_port}", "--metrics-addr", f"127.0.0.1:{broker_metrics}",
                               "--http-addr", f"127.0.0.1:{http_port}",
                               "--kafka-bootstrap", a.kafka, "--messages-topic", topic],
                env={"SWITCHBOARD_BROKER_AUTH_FILE": str(files / "switchboard-tenants/tenants.toml"),
                     "SWITCHBOARD_BROKER_KAFKA__TOPIC_REPLICATION": "1"})
    procs.start("k8s-workers", [str(bins / "switchboard-workers"),
                                "--config", str(files / "switchboard-workers-config/workers.toml"),
                                "--rules-file", str(rules_volume.path / "rules.toml"),
                                "--metrics-addr", f"127.0.0.1:{workers_metrics}", "--kafka-bootstrap", a.kafka,
                                "--group-id", f"ops-{run}-k8s"],
                env={"SWITCHBOARD_WORKERS_MESSAGES_TOPIC": topic,
                     "SWITCHBOARD_WORKERS_ANALYTICS_TOPIC": analytics,
                     "SWITCHBOARD_WORKERS_AGENT_QUEUE_TOPIC": agents,
                     "SWITCHBOARD_WORKERS_DLQ_TOPIC": f"ops-{run}.k8s.dlq",
                     "SWITCHBOARD_WORKERS_STATE_TOPIC": f"ops-{run}.k8s.state",
                     "SWITCHBOARD_WORKERS_REJECTIONS_TOPIC": f"ops-{run}.k8s.rejections",
                     "SWITCHBOARD_WORKERS_OUTBOUND_TOPIC_PREFIX": f"ops-{run}.k8s.outbound",
                     "SWITCHBOARD_WORKERS_KAFKA__TOPIC_REPLICATION": "1",
                     # This check publishes before the new group's first
                     # assignment; the default (latest) would skip those.
                     "SWITCHBOARD_WORKERS_AUTO_OFFSET_RESET": "earliest"})

    serving = wait_until("k8s broker health", 90, lambda: procs.alive("k8s-broker") and health(grpc_port) == 1
                         and health(grpc_port, "switchboard.v1.Ingest") == 1)
    result("ok" if serving else "fail",
           "k8s broker.toml + tenants Secret load; readiness/liveness gRPC health services answer SERVING",
           "" if serving else "\n" + procs.log_tail("k8s-broker"))
    if serving:
        code, _ = publish(grpc_port, envelope("acme", f"ops-{run}-k8s", "I need help please"))
        result("ok" if code == grpc.StatusCode.UNAUTHENTICATED else "fail",
               "k8s tenants Secret is enforced: a publish without an API key is UNAUTHENTICATED", str(code))
        codes = [publish(grpc_port, envelope("acme", f"ops-{run}-k8s-{i}", "I need help please"),
                         api_key="acme-example-key")[0] for i in range(5)]
        result("ok" if all(c == grpc.StatusCode.OK for c in codes) else "fail",
               "k8s tenants Secret: the example acme key publishes", " ".join(c.name for c in codes))
    joined = wait_until("k8s workers to join", 90, lambda: procs.alive("k8s-workers") and metric_value(
        scrape_metrics(workers_metrics), "switchboard_worker_rebalances_total", {"event": "assign"}))
    result("ok" if joined else "fail", "k8s workers.toml + rules ConfigMap load; workers join the group",
           "" if joined else "\n" + procs.log_tail("k8s-workers"))
    if serving and joined:
        def routed_to_agents():
            text = scrape_metrics(workers_metrics)
            rule = metric_value(text, "switchboard_route_decisions_total", {"matched": "rule"}) or 0
            agent = metric_value(text, "switchboard_destination_duration_seconds_count", {"kind": "agent"}) or 0
            return (rule, agent) if rule >= 5 and agent >= 5 else None

        got = wait_until("agent routing", 60, routed_to_agents)
        result("ok" if got else "fail",
               "k8s rules route 'help' texts to the support agent queue (rule matched, kind=\"agent\" deliveries)",
               str(got))

        # ConfigMap updates, as the kubelet applies them: a bad file is refused
        # and the old rules keep routing; a good one is applied without a restart.
        def reloads(outcome):
            return metric_value(scrape_metrics(workers_metrics), "switchboard_rules_reloads_total",
                                {"outcome": outcome}) or 0

        rules_volume.write({"rules.toml": k8s_rules + '\n[[rules]]\nid = "broken"\ndestinations = [{ bot = "nobody" }]\n'})
        refused = wait_until("the bad rules to be refused", 20, lambda: reloads("refused") >= 1)
        result("ok" if refused and procs.alive("k8s-workers") else "fail",
               "k8s rules ConfigMap update with an unknown bot is refused; the worker keeps running",
               "" if refused else "\n" + procs.log_tail("k8s-workers"))
        # Without the ask-for-human rule, a 'help' text now takes the default.
        without_agents = re.sub(r'\[\[rules\]\]\nid = "ask-for-human".*?(?=\n\[\[rules\]\]|\Z)', "", k8s_rules, flags=re.S)
        before = metric_value(scrape_metrics(workers_metrics), "switchboard_route_decisions_total", {"matched": "default"}) or 0
        rules_volume.write({"rules.toml": without_agents})
        applied = wait_until("the new rules to be applied", 20, lambda: reloads("applied") >= 1)
        code = publish(grpc_port, envelope("acme", f"ops-{run}-k8s-after", "help again"), api_key="acme-example-key")[0]
        now_default = wait_until("the default route", 30, lambda: (metric_value(
            scrape_metrics(workers_metrics), "switchboard_route_decisions_total", {"matched": "default"}) or 0) > before)
        result("ok" if applied and code == grpc.StatusCode.OK and now_default else "fail",
               "k8s rules ConfigMap update is applied without a restart (the next 'help' text takes the default)",
               f"applied={applied} publish={code.name} default_after={now_default}")
        promtool_lint(a.promtool, "switchboard-workers /metrics (after agent routing and rules reloads)",
                      scrape_metrics(workers_metrics))
    for name in ("k8s-broker", "k8s-workers"):
        rc = procs.stop(name)
        if rc not in (0, None):
            result("fail", f"{name} exits 0 on SIGTERM", f"exit {rc}\n{procs.log_tail(name)}")


# ------------------------------------------------------------------ phase 3
def phase_compose_env(a, procs: Procs, work: pathlib.Path) -> None:
    """The SWITCHBOARD_* variables deploy/compose.yaml gives the binaries are
    real settings: run them with those variables, the addresses moved to free
    127.0.0.1 ports, Kafka to the test Kafka and topics made unique."""
    import yaml

    services = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())["services"]
    run = a.run
    ports: dict[str, int] = {}

    def localize(env: dict) -> dict:
        out = {}
        for k, v in env.items():
            if not k.startswith("SWITCHBOARD_"):
                continue
            v = str(v)
            if v.startswith("0.0.0.0:"):
                ports[k] = free_ports(1)[0]
                v = f"127.0.0.1:{ports[k]}"
            elif k == "SWITCHBOARD_KAFKA_BOOTSTRAP":
                v = a.kafka
            out[k] = v
        return out

    bins = pathlib.Path(a.bin_dir)
    broker_env = localize(services["broker"].get("environment", {}))
    broker_env["SWITCHBOARD_BROKER_MESSAGES_TOPIC"] = f"ops-{run}.compose.messages"
    # The HTTP webhook listener's default port may be taken on this machine.
    broker_env.setdefault("SWITCHBOARD_BROKER_HTTP_ADDR", f"127.0.0.1:{free_ports(1)[0]}")
    workers_env = localize(services["workers"].get("environment", {}))
    workers_env.update({"SWITCHBOARD_WORKERS_MESSAGES_TOPIC": f"ops-{run}.compose.messages",
                        "SWITCHBOARD_WORKERS_ANALYTICS_TOPIC": f"ops-{run}.compose.analytics",
                        "SWITCHBOARD_WORKERS_AGENT_QUEUE_TOPIC": f"ops-{run}.compose.agent-queue",
                        "SWITCHBOARD_WORKERS_DLQ_TOPIC": f"ops-{run}.compose.dlq",
                        "SWITCHBOARD_WORKERS_STATE_TOPIC": f"ops-{run}.compose.state",
                        "SWITCHBOARD_WORKERS_REJECTIONS_TOPIC": f"ops-{run}.compose.rejections",
                        "SWITCHBOARD_WORKERS_OUTBOUND_TOPIC_PREFIX": f"ops-{run}.compose.outbound",
                        "SWITCHBOARD_WORKERS_GROUP_ID": f"ops-{run}-compose"})
    if "SWITCHBOARD_BROKER_GRPC_ADDR" not in ports or "SWITCHBOARD_BROKER_METRICS_ADDR" not in ports \
            or "SWITCHBOARD_WORKERS_METRICS_ADDR" not in ports:
        result("fail", "compose: broker/workers listen addresses are set through SWITCHBOARD_* variables", str(ports))
        return
    procs.start("compose-broker", [str(bins / "switchboard-broker")], env=broker_env)
    procs.start("compose-workers", [str(bins / "switchboard-workers")], env=workers_env)
    grpc_port = ports["SWITCHBOARD_BROKER_GRPC_ADDR"]
    up = wait_until("the broker with compose's environment", 90, lambda: procs.alive("compose-broker")
                    and health(grpc_port) == 1 and "switchboard_" in scrape_metrics(ports["SWITCHBOARD_BROKER_METRICS_ADDR"]))
    result("ok" if up else "fail", "compose: the broker's environment works (gRPC and /metrics where it says)",
           "" if up else "\n" + procs.log_tail("compose-broker"))
    up = wait_until("the workers with compose's environment", 90, lambda: procs.alive("compose-workers")
                    and metric_value(scrape_metrics(ports["SWITCHBOARD_WORKERS_METRICS_ADDR"]),
                                     "switchboard_worker_rebalances_total", {"event": "assign"}))
    result("ok" if up else "fail", "compose: the workers' environment works (no rules: analytics only; /metrics where it says)",
           "" if up else "\n" + procs.log_tail("compose-workers"))
    for name in ("compose-broker", "compose-workers"):
        procs.stop(name)


def main() -> None:
    global DEADLINE
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--kafka", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--promtool", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--timeout", type=float, default=420)
    ap.add_argument("--run", default=uuid.uuid4().hex[:10],
                    help="id in every topic (ops-RUN.*) and consumer group (ops-RUN-*) this creates")
    a = ap.parse_args()
    DEADLINE = time.monotonic() + a.timeout
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    procs = Procs(work)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        phase_scrape(a, procs, work)
        procs.stop_all()
        phase_k8s_configs(a, procs, work)
        procs.stop_all()
        phase_compose_env(a, procs, work)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        result("fail", "live checks crashed", repr(e))
    finally:
        procs.stop_all()
    print(f"live: {RESULTS['ok']} ok, {RESULTS['fail']} failed, {RESULTS['warn']} warnings", flush=True)
    sys.exit(1 if RESULTS["fail"] else 0)


if __name__ == "__main__":
    main()
