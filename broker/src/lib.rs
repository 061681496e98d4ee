//! Switchboard's ingestion node.
//!
//! Internal services publish canonical envelopes over gRPC; the node
//! validates and normalizes them and publishes them to Kafka, keyed by
//! conversation, acknowledging only once Kafka has the message.
//!
//! Layout, by role:
//! - [`channels`]: webhook normalizers, one module per channel.
//! - [`config`]: the node's one constructor ([`config::BrokerConfig`]), with
//!   defaults in code and layering of file, environment and flags.
//! - [`auth`]: tenants, hashed API keys and per-tenant rate limits.
//! - [`dedupe`]: the node's bounded, time-windowed dedupe of retried webhooks.
//! - [`kafka`]: Kafka client settings shared with the workers, and topic setup.
//! - [`validate`]: request validation and normalization (ids, timestamps).
//! - [`publisher`]: the bounded Kafka producer behind every RPC.
//! - [`service`]: the `switchboard.v1.Ingest` gRPC service.
//! - [`server`]: the gRPC server (with health and reflection) and its lifecycle.
//! - [`shed`]: the per-connection call limit, whose refusals are counted.
//! - [`error`]: typed errors, sorted into retryable and fatal, mapped to gRPC codes.
//! - [`trace`]: W3C `traceparent` carried from gRPC through Kafka headers.
//! - [`telemetry`], [`shutdown`]: logs, Prometheus metrics and the one
//!   shutdown signal, shared with the workers.
//! - `testkit` (feature `testkit`): helpers for integration tests on real Kafka.

#![forbid(unsafe_code)]

pub mod auth;
pub mod channels;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod kafka;
pub mod publisher;
pub mod server;
pub mod service;
pub mod shed;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod trace;
pub mod validate;
