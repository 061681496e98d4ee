//! W3C trace context (`traceparent`) across gRPC and Kafka.
//!
//! A caller may send `traceparent` as gRPC metadata. The ingestion node
//! continues that trace (or starts one) and writes its own span's
//! `traceparent` into the Kafka message headers; workers continue it again
//! and send it on to bots as gRPC metadata, so one trace spans
//! edge → Kafka → worker → bot.
//!
//! Each hop also gets a `tracing` span ([`hop`]). When OTLP export is on
//! ([`crate::telemetry::init`]), that span is exported with the caller's
//! span as its parent, and the `traceparent` sent on names it, so a
//! collector shows the whole path.

use std::fmt;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata key and Kafka header name.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace all hops share.
    pub trace_id: u128,
    /// This hop's span.
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else,
    /// including the all-zero ids the spec forbids.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let parent = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parent.trace_id != 0 && parent.span_id != 0).then_some(parent)
    }

    /// A new trace, sampled.
    pub fn root() -> Self {
        let ids = uuid::Uuid::new_v4().as_u128();
        Self {
            trace_id: ids.max(1),
            span_id: (uuid::Uuid::new_v4().as_u128() as u64).max(1),
            flags: 1,
        }
    }

    /// A child span of this one: same trace, new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: (uuid::Uuid::new_v4().as_u128() as u64).max(1),
            ..*self
        }
    }

    /// Continues `incoming` when it is valid, else starts a new trace.
    pub fn continue_from(incoming: Option<&str>) -> Self {
        incoming
            .and_then(Self::parse)
            .map_or_else(Self::root, |p| p.child())
    }
}

/// Starts this hop's span, named `name`, continuing `incoming` (a
/// `traceparent` value) when it is valid. Returns the span, to run the hop's
/// work in, and the `traceparent` to send on.
pub fn hop(name: &'static str, incoming: Option<&str>) -> (tracing::Span, TraceParent) {
    if !crate::telemetry::otlp_enabled() {
        // No span to export: no per-message span bookkeeping either.
        return (tracing::Span::none(), TraceParent::continue_from(incoming));
    }
    let span = tracing::info_span!("hop", otel.name = name);
    let parent = incoming.and_then(TraceParent::parse);
    {
        if let Some(p) = parent {
            let remote = SpanContext::new(
                TraceId::from_bytes(p.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.span_id.to_be_bytes()),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        if own.is_valid() {
            let this = TraceParent {
                trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
                span_id: u64::from_be_bytes(own.span_id().to_bytes()),
                flags: parent.map_or(1, |p| p.flags),
            };
            return (span, this);
        }
    }
    (span, TraceParent::continue_from(incoming))
}

impl TraceParent {
    /// The `traceparent` value, `00-<32 hex>-<16 hex>-<2 hex>`, written
    /// without the formatting machinery (it goes on every record).
    pub fn encode(&self) -> [u8; 55] {
        fn hex(out: &mut [u8], value: u128) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for (i, byte) in out.iter_mut().rev().enumerate() {
                *byte = DIGITS[((value >> (4 * i)) & 0xf) as usize];
            }
        }
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&mut out[3..35], self.trace_id);
        hex(&mut out[36..52], u128::from(self.span_id));
        hex(&mut out[53..55], u128::from(self.flags));
        out
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        f.write_str(std::str::from_utf8(&encoded).expect("ASCII"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats_and_continues() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(header).unwrap();
        assert_eq!(parent.to_string(), header);
        let child = TraceParent::continue_from(Some(header));
        assert_eq!(
            (child.trace_id, child.flags),
            (parent.trace_id, parent.flags)
        );
        assert_ne!(child.span_id, parent.span_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        let small = TraceParent {
            trace_id: 0xa,
            span_id: 1,
            flags: 0,
        };
        assert_eq!(
            small.to_string(),
            format!("00-{:032x}-{:016x}-{:02x}", 0xa, 1, 0)
        );
        let fresh = TraceParent::continue_from(Some("garbage"));
        assert!(fresh.trace_id != 0 && TraceParent::parse(&fresh.to_string()) == Some(fresh));
    }
}
