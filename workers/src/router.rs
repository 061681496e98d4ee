//! Decides where one message goes and delivers it there.
//!
//! A message is done when every destination of its rule has acknowledged it
//! or has failed for good, and analytics has it. Transient failures are
//! retried with jittered exponential backoff, up to `max_attempts` per
//! destination; this holds back only the message's own conversation. A
//! destination that fails for good (a fatal error, or the retry budget
//! spent) sends the message to the dead-letter topic, with headers saying
//! why, and the conversation continues.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::join_all;
use prost::Message as _;
use switchboard_proto::v1::{
    AgentTask, AnalyticsRecord, BotRequest, Destination, Envelope, RouteDecision, destination,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkersConfig,
    destinations::{
        DestinationError,
        bot::BotDestination,
        topics::{DeadLetter, TopicOutputs},
    },
    rules::{DestinationSpec, RuleSet},
};

/// Routing stopped because the worker is shutting down or lost the partition;
/// the message was not completed and will be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("routing interrupted")]
pub struct Interrupted;

/// Where a message was read from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A destination that failed for good.
struct Failure {
    destination: String,
    error: DestinationError,
    attempts: u32,
}

/// Routes messages according to a rule set.
pub struct Router {
    rules: Arc<RuleSet>,
    bots: HashMap<String, BotDestination>,
    outputs: TopicOutputs,
    backoff: Duration,
    backoff_max: Duration,
    max_attempts: u32,
}

impl Router {
    /// Loads the rules and creates the bot clients and the producer.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let known: HashSet<&str> = config.bots.keys().map(String::as_str).collect();
        let rules = match &config.rules_file {
            Some(path) => RuleSet::load(path, &known)?,
            None => RuleSet::default(),
        };
        let bots = config
            .bots
            .iter()
            .map(|(name, c)| Ok((name.clone(), BotDestination::new(name, c)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            rules: Arc::new(rules),
            bots,
            outputs: TopicOutputs::new(config)?,
            backoff: config.retry_backoff,
            backoff_max: config.retry_backoff_max,
            max_attempts: config.max_attempts,
        })
    }

    /// Routes one envelope read from `source`. Returns its decision once
    /// every destination has acknowledged it or failed for good (and was
    /// dead-lettered), or [`Interrupted`] if `stop` fired first.
    pub async fn route(
        &self,
        envelope: Envelope,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<RouteDecision, Interrupted> {
        let decision = self.rules.decide(&envelope);
        let matched = if decision.rule_id == "default" {
            "default"
        } else {
            "rule"
        };
        metrics::counter!("switchboard_route_decisions_total", "matched" => matched).increment(1);
        let mut route = RouteDecision {
            message_id: envelope.message_id.clone(),
            rule_id: decision.rule_id.to_owned(),
            reason: if decision.rule_id == "default" {
                "no rule matched".to_owned()
            } else {
                format!("matched rule {}", decision.rule_id)
            },
            destinations: decision.destinations.iter().map(to_proto).collect(),
            decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
        };
        let deliveries = decision
            .destinations
            .iter()
            .map(|spec| self.deliver(spec, &envelope, &route, stop));
        let mut failures = Vec::new();
        for result in join_all(deliveries).await {
            failures.extend(result?);
        }
        let key = envelope.conversation_key();
        for failure in &failures {
            route.reason.push_str(&format!(
                "; {} failed, sent to the dead-letter topic",
                failure.destination
            ));
            let letter = DeadLetter {
                key: &key,
                payload: envelope.encode_to_vec(),
                error: failure.error.to_string(),
                destination: &failure.destination,
                attempts: failure.attempts,
                source,
            };
            self.dead_letter("destination", &letter, stop).await?;
        }
        let record = AnalyticsRecord {
            envelope: Some(envelope),
            decision: Some(route),
        };
        self.retrying("analytics", 0, stop, || {
            self.outputs.analytics(&key, &record)
        })
        .await?
        .map_err(|_| Interrupted)?;
        Ok(record.decision.expect("set above"))
    }

    /// Sends a record that cannot be decoded straight to the dead-letter topic.
    pub async fn dead_letter_poison(
        &self,
        payload: &[u8],
        error: &str,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let letter = DeadLetter {
            key: "",
            payload: payload.to_vec(),
            error: format!("undecodable: {error}"),
            destination: "none",
            attempts: 0,
            source,
        };
        self.dead_letter("poison", &letter, stop).await
    }

    /// Writes to the dead-letter topic, retrying until Kafka takes it.
    async fn dead_letter(
        &self,
        reason: &'static str,
        letter: &DeadLetter<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            reason,
            destination = letter.destination,
            partition = letter.source.partition,
            offset = letter.source.offset,
            "message sent to the dead-letter topic"
        );
        self.retrying("dlq", 0, stop, || self.outputs.dead_letter(letter))
            .await?
            .map_err(|_| Interrupted)?;
        metrics::counter!("switchboard_dlq_records_total", "reason" => reason).increment(1);
        Ok(())
    }

    /// Delivers to one destination; `Some` when it failed for good.
    async fn deliver(
        &self,
        spec: &DestinationSpec,
        envelope: &Envelope,
        route: &RouteDecision,
        stop: &CancellationToken,
    ) -> Result<Option<Failure>, Interrupted> {
        let (destination, outcome) = match spec {
            DestinationSpec::Bot(name) => {
                let bot = &self.bots[name]; // checked when the rules were loaded
                let request = BotRequest {
                    envelope: Some(envelope.clone()),
                    decision: Some(route.clone()),
                };
                let outcome = self
                    .retrying("bot", self.max_attempts, stop, || {
                        bot.handle(request.clone())
                    })
                    .await?;
                if let Ok(response) = &outcome {
                    metrics::counter!("switchboard_bot_replies_total")
                        .increment(response.replies.len() as u64);
                }
                (format!("bot:{name}"), outcome.map(|_| ()))
            }
            DestinationSpec::Agent(queue) => {
                let task = AgentTask {
                    queue: queue.clone(),
                    envelope: Some(envelope.clone()),
                    decision: Some(route.clone()),
                };
                let outcome = self
                    .retrying("agent", self.max_attempts, stop, || {
                        self.outputs.agent(&task)
                    })
                    .await?;
                (format!("agent:{queue}"), outcome)
            }
            // Every message reaches analytics once, after its other destinations.
            DestinationSpec::Analytics => return Ok(None),
        };
        Ok(outcome.err().map(|(error, attempts)| Failure {
            destination,
            error,
            attempts,
        }))
    }

    /// Runs `attempt` until it succeeds, fails for good (a fatal error, or
    /// `max_attempts` attempts; 0 means no limit), or `stop` fires.
    async fn retrying<T, F, Fut>(
        &self,
        kind: &'static str,
        max_attempts: u32,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<Result<T, (DestinationError, u32)>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let mut delay = self.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = tokio::select! {
                r = attempt() => r,
                _ = stop.cancelled() => return Err(Interrupted),
            };
            metrics::histogram!("switchboard_destination_duration_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(value) => {
                    metrics::counter!("switchboard_destination_deliveries_total", "kind" => kind)
                        .increment(1);
                    return Ok(Ok(value));
                }
                Err(error) => error,
            };
            metrics::counter!("switchboard_destination_errors_total", "kind" => kind).increment(1);
            if !error.retryable || (max_attempts > 0 && attempts >= max_attempts) {
                tracing::error!(%error, attempts, "giving up on destination");
                return Ok(Err((error, attempts)));
            }
            tracing::warn!(%error, retry_in = ?delay, "destination failed, retrying");
            metrics::counter!("switchboard_destination_retries_total", "kind" => kind).increment(1);
            let jittered = delay.mul_f64(rand::random_range(0.5..1.0));
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = stop.cancelled() => return Err(Interrupted),
            }
            delay = (delay * 2).min(self.backoff_max);
        }
    }
}

fn to_proto(spec: &DestinationSpec) -> Destination {
    Destination {
        kind: Some(match spec {
            DestinationSpec::Bot(name) => destination::Kind::Bot(name.clone()),
            DestinationSpec::Agent(queue) => destination::Kind::AgentQueue(queue.clone()),
            DestinationSpec::Analytics => destination::Kind::Analytics(true),
        }),
    }
}
