#!/usr/bin/env python3
"""Generates the Switchboard Grafana dashboards (deploy/grafana/dashboards/*.json).

Edit this file, then run it:  python3 deploy/grafana/generate.py
deploy/ops/check.sh fails when the JSON files differ from what this writes, and
checks that every query names only metrics the code exports.
Queries use $__rate_interval and an $instance variable; the data source is the
provisioned one (uid switchboard-prometheus) unless another is picked.
"""
import json
import pathlib
import sys

OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

def templating(job):
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {"selected": False, "text": "Prometheus", "value": "switchboard-prometheus"},
         "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
         "definition": f'label_values(up{{job="{job}"}}, instance)',
         "query": {"query": f'label_values(up{{job="{job}"}}, instance)', "refId": "instance"},
         "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []},
    ]}

class Board:
    def __init__(self):
        self.panels, self.y, self.x, self.h, self.next_id = [], 0, 0, 0, 1
    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.h
            self.h = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w; self.h = max(self.h, h)
        return pos
    def row(self, title):
        if self.x: self.x, self.y, self.h = 0, self.y + self.h, 0
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1; self.y += 1
    def panel(self, kind, title, desc, targets, unit="short", w=12, h=8, **extra):
        p = {"id": self.next_id, "type": kind, "title": title, "description": desc,
             "datasource": DS, "gridPos": self._place(w, h),
             "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l,
                          **({"instant": True, "range": False} if kind == "stat" else {"range": True})}
                         for i, (e, l) in enumerate(targets)],
             "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []}}
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                                       "calcs": ["mean", "max", "lastNotNull"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
            p["fieldConfig"]["defaults"].setdefault("custom", {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"})
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "none", "textMode": "auto", "justifyMode": "auto",
                            "orientation": "auto"}
        p.update(extra)
        self.panels.append(p); self.next_id += 1
    def text(self, title, content, w=24, h=5):
        self.panels.append({"id": self.next_id, "type": "text", "title": title, "gridPos": self._place(w, h),
                            "options": {"mode": "markdown", "content": content}})
        self.next_id += 1

def thresholds(*steps):
    return {"thresholds": {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}}

def dashboard(uid, title, desc, job, board, links):
    return {"uid": uid, "title": title, "description": desc, "tags": ["switchboard"],
            "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "refresh": "30s", "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
            "links": [{"title": t, "type": "link", "url": f"/d/{u}", "targetBlank": False, "icon": "dashboard"} for t, u in links],
            "templating": templating(job), "annotations": {"list": []}, "panels": board.panels}

LINKS = [("Ingest", "switchboard-ingest"), ("Routing", "switchboard-routing"), ("Agents", "switchboard-agents"),
         ("Senders", "switchboard-senders")]
I = 'instance=~"$instance"'

# ---------------------------------------------------------------- ingest
b = Board()
b.row("Overview")
b.panel("stat", "Accepted publishes/s", "Envelopes acked by Kafka per second (code=ok).",
        [(f'sum(rate(switchboard_ingest_requests_total{{code="ok",{I}}}[{RI}]))', "ok")], unit="reqps", w=4, h=4)
b.panel("stat", "Server error ratio", "Share of envelopes that failed with unavailable, failed_precondition or other (alert: SwitchboardIngestErrorRatioHigh, 5%).",
        [(f'sum(rate(switchboard_ingest_requests_total{{code=~"unavailable|failed_precondition|other",{I}}}[{RI}])) / sum(rate(switchboard_ingest_requests_total{{{I}}}[{RI}]))', "errors")],
        unit="percentunit", w=4, h=4, defaults=thresholds((None, "green"), (0.01, "orange"), (0.05, "red")))
b.panel("stat", "Shed ratio", "Share of envelopes answered RESOURCE_EXHAUSTED: node at max_in_flight or tenant over its rate limit (alert: SwitchboardIngestShedding, 1%).",
        [(f'sum(rate(switchboard_ingest_requests_total{{code="resource_exhausted",{I}}}[{RI}])) / sum(rate(switchboard_ingest_requests_total{{{I}}}[{RI}]))', "shed")],
        unit="percentunit", w=4, h=4, defaults=thresholds((None, "green"), (0.01, "red")))
b.panel("stat", "Kafka ack p99", "99th percentile of the time from handing an envelope to the producer until Kafka acked it (alert budget: 250 ms).",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_ingest_kafka_ack_duration_seconds_bucket{{{I}}}[{RI}])))', "p99")],
        unit="s", w=4, h=4, defaults=thresholds((None, "green"), (0.1, "orange"), (0.25, "red")))
b.panel("stat", "Ingestion nodes up", "switchboard-broker targets answering scrapes.",
        [('sum(up{job="switchboard-broker"})', "up")], w=4, h=4, defaults=thresholds((None, "red"), (1, "green")))
b.panel("stat", "Nodes with Kafka down", "Nodes whose librdkafka reports every broker down (switchboard_ingest_kafka_up == 0). The gauge appears on a node's first outage; no data means no node lost Kafka since it started.",
        [(f'count(switchboard_ingest_kafka_up{{{I}}} == 0) or vector(0)', "down")], w=4, h=4, defaults=thresholds((None, "green"), (1, "red")))
b.row("Requests")
b.panel("timeseries", "Envelopes by result code", "switchboard_ingest_requests_total by gRPC code. A webhook counts each of its events.",
        [(f'sum by (code) (rate(switchboard_ingest_requests_total{{{I}}}[{RI}]))', "{{code}}")], unit="reqps")
b.panel("timeseries", "Envelopes by RPC", "switchboard_ingest_requests_total by RPC (publish, publish_stream, ingest_webhook, publish_batch, http_webhook: the HTTP webhook listener, once a webhook's signature checked). A batch counts each of its envelopes.",
        [(f'sum by (rpc) (rate(switchboard_ingest_requests_total{{{I}}}[{RI}]))', "{{rpc}}")], unit="reqps")
b.panel("timeseries", "Envelopes by channel", "switchboard_ingest_requests_total by channel (unspecified: refused before the channel was known).",
        [(f'sum by (channel) (rate(switchboard_ingest_requests_total{{{I}}}[{RI}]))', "{{channel}}")], unit="reqps")
b.panel("timeseries", "Calls filling their connection", "Calls that took the last of their client connection's max_calls_per_connection (1024) HTTP/2 streams, per node (switchboard_ingest_connection_full_total). Until one of them ends, that client's next calls wait for a stream in the client: nothing is refused, and the node holds nothing for them (alert: SwitchboardIngestConnectionsFull, 10 minutes).",
        [(f'sum by (instance) (rate(switchboard_ingest_connection_full_total{{{I}}}[{RI}]))', "{{instance}}")], unit="reqps")
b.row("HTTP webhooks")
b.panel("timeseries", "HTTP webhooks by status", "Requests to the HTTP webhook listener (POST /webhooks/{tenant}/{channel}, Meta's GET handshake, CORS preflight) by the status answered: 200 once Kafka acked every event; 400 bad body; 401 bad signature or key, or no secrets for that tenant and channel (fail closed); 403 refused origin or verify token; 404 no such channel; 413 over webhook_limits.max_body_bytes; 429 tenant over its rate limit; 503 Kafka unavailable or the listener at http.max_concurrent_requests or http.request_timeout (providers redeliver).",
        [(f'sum by (status) (rate(switchboard_ingest_http_requests_total{{{I}}}[{RI}]))', "{{status}}")], unit="reqps", w=8)
b.panel("timeseries", "HTTP webhooks by channel", "switchboard_ingest_http_requests_total by channel (unknown: no such channel in the path).",
        [(f'sum by (channel) (rate(switchboard_ingest_http_requests_total{{{I}}}[{RI}]))', "{{channel}}")], unit="reqps", w=8)
b.panel("timeseries", "Signature failures", "HTTP webhooks refused with 401, by channel and reason: missing or invalid signature (Meta X-Hub-Signature-256, Twilio X-Twilio-Signature) or web chat key. Nothing of them is published. A burst is a rotated secret, a proxy altering the URL or body, or forged webhooks (alert: SwitchboardWebhookSignatureFailures).",
        [(f'sum by (channel, reason) (rate(switchboard_ingest_http_signature_failures_total{{{I}}}[{RI}]))', "{{channel}} {{reason}}")], unit="reqps", w=8)
b.row("Kafka")
b.panel("timeseries", "Kafka ack latency", "Time from handing an envelope to the producer until Kafka's delivery report (failures included).",
        [(f'histogram_quantile({q}, sum by (le) (rate(switchboard_ingest_kafka_ack_duration_seconds_bucket{{{I}}}[{RI}])))', f"p{int(q*100)}") for q in (0.5, 0.9, 0.99)], unit="s")
b.panel("timeseries", "Publishes in flight", "Publishes waiting for a Kafka ack, per node. Past max_in_flight (default 10000) unary calls are shed.",
        [(f'switchboard_ingest_in_flight{{{I}}}', "{{instance}}")])
b.panel("timeseries", "Kafka produce errors", "Produce attempts Kafka failed, per node (timeouts, refused messages). Each failed publish also shows as unavailable or failed_precondition above.",
        [(f'sum by (instance) (rate(switchboard_ingest_kafka_errors_total{{{I}}}[{RI}]))', "{{instance}}")], unit="ops")
b.panel("timeseries", "Kafka reachable", "switchboard_ingest_kafka_up per node: 0 while librdkafka reports every broker down. Appears on a node's first outage.",
        [(f'switchboard_ingest_kafka_up{{{I}}}', "{{instance}}")], defaults={"min": 0, "max": 1})
b.row("Dedupe")
b.panel("timeseries", "Dedupe cache hits", "Retried channel messages answered from a node's dedupe cache instead of being published again.",
        [(f'sum by (instance) (rate(switchboard_ingest_dedupe_hits_total{{{I}}}[{RI}]))', "{{instance}}")], unit="ops", w=24)
ingest = dashboard("switchboard-ingest", "Switchboard / Ingest",
                   "Ingestion nodes (switchboard-broker): gRPC publishes and HTTP webhooks in, envelopes out to Kafka.",
                   "switchboard-broker", b, LINKS)

# ---------------------------------------------------------------- routing
b = Board()
b.row("Overview")
b.panel("stat", "Routed records/s", "Records the workers consumed and routed.",
        [(f'sum(rate(switchboard_worker_records_total{{outcome="routed",{I}}}[{RI}]))', "routed")], unit="ops", w=6, h=4)
b.panel("stat", "Workers up", "switchboard-workers targets answering scrapes. Workers beyond the partition count idle.",
        [('sum(up{job="switchboard-workers"})', "up")], w=6, h=4, defaults=thresholds((None, "red"), (1, "green")))
b.panel("stat", "Dead letters (1h)", "Records written to the dead-letter topic in the last hour: undeliverable (a destination failed for good or max_attempts was spent) and poison (undecodable).",
        [(f'sum(increase(switchboard_dlq_records_total{{{I}}}[1h]))', "dead letters")], w=6, h=4, defaults=thresholds((None, "green"), (1, "orange")))
b.panel("stat", "Destination error ratio", "Failed delivery attempts over all attempts, all destination kinds (alert: SwitchboardDestinationErrors, 5% per kind).",
        [(f'sum(rate(switchboard_destination_errors_total{{{I}}}[{RI}])) / sum(rate(switchboard_destination_duration_seconds_count{{{I}}}[{RI}]))', "errors")],
        unit="percentunit", w=6, h=4, defaults=thresholds((None, "green"), (0.01, "orange"), (0.05, "red")))
b.panel("stat", "Consumer lag", "Records waiting in the messages topic, over all partitions (alert: SwitchboardConsumerLagGrowing).",
        [(f'sum(switchboard_worker_consumer_lag_records{{{I}}})', "lag")], w=6, h=4, defaults=thresholds((None, "green"), (1000, "orange"), (10000, "red")))
b.panel("stat", "End-to-end p99", "99th percentile from received_at at the ingestion node until every destination acknowledged the message (Kafka wait included).",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_end_to_end_duration_seconds_bucket{{{I}}}[{RI}])))', "p99")],
        unit="s", w=6, h=4, defaults=thresholds((None, "green"), (0.1, "orange"), (1, "red")))
b.panel("stat", "Open circuits", "Bots whose circuit breaker is open right now (alert: SwitchboardDestinationCircuitOpen).",
        [(f'sum(switchboard_destination_circuit_open{{{I}}}) or vector(0)', "open")], w=6, h=4, defaults=thresholds((None, "green"), (1, "red")))
b.panel("stat", "Consent rejections (1h)", "Outbound messages refused by consent rules in the last hour.",
        [(f'sum(increase(switchboard_consent_rejections_total{{{I}}}[1h]))', "rejected")], w=6, h=4)
b.row("Consumption")
b.panel("timeseries", "Consumer lag by partition", "Records of each partition not consumed yet, exported by the partition's owner (0 elsewhere).",
        [(f'sum by (partition) (switchboard_worker_consumer_lag_records{{{I}}})', "partition {{partition}}")])
b.panel("timeseries", "End-to-end latency", "From received_at at the ingestion node until all destinations acknowledged: Kafka wait, queueing behind the conversation's earlier messages, and delivery.",
        [(f'histogram_quantile({q}, sum by (le) (rate(switchboard_end_to_end_duration_seconds_bucket{{{I}}}[{RI}])))', f"p{int(q*100)}") for q in (0.5, 0.9, 0.99)], unit="s")
b.panel("timeseries", "Records by outcome", "routed; duplicate (a copy of a channel message already routed, dropped by the conversation's owner); poison (undecodable, sent to the dead-letter topic); skipped (finished by the partition's previous owner before a rebalance).",
        [(f'sum by (outcome) (rate(switchboard_worker_records_total{{{I}}}[{RI}]))', "{{outcome}}")], unit="ops")
b.panel("timeseries", "Routing decisions", "Whether a rule matched or the rules' default applied.",
        [(f'sum by (matched) (rate(switchboard_route_decisions_total{{matched!="",{I}}}[{RI}]))', "{{matched}}")], unit="ops")
b.panel("timeseries", "Rebalances", "Partition assignments and revocations in the consumer group. Bursts follow deploys and scaling; a steady stream is a problem.",
        [(f'sum by (event) (increase(switchboard_worker_rebalances_total{{{I}}}[{RI}]))', "{{event}}")])
b.panel("timeseries", "Conversation state rebuild", "Time to read a partition's conversation states back from the state topic when a worker takes the partition over.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_worker_state_rebuild_duration_seconds_bucket{{{I}}}[{RI}])))', "p99"),
         (f'sum(rate(switchboard_worker_state_rebuild_duration_seconds_count{{{I}}}[{RI}]))', "rebuilds/s")], unit="s")
b.panel("timeseries", "Rules file reloads", "Changes of the rules file each worker picked up: applied, or refused (the worker keeps its previous rules).",
        [(f'sum by (instance, outcome) (increase(switchboard_rules_reloads_total{{{I}}}[{RI}]))', "{{instance}} {{outcome}}")], w=24)
b.row("Destinations")
b.panel("timeseries", "Delivery attempts by kind", "Every attempt to deliver to a destination (bot, agent, analytics), successful or not; retries count each time.",
        [(f'sum by (kind) (rate(switchboard_destination_duration_seconds_count{{{I}}}[{RI}]))', "{{kind}}")], unit="ops")
b.panel("timeseries", "Deliveries acknowledged by kind", "switchboard_destination_deliveries_total: deliveries a destination acknowledged.",
        [(f'sum by (kind) (rate(switchboard_destination_deliveries_total{{{I}}}[{RI}]))', "{{kind}}")], unit="ops")
b.panel("timeseries", "Destination errors by kind", "Failed delivery attempts (kind dlq: writes to the dead-letter topic). Transient failures are retried with backoff, up to max_attempts, holding back their conversation; then, or on a fatal failure, the message goes to the dead-letter topic.",
        [(f'sum by (kind) (rate(switchboard_destination_errors_total{{{I}}}[{RI}]))', "{{kind}}")], unit="ops")
b.panel("timeseries", "Destination latency p99 by kind", "99th percentile time per delivery attempt.",
        [(f'histogram_quantile(0.99, sum by (kind, le) (rate(switchboard_destination_duration_seconds_bucket{{{I}}}[{RI}])))', "{{kind}}")], unit="s")
b.panel("timeseries", "Destination retries by kind", "Retries of failed deliveries (each after a jittered exponential backoff).",
        [(f'sum by (kind) (rate(switchboard_destination_retries_total{{{I}}}[{RI}]))', "{{kind}}")], unit="ops")
b.panel("timeseries", "Bot replies", "Reply messages returned by bots.",
        [(f'sum(rate(switchboard_bot_replies_total{{{I}}}[{RI}]))', "replies")], unit="ops")
b.panel("timeseries", "Open circuits by bot", "1 while a bot's circuit breaker is open: calls fail at once for circuit_open_for, then one trial call.",
        [(f'max by (destination) (switchboard_destination_circuit_open{{{I}}})', "{{destination}}")], defaults={"min": 0, "max": 1})
b.panel("timeseries", "Ownership changes", "Conversations handed to a human (bot handoff or HANDOFF control), released to the bot, assigned to an agent.",
        [(f'sum by (event) (rate(switchboard_ownership_changes_total{{{I}}}[{RI}]))', "{{event}}")], unit="ops")
b.row("Consent")
b.panel("timeseries", "Consent rejections by reason", "Outbound messages refused and written to the rejections topic: outside_window (free-form after the messaging window), no_inbound (the customer never wrote), opted_out (SMS STOP).",
        [(f'sum by (reason) (rate(switchboard_consent_rejections_total{{{I}}}[{RI}]))', "{{reason}}")], unit="ops")
b.panel("timeseries", "Consent rejections by channel", "The same, by channel.",
        [(f'sum by (channel) (rate(switchboard_consent_rejections_total{{{I}}}[{RI}]))', "{{channel}}")], unit="ops")
b.row("Dead letters")
b.panel("timeseries", "Dead letters by reason", "Records written to the dead-letter topic (dlq_topic): destination (a destination failed for good, or max_attempts spent) or poison (undecodable). Their headers say why, where and from which offset; `switchboard-workers replay --from dlq` routes them again.",
        [(f'sum by (reason) (rate(switchboard_dlq_records_total{{{I}}}[{RI}]))', "{{reason}}")], unit="ops")
b.panel("timeseries", "Dead letters per routed record", "Share of consumed records that ended in the dead-letter topic.",
        [(f'sum(rate(switchboard_dlq_records_total{{{I}}}[{RI}])) / sum(rate(switchboard_worker_records_total{{{I}}}[{RI}]))', "dead letters")], unit="percentunit")
routing = dashboard("switchboard-routing", "Switchboard / Routing",
                    "Routing workers (switchboard-workers): consumption from the messages topic, rule decisions, destinations.",
                    "switchboard-workers", b, LINKS)

# ---------------------------------------------------------------- agents
AGENT_NOTE = ("Human-agent routing: the queue stage of switchboard-workers assigns waiting conversations to agents. "
              "Per-queue series carry the queue name for queues listed in the config, `other` for the rest.")
b = Board()
b.text("About this dashboard",
       "The conversation stage writes agent-bound messages to the **agent-queue topic**; the owner of each queue's "
       "partition assigns them to agents (skills, capacity, sticky agent, hours, overflow, reassignment).\n\n"
       "Gauges are exported by the worker that owns the queue (0 elsewhere), so sum them over instances. "
       "Outcomes: `assigned` (policy pick), `sticky_hit`, `sticky_timeout`, `reassigned`; `overflow` and `after_hours` "
       "count moves to another queue.", h=4)
b.panel("stat", "Conversations waiting", "Conversations waiting for an agent, all queues.",
        [(f'sum(switchboard_agent_queue_depth{{{I}}})', "waiting")], w=6, h=4)
b.panel("stat", "Wait p99 (5m)", "99th percentile of the time from asking for a human to being assigned.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_agent_wait_duration_seconds_bucket{{{I}}}[5m])))', "p99")],
        unit="s", w=6, h=4, defaults=thresholds((None, "green"), (60, "orange"), (300, "red")))
b.panel("stat", "Agents online", "Agents taking new conversations, all queues.",
        [(f'sum(switchboard_agents{{presence="online",{I}}})', "online")], w=6, h=4)
b.panel("stat", "Busiest queue utilisation", "Held conversations over the capacity of online agents, in the busiest queue.",
        [(f'max(switchboard_agent_utilization_ratio{{{I}}})', "utilisation")],
        unit="percentunit", w=6, h=4, defaults=thresholds((None, "green"), (0.8, "orange"), (0.95, "red")))
b.panel("timeseries", "Queue depth by queue", "Conversations waiting per queue.",
        [(f'sum by (queue) (switchboard_agent_queue_depth{{{I}}})', "{{queue}}")])
b.panel("timeseries", "Wait time by queue", "Time to assignment per queue (p50 and p99).",
        [(f'histogram_quantile({q}, sum by (le, queue) (rate(switchboard_agent_wait_duration_seconds_bucket{{{I}}}[{RI}])))', f"{{{{queue}}}} p{int(q*100)}") for q in (0.5, 0.99)], unit="s")
b.panel("timeseries", "Assignments by outcome", "Policy outcomes: assigned, sticky hit, sticky timeout, reassigned; moves: overflow, after hours.",
        [(f'sum by (outcome) (rate(switchboard_agent_assignments_total{{{I}}}[{RI}]))', "{{outcome}}")], unit="ops")
b.panel("timeseries", "Unassignments by reason", "Conversations leaving their agent: closed, released, declined, no accept in time, agent offline.",
        [(f'sum by (reason) (rate(switchboard_agent_unassignments_total{{{I}}}[{RI}]))', "{{reason}}")], unit="ops")
b.panel("timeseries", "Agent utilisation by queue", "Held conversations over the capacity of the queue's online agents.",
        [(f'max by (queue) (switchboard_agent_utilization_ratio{{{I}}})', "{{queue}}")], unit="percentunit")
b.panel("timeseries", "Agents by presence", "Agents online, away and offline, all queues.",
        [(f'sum by (presence) (switchboard_agents{{{I}}})', "{{presence}}")])
b.panel("timeseries", "Tasks refused (queue full)", "Tasks sent to the dead-letter topic because their queue held max_waiting conversations.",
        [(f'sum by (queue) (rate(switchboard_agent_queue_refused_total{{{I}}}[{RI}]))', "{{queue}}")], unit="ops")
b.panel("timeseries", "Queue rebuilds", "Time to rebuild the queues of newly assigned partitions from the queue-state topic.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_agent_queue_rebuild_duration_seconds_bucket{{{I}}}[{RI}])))', "p99")], unit="s")
b.panel("timeseries", "Agent-queue writes", "Attempts (successful or not) and acknowledged deliveries to the agent-queue topic.",
        [(f'sum(rate(switchboard_destination_duration_seconds_count{{kind="agent",{I}}}[{RI}]))', "attempts"),
         (f'sum(rate(switchboard_destination_deliveries_total{{kind="agent",{I}}}[{RI}]))', "acknowledged")], unit="ops")
b.panel("timeseries", "Agent-queue errors", "Failed writes to the agent-queue topic; transient ones are retried.",
        [(f'sum by (instance) (rate(switchboard_destination_errors_total{{kind="agent",{I}}}[{RI}]))', "{{instance}}")], unit="ops")
b.panel("timeseries", "Agent-queue write latency", "Time for the agent-queue topic to acknowledge an AgentTask.",
        [(f'histogram_quantile({q}, sum by (le) (rate(switchboard_destination_duration_seconds_bucket{{kind="agent",{I}}}[{RI}])))', f"p{int(q*100)}") for q in (0.5, 0.99)], unit="s")
b.panel("timeseries", "Rule matches vs default", "How many messages a rule matched (agent routing is rule-driven) against the default destination.",
        [(f'sum by (matched) (rate(switchboard_route_decisions_total{{matched!="",{I}}}[{RI}]))', "{{matched}}")], unit="ops")
agents = dashboard("switchboard-agents", "Switchboard / Agents", AGENT_NOTE, "switchboard-workers", b, LINKS)

# ---------------------------------------------------------------- senders
SEND_NOTE = ("The sender stage of switchboard-workers: replies read from the outbound topics and sent to each "
             "channel's provider (WhatsApp Cloud API, Messenger/Instagram Send API, Twilio, web chat).")
FAILED = 'outcome=~"refused|misconfigured|unsendable|failed"'
b = Board()
b.text("About this dashboard",
       "Outcomes per message: `accepted` (the provider took it; its id is on the analytics record), `refused` "
       "(the provider refused it for good, e.g. WhatsApp 131047 or Twilio 21610: rejections topic), `unsendable` "
       "(no way to express it on the channel: rejections topic), `misconfigured` (credentials, sender or base URL "
       "wrong) and `failed` (still failing after max_attempts): dead-letter topic, replay once fixed; `duplicate` "
       "(a copy skipped), `poison` (undecodable).", h=4)
b.panel("stat", "Accepted/s", "Messages the providers accepted per second.",
        [(f'sum(rate(switchboard_sender_sends_total{{outcome="accepted",{I}}}[{RI}]))', "accepted")], unit="ops", w=6, h=4)
b.panel("stat", "Permanent failure ratio", "Messages refused, unsendable, misconfigured or failed for good, over all messages finished (alert: SwitchboardSenderPermanentFailures, 10% per channel).",
        [(f'sum(rate(switchboard_sender_sends_total{{{FAILED},{I}}}[{RI}])) / sum(rate(switchboard_sender_sends_total{{outcome!~"duplicate|poison",{I}}}[{RI}]))', "failed")],
        unit="percentunit", w=6, h=4, defaults=thresholds((None, "green"), (0.02, "orange"), (0.1, "red")))
b.panel("stat", "Provider call p99", "99th percentile of one provider API call, all channels.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(switchboard_sender_request_duration_seconds_bucket{{{I}}}[{RI}])))', "p99")],
        unit="s", w=6, h=4, defaults=thresholds((None, "green"), (1, "orange"), (5, "red")))
b.panel("stat", "Rate-limit waits/s", "Messages that waited for their sender's token bucket (a business sending faster than its rate).",
        [(f'sum(rate(switchboard_sender_rate_limit_wait_seconds_count{{{I}}}[{RI}]))', "waits")], unit="ops", w=6, h=4)
b.panel("timeseries", "Sends by channel and outcome", "Messages finished per second.",
        [(f'sum by (channel, outcome) (rate(switchboard_sender_sends_total{{outcome!="accepted",{I}}}[{RI}]))', "{{channel}} {{outcome}}"),
         (f'sum by (channel) (rate(switchboard_sender_sends_total{{outcome="accepted",{I}}}[{RI}]))', "{{channel}} accepted")], unit="ops")
b.panel("timeseries", "Provider call latency", "Time one provider call took, p50 and p99 by channel, whatever the answer.",
        [(f'histogram_quantile({q}, sum by (le, channel) (rate(switchboard_sender_request_duration_seconds_bucket{{{I}}}[{RI}])))', f"{{{{channel}}}} p{int(q*100)}") for q in (0.5, 0.99)], unit="s")
b.panel("timeseries", "Retries by channel and reason", "Provider calls retried: rate_limited (429, a throughput code; the sender pauses for Retry-After) or error (5xx, timeout, no connection).",
        [(f'sum by (channel, reason) (rate(switchboard_sender_retries_total{{{I}}}[{RI}]))', "{{channel}} {{reason}}")], unit="ops")
b.panel("timeseries", "Rate-limit waits", "How long calls waited for their sender's token bucket (p50 and p99 by channel; only calls that waited).",
        [(f'histogram_quantile({q}, sum by (le, channel) (rate(switchboard_sender_rate_limit_wait_seconds_bucket{{{I}}}[{RI}])))', f"{{{{channel}}}} p{int(q*100)}") for q in (0.5, 0.99)], unit="s")
b.panel("timeseries", "Sender rebalances", "Partitions of the outbound topics assigned to and revoked from this stage.",
        [(f'sum by (event) (increase(switchboard_sender_rebalances_total{{{I}}}[{RI}]))', "{{event}}")])
senders = dashboard("switchboard-senders", "Switchboard / Senders", SEND_NOTE, "switchboard-workers", b, LINKS)

for name, d in (("ingest", ingest), ("routing", routing), ("agents", agents), ("senders", senders)):
    (OUT / f"switchboard-{name}.json").write_text(json.dumps(d, indent=2) + "\n")
    print(OUT / f"switchboard-{name}.json")
