//! Typed ingestion errors, sorted into retryable and fatal, and mapped to
//! precise gRPC status codes.

use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};
use switchboard_proto::v1::ErrorDetail;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field of a request, named by its path (e.g. `envelope.tenant_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The request is malformed. Fatal: retrying the same request fails again.
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The node is at its in-flight bound. Retryable, after backing off.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// Kafka did not take the message in time. Retryable.
    #[error("kafka unavailable: {0}")]
    Unavailable(KafkaError),
    /// Kafka refused the message for good (e.g. it is too large for the topic).
    #[error("kafka rejected the message: {0}")]
    Rejected(KafkaError),
    /// The node is shutting down. Retryable, against another node.
    #[error("shutting down")]
    ShuttingDown,
    /// No valid API key was presented.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The API key may not publish this data.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An envelope of a `PublishBatch` that was not published because an
    /// earlier envelope of the same conversation in the batch failed:
    /// publishing it would leave a gap in the conversation. Retryable,
    /// together with the earlier one.
    #[error("not published: {earlier} of the same conversation failed earlier in the batch")]
    Aborted {
        /// The path of the earlier envelope that failed (e.g. `envelopes[1]`).
        earlier: String,
    },
    /// The tenant is over its rate limit. Retryable after `retry_after`.
    #[error("tenant {tenant:?} is over its rate limit; retry in {retry_after:?}")]
    RateLimited {
        /// The tenant.
        tenant: String,
        /// When a retry can succeed.
        retry_after: std::time::Duration,
    },
}

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl IngestError {
    /// A single field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// Sorts a Kafka produce error into retryable or fatal.
    pub fn from_kafka(error: KafkaError) -> Self {
        match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord,
            ) => Self::Rejected(error),
            Some(RDKafkaErrorCode::QueueFull) => Self::Overloaded("producer queue is full"),
            _ => Self::Unavailable(error),
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Overloaded(_) | Self::Unavailable(_) | Self::ShuttingDown | Self::Aborted { .. }
        )
    }

    /// The gRPC status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Overloaded(_) | Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unavailable(_) | Self::ShuttingDown => Code::Unavailable,
            Self::Rejected(_) => Code::FailedPrecondition,
            Self::Aborted { .. } => Code::Aborted,
        }
    }

    /// The HTTP status for this error, as the HTTP webhook listener answers
    /// it: what channel providers understand. Retryable errors are 503 (the
    /// provider redelivers later), a tenant over its limit is 429, refused
    /// input is 400, and Kafka refusing a message for good is 500 (an
    /// operator must act; the provider keeps retrying meanwhile).
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded(_)
            | Self::Unavailable(_)
            | Self::ShuttingDown
            | Self::Aborted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rejected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When a retry may succeed, for HTTP's `Retry-After`: the rate limit's
    /// own wait, or a second for the other retryable errors.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ if self.is_retryable() => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The in-band form used by `PublishStream` and `PublishBatch` responses.
    pub fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code() as i32,
            message: self.to_string(),
            fields: match self {
                Self::InvalidArgument(v) => v.iter().map(|v| v.field.clone()).collect(),
                Self::Aborted { earlier } => vec![earlier.clone()],
                _ => Vec::new(),
            },
        }
    }
}

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Self {
        let code = error.code();
        let message = error.to_string();
        match error {
            IngestError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(code, message, details)
            }
            IngestError::RateLimited { retry_after, .. } => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            _ => Status::new(code, message),
        }
    }
}

/// Requests over the node's size limit.
pub mod limits {
    use tonic::Status;
    use tonic_types::{ErrorDetails, StatusExt};

    /// The status for a request larger than `limit` bytes.
    pub fn too_large(limit: usize) -> Status {
        let mut details = ErrorDetails::new();
        let description = format!(
            "the request is larger than the node's {limit} byte limit \
             (max_envelope_bytes, webhook_limits.max_body_bytes or max_batch_bytes, plus framing)"
        );
        details.add_bad_request_violation("request", description.clone());
        Status::with_error_details(tonic::Code::InvalidArgument, description, details)
    }

    /// tonic refuses a request over its decode limit with a bare
    /// `OUT_OF_RANGE` before any handler runs; the node's handlers never
    /// answer `OUT_OF_RANGE`, so such an answer is that refusal, and is
    /// rewritten to `INVALID_ARGUMENT` naming the limit.
    pub fn too_large_is_invalid<B>(
        mut response: http::Response<B>,
        limit: usize,
    ) -> http::Response<B> {
        let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
        if response
            .headers()
            .get("grpc-status")
            .is_some_and(|code| code.as_bytes() == out_of_range.as_bytes())
        {
            let (parts, _) = too_large(limit).into_http::<()>().into_parts();
            for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                if let Some(value) = parts.headers.get(name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_field_paths() {
        let status: Status = IngestError::InvalidArgument(vec![
            FieldViolation::new("envelope.tenant_id", "is required"),
            FieldViolation::new("envelope.content", "is required"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["envelope.tenant_id", "envelope.content"]);
    }

    /// Providers redeliver on any non-2xx: only what can succeed later says when.
    #[test]
    fn http_statuses_follow_the_codes() {
        use http::StatusCode;
        let unavailable = IngestError::from_kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        let limited = IngestError::RateLimited {
            tenant: "acme".into(),
            retry_after: std::time::Duration::from_millis(1500),
        };
        let cases = [
            (
                IngestError::invalid("payload", "bad"),
                StatusCode::BAD_REQUEST,
                None,
            ),
            (
                IngestError::Unauthenticated("no"),
                StatusCode::UNAUTHORIZED,
                None,
            ),
            (
                IngestError::PermissionDenied("no".into()),
                StatusCode::FORBIDDEN,
                None,
            ),
            (limited, StatusCode::TOO_MANY_REQUESTS, Some(1500)),
            (unavailable, StatusCode::SERVICE_UNAVAILABLE, Some(1000)),
            (
                IngestError::Overloaded("full"),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1000),
            ),
            (
                IngestError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1000),
            ),
            (
                IngestError::Rejected(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                )),
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        ];
        for (error, status, retry_ms) in cases {
            assert_eq!(error.http_status(), status, "{error}");
            assert_eq!(
                error.retry_after().map(|d| d.as_millis() as u64),
                retry_ms,
                "{error}"
            );
        }
    }

    #[test]
    fn kafka_errors_are_sorted() {
        let full =
            IngestError::from_kafka(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.is_retryable());
        let timeout = IngestError::from_kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert_eq!(timeout.code(), Code::Unavailable);
        assert!(timeout.is_retryable());
        let big = IngestError::from_kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert_eq!(big.code(), Code::FailedPrecondition);
        assert!(!big.is_retryable());
    }
}
