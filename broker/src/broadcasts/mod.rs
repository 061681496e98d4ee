//! The `Broadcasts` gRPC service: start, follow and cancel broadcasts.
//!
//! `Start` and `Cancel` publish a `BroadcastCommand` to the commands topic,
//! keyed by broadcast id, and answer once Kafka has it; the workers'
//! broadcast stage does the rest. `Get` answers from [`view`]: the node
//! follows the workers' progress and tally topics (both compacted and
//! small) and keeps the latest of each.

pub mod config;
pub mod service;
pub mod view;
