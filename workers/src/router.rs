//! Decides where one message goes and delivers it there.
//!
//! A message is done when every destination of its rule has acknowledged it
//! or has failed for good, and analytics has it. Transient failures are
//! retried with jittered exponential backoff, up to `max_attempts` per
//! destination; this holds back only the message's own conversation. A
//! destination that fails for good (a fatal error, or the retry budget
//! spent) sends the message to the dead-letter topic, with headers saying
//! why, and the conversation continues. Kafka writes (outbound, rejections,
//! state, analytics) are retried without limit while their errors are
//! retryable; one Kafka refuses for good (a record too large for the
//! topic, no authorization, no such topic) dead-letters the message too,
//! so it never holds its partition back forever.
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
use switchboard_runtime::retry::{self, Backoff};
use switchboard_runtime::trace::TraceParent;

use futures::future::join_all;
use prost::Message as _;
use switchboard_proto::v1::{
    AgentTask, AnalyticsRecord, BotRequest, ConversationControl, ConversationState, Destination,
    Direction, Envelope, Owner, QueueEvent, Rejection, RouteDecision,
    conversation_control::Action as ControlAction, destination, envelope::Content, queue_event,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkersConfig,
    destinations::{
        DestinationError, DestinationKind as Kind,
        bot::BotDestination,
        topics::{DeadLetter, Source, TopicOutputs},
    },
    rules::{DestinationSpec, RuleSet, RulesError},
    state::{
        consent::{ConsentPolicy, Refusal},
        effects,
    },
};

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A routed message's last writes, handed to the producer in the
/// conversation's order and not yet acknowledged.
pub type Settling<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), Interrupted>> + Send + 'a>>;

/// Routing stopped because the worker is shutting down or lost the partition;
/// the message was not completed and will be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("routing interrupted")]
pub struct Interrupted;

/// What delivering to one destination led to.
#[derive(Default)]
struct Delivered {
    /// The destination (or a bot reply's write) failed for good.
    failures: Vec<Failure>,
    /// A bot asked for a human: the bot's name and the agent queue.
    handoff: Option<(String, String)>,
}

/// What a delivery attempt writes to: the `kind` label of destination metrics.
/// One destination kind's metric handles.
struct DestinationMetrics {
    duration: metrics::Histogram,
    deliveries: metrics::Counter,
    errors: metrics::Counter,
    retries: metrics::Counter,
}

/// Metric handles taken once, so routing looks no label up per message.
struct RouterMetrics {
    end_to_end: metrics::Histogram,
    handoffs: metrics::Counter,
    releases: metrics::Counter,
    assigns: metrics::Counter,
    matched_rule: metrics::Counter,
    matched_default: metrics::Counter,
    bot_replies: metrics::Counter,
    destinations: [DestinationMetrics; Kind::ALL.len()],
}

impl RouterMetrics {
    fn new() -> Self {
        let ownership = |event: &'static str| metrics::counter!("switchboard_ownership_changes_total", "event" => event);
        let matched = |m: &'static str| metrics::counter!("switchboard_route_decisions_total", "matched" => m);
        Self {
            end_to_end: metrics::histogram!("switchboard_end_to_end_duration_seconds"),
            handoffs: ownership("handoff"),
            releases: ownership("release"),
            assigns: ownership("assign"),
            matched_rule: matched("rule"),
            matched_default: matched("default"),
            bot_replies: metrics::counter!("switchboard_bot_replies_total"),
            destinations: Kind::ALL.map(|kind| kind.label()).map(|kind| DestinationMetrics {
                duration: metrics::histogram!("switchboard_destination_duration_seconds", "kind" => kind),
                deliveries: metrics::counter!("switchboard_destination_deliveries_total", "kind" => kind),
                errors: metrics::counter!("switchboard_destination_errors_total", "kind" => kind),
                retries: metrics::counter!("switchboard_destination_retries_total", "kind" => kind),
            }),
        }
    }

    /// The handles of destination kind `kind`.
    fn destination(&self, kind: Kind) -> &DestinationMetrics {
        &self.destinations[kind as usize]
    }

    fn ownership(&self, action: ControlAction) {
        match action {
            ControlAction::Handoff => self.handoffs.increment(1),
            ControlAction::Release => self.releases.increment(1),
            ControlAction::Assign => self.assigns.increment(1),
            ControlAction::Unspecified => {}
        }
    }
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
    consent: ConsentPolicy,
    handoff_queue: String,
    /// Agent queue names the config knows (with `handoff_queue`); the
    /// rules' own are known too.
    known_queues: HashSet<String>,
    recent_message_ids: usize,
    metrics: RouterMetrics,
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
            outputs: TopicOutputs::new(&config.outputs())?,
            backoff: config.retry_backoff,
            backoff_max: config.retry_backoff_max,
            max_attempts: config.max_attempts,
            consent: config.consent(),
            handoff_queue: config.handoff_queue.clone(),
            known_queues: config
                .agents
                .known_queues()
                .chain([config.handoff_queue.as_str()])
                .map(str::to_owned)
                .collect(),
            recent_message_ids: config.recent_message_ids,
            metrics: RouterMetrics::new(),
        })
    }

    /// The agent queue a message for queue `name` goes to: `name` if the
    /// config or the rules know it, else the default handoff queue. Names
    /// come from bots and control events too, so a tenant cannot make up
    /// queues (each would be a book, a snapshot and metrics).
    pub fn queue_for(&self, name: &str) -> String {
        if self.known_queues.contains(name) || self.rules.load().agent_queues().any(|q| q == name) {
            return name.to_owned();
        }
        tracing::debug!(queue = name, default = %self.handoff_queue, "unknown agent queue; the default queue instead");
        metrics::counter!("switchboard_agent_queue_unknown_total").increment(1);
        self.handoff_queue.clone()
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

    /// Routes one envelope read from `source`, of a conversation in
    /// `state`. Returns the conversation's new state (the decision goes to
    /// analytics with the message) once every destination has acknowledged it or failed for good (and was
    /// dead-lettered); or [`Interrupted`] if `stop` fired first. The new
    /// state and the analytics record are already handed to the producer
    /// then, in the conversation's order, but not yet acknowledged: the
    /// returned [`Settling`] waits for that. The conversation's next message
    /// need not wait for it (Kafka keeps one key's records in order); the
    /// message's offset must.
    ///
    /// - A control event changes the conversation's owner and goes to
    ///   analytics only.
    /// - An `OUTBOUND` message is checked against consent: refused, it goes
    ///   to the rejections topic (and analytics) only; allowed, to the
    ///   channel's outbound topic and the matching rule's destinations.
    /// - While a human owns the conversation, bot destinations are replaced
    ///   by the owner's agent queue. A bot's reply goes out (if consent
    ///   allows); a bot's handoff makes the conversation human-owned.
    pub async fn route<'a>(
        &'a self,
        envelope: Envelope,
        mut state: ConversationState,
        source: Source<'a>,
        stop: &'a CancellationToken,
    ) -> Result<(ConversationState, Settling<'a>), Interrupted> {
        let key = envelope.conversation_key();
        let mut changed = effects::apply_message(&mut state, &envelope, &self.handoff_queue);
        if !state.queue.is_empty() {
            let queue = self.queue_for(&state.queue);
            if queue != state.queue {
                state.queue = queue;
                changed = true;
            }
        }
        let human_owned = state.owner() == Owner::Human;
        let rules = self.rules.load();
        let mut route = RouteDecision {
            message_id: envelope.message_id.clone(),
            decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
            ..Default::default()
        };
        let mut targets = Vec::new();
        let mut failures = Vec::new();
        if let Some(Content::Control(control)) = &envelope.content {
            route.rule_id = "control".into();
            route.reason = control_reason(control, &state);
            self.metrics.ownership(control.action());
        } else if envelope.direction() == Direction::Outbound
            && let Err(refusal) = self.consent.check(&envelope, &state, now_of(&envelope))
        {
            route.rule_id = "consent".into();
            route.reason = format!("rejected ({}): {}", refusal.label(), refusal.detail);
            // Rare paths are boxed, so the common path's future stays
            // small (a large one is copied whole on every move).
            failures.extend(
                Box::pin(self.reject(&key, &envelope, refusal, &source.trace, stop)).await?,
            );
        } else {
            let decision = rules.decide(&envelope, human_owned);
            if !decision.matched {
                route.reason = "no rule matched".to_owned();
                self.metrics.matched_default.increment(1);
            } else {
                route.reason = format!("matched rule {}", decision.rule_id);
                self.metrics.matched_rule.increment(1);
            }
            decision.rule_id.clone_into(&mut route.rule_id);
            if envelope.direction() == Direction::Outbound {
                targets.push(DestinationSpec::Outbound);
            }
            for spec in decision.destinations {
                match spec {
                    DestinationSpec::Bot(bot) if human_owned => {
                        route.reason.push_str(&format!(
                            "; human-owned, so agent queue {} instead of bot {bot}",
                            state.queue
                        ));
                        push_new(&mut targets, DestinationSpec::Agent(state.queue.clone()));
                    }
                    spec => push_new(&mut targets, spec.clone()),
                }
            }
        }
        route.destinations = targets.iter().map(to_proto).collect();
        let deliveries = targets
            .iter()
            .map(|spec| self.deliver(spec, &envelope, &route, &state, &source.trace, stop));
        let mut handoffs = Vec::new();
        for outcome in join_all(deliveries).await {
            let outcome = outcome?;
            failures.extend(outcome.failures);
            handoffs.extend(outcome.handoff);
        }
        // The message that asked for a human is the queue's first task.
        for (bot, queue) in handoffs {
            let queue = self.queue_for(&queue);
            route
                .reason
                .push_str(&format!("; bot {bot} handed off to agent queue {queue}"));
            effects::hand_to_human(&mut state, &queue, &bot);
            changed = true;
            self.metrics.handoffs.increment(1);
            let spec = DestinationSpec::Agent(queue);
            if targets.contains(&spec) {
                continue; // the rule already sent it to that queue
            }
            route.destinations.push(to_proto(&spec));
            let outcome =
                Box::pin(self.deliver(&spec, &envelope, &route, &state, &source.trace, stop))
                    .await?;
            failures.extend(outcome.failures);
        }
        for failure in &failures {
            route.reason.push_str(&format!(
                "; {} failed, sent to the dead-letter topic",
                failure.destination
            ));
            Box::pin(self.dead_letter_failure(&key, &envelope, failure, source, stop)).await?;
        }
        changed |= effects::remember(&mut state, &envelope, self.recent_message_ids);
        if changed {
            effects::touch(&mut state);
        }
        let received = envelope
            .received_at
            .as_ref()
            .and_then(switchboard_proto::system_time);
        let record = AnalyticsRecord {
            envelope: Some(envelope),
            decision: Some(route),
        };
        let written_state = changed.then(|| state.clone());
        let mut settling: Settling<'a> = Box::pin(async move {
            // The state and analytics writes are independent: both must
            // land before the offset is stored, neither waits for the other.
            let trace = source.trace;
            let write_state = async {
                let Some(state) = &written_state else {
                    return Ok(None);
                };
                self.write(Kind::State, stop, || {
                    self.outputs.state(&key, state, &trace)
                })
                .await
            };
            let write_analytics = self.write(Kind::Analytics, stop, || {
                self.outputs.analytics(&key, &record, &trace)
            });
            let (state_failed, analytics_failed) =
                futures::try_join!(write_state, write_analytics)?;
            // Refused for good (e.g. too large for the topic): the message
            // goes to the dead-letter topic instead, and the partition moves on.
            for failure in state_failed.iter().chain(&analytics_failed) {
                let envelope = record.envelope.as_ref().expect("set above");
                Box::pin(self.dead_letter_failure(&key, envelope, failure, source, stop)).await?;
            }
            if let Some(received) = received {
                self.metrics
                    .end_to_end
                    .record(received.elapsed().unwrap_or_default().as_secs_f64());
            }
            Ok(())
        });
        // One poll hands both records to the producer now, in the
        // conversation's order; their acknowledgements are awaited later.
        if let std::task::Poll::Ready(done) = futures::poll!(settling.as_mut()) {
            settling = Box::pin(std::future::ready(done));
        }
        Ok((state, settling))
    }

    /// Publishes a refused outbound message to the rejections topic.
    async fn reject(
        &self,
        key: &str,
        envelope: &Envelope,
        refusal: Refusal,
        trace: &TraceParent,
        stop: &CancellationToken,
    ) -> Result<Option<Failure>, Interrupted> {
        tracing::info!(
            reason = refusal.label(),
            channel = envelope.channel().slug(),
            "outbound message refused by consent rules"
        );
        metrics::counter!(
            "switchboard_consent_rejections_total",
            "channel" => envelope.channel().slug(),
            "reason" => refusal.label()
        )
        .increment(1);
        let rejection = Rejection {
            envelope: Some(envelope.clone()),
            reason: refusal.reason as i32,
            detail: refusal.detail,
            rejected_at: Some(switchboard_proto::timestamp(SystemTime::now())),
        };
        self.write(Kind::Rejections, stop, || {
            self.outputs.rejection(key, &rejection, trace)
        })
        .await
    }

    /// Sends an outbound message to its channel's outbound topic if consent
    /// allows it, else to the rejections topic.
    async fn send_outbound(
        &self,
        envelope: &Envelope,
        state: &ConversationState,
        trace: &TraceParent,
        stop: &CancellationToken,
    ) -> Result<Option<Failure>, Interrupted> {
        if let Err(refusal) = self.consent.check(envelope, state, now_of(envelope)) {
            return self
                .reject(&envelope.conversation_key(), envelope, refusal, trace, stop)
                .await;
        }
        self.write(Kind::Outbound, stop, || {
            self.outputs.outbound(envelope, trace)
        })
        .await
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

    /// Dead-letters `envelope` for a destination that failed for good.
    async fn dead_letter_failure(
        &self,
        key: &str,
        envelope: &Envelope,
        failure: &Failure,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let letter = DeadLetter {
            key,
            payload: envelope.encode_to_vec(),
            error: failure.error.to_string(),
            destination: &failure.destination,
            attempts: failure.attempts,
            source,
        };
        self.dead_letter("destination", &letter, stop).await
    }

    /// Writes to the dead-letter topic, retrying while Kafka's errors are
    /// retryable. If Kafka refuses the letter for good (e.g. too large for
    /// the dead-letter topic), it is written again without the payload;
    /// the headers still say where the original is. If that is refused
    /// too, the error is logged and counted, and routing moves on.
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
        let Err((error, _)) = self
            .retrying(Kind::Dlq, 0, stop, || self.outputs.dead_letter(letter))
            .await?
        else {
            metrics::counter!("switchboard_dlq_records_total", "reason" => reason).increment(1);
            return Ok(());
        };
        let stripped = DeadLetter {
            payload: Vec::new(),
            error: format!("{}; payload left out: {error}", letter.error),
            ..*letter
        };
        match self
            .retrying(Kind::Dlq, 0, stop, || self.outputs.dead_letter(&stripped))
            .await?
        {
            Ok(()) => {
                metrics::counter!("switchboard_dlq_records_total", "reason" => reason).increment(1);
            }
            Err((error, _)) => {
                tracing::error!(%error, partition = letter.source.partition, offset = letter.source.offset,
                    "the dead-letter topic refused the letter for good; the message is left in its topic only");
                metrics::counter!("switchboard_dlq_write_failures_total").increment(1);
            }
        }
        Ok(())
    }

    /// A Kafka write that must land: retried while its errors are
    /// retryable; a fatal error is returned as the failure of
    /// `destination`, for the dead-letter topic.
    async fn write<F, Fut>(
        &self,
        kind: Kind,
        stop: &CancellationToken,
        attempt: F,
    ) -> Result<Option<Failure>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), DestinationError>>,
    {
        Ok(self
            .retrying(kind, 0, stop, attempt)
            .await?
            .err()
            .map(|(error, attempts)| Failure {
                destination: kind.label().to_owned(),
                error,
                attempts,
            }))
    }

    /// Delivers to one destination.
    async fn deliver(
        &self,
        spec: &DestinationSpec,
        envelope: &Envelope,
        route: &RouteDecision,
        state: &ConversationState,
        trace: &TraceParent,
        stop: &CancellationToken,
    ) -> Result<Delivered, Interrupted> {
        let mut delivered = Delivered::default();
        let (destination, outcome) = match spec {
            DestinationSpec::Bot(name) => {
                let bot = &self.bots[name]; // checked when the rules were loaded
                let request = BotRequest {
                    envelope: Some(envelope.clone()),
                    decision: Some(route.clone()),
                };
                let outcome = self
                    .retrying(Kind::Bot, self.max_attempts, stop, || {
                        bot.handle(request.clone(), trace)
                    })
                    .await?;
                if let Ok(response) = &outcome {
                    self.metrics
                        .bot_replies
                        .increment(response.replies.len() as u64);
                    // Replies go back into the pipeline, to the channel's outbound topic.
                    for reply in &response.replies {
                        delivered.failures.extend(
                            self.send_outbound(&as_reply(reply, envelope), state, trace, stop)
                                .await?,
                        );
                    }
                    if response.handoff {
                        let queue = if response.handoff_queue.is_empty() {
                            self.handoff_queue.clone()
                        } else {
                            response.handoff_queue.clone()
                        };
                        delivered.handoff = Some((name.clone(), queue));
                    }
                }
                (format!("bot:{name}"), outcome.map(|_| ()))
            }
            DestinationSpec::Agent(queue) => {
                // The tenant's own queue: tenants never share one.
                let queue = self.queue_for(queue);
                let key = crate::agents::queue_key(&envelope.tenant_id, &queue);
                let task = QueueEvent {
                    queue: key.clone(),
                    event: Some(queue_event::Event::Task(AgentTask {
                        queue: key,
                        envelope: Some(envelope.clone()),
                        decision: Some(route.clone()),
                    })),
                };
                let outcome = self
                    .retrying(Kind::Agent, self.max_attempts, stop, || {
                        self.outputs.queue_event(&task, trace)
                    })
                    .await?;
                (format!("agent:{queue}"), outcome)
            }
            DestinationSpec::Outbound => {
                // Consent was checked before the message was routed.
                delivered.failures.extend(
                    self.write(Kind::Outbound, stop, || {
                        self.outputs.outbound(envelope, trace)
                    })
                    .await?,
                );
                return Ok(delivered);
            }
            // Every message reaches analytics once, after its other destinations.
            DestinationSpec::Analytics => return Ok(delivered),
        };
        delivered
            .failures
            .extend(outcome.err().map(|(error, attempts)| Failure {
                destination,
                error,
                attempts,
            }));
        Ok(delivered)
    }

    /// Runs `attempt` until it succeeds, fails for good (a fatal error, or
    /// `max_attempts` attempts; 0 means no limit), or `stop` fires, with
    /// the router's backoff; each attempt is timed and counted.
    async fn retrying<T, F, Fut>(
        &self,
        kind: Kind,
        max_attempts: u32,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<Result<T, (DestinationError, u32)>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let handles = self.metrics.destination(kind);
        let outcome = retry::retry(
            Backoff::new(self.backoff, self.backoff_max).attempts(max_attempts),
            stop,
            |error: &DestinationError| error.retryable,
            |error, _, wait| {
                tracing::warn!(%error, retry_in = ?wait, "destination failed, retrying");
                handles.retries.increment(1);
            },
            || {
                let started = Instant::now();
                let attempt = attempt();
                async move {
                    let result = attempt.await;
                    handles.duration.record(started.elapsed().as_secs_f64());
                    match &result {
                        Ok(_) => handles.deliveries.increment(1),
                        Err(_) => handles.errors.increment(1),
                    }
                    result
                }
            },
        )
        .await
        .map_err(|retry::Cancelled| Interrupted)?;
        if let Err((error, attempts)) = &outcome {
            tracing::error!(%error, attempts, "giving up on destination");
        }
        Ok(outcome)
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

/// The time an outbound message is judged at: when Switchboard received it
/// (so a replay judges it as it was), else now.
fn now_of(envelope: &Envelope) -> SystemTime {
    envelope
        .received_at
        .as_ref()
        .and_then(switchboard_proto::system_time)
        .unwrap_or_else(SystemTime::now)
}

/// The decision's reason for a control event.
fn control_reason(control: &ConversationControl, state: &ConversationState) -> String {
    let why = if control.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", control.reason)
    };
    match control.action() {
        ControlAction::Handoff => format!("handed off to agent queue {}{why}", state.queue),
        ControlAction::Release => format!("released back to the bot{why}"),
        ControlAction::Assign => format!("assigned to agent {}{why}", control.agent_id),
        ControlAction::Unspecified => "control event without an action".to_owned(),
    }
}

/// Adds `spec` to `targets` unless it is there already: a message reaches
/// each destination once.
fn push_new(targets: &mut Vec<DestinationSpec>, spec: DestinationSpec) {
    if !targets.contains(&spec) {
        targets.push(spec);
    }
}

fn to_proto(spec: &DestinationSpec) -> Destination {
    Destination {
        kind: Some(match spec {
            DestinationSpec::Bot(name) => destination::Kind::Bot(name.clone()),
            DestinationSpec::Agent(queue) => destination::Kind::AgentQueue(queue.clone()),
            DestinationSpec::Analytics => destination::Kind::Analytics(true),
            DestinationSpec::Outbound => destination::Kind::Outbound(true),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_queue_nobody_configured_is_the_default_queue() {
        let mut config = WorkersConfig::default();
        config.agents.queues.insert(
            "vip".into(),
            crate::agents::config::QueueConfig {
                overflow_queue: Some("tier2".into()),
                ..Default::default()
            },
        );
        let router = Router::new(&config).unwrap();
        for known in ["vip", "tier2", "support"] {
            assert_eq!(router.queue_for(known), known);
        }
        for made_up in ["made-up-1", "made-up-2", "VIP", ""] {
            assert_eq!(router.queue_for(made_up), "support", "{made_up:?}");
        }
    }

    #[test]
    fn a_destination_named_twice_is_delivered_once() {
        let mut targets = Vec::new();
        let queue = || DestinationSpec::Agent("support".into());
        // A human-owned bot destination becomes the queue the rule names too.
        for spec in [queue(), DestinationSpec::Analytics, queue()] {
            push_new(&mut targets, spec);
        }
        assert_eq!(targets, [queue(), DestinationSpec::Analytics]);
    }
}
