use prost::Message as _;

use super::{
    report::Machine,
    sizes::{disk_bytes, full_state},
};

#[test]
fn the_full_state_holds_twenty_ids_with_their_offsets_in_under_a_kilobyte() {
    let state = full_state();
    assert_eq!(state.recent_message_hashes.len(), 20);
    assert_eq!(state.recent_message_offsets.len(), 20);
    assert!(state.opted_out && state.referral.is_some());
    let bytes = state.encoded_len();
    assert!((500..=1_000).contains(&bytes), "{bytes} bytes");
}

#[test]
fn disk_bytes_counts_only_the_topics_log_segments_on_every_node() {
    let dir = std::env::temp_dir().join(format!("scaling-disk-{}", uuid::Uuid::now_v7().simple()));
    let write = |path: &str, len: usize| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, vec![0u8; len]).expect("write");
    };
    write("node-1/kraft-combined-logs/t.analytics-0/00000.log", 100);
    write(
        "node-1/kraft-combined-logs/t.analytics-0/00000.index",
        10_000,
    );
    write("node-2/kraft-combined-logs/t.analytics-11/00000.log", 50);
    // Another topic whose name starts with this one's.
    write("node-2/kraft-combined-logs/t.analytics.pipe-0/00000.log", 7);
    write("node-3/kraft-combined-logs/t.state-0/00000.log", 3);
    assert_eq!(disk_bytes(&dir, "t.analytics"), 150);
    assert_eq!(disk_bytes(&dir, "t.state"), 3);
    assert_eq!(disk_bytes(&dir, "t.missing"), 0);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn the_machine_is_never_more_than_fully_busy() {
    let before = Machine::now();
    let mut x = 0u64;
    for i in 0..5_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    assert!(x != 1);
    let busy = Machine::now().busy_since(&before);
    assert!((0.0..=100.0).contains(&busy), "{busy}%");
}
