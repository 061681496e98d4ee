use std::time::Duration;

use switchboard_proto::v1::{BotRequest, BotResponse, bot_client::BotClient};
use tonic::{Code, transport::Channel};

use switchboard_broker::trace::{TRACEPARENT, TraceParent};

use super::BotConfig;
use crate::destinations::DestinationError;

/// A bot, reached over gRPC. Cheap to clone; connects lazily and reconnects
/// by itself.
#[derive(Clone)]
pub struct BotDestination {
    name: String,
    client: BotClient<Channel>,
    timeout: Duration,
}

impl BotDestination {
    /// A client for the bot `name`.
    pub fn new(name: &str, config: &BotConfig) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| anyhow::anyhow!("bot {name:?}: bad endpoint {:?}: {e}", config.endpoint))?
            .connect_timeout(config.timeout)
            .connect_lazy();
        Ok(Self {
            name: name.to_owned(),
            client: BotClient::new(channel),
            timeout: config.timeout,
        })
    }

    /// The bot's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers one message, waiting at most the configured timeout.
    pub async fn handle(
        &self,
        request: BotRequest,
        trace: &TraceParent,
    ) -> Result<BotResponse, DestinationError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        if let Ok(value) = trace.to_string().parse() {
            request.metadata_mut().insert(TRACEPARENT, value);
        }
        let mut client = self.client.clone();
        let result = tokio::time::timeout(self.timeout, client.handle(request)).await;
        let status = match result {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("bot call timed out"),
        };
        Err(DestinationError {
            kind: "bot",
            name: self.name.clone(),
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
