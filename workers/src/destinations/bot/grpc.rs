//! Bots reached over gRPC (`switchboard.v1.Bot`).

use std::time::Duration;

use switchboard_proto::v1::{BotRequest, BotResponse, bot_client::BotClient};
use switchboard_runtime::trace::{TRACEPARENT, TraceParent};
use tonic::{Code, transport::Channel};

use super::CallError;

/// A gRPC bot client. Connects lazily and reconnects by itself.
#[derive(Clone)]
pub struct GrpcBot {
    client: BotClient<Channel>,
    timeout: Duration,
}

impl GrpcBot {
    /// A client for the bot at `endpoint`.
    pub fn new(endpoint: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("bad endpoint {endpoint:?}: {e}"))?
            .connect_timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: BotClient::new(channel),
            timeout,
        })
    }

    /// One call, waiting at most the timeout.
    pub async fn call(
        &self,
        request: BotRequest,
        trace: &TraceParent,
    ) -> Result<BotResponse, CallError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        if let Ok(value) = trace.to_string().parse() {
            request.metadata_mut().insert(TRACEPARENT, value);
        }
        let mut client = self.client.clone();
        let status = match tokio::time::timeout(self.timeout, client.handle(request)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("bot call timed out"),
        };
        Err(CallError {
            message: format!("{}: {}", status.code(), status.message()),
            retryable: matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
            ),
        })
    }
}
