//! Decoding a record of the messages topic.

use prost::Message as _;
use rdkafka::{Message, message::Headers as _};
use switchboard_proto::v1::Envelope;
use switchboard_runtime::trace::{self, TRACEPARENT, TraceParent};

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
pub(super) enum Body {
    Envelope {
        /// Boxed: a message is handed from the consume loop to its
        /// partition and on through routing, and each move of a whole
        /// envelope is a copy of ~600 bytes.
        envelope: Box<Envelope>,
        key: String,
    },
    /// Not an envelope: it goes straight to the dead-letter topic.
    Poison { payload: Vec<u8>, error: String },
}

/// Decodes `message` (reading its headers once).
pub(super) fn decode(message: &impl Message) -> Decoded {
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
    let body = match message.payload().map(Envelope::decode) {
        Some(Ok(envelope)) => Body::Envelope {
            key: envelope.conversation_key(),
            envelope: Box::new(envelope),
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
