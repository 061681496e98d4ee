//! Switchboard's harness: the whole pipeline in one process, and load.
//!
//! - [`pipeline`]: starts an ingestion node, routing workers and a bot
//!   against a given Kafka, in-process. The embedded demo
//!   (`switchboard-embedded`) and the end-to-end tests use it.
//! - [`embedded`]: the same pipeline on librdkafka's in-memory mock
//!   cluster, for a first run with nothing installed.
//! - [`loadgen`]: the load generator's engine: conversation workloads sent
//!   through `Publish`, `PublishStream` or `IngestWebhook` (or straight to
//!   Kafka, as the limit), in open or closed loop, measured with HDR
//!   histograms, optionally end to end, reported as JSON, Markdown and PNG.
//! - [`scenarios`]: benchmark scenarios on a real Kafka, each comparing
//!   Switchboard with its practical limit (raw librdkafka, a
//!   partition-serial consumer, Kafka's own latency) within one run.
//! - [`raw_pipe`]: consume, decode, produce one record per message: the
//!   limit a routing stage is measured against.
//! - [`faults`]: fault scenarios on real processes and a real Kafka
//!   (nodes and workers killed or frozen, Kafka brokers killed, a bot
//!   failing), each ending with the reconciler's report.
//! - [`state_rebuild`]: a worker's conversation-state rebuild at scale:
//!   time, rate, memory and disk per conversation.
//! - [`reconcile`]: the load generator's ledger of acknowledged messages
//!   against every destination topic: lost, reordered, duplicated.
//! - [`scaling`]: 1, 2, 3… routing worker processes on one backlog: rate,
//!   CPU per message, record sizes and bytes on disk (docs/capacity.md).
//!
//! Binaries: `switchboard-embedded` (the in-memory demo) and
//! `switchboard-bench` (the load generator).

#![forbid(unsafe_code)]

pub mod embedded;
pub mod faults;
pub mod loadgen;
pub mod pipeline;
pub mod raw_pipe;
pub mod reconcile;
pub mod scaling;
pub mod scenarios;
pub mod state_rebuild;
