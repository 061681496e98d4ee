//! Deciding where one message goes, changing its conversation's state, and
//! handing its records to the producer.
//!
//! Routing a message whose destinations are all Kafka topics is one
//! synchronous step ([`Router::begin`]): its records are enqueued in the
//! conversation's order and the returned [`Routed::settle`] waits for
//! Kafka's answers. A message for a bot comes back as [`Begun::Bots`]: the
//! bots' answers are awaited (the conversation's next message waits; other
//! conversations go on), then [`Router::finish`] completes it the same way.

use std::time::SystemTime;

use futures::future::join_all;
use switchboard_proto::v1::{
    AgentTask, AnalyticsRecord, BotRequest, BotResponse, ConversationControl, ConversationState,
    Destination, Direction, Envelope, Owner, QueueEvent, Rejection, RouteDecision,
    conversation_control::Action as ControlAction, destination, envelope::Content, queue_event,
};
use switchboard_runtime::trace::TraceParent;
use tokio_util::sync::CancellationToken;

use super::{
    Failure, Interrupted, Router, Write,
    settle::{Outputs, Settle},
};
use crate::{
    customers,
    destinations::{DestinationError, DestinationKind as Kind, topics::Source},
    rules::DestinationSpec,
    state::{consent::Refusal, effects, subscriptions},
};

/// A future borrowed from the router for the rest of a message's routing.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message whose records are all handed to the producer.
pub struct Routed<'a> {
    /// The conversation's state changed (and must be written).
    pub changed: bool,
    /// Waits for Kafka's answers.
    pub settle: Settle<'a>,
}

/// What [`Router::begin`] led to.
#[expect(
    clippy::large_enum_variant,
    reason = "`Routed` is nearly every message's outcome, handed on at once: boxing it would allocate per message to save bytes on the stack"
)]
pub enum Begun<'a> {
    /// Routed: no destination needs waiting for.
    Routed(Routed<'a>),
    /// Waiting for bots: await it, then pass it to [`Router::finish`].
    Bots(Pending<'a, Result<Answered<'a>, Interrupted>>),
}

/// A message in the middle of its routing.
pub struct Routing<'a> {
    envelope: Box<Envelope>,
    /// The record's bytes, for a dead letter.
    record: Vec<u8>,
    /// Whether `envelope` is still what `record` holds, so analytics can
    /// embed the record's bytes instead of encoding the envelope again.
    as_read: bool,
    key: String,
    route: RouteDecision,
    targets: Vec<DestinationSpec>,
    changed: bool,
    writes: Vec<Write<'a>>,
    /// Bots' replies, for analytics after the message itself.
    replies: Vec<AnalyticsRecord>,
    failures: Vec<Failure>,
    source: Source<'a>,
    stop: &'a CancellationToken,
}

/// A bot's answer, or why it failed for good and after how many attempts.
type BotAnswer = Result<BotResponse, (DestinationError, u32)>;

/// A message whose bots have answered (or failed for good).
pub struct Answered<'a> {
    routing: Routing<'a>,
    answers: Vec<(String, BotAnswer)>,
}

impl Router {
    /// Starts routing `envelope` read from `source` (`record` is the
    /// record's bytes, for a dead letter), of conversation `key` in
    /// `state`, which it changes in place:
    /// - A control event changes the conversation's owner and goes to
    ///   analytics only; so do subscription changes and customer links
    ///   (whose records and events for the customer's other conversations
    ///   are written before the message completes).
    /// - Keywords change subscriptions; a linked conversation's messages
    ///   carry its customer (`crate::customers`).
    /// - An `OUTBOUND` message is checked against consent: refused, it goes
    ///   to the rejections topic (and analytics) only; allowed, to the
    ///   channel's outbound topic and the matching rule's destinations.
    /// - While a human owns the conversation, bot destinations are replaced
    ///   by the owner's agent queue.
    pub fn begin<'a>(
        &'a self,
        mut envelope: Box<Envelope>,
        record: Vec<u8>,
        key: &str,
        state: &mut ConversationState,
        source: Source<'a>,
        stop: &'a CancellationToken,
    ) -> Begun<'a> {
        let mut changed = effects::apply_message(state, &envelope, &self.handoff_queue);
        changed |= self.keywords.apply(state, &envelope);
        let linked = customers::link::apply(&self.customers, state, &envelope);
        changed |= linked.changed;
        let addressed = subscriptions::address(&mut envelope, state);
        let annotated = customers::link::annotate(&mut envelope, state);
        if !state.queue.is_empty() {
            let queue = self.queue_for(&state.queue);
            if queue != state.queue {
                state.queue = queue;
                changed = true;
            }
        }
        let human_owned = state.owner() == Owner::Human;
        let mut route = RouteDecision {
            message_id: envelope.message_id.clone(),
            decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
            ..Default::default()
        };
        let mut targets = Vec::new();
        let mut writes = Vec::new();
        let mut bots = Vec::new();
        if let Some(Content::Control(control)) = &envelope.content {
            route.rule_id = "control".into();
            route.reason = control_reason(control, state);
            self.metrics.ownership(control.action());
        } else if let Some(Content::Subscription(change)) = &envelope.content {
            route.rule_id = "subscription".into();
            route.reason = subscriptions::reason(change);
        } else if let Some(Content::Link(_)) = &envelope.content {
            route.rule_id = "customer".into();
            route.reason = linked
                .reason
                .clone()
                .unwrap_or_else(|| "customer link without an action".into());
        } else if envelope.direction() == Direction::Outbound
            && let Err(refusal) = self.consent.check(&envelope, state, now_of(&envelope))
        {
            route.rule_id = "consent".into();
            route.reason = format!("rejected ({}): {}", refusal.label(), refusal.detail);
            writes.push(self.reject(key, &envelope, refusal, &source.trace));
        } else {
            let rules = self.rules.load();
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
                changed |= effects::sent(state, &envelope);
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
                    DestinationSpec::Bot(bot) => {
                        if !bots.contains(bot) {
                            bots.push(bot.clone());
                        }
                        push_new(&mut targets, spec.clone());
                    }
                    spec => push_new(&mut targets, spec.clone()),
                }
            }
        }
        if !matches!(envelope.content, Some(Content::Link(_)))
            && let Some(reason) = &linked.reason
        {
            route.reason.push_str("; ");
            route.reason.push_str(reason);
        }
        route.destinations = targets.iter().map(to_proto).collect();
        let routing = Routing {
            envelope,
            record,
            as_read: !(addressed || annotated),
            key: key.to_owned(),
            route,
            targets,
            changed,
            writes,
            replies: Vec::new(),
            failures: Vec::new(),
            source,
            stop,
        };
        if !linked.effects.is_empty() {
            // The customer's records are in Kafka before the message completes.
            let links = self.customer_writer.write(linked.effects, stop);
            return match self.begin_routing(routing, bots, state) {
                Begun::Routed(routed) => Begun::Routed(Routed {
                    changed: routed.changed,
                    settle: Settle::wrapping(
                        self,
                        stop,
                        Box::pin(async move {
                            links.await?;
                            routed.settle.await
                        }),
                    ),
                }),
                Begun::Bots(pending) => Begun::Bots(Box::pin(async move {
                    links.await?;
                    pending.await
                })),
            };
        }
        self.begin_routing(routing, bots, state)
    }

    /// Emits a decided message, or calls its bots first.
    fn begin_routing<'a>(
        &'a self,
        routing: Routing<'a>,
        bots: Vec<String>,
        state: &mut ConversationState,
    ) -> Begun<'a> {
        if bots.is_empty() {
            return Begun::Routed(self.emit(routing, state));
        }
        let (stop, trace) = (routing.stop, routing.source.trace);
        let request = BotRequest {
            envelope: Some((*routing.envelope).clone()),
            decision: Some(routing.route.clone()),
        };
        Begun::Bots(Box::pin(async move {
            let calls = bots
                .iter()
                .map(|name| self.call_bot(name, &request, &trace, stop));
            let answers = join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Answered {
                routing,
                answers: bots.into_iter().zip(answers).collect(),
            })
        }))
    }

    /// Completes a message whose bots answered, with its conversation's
    /// state (which the conversation's later messages did not touch
    /// meanwhile): a reply goes out if consent allows; a handoff makes the
    /// conversation human-owned and the message the queue's first task.
    pub fn finish<'a>(
        &'a self,
        answered: Answered<'a>,
        state: &mut ConversationState,
    ) -> Routed<'a> {
        let Answered {
            mut routing,
            answers,
        } = answered;
        let trace = routing.source.trace;
        let mut handoffs = Vec::new();
        for (name, outcome) in answers {
            match outcome {
                Ok(response) => {
                    self.metrics
                        .bot_replies
                        .increment(response.replies.len() as u64);
                    // Replies go to the channel's outbound topic, to analytics
                    // and into the conversation's state, like any outbound
                    // message.
                    for (i, reply) in response.replies.iter().enumerate() {
                        let reply = as_reply(reply, &routing.envelope, &name, i);
                        let (write, record, changed) =
                            self.reply(reply, &name, &routing, state, &trace);
                        routing.changed |= changed;
                        routing.writes.push(write);
                        routing.replies.push(record);
                    }
                    if response.handoff {
                        let queue = if response.handoff_queue.is_empty() {
                            self.handoff_queue.clone()
                        } else {
                            response.handoff_queue
                        };
                        handoffs.push((name, queue));
                    }
                }
                Err((error, attempts)) => routing.failures.push(Failure {
                    destination: format!("bot:{name}").into(),
                    error,
                    attempts,
                }),
            }
        }
        // The message that asked for a human is the queue's first task.
        for (bot, queue) in handoffs {
            let queue = self.queue_for(&queue);
            routing
                .route
                .reason
                .push_str(&format!("; bot {bot} handed off to agent queue {queue}"));
            effects::hand_to_human(state, &queue, &bot);
            routing.changed = true;
            self.metrics.handoffs.increment(1);
            let spec = DestinationSpec::Agent(queue);
            if !routing.targets.contains(&spec) {
                routing.route.destinations.push(to_proto(&spec));
                routing.targets.push(spec);
            }
        }
        self.emit(routing, state)
    }

    /// Hands the message's remaining records to the producer (agent tasks,
    /// the outbound copy, analytics last) and remembers its channel message
    /// id in the state.
    fn emit<'a>(&'a self, mut routing: Routing<'a>, state: &mut ConversationState) -> Routed<'a> {
        let trace = routing.source.trace;
        for spec in &routing.targets {
            match spec {
                DestinationSpec::Agent(queue) => {
                    let write = self.agent_task(queue, &routing.envelope, &routing.route, &trace);
                    routing.writes.push(write);
                }
                // Consent was checked before the message was routed.
                DestinationSpec::Outbound => routing.writes.push(self.write(
                    Kind::Outbound,
                    0,
                    self.outputs.outbound(&routing.envelope, &trace),
                )),
                DestinationSpec::Bot(_) | DestinationSpec::Analytics => {}
            }
        }
        for failure in &routing.failures {
            routing.route.reason.push_str(&format!(
                "; {} failed, sent to the dead-letter topic",
                failure.destination
            ));
        }
        routing.changed |= effects::remember(
            state,
            &routing.envelope,
            routing.source.offset,
            self.recent_message_ids,
        );
        if routing.changed {
            effects::touch(state);
        }
        let Routing {
            envelope,
            record,
            as_read,
            key,
            route,
            changed,
            mut writes,
            replies,
            failures,
            source,
            stop,
            ..
        } = routing;
        let received = envelope
            .received_at
            .as_ref()
            .and_then(switchboard_proto::system_time);
        // Every message reaches analytics once, after its other destinations.
        writes.push(self.write(
            Kind::Analytics,
            0,
            self.outputs.analytics_of(
                &key,
                &envelope,
                as_read.then_some(record.as_slice()),
                &route,
                &trace,
            ),
        ));
        for reply in &replies {
            writes.push(self.write(
                Kind::Analytics,
                0,
                self.outputs.analytics(&key, reply, &trace),
            ));
        }
        // The envelope goes now; its record's bytes wait for Kafka's answers.
        drop(envelope);
        let outputs = Outputs {
            writes,
            failures,
            key,
            record,
            source,
            received,
        };
        Routed {
            changed,
            settle: Settle::new(self, stop, outputs),
        }
    }

    /// A record to hand over now, retried up to `max_attempts` (0: no limit).
    fn write<'a>(
        &'a self,
        kind: Kind,
        max_attempts: u32,
        record: crate::destinations::topics::Outgoing<'a>,
    ) -> Write<'a> {
        Write {
            kind,
            max_attempts,
            destination: kind.label().into(),
            enqueued: self.outputs.enqueue(record),
        }
    }

    /// The task for agent queue `queue` (the tenant's own: tenants never
    /// share one), retried up to the router's budget.
    fn agent_task<'a>(
        &'a self,
        queue: &str,
        envelope: &Envelope,
        route: &RouteDecision,
        trace: &TraceParent,
    ) -> Write<'a> {
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
        Write {
            destination: format!("agent:{queue}").into(),
            ..self.write(
                Kind::Agent,
                self.max_attempts,
                self.outputs.queue_task(&task, trace),
            )
        }
    }

    /// A refused outbound message, for the rejections topic.
    fn reject<'a>(
        &'a self,
        key: &str,
        envelope: &Envelope,
        refusal: Refusal,
        trace: &TraceParent,
    ) -> Write<'a> {
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
        self.write(
            Kind::Rejections,
            0,
            self.outputs.rejection(key, &rejection, trace),
        )
    }

    /// A bot's reply to `routing`'s message: for its channel's outbound
    /// topic if consent allows it (decided by rule [`BOT_REPLY`]), else for
    /// the rejections topic (rule `consent`); its analytics record; and
    /// whether the conversation's state changed (its last outbound time).
    fn reply<'a>(
        &'a self,
        reply: Envelope,
        bot: &str,
        routing: &Routing<'_>,
        state: &mut ConversationState,
        trace: &TraceParent,
    ) -> (Write<'a>, AnalyticsRecord, bool) {
        let mut changed = false;
        let mut decision = RouteDecision {
            message_id: reply.message_id.clone(),
            decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
            ..Default::default()
        };
        let write = match self.consent.check(&reply, state, now_of(&reply)) {
            Err(refusal) => {
                decision.rule_id = "consent".into();
                decision.reason = format!(
                    "reply of bot {bot} to message {} rejected ({}): {}",
                    routing.envelope.message_id,
                    refusal.label(),
                    refusal.detail
                );
                self.reject(&routing.key, &reply, refusal, trace)
            }
            Ok(()) => {
                decision.rule_id = BOT_REPLY.into();
                decision.reason = format!(
                    "reply of bot {bot} to message {}",
                    routing.envelope.message_id
                );
                decision.destinations = vec![to_proto(&DestinationSpec::Outbound)];
                changed = effects::sent(state, &reply);
                self.write(Kind::Outbound, 0, self.outputs.outbound(&reply, trace))
            }
        };
        let record = AnalyticsRecord {
            envelope: Some(reply),
            decision: Some(decision),
        };
        (write, record, changed)
    }
}

/// The `rule_id` of a bot's reply that consent allowed, on its analytics
/// record.
pub const BOT_REPLY: &str = "bot-reply";

/// Reply ids are named in this namespace (a UUIDv5 of the answered
/// message's id, the bot and the reply's index).
const REPLY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5b0a_7d3e_2c41_4f6a_9e1d_8c37_b2f0_a611);

/// A bot's reply as an outbound envelope of the conversation it answers:
/// the conversation's tenant, channel, id and parties, `OUTBOUND`. Its
/// message id, unless the bot set its own, is derived from the answered
/// message's, the bot's name and the reply's index: a message routed again
/// after a crash gets replies with the same ids, which the sender stage
/// recognizes as already sent.
pub(super) fn as_reply(reply: &Envelope, to: &Envelope, bot: &str, index: usize) -> Envelope {
    let mut reply = reply.clone();
    reply.tenant_id.clone_from(&to.tenant_id);
    reply.channel = to.channel;
    reply.conversation_id.clone_from(&to.conversation_id);
    reply.direction = Direction::Outbound as i32;
    if reply.customer.is_none() {
        reply.customer.clone_from(&to.customer);
    }
    if reply.business.is_none() {
        reply.business.clone_from(&to.business);
    }
    if reply.message_id.is_empty() {
        let name = format!("{}/{bot}/{index}", to.message_id);
        reply.message_id = uuid::Uuid::new_v5(&REPLY_NAMESPACE, name.as_bytes()).to_string();
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
pub(super) fn push_new(targets: &mut Vec<DestinationSpec>, spec: DestinationSpec) {
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
