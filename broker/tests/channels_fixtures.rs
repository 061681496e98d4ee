//! Every webhook fixture in `tests/fixtures/webhooks/` normalizes to the
//! expected envelopes: routing fields, parties, times and content.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use switchboard_broker::{
    channels::{Limits, normalize},
    validate,
};
use switchboard_proto::{
    Timestamp,
    v1::{
        Attachments, Channel, ConsentEvent, Deletion, Direction, Envelope, Handover,
        InteractiveReply, Location, Media, Order, Party, Postback, Reaction, Referral,
        StatusReceipt, SystemEvent, Text, Unsupported, consent_event, envelope::Content, handover,
        media::Kind, order::Item, status_receipt,
    },
};

/// The clock the tests run at: 2025-06-15, a few days after the fixtures.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Normalizes fixture `name` as `channel`, and checks what every envelope
/// must have: the tenant, the channel, no server-assigned fields, and that
/// validation accepts it.
fn run(channel: Channel, name: &str) -> Vec<Envelope> {
    let body = std::fs::read(fixtures_dir().join(name)).expect("fixture");
    let content_type = if name.ends_with(".form") {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    let envelopes = normalize(
        channel,
        "acme",
        &body,
        content_type,
        &Limits::default(),
        now(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    for envelope in &envelopes {
        assert_eq!(envelope.tenant_id, "acme", "{name}");
        assert_eq!(envelope.channel(), channel, "{name}");
        assert_eq!(envelope.received_at, None, "{name}");
        if channel != Channel::Webchat {
            assert_eq!(envelope.message_id, "", "{name}");
        }
        validate::normalize(
            "payload",
            envelope.clone(),
            now(),
            std::time::Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}: {envelope:?}"));
    }
    envelopes
}

/// The routing fields of one envelope.
#[derive(Debug, PartialEq)]
struct Route<'a> {
    direction: Direction,
    conversation_id: &'a str,
    channel_message_id: &'a str,
    customer: (&'a str, &'a str),
    business: (&'a str, &'a str),
    sent_at: Option<(i64, i32)>,
}

fn party(party: Option<&Party>) -> (&str, &str) {
    let party = party.expect("party");
    (&party.id, &party.display_name)
}

fn route(envelope: &Envelope) -> Route<'_> {
    Route {
        direction: envelope.direction(),
        conversation_id: &envelope.conversation_id,
        channel_message_id: &envelope.channel_message_id,
        customer: party(envelope.customer.as_ref()),
        business: party(envelope.business.as_ref()),
        sent_at: envelope.sent_at.map(|t: Timestamp| (t.seconds, t.nanos)),
    }
}

fn content(envelope: &Envelope) -> &Content {
    envelope.content.as_ref().expect("content")
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

fn attributes(envelope: &Envelope) -> Vec<(&str, &str)> {
    let mut pairs: Vec<_> = envelope
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs
}

const WA_BUSINESS: (&str, &str) = ("106540352242922", "15550783881");
const SHEENA: (&str, &str) = ("16505551234", "Sheena Nelson");
const WA_CONVERSATION: &str = "106540352242922:16505551234";

fn wa_inbound<'a>(id: &'a str, seconds: i64) -> Route<'a> {
    Route {
        direction: Direction::Inbound,
        conversation_id: WA_CONVERSATION,
        channel_message_id: id,
        customer: SHEENA,
        business: WA_BUSINESS,
        sent_at: Some((seconds, 0)),
    }
}

// ---------------------------------------------------------------- WhatsApp

#[test]
fn whatsapp_text() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_text.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        wa_inbound(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
            1_749_416_383
        )
    );
    assert_eq!(
        content(env),
        &text("Bonjour, ma commande n'est pas arrivée")
    );
    assert_eq!(env.reply_to, "");
    assert_eq!(env.referral, None);
}

#[test]
fn whatsapp_image_reply() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_image_reply.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        wa_inbound(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ1RkY0QkQ2MkUwNzY4RTZBMDBEQQA=",
            1_749_416_390
        )
    );
    assert_eq!(
        content(env),
        &Content::Media(Media {
            kind: Kind::Image as i32,
            media_id: "1003383421387256".into(),
            url: String::new(),
            mime_type: "image/jpeg".into(),
            sha256: "u8HhWZ0mzs/tYbLYVXbhGr2OcBSV9HGtA7L1UrB+wIo=".into(),
            caption: "voici le colis abîmé".into(),
            filename: String::new(),
        })
    );
    assert_eq!(
        env.reply_to,
        "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    );
}

#[test]
fn whatsapp_interactive_list_reply() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_interactive_list.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        wa_inbound(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ3QUJDMUEyQjNDNEQ1RTZGN0E4OQA=",
            1_749_416_402
        )
    );
    assert_eq!(
        content(env),
        &Content::InteractiveReply(InteractiveReply {
            id: "track_order".into(),
            title: "Suivre ma commande".into(),
            description: "Statut de livraison".into(),
        })
    );
}

#[test]
fn whatsapp_order() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_order.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        wa_inbound(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRBQkNERUYwMTIzNDU2Nzg5QUJDRAA=",
            1_749_416_450
        )
    );
    assert_eq!(
        content(env),
        &Content::Order(Order {
            catalog_id: "1234567890123".into(),
            items: vec![
                Item {
                    product_retailer_id: "sku-lipstick-07".into(),
                    quantity: 2,
                    item_price: 19.9,
                    currency: "EUR".into(),
                },
                Item {
                    product_retailer_id: "sku-mascara-01".into(),
                    quantity: 1,
                    item_price: 24.5,
                    currency: "EUR".into(),
                },
            ],
            text: "pour samedi".into(),
        })
    );
}

#[test]
fn whatsapp_statuses_are_outbound_receipts_unique_per_status() {
    let envs = run(Channel::Whatsapp, "whatsapp_statuses_batch.json");
    let [delivered, failed] = &envs[..] else {
        panic!("two envelopes: {envs:?}")
    };
    let receipt = |id, seconds| Route {
        direction: Direction::Outbound,
        conversation_id: WA_CONVERSATION,
        channel_message_id: id,
        customer: ("16505551234", ""),
        business: WA_BUSINESS,
        sent_at: Some((seconds, 0)),
    };
    assert_eq!(
        route(delivered),
        receipt(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA:delivered",
            1_749_416_500
        )
    );
    assert_eq!(
        content(delivered),
        &Content::Status(StatusReceipt {
            target_message_id: "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".into(),
            state: status_receipt::State::Delivered as i32,
            errors: vec![],
            watermark: 0,
        })
    );
    assert_eq!(
        attributes(delivered),
        [
            ("conversation_origin", "service"),
            ("pricing_category", "service")
        ]
    );
    assert_eq!(
        route(failed),
        receipt(
            "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJCOEE5RjA0RDg2NkI5RkY3RjgA:failed",
            1_749_416_510
        )
    );
    assert_eq!(
        content(failed),
        &Content::Status(StatusReceipt {
            target_message_id: "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJCOEE5RjA0RDg2NkI5RkY3RjgA".into(),
            state: status_receipt::State::Failed as i32,
            errors: vec![status_receipt::Error {
                code: 131_047,
                title: "Re-engagement message".into(),
                message: "Re-engagement message".into(),
            }],
            watermark: 0,
        })
    );
}

#[test]
fn whatsapp_system_message_has_no_contacts_and_no_name() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_system_no_contacts.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        Route {
            customer: ("16505551234", ""),
            ..wa_inbound(
                "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRTWVNURU1DSEFOR0VEMDAwMDAwMQA=",
                1_749_416_600
            )
        }
    );
    assert_eq!(
        content(env),
        &Content::System(SystemEvent {
            r#type: "customer_changed_number".into(),
            body: "User A changed from 16505551234 to 16505559999".into(),
            new_customer_id: "16505559999".into(),
        })
    );
}

#[test]
fn whatsapp_empty_wa_id_keys_on_user_id() {
    let [env] = &run(Channel::Whatsapp, "whatsapp_username_user_id.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        Route {
            direction: Direction::Inbound,
            conversation_id: "106540352242922:US.13491208655302741918",
            channel_message_id: "wamid.HBgLVVNFUk5BTUUVAgASGBRVU0VSTkFNRTAwMDAwMDAwMDAwMQA=",
            customer: ("US.13491208655302741918", "Noor"),
            business: WA_BUSINESS,
            sent_at: Some((1_749_416_700, 0)),
        }
    );
    assert_eq!(content(env), &text("hello from a username"));
}

#[test]
fn whatsapp_reactions_and_their_removal() {
    let envs = run(Channel::Whatsapp, "whatsapp_reaction_removed.json");
    let target = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA";
    let expected = [
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRSRUFDVDAwMDAwMDAwMDAwMDAwMQA=",
            1_749_416_800,
            "👍",
            false,
        ),
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRSRUFDVDAwMDAwMDAwMDAwMDAwMgA=",
            1_749_416_805,
            "",
            true,
        ),
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRSRUFDVDAwMDAwMDAwMDAwMDAwMwA=",
            1_749_416_806,
            "",
            true,
        ),
    ];
    assert_eq!(envs.len(), expected.len());
    for (env, (id, seconds, emoji, removed)) in envs.iter().zip(expected) {
        assert_eq!(route(env), wa_inbound(id, seconds));
        assert_eq!(
            content(env),
            &Content::Reaction(Reaction {
                target_message_id: target.into(),
                emoji: emoji.into(),
                removed,
            })
        );
    }
}

#[test]
fn whatsapp_unknown_types_are_unsupported_not_errors() {
    let envs = run(Channel::Whatsapp, "whatsapp_unknown_type.json");
    let expected = [
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRVTlNVUFBPUlRFRDAwMDAwMDAwMQA=",
            1_749_416_900,
            "unsupported",
        ),
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRFUEhFTUVSQUwwMDAwMDAwMDAwMQA=",
            1_749_416_901,
            "ephemeral",
        ),
        (
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRORk1SRVBMWTAwMDAwMDAwMDAwMQA=",
            1_749_416_902,
            "interactive.nfm_reply",
        ),
    ];
    assert_eq!(envs.len(), expected.len());
    for (env, (id, seconds, kind)) in envs.iter().zip(expected) {
        assert_eq!(route(env), wa_inbound(id, seconds));
        assert_eq!(
            content(env),
            &Content::Unsupported(Unsupported {
                r#type: kind.into()
            })
        );
    }
}

#[test]
fn whatsapp_batch_keeps_order_across_entries_changes_messages_and_statuses() {
    let envs = run(Channel::Whatsapp, "whatsapp_batch_mixed.json");
    let routes: Vec<_> = envs.iter().map(route).collect();
    let kwame = Route {
        conversation_id: "106540352242922:233201234567",
        customer: ("233201234567", "Kwame Mensah"),
        ..wa_inbound("wamid.BATCH0002", 1_749_417_001)
    };
    let sent = |id, seconds| Route {
        direction: Direction::Outbound,
        customer: ("16505551234", ""),
        ..wa_inbound(id, seconds)
    };
    let camille = |direction, id, name, seconds| Route {
        direction,
        conversation_id: "206540352242999:33612345678",
        channel_message_id: id,
        customer: ("33612345678", name),
        business: ("206540352242999", "33644630000"),
        sent_at: Some((seconds, 0)),
    };
    assert_eq!(
        routes,
        [
            wa_inbound("wamid.BATCH0001", 1_749_417_000),
            kwame,
            sent("wamid.OUT0001:sent", 1_749_417_002),
            sent("wamid.OUT0001:read", 1_749_417_003),
            camille(
                Direction::Inbound,
                "wamid.BATCH0003",
                "Camille",
                1_749_417_004
            ),
            camille(
                Direction::Outbound,
                "wamid.OUT0002:failed",
                "",
                1_749_417_005
            ),
        ]
    );
    assert_eq!(content(&envs[0]), &text("first"));
    assert_eq!(
        content(&envs[1]),
        &Content::Location(Location {
            latitude: 5.6037,
            longitude: -0.187,
            name: "Accra Mall".into(),
            address: "Spintex Rd, Accra".into(),
        })
    );
    let state = |env: &Envelope| match content(env) {
        Content::Status(s) => (s.target_message_id.clone(), s.state()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        state(&envs[2]),
        ("wamid.OUT0001".into(), status_receipt::State::Sent)
    );
    assert_eq!(
        state(&envs[3]),
        ("wamid.OUT0001".into(), status_receipt::State::Read)
    );
    assert_eq!(
        content(&envs[4]),
        &Content::InteractiveReply(InteractiveReply {
            id: "CONFIRM_DELIVERY".into(),
            title: "Oui, confirmer".into(),
            description: String::new(),
        })
    );
    assert_eq!(envs[4].reply_to, "wamid.TEMPLATE0001");
    let Content::Status(failed) = content(&envs[5]) else {
        panic!("status")
    };
    assert_eq!(
        failed.errors,
        [
            status_receipt::Error {
                code: 131_047,
                title: "Re-engagement message".into(),
                message: "Re-engagement message".into(),
            },
            status_receipt::Error {
                code: 131_026,
                title: "Message undeliverable".into(),
                message: String::new(),
            },
        ]
    );
}

#[test]
fn whatsapp_media_kinds_buttons_and_ad_referrals() {
    let envs = run(Channel::Whatsapp, "whatsapp_media_types.json");
    let media = |kind: Kind, id: &str, mime: &str, sha: &str, caption: &str, filename: &str| {
        Content::Media(Media {
            kind: kind as i32,
            media_id: id.into(),
            url: String::new(),
            mime_type: mime.into(),
            sha256: sha.into(),
            caption: caption.into(),
            filename: filename.into(),
        })
    };
    let expected = [
        media(
            Kind::Document,
            "2000000000000001",
            "application/pdf",
            "Zm9vYmFy",
            "facture",
            "facture-2025-06.pdf",
        ),
        media(
            Kind::Audio,
            "2000000000000002",
            "audio/ogg; codecs=opus",
            "YmF6",
            "",
            "",
        ),
        media(
            Kind::Sticker,
            "2000000000000003",
            "image/webp",
            "cXV4",
            "",
            "",
        ),
        media(Kind::Video, "2000000000000004", "video/mp4", "dmlk", "", ""),
        Content::InteractiveReply(InteractiveReply {
            id: "yes_refund".into(),
            title: "Oui".into(),
            description: String::new(),
        }),
        text("Vu votre pub !"),
    ];
    assert_eq!(envs.len(), expected.len());
    for (i, (env, content)) in envs.iter().zip(&expected).enumerate() {
        let id = format!("wamid.MEDIA000{}", i + 1);
        assert_eq!(route(env), wa_inbound(&id, 1_749_417_100 + i as i64));
        assert_eq!(env.content.as_ref(), Some(content));
    }
    assert_eq!(
        envs[5].referral,
        Some(Referral {
            source: "ad".into(),
            r#ref: "ARAkLkA8rmlFeiCktEJQ".into(),
            r#type: "image".into(),
            ad_id: "120210000000000000".into(),
        })
    );
}

#[test]
fn whatsapp_webhook_without_messages_is_empty_not_an_error() {
    assert_eq!(
        run(Channel::Whatsapp, "whatsapp_template_status_update.json"),
        []
    );
}

// ------------------------------------------------------ Messenger, Instagram

const PAGE: &str = "1122334455667788";
const PSID: &str = "6789012345678901";
const PAGE_CONVERSATION: &str = "1122334455667788:6789012345678901";

fn page_route<'a>(direction: Direction, id: &'a str, millis: i64) -> Route<'a> {
    Route {
        direction,
        conversation_id: PAGE_CONVERSATION,
        channel_message_id: id,
        customer: (PSID, ""),
        business: (PAGE, ""),
        sent_at: Some((millis / 1000, (millis % 1000) as i32 * 1_000_000)),
    }
}

#[test]
fn messenger_text_with_quick_reply() {
    let [env] = &run(Channel::Messenger, "messenger_text_quick_reply.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        page_route(
            Direction::Inbound,
            "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P",
            1_749_416_383_000
        )
    );
    assert_eq!(
        content(env),
        &Content::InteractiveReply(InteractiveReply {
            id: "BOOK_APPOINTMENT".into(),
            title: "Je veux prendre rendez-vous".into(),
            description: String::new(),
        })
    );
    assert!(env.attributes.is_empty());
}

#[test]
fn messenger_postback_carries_its_referral() {
    let [env] = &run(Channel::Messenger, "messenger_postback_referral.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        page_route(Direction::Inbound, "m_postback_9d8c7b6a", 1_749_416_390_000)
    );
    assert_eq!(
        content(env),
        &Content::Postback(Postback {
            title: "Commencer".into(),
            payload: "GET_STARTED".into(),
        })
    );
    assert_eq!(
        env.referral,
        Some(Referral {
            source: "ADS".into(),
            r#ref: "spring_promo".into(),
            r#type: "OPEN_THREAD".into(),
            ad_id: "6045246247433".into(),
        })
    );
}

#[test]
fn messenger_delivery_per_mid_and_read_by_watermark() {
    let envs = run(Channel::Messenger, "messenger_delivery_read.json");
    let routes: Vec<_> = envs.iter().map(route).collect();
    assert_eq!(
        routes,
        [
            page_route(Direction::Outbound, "m_out_1:delivery", 1_749_416_400_400),
            page_route(Direction::Outbound, "m_out_2:delivery", 1_749_416_400_400),
            page_route(
                Direction::Outbound,
                "1122334455667788:6789012345678901:1749416401000:read",
                1_749_416_401_400
            ),
        ]
    );
    let receipt = |target: &str, state: status_receipt::State, watermark| {
        Content::Status(StatusReceipt {
            target_message_id: target.into(),
            state: state as i32,
            errors: vec![],
            watermark,
        })
    };
    let delivered = status_receipt::State::Delivered;
    assert_eq!(
        content(&envs[0]),
        &receipt("m_out_1", delivered, 1_749_416_400_000)
    );
    assert_eq!(
        content(&envs[1]),
        &receipt("m_out_2", delivered, 1_749_416_400_000)
    );
    assert_eq!(
        content(&envs[2]),
        &receipt("", status_receipt::State::Read, 1_749_416_401_000)
    );
}

#[test]
fn messenger_echo_is_outbound_with_the_recipient_as_customer() {
    let [env] = &run(Channel::Messenger, "messenger_echo.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        page_route(Direction::Outbound, "m_echo_1a2b3c", 1_749_417_300_000)
    );
    assert_eq!(
        content(env),
        &text("Votre rendez-vous est confirmé pour mardi.")
    );
    assert_eq!(attributes(env), [("app_id", "263902037430900")]);
}

#[test]
fn messenger_standby_events_are_marked() {
    let [env] = &run(Channel::Messenger, "messenger_standby.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        page_route(Direction::Inbound, "m_standby_1", 1_749_417_400_000)
    );
    assert_eq!(content(env), &text("Je préfère parler à un humain"));
    assert_eq!(attributes(env), [("standby", "true")]);
}

#[test]
fn messenger_react_then_unreact_are_two_events() {
    let envs = run(Channel::Messenger, "messenger_reaction.json");
    let routes: Vec<_> = envs.iter().map(route).collect();
    assert_eq!(
        routes,
        [
            page_route(
                Direction::Inbound,
                "m_out_1:reaction:❤️:1749417500000",
                1_749_417_500_000
            ),
            page_route(
                Direction::Inbound,
                "m_out_1:reaction:removed:1749417505000",
                1_749_417_505_000
            ),
        ]
    );
    assert_eq!(
        content(&envs[0]),
        &Content::Reaction(Reaction {
            target_message_id: "m_out_1".into(),
            emoji: "❤️".into(),
            removed: false,
        })
    );
    assert_eq!(
        content(&envs[1]),
        &Content::Reaction(Reaction {
            target_message_id: "m_out_1".into(),
            emoji: String::new(),
            removed: true,
        })
    );
}

#[test]
fn messenger_thread_control_handovers() {
    let envs = run(Channel::Messenger, "messenger_handover.json");
    let expected = [
        (
            "pass_thread_control",
            1_749_417_600_000,
            handover::Action::Pass,
            "263902037430900",
            "1517776481860111",
            "escalate: billing",
        ),
        (
            "take_thread_control",
            1_749_417_700_000,
            handover::Action::Take,
            "1517776481860111",
            "263902037430900",
            "resolved",
        ),
        (
            "request_thread_control",
            1_749_417_800_000,
            handover::Action::Request,
            "1517776481860111",
            "",
            "bot wants it back",
        ),
    ];
    assert_eq!(envs.len(), expected.len());
    for (env, (name, millis, action, new_owner, previous_owner, metadata)) in
        envs.iter().zip(expected)
    {
        let id = format!("{PAGE_CONVERSATION}:{millis}:{name}");
        assert_eq!(route(env), page_route(Direction::Outbound, &id, millis));
        assert_eq!(
            content(env),
            &Content::Handover(Handover {
                action: action as i32,
                new_owner_app_id: new_owner.into(),
                previous_owner_app_id: previous_owner.into(),
                metadata: metadata.into(),
            })
        );
    }
}

#[test]
fn messenger_standalone_referral_and_unknown_events() {
    let envs = run(Channel::Messenger, "messenger_referral.json");
    // The third event (an `optin` with no sender) has no conversation.
    let [referral, optin] = &envs[..] else {
        panic!("two envelopes: {envs:?}")
    };
    assert_eq!(
        route(referral),
        page_route(
            Direction::Inbound,
            "1122334455667788:6789012345678901:1749417900000:referral",
            1_749_417_900_000
        )
    );
    assert_eq!(content(referral), &Content::Postback(Postback::default()));
    assert_eq!(
        referral.referral,
        Some(Referral {
            source: "SHORTLINK".into(),
            r#ref: "summer_sale".into(),
            r#type: "OPEN_THREAD".into(),
            ad_id: String::new(),
        })
    );
    assert_eq!(
        route(optin),
        page_route(
            Direction::Inbound,
            "1122334455667788:6789012345678901:1749417901000:optin",
            1_749_417_901_000
        )
    );
    assert_eq!(
        content(optin),
        &Content::Unsupported(Unsupported {
            r#type: "optin".into()
        })
    );
}

#[test]
fn messenger_several_attachments_and_stickers() {
    let envs = run(Channel::Messenger, "messenger_attachments.json");
    let [photos, sticker] = &envs[..] else {
        panic!("two envelopes: {envs:?}")
    };
    assert_eq!(
        route(photos),
        page_route(Direction::Inbound, "m_photos_2", 1_749_418_000_000)
    );
    assert_eq!(photos.reply_to, "m_out_1");
    assert_eq!(
        content(photos),
        &Content::Attachments(Attachments {
            items: vec![
                Media {
                    kind: Kind::Image as i32,
                    url: "https://scontent.example.invalid/a.jpg".into(),
                    ..Media::default()
                },
                Media {
                    kind: Kind::File as i32,
                    url: "https://cdn.example.invalid/b.pdf".into(),
                    ..Media::default()
                },
            ],
            caption: "les deux colis".into(),
        })
    );
    assert_eq!(
        route(sticker),
        page_route(Direction::Inbound, "m_sticker_1", 1_749_418_001_000)
    );
    assert_eq!(
        content(sticker),
        &Content::Media(Media {
            kind: Kind::Sticker as i32,
            media_id: "369239263222822".into(),
            url: "https://scontent.example.invalid/sticker.png".into(),
            ..Media::default()
        })
    );
}

const IG_ACCOUNT: &str = "17841400008460056";
const IGSID: &str = "1234567890123456";

fn ig_route<'a>(direction: Direction, id: &'a str, millis: i64) -> Route<'a> {
    Route {
        conversation_id: "17841400008460056:1234567890123456",
        customer: (IGSID, ""),
        business: (IG_ACCOUNT, ""),
        ..page_route(direction, id, millis)
    }
}

#[test]
fn instagram_story_mention() {
    let [env] = &run(Channel::Instagram, "instagram_story_mention.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        ig_route(
            Direction::Inbound,
            "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwMDA4NDYwMDU2OjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1OTU0NzA4ODk4NzI3NjkzMzo",
            1_749_416_419_000
        )
    );
    assert_eq!(
        content(env),
        &Content::Media(Media {
            kind: Kind::StoryMention as i32,
            url: "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17950000000000000&signature=abc".into(),
            ..Media::default()
        })
    );
}

#[test]
fn instagram_unsend_share_reel_and_read_by_mid() {
    let envs = run(Channel::Instagram, "instagram_deleted_share_reel.json");
    let mid =
        |tail: &str| format!("aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAwMDA4NDYwMDU2O{tail}");
    let routes: Vec<_> = envs.iter().map(route).collect();
    let ids = [
        format!("{}:deleted", mid("kRFTEVURUQ")),
        mid("lNIQVJF"),
        mid("lJFRUw"),
        format!("{}:read", mid("k9VVA")),
    ];
    assert_eq!(
        routes,
        [
            ig_route(Direction::Inbound, &ids[0], 1_749_418_100_000),
            ig_route(Direction::Inbound, &ids[1], 1_749_418_101_000),
            ig_route(Direction::Inbound, &ids[2], 1_749_418_102_000),
            ig_route(Direction::Outbound, &ids[3], 1_749_418_103_000),
        ]
    );
    assert_eq!(
        content(&envs[0]),
        &Content::Deletion(Deletion {
            target_message_id: mid("kRFTEVURUQ"),
        })
    );
    assert_eq!(
        content(&envs[1]),
        &Content::Media(Media {
            kind: Kind::Share as i32,
            url: "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=share1".into(),
            ..Media::default()
        })
    );
    assert_eq!(
        content(&envs[2]),
        &Content::Media(Media {
            kind: Kind::Reel as i32,
            media_id: "18000000000000001".into(),
            url: "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=reel1".into(),
            caption: "Unboxing the spring collection".into(),
            ..Media::default()
        })
    );
    assert_eq!(
        content(&envs[3]),
        &Content::Status(StatusReceipt {
            target_message_id: mid("k9VVA"),
            state: status_receipt::State::Read as i32,
            errors: vec![],
            watermark: 0,
        })
    );
}

// --------------------------------------------------------------------- SMS

fn sms_route<'a>(id: &'a str, to: &'a str, from: &'a str, conversation: &'a str) -> Route<'a> {
    Route {
        direction: Direction::Inbound,
        conversation_id: conversation,
        channel_message_id: id,
        customer: (from, ""),
        business: (to, ""),
        sent_at: None,
    }
}

#[test]
fn sms_text() {
    let [env] = &run(Channel::Sms, "sms_inbound.form")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        sms_route(
            "SM5f0e3c3b2a1d4e5f6a7b8c9d0e1f2a3b",
            "+33644630000",
            "+33612345678",
            "+33644630000:+33612345678"
        )
    );
    assert_eq!(content(env), &text("Ou en est ma livraison ?"));
    assert_eq!(
        attributes(env),
        [
            ("account_sid", "AC0123456789abcdef0123456789abcdef"),
            (
                "messaging_service_sid",
                "MG9752274e9e519418a7406176694466fa"
            ),
        ]
    );
}

#[test]
fn sms_stop_and_start_are_consent_events() {
    for (name, id, action, keyword) in [
        (
            "sms_stop.form",
            "SM00000000000000000000000000000001",
            consent_event::Action::OptOut,
            "STOP",
        ),
        (
            "sms_start.form",
            "SM00000000000000000000000000000002",
            consent_event::Action::OptIn,
            "START",
        ),
    ] {
        let [env] = &run(Channel::Sms, name)[..] else {
            panic!("one envelope")
        };
        assert_eq!(
            route(env),
            sms_route(
                id,
                "+15550783881",
                "+16505551234",
                "+15550783881:+16505551234"
            ),
            "{name}"
        );
        assert_eq!(
            content(env),
            &Content::Consent(ConsentEvent {
                action: action as i32,
                keyword: keyword.into(),
            }),
            "{name}"
        );
    }
}

#[test]
fn sms_mms_with_two_media() {
    let [env] = &run(Channel::Sms, "sms_mms_two_media.form")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        sms_route(
            "MM00000000000000000000000000000003",
            "+33644630000",
            "+33612345678",
            "+33644630000:+33612345678"
        )
    );
    let url = |n: u32| {
        format!(
            "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM00000000000000000000000000000003/Media/ME0000000000000000000000000000000{n}"
        )
    };
    assert_eq!(
        content(env),
        &Content::Attachments(Attachments {
            items: vec![
                Media {
                    kind: Kind::Image as i32,
                    url: url(1),
                    mime_type: "image/jpeg".into(),
                    ..Media::default()
                },
                Media {
                    kind: Kind::Video as i32,
                    url: url(2),
                    mime_type: "video/mp4".into(),
                    ..Media::default()
                },
            ],
            caption: "Photos du colis 📦".into(),
        })
    );
}

// ---------------------------------------------------------------- Web chat

#[test]
fn webchat_json_envelope_keeps_its_fields_and_takes_tenant_and_channel_from_the_request() {
    let [env] = &run(Channel::Webchat, "webchat_envelope.json")[..] else {
        panic!("one envelope")
    };
    assert_eq!(
        route(env),
        Route {
            direction: Direction::Inbound,
            conversation_id: "site:session-7f3a",
            channel_message_id: "wc-0001",
            customer: ("session-7f3a", "Visitor"),
            business: ("site", ""),
            sent_at: Some((1_749_416_400, 0)),
        }
    );
    assert_eq!(
        content(env),
        &text("Bonjour, une question sur la livraison")
    );
    assert_eq!(attributes(env), [("language", "fr"), ("page", "/checkout")]);
}

#[test]
fn webchat_protobuf_envelope() {
    let posted = Envelope {
        tenant_id: "acme".into(),
        direction: Direction::Inbound as i32,
        conversation_id: "site:s-1".into(),
        content: Some(text("hi")),
        ..Envelope::default()
    };
    let envs = normalize(
        Channel::Webchat,
        "acme",
        &prost::Message::encode_to_vec(&posted),
        "application/x-protobuf",
        &Limits::default(),
        now(),
    )
    .unwrap();
    assert_eq!(
        envs,
        [Envelope {
            tenant_id: "acme".into(),
            channel: Channel::Webchat as i32,
            ..posted
        }]
    );
}

// ------------------------------------------------------------------ overall

/// The fixtures directory holds exactly the fixtures these tests read, so a
/// new fixture cannot be added without a test.
#[test]
fn every_fixture_is_tested() {
    let source = include_str!("channels_fixtures.rs");
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let untested: Vec<_> = on_disk
        .iter()
        .filter(|name| !source.contains(&format!("\"{name}\"")))
        .collect();
    assert!(untested.is_empty(), "fixtures without a test: {untested:?}");
}
