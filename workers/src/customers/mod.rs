//! One customer across channels.
//!
//! A customer groups conversations (a WhatsApp wa_id, a Messenger PSID, an
//! Instagram IGSID, a phone number, a web chat visitor id) under one
//! customer id. How the mapping is partitioned, so that every worker
//! resolves it without a global lock:
//!
//! - **Conversation → customer** lives in the conversation's own state
//!   (`linked_customer`, the customer's attributes, and its other
//!   conversations), partitioned like the messages: the worker that routes
//!   a conversation has it at hand, as it has the rest of the state.
//! - **Customer → conversations** lives in the compacted customers topic:
//!   one `CustomerIdentity` record per link, keyed
//!   `customer/conversation key` and written to the partition of the
//!   customer id (Kafka's murmur2 of the id), so a customer's links sit in
//!   one partition, each record written only by the owner of its
//!   conversation. Reading one partition, filtered by the key prefix, gives
//!   a customer's conversations (a desk, a CRM export).
//! - **Keeping them together**: a link or unlink is an event in one
//!   conversation's order (`CustomerLink`, from an agent merging two
//!   conversations or a CRM through `Publish`). Its worker changes that
//!   state, writes its link record, and publishes `JOINED` (or `LEFT`)
//!   events to the customer's other conversations, keyed by them, so each
//!   takes the change in its own order: no two workers ever write one
//!   state. Those writes are acknowledged before the event's offset is
//!   committed (at least once; applying an event twice changes nothing).
//! - **Matching rules** need no coordination at all: with
//!   `customers.match_verified_phone` on for a tenant, an SMS or WhatsApp
//!   conversation whose customer id is a phone number (the carrier and
//!   WhatsApp verify it) is customer `phone-<digits>`, computed the same
//!   way by whichever worker routes it.
//!
//! Routing then sees the customer: messages of a linked conversation carry
//! the attributes `customer`, `customer.<attribute>` and
//! `customer.conversations`, which rules can match (`customer = { tier =
//! "vip" }`), which agent desks show, and by which the queue stage keeps
//! the sticky agent across the customer's channels. Consent stays per
//! conversation (per channel). Every link and unlink is on analytics
//! (`rule_id = "customer"`, or in the reason of the message a matching
//! rule linked).
//!
//! Layout: [`config`], [`link`] (how events change a state, no I/O),
//! [`writer`] (the link records and the events to other conversations).

pub mod config;
pub mod link;
pub(crate) mod metrics;
#[cfg(test)]
mod tests;
pub mod writer;

/// The envelope attribute naming a linked conversation's customer.
pub const CUSTOMER_ATTRIBUTE: &str = "customer";

/// The envelope attribute listing the customer's other conversations
/// (keys, comma-separated).
pub const CONVERSATIONS_ATTRIBUTE: &str = "customer.conversations";
