//! Microbenchmarks of the per-message hot paths: webhook normalization per
//! channel, envelope encode and decode, the partitioner, rule evaluation
//! with 10 and 1,000 rules, a conversation state's lookup, and a routed
//! message's analytics record, and the node's dedupe cache.
//!
//! `cargo bench -p switchboard-benches --bench micro` (add `-- <filter>` to
//! pick some). These are measurements, not tests: nothing here asserts speed.

use std::{collections::HashSet, hint::black_box, path::PathBuf, time::SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use switchboard_broker::channels::{self, Limits};
use switchboard_proto::{
    partition::partition_for,
    v1::{Channel, Direction, Envelope, RouteDecision, Text, envelope::Content},
};
use switchboard_runtime::trace::TraceParent;
use switchboard_workers::{
    config::WorkersConfig, destinations::topics::TopicOutputs, rules::RuleSet,
    state::PartitionStates,
};

/// One fixture per channel, the most common shape.
const FIXTURES: &[(&str, Channel, &str)] = &[
    ("whatsapp_text.json", Channel::Whatsapp, "application/json"),
    (
        "whatsapp_statuses_batch.json",
        Channel::Whatsapp,
        "application/json",
    ),
    (
        "messenger_text_quick_reply.json",
        Channel::Messenger,
        "application/json",
    ),
    (
        "instagram_story_mention.json",
        Channel::Instagram,
        "application/json",
    ),
    (
        "sms_inbound.form",
        Channel::Sms,
        "application/x-www-form-urlencoded",
    ),
    (
        "webchat_envelope.json",
        Channel::Webchat,
        "application/json",
    ),
];

fn normalization(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../broker/tests/fixtures/webhooks");
    let limits = Limits::default();
    let mut group = c.benchmark_group("normalize");
    for (file, channel, content_type) in FIXTURES {
        let body = std::fs::read(dir.join(file)).expect("fixture");
        let now = SystemTime::now();
        let events = channels::normalize(*channel, "acme", &body, content_type, &limits, now)
            .expect("the fixture normalizes")
            .len();
        group.throughput(Throughput::Elements(events as u64));
        group.bench_function(*file, |b| {
            b.iter(|| {
                channels::normalize(
                    *channel,
                    "acme",
                    black_box(&body),
                    content_type,
                    &limits,
                    now,
                )
            })
        });
    }
    group.finish();
}

fn sample_envelope(body_bytes: usize) -> Envelope {
    Envelope {
        message_id: "0192f1c4-7d3e-7a51-9d3c-5f0e4c1a2b3c".into(),
        tenant_id: "acme".into(),
        channel: Channel::Whatsapp as i32,
        direction: Direction::Inbound as i32,
        conversation_id: "106540352242922:16505551234".into(),
        channel_message_id: "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTdCRjM3NUM2N0Y0MjY2M0QwOQA=".into(),
        content: Some(Content::Text(Text {
            body: "x".repeat(body_bytes),
        })),
        attributes: [("language".to_owned(), "en-US".to_owned())].into(),
        ..Default::default()
    }
}

fn envelope_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for size in [64, 1024] {
        let envelope = sample_envelope(size);
        let bytes = envelope.encode_to_vec();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &envelope, |b, e| {
            b.iter(|| black_box(e).encode_to_vec())
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| Envelope::decode(black_box(bytes.as_slice())))
        });
    }
    group.finish();
}

fn partitioner(c: &mut Criterion) {
    let envelope = sample_envelope(8);
    c.bench_function("partition/key_and_murmur2", |b| {
        b.iter(|| partition_for(black_box(&envelope).conversation_key().as_bytes(), 12))
    });
}

/// `n` rules that the sample message does not match (wrong keyword), so
/// every one is evaluated, then the default applies.
fn rules_file(n: usize) -> String {
    keyword_rules_file(n, "")
}

/// `n` rules for whatsapp and messenger text with keywords `refund {i}`
/// and `order {i}`, each followed by `end`.
fn keyword_rules_file(n: usize, end: &str) -> String {
    let mut text = String::from("default = [{ bot = \"echo\" }]\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[rules]]\nid = \"r{i}\"\nchannels = [\"whatsapp\", \"messenger\"]\ndirection = \"inbound\"\n\
             content = [\"text\"]\nkeywords = [\"refund {i}{end}\", \"order {i}{end}\"]\ndestinations = [{{ agent = \"q{i}\" }}]\n"
        ));
    }
    text
}

/// `n` rules without keywords, each for one of 40 tenants and one of three
/// channels, none of which the sample message matches (wrong language): a
/// message tries only its tenant's and channel's rules.
fn spread_rules_file(n: usize) -> String {
    let mut text = String::from("default = [{ bot = \"echo\" }]\n");
    for i in 0..n {
        let channel = ["whatsapp", "messenger", "sms"][i % 3];
        let tenant = i % 40;
        text.push_str(&format!(
            "[[rules]]\nid = \"r{i}\"\ntenants = [\"t{tenant}\"]\nchannels = [\"{channel}\"]\n\
             languages = [\"fr\"]\ndestinations = [{{ agent = \"q{i}\" }}]\n"
        ));
    }
    text
}

fn rules(c: &mut Criterion) {
    let bots = HashSet::from(["echo"]);
    let envelope = sample_envelope(120);
    let mut group = c.benchmark_group("rules");
    for n in [10, 1000] {
        let rules = RuleSet::parse(&rules_file(n), &bots).expect("rules parse");
        assert_eq!(rules.decide(&envelope, false).rule_id, "default");
        group.bench_function(BenchmarkId::new("decide_no_match", n), |b| {
            b.iter(|| rules.decide(black_box(&envelope), false).rule_id.len())
        });

        // The last rule's keyword: every rule is tried. (The keywords end
        // in "." so that `order 9` is not found in `order 999.`.)
        let ended = RuleSet::parse(&keyword_rules_file(n, "."), &bots).expect("rules parse");
        let mut last = envelope.clone();
        last.content = Some(Content::Text(Text {
            body: format!("{} order {}.", "x".repeat(110), n - 1),
        }));
        assert_eq!(ended.decide(&last, false).rule_id, format!("r{}", n - 1));
        group.bench_function(BenchmarkId::new("decide_match_last", n), |b| {
            b.iter(|| ended.decide(black_box(&last), false).rule_id.len())
        });

        let spread = RuleSet::parse(&spread_rules_file(n), &bots).expect("rules parse");
        let t0 = Envelope {
            tenant_id: "t0".into(),
            ..envelope.clone()
        };
        assert_eq!(spread.decide(&t0, false).rule_id, "default");
        group.bench_function(BenchmarkId::new("decide_no_match_spread", n), |b| {
            b.iter(|| spread.decide(black_box(&t0), false).rule_id.len())
        });
    }
    group.finish();
}

/// A message's lookup of its conversation's state, in memory, among 2,500
/// conversations (a partition's share of the routing scenario's 30k) and
/// among 30,000 (the whole worker's, so that the states no longer fit the
/// processor's caches), each holding 20 recent ids, looked up in turn.
fn state_lookup(c: &mut Criterion) {
    let cached = std::num::NonZeroUsize::new(50_000).expect("non-zero");
    let mut group = c.benchmark_group("state");
    for n in [2_500u64, 30_000] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut states = PartitionStates::open(dir.path(), "bench.state", 0, cached).expect("open");
        let keys: Vec<String> = (0..n)
            .map(|i| format!("acme/whatsapp/{:012}", 15_550_000_000u64 + i))
            .collect();
        for key in &keys {
            let state = states.get_mut(key).expect("state");
            state.recent_message_hashes = (0..20).collect();
            state.recent_message_offsets = (0..20).collect();
        }
        // Looked up in a scattered order, as messages of many conversations
        // interleave: every 7,919th key (a prime), wrapping around.
        let mut next = (0..n).cycle().map(|i| &keys[(i * 7_919 % n) as usize]);
        group.bench_function(BenchmarkId::new("lookup_cached", n), |b| {
            b.iter(|| {
                let key = next.next().expect("cycle");
                states.get_mut(black_box(key)).expect("state").owner
            })
        });
    }
    group.finish();
}

/// A routed message's analytics record: the envelope encoded again, or
/// the record's bytes embedded as read (routing changed nothing in it).
fn analytics_record(c: &mut Criterion) {
    let mut config = WorkersConfig::default();
    config.kafka.reads_topic_limits = false; // not connected: no Kafka to ask
    let outputs = TopicOutputs::new(&config.outputs()).expect("a producer, not connected");
    let decision = RouteDecision {
        message_id: "0192f1c4-7d3e-7a51-9d3c-5f0e4c1a2b3c".into(),
        rule_id: "default".into(),
        reason: "no rule matched".into(),
        decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
        ..Default::default()
    };
    let trace = TraceParent::root();
    let key = "acme/whatsapp/106540352242922:16505551234";
    let mut group = c.benchmark_group("analytics");
    for size in [64, 1024] {
        let envelope = sample_envelope(size);
        let read = envelope.encode_to_vec();
        group.bench_with_input(BenchmarkId::new("encoded", size), &envelope, |b, e| {
            b.iter(|| outputs.analytics_of(key, black_box(e), None, &decision, &trace))
        });
        group.bench_with_input(BenchmarkId::new("as_read", size), &envelope, |b, e| {
            b.iter(|| outputs.analytics_of(key, black_box(e), Some(&read), &decision, &trace))
        });
    }
    group.finish();
}

/// The node's dedupe cache at its default size, filled to most of a
/// generation: a copy of a published id, and a new id (hash, lookups, the
/// pending entry, then its settling into the compact entry once "Kafka"
/// answered).
fn dedupe(c: &mut Criterion) {
    use std::fmt::Write as _;

    use futures::FutureExt as _;
    use switchboard_broker::{
        dedupe::{Dedupe, DedupeConfig, Published},
        publisher::Ack,
    };

    let config = DedupeConfig::default();
    let dedupe = Dedupe::new(config.clone());
    let message_id = "0192f1c4-7d3e-7a51-9d3c-5f0e4c1a2b3c";
    let mut cmid = String::new();
    let mut publish = |n: u64| {
        cmid.clear();
        write!(cmid, "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUZCN0Q{n}").expect("a String");
        let (outcome, duplicate) = dedupe
            .publish_once("acme", Channel::Whatsapp as i32, &cmid, || {
                Ok(async move {
                    Ok(Published {
                        message_id: message_id.into(),
                        ack: Ack {
                            partition: 3,
                            offset: n as i64,
                        },
                    })
                })
            })
            .expect("enqueued");
        let published = outcome
            .now_or_never()
            .expect("answered")
            .expect("published");
        (published, duplicate)
    };
    // Most of a generation, so lookups go to a table of its real size.
    let fill = (config.generation_capacity() * 9 / 10) as u64;
    for n in 0..fill {
        publish(n);
    }
    let mut group = c.benchmark_group("dedupe");
    let mut n = 0;
    group.bench_function("duplicate", |b| {
        b.iter(|| {
            n += 7919;
            black_box(publish(n % fill))
        })
    });
    // New ids from here on: the cache rotates every generation, as a
    // node's does under a steady load, and pays for its fresh tables.
    let mut next = fill;
    group.bench_function("new_id", |b| {
        b.iter(|| {
            next += 1;
            black_box(publish(next))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    normalization,
    envelope_codec,
    partitioner,
    rules,
    state_lookup,
    analytics_record,
    dedupe
);
criterion_main!(benches);
