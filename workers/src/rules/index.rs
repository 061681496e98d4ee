//! Which rules can match a message, by direction, channel and tenant.
//!
//! Built once per [`RuleSet`](super::RuleSet), so reloads build a new one.
//! A message's candidates are two lists of rule positions, both in file
//! order: the rules for its direction and channel that name no tenant, and
//! those that name its tenant. Walking their merge in order keeps "first
//! match in the file wins" without allocating per message.

use std::collections::HashMap;

use switchboard_proto::v1::{Channel, Direction};

use super::Compiled;

/// Rules that can match one direction: per channel, and for channels no
/// rule names.
#[derive(Debug, Clone, Default)]
struct ByChannel {
    /// Indexed by channel number; each merged with the rules that name no
    /// channel.
    named: Vec<ByTenant>,
    /// Rules that name no channel: for channels no rule names.
    any: ByTenant,
}

/// Rule positions, ascending, split by tenant.
#[derive(Debug, Clone, Default)]
struct ByTenant {
    /// Rules that name no tenant.
    any: Vec<u32>,
    /// Rules that name the tenant (and no others' lists).
    named: HashMap<String, Vec<u32>>,
}

/// The candidates of every (direction, channel, tenant).
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// By [`direction_class`].
    directions: [ByChannel; 3],
}

/// Outbound messages try only `outbound` rules; inbound ones the rules
/// without a direction or with `inbound`; a message with no (or an unknown)
/// direction only the rules without one.
fn direction_class(direction: Direction) -> usize {
    match direction {
        Direction::Unspecified => 0,
        Direction::Inbound => 1,
        Direction::Outbound => 2,
    }
}

/// The direction classes a rule's `direction` belongs to.
fn classes(direction: Option<Direction>) -> &'static [usize] {
    match direction {
        None => &[0, 1],
        Some(Direction::Inbound) => &[1],
        Some(Direction::Outbound) => &[2],
        // Parsing never produces it; like the evaluator, only messages
        // without a direction would match it.
        Some(Direction::Unspecified) => &[0],
    }
}

impl ByTenant {
    fn push(&mut self, position: u32, tenants: &[String]) {
        if tenants.is_empty() {
            self.any.push(position);
            return;
        }
        for tenant in tenants {
            let list = self.named.entry(tenant.clone()).or_default();
            // A tenant listed twice by one rule: once is enough.
            if list.last() != Some(&position) {
                list.push(position);
            }
        }
    }

    /// The first position, in ascending order, among the rules for
    /// `tenant` that `matches` accepts.
    fn first(&self, tenant: &str, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let a = self.any.as_slice();
        let b = self.named.get(tenant).map_or(&[][..], Vec::as_slice);
        let (mut i, mut j) = (0, 0);
        loop {
            // A rule is in `any` or in tenants' lists, never both.
            let next = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) if x < y => {
                    i += 1;
                    x
                }
                (_, Some(&y)) => {
                    j += 1;
                    y
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (None, None) => return None,
            };
            if matches(next) {
                return Some(next);
            }
        }
    }
}

impl Index {
    /// Indexes the rules `include` accepts, by their position in `rules`.
    pub(super) fn build(rules: &[Compiled], include: impl Fn(&Compiled) -> bool) -> Self {
        let channel_slots = rules
            .iter()
            .flat_map(|c| c.channels.iter())
            .map(|&ch| ch as usize + 1)
            .max()
            .unwrap_or(0);
        let mut index = Self::default();
        for by_channel in &mut index.directions {
            by_channel.named = vec![ByTenant::default(); channel_slots];
        }
        for (position, rule) in rules.iter().enumerate() {
            if !include(rule) {
                continue;
            }
            let position = u32::try_from(position).expect("fewer than 2^32 rules");
            let tenants = rule.rule.tenants.as_slice();
            for &class in classes(rule.direction) {
                let by_channel = &mut index.directions[class];
                if rule.channels.is_empty() {
                    by_channel.any.push(position, tenants);
                    for slot in &mut by_channel.named {
                        slot.push(position, tenants);
                    }
                } else {
                    // A channel listed twice by one rule: once is enough.
                    let mut channels = rule.channels.clone();
                    channels.sort_unstable();
                    channels.dedup();
                    for channel in channels {
                        by_channel.named[channel as usize].push(position, tenants);
                    }
                }
            }
        }
        index
    }

    /// The position of the first rule, in file order, among those that can
    /// match a message of this direction, channel and tenant, that
    /// `matches` accepts.
    pub(super) fn first(
        &self,
        direction: Direction,
        channel: Channel,
        tenant: &str,
        matches: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let by_channel = &self.directions[direction_class(direction)];
        by_channel
            .named
            .get(channel as usize)
            .unwrap_or(&by_channel.any)
            .first(tenant, matches)
    }
}
