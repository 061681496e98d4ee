//! What every Switchboard binary shares, and nothing of the ingestion edge
//! or the routing stages: the ingestion node and the workers both depend
//! on this crate, never on each other.
//!
//! Layout, by role:
//! - [`kafka`]: Kafka client settings, topic creation, and a client context
//!   that reports an unreachable Kafka plainly.
//! - [`config`]: layered configuration (defaults, file, environment, flags).
//! - [`shutdown`]: the one shutdown signal of a process.
//! - [`trace`]: W3C `traceparent` carried through gRPC metadata and Kafka
//!   headers, with per-hop spans.
//! - [`telemetry`]: logs, the Prometheus exporter and OTLP span export.
//! - [`retry`]: retries with jittered exponential backoff, cancel-safe.
//! - [`headers`]: reading Kafka record headers.
//! - [`threads`]: the async runtime, as many threads as configured.

#![forbid(unsafe_code)]

pub mod config;
pub mod headers;
pub mod kafka;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod threads;
pub mod trace;
