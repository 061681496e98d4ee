//! Property tests: no input makes a normalizer panic, and whatever a channel
//! normalizer accepts is a valid, deterministic, bounded set of envelopes.
//!
//! Inputs: arbitrary bytes, arbitrary JSON (recursive, with the channels' own
//! keys so generated documents reach deep into the parsers), webhook-shaped
//! JSON, and the real fixtures with random fields dropped or replaced.

use std::{
    path::PathBuf,
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use proptest::{prelude::*, sample::Index};
use serde_json::{Map, Value};
use switchboard_broker::{
    channels::{Limits, normalize},
    validate,
};
use switchboard_proto::v1::Channel;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

const CONTENT_TYPES: [&str; 6] = [
    "",
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/x-protobuf",
    "text/plain",
];

/// Small limits, so the limit checks are reached too.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (1..64usize, 1..8usize, 1..64usize, 1..12usize).prop_map(
            |(max_body_kib, max_events, max_text_bytes, max_depth)| Limits {
                max_body_bytes: max_body_kib * 1024,
                max_events,
                max_text_bytes,
                max_depth,
            }
        ),
    ]
}

/// Runs the normalizer and checks what must hold of any output.
fn check(channel: Channel, payload: &[u8], content_type: &str, limits: &Limits) {
    let result = normalize(channel, "acme", payload, content_type, limits, now());
    // Pure: the same input gives the same output.
    let again = normalize(channel, "acme", payload, content_type, limits, now());
    match (&result, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("not deterministic"),
    }
    match result {
        Ok(envelopes) => {
            assert!(envelopes.len() <= limits.max_events);
            // Web chat posts whole envelopes, checked later by validation;
            // the channel normalizers must only ever produce valid ones.
            if channel != Channel::Webchat {
                for envelope in envelopes {
                    assert_eq!(envelope.channel(), channel);
                    validate::normalize(
                        "payload",
                        envelope.clone(),
                        now(),
                        std::time::Duration::from_secs(300),
                    )
                    .unwrap_or_else(|e| panic!("{e}: {envelope:?}"));
                }
            }
        }
        Err(error) => {
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
        }
    }
}

/// Keys and strings the channels use, so random documents hit real paths.
const WORDS: &[&str] = &[
    "object",
    "entry",
    "changes",
    "field",
    "value",
    "messages",
    "statuses",
    "metadata",
    "phone_number_id",
    "contacts",
    "profile",
    "name",
    "wa_id",
    "user_id",
    "from",
    "id",
    "timestamp",
    "type",
    "text",
    "body",
    "image",
    "caption",
    "context",
    "reaction",
    "emoji",
    "message_id",
    "interactive",
    "button_reply",
    "list_reply",
    "button",
    "payload",
    "order",
    "product_items",
    "quantity",
    "item_price",
    "system",
    "location",
    "latitude",
    "longitude",
    "status",
    "recipient_id",
    "errors",
    "code",
    "messaging",
    "standby",
    "sender",
    "recipient",
    "message",
    "mid",
    "is_echo",
    "is_deleted",
    "quick_reply",
    "reply_to",
    "attachments",
    "postback",
    "referral",
    "ref",
    "delivery",
    "mids",
    "watermark",
    "read",
    "action",
    "unreact",
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "new_owner_app_id",
    "page",
    "instagram",
    "whatsapp_business_account",
    "share",
    "ig_reel",
    "story_mention",
    "sent",
    "delivered",
    "failed",
    "conversationId",
    "direction",
    "INBOUND",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Plausible times, in seconds and milliseconds, as numbers and text.
        (1_600_000_000i64..1_760_000_000).prop_map(Value::from),
        (1_600_000_000_000i64..1_760_000_000_000).prop_map(Value::from),
        (1_600_000_000i64..1_760_000_000).prop_map(|t| Value::from(t.to_string())),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::from),
    ]
}

/// Arbitrary JSON, up to about `depth` levels deep.
fn json(depth: u32) -> impl Strategy<Value = Value> + Clone {
    json_leaf().prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A Meta-shaped webhook with arbitrary insides.
fn webhook() -> impl Strategy<Value = Value> {
    let event = json(4);
    let entry = (
        word(),
        proptest::collection::vec((word(), json(5)), 0..3),
        proptest::collection::vec(event.clone(), 0..3),
        proptest::collection::vec(event, 0..2),
    )
        .prop_map(|(id, changes, messaging, standby)| {
            let changes: Vec<Value> = changes
                .into_iter()
                .map(|(field, value)| serde_json::json!({"field": field, "value": value}))
                .collect();
            serde_json::json!({
                "id": id,
                "changes": changes,
                "messaging": messaging,
                "standby": standby,
            })
        });
    (
        proptest::sample::select(&["whatsapp_business_account", "page", "instagram", "x"][..]),
        proptest::collection::vec(entry, 0..3),
    )
        .prop_map(|(object, entry)| serde_json::json!({"object": object, "entry": entry}))
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Every fixture: its channel (by name) and body.
static FIXTURES: LazyLock<Vec<(Channel, String, Vec<u8>)>> = LazyLock::new(|| {
    let mut fixtures: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let channel = match name.split('_').next().unwrap() {
                "whatsapp" => Channel::Whatsapp,
                "messenger" => Channel::Messenger,
                "instagram" => Channel::Instagram,
                "sms" => Channel::Sms,
                "webchat" => Channel::Webchat,
                other => panic!("fixture for an unknown channel: {other}"),
            };
            (channel, name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    fixtures.sort_by(|a, b| a.1.cmp(&b.1));
    fixtures
});

/// Every JSON pointer in `value` (the root excluded).
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        let path = format!("{at}/{key}");
        pointers(child, &path, out);
        out.push(path);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    Stringify,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::Remove),
        3 => json(3).prop_map(Mutation::Replace),
        1 => Just(Mutation::Stringify),
    ]
}

/// Applies `mutation` at the pointer chosen by `index`, if any is left.
fn mutate(value: &mut Value, index: Index, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(value, "", &mut all);
    if all.is_empty() {
        return;
    }
    let at = &all[index.index(all.len())];
    match mutation {
        Mutation::Remove => {
            let (parent, key) = at.rsplit_once('/').unwrap();
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    items.remove(key.parse::<usize>().unwrap());
                }
                _ => {}
            }
        }
        Mutation::Replace(new) => *value.pointer_mut(at).unwrap() = new.clone(),
        Mutation::Stringify => {
            let target = value.pointer_mut(at).unwrap();
            *target = Value::String(target.to_string());
        }
    }
}

// 256 cases per property by default; `PROPTEST_CASES=100000` for a long run.
proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        channel in proptest::sample::select(&Channel::ALL[..]),
        content_type in proptest::sample::select(&CONTENT_TYPES[..]),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        limits in limits(),
    ) {
        check(channel, &payload, content_type, &limits);
    }

    #[test]
    fn arbitrary_json_never_panics(
        channel in proptest::sample::select(&Channel::ALL[..]),
        value in json(8),
        limits in limits(),
    ) {
        let payload = serde_json::to_vec(&value).unwrap();
        check(channel, &payload, "application/json", &limits);
    }

    #[test]
    fn webhook_shaped_json_never_panics(
        channel in proptest::sample::select(&Channel::ALL[1..4]),
        value in webhook(),
        limits in limits(),
    ) {
        let payload = serde_json::to_vec(&value).unwrap();
        check(channel, &payload, "application/json", &limits);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        fixture in any::<Index>(),
        mutations in proptest::collection::vec((any::<Index>(), mutation()), 1..4),
        limits in limits(),
    ) {
        let (channel, _, body) = fixture.get(&FIXTURES);
        if *channel == Channel::Sms {
            // Forms are mutated as bytes below.
            return Ok(());
        }
        let mut value: Value = serde_json::from_slice(body).unwrap();
        for (index, mutation) in &mutations {
            mutate(&mut value, *index, mutation);
        }
        let payload = serde_json::to_vec(&value).unwrap();
        check(*channel, &payload, "application/json", &limits);
    }

    #[test]
    fn mutated_fixture_bytes_never_panic(
        fixture in any::<Index>(),
        edits in proptest::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 1..8),
        truncate in any::<Index>(),
    ) {
        let (channel, _, body) = fixture.get(&FIXTURES);
        let mut payload = body.clone();
        for (at, byte, op) in edits {
            if payload.is_empty() {
                break;
            }
            let i = at.index(payload.len());
            match op {
                0 => payload[i] = byte,
                1 => { payload.remove(i); }
                _ => payload.insert(i, byte),
            }
        }
        check(*channel, &payload, "", &Limits::default());
        let cut = truncate.index(payload.len() + 1);
        check(*channel, &payload[..cut], "", &Limits::default());
    }

    #[test]
    fn arbitrary_forms_never_panic(
        fields in proptest::collection::vec(
            (
                proptest::sample::select(&[
                    "MessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0",
                    "MediaUrl1", "MediaContentType0", "MediaContentType1", "AccountSid",
                ][..]),
                prop_oneof![any::<String>(), "[0-9]{1,3}", "(stop|START| Quit )"],
            ),
            0..10,
        ),
    ) {
        let payload = fields
            .iter()
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        check(Channel::Sms, payload.as_bytes(), "", &Limits::default());
    }
}

/// Form-encodes `value`: `%XX` for everything but ASCII letters and digits.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every unmutated fixture passes `check` (so the mutation tests start from
/// accepted inputs).
#[test]
fn fixtures_pass_the_same_checks() {
    for (channel, name, body) in FIXTURES.iter() {
        let result = normalize(*channel, "acme", body, "", &Limits::default(), now());
        assert!(result.is_ok(), "{name}: {result:?}");
        check(*channel, body, "", &Limits::default());
    }
}
