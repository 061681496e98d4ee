use std::time::{Duration, SystemTime};

use switchboard_proto::{
    message_id_hash,
    v1::{
        Channel, ConsentEvent, ConversationControl, ConversationState, Direction, Envelope,
        MessageTag, Owner, Referral, RejectionReason, StatusReceipt, Template, Text,
        consent_event::Action as Consent, conversation_control::Action as Control,
        envelope::Content,
    },
};

use super::{
    consent::ConsentPolicy,
    effects::{apply_message, is_duplicate, remember, sent},
};

const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> ConsentPolicy {
    ConsentPolicy {
        service_window: 24 * HOUR,
        extended_window: 7 * 24 * HOUR,
    }
}

fn message(channel: Channel, direction: Direction, content: Content, ago: Duration) -> Envelope {
    Envelope {
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: direction as i32,
        conversation_id: "c".into(),
        sent_at: Some(switchboard_proto::timestamp(SystemTime::now() - ago)),
        content: Some(content),
        ..Default::default()
    }
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

/// The state after the customer wrote `ago`, on `channel`.
fn wrote(channel: Channel, ago: Duration) -> ConversationState {
    let mut state = ConversationState::default();
    apply_message(
        &mut state,
        &message(channel, Direction::Inbound, text("hi"), ago),
        "support",
    );
    state
}

fn check(state: &ConversationState, reply: &Envelope) -> Result<(), RejectionReason> {
    policy()
        .check(reply, state, SystemTime::now())
        .map_err(|r| r.reason)
}

#[test]
fn free_form_only_inside_the_window_templates_always() {
    let reply = message(
        Channel::Whatsapp,
        Direction::Outbound,
        text("hello"),
        Duration::ZERO,
    );
    assert_eq!(check(&wrote(Channel::Whatsapp, 23 * HOUR), &reply), Ok(()));
    assert_eq!(
        check(&wrote(Channel::Whatsapp, 25 * HOUR), &reply),
        Err(RejectionReason::OutsideWindow)
    );
    assert_eq!(
        check(&ConversationState::default(), &reply),
        Err(RejectionReason::NoInbound)
    );
    let template = message(
        Channel::Whatsapp,
        Direction::Outbound,
        Content::Template(Template {
            name: "order_update".into(),
            ..Default::default()
        }),
        Duration::ZERO,
    );
    assert_eq!(
        check(&wrote(Channel::Whatsapp, 30 * 24 * HOUR), &template),
        Ok(())
    );
    assert_eq!(check(&ConversationState::default(), &template), Ok(()));
}

#[test]
fn human_agent_tag_gives_seven_days_on_messenger_and_instagram_only() {
    for channel in [Channel::Messenger, Channel::Instagram, Channel::Whatsapp] {
        let mut reply = message(channel, Direction::Outbound, text("hi"), Duration::ZERO);
        reply.tag = MessageTag::HumanAgent as i32;
        let expected = if channel == Channel::Whatsapp {
            Err(RejectionReason::OutsideWindow)
        } else {
            Ok(())
        };
        assert_eq!(check(&wrote(channel, 3 * 24 * HOUR), &reply), expected);
        assert_eq!(
            check(&wrote(channel, 8 * 24 * HOUR), &reply),
            Err(RejectionReason::OutsideWindow)
        );
    }
}

#[test]
fn click_to_message_ad_gives_seven_days() {
    let mut inbound = message(
        Channel::Messenger,
        Direction::Inbound,
        text("I saw your ad"),
        3 * 24 * HOUR,
    );
    inbound.referral = Some(Referral {
        source: "ADS".into(),
        ad_id: "ad-1".into(),
        ..Default::default()
    });
    let mut state = ConversationState::default();
    apply_message(&mut state, &inbound, "support");
    let reply = message(
        Channel::Messenger,
        Direction::Outbound,
        text("hi"),
        Duration::ZERO,
    );
    assert_eq!(check(&state, &reply), Ok(()));
    // A short link is not an ad.
    state.referral.as_mut().unwrap().source = "SHORTLINK".into();
    assert_eq!(check(&state, &reply), Err(RejectionReason::OutsideWindow));
}

#[test]
fn sms_opt_out_refuses_everything_until_opt_in() {
    let mut state = wrote(Channel::Sms, HOUR);
    let reply = message(
        Channel::Sms,
        Direction::Outbound,
        text("hi"),
        Duration::ZERO,
    );
    assert_eq!(check(&state, &reply), Ok(()));
    let consent = |action: Consent| {
        message(
            Channel::Sms,
            Direction::Inbound,
            Content::Consent(ConsentEvent {
                action: action as i32,
                keyword: "STOP".into(),
            }),
            Duration::ZERO,
        )
    };
    assert!(apply_message(
        &mut state,
        &consent(Consent::OptOut),
        "support"
    ));
    assert!(
        !apply_message(&mut state, &consent(Consent::OptOut), "support"),
        "a second STOP changes nothing"
    );
    assert_eq!(check(&state, &reply), Err(RejectionReason::OptedOut));
    let template = message(
        Channel::Sms,
        Direction::Outbound,
        Content::Template(Template::default()),
        Duration::ZERO,
    );
    assert_eq!(check(&state, &template), Err(RejectionReason::OptedOut));
    apply_message(&mut state, &consent(Consent::OptIn), "support");
    assert_eq!(check(&state, &reply), Ok(()));
    // SMS has no window.
    assert_eq!(check(&wrote(Channel::Sms, 90 * 24 * HOUR), &reply), Ok(()));
}

#[test]
fn receipts_do_not_open_the_window_and_older_messages_do_not_move_it_back() {
    let mut state = ConversationState::default();
    let receipt = message(
        Channel::Whatsapp,
        Direction::Inbound,
        Content::Status(StatusReceipt::default()),
        Duration::ZERO,
    );
    assert!(
        !apply_message(&mut state, &receipt, "support"),
        "a receipt changes nothing"
    );
    assert!(state.last_inbound_at.is_none());
    let recent = wrote(Channel::Whatsapp, HOUR).last_inbound_at;
    state.last_inbound_at.clone_from(&recent);
    apply_message(
        &mut state,
        &message(
            Channel::Whatsapp,
            Direction::Inbound,
            text("old"),
            48 * HOUR,
        ),
        "support",
    );
    assert_eq!(state.last_inbound_at, recent);
}

#[test]
fn control_events_change_the_owner() {
    let control = |action: Control, queue: &str, agent: &str| {
        message(
            Channel::Webchat,
            Direction::Outbound,
            Content::Control(ConversationControl {
                action: action as i32,
                queue: queue.into(),
                agent_id: agent.into(),
                reason: String::new(),
            }),
            Duration::ZERO,
        )
    };
    let mut state = ConversationState::default();
    apply_message(&mut state, &control(Control::Handoff, "", ""), "support");
    assert_eq!(
        (state.owner(), state.queue.as_str()),
        (Owner::Human, "support")
    );
    apply_message(&mut state, &control(Control::Handoff, "vip", ""), "support");
    assert_eq!(state.queue, "vip");
    apply_message(
        &mut state,
        &control(Control::Assign, "", "agent-7"),
        "support",
    );
    assert_eq!(
        (state.owner(), state.agent_id.as_str()),
        (Owner::Human, "agent-7")
    );
    apply_message(&mut state, &control(Control::Release, "", ""), "support");
    assert_eq!(state.owner(), Owner::Bot);
    assert!(state.queue.is_empty() && state.agent_id.is_empty());
}

#[test]
fn recent_ids_are_bounded_and_spot_copies() {
    let mut state = ConversationState::default();
    let with_id = |id: &str| Envelope {
        channel_message_id: id.into(),
        ..Default::default()
    };
    for (offset, id) in ["a", "b", "c"].into_iter().enumerate() {
        assert!(!is_duplicate(&state, &with_id(id), offset as i64));
        remember(&mut state, &with_id(id), offset as i64, 2);
    }
    let hashes = |ids: &[&str]| ids.iter().map(|id| message_id_hash(id)).collect::<Vec<_>>();
    assert_eq!(state.recent_message_hashes, hashes(&["b", "c"]));
    assert!(
        state.recent_message_ids.is_empty(),
        "ids are kept as hashes"
    );
    assert_eq!(state.recent_message_offsets, [1, 2]);
    assert!(
        is_duplicate(&state, &with_id("c"), 7),
        "a copy at another offset"
    );
    assert!(!is_duplicate(&state, &with_id("a"), 7), "pushed out");
    assert!(
        !is_duplicate(&state, &with_id(""), 7),
        "no id, never a copy"
    );
    remember(&mut state, &with_id("d"), 8, 0);
    assert_eq!(
        state.recent_message_hashes,
        hashes(&["b", "c"]),
        "0 turns it off"
    );
}

/// A record redone after a crash (its state was written, its offset not
/// committed) is the same record at the same offset: routed again, not
/// dropped as a copy of itself.
#[test]
fn the_same_record_read_again_is_not_a_copy() {
    let mut state = ConversationState::default();
    let envelope = Envelope {
        channel_message_id: "wamid.1".into(),
        ..Default::default()
    };
    remember(&mut state, &envelope, 41, 20);
    assert!(!is_duplicate(&state, &envelope, 41));
    assert!(is_duplicate(&state, &envelope, 42));
    // A state written before offsets were kept: every match is a copy.
    let old = ConversationState {
        recent_message_ids: vec!["wamid.1".into()],
        ..Default::default()
    };
    assert!(is_duplicate(&old, &envelope, 41));
    let mut upgraded = old.clone();
    remember(
        &mut upgraded,
        &Envelope {
            channel_message_id: "wamid.2".into(),
            ..Default::default()
        },
        50,
        20,
    );
    assert_eq!(upgraded.recent_message_offsets, [-1, 50]);
    assert_eq!(
        upgraded.recent_message_hashes,
        [message_id_hash("wamid.1"), message_id_hash("wamid.2")]
    );
}

/// A state written while ids were kept as strings, with their offsets:
/// read as before, and its ids hashed, oldest first, on the next message.
#[test]
fn a_state_with_ids_as_strings_is_read_and_upgraded() {
    let with_id = |id: &str| Envelope {
        channel_message_id: id.into(),
        ..Default::default()
    };
    let mut state = ConversationState {
        recent_message_ids: vec!["wamid.1".into(), "wamid.2".into()],
        recent_message_offsets: vec![10, 11],
        ..Default::default()
    };
    assert!(is_duplicate(&state, &with_id("wamid.2"), 12), "a copy");
    assert!(
        !is_duplicate(&state, &with_id("wamid.2"), 11),
        "itself, redone"
    );
    assert!(!is_duplicate(&state, &with_id("wamid.3"), 12));
    remember(&mut state, &with_id("wamid.3"), 12, 2);
    assert!(state.recent_message_ids.is_empty());
    assert_eq!(
        state.recent_message_hashes,
        [message_id_hash("wamid.2"), message_id_hash("wamid.3")]
    );
    assert_eq!(state.recent_message_offsets, [11, 12]);
    assert!(is_duplicate(&state, &with_id("wamid.2"), 13));
    assert!(!is_duplicate(&state, &with_id("wamid.1"), 13), "pushed out");
}

/// A caller's clock cannot keep the window open: a `sent_at` later than the
/// ingestion node's `received_at` counts as `received_at`.
#[test]
fn the_window_opens_at_the_nodes_time_at_the_latest() {
    let mut state = ConversationState::default();
    let received = SystemTime::now() - 25 * HOUR;
    let mut inbound = message(
        Channel::Whatsapp,
        Direction::Inbound,
        text("hi"),
        Duration::ZERO,
    );
    inbound.sent_at = Some(switchboard_proto::timestamp(received + 365 * 24 * HOUR));
    inbound.received_at = Some(switchboard_proto::timestamp(received));
    assert!(apply_message(&mut state, &inbound, "support"));
    assert_eq!(
        state.last_inbound_at,
        Some(switchboard_proto::timestamp(received))
    );
    let reply = message(
        Channel::Whatsapp,
        Direction::Outbound,
        text("hello"),
        Duration::ZERO,
    );
    assert_eq!(check(&state, &reply), Err(RejectionReason::OutsideWindow));
}

#[test]
fn an_outbound_message_moves_the_last_outbound_time_forward_only() {
    let at = |ago: Duration| {
        let mut reply = message(Channel::Whatsapp, Direction::Outbound, text("hi"), ago);
        reply.received_at = reply.sent_at;
        reply
    };
    let mut state = ConversationState::default();
    let hour_ago = at(HOUR);
    assert!(sent(&mut state, &hour_ago));
    assert_eq!(state.last_outbound_at, hour_ago.received_at);
    assert!(!sent(&mut state, &at(2 * HOUR)), "an older send");
    assert!(sent(&mut state, &at(Duration::ZERO)));
    let mut inbound = at(Duration::ZERO);
    inbound.direction = Direction::Inbound as i32;
    let mut control = at(Duration::ZERO);
    control.content = Some(Content::Control(ConversationControl::default()));
    for not_a_send in [inbound, control] {
        assert!(!sent(&mut ConversationState::default(), &not_a_send));
    }
}

#[test]
fn a_state_back_to_the_default_is_flushed_as_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let cap = std::num::NonZeroUsize::new(10).unwrap();
    let mut states = super::PartitionStates::open(dir.path(), "t", 0, cap).unwrap();
    *states.get_mut("never-changed").unwrap() = ConversationState::default();
    assert_eq!(states.encode_unflushed("never-changed"), Some(None));
    // A message field set to its own default is not the default state.
    let stamped = states.get_mut("stamped").unwrap();
    stamped.updated_at = Some(switchboard_proto::Timestamp::default());
    assert!(matches!(states.encode_unflushed("stamped"), Some(Some(bytes)) if !bytes.is_empty()));
    let agent = states.get_mut("agent").unwrap();
    agent.queue = "vip".into();
    let Some(Some(bytes)) = states.encode_unflushed("agent") else {
        panic!("a changed state is written");
    };
    assert_eq!(
        <ConversationState as prost::Message>::decode(bytes.as_slice()).unwrap(),
        ConversationState {
            queue: "vip".into(),
            ..Default::default()
        }
    );
    assert_eq!(states.encode_unflushed("unknown"), None);
}
