//! Conversation keys and the partitioner.
//!
//! Every message is keyed by its conversation, `tenant/channel/conversation`,
//! so one conversation always lands in one partition and stays in order.
//! Producers are configured with librdkafka's `murmur2_random` partitioner,
//! which for non-empty keys is exactly Kafka Java's default:
//! `(murmur2(key) & 0x7fffffff) % partitions`. [`partition_for`] computes the
//! same thing, so tests and tools can check where a conversation lives.

use crate::v1::Channel;

/// The Kafka key of a conversation.
pub fn conversation_key(tenant_id: &str, channel: Channel, conversation_id: &str) -> String {
    let channel = channel.slug();
    let mut key =
        String::with_capacity(tenant_id.len() + channel.len() + conversation_id.len() + 2);
    key.push_str(tenant_id);
    key.push('/');
    key.push_str(channel);
    key.push('/');
    key.push_str(conversation_id);
    key
}

/// Kafka's `Utils.murmur2` (32-bit MurmurHash2, seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's Java default partitioner (and librdkafka's
/// `murmur2_random`) picks for a non-empty key.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_java_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn conversation_key_layout() {
        assert_eq!(
            conversation_key("acme", Channel::Whatsapp, "c-1"),
            "acme/whatsapp/c-1"
        );
    }

    #[test]
    fn same_conversation_same_partition() {
        let key = conversation_key("acme", Channel::Sms, "+15550001");
        let p = partition_for(key.as_bytes(), 12);
        for _ in 0..100 {
            assert_eq!(partition_for(key.as_bytes(), 12), p);
        }
        assert!((0..12).contains(&p));
    }
}
