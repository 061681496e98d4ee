use switchboard_proto::v1::{
    Channel, ConversationState, CustomerLink, Direction, Envelope, Party, Text,
    customer_link::Action, envelope::Content,
};

use super::{
    CONVERSATIONS_ATTRIBUTE, CUSTOMER_ATTRIBUTE,
    config::CustomersConfig,
    link::{Effect, annotate, apply},
};

fn on(channel: Channel, conversation: &str, content: Content) -> Envelope {
    Envelope {
        message_id: format!("m-{conversation}"),
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        conversation_id: conversation.into(),
        content: Some(content),
        ..Default::default()
    }
}

fn link(other: Option<(Channel, &str)>, customer: &str) -> Content {
    Content::Link(CustomerLink {
        action: Action::Link as i32,
        other_channel: other.map_or(0, |(c, _)| c as i32),
        other_conversation_id: other.map_or(String::new(), |(_, id)| id.into()),
        customer_id: customer.into(),
        attributes: [("tier".to_owned(), "vip".to_owned())].into(),
        source: "agent".into(),
        ..Default::default()
    })
}

fn notified(effects: &[Effect]) -> Vec<(String, CustomerLink)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(envelope) => match &envelope.content {
                Some(Content::Link(l)) => Some((envelope.conversation_key(), l.clone())),
                _ => None,
            },
            Effect::Identity { .. } => None,
        })
        .collect()
}

fn identities(effects: &[Effect]) -> Vec<(String, bool)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Identity { key, record, .. } => Some((key.clone(), record.is_some())),
            Effect::Notify(_) => None,
        })
        .collect()
}

#[test]
fn linking_two_conversations_tells_the_other_and_records_both() {
    let config = CustomersConfig::default();
    let mut instagram = ConversationState::default();
    let event = on(
        Channel::Instagram,
        "ig-1",
        link(Some((Channel::Whatsapp, "wa-1")), "cus-kim"),
    );
    let applied = apply(&config, &mut instagram, &event);
    assert!(applied.changed);
    assert_eq!(instagram.linked_customer, "cus-kim");
    assert_eq!(instagram.customer_attributes["tier"], "vip");
    assert_eq!(instagram.customer_conversations, ["acme/whatsapp/wa-1"]);
    assert_eq!(
        identities(&applied.effects),
        [("cus-kim/acme/instagram/ig-1".to_owned(), true)]
    );
    let told = notified(&applied.effects);
    assert_eq!(told.len(), 1);
    let (to, joined) = &told[0];
    assert_eq!(to, "acme/whatsapp/wa-1");
    assert_eq!(joined.action(), Action::Joined);
    // The other conversation takes it in its own order.
    let mut whatsapp = ConversationState::default();
    let joined_event = on(Channel::Whatsapp, "wa-1", Content::Link(joined.clone()));
    let applied = apply(&config, &mut whatsapp, &joined_event);
    assert!(
        applied.changed && applied.effects.len() == 1,
        "its own record only"
    );
    assert_eq!(whatsapp.linked_customer, "cus-kim");
    assert_eq!(whatsapp.customer_conversations, ["acme/instagram/ig-1"]);
    assert_eq!(whatsapp.customer_attributes["tier"], "vip");
    // Twice changes nothing.
    assert!(!apply(&config, &mut whatsapp, &joined_event).changed);
    // Its messages say who the customer is.
    let mut message = on(
        Channel::Whatsapp,
        "wa-1",
        Content::Text(Text { body: "hi".into() }),
    );
    assert!(annotate(&mut message, &whatsapp), "the customer was added");
    assert_eq!(message.attributes[CUSTOMER_ATTRIBUTE], "cus-kim");
    assert_eq!(message.attributes["customer.tier"], "vip");
    assert_eq!(
        message.attributes[CONVERSATIONS_ATTRIBUTE],
        "acme/instagram/ig-1"
    );
}

#[test]
fn a_third_conversation_is_announced_to_every_other_one() {
    let config = CustomersConfig::default();
    let mut state = ConversationState::default();
    apply(
        &config,
        &mut state,
        &on(
            Channel::Instagram,
            "ig-1",
            link(Some((Channel::Whatsapp, "wa-1")), ""),
        ),
    );
    assert!(
        state.linked_customer.starts_with("cus-"),
        "a new customer id"
    );
    let applied = apply(
        &config,
        &mut state,
        &on(
            Channel::Instagram,
            "ig-1",
            link(Some((Channel::Sms, "+1555")), ""),
        ),
    );
    let told: Vec<String> = notified(&applied.effects)
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(told, ["acme/whatsapp/wa-1", "acme/sms/+1555"]);
}

#[test]
fn unlinking_tells_the_others_and_deletes_the_record() {
    let config = CustomersConfig::default();
    let mut state = ConversationState::default();
    apply(
        &config,
        &mut state,
        &on(
            Channel::Instagram,
            "ig-1",
            link(Some((Channel::Whatsapp, "wa-1")), "cus-kim"),
        ),
    );
    let unlink = on(
        Channel::Instagram,
        "ig-1",
        Content::Link(CustomerLink {
            action: Action::Unlink as i32,
            ..Default::default()
        }),
    );
    let applied = apply(&config, &mut state, &unlink);
    assert!(applied.changed);
    assert!(state.linked_customer.is_empty() && state.customer_conversations.is_empty());
    assert!(state.customer_attributes.is_empty() && state.customer_unlinked);
    assert_eq!(
        identities(&applied.effects),
        [("cus-kim/acme/instagram/ig-1".to_owned(), false)]
    );
    let told = notified(&applied.effects);
    assert_eq!(told[0].0, "acme/whatsapp/wa-1");
    assert_eq!(told[0].1.action(), Action::Left);
    // The other one forgets it.
    let mut other = ConversationState {
        linked_customer: "cus-kim".into(),
        customer_conversations: vec!["acme/instagram/ig-1".into()],
        ..Default::default()
    };
    assert!(
        apply(
            &config,
            &mut other,
            &on(Channel::Whatsapp, "wa-1", Content::Link(told[0].1.clone()))
        )
        .changed
    );
    assert!(other.customer_conversations.is_empty());
    assert_eq!(other.linked_customer, "cus-kim", "still the customer");
    // Unlinked messages carry no customer, whatever the caller said.
    let mut message = on(
        Channel::Instagram,
        "ig-1",
        Content::Text(Text { body: "hi".into() }),
    );
    message
        .attributes
        .insert(CUSTOMER_ATTRIBUTE.into(), "cus-forged".into());
    message
        .attributes
        .insert("customer.tier".into(), "vip".into());
    assert!(annotate(&mut message, &state), "the forged customer went");
    assert!(message.attributes.is_empty());
    assert!(!annotate(&mut message, &state), "nothing left to change");
}

#[test]
fn a_verified_phone_links_sms_and_whatsapp_when_the_tenant_turned_it_on() {
    let config = CustomersConfig {
        match_verified_phone: vec!["acme".into()],
        ..Default::default()
    };
    let text = |channel, conversation: &str, from: &str| Envelope {
        customer: Some(Party {
            id: from.into(),
            display_name: String::new(),
        }),
        ..on(
            channel,
            conversation,
            Content::Text(Text { body: "hi".into() }),
        )
    };
    let mut sms = ConversationState::default();
    let mut whatsapp = ConversationState::default();
    let applied = apply(
        &config,
        &mut sms,
        &text(Channel::Sms, "+15551230000", "+15551230000"),
    );
    assert!(applied.reason.is_some());
    apply(
        &config,
        &mut whatsapp,
        &text(Channel::Whatsapp, "pn:15551230000", "15551230000"),
    );
    assert_eq!(sms.linked_customer, "phone-15551230000");
    assert_eq!(sms.linked_customer, whatsapp.linked_customer);
    // Not a phone number, another channel, or another tenant: no link.
    let mut other = ConversationState::default();
    apply(
        &config,
        &mut other,
        &text(Channel::Whatsapp, "x", "not-a-number"),
    );
    apply(
        &config,
        &mut other,
        &text(Channel::Messenger, "x", "15551230000"),
    );
    let mut foreign = text(Channel::Sms, "x", "+15551230000");
    foreign.tenant_id = "globex".into();
    apply(&config, &mut other, &foreign);
    assert!(other.linked_customer.is_empty());
    // Unlinked by hand, it stays unlinked.
    apply(
        &config,
        &mut sms,
        &on(
            Channel::Sms,
            "+15551230000",
            Content::Link(CustomerLink {
                action: Action::Unlink as i32,
                ..Default::default()
            }),
        ),
    );
    apply(
        &config,
        &mut sms,
        &text(Channel::Sms, "+15551230000", "+15551230000"),
    );
    assert!(sms.linked_customer.is_empty());
}
