//! The workers' metrics: their names and help texts, described once the
//! Prometheus recorder is installed (`switchboard_runtime::telemetry`).

use metrics::{describe_counter, describe_gauge, describe_histogram};
use switchboard_proto::v1::Channel;

use crate::destinations::DestinationKind;

/// Describes the workers' metrics, and creates the series whose labels are
/// known in advance at zero, so the first increase after a start shows in
/// `rate()` and `increase()`.
pub fn describe() {
    describe_counter!(
        "switchboard_worker_records_total",
        "Records consumed by the routing workers, by outcome (routed, poison)."
    );
    describe_counter!(
        "switchboard_route_decisions_total",
        "Routing decisions, by whether a rule matched or the default applied."
    );
    describe_counter!(
        "switchboard_destination_deliveries_total",
        "Deliveries a destination acknowledged, by destination kind (bot, agent, analytics)."
    );
    describe_counter!(
        "switchboard_bot_replies_total",
        "Reply messages returned by bots."
    );
    describe_histogram!(
        "switchboard_destination_duration_seconds",
        metrics::Unit::Seconds,
        "Time a destination took to acknowledge a message, by destination kind."
    );
    describe_counter!(
        "switchboard_destination_errors_total",
        "Failed deliveries to a destination, by destination kind."
    );
    describe_counter!(
        "switchboard_worker_rebalances_total",
        "Partition assignments and revocations."
    );
    describe_counter!(
        "switchboard_destination_retries_total",
        "Retries of a failed delivery, by destination kind."
    );
    describe_counter!(
        "switchboard_dlq_records_total",
        "Records written to the dead-letter topic, by reason (poison, destination)."
    );
    describe_counter!(
        "switchboard_rules_reloads_total",
        "Routing rules file changes, by outcome (applied, refused)."
    );
    describe_counter!(
        "switchboard_worker_state_flushes_total",
        "Conversation-state flushes acknowledged: each writes every conversation of a partition changed since the previous one."
    );
    describe_counter!(
        "switchboard_worker_state_transactions_total",
        "Conversation-state flush transactions, by outcome: committed, retried (aborted and written again), fenced (another worker took the partition over), failed (for good)."
    );
    describe_histogram!(
        "switchboard_worker_state_flush_duration_seconds",
        metrics::Unit::Seconds,
        "Time a conversation-state flush took, from its transaction's start to its commit (retries included); a partition's messages wait for it before their offsets are committed."
    );
    describe_counter!(
        "switchboard_worker_state_write_failures_total",
        "Conversation states Kafka refused for good (e.g. too large for the state topic); the conversation goes on from memory."
    );
    describe_counter!(
        "switchboard_worker_state_rebuild_records_total",
        "State-topic records applied to the local conversation-state files while rebuilding; a rebuild's progress."
    );
    describe_counter!(
        "switchboard_worker_state_expired_total",
        "Idle conversation states expired: forgotten (a tombstone) or minimized (an opt-out kept alone)."
    );
    describe_counter!(
        "switchboard_worker_state_disk_reads_total",
        "Conversation-state lookups that missed the in-memory cache and read the local file."
    );
    describe_histogram!(
        "switchboard_worker_state_rebuild_duration_seconds",
        metrics::Unit::Seconds,
        "Time to rebuild a partition's conversation states from the state topic."
    );
    describe_gauge!(
        "switchboard_worker_consumer_lag_records",
        "Records of each partition this worker owns that it has not consumed yet (0 for partitions it does not own)."
    );
    describe_gauge!(
        "switchboard_destination_circuit_open",
        "1 while a destination's circuit breaker is open (calls fail at once without reaching it), else 0."
    );
    describe_counter!(
        "switchboard_consent_rejections_total",
        "Outbound messages refused by consent rules, by channel and reason (outside_window, no_inbound, opted_out)."
    );
    describe_counter!(
        "switchboard_ownership_changes_total",
        "Conversation ownership changes, by event (handoff to a human, release to the bot, assign to an agent)."
    );
    describe_gauge!(
        "switchboard_agent_queue_depth",
        "Conversations waiting for an agent, per queue (exported by the queue's owner)."
    );
    describe_histogram!(
        "switchboard_agent_wait_duration_seconds",
        "Time from asking for a human to being assigned an agent, per queue."
    );
    describe_counter!(
        "switchboard_agent_assignments_total",
        "Assignments by outcome (assigned, sticky_hit, sticky_timeout, reassigned) and moves to another queue (overflow, after_hours)."
    );
    describe_counter!(
        "switchboard_agent_unassignments_total",
        "Conversations leaving their agent, by reason (closed, released, declined, no_accept, agent_offline)."
    );
    describe_gauge!(
        "switchboard_agent_held_conversations",
        "Conversations held by agents, per queue."
    );
    describe_gauge!(
        "switchboard_agent_utilization_ratio",
        "Held conversations over the capacity of the queue's online agents."
    );
    describe_gauge!(
        "switchboard_agents",
        "Agents per queue by presence (online, away, offline)."
    );
    describe_counter!(
        "switchboard_agent_queue_refused_total",
        "Tasks sent to the dead-letter topic because their queue held max_waiting conversations."
    );
    describe_counter!(
        "switchboard_agent_queue_rebalances_total",
        "Queue-stage partition rebalances, by event (assign, revoke)."
    );
    describe_histogram!(
        "switchboard_agent_queue_rebuild_duration_seconds",
        "Time to rebuild newly assigned partitions' queues from the queue-state topic."
    );
    describe_counter!(
        "switchboard_agent_queue_undecodable_total",
        "Queue-topic records that could not be decoded and were skipped."
    );
    describe_histogram!(
        "switchboard_end_to_end_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a message's received_at at the ingestion node until every destination acknowledged it."
    );
    describe_counter!(
        "switchboard_worker_partition_held_back_total",
        "Times a partition stopped taking messages because max_finished_ahead_per_partition \
         messages were done above its oldest unfinished one"
    );
    describe_counter!(
        "switchboard_dlq_write_failures_total",
        "Dead letters the dead-letter topic refused for good (even without payload); logged"
    );
    describe_counter!(
        "switchboard_agent_queue_unknown_total",
        "Agent tasks for a queue name neither the config nor the rules know, sent to the \
         tenant's default queue"
    );
    describe_counter!(
        "switchboard_agent_queue_trimmed_messages_total",
        "Held messages dropped or kept without content to stay within held_messages_max_bytes \
         or the queue snapshot's size limit, by queue"
    );
    zero_known_series();
    crate::senders::metrics::describe();
    crate::broadcast::metrics::describe();
    crate::customers::metrics::describe();
}

fn zero_known_series() {
    for outcome in ["routed", "poison", "duplicate", "skipped"] {
        metrics::counter!("switchboard_worker_records_total", "outcome" => outcome).absolute(0);
    }
    for kind in DestinationKind::ALL.map(DestinationKind::label) {
        metrics::counter!("switchboard_destination_errors_total", "kind" => kind).absolute(0);
        metrics::counter!("switchboard_destination_deliveries_total", "kind" => kind).absolute(0);
    }
    for outcome in ["committed", "retried", "fenced", "failed"] {
        metrics::counter!(crate::state::TRANSACTIONS, "outcome" => outcome).absolute(0);
    }
    for reason in ["poison", "destination"] {
        metrics::counter!("switchboard_dlq_records_total", "reason" => reason).absolute(0);
    }
    for channel in Channel::KNOWN.map(Channel::slug) {
        for reason in ["outside_window", "no_inbound", "opted_out"] {
            metrics::counter!("switchboard_consent_rejections_total", "channel" => channel, "reason" => reason)
                .absolute(0);
        }
    }
    for event in ["handoff", "release", "assign"] {
        metrics::counter!("switchboard_ownership_changes_total", "event" => event).absolute(0);
    }
}
