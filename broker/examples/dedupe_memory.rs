//! Measures what the dedupe cache costs per remembered id: the resident
//! memory (`/proc/self/statm`) this process gains while channel message ids
//! are published once through [`Dedupe::publish_once`] and acknowledged,
//! with the node's allocator (mimalloc), until the cache of `max_entries`
//! (default 1,000,000) is at its ceiling: both generations full, just
//! before the next rotation.
//!
//!     cargo run --release -p switchboard-broker --example dedupe_memory [-- MAX_ENTRIES]
//!
//! Ids look like WhatsApp's (`wamid.` and 56 more characters), the tenant
//! is short, and message ids are node-assigned UUIDv7s, as in production.

use std::time::Duration;

use futures::FutureExt as _;
use switchboard_broker::{
    dedupe::{Dedupe, DedupeConfig, Published},
    publisher::Ack,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, in bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let max_entries: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("a number of ids"));
    let config = DedupeConfig {
        window: Duration::from_secs(3_600),
        max_entries,
    };
    let ids = 2 * config.generation_capacity();
    // Before the cache exists: its tables are sized when it starts.
    let before = rss();
    let dedupe = Dedupe::new(config);
    for i in 0..ids {
        let channel_message_id = format!("wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QUNBNDM2{i:020}");
        let (outcome, duplicate) = dedupe
            .publish_once("acme", 1, &channel_message_id, || {
                let message_id = uuid::Uuid::now_v7().to_string();
                Ok(async move {
                    Ok(Published {
                        message_id,
                        ack: Ack {
                            partition: (i % 12) as i32,
                            offset: i as i64,
                        },
                    })
                }
                .boxed())
            })
            .expect("publish");
        assert!(!duplicate);
        outcome.await.expect("published");
    }
    let after = rss();
    assert_eq!(dedupe.len(), ids, "both generations full");
    let grown = (after - before) as f64;
    println!(
        "max_entries {max_entries}, {ids} ids remembered at the ceiling: resident memory grew by {:.1} MiB, {:.0} bytes per remembered id ({:.0} per max_entries)",
        grown / f64::from(1 << 20),
        grown / ids as f64,
        grown / max_entries as f64
    );
}
