//! Decoding a record of the messages topic.

use prost::Message as _;
use rdkafka::{Message, message::OwnedMessage};
use switchboard_proto::v1::Envelope;
use switchboard_runtime::{
    headers as record_headers,
    trace::{self, TRACEPARENT, TraceParent},
};

use crate::destinations::topics::headers;

/// A record of the messages topic, decoded.
pub(super) struct Decoded {
    pub offset: i64,
    /// This worker's span, continuing the trace from the record's header.
    pub span: tracing::Span,
    pub trace: TraceParent,
    /// A replayed message is routed again on purpose, even if seen.
    pub replayed: bool,
    pub body: Body,
}

/// What the record holds.
// Poison is rare: boxing the envelope would cost every message an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Body {
    Envelope {
        envelope: Envelope,
        key: String,
    },
    /// Not an envelope: it goes straight to the dead-letter topic.
    Poison {
        payload: Vec<u8>,
        error: String,
    },
}

/// Decodes `message`.
pub(super) fn decode(message: &OwnedMessage) -> Decoded {
    let header = |name: &str| record_headers::text(message, name);
    let (span, trace) = trace::hop("worker.route", header(TRACEPARENT));
    let replayed = header(headers::REPLAYED_FROM).is_some();
    let body = match message.payload().map(Envelope::decode) {
        Some(Ok(envelope)) => Body::Envelope {
            key: envelope.conversation_key(),
            envelope,
        },
        other => Body::Poison {
            payload: message.payload().unwrap_or_default().to_vec(),
            error: match other {
                Some(Err(e)) => e.to_string(),
                _ => "no payload".to_owned(),
            },
        },
    };
    Decoded {
        offset: message.offset(),
        span,
        trace,
        replayed,
        body,
    }
}
