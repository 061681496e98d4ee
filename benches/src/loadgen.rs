//! Conversation workloads and the two ways of publishing them.
//!
//! Every envelope carries its conversation index and its sequence number
//! within the conversation (`attributes.seq`), so a consumer can check that
//! each conversation arrived in order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures::{StreamExt, stream};
use switchboard_proto::v1::{
    Channel, Direction, Envelope, Party, PublishRequest, PublishResponse, Text, envelope::Content,
    ingest_client::IngestClient,
};
use tonic::transport::Channel as GrpcChannel;

/// Counters a progress display can read while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Publishes acknowledged by the ingestion node.
    pub acked: AtomicU64,
    /// Publishes that failed.
    pub failed: AtomicU64,
}

/// The result of publishing one envelope.
#[derive(Debug)]
pub struct Outcome {
    /// What was published.
    pub envelope: Envelope,
    /// The node's answer.
    pub result: Result<PublishResponse, tonic::Status>,
    /// Time from sending to the answer.
    pub latency: std::time::Duration,
}

/// `per_conversation` text messages for each conversation index in
/// `conversations`, grouped by conversation. `body(conversation, seq)` gives
/// each message's text.
pub fn conversations(
    tenant: &str,
    channel: Channel,
    conversations: std::ops::Range<usize>,
    per_conversation: usize,
    body: impl Fn(usize, usize) -> String,
) -> Vec<Vec<Envelope>> {
    conversations
        .map(|c| {
            (0..per_conversation)
                .map(|seq| Envelope {
                    tenant_id: tenant.to_owned(),
                    channel: channel as i32,
                    direction: Direction::Inbound as i32,
                    conversation_id: format!("conv-{c}"),
                    customer: Some(Party {
                        id: format!("customer-{c}"),
                        display_name: String::new(),
                    }),
                    content: Some(Content::Text(Text { body: body(c, seq) })),
                    attributes: [("seq".to_owned(), seq.to_string())].into(),
                    ..Default::default()
                })
                .collect()
        })
        .collect()
}

/// An envelope's sequence number within its conversation.
pub fn seq_of(envelope: &Envelope) -> usize {
    envelope
        .attributes
        .get("seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Publishes with unary `Publish`: up to `concurrency` conversations at
/// once, each one message after the other (the next waits for the ack), so
/// every conversation stays in order.
pub async fn publish_unary(
    client: IngestClient<GrpcChannel>,
    conversations: Vec<Vec<Envelope>>,
    concurrency: usize,
    progress: Arc<Progress>,
) -> Vec<Outcome> {
    stream::iter(conversations)
        .map(|conversation| {
            let mut client = client.clone();
            let progress = progress.clone();
            async move {
                let mut outcomes = Vec::with_capacity(conversation.len());
                for envelope in conversation {
                    let started = Instant::now();
                    let result = client
                        .publish(PublishRequest {
                            envelope: Some(envelope.clone()),
                            sequence: 0,
                        })
                        .await
                        .map(tonic::Response::into_inner);
                    count(&progress, result.is_ok());
                    outcomes.push(Outcome {
                        envelope,
                        result,
                        latency: started.elapsed(),
                    });
                }
                outcomes
            }
        })
        .buffer_unordered(concurrency.max(1))
        .flat_map(stream::iter)
        .collect()
        .await
}

/// Publishes on one `PublishStream` call, interleaving conversations
/// (message 0 of every conversation, then message 1, ...). The node keeps
/// each conversation in order.
pub async fn publish_stream(
    mut client: IngestClient<GrpcChannel>,
    conversations: Vec<Vec<Envelope>>,
    progress: Arc<Progress>,
) -> Result<Vec<Outcome>, tonic::Status> {
    let longest = conversations.iter().map(Vec::len).max().unwrap_or(0);
    let envelopes: Vec<Envelope> = (0..longest)
        .flat_map(|seq| {
            conversations
                .iter()
                .filter_map(move |c| c.get(seq).cloned())
        })
        .collect();
    let started: Vec<_> = envelopes
        .iter()
        .map(|_| std::sync::OnceLock::new())
        .collect();
    let started = Arc::new(started);
    let sent = started.clone();
    let requests =
        stream::iter(envelopes.clone().into_iter().enumerate()).map(move |(i, envelope)| {
            let _ = sent[i].set(Instant::now());
            PublishRequest {
                envelope: Some(envelope),
                sequence: i as u64,
            }
        });
    let mut responses = client.publish_stream(requests).await?.into_inner();
    let mut answers: Vec<Option<(Result<PublishResponse, tonic::Status>, std::time::Duration)>> =
        envelopes.iter().map(|_| None).collect();
    while let Some(response) = responses.next().await {
        let response = response?;
        let i = response.sequence as usize;
        let latency = started
            .get(i)
            .and_then(|s| s.get())
            .map(Instant::elapsed)
            .unwrap_or_default();
        let result = match &response.error {
            None => Ok(response),
            Some(e) => Err(tonic::Status::new(
                tonic::Code::from_i32(e.code),
                e.message.clone(),
            )),
        };
        count(&progress, result.is_ok());
        if let Some(slot) = answers.get_mut(i) {
            *slot = Some((result, latency));
        }
    }
    Ok(envelopes
        .into_iter()
        .zip(answers)
        .map(|(envelope, answer)| {
            let (result, latency) = answer.unwrap_or_else(|| {
                (
                    Err(tonic::Status::data_loss("no response for this request")),
                    Default::default(),
                )
            });
            Outcome {
                envelope,
                result,
                latency,
            }
        })
        .collect())
}

fn count(progress: &Progress, ok: bool) {
    let counter = if ok {
        &progress.acked
    } else {
        &progress.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How the load generator publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Unary `Publish`, one conversation's messages one after the other.
    Unary,
    /// One `PublishStream` call.
    Stream,
}

/// One load-generator run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunOptions {
    /// How to publish.
    pub mode: Mode,
    /// Total messages.
    pub messages: usize,
    /// Conversations the messages are spread over.
    pub conversations: usize,
    /// Conversations published at once (unary mode).
    pub concurrency: usize,
    /// Tenant id of every message.
    pub tenant: String,
    /// Channel of every message.
    pub channel: Channel,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The run's options.
    pub options: RunOptions,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages refused or failed, by gRPC code.
    pub failed: std::collections::BTreeMap<String, u64>,
    /// Wall-clock time of the run, in seconds.
    pub elapsed_seconds: f64,
    /// Acknowledged messages per second.
    pub rate_per_second: f64,
    /// Publish latency percentiles, in milliseconds (p50, p90, p99, p99.9, max).
    pub latency_ms: std::collections::BTreeMap<&'static str, f64>,
}

/// Publishes `options.messages` messages and measures the outcome.
pub async fn run(
    client: IngestClient<GrpcChannel>,
    options: RunOptions,
    progress: Arc<Progress>,
) -> Report {
    let conversations_count = options.conversations.max(1);
    let per_conversation = options.messages.div_ceil(conversations_count);
    let mut workload = conversations(
        &options.tenant,
        options.channel,
        0..conversations_count,
        per_conversation,
        |c, s| format!("hello from the load generator, conversation {c} message {s}"),
    );
    // Trim to exactly `messages`.
    let mut extra = per_conversation * conversations_count - options.messages;
    for conversation in workload.iter_mut().rev() {
        let cut = extra.min(conversation.len());
        conversation.truncate(conversation.len() - cut);
        extra -= cut;
    }
    let started = Instant::now();
    let outcomes = match options.mode {
        Mode::Unary => publish_unary(client, workload, options.concurrency, progress).await,
        Mode::Stream => publish_stream(client, workload, progress)
            .await
            .unwrap_or_else(|status| {
                tracing::error!(%status, "stream failed");
                Vec::new()
            }),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("histogram bounds");
    let mut failed = std::collections::BTreeMap::new();
    let mut acked = 0;
    for outcome in &outcomes {
        match &outcome.result {
            Ok(_) => {
                acked += 1;
                let _ = histogram.record((outcome.latency.as_micros() as u64).max(1));
            }
            Err(status) => *failed.entry(format!("{:?}", status.code())).or_insert(0) += 1,
        }
    }
    let missing = options.messages as u64 - outcomes.len() as u64;
    if missing > 0 {
        failed.insert("NoResponse".into(), missing);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let latency_ms = [
        ("p50", ms(0.5)),
        ("p90", ms(0.9)),
        ("p99", ms(0.99)),
        ("p99.9", ms(0.999)),
        ("max", histogram.max() as f64 / 1000.0),
    ]
    .into();
    Report {
        options,
        acked,
        failed,
        elapsed_seconds: elapsed,
        rate_per_second: acked as f64 / elapsed.max(1e-9),
        latency_ms,
    }
}
