//! Decides where one message goes and delivers it there.
//!
//! A message is done when every destination of its rule has acknowledged it
//! or has failed for good, and analytics has it. Transient failures are
//! retried with jittered exponential backoff, up to `max_attempts` per
//! destination; this holds back only the message's own conversation. A
//! destination that fails for good (a fatal error, or the retry budget
//! spent) sends the message to the dead-letter topic, with headers saying
//! why, and the conversation continues.
//!
//! The rules file is re-read when it changes; a file that does not load is
//! refused and the previous rules keep routing.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use switchboard_broker::trace::TraceParent;

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
    rules::{DestinationSpec, RuleSet, RulesError},
};

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

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
    /// This worker's span of the message's trace, sent on to bots and in
    /// the headers of everything written for the message.
    pub trace: TraceParent,
}

/// A destination that failed for good.
struct Failure {
    destination: String,
    error: DestinationError,
    attempts: u32,
}

/// The rules file and what its last accepted version was.
struct RulesSource {
    path: PathBuf,
    known_bots: HashSet<String>,
    modified: Mutex<Option<SystemTime>>,
}

/// Routes messages according to a rule set.
pub struct Router {
    rules: ArcSwap<RuleSet>,
    source: Option<RulesSource>,
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
        let (rules, source) = match &config.rules_file {
            Some(path) => {
                let modified = modified(path);
                let rules = RuleSet::load(path, &known)?;
                let known_bots = known.iter().map(|b| (*b).to_owned()).collect();
                (
                    rules,
                    Some(RulesSource {
                        path: path.clone(),
                        known_bots,
                        modified: Mutex::new(modified),
                    }),
                )
            }
            None => (RuleSet::default(), None),
        };
        let bots = config
            .bots
            .iter()
            .map(|(name, c)| Ok((name.clone(), BotDestination::new(name, c)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            rules: ArcSwap::from_pointee(rules),
            source,
            bots,
            outputs: TopicOutputs::new(config)?,
            backoff: config.retry_backoff,
            backoff_max: config.retry_backoff_max,
            max_attempts: config.max_attempts,
        })
    }

    /// Re-reads the rules file if it changed since the last accepted
    /// version. A file that does not load is refused and the current rules
    /// stay; the same file is not tried again until it changes.
    pub fn reload_rules_if_changed(&self) -> Result<bool, RulesError> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let modified = modified(&source.path);
        {
            let mut last = source.modified.lock().expect("rules lock");
            if *last == modified {
                return Ok(false);
            }
            *last = modified;
        }
        let known: HashSet<&str> = source.known_bots.iter().map(String::as_str).collect();
        match RuleSet::load(&source.path, &known) {
            Ok(rules) => {
                self.rules.store(Arc::new(rules));
                metrics::counter!("switchboard_rules_reloads_total", "outcome" => "applied")
                    .increment(1);
                Ok(true)
            }
            Err(e) => {
                metrics::counter!("switchboard_rules_reloads_total", "outcome" => "refused")
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Checks the rules file every `interval` until `stop` fires.
    pub fn spawn_rules_reloader(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        if self.source.is_none() {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
                match router.reload_rules_if_changed() {
                    Ok(true) => tracing::info!("routing rules reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "new routing rules refused; the previous rules stay in force")
                    }
                }
            }
        });
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
        let rules = self.rules.load();
        let decision = rules.decide(&envelope);
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
            .map(|spec| self.deliver(spec, &envelope, &route, &source.trace, stop));
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
            self.outputs.analytics(&key, &record, &source.trace)
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
        trace: &TraceParent,
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
                        bot.handle(request.clone(), trace)
                    })
                    .await?;
                if let Ok(response) = &outcome {
                    metrics::counter!("switchboard_bot_replies_total")
                        .increment(response.replies.len() as u64);
                    // Replies go back into the pipeline, to the channel's outbound topic.
                    for reply in &response.replies {
                        let reply = as_reply(reply, envelope);
                        self.retrying("outbound", 0, stop, || self.outputs.outbound(&reply, trace))
                            .await?
                            .map_err(|_| Interrupted)?;
                    }
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
                        self.outputs.agent(&task, trace)
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

/// A bot's reply as an outbound envelope of the conversation it answers:
/// the conversation's tenant, channel, id and parties, `OUTBOUND`, and a
/// fresh message id unless the bot set its own.
fn as_reply(reply: &Envelope, to: &Envelope) -> Envelope {
    let mut reply = reply.clone();
    reply.tenant_id.clone_from(&to.tenant_id);
    reply.channel = to.channel;
    reply.conversation_id.clone_from(&to.conversation_id);
    reply.direction = switchboard_proto::v1::Direction::Outbound as i32;
    if reply.customer.is_none() {
        reply.customer.clone_from(&to.customer);
    }
    if reply.business.is_none() {
        reply.business.clone_from(&to.business);
    }
    if reply.message_id.is_empty() {
        reply.message_id = uuid::Uuid::now_v7().to_string();
    }
    if reply.received_at.is_none() {
        reply.received_at = Some(switchboard_proto::timestamp(SystemTime::now()));
    }
    reply
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
