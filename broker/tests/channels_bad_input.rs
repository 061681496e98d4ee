//! Bad webhook bodies: each row names the exact fields reported, so a caller
//! (and the channel's retry log) learns what to fix.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use switchboard_broker::{
    channels::{Limits, normalize},
    error::IngestError,
};
use switchboard_proto::v1::Channel;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const WA_VALUE: &str = "payload.entry[0].changes[0].value";
const WA_MSG: &str = "payload.entry[0].changes[0].value.messages[0]";
const FB_EVENT: &str = "payload.entry[0].messaging[0]";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    std::fs::read(path.join(name)).expect("fixture")
}

/// A JSON fixture, changed by `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(name)).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

/// Sets the value at JSON pointer `at`, adding the field if it is missing.
fn set(value: &mut Value, at: &str, new: Value) {
    if let Some(old) = value.pointer_mut(at) {
        *old = new;
        return;
    }
    let (parent, key) = at.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{parent}"))
        .insert(key.to_owned(), new);
}

/// Removes the field at JSON pointer `at`.
fn remove(value: &mut Value, at: &str) {
    let (parent, key) = at.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{parent}"))
        .remove(key)
        .unwrap_or_else(|| panic!("{at}"));
}

const WA_MSG_PTR: &str = "/entry/0/changes/0/value/messages/0";
const FB_EVENT_PTR: &str = "/entry/0/messaging/0";

fn wa_text(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    edited("whatsapp_text.json", edit)
}

fn wa_message(field: &str, new: Value) -> Vec<u8> {
    wa_text(|v| set(v, &format!("{WA_MSG_PTR}/{field}"), new))
}

fn fb_text(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    edited("messenger_text_quick_reply.json", edit)
}

/// `depth` nested arrays inside a WhatsApp entry.
fn nested(depth: usize) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
    .into_bytes()
}

struct Case {
    name: &'static str,
    channel: Channel,
    tenant_id: &'static str,
    content_type: &'static str,
    payload: Vec<u8>,
    limits: Limits,
    fields: Vec<String>,
    /// A phrase the first violation's description must contain.
    mentions: Option<&'static str>,
}

fn case(name: &'static str, channel: Channel, payload: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        channel,
        tenant_id: "acme",
        content_type: if channel == Channel::Sms { FORM } else { JSON },
        payload: payload.into(),
        limits: Limits::default(),
        fields: Vec::new(),
        mentions: None,
    }
}

impl Case {
    fn content_type(self, content_type: &'static str) -> Self {
        Self {
            content_type,
            ..self
        }
    }
    fn tenant(self, tenant_id: &'static str) -> Self {
        Self { tenant_id, ..self }
    }
    fn limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }
    fn fields(self, fields: &[&str]) -> Self {
        Self {
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            ..self
        }
    }
    fn at(self, path: String) -> Self {
        Self {
            fields: vec![path],
            ..self
        }
    }
    fn mentions(self, phrase: &'static str) -> Self {
        Self {
            mentions: Some(phrase),
            ..self
        }
    }
}

fn cases() -> Vec<Case> {
    use Channel::{Instagram, Messenger, Sms, Unspecified, Webchat, Whatsapp};
    let text = fixture("whatsapp_text.json");
    vec![
        // --- The request around the body.
        case("unknown channel", Unspecified, text.clone()).fields(&["channel"]),
        case("no tenant", Whatsapp, text.clone())
            .tenant("")
            .fields(&["tenant_id"]),
        case("form posted to WhatsApp", Whatsapp, text.clone())
            .content_type(FORM)
            .fields(&["content_type"]),
        case("JSON posted to SMS", Sms, text.clone())
            .content_type(JSON)
            .fields(&["content_type"]),
        case("protobuf posted to Messenger", Messenger, text.clone())
            .content_type("application/x-protobuf")
            .fields(&["content_type"]),
        case("latin-1 charset", Whatsapp, text.clone())
            .content_type("application/json; charset=iso-8859-1")
            .fields(&["content_type"]),
        case("everything wrong at once", Unspecified, text.clone())
            .tenant("")
            .limits(Limits {
                max_body_bytes: 10,
                ..Limits::default()
            })
            .fields(&["tenant_id", "channel", "payload"]),
        case("body over the size limit", Whatsapp, text.clone())
            .limits(Limits {
                max_body_bytes: 100,
                ..Limits::default()
            })
            .fields(&["payload"])
            .mentions("limit of 100 bytes"),
        // --- Bodies that are not JSON.
        case("not JSON", Whatsapp, "hello").fields(&["payload"]),
        case("empty body", Messenger, "").fields(&["payload"]),
        case("truncated JSON", Whatsapp, &text[..text.len() / 2])
            .fields(&["payload"])
            .mentions("not valid JSON"),
        case("trailing garbage", Whatsapp, [&text[..], b"}"].concat()).fields(&["payload"]),
        case("invalid UTF-8", Whatsapp, b"{\"object\":\"\xff\"}".to_vec())
            .fields(&["payload"])
            .mentions("UTF-8"),
        case("JSON but not an object", Instagram, "[1, 2]").fields(&["payload"]),
        case("nested past max_depth", Whatsapp, nested(40))
            .fields(&["payload"])
            .mentions("deeper than 32"),
        case(
            "nested past serde_json's own limit",
            Messenger,
            nested(5000),
        )
        .fields(&["payload"])
        .mentions("deeper than 32"),
        case("nesting inside strings does not count", Whatsapp, {
            let deep = "[".repeat(100);
            format!(r#"{{"object":"page","entry":[],"x":"{deep}"}}"#)
        })
        .fields(&["payload.object"]),
        // --- Meta envelopes.
        case("no object", Whatsapp, r#"{"entry": []}"#).fields(&["payload.object"]),
        case(
            "Messenger body sent as WhatsApp",
            Whatsapp,
            fixture("messenger_text_quick_reply.json"),
        )
        .fields(&["payload.object"])
        .mentions("\"whatsapp_business_account\""),
        case(
            "Messenger body sent as Instagram",
            Instagram,
            fixture("messenger_text_quick_reply.json"),
        )
        .fields(&["payload.object"]),
        case("no entry", Messenger, r#"{"object": "page"}"#).fields(&["payload.entry"]),
        case(
            "entry is not an array",
            Messenger,
            r#"{"object": "page", "entry": {}}"#,
        )
        .fields(&["payload.entry"]),
        case(
            "entry[1] is not an object",
            Whatsapp,
            r#"{"object": "whatsapp_business_account", "entry": [{}, 7]}"#,
        )
        .fields(&["payload.entry[1]"]),
        // --- WhatsApp messages.
        case(
            "missing from, and no contact to fall back on",
            Whatsapp,
            wa_text(|v| {
                remove(v, &format!("{WA_MSG_PTR}/from"));
                remove(v, "/entry/0/changes/0/value/contacts");
            }),
        )
        .at(format!("{WA_MSG}.from")),
        case(
            "missing from, and several contacts",
            Whatsapp,
            edited("whatsapp_batch_mixed.json", |v| {
                remove(v, "/entry/0/changes/1/value/messages/0/from");
            }),
        )
        .at("payload.entry[0].changes[1].value.messages[0].from".to_owned()),
        case(
            "missing id",
            Whatsapp,
            wa_text(|v| remove(v, &format!("{WA_MSG_PTR}/id"))),
        )
        .at(format!("{WA_MSG}.id")),
        case("empty id", Whatsapp, wa_message("id", json!(""))).at(format!("{WA_MSG}.id")),
        case(
            "id over 256 bytes",
            Whatsapp,
            wa_message("id", json!("w".repeat(257))),
        )
        .at(format!("{WA_MSG}.id")),
        case(
            "id of the wrong type",
            Whatsapp,
            wa_message("id", json!(["wamid"])),
        )
        .at(format!("{WA_MSG}.id"))
        .mentions("invalid type"),
        case(
            "missing timestamp",
            Whatsapp,
            wa_text(|v| remove(v, &format!("{WA_MSG_PTR}/timestamp"))),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "non-numeric timestamp",
            Whatsapp,
            wa_message("timestamp", json!("yesterday")),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "fractional timestamp",
            Whatsapp,
            wa_message("timestamp", json!("1749416383.5")),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "negative timestamp",
            Whatsapp,
            wa_message("timestamp", json!("-1749416383")),
        )
        .at(format!("{WA_MSG}.timestamp"))
        .mentions("negative"),
        case(
            "zero timestamp",
            Whatsapp,
            wa_message("timestamp", json!("0")),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "timestamp in milliseconds",
            Whatsapp,
            wa_message("timestamp", json!("1749416383000")),
        )
        .at(format!("{WA_MSG}.timestamp"))
        .mentions("future"),
        case(
            "timestamp past i64",
            Whatsapp,
            wa_message("timestamp", json!("99999999999999999999999")),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "timestamp of the wrong type",
            Whatsapp,
            wa_message("timestamp", json!({"seconds": 1})),
        )
        .at(format!("{WA_MSG}.timestamp")),
        case(
            "missing type",
            Whatsapp,
            wa_text(|v| remove(v, &format!("{WA_MSG_PTR}/type"))),
        )
        .at(format!("{WA_MSG}.type")),
        case(
            "text type without text",
            Whatsapp,
            wa_text(|v| remove(v, &format!("{WA_MSG_PTR}/text"))),
        )
        .at(format!("{WA_MSG}.text")),
        case(
            "text body of the wrong type",
            Whatsapp,
            wa_message("text", json!({"body": 5})),
        )
        .at(format!("{WA_MSG}.text.body")),
        case("text over max_text_bytes", Whatsapp, text.clone())
            .limits(Limits {
                max_text_bytes: 10,
                ..Limits::default()
            })
            .at(format!("{WA_MSG}.text.body"))
            .mentions("limit of 10 bytes"),
        case(
            "missing phone_number_id",
            Whatsapp,
            wa_text(|v| remove(v, "/entry/0/changes/0/value/metadata/phone_number_id")),
        )
        .at(format!("{WA_VALUE}.metadata.phone_number_id")),
        case(
            "messages change without value",
            Whatsapp,
            wa_text(|v| remove(v, "/entry/0/changes/0/value")),
        )
        .at(WA_VALUE.to_owned()),
        case(
            "reaction without message_id",
            Whatsapp,
            wa_text(|v| {
                set(v, &format!("{WA_MSG_PTR}/type"), json!("reaction"));
                set(v, &format!("{WA_MSG_PTR}/text"), json!(null));
                set(v, &format!("{WA_MSG_PTR}/reaction"), json!({"emoji": "👍"}));
            }),
        )
        .at(format!("{WA_MSG}.reaction.message_id")),
        case(
            "latitude out of range",
            Whatsapp,
            wa_text(|v| {
                set(v, &format!("{WA_MSG_PTR}/type"), json!("location"));
                let location = json!({"latitude": 91.5, "longitude": 2.35});
                set(v, &format!("{WA_MSG_PTR}/location"), location);
            }),
        )
        .at(format!("{WA_MSG}.location.latitude")),
        case(
            "order quantities that are not counts",
            Whatsapp,
            edited("whatsapp_order.json", |v| {
                let items = format!("{WA_MSG_PTR}/order/product_items");
                set(v, &format!("{items}/0/quantity"), json!(-2));
                set(v, &format!("{items}/1/quantity"), json!("two"));
                set(v, &format!("{items}/1/item_price"), json!("NaN"));
            }),
        )
        .fields(&[
            &format!("{WA_MSG}.order.product_items[0].quantity"),
            &format!("{WA_MSG}.order.product_items[1].quantity"),
            &format!("{WA_MSG}.order.product_items[1].item_price"),
        ]),
        case(
            "every bad message is reported, in order",
            Whatsapp,
            edited("whatsapp_batch_mixed.json", |v| {
                let value = "/entry/0/changes/1/value";
                remove(v, &format!("{value}/messages/0/id"));
                set(v, &format!("{value}/messages/1/timestamp"), json!("soon"));
                remove(v, &format!("{value}/statuses/1/recipient_id"));
                set(v, "/entry/1/changes/0/value/messages/0", json!("oops"));
            }),
        )
        .fields(&[
            "payload.entry[0].changes[1].value.messages[0].id",
            "payload.entry[0].changes[1].value.messages[1].timestamp",
            "payload.entry[0].changes[1].value.statuses[1].recipient_id",
            "payload.entry[1].changes[0].value.messages[0]",
        ]),
        case(
            "status without status",
            Whatsapp,
            edited("whatsapp_statuses_batch.json", |v| {
                remove(v, "/entry/0/changes/0/value/statuses/0/status");
            }),
        )
        .at(format!("{WA_VALUE}.statuses[0].status")),
        case(
            "status error code past i32",
            Whatsapp,
            edited("whatsapp_statuses_batch.json", |v| {
                let code = "/entry/0/changes/0/value/statuses/1/errors/0/code";
                set(v, code, json!(1_u64 << 40));
            }),
        )
        .at(format!("{WA_VALUE}.statuses[1].errors[0].code")),
        case(
            "more events than max_events",
            Whatsapp,
            fixture("whatsapp_batch_mixed.json"),
        )
        .limits(Limits {
            max_events: 3,
            ..Limits::default()
        })
        .fields(&["payload"])
        .mentions("more than 3 events"),
        // --- Messenger and Instagram.
        case(
            "missing sender",
            Messenger,
            fb_text(|v| remove(v, &format!("{FB_EVENT_PTR}/sender"))),
        )
        .at(format!("{FB_EVENT}.sender.id")),
        case(
            "missing timestamp",
            Messenger,
            fb_text(|v| remove(v, &format!("{FB_EVENT_PTR}/timestamp"))),
        )
        .at(format!("{FB_EVENT}.timestamp")),
        case(
            "timestamp in seconds, not milliseconds",
            Messenger,
            fb_text(|v| {
                set(
                    v,
                    &format!("{FB_EVENT_PTR}/timestamp"),
                    json!(1_749_416_383),
                )
            }),
        )
        .at(format!("{FB_EVENT}.timestamp"))
        .mentions("before 2000"),
        case(
            "timestamp a year ahead",
            Messenger,
            fb_text(|v| {
                set(
                    v,
                    &format!("{FB_EVENT_PTR}/timestamp"),
                    json!(1_781_536_000_000_u64),
                )
            }),
        )
        .at(format!("{FB_EVENT}.timestamp")),
        case(
            "timestamp that is a float",
            Messenger,
            fb_text(|v| {
                set(
                    v,
                    &format!("{FB_EVENT_PTR}/timestamp"),
                    json!(1_749_416_383_000.5),
                )
            }),
        )
        .at(format!("{FB_EVENT}.timestamp")),
        case(
            "message without mid",
            Messenger,
            fb_text(|v| remove(v, &format!("{FB_EVENT_PTR}/message/mid"))),
        )
        .at(format!("{FB_EVENT}.message.mid")),
        case(
            "echo without recipient",
            Messenger,
            edited("messenger_echo.json", |v| {
                remove(v, &format!("{FB_EVENT_PTR}/recipient"))
            }),
        )
        .at(format!("{FB_EVENT}.recipient.id")),
        case(
            "attachments that are not an array",
            Messenger,
            fb_text(|v| {
                set(
                    v,
                    &format!("{FB_EVENT_PTR}/message/attachments"),
                    json!("x"),
                )
            }),
        )
        .at(format!("{FB_EVENT}.message.attachments")),
        case(
            "empty mid in a delivery",
            Messenger,
            edited("messenger_delivery_read.json", |v| {
                set(v, &format!("{FB_EVENT_PTR}/delivery/mids/1"), json!(""));
            }),
        )
        .at(format!("{FB_EVENT}.delivery.mids[1]")),
        case(
            "read without watermark or mid",
            Messenger,
            edited("messenger_delivery_read.json", |v| {
                remove(v, "/entry/0/messaging/1/read/watermark");
            }),
        )
        .at("payload.entry[0].messaging[1].read.watermark".to_owned()),
        case(
            "standby event without timestamp",
            Messenger,
            edited("messenger_standby.json", |v| {
                remove(v, "/entry/0/standby/0/timestamp");
            }),
        )
        .at("payload.entry[0].standby[0].timestamp".to_owned()),
        case(
            "instagram event that is not an object",
            Instagram,
            edited("instagram_story_mention.json", |v| {
                set(v, FB_EVENT_PTR, json!(42));
            }),
        )
        .at(FB_EVENT.to_owned()),
        case(
            "too many delivered mids",
            Messenger,
            edited("messenger_delivery_read.json", |v| {
                let mids: Vec<String> = (0..20).map(|i| format!("m_{i}")).collect();
                set(v, &format!("{FB_EVENT_PTR}/delivery/mids"), json!(mids));
            }),
        )
        .limits(Limits {
            max_events: 10,
            ..Limits::default()
        })
        .fields(&["payload"]),
        // --- SMS.
        case("empty form", Sms, "").fields(&["payload.MessageSid", "payload.From", "payload.To"]),
        case(
            "missing From",
            Sms,
            "MessageSid=SM1&To=%2B15550783881&Body=hi",
        )
        .fields(&["payload.From"]),
        case(
            "From twice",
            Sms,
            "MessageSid=SM1&From=%2B1&To=%2B2&From=%2B3&Body=hi",
        )
        .fields(&["payload.From"])
        .mentions("more than once"),
        case(
            "Body that is not UTF-8",
            Sms,
            "MessageSid=SM1&From=%2B1&To=%2B2&Body=%C3%28",
        )
        .fields(&["payload.Body"]),
        case(
            "field name that is not UTF-8",
            Sms,
            "MessageSid=SM1&From=%2B1&To=%2B2&%FF=x",
        )
        .fields(&["payload"]),
        case(
            "NumMedia that is not a number",
            Sms,
            "MessageSid=SM1&From=%2B1&To=%2B2&NumMedia=two",
        )
        .fields(&["payload.NumMedia"]),
        case(
            "NumMedia larger than the form",
            Sms,
            "MessageSid=SM1&From=%2B1&To=%2B2&NumMedia=4000000000",
        )
        .fields(&["payload.NumMedia"]),
        case(
            "a media URL missing",
            Sms,
            "MessageSid=MM1&From=%2B1&To=%2B2&NumMedia=2&MediaUrl0=https%3A%2F%2Fm%2F0",
        )
        .fields(&["payload.MediaUrl1"]),
        case("Body over max_text_bytes", Sms, fixture("sms_inbound.form"))
            .limits(Limits {
                max_text_bytes: 5,
                ..Limits::default()
            })
            .fields(&["payload.Body"]),
        // --- Web chat.
        case("web chat: not JSON", Webchat, "{oops").fields(&["payload"]),
        case(
            "web chat: a body naming another tenant",
            Webchat,
            r#"{"tenantId": "someone-else", "conversationId": "c", "text": {"body": "x"}}"#,
        )
        .fields(&["payload.tenantId"]),
        case(
            "web chat: a body naming another channel",
            Webchat,
            r#"{"channel": "SMS", "conversationId": "c", "text": {"body": "x"}}"#,
        )
        .fields(&["payload.channel"]),
        case(
            "web chat: unknown direction",
            Webchat,
            r#"{"conversationId": "c", "direction": "SIDEWAYS", "text": {"body": "x"}}"#,
        )
        .fields(&["payload.direction"]),
        case(
            "web chat: body of the wrong type",
            Webchat,
            r#"{"conversationId": "c", "text": {"body": ["x"]}}"#,
        )
        .fields(&["payload.text.body"]),
        case(
            "web chat: text over max_text_bytes",
            Webchat,
            r#"{"conversationId": "c", "text": {"body": "0123456789abcdef"}}"#,
        )
        .limits(Limits {
            max_text_bytes: 8,
            ..Limits::default()
        })
        .fields(&["payload.text.body"]),
        case(
            "web chat: garbage protobuf",
            Webchat,
            vec![0xff, 0xff, 0xff, 0xff],
        )
        .content_type("application/x-protobuf")
        .fields(&["payload"]),
        case("web chat: form", Webchat, "a=b")
            .content_type(FORM)
            .fields(&["content_type"]),
    ]
}

#[test]
fn bad_inputs_name_the_exact_fields() {
    let mut failures = Vec::new();
    for case in cases() {
        let result = normalize(
            case.channel,
            case.tenant_id,
            &case.payload,
            case.content_type,
            &case.limits,
            now(),
        );
        let error = match result {
            Ok(envelopes) => {
                failures.push(format!("{}: accepted: {envelopes:?}", case.name));
                continue;
            }
            Err(error) => error,
        };
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{}", case.name);
        let IngestError::InvalidArgument(violations) = &error else {
            unreachable!("InvalidArgument code");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.clone()).collect();
        if fields != case.fields {
            failures.push(format!(
                "{}: expected {:?}, got {error}",
                case.name, case.fields
            ));
        }
        if let Some(phrase) = case.mentions
            && !violations[0].description.contains(phrase)
        {
            failures.push(format!("{}: {phrase:?} not in {error}", case.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The fixtures the bad inputs are made from are good, so each row fails
/// for its own reason only.
#[test]
fn the_unedited_bases_are_valid() {
    for (channel, name) in [
        (Channel::Whatsapp, "whatsapp_text.json"),
        (Channel::Whatsapp, "whatsapp_order.json"),
        (Channel::Whatsapp, "whatsapp_batch_mixed.json"),
        (Channel::Whatsapp, "whatsapp_statuses_batch.json"),
        (Channel::Messenger, "messenger_text_quick_reply.json"),
        (Channel::Messenger, "messenger_echo.json"),
        (Channel::Messenger, "messenger_delivery_read.json"),
        (Channel::Messenger, "messenger_standby.json"),
        (Channel::Instagram, "instagram_story_mention.json"),
    ] {
        let result = normalize(
            channel,
            "acme",
            &fixture(name),
            JSON,
            &Limits::default(),
            now(),
        );
        assert!(result.is_ok(), "{name}: {result:?}");
    }
}
