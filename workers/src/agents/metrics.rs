//! The queue stage's metrics, per queue, with handles taken once per queue.

use metrics::{Counter, Gauge, Histogram};
use switchboard_proto::v1::{AssignmentOutcome, UnassignReason};

/// Why a waiting conversation moved to another queue.
#[derive(Debug, Clone, Copy)]
pub enum Move {
    /// It waited longer than `overflow_after`.
    Overflow,
    /// The queue was closed.
    AfterHours,
}

impl Move {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::AfterHours => "after_hours",
        }
    }
}

/// One queue's metric handles; the `queue` label is the queue's name if
/// configured, else `other`.
pub struct QueueMetrics {
    assigned: Counter,
    sticky_hit: Counter,
    sticky_timeout: Counter,
    reassigned: Counter,
    overflow: Counter,
    after_hours: Counter,
    /// Tasks refused because the queue was full.
    pub refused: Counter,
    /// Held messages dropped (or left without content) to stay in budget.
    pub trimmed: Counter,
    unassigned: [Counter; 5],
    wait: Histogram,
    depth: Gauge,
    held: Gauge,
    agents: [Gauge; 3],
    utilization: Gauge,
}

impl QueueMetrics {
    /// Takes the handles of queue label `queue`.
    pub fn new(queue: &str) -> Self {
        let q = queue.to_owned();
        let outcome = |o: &'static str| metrics::counter!("switchboard_agent_assignments_total", "queue" => q.clone(), "outcome" => o);
        let unassigned = |r: &'static str| metrics::counter!("switchboard_agent_unassignments_total", "queue" => q.clone(), "reason" => r);
        let agents = |p: &'static str| metrics::gauge!("switchboard_agents", "queue" => q.clone(), "presence" => p);
        Self {
            assigned: outcome("assigned"),
            sticky_hit: outcome("sticky_hit"),
            sticky_timeout: outcome("sticky_timeout"),
            reassigned: outcome("reassigned"),
            overflow: outcome("overflow"),
            after_hours: outcome("after_hours"),
            refused: metrics::counter!("switchboard_agent_queue_refused_total", "queue" => q.clone()),
            trimmed: metrics::counter!("switchboard_agent_queue_trimmed_messages_total", "queue" => q.clone()),
            unassigned: [
                unassigned("agent_offline"),
                unassigned("no_accept"),
                unassigned("declined"),
                unassigned("closed"),
                unassigned("released"),
            ],
            wait: metrics::histogram!("switchboard_agent_wait_duration_seconds", "queue" => q.clone()),
            depth: metrics::gauge!("switchboard_agent_queue_depth", "queue" => q.clone()),
            held: metrics::gauge!("switchboard_agent_held_conversations", "queue" => q.clone()),
            agents: [agents("online"), agents("away"), agents("offline")],
            utilization: metrics::gauge!("switchboard_agent_utilization_ratio", "queue" => q),
        }
    }

    /// A conversation was assigned after waiting `waited_ms`.
    pub fn assigned(&self, outcome: AssignmentOutcome, waited_ms: i64) {
        match outcome {
            AssignmentOutcome::StickyHit => &self.sticky_hit,
            AssignmentOutcome::StickyTimeout => &self.sticky_timeout,
            AssignmentOutcome::Reassigned => &self.reassigned,
            _ => &self.assigned,
        }
        .increment(1);
        self.wait.record(waited_ms.max(0) as f64 / 1000.0);
    }

    /// A conversation moved to another queue.
    pub fn moved(&self, why: Move) {
        match why {
            Move::Overflow => self.overflow.increment(1),
            Move::AfterHours => self.after_hours.increment(1),
        }
    }

    /// A conversation left its agent.
    pub fn unassigned(&self, reason: UnassignReason) {
        let i = match reason {
            UnassignReason::AgentOffline => 0,
            UnassignReason::NoAccept => 1,
            UnassignReason::Declined => 2,
            UnassignReason::Closed => 3,
            UnassignReason::Released | UnassignReason::Unspecified => 4,
        };
        self.unassigned[i].increment(1);
    }

    /// Sets the gauges: waiting, held, agents by presence (online, away,
    /// offline), and the capacity of online agents.
    pub fn report(&self, waiting: usize, held: usize, agents: [usize; 3], capacity: u32) {
        self.depth.set(waiting as f64);
        self.held.set(held as f64);
        for (gauge, n) in self.agents.iter().zip(agents) {
            gauge.set(n as f64);
        }
        self.utilization.set(if capacity == 0 {
            0.0
        } else {
            held as f64 / capacity as f64
        });
    }
}
