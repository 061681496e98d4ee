//! The router's metric handles, taken once so routing looks no label up
//! per message.

use switchboard_proto::v1::conversation_control::Action as ControlAction;

use crate::destinations::DestinationKind as Kind;

/// One destination kind's metric handles.
pub(super) struct DestinationMetrics {
    pub duration: metrics::Histogram,
    pub deliveries: metrics::Counter,
    pub errors: metrics::Counter,
    pub retries: metrics::Counter,
}

/// Metric handles of the router.
pub(super) struct RouterMetrics {
    end_to_end: metrics::Histogram,
    pub handoffs: metrics::Counter,
    releases: metrics::Counter,
    assigns: metrics::Counter,
    pub matched_rule: metrics::Counter,
    pub matched_default: metrics::Counter,
    pub bot_replies: metrics::Counter,
    destinations: [DestinationMetrics; Kind::ALL.len()],
}

impl RouterMetrics {
    pub fn new() -> Self {
        let ownership = |event: &'static str| metrics::counter!("switchboard_ownership_changes_total", "event" => event);
        let matched = |m: &'static str| metrics::counter!("switchboard_route_decisions_total", "matched" => m);
        Self {
            end_to_end: metrics::histogram!("switchboard_end_to_end_duration_seconds"),
            handoffs: ownership("handoff"),
            releases: ownership("release"),
            assigns: ownership("assign"),
            matched_rule: matched("rule"),
            matched_default: matched("default"),
            bot_replies: metrics::counter!("switchboard_bot_replies_total"),
            destinations: Kind::ALL.map(|kind| kind.label()).map(|kind| DestinationMetrics {
                duration: metrics::histogram!("switchboard_destination_duration_seconds", "kind" => kind),
                deliveries: metrics::counter!("switchboard_destination_deliveries_total", "kind" => kind),
                errors: metrics::counter!("switchboard_destination_errors_total", "kind" => kind),
                retries: metrics::counter!("switchboard_destination_retries_total", "kind" => kind),
            }),
        }
    }

    /// The handles of destination kind `kind`.
    pub fn destination(&self, kind: Kind) -> &DestinationMetrics {
        &self.destinations[kind as usize]
    }

    /// A message is routed: its end-to-end latency, from when Switchboard
    /// received it, if known.
    pub fn routed(&self, received: Option<std::time::SystemTime>) {
        if let Some(received) = received {
            self.end_to_end
                .record(received.elapsed().unwrap_or_default().as_secs_f64());
        }
    }

    pub fn ownership(&self, action: ControlAction) {
        match action {
            ControlAction::Handoff => self.handoffs.increment(1),
            ControlAction::Release => self.releases.increment(1),
            ControlAction::Assign => self.assigns.increment(1),
            ControlAction::Unspecified => {}
        }
    }
}
