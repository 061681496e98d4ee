//! Feeds arbitrary bodies to `channels::normalize`. The first byte picks the
//! channel (its value mod 6, as the `Channel` enum number) and the content
//! type (the rest of it); the remaining bytes are the body. It must never
//! panic, and whatever a channel normalizer accepts must pass validation.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use switchboard_broker::{
    channels::{Limits, normalize},
    validate,
};
use switchboard_proto::v1::Channel;

/// The channel's default content type first, then explicit ones.
const CONTENT_TYPES: [&str; 5] = [
    "",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/x-protobuf",
    "application/json; charset=latin1",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let channel = Channel::try_from(i32::from(selector % 6)).unwrap_or(Channel::Unspecified);
    let content_type = CONTENT_TYPES[usize::from(selector / 6) % CONTENT_TYPES.len()];
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let limits = Limits::default();
    if let Ok(envelopes) = normalize(channel, "acme", payload, content_type, &limits, now) {
        assert!(envelopes.len() <= limits.max_events);
        if channel != Channel::Webchat {
            for envelope in envelopes {
                if let Err(e) = validate::normalize("payload", envelope, now) {
                    panic!("normalized envelope fails validation: {e}");
                }
            }
        }
    }
});
