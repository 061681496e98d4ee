//! Decides where one message goes and delivers it there.
//!
//! A message is done only when every destination has acknowledged it:
//! the rule's bots and agent queues, then analytics. Transient failures are
//! retried with jittered exponential backoff, holding back only this message
//! (and so its partition); fatal ones are logged and counted.

use std::{
    collections::HashMap,
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::join_all;
use switchboard_proto::v1::{
    AgentTask, AnalyticsRecord, BotRequest, Destination, Envelope, RouteDecision, destination,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkersConfig,
    destinations::{DestinationError, bot::BotDestination, topics::TopicOutputs},
    rules::{DestinationSpec, RuleSet},
};

/// Routing stopped because the worker is shutting down or lost the partition;
/// the message was not completed and will be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("routing interrupted")]
pub struct Interrupted;

/// Routes messages according to a rule set.
pub struct Router {
    rules: Arc<RuleSet>,
    bots: HashMap<String, BotDestination>,
    outputs: TopicOutputs,
    backoff: Duration,
    backoff_max: Duration,
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
            outputs: TopicOutputs::new(
                &config.kafka,
                &config.agent_queue_topic,
                &config.analytics_topic,
            )?,
            backoff: config.retry_backoff,
            backoff_max: config.retry_backoff_max,
        })
    }

    /// Routes one envelope. Returns its decision once every destination has
    /// acknowledged it (or failed for good), or [`Interrupted`] if `stop`
    /// fired first.
    pub async fn route(
        &self,
        envelope: Envelope,
        stop: &CancellationToken,
    ) -> Result<RouteDecision, Interrupted> {
        let decision = self.rules.decide(&envelope);
        let matched = if decision.rule_id == "default" {
            "default"
        } else {
            "rule"
        };
        metrics::counter!("switchboard_route_decisions_total", "matched" => matched).increment(1);
        let route = RouteDecision {
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
        for result in join_all(deliveries).await {
            result?;
        }
        let key = envelope.conversation_key();
        let record = AnalyticsRecord {
            envelope: Some(envelope),
            decision: Some(route),
        };
        self.retrying("analytics", stop, || self.outputs.analytics(&key, &record))
            .await?;
        Ok(record.decision.expect("set above"))
    }

    async fn deliver(
        &self,
        spec: &DestinationSpec,
        envelope: &Envelope,
        route: &RouteDecision,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        match spec {
            DestinationSpec::Bot(name) => {
                let bot = &self.bots[name]; // checked when the rules were loaded
                let request = BotRequest {
                    envelope: Some(envelope.clone()),
                    decision: Some(route.clone()),
                };
                if let Some(response) = self
                    .retrying("bot", stop, || bot.handle(request.clone()))
                    .await?
                {
                    metrics::counter!("switchboard_bot_replies_total")
                        .increment(response.replies.len() as u64);
                }
            }
            DestinationSpec::Agent(queue) => {
                let task = AgentTask {
                    queue: queue.clone(),
                    envelope: Some(envelope.clone()),
                    decision: Some(route.clone()),
                };
                self.retrying("agent", stop, || self.outputs.agent(&task))
                    .await?;
            }
            // Every message reaches analytics once, after its other destinations.
            DestinationSpec::Analytics => {}
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails for good (`Ok(None)`), or
    /// `stop` fires.
    async fn retrying<T, F, Fut>(
        &self,
        kind: &'static str,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<Option<T>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let mut delay = self.backoff;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = attempt() => r,
                _ = stop.cancelled() => return Err(Interrupted),
            };
            metrics::histogram!("switchboard_destination_duration_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(value) => {
                    metrics::counter!("switchboard_route_decisions_total", "kind" => kind)
                        .increment(1);
                    return Ok(Some(value));
                }
                Err(error) => {
                    metrics::counter!("switchboard_destination_errors_total", "kind" => kind)
                        .increment(1);
                    if !error.retryable {
                        tracing::error!(%error, "giving up on destination");
                        return Ok(None);
                    }
                    tracing::warn!(%error, retry_in = ?delay, "destination failed, retrying");
                }
            }
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
