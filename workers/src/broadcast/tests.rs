use switchboard_proto::v1::{
    AnalyticsRecord, BroadcastRecipient, BroadcastSpec, BroadcastTally, Channel, Direction,
    Envelope, Rejection, RejectionReason, RouteDecision, SendOutcome, StatusReceipt, Template,
    envelope::Content, send_outcome::Status as SendStatus, status_receipt::State as Receipt,
};

use super::{
    ID_ATTRIBUTE, TOPIC_ATTRIBUTE, audience, broadcast_of,
    fanout::{channel_message_id, envelope, message_id},
    report::{count_analytics, count_rejection},
};

fn spec() -> BroadcastSpec {
    let recipient =
        |channel: Channel, conversation: &str, parameters: &[&str]| BroadcastRecipient {
            channel: channel as i32,
            conversation_id: conversation.into(),
            parameters: parameters.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        };
    BroadcastSpec {
        broadcast_id: "b1".into(),
        tenant_id: "acme".into(),
        template: Some(Template {
            name: "sale".into(),
            language: "en".into(),
            parameters: vec!["default".into()],
        }),
        topic: "news".into(),
        recipients: vec![
            recipient(Channel::Sms, "z", &[]),
            recipient(Channel::Whatsapp, "a", &["kim"]),
            recipient(Channel::Whatsapp, "a", &["again"]),
            recipient(Channel::Messenger, "m", &[]),
            recipient(Channel::Unspecified, "x", &[]),
        ],
        channels: vec![Channel::Sms as i32, Channel::Whatsapp as i32],
        ..Default::default()
    }
}

#[test]
fn listed_recipients_are_deduplicated_filtered_and_in_key_order() {
    let recipients = audience::listed(&spec(), 10).unwrap();
    let keys: Vec<&str> = recipients.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["acme/sms/z", "acme/whatsapp/a"]);
    assert_eq!(recipients[1].parameters, ["kim"], "the first listing wins");
    assert!(audience::listed(&spec(), 1).is_err(), "over max_recipients");
}

#[test]
fn every_copy_of_a_recipient_message_is_the_same_message() {
    let spec = spec();
    let recipients = audience::listed(&spec, 10).unwrap();
    let first = envelope(&spec, &recipients[1]);
    let again = envelope(&spec, &recipients[1]);
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(first.message_id, message_id("b1", "acme/whatsapp/a"));
    assert_ne!(first.message_id, envelope(&spec, &recipients[0]).message_id);
    assert_eq!(first.channel_message_id, channel_message_id("b1"));
    assert_eq!(first.direction(), Direction::Outbound);
    assert_eq!(broadcast_of(&first), Some("b1"));
    assert_eq!(first.attributes[TOPIC_ATTRIBUTE], "news");
    let Some(Content::Template(template)) = &first.content else {
        panic!("a template");
    };
    assert_eq!(template.parameters, ["kim"]);
    let Some(Content::Template(template)) = &envelope(&spec, &recipients[0]).content else {
        panic!("a template");
    };
    assert_eq!(template.parameters, ["default"], "the template's own");
}

fn of_broadcast() -> Envelope {
    Envelope {
        attributes: [(ID_ATTRIBUTE.to_owned(), "b1".to_owned())].into(),
        direction: Direction::Outbound as i32,
        ..Default::default()
    }
}

fn send(status: SendStatus, provider_id: &str) -> AnalyticsRecord {
    AnalyticsRecord {
        envelope: Some(of_broadcast()),
        decision: Some(RouteDecision {
            send: Some(SendOutcome {
                status: status as i32,
                provider_message_id: provider_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn receipt(provider_id: &str, state: Receipt) -> AnalyticsRecord {
    AnalyticsRecord {
        envelope: Some(Envelope {
            direction: Direction::Outbound as i32,
            content: Some(Content::Status(StatusReceipt {
                target_message_id: provider_id.into(),
                state: state as i32,
                ..Default::default()
            })),
            ..Default::default()
        }),
        decision: None,
    }
}

#[test]
fn the_report_counts_refusals_sends_deliveries_and_reads() {
    let mut tally = BroadcastTally::default();
    for reason in [
        RejectionReason::OptedOut,
        RejectionReason::NotSubscribed,
        RejectionReason::NotSubscribed,
        RejectionReason::ProviderRefused,
    ] {
        count_rejection(
            &mut tally,
            &Rejection {
                envelope: Some(of_broadcast()),
                reason: reason as i32,
                ..Default::default()
            },
        );
    }
    assert!(!count_rejection(&mut tally, &Rejection::default()));
    assert!(count_analytics(
        &mut tally,
        &send(SendStatus::Accepted, "wamid.1"),
        2
    ));
    count_analytics(&mut tally, &send(SendStatus::Accepted, "wamid.2"), 2);
    count_analytics(&mut tally, &send(SendStatus::Refused, ""), 2);
    count_analytics(&mut tally, &receipt("wamid.1", Receipt::Delivered), 2);
    count_analytics(&mut tally, &receipt("wamid.1", Receipt::Delivered), 2);
    count_analytics(&mut tally, &receipt("wamid.1", Receipt::Read), 2);
    // Read without a delivered receipt first: delivered too.
    count_analytics(&mut tally, &receipt("wamid.2", Receipt::Read), 2);
    assert!(!count_analytics(
        &mut tally,
        &receipt("wamid.other", Receipt::Read),
        2
    ));
    let counts = &tally.broadcasts["b1"];
    assert_eq!(
        counts.refused,
        [
            ("opted_out".to_owned(), 1),
            ("not_subscribed".to_owned(), 2)
        ]
        .into(),
        "the provider's refusals count as failed, from the send outcomes"
    );
    assert_eq!((counts.sent, counts.failed), (2, 1));
    assert_eq!((counts.delivered, counts.read), (2, 2));
    assert!(tally.pending.is_empty());
    // At most `max_pending` sends await their statuses.
    for i in 0..5 {
        count_analytics(&mut tally, &send(SendStatus::Accepted, &format!("m{i}")), 2);
    }
    assert_eq!(tally.pending.len(), 2);
}
