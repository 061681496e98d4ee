//! Switchboard's wire contract.
//!
//! - [`v1`]: the generated `switchboard.v1` messages, the `Ingest` and `Bot`
//!   gRPC services (client and server), and proto3-JSON serde impls (so web
//!   chat can post the canonical envelope as JSON).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, imports included, for
//!   gRPC server reflection.
//! - [`partition`]: the conversation key and Kafka's Java `murmur2`
//!   partitioner, so every component (and any Java client) agrees on which
//!   partition a conversation lives in.
//! - [`message_id_hash`]: how a conversation state remembers a channel
//!   message id.
//!
//! The `.proto` sources live in `proto/switchboard/v1/`; other languages
//! generate their clients from there.

#![forbid(unsafe_code)]

mod message_id;
pub mod partition;

pub use message_id::message_id_hash;

/// The `switchboard.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("switchboard.v1");
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of `switchboard.v1` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));

pub use pbjson_types::Timestamp;

impl v1::Channel {
    /// Every channel, `Unspecified` first, in value order (so a channel's
    /// value is its index here).
    pub const ALL: [Self; 6] = [
        Self::Unspecified,
        Self::Whatsapp,
        Self::Messenger,
        Self::Instagram,
        Self::Sms,
        Self::Webchat,
    ];

    /// The channels messages travel on: every one but `Unspecified`.
    pub const KNOWN: [Self; 5] = [
        Self::Whatsapp,
        Self::Messenger,
        Self::Instagram,
        Self::Sms,
        Self::Webchat,
    ];

    /// The lowercase name used in Kafka keys, rules and metric labels.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Whatsapp => "whatsapp",
            Self::Messenger => "messenger",
            Self::Instagram => "instagram",
            Self::Sms => "sms",
            Self::Webchat => "webchat",
        }
    }
}

impl v1::BroadcastCounts {
    /// Adds another part's counts (another partition's) into these.
    pub fn add(&mut self, part: &Self) {
        self.sent += part.sent;
        self.failed += part.failed;
        self.delivered += part.delivered;
        self.read += part.read;
        for (reason, n) in &part.refused {
            *self.refused.entry(reason.clone()).or_default() += n;
        }
        if let Some(at) = part.updated_at
            && self
                .updated_at
                .is_none_or(|s| (s.seconds, s.nanos) < (at.seconds, at.nanos))
        {
            self.updated_at = Some(at);
        }
    }
}

impl v1::envelope::Content {
    /// The content type's name, as used in rules and metric labels.
    pub fn kind(&self) -> &'static str {
        use v1::envelope::Content;
        match self {
            Content::Text(_) => "text",
            Content::Media(_) => "media",
            Content::Location(_) => "location",
            Content::InteractiveReply(_) => "interactive_reply",
            Content::Reaction(_) => "reaction",
            Content::Order(_) => "order",
            Content::Postback(_) => "postback",
            Content::Status(_) => "status",
            Content::Template(_) => "template",
            Content::Unsupported(_) => "unsupported",
            Content::System(_) => "system",
            Content::Consent(_) => "consent",
            Content::Deletion(_) => "deletion",
            Content::Attachments(_) => "attachments",
            Content::Handover(_) => "handover",
            Content::Subscription(_) => "subscription",
            Content::Link(_) => "link",
            Content::Control(_) => "control",
        }
    }
}

impl v1::Envelope {
    /// The Kafka key of this envelope's conversation: `tenant/channel/conversation`.
    pub fn conversation_key(&self) -> String {
        partition::conversation_key(&self.tenant_id, self.channel(), &self.conversation_id)
    }
}

/// Converts a wall-clock time to a protobuf `Timestamp`.
pub fn timestamp(time: std::time::SystemTime) -> Timestamp {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

/// Converts a protobuf `Timestamp` to wall-clock time (`None` when invalid).
pub fn system_time(ts: &Timestamp) -> Option<std::time::SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    let secs = u64::try_from(ts.seconds).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::v1::Channel;

    #[test]
    fn every_channel_is_listed_at_its_value() {
        for (i, channel) in Channel::ALL.iter().enumerate() {
            assert_eq!(*channel as usize, i);
            assert_eq!(Channel::try_from(i as i32), Ok(*channel));
        }
        assert!(Channel::try_from(Channel::ALL.len() as i32).is_err());
    }
}
