//! Publishing one broadcast: an OUTBOUND template envelope per recipient,
//! rate-limited, with its progress written after every step.

use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_proto::v1::{
    BroadcastProgress, BroadcastStatus, Direction, Envelope, Party, Template, envelope::Content,
};
use switchboard_runtime::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use super::{
    ID_ATTRIBUTE, TOPIC_ATTRIBUTE,
    audience::{self, AudienceError, Recipient},
    config::BroadcastsConfig,
};
use crate::senders::{config::Rate, limiter::SenderLimits};

/// Tenants and tenant channels whose rate is tracked at once (the least
/// recently used forgotten first).
const MAX_RATE_KEYS: usize = 10_000;

/// Why a broadcast stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("audience: {0}")]
    Audience(#[from] AudienceError),
    #[error("kafka refused a broadcast record for good: {0}")]
    Kafka(String),
    #[error("stopped")]
    Stopped,
}

/// The fan-out side of the broadcast stage, shared by its broadcasts.
pub struct Fanout {
    producer: FutureProducer,
    kafka: KafkaConfig,
    messages_topic: String,
    state_topic: String,
    config: BroadcastsConfig,
    limits: SenderLimits,
}

/// The message id of `recipient`'s copy of broadcast `id`: the same on
/// every attempt, so the sender stage sends it once.
pub fn message_id(id: &str, recipient_key: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("switchboard-broadcast/{id}/{recipient_key}").as_bytes(),
    )
    .to_string()
}

/// The channel message id every copy of broadcast `id` carries: the routing
/// stage drops a second one in the same conversation.
pub fn channel_message_id(id: &str) -> String {
    format!("broadcast:{id}")
}

impl Fanout {
    pub fn new(
        kafka: &KafkaConfig,
        messages_topic: &str,
        state_topic: &str,
        config: &BroadcastsConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            producer: kafka.producer_config(&[("linger.ms", "5")]).create()?,
            kafka: kafka.clone(),
            messages_topic: messages_topic.to_owned(),
            state_topic: state_topic.to_owned(),
            config: config.clone(),
            limits: SenderLimits::new(MAX_RATE_KEYS),
        })
    }

    /// Writes `progress` to the progress topic, retrying while Kafka's
    /// errors are retryable.
    pub async fn write_progress(
        &self,
        progress: &BroadcastProgress,
        stop: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let id = progress
            .spec
            .as_ref()
            .map(|s| s.broadcast_id.as_str())
            .unwrap_or_default();
        self.send(
            &self.config.progress_topic,
            id,
            &progress.encode_to_vec(),
            stop,
        )
        .await
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        stop: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _))
                    if crate::destinations::topics::classify(&e)
                        == crate::destinations::topics::WriteRetry::Retryable =>
                {
                    tracing::warn!(error = %e, topic, "broadcast record not acknowledged; again");
                }
                Err((e, _)) => return Err(FanoutError::Kafka(e.to_string())),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return Err(FanoutError::Stopped),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits until the tenant's and the channel's rates allow one more message.
    async fn pace(&self, tenant: &str, recipient: &Recipient, stop: &CancellationToken) -> bool {
        let now = Instant::now();
        let rate = |per_second: u32| Rate {
            messages_per_second: f64::from(per_second),
            burst: per_second.clamp(1, 100),
        };
        let tenant_wait = self
            .limits
            .reserve(tenant, rate(self.config.per_tenant_rate), now);
        let channel_wait = self.limits.reserve(
            &format!("{tenant}/{}", recipient.channel.slug()),
            rate(self.config.per_channel_rate),
            now,
        );
        let wait = tenant_wait.max(channel_wait);
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = stop.cancelled() => false,
        }
    }

    /// Runs the broadcast of `progress` from its cursor to its end, or
    /// until `cancel` (then it is CANCELLED) or `stop` (the worker stops or
    /// loses the partition: nothing more is written). Returns the last
    /// progress written.
    pub async fn run(
        &self,
        mut progress: BroadcastProgress,
        cancel: &CancellationToken,
        stop: &CancellationToken,
    ) -> Result<BroadcastProgress, FanoutError> {
        let spec = progress.spec.clone().unwrap_or_default();
        let mut backoff = Duration::from_millis(500);
        let recipients = loop {
            let (kafka, state_topic, wanted, max) = (
                self.kafka.clone(),
                self.state_topic.clone(),
                spec.clone(),
                self.config.max_recipients,
            );
            let resolved = tokio::task::spawn_blocking(move || {
                audience::resolve(&kafka, &state_topic, &wanted, max)
            })
            .await
            .map_err(|e| FanoutError::Kafka(e.to_string()))?;
            match resolved {
                Ok(r) => break r,
                Err(e) if !e.retryable() => {
                    progress.status = BroadcastStatus::Failed as i32;
                    progress.detail = e.to_string();
                    progress.finished_at = Some(now());
                    self.write_progress(&progress, stop).await?;
                    super::metrics::finished("failed");
                    return Ok(progress);
                }
                Err(e) => {
                    tracing::warn!(broadcast = %spec.broadcast_id, error = %e, "resolving the audience; again");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return Err(FanoutError::Stopped),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        // A resumed broadcast's audience may have grown; it never shrinks
        // below what was published.
        progress.targeted = (recipients.len() as u64).max(progress.published);
        let start = if progress.cursor.is_empty() {
            0
        } else {
            recipients.partition_point(|r| r.key <= progress.cursor)
        };
        tracing::info!(
            broadcast = %spec.broadcast_id,
            targeted = progress.targeted,
            resumed_at = start,
            "broadcast publishing"
        );
        for chunk in recipients[start..].chunks(self.config.progress_every) {
            if cancel.is_cancelled() {
                break;
            }
            let mut records = Vec::with_capacity(chunk.len());
            for recipient in chunk {
                if !self.pace(&spec.tenant_id, recipient, stop).await {
                    return Err(FanoutError::Stopped);
                }
                let envelope = envelope(&spec, recipient);
                records.push((recipient.key.clone(), envelope.encode_to_vec()));
            }
            let sends = records
                .iter()
                .map(|(key, payload)| self.send(&self.messages_topic, key, payload, stop));
            for result in join_all(sends).await {
                result?;
            }
            for recipient in chunk {
                super::metrics::published(recipient.channel.slug(), 1);
            }
            progress.published += chunk.len() as u64;
            progress.cursor = chunk.last().map(|r| r.key.clone()).unwrap_or_default();
            progress.updated_at = Some(now());
            self.write_progress(&progress, stop).await?;
        }
        progress.status = if cancel.is_cancelled() {
            BroadcastStatus::Cancelled
        } else {
            BroadcastStatus::Completed
        } as i32;
        progress.finished_at = Some(now());
        progress.updated_at = progress.finished_at;
        self.write_progress(&progress, stop).await?;
        super::metrics::finished(if cancel.is_cancelled() {
            "cancelled"
        } else {
            "completed"
        });
        tracing::info!(broadcast = %spec.broadcast_id, published = progress.published, status = ?progress.status(), "broadcast done");
        Ok(progress)
    }
}

fn now() -> switchboard_proto::Timestamp {
    switchboard_proto::timestamp(SystemTime::now())
}

/// The envelope `recipient` gets.
pub fn envelope(spec: &switchboard_proto::v1::BroadcastSpec, recipient: &Recipient) -> Envelope {
    let template = spec.template.clone().unwrap_or_default();
    let parameters = if recipient.parameters.is_empty() {
        template.parameters
    } else {
        recipient.parameters.clone()
    };
    let mut attributes =
        std::collections::HashMap::from([(ID_ATTRIBUTE.to_owned(), spec.broadcast_id.clone())]);
    if !spec.topic.is_empty() {
        attributes.insert(TOPIC_ATTRIBUTE.to_owned(), spec.topic.clone());
    }
    let at = now();
    Envelope {
        message_id: message_id(&spec.broadcast_id, &recipient.key),
        tenant_id: spec.tenant_id.clone(),
        channel: recipient.channel as i32,
        direction: Direction::Outbound as i32,
        conversation_id: recipient.conversation_id.clone(),
        channel_message_id: channel_message_id(&spec.broadcast_id),
        customer: (!recipient.customer_id.is_empty()).then(|| Party {
            id: recipient.customer_id.clone(),
            display_name: String::new(),
        }),
        sent_at: Some(at),
        received_at: Some(at),
        content: Some(Content::Template(Template {
            name: template.name,
            language: template.language,
            parameters,
        })),
        attributes,
        ..Default::default()
    }
}
