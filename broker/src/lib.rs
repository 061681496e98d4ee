//! Switchboard's ingestion node.
//!
//! Internal services publish canonical envelopes over gRPC; the node
//! validates and normalizes them and publishes them to Kafka, keyed by
//! conversation, acknowledging only once Kafka has the message.
//!
//! It shares only `switchboard-runtime` (Kafka clients, config loading,
//! shutdown, trace context, telemetry) with the routing workers, and never
//! depends on them: Kafka is the only seam between the two.
//!
//! Layout, by role, from the wire inwards:
//! - [`server`]: the gRPC server (health, reflection, size limits, TLS) and
//!   its lifecycle.
//! - [`service`]: the `switchboard.v1.Ingest` RPCs, and the webhook path
//!   that `IngestWebhook` and the HTTP listener share.
//! - [`http`]: the HTTP webhook listener: signed provider webhooks, Meta's
//!   verification handshake, web chat with keys and allowed origins.
//! - [`auth`]: tenants, hashed API keys and per-tenant rate limits.
//! - [`channels`]: webhook normalizers, one module per channel.
//! - [`validate`]: request validation and normalization (ids, timestamps).
//! - [`dedupe`]: the node's bounded, time-windowed dedupe of retried webhooks.
//! - [`publisher`]: the bounded Kafka producer behind every RPC, and Kafka's
//!   health as the node sees it.
//! - [`calls`]: calls per client connection, bounded by HTTP/2 and counted
//!   when a connection fills.
//! - [`error`]: typed errors, sorted into retryable and fatal, mapped to gRPC codes.
//! - [`metrics`]: the node's metric names and help texts.
//! - [`config`]: the node's configuration, from which each component takes
//!   its own section.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broadcasts;
pub mod calls;
pub mod channels;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod http;
pub mod metrics;
pub mod publisher;
pub mod server;
pub mod service;
pub mod validate;
