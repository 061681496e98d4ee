//! Outbound senders: the stage that takes replies from the per-channel
//! outbound topics to the customer, through each channel's provider API.
//!
//! The routing stage writes every allowed OUTBOUND message (a bot's reply,
//! an agent's answer) to `<outbound_topic_prefix>.<channel>`, keyed by
//! conversation. The sender stage ([`service`]) reads those topics in its
//! own consumer group, `<group_id>.senders`, and for each message:
//!
//! 1. skips it if its envelope id was sent in its conversation lately
//!    ([`recent`]);
//! 2. finds the tenant's credentials for the channel and builds the
//!    provider's request ([`providers`]: [`whatsapp`], [`meta`] for
//!    Messenger and Instagram, [`twilio`] for SMS, [`webchat`]);
//! 3. waits for a token of the sender's bucket ([`limiter`]) and calls the
//!    provider ([`http`]), retrying 429, 5xx and throughput errors with
//!    backoff and `Retry-After`;
//! 4. records the outcome: accepted, an analytics record carrying the
//!    provider's message id (wamid, mid, SID); refused for good, a record
//!    on the rejections topic with the provider's code and reason; a
//!    configuration problem, or still failing after every retry, a dead
//!    letter to replay once fixed ([`outcome`]);
//! 5. and only once Kafka has that record, lets its offset be committed.
//!
//! Layout: [`config`] (and [`secret`] for credentials), the provider
//! modules (with [`graph`] for the Graph API's error object and
//! [`interactive`] for buttons and lists), [`service`], [`metrics`].

pub mod config;
pub mod graph;
pub mod http;
pub mod interactive;
pub mod limiter;
pub mod meta;
pub mod metrics;
pub mod outcome;
pub mod providers;
pub mod recent;
pub mod secret;
pub mod service;
#[cfg(test)]
mod tests;
pub mod twilio;
pub mod webchat;
pub mod whatsapp;
