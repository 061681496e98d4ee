use std::time::Duration;

use switchboard_proto::v1::{
    Channel, ConsentEvent, ConversationState, Direction, Envelope, Party, RejectionReason,
    SubscriptionChange, SubscriptionSource, Template, Text, consent_event::Action as Consent,
    envelope::Content,
};

use super::{
    consent::ConsentPolicy,
    subscriptions::{KeywordConfig, Keywords, MAX_TOPICS, address, is_subscribed},
};

fn keywords() -> Keywords {
    let keyword =
        |tenant: &str, channel: &str, keyword: &str, topic: &str, subscribe| KeywordConfig {
            tenant: tenant.into(),
            channel: channel.into(),
            keyword: keyword.into(),
            topic: topic.into(),
            subscribe,
        };
    Keywords::new(&[
        keyword("acme", "sms", "JOIN NEWS", "news", true),
        keyword("acme", "*", "STOP NEWS", "news", false),
        keyword("*", "whatsapp", "OFFERS", "offers", true),
    ])
    .unwrap()
}

fn inbound(channel: Channel, content: Content) -> Envelope {
    Envelope {
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        conversation_id: "c".into(),
        customer: Some(Party {
            id: "15551230000".into(),
            display_name: String::new(),
        }),
        sent_at: Some(switchboard_proto::timestamp(std::time::SystemTime::now())),
        content: Some(content),
        ..Default::default()
    }
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

#[test]
fn keywords_per_tenant_and_channel_subscribe_and_unsubscribe() {
    let keywords = keywords();
    let mut state = ConversationState::default();
    assert!(keywords.apply(&mut state, &inbound(Channel::Sms, text("  join   news "))));
    assert!(is_subscribed(&state, "news"));
    let sub = &state.subscriptions[0];
    assert_eq!(sub.source(), SubscriptionSource::Keyword);
    assert_eq!(sub.detail, "JOIN NEWS");
    assert!(sub.changed_at.is_some());
    assert_eq!(
        state.customer_id, "15551230000",
        "the customer's id is kept"
    );
    // Again: no change.
    assert!(!keywords.apply(&mut state, &inbound(Channel::Sms, text("JOIN NEWS"))));
    // Not a keyword on WhatsApp for acme; a text that merely contains it is no keyword.
    let mut other = ConversationState::default();
    keywords.apply(&mut other, &inbound(Channel::Whatsapp, text("JOIN NEWS")));
    keywords.apply(&mut other, &inbound(Channel::Sms, text("please JOIN NEWS")));
    assert!(!is_subscribed(&other, "news"));
    keywords.apply(&mut other, &inbound(Channel::Whatsapp, text("offers")));
    assert!(
        is_subscribed(&other, "offers"),
        "a keyword for every tenant"
    );
    // The tenant-wide STOP NEWS works on any channel.
    assert!(keywords.apply(&mut state, &inbound(Channel::Sms, text("stop news"))));
    assert!(!is_subscribed(&state, "news"));
    assert_eq!(
        state.subscriptions.len(),
        1,
        "the opt-out is recorded on the topic"
    );
}

#[test]
fn sms_stop_ends_every_subscription_and_start_does_not_resubscribe() {
    let keywords = keywords();
    let mut state = ConversationState::default();
    for topic in ["news", "offers"] {
        keywords.apply(
            &mut state,
            &inbound(
                Channel::Sms,
                Content::Subscription(SubscriptionChange {
                    topic: topic.into(),
                    subscribe: true,
                    ..Default::default()
                }),
            ),
        );
    }
    assert!(is_subscribed(&state, "news") && is_subscribed(&state, "offers"));
    assert_eq!(state.subscriptions[0].source(), SubscriptionSource::WebForm);
    let consent = |action: Consent, keyword: &str| {
        inbound(
            Channel::Sms,
            Content::Consent(ConsentEvent {
                action: action as i32,
                keyword: keyword.into(),
            }),
        )
    };
    assert!(keywords.apply(&mut state, &consent(Consent::OptOut, "STOP")));
    assert!(state.subscriptions.iter().all(|s| !s.subscribed
        && s.source() == SubscriptionSource::SmsKeyword
        && s.detail == "STOP"));
    assert!(!keywords.apply(&mut state, &consent(Consent::OptIn, "START")));
    assert!(!is_subscribed(&state, "news"));
}

#[test]
fn topics_per_conversation_are_bounded() {
    let keywords = keywords();
    let mut state = ConversationState::default();
    let change = |topic: String, subscribe| {
        inbound(
            Channel::Webchat,
            Content::Subscription(SubscriptionChange {
                topic,
                subscribe,
                source: SubscriptionSource::Agent as i32,
                detail: "alice".into(),
            }),
        )
    };
    for i in 0..MAX_TOPICS + 5 {
        keywords.apply(&mut state, &change(format!("t{i}"), true));
    }
    assert_eq!(state.subscriptions.len(), MAX_TOPICS);
    // An unsubscribed topic makes room for a new one.
    keywords.apply(&mut state, &change("t0".into(), false));
    assert!(keywords.apply(&mut state, &change("new".into(), true)));
    assert!(is_subscribed(&state, "new") && !state.subscriptions.iter().any(|s| s.topic == "t0"));
}

#[test]
fn broadcasts_need_the_subscription_and_go_to_the_known_customer() {
    let policy = ConsentPolicy {
        service_window: Duration::from_secs(86_400),
        extended_window: Duration::from_secs(7 * 86_400),
    };
    let keywords = keywords();
    let mut state = ConversationState::default();
    keywords.apply(&mut state, &inbound(Channel::Sms, text("JOIN NEWS")));
    let mut broadcast = Envelope {
        tenant_id: "acme".into(),
        channel: Channel::Sms as i32,
        direction: Direction::Outbound as i32,
        conversation_id: "c".into(),
        content: Some(Content::Template(Template::default())),
        attributes: [(
            crate::broadcast::TOPIC_ATTRIBUTE.to_owned(),
            "offers".to_owned(),
        )]
        .into(),
        ..Default::default()
    };
    let now = std::time::SystemTime::now();
    assert_eq!(
        policy.check(&broadcast, &state, now).map_err(|r| r.reason),
        Err(RejectionReason::NotSubscribed)
    );
    broadcast.attributes.insert(
        crate::broadcast::TOPIC_ATTRIBUTE.to_owned(),
        "news".to_owned(),
    );
    assert_eq!(policy.check(&broadcast, &state, now), Ok(()));
    assert!(address(&mut broadcast, &state));
    assert!(!address(&mut broadcast, &state), "addressed already");
    assert_eq!(broadcast.customer.unwrap().id, "15551230000");
}

#[test]
fn empty_and_duplicate_keywords_are_refused() {
    let keyword = |keyword: &str| KeywordConfig {
        tenant: "acme".into(),
        channel: "sms".into(),
        keyword: keyword.into(),
        topic: "news".into(),
        subscribe: true,
    };
    assert!(Keywords::new(&[keyword("  ")]).is_err());
    assert!(Keywords::new(&[keyword("JOIN"), keyword("join")]).is_err());
}
