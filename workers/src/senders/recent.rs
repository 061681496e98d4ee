//! The envelope ids recently sent per conversation, to skip a copy of an
//! outbound record (the routing stage wrote it twice, or it is read again
//! after a rebalance) instead of sending the customer the same reply twice.
//!
//! Bounded in count: at most `per_conversation` ids for each of at most
//! `conversations` conversations, the conversation seen first forgotten
//! first. Only 64-bit keyed hashes are kept (a conversation costs about
//! `16 + 8 × per_conversation` bytes plus the maps' overhead), so a false
//! match needs a 64-bit collision within one conversation's few ids.
//! In memory only: after a restart, the committed offsets are what keeps
//! a message from being sent again.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher,
    sync::Mutex,
};

/// Recently sent envelope ids per conversation.
#[derive(Debug)]
pub struct RecentSends {
    inner: Mutex<Inner>,
    hasher: std::collections::hash_map::RandomState,
    per_conversation: usize,
    conversations: usize,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashMap<u64, VecDeque<u64>>,
    /// Conversations in the order they were first remembered.
    order: VecDeque<u64>,
}

impl RecentSends {
    /// Remembers `per_conversation` ids (0: none) for `conversations` conversations.
    pub fn new(per_conversation: usize, conversations: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            per_conversation,
            conversations: conversations.max(1),
        }
    }

    /// Whether `id` was sent in `conversation` recently. An empty id never was.
    pub fn contains(&self, conversation: &str, id: &str) -> bool {
        if id.is_empty() || self.per_conversation == 0 {
            return false;
        }
        let (c, i) = (self.hasher.hash_one(conversation), self.hasher.hash_one(id));
        let inner = self.inner.lock().expect("recent sends lock");
        inner.ids.get(&c).is_some_and(|ids| ids.contains(&i))
    }

    /// Remembers that `id` was sent (or refused for good) in `conversation`.
    pub fn insert(&self, conversation: &str, id: &str) {
        if id.is_empty() || self.per_conversation == 0 {
            return;
        }
        let (c, i) = (self.hasher.hash_one(conversation), self.hasher.hash_one(id));
        let mut inner = self.inner.lock().expect("recent sends lock");
        if !inner.ids.contains_key(&c) {
            while inner.order.len() >= self.conversations {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.ids.remove(&oldest);
            }
            inner.order.push_back(c);
        }
        let ids = inner.ids.entry(c).or_default();
        if ids.contains(&i) {
            return;
        }
        if ids.len() >= self.per_conversation {
            ids.pop_front();
        }
        ids.push_back(i);
    }

    /// Conversations remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("recent sends lock").ids.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_per_conversation_within_bounds() {
        let recent = RecentSends::new(2, 2);
        recent.insert("c1", "m1");
        assert!(recent.contains("c1", "m1"));
        assert!(!recent.contains("c2", "m1"), "per conversation");
        assert!(!recent.contains("c1", ""), "an empty id is never a copy");
        recent.insert("c1", "m2");
        recent.insert("c1", "m3");
        assert!(!recent.contains("c1", "m1"), "only the last 2 ids");
        assert!(recent.contains("c1", "m3"));
        recent.insert("c2", "x");
        recent.insert("c3", "y");
        assert_eq!(recent.len(), 2, "c1 was forgotten");
        assert!(!recent.contains("c1", "m3"));
        assert!(recent.contains("c3", "y"));
    }

    #[test]
    fn zero_turns_it_off() {
        let recent = RecentSends::new(0, 10);
        recent.insert("c", "m");
        assert!(!recent.contains("c", "m"));
        assert!(recent.is_empty());
    }
}
