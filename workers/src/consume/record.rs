//! Reading a record of the messages topic, and decoding its envelope.

use prost::Message as _;
use rdkafka::{Message, message::Headers as _};
use switchboard_proto::v1::Envelope;
use switchboard_runtime::trace::{self, TRACEPARENT, TraceParent};

use crate::destinations::topics::headers;

/// A record of the messages topic, its headers read.
pub(super) struct Fetched {
    pub offset: i64,
    /// This worker's span, continuing the trace from the record's header.
    pub span: tracing::Span,
    pub trace: TraceParent,
    /// A replayed message is routed again on purpose, even if seen.
    pub replayed: bool,
    pub body: Body,
}

/// What the record holds.
pub(super) enum Body {
    /// The record's bytes, as read. The envelope is decoded when its
    /// partition takes it ([`Body::decoded`]): what waits in the queues
    /// between the consume loop and the partition is then a third of the
    /// decoded envelope's memory, and the envelope is fresh in the cache
    /// when it is routed.
    Encoded(Vec<u8>),
    /// Decoded, waiting in its conversation's lane.
    Envelope(Decoded),
    /// Not an envelope: it goes straight to the dead-letter topic.
    Poison { payload: Vec<u8>, error: String },
}

/// A record's envelope, decoded.
#[derive(Debug)]
pub(super) struct Decoded {
    /// Boxed: a message is handed on through routing, and each move of a
    /// whole envelope is a copy of ~600 bytes.
    pub envelope: Box<Envelope>,
    /// Its conversation's key.
    pub key: String,
    /// The record's bytes, kept for a dead letter until the message is
    /// settled: a third of the decoded envelope's memory, which goes once
    /// the message is routed.
    pub payload: Vec<u8>,
}

impl Body {
    /// The envelope, decoding the record's bytes if not done yet; or what
    /// goes to the dead-letter topic, and why.
    pub fn decoded(self) -> Result<Decoded, (Vec<u8>, String)> {
        match self {
            Self::Encoded(payload) => match Envelope::decode(payload.as_slice()) {
                Ok(envelope) => Ok(Decoded {
                    key: envelope.conversation_key(),
                    envelope: Box::new(envelope),
                    payload,
                }),
                Err(e) => Err((payload, e.to_string())),
            },
            Self::Envelope(decoded) => Ok(decoded),
            Self::Poison { payload, error } => Err((payload, error)),
        }
    }
}

/// Reads `message`'s headers (once) and takes its bytes.
pub(super) fn read(message: &impl Message) -> Fetched {
    let (mut traceparent, mut replayed) = (None, false);
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            match header.key {
                TRACEPARENT if traceparent.is_none() => {
                    traceparent = header.value.and_then(|v| std::str::from_utf8(v).ok());
                }
                headers::REPLAYED_FROM => replayed = true,
                _ => {}
            }
        }
    }
    let (span, trace) = trace::hop("worker.route", traceparent);
    let body = match message.payload() {
        Some(payload) => Body::Encoded(payload.to_vec()),
        None => Body::Poison {
            payload: Vec::new(),
            error: "no payload".to_owned(),
        },
    };
    Fetched {
        offset: message.offset(),
        span,
        trace,
        replayed,
        body,
    }
}

#[cfg(test)]
mod tests {
    use switchboard_proto::v1::Channel;

    use super::*;

    #[test]
    fn an_envelopes_bytes_decode_with_its_conversation_key() {
        let envelope = Envelope {
            tenant_id: "acme".into(),
            channel: Channel::Sms as i32,
            conversation_id: "c1".into(),
            message_id: "m1".into(),
            ..Default::default()
        };
        let bytes = envelope.encode_to_vec();
        let decoded = Body::Encoded(bytes.clone()).decoded().expect("an envelope");
        assert_eq!(*decoded.envelope, envelope);
        assert_eq!(decoded.key, envelope.conversation_key());
        assert_eq!(decoded.payload, bytes, "kept for a dead letter");
    }

    #[test]
    fn bytes_that_are_no_envelope_go_to_the_dead_letter_topic_as_they_were() {
        let garbage = vec![0xff, 0xff, 0xff];
        let (payload, error) = Body::Encoded(garbage.clone())
            .decoded()
            .expect_err("not an envelope");
        assert_eq!(payload, garbage);
        assert!(!error.is_empty());
        let (payload, error) = Body::Poison {
            payload: Vec::new(),
            error: "no payload".into(),
        }
        .decoded()
        .expect_err("poison stays poison");
        assert!(payload.is_empty());
        assert_eq!(error, "no payload");
    }
}
