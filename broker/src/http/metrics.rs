//! The HTTP webhook listener's metrics, with small fixed label sets: every
//! handle is taken once, so a request indexes its counter, looking nothing up.

use http::StatusCode;
use metrics::{Counter, describe_counter};
use switchboard_proto::v1::Channel;

/// `switchboard_ingest_http_requests_total{channel, status}`.
pub const REQUESTS: &str = "switchboard_ingest_http_requests_total";
/// `switchboard_ingest_http_signature_failures_total{channel, reason}`.
pub const SIGNATURE_FAILURES: &str = "switchboard_ingest_http_signature_failures_total";

/// Describes the listener's metrics (called by `crate::metrics::describe`).
pub fn describe() {
    describe_counter!(
        "switchboard_ingest_http_requests_total",
        "HTTP requests to the webhook listener, by channel (unknown: no such channel in the path) and answered status (other: any status not listed)."
    );
    describe_counter!(
        "switchboard_ingest_http_signature_failures_total",
        "HTTP webhooks refused with 401 because their signature (Meta, Twilio) or web chat key was missing (reason=missing) or wrong (reason=invalid); nothing was published."
    );
}

/// The `channel` label values: the known channels in order, then `unknown`.
const CHANNELS: [Channel; 5] = Channel::KNOWN;
const UNKNOWN: &str = "unknown";

/// The `status` label values the listener answers; any other is `other`.
const STATUSES: [StatusCode; 10] = [
    StatusCode::OK,
    StatusCode::BAD_REQUEST,
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::SERVICE_UNAVAILABLE,
];
const OTHER: &str = "other";

/// Why a signature check failed: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFailure {
    /// No signature (or key) was presented.
    Missing,
    /// The signature (or key) does not match.
    Invalid,
}

impl SignatureFailure {
    const ALL: [Self; 2] = [Self::Missing, Self::Invalid];

    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
        }
    }
}

/// The listener's counter handles.
pub struct HttpMetrics {
    /// `(CHANNELS.len() + 1) * (STATUSES.len() + 1)` request counters.
    requests: Vec<Counter>,
    /// `CHANNELS.len() * SignatureFailure::ALL.len()` failure counters.
    signature_failures: Vec<Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    /// Takes every handle.
    pub fn new() -> Self {
        let channels = CHANNELS.iter().map(|c| c.slug()).chain([UNKNOWN]);
        let mut requests = Vec::new();
        for channel in channels {
            let statuses = STATUSES.iter().map(|s| s.as_str()).chain([OTHER]);
            for status in statuses {
                requests
                    .push(metrics::counter!(REQUESTS, "channel" => channel, "status" => status));
            }
        }
        let mut signature_failures = Vec::new();
        for channel in CHANNELS {
            for reason in SignatureFailure::ALL {
                signature_failures.push(metrics::counter!(
                    SIGNATURE_FAILURES,
                    "channel" => channel.slug(),
                    "reason" => reason.label()
                ));
            }
        }
        Self {
            requests,
            signature_failures,
        }
    }

    /// Counts a request on `channel` (`None`: not a known channel) answered `status`.
    pub fn request(&self, channel: Option<Channel>, status: StatusCode) {
        let channel = channel
            .and_then(|c| CHANNELS.iter().position(|&k| k == c))
            .unwrap_or(CHANNELS.len());
        let status = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.requests[channel * (STATUSES.len() + 1) + status].increment(1);
    }

    /// Counts a signature failure on `channel`.
    pub fn signature_failure(&self, channel: Channel, reason: SignatureFailure) {
        let Some(channel) = CHANNELS.iter().position(|&k| k == channel) else {
            return;
        };
        let reason = reason as usize;
        self.signature_failures[channel * SignatureFailure::ALL.len() + reason].increment(1);
    }
}
