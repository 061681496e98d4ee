//! Request validation and normalization.
//!
//! Every envelope is checked completely, so a caller learns about all bad
//! fields at once, each named by its path. A valid envelope is normalized:
//! it gets a UUIDv7 `message_id` when it has none, and always gets the
//! node's own `received_at`: consent windows are judged with times the node
//! set, never with a caller's clock. A caller's `sent_at` may be at most
//! `max_clock_skew` ahead of the node's clock.

use std::time::{Duration, SystemTime};

use switchboard_proto::v1::{Channel, Direction, Envelope, envelope::Content};

use crate::error::{FieldViolation, IngestError};

/// Longest accepted id (tenant, conversation, message, party), in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Validates `envelope` (found at `path` in the request) and fills in the
/// server-assigned fields. `path` is formatted only into errors (a batch
/// passes `format_args!("envelopes[{i}]")`, costing nothing when valid).
pub fn normalize(
    path: impl std::fmt::Display,
    mut envelope: Envelope,
    now: SystemTime,
    max_clock_skew: Duration,
) -> Result<Envelope, IngestError> {
    let mut violations = Vec::new();
    let mut required = |field: &str, value: &str| {
        if value.is_empty() {
            violations.push(FieldViolation::new(
                format!("{path}.{field}"),
                "is required",
            ));
        } else if value.len() > MAX_ID_BYTES {
            violations.push(FieldViolation::new(
                format!("{path}.{field}"),
                format!("is longer than {MAX_ID_BYTES} bytes"),
            ));
        }
    };
    required("tenant_id", &envelope.tenant_id);
    required("conversation_id", &envelope.conversation_id);
    if !envelope.message_id.is_empty() {
        required("message_id", &envelope.message_id);
    }
    if !envelope.channel_message_id.is_empty() {
        required("channel_message_id", &envelope.channel_message_id);
    }
    if envelope.tenant_id.contains('/') {
        violations.push(FieldViolation::new(
            format!("{path}.tenant_id"),
            "must not contain '/'",
        ));
    }
    if Channel::try_from(envelope.channel).unwrap_or(Channel::Unspecified) == Channel::Unspecified {
        violations.push(FieldViolation::new(
            format!("{path}.channel"),
            "must be one of WHATSAPP, MESSENGER, INSTAGRAM, SMS, WEBCHAT",
        ));
    }
    if Direction::try_from(envelope.direction).unwrap_or(Direction::Unspecified)
        == Direction::Unspecified
    {
        violations.push(FieldViolation::new(
            format!("{path}.direction"),
            "must be INBOUND or OUTBOUND",
        ));
    }
    match &envelope.content {
        None => violations.push(FieldViolation::new(
            format!("{path}.content"),
            "is required (text, media, ...)",
        )),
        Some(Content::Control(control)) => {
            use switchboard_proto::v1::conversation_control::Action;
            match control.action() {
                Action::Unspecified => violations.push(FieldViolation::new(
                    format!("{path}.control.action"),
                    "must be HANDOFF, RELEASE or ASSIGN",
                )),
                Action::Assign if control.agent_id.is_empty() => {
                    violations.push(FieldViolation::new(
                        format!("{path}.control.agent_id"),
                        "is required to ASSIGN",
                    ))
                }
                _ => {}
            }
        }
        Some(Content::Link(link)) => {
            use switchboard_proto::v1::customer_link::Action;
            if link.action() == Action::Unspecified {
                violations.push(FieldViolation::new(
                    format!("{path}.link.action"),
                    "must be LINK or UNLINK",
                ));
            }
            if !link.other_conversation_id.is_empty()
                && link.other_channel() == switchboard_proto::v1::Channel::Unspecified
            {
                violations.push(FieldViolation::new(
                    format!("{path}.link.other_channel"),
                    "is required with other_conversation_id",
                ));
            }
        }
        Some(Content::Subscription(change)) if change.topic.trim().is_empty() => violations.push(
            FieldViolation::new(format!("{path}.subscription.topic"), "is required"),
        ),
        Some(_) => {}
    }
    for (field, ts) in [
        ("sent_at", &envelope.sent_at),
        ("received_at", &envelope.received_at),
    ] {
        let Some(ts) = ts else { continue };
        match switchboard_proto::system_time(ts) {
            None => violations.push(FieldViolation::new(
                format!("{path}.{field}"),
                "is not a valid timestamp",
            )),
            Some(at) if field == "sent_at" && at > now + max_clock_skew => {
                violations.push(FieldViolation::new(
                    format!("{path}.{field}"),
                    format!(
                        "is {}s ahead of the node's clock, more than the {}s allowed (max_clock_skew)",
                        at.duration_since(now).unwrap_or_default().as_secs(),
                        max_clock_skew.as_secs()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if !violations.is_empty() {
        return Err(IngestError::InvalidArgument(violations));
    }

    if envelope.message_id.is_empty() {
        envelope.message_id = uuid::Uuid::now_v7().to_string();
    }
    envelope.received_at = Some(switchboard_proto::timestamp(now));
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::{Timestamp, v1::Text};

    fn valid() -> Envelope {
        Envelope {
            tenant_id: "acme".into(),
            channel: Channel::Webchat as i32,
            direction: Direction::Inbound as i32,
            conversation_id: "c-1".into(),
            content: Some(Content::Text(Text { body: "hi".into() })),
            ..Default::default()
        }
    }

    const SKEW: Duration = Duration::from_secs(300);

    fn fields(err: IngestError) -> Vec<String> {
        match err {
            IngestError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn assigns_ids_and_received_at() {
        let env = normalize("envelope", valid(), SystemTime::now(), SKEW).unwrap();
        let id = uuid::Uuid::parse_str(&env.message_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(env.received_at.is_some());
        let keep = Envelope {
            message_id: "given".into(),
            ..valid()
        };
        assert_eq!(
            normalize("envelope", keep, SystemTime::now(), SKEW)
                .unwrap()
                .message_id,
            "given"
        );
    }

    #[test]
    fn names_every_missing_field() {
        let err = normalize("envelope", Envelope::default(), SystemTime::now(), SKEW).unwrap_err();
        assert_eq!(
            fields(err),
            [
                "envelope.tenant_id",
                "envelope.conversation_id",
                "envelope.channel",
                "envelope.direction",
                "envelope.content"
            ]
        );
    }

    #[test]
    fn rejects_bad_values() {
        let env = Envelope {
            tenant_id: "a/b".into(),
            conversation_id: "x".repeat(MAX_ID_BYTES + 1),
            channel: 99,
            sent_at: Some(Timestamp {
                seconds: -1,
                nanos: 0,
            }),
            ..valid()
        };
        let err = normalize("envelope", env, SystemTime::now(), SKEW).unwrap_err();
        assert_eq!(
            fields(err),
            [
                "envelope.conversation_id",
                "envelope.tenant_id",
                "envelope.channel",
                "envelope.sent_at"
            ]
        );
    }

    #[test]
    fn subscription_changes_and_customer_links_are_checked() {
        use switchboard_proto::v1::{CustomerLink, SubscriptionChange, customer_link::Action};
        let with = |content| Envelope {
            content: Some(content),
            ..valid()
        };
        let empty_topic = with(Content::Subscription(SubscriptionChange::default()));
        assert_eq!(
            fields(normalize("envelope", empty_topic, SystemTime::now(), SKEW).unwrap_err()),
            ["envelope.subscription.topic"]
        );
        let link = |action: Action, other: &str| {
            with(Content::Link(CustomerLink {
                action: action as i32,
                other_conversation_id: other.into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            fields(
                normalize(
                    "envelope",
                    link(Action::Unspecified, "wa-1"),
                    SystemTime::now(),
                    SKEW
                )
                .unwrap_err()
            ),
            ["envelope.link.action", "envelope.link.other_channel"]
        );
        assert!(
            normalize(
                "envelope",
                link(Action::Unlink, ""),
                SystemTime::now(),
                SKEW
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_sent_at_ahead_of_the_clock_and_sets_received_at_itself() {
        let now = SystemTime::now();
        let ahead = |by: Duration| Envelope {
            sent_at: Some(switchboard_proto::timestamp(now + by)),
            // A caller-supplied time is replaced by the node's.
            received_at: Some(switchboard_proto::timestamp(
                now + Duration::from_secs(86_400 * 365),
            )),
            ..valid()
        };
        // Within the skew: accepted, and `received_at` is the node's now.
        let env = normalize("envelope", ahead(Duration::from_secs(60)), now, SKEW).unwrap();
        assert_eq!(env.received_at, Some(switchboard_proto::timestamp(now)));
        // A year ahead, or seconds sent as milliseconds: refused, by path.
        let year = normalize(
            "envelope",
            ahead(Duration::from_secs(86_400 * 365)),
            now,
            SKEW,
        );
        assert_eq!(fields(year.unwrap_err()), ["envelope.sent_at"]);
        let millis = Envelope {
            sent_at: Some(switchboard_proto::Timestamp {
                seconds: now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64,
                nanos: 0,
            }),
            ..valid()
        };
        let err = normalize("payload[0]", millis, now, SKEW).unwrap_err();
        assert_eq!(fields(err), ["payload[0].sent_at"]);
        // The past is fine: channels deliver late.
        let late = Envelope {
            sent_at: Some(switchboard_proto::timestamp(
                now - Duration::from_secs(86_400),
            )),
            ..valid()
        };
        assert!(normalize("envelope", late, now, SKEW).is_ok());
    }
}
