//! Publishing prepared conversations all at once, for tests: every
//! conversation with unary `Publish` (each in order), or all of them on one
//! `PublishStream` call. Each outcome is kept, for assertions.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures::{StreamExt, stream};
use switchboard_proto::v1::{
    Envelope, PublishRequest, PublishResponse, ingest_client::IngestClient,
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
