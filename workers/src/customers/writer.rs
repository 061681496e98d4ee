//! Writes what links make the routing stage write: link records to the
//! customers topic (in the customer id's partition) and `JOINED`/`LEFT`
//! events to the customer's other conversations. The message that caused
//! them completes only once Kafka has them.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_runtime::kafka::KafkaConfig;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::link::Effect;
use crate::{
    destinations::topics::{WriteRetry, classify},
    route::Interrupted,
};

/// The customers' producer.
pub struct CustomerWriter {
    producer: FutureProducer,
    kafka: KafkaConfig,
    messages_topic: String,
    customers_topic: String,
    /// The customers topic's partitions, looked up once.
    partitions: OnceCell<i32>,
}

impl CustomerWriter {
    pub fn new(
        kafka: &KafkaConfig,
        messages_topic: &str,
        customers_topic: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            producer: kafka.producer_config(&[("linger.ms", "2")]).create()?,
            kafka: kafka.clone(),
            messages_topic: messages_topic.to_owned(),
            customers_topic: customers_topic.to_owned(),
            partitions: OnceCell::new(),
        })
    }

    async fn partitions(&self) -> anyhow::Result<i32> {
        self.partitions
            .get_or_try_init(|| async {
                let (kafka, topic) = (self.kafka.clone(), self.customers_topic.clone());
                let n =
                    tokio::task::spawn_blocking(move || kafka.partition_count(&topic)).await??;
                anyhow::ensure!(
                    n > 0,
                    "customers topic {} has no partitions",
                    self.customers_topic
                );
                Ok(i32::try_from(n)?)
            })
            .await
            .copied()
    }

    /// Writes `effects`, each retried while Kafka's errors are retryable
    /// (one refused for good is logged and counted). Fails only when
    /// `stop` fires: the message is then redone.
    pub async fn write(
        &self,
        effects: Vec<Effect>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        for effect in effects {
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = match &effect {
                    Effect::Identity {
                        customer,
                        key,
                        record,
                    } => match self.partitions().await {
                        Ok(n) => {
                            let partition =
                                switchboard_proto::partition::partition_for(customer.as_bytes(), n);
                            let payload = record.as_ref().map(|r| r.encode_to_vec());
                            let mut out = FutureRecord::to(&self.customers_topic)
                                .key(key)
                                .partition(partition);
                            if let Some(payload) = &payload {
                                out = out.payload(payload);
                            }
                            self.producer
                                .send(out, Duration::from_secs(30))
                                .await
                                .map(|_| ())
                                .map_err(|(e, _)| Some(e))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "customers topic metadata");
                            Err(None)
                        }
                    },
                    Effect::Notify(envelope) => {
                        let (key, payload) =
                            (envelope.conversation_key(), envelope.encode_to_vec());
                        let out = FutureRecord::to(&self.messages_topic)
                            .key(&key)
                            .payload(&payload);
                        self.producer
                            .send(out, Duration::from_secs(30))
                            .await
                            .map(|_| ())
                            .map_err(|(e, _)| Some(e))
                    }
                };
                match result {
                    Ok(()) => break,
                    Err(Some(e)) if classify(&e) != WriteRetry::Retryable => {
                        tracing::error!(error = %e, "customer link record refused for good");
                        ::metrics::counter!("switchboard_customer_link_write_failures_total")
                            .increment(1);
                        break;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return Err(Interrupted),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        Ok(())
    }
}
