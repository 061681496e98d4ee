//! Measures what the dedupe cache costs per remembered id: the resident
//! memory (`/proc/self/statm`) this process gains while 1,000,000 channel
//! message ids are published once through [`Dedupe::publish_once`] and
//! acknowledged, with the node's allocator (mimalloc), up to the cache's
//! ceiling (`max_entries` = the ids: two full generations of half each).
//! Resident memory also holds what the allocator kept of the maps'
//! smaller tables, outgrown on the way, so it reads a little above the
//! maps' own size.
//!
//!     cargo run --release -p switchboard-broker --example dedupe_memory [-- IDS]
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
    let ids: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("a number of ids"));
    let dedupe = Dedupe::new(DedupeConfig {
        window: Duration::from_secs(3_600),
        max_entries: ids,
    });
    let before = rss();
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
    assert_eq!(dedupe.len(), ids);
    println!(
        "{ids} ids: resident memory grew by {:.1} MiB, {:.0} bytes per id",
        (after - before) as f64 / f64::from(1 << 20),
        (after - before) as f64 / ids as f64
    );
}
