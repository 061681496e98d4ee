//! The dead-letter topic: records that cannot be decoded, and messages a
//! destination refused for good.

use tokio_util::sync::CancellationToken;

use super::{Failure, Interrupted, Router};
use crate::destinations::{
    DestinationKind as Kind,
    topics::{DeadLetter, Source},
};

impl Router {
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
            payload,
            error: format!("undecodable: {error}"),
            destination: "none",
            attempts: 0,
            source,
        };
        self.dead_letter("poison", &letter, stop).await
    }

    /// Dead-letters a message (`record`: its record's bytes, as read) for a
    /// destination that failed for good.
    pub(super) async fn dead_letter_failure(
        &self,
        key: &str,
        record: &[u8],
        failure: &Failure,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let letter = DeadLetter {
            key,
            payload: record,
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
            payload: &[],
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
}
