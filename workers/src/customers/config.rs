//! The `[customers]` section of the workers' configuration.

use serde::{Deserialize, Serialize};

/// Customers across channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomersConfig {
    /// Compacted topic of the customers' links, keyed
    /// `customer/conversation key`, in the customer id's partition.
    pub topic: String,
    /// Tenants (`*` for all) whose SMS and WhatsApp conversations with the
    /// same verified phone number are one customer.
    pub match_verified_phone: Vec<String>,
    /// Conversations one customer links at most (each conversation's state
    /// lists the others).
    pub max_conversations: usize,
    /// Attributes one customer has at most.
    pub max_attributes: usize,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        Self {
            topic: "switchboard.customers.v1".into(),
            match_verified_phone: Vec::new(),
            max_conversations: 16,
            max_attributes: 32,
        }
    }
}

impl CustomersConfig {
    /// Whether `tenant` turned on phone matching.
    pub fn matches_phone(&self, tenant: &str) -> bool {
        self.match_verified_phone
            .iter()
            .any(|t| t == "*" || t == tenant)
    }

    /// Checks the bounds.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_conversations >= 2 && self.max_attributes >= 1,
            "customers.max_conversations must be at least 2 and max_attributes at least 1"
        );
        Ok(())
    }
}
