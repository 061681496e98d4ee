use super::{
    decide::{as_reply, push_new},
    *,
};
use crate::rules::DestinationSpec;

#[test]
fn an_agent_queue_nobody_configured_is_the_default_queue() {
    let mut config = WorkersConfig::default();
    config.kafka.reads_topic_limits = false; // no Kafka to ask
    config.agents.queues.insert(
        "vip".into(),
        crate::agents::config::QueueConfig {
            overflow_queue: Some("tier2".into()),
            ..Default::default()
        },
    );
    let router = Router::new(&config).unwrap();
    for known in ["vip", "tier2", "support"] {
        assert_eq!(router.queue_for(known), known);
    }
    for made_up in ["made-up-1", "made-up-2", "VIP", ""] {
        assert_eq!(router.queue_for(made_up), "support", "{made_up:?}");
    }
}

#[test]
fn a_destination_named_twice_is_delivered_once() {
    let mut targets = Vec::new();
    let queue = || DestinationSpec::Agent("support".into());
    // A human-owned bot destination becomes the queue the rule names too.
    for spec in [queue(), DestinationSpec::Analytics, queue()] {
        push_new(&mut targets, spec);
    }
    assert_eq!(targets, [queue(), DestinationSpec::Analytics]);
}

/// A message routed again after a crash gets replies with the same ids,
/// so the sender stage knows them as sent; other replies get other ids.
#[test]
fn a_replys_id_follows_from_the_message_it_answers() {
    use switchboard_proto::v1::{Channel, Direction, Envelope};
    let to = Envelope {
        message_id: "m-1".into(),
        tenant_id: "acme".into(),
        channel: Channel::Sms as i32,
        conversation_id: "c".into(),
        ..Default::default()
    };
    let reply = Envelope::default();
    let first = as_reply(&reply, &to, "faq", 0);
    assert_eq!(first.message_id, as_reply(&reply, &to, "faq", 0).message_id);
    assert_eq!(
        (
            first.direction(),
            first.channel(),
            first.conversation_id.as_str()
        ),
        (Direction::Outbound, Channel::Sms, "c")
    );
    let others = [
        as_reply(&reply, &to, "faq", 1),
        as_reply(&reply, &to, "sales", 0),
        as_reply(
            &reply,
            &Envelope {
                message_id: "m-2".into(),
                ..to.clone()
            },
            "faq",
            0,
        ),
    ];
    for other in others {
        assert_ne!(other.message_id, first.message_id);
    }
    let own = Envelope {
        message_id: "mine".into(),
        ..Envelope::default()
    };
    assert_eq!(as_reply(&own, &to, "faq", 0).message_id, "mine");
}
