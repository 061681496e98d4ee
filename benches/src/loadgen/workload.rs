//! What the load generator sends: message `i` of a run, as an envelope or
//! as a raw channel webhook, and the token that lets a sink recognise it.
//!
//! Message `i` belongs to conversation `i % conversations` and is that
//! conversation's message number `i / conversations`, so messages are spread
//! evenly and each conversation's sequence numbers grow with `i`. Every
//! message carries a [`Token`] as its channel message id: the run, `i` and
//! the intended send time. Channel message ids survive normalization and
//! routing, so the end-to-end sink reads the same token from an envelope
//! published with `Publish` and from one a webhook produced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_proto::v1::{
    Channel, Direction, Envelope, Party, PublishRequest, Text, WebhookRequest, envelope::Content,
};

/// `per_conversation` text messages for each conversation index in
/// `conversations`, grouped by conversation. `body(conversation, seq)` gives
/// each message's text; `attributes.seq` holds the sequence number.
pub fn conversations(
    tenant: &str,
    channel: Channel,
    conversations: std::ops::Range<usize>,
    per_conversation: usize,
    body: impl Fn(usize, usize) -> String,
) -> Vec<Vec<Envelope>> {
    conversations
        .map(|c| {
            (0..per_conversation)
                .map(|seq| Envelope {
                    attributes: [("seq".to_owned(), seq.to_string())].into(),
                    ..text_envelope(tenant, channel, format!("conv-{c}"), body(c, seq))
                })
                .collect()
        })
        .collect()
}

/// An inbound text envelope from customer `customer-<conversation>`.
fn text_envelope(tenant: &str, channel: Channel, conversation: String, body: String) -> Envelope {
    Envelope {
        tenant_id: tenant.to_owned(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        customer: Some(Party {
            id: format!("customer-{conversation}"),
            display_name: String::new(),
        }),
        conversation_id: conversation,
        content: Some(Content::Text(Text { body })),
        ..Default::default()
    }
}

/// An envelope's sequence number within its conversation (`attributes.seq`).
pub fn seq_of(envelope: &Envelope) -> usize {
    envelope
        .attributes
        .get("seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Identifies message `index` of run `run`, sent (or meant to be sent) at
/// `sent`. Written as `sb-<run>-<index>-<unix micros>`: letters, digits and
/// dashes, valid as a channel message id on every channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// The run's id.
    pub run: &'a str,
    /// The message's index in the run.
    pub index: u64,
    /// Intended send time, microseconds since the Unix epoch.
    pub sent_us: u64,
}

impl<'a> Token<'a> {
    /// Parses a channel message id; `None` if it is not a token.
    pub fn parse(id: &'a str) -> Option<Self> {
        let rest = id.strip_prefix("sb-")?;
        let mut parts = rest.rsplitn(3, '-');
        let sent_us = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        let run = parts.next()?;
        Some(Self {
            run,
            index,
            sent_us,
        })
    }
}

impl std::fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sb-{}-{}-{}", self.run, self.index, self.sent_us)
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// The shape of a run's messages.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The run's id (letters and digits).
    pub run: String,
    /// Conversations the messages are spread over.
    pub conversations: u64,
    /// Tenants the conversations are spread over (`<tenant>-<n>`; one
    /// tenant is just `<tenant>`).
    pub tenants: u64,
    /// Tenant id, or prefix of the tenant ids.
    pub tenant: String,
    /// Channel of `Publish` messages. Webhooks rotate over every channel,
    /// one channel per conversation.
    pub channel: Channel,
    /// Text body of `Publish` messages, and of webhook messages.
    pub body: String,
}

impl Workload {
    /// A body of `bytes` bytes of readable text.
    pub fn body_of(bytes: usize) -> String {
        "Hello, where is my order? "
            .chars()
            .cycle()
            .take(bytes)
            .collect()
    }

    /// Conversation of message `index`.
    pub fn conversation(&self, index: u64) -> u64 {
        index % self.conversations.max(1)
    }

    /// Sequence number of message `index` within its conversation.
    pub fn seq(&self, index: u64) -> u64 {
        index / self.conversations.max(1)
    }

    fn tenant_of(&self, conversation: u64) -> String {
        if self.tenants <= 1 {
            self.tenant.clone()
        } else {
            format!("{}-{}", self.tenant, conversation % self.tenants)
        }
    }

    /// Message `index` as a `PublishRequest`, intended for `sent`.
    pub fn publish(&self, index: u64, sent: SystemTime) -> PublishRequest {
        PublishRequest {
            envelope: Some(self.envelope(index, sent)),
            sequence: index,
        }
    }

    /// Message `index` as an envelope, intended for `sent`.
    pub fn envelope(&self, index: u64, sent: SystemTime) -> Envelope {
        let c = self.conversation(index);
        Envelope {
            channel_message_id: self.token(index, sent),
            attributes: [("seq".to_owned(), self.seq(index).to_string())].into(),
            ..text_envelope(
                &self.tenant_of(c),
                self.channel,
                format!("{}-c{c}", self.run),
                self.body.clone(),
            )
        }
    }

    fn token(&self, index: u64, sent: SystemTime) -> String {
        Token {
            run: &self.run,
            index,
            sent_us: unix_micros(sent),
        }
        .to_string()
    }

    /// Message `index` as the webhook its conversation's channel would
    /// send, intended for `sent`. Conversations rotate over WhatsApp,
    /// Messenger, Instagram, SMS and web chat; the payloads have the
    /// channels' real shapes (the fixtures in `broker/tests/fixtures`),
    /// with one text message each.
    pub fn webhook(&self, index: u64, sent: SystemTime) -> WebhookRequest {
        let c = self.conversation(index);
        let id = self.token(index, sent);
        let body = serde_json::Value::from(self.body.as_str()).to_string();
        let unix = unix_micros(sent) / 1_000_000;
        let customer = 16_505_550_000_u64 + c;
        let (channel, content_type, payload) = match c % 5 {
            0 => (
                Channel::Whatsapp,
                "application/json",
                format!(
                    r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Load {c}"}},"wa_id":"{customer}"}}],"messages":[{{"from":"{customer}","id":"{id}","timestamp":"{unix}","type":"text","text":{{"body":{body}}}}}]}}}}]}}]}}"#
                ),
            ),
            n @ (1 | 2) => {
                let (channel, object, page) = if n == 1 {
                    (Channel::Messenger, "page", "1122334455667788")
                } else {
                    (Channel::Instagram, "instagram", "17841400008460056")
                };
                (
                    channel,
                    "application/json",
                    format!(
                        r#"{{"object":"{object}","entry":[{{"id":"{page}","time":{ms},"messaging":[{{"sender":{{"id":"{customer}"}},"recipient":{{"id":"{page}"}},"timestamp":{ms},"message":{{"mid":"{id}","text":{body}}}}}]}}]}}"#,
                        ms = unix * 1000
                    ),
                )
            }
            3 => (
                Channel::Sms,
                "application/x-www-form-urlencoded",
                format!(
                    "ToCountry=FR&SmsMessageSid={id}&NumMedia=0&SmsSid={id}&SmsStatus=received&Body={}&FromCountry=FR&To=%2B33644630000&NumSegments=1&MessageSid={id}&AccountSid=AC0123456789abcdef0123456789abcdef&From=%2B{customer}&ApiVersion=2010-04-01",
                    percent_encoding::utf8_percent_encode(
                        &self.body,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
            ),
            _ => (
                Channel::Webchat,
                "application/json",
                format!(
                    r#"{{"direction":"INBOUND","conversationId":"site:{run}-{c}","channelMessageId":"{id}","customer":{{"id":"{run}-{c}","displayName":"Visitor"}},"business":{{"id":"site"}},"text":{{"body":{body}}}}}"#,
                    run = self.run
                ),
            ),
        };
        WebhookRequest {
            tenant_id: self.tenant_of(c),
            channel: channel as i32,
            payload: payload.into_bytes().into(),
            content_type: content_type.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token {
            run: "0a1b2c",
            index: 42,
            sent_us: 1_790_000_000_123_456,
        };
        let text = token.to_string();
        assert_eq!(text, "sb-0a1b2c-42-1790000000123456");
        assert_eq!(Token::parse(&text), Some(token));
        assert_eq!(Token::parse("wamid.HBgLMTY1"), None);
        assert_eq!(Token::parse("sb-run-x-1"), None);
    }

    #[test]
    fn messages_spread_over_conversations_and_tenants() {
        let workload = Workload {
            run: "r".into(),
            conversations: 3,
            tenants: 2,
            tenant: "acme".into(),
            channel: Channel::Webchat,
            body: Workload::body_of(10),
        };
        let sent = SystemTime::now();
        let e = workload.envelope(4, sent);
        assert_eq!(e.conversation_id, "r-c1");
        assert_eq!(e.tenant_id, "acme-1");
        assert_eq!(seq_of(&e), 1);
        assert_eq!(Token::parse(&e.channel_message_id).unwrap().index, 4);
        assert_eq!(workload.body.len(), 10);
        let five = Workload {
            conversations: 5,
            ..workload
        };
        let channels: Vec<_> = (0..5).map(|i| five.webhook(i, sent).channel()).collect();
        assert_eq!(
            channels,
            [
                Channel::Whatsapp,
                Channel::Messenger,
                Channel::Instagram,
                Channel::Sms,
                Channel::Webchat
            ]
        );
    }

    #[test]
    fn webhooks_normalize_to_one_message_carrying_the_token() {
        let workload = Workload {
            run: "r1".into(),
            conversations: 5,
            tenants: 1,
            tenant: "acme".into(),
            channel: Channel::Webchat,
            body: "Où est ma commande ? & co".into(),
        };
        let sent = SystemTime::now();
        for i in 0..10 {
            let request = workload.webhook(i, sent);
            let envelopes = switchboard_broker::channels::normalize(
                request.channel(),
                &request.tenant_id,
                &request.payload,
                &request.content_type,
                &Default::default(),
                sent,
            )
            .unwrap_or_else(|e| panic!("webhook {i} ({:?}): {e}", request.channel()));
            assert_eq!(envelopes.len(), 1, "webhook {i}");
            let envelope = &envelopes[0];
            let token = Token::parse(&envelope.channel_message_id).expect("a token");
            assert_eq!((token.run, token.index), ("r1", i));
            assert_eq!(
                envelope.content,
                Some(Content::Text(Text {
                    body: workload.body.clone()
                })),
                "webhook {i}"
            );
        }
    }
}
