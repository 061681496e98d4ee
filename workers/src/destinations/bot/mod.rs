//! Bot destinations: a gRPC `switchboard.v1.Bot` service or an HTTP JSON
//! webhook, each behind its own timeout and circuit breaker.
//!
//! - `config`: a bot's protocol, endpoint, timeout and circuit settings.
//! - `grpc`, `http`: the two clients; the set is closed, so an enum picks.
//! - `breaker`: stops calling a bot that keeps failing, for a while.
//! - [`echo`]: the built-in demo bot, which echoes text back.

mod breaker;
mod config;
pub mod echo;
mod grpc;
mod http;

use switchboard_proto::v1::{BotRequest, BotResponse};
use switchboard_runtime::trace::TraceParent;

pub use config::{BotConfig, BotProtocol};

use crate::destinations::DestinationError;

/// A failed call, and whether it says the bot is unwell (worth a retry).
#[derive(Debug)]
pub struct CallError {
    message: String,
    retryable: bool,
}

enum Client {
    Grpc(grpc::GrpcBot),
    Http(http::HttpBot),
}

/// One configured bot.
pub struct BotDestination {
    name: String,
    client: Client,
    breaker: breaker::Breaker,
}

impl BotDestination {
    /// A client for the bot `name`.
    pub fn new(name: &str, config: &BotConfig) -> anyhow::Result<Self> {
        let client = match config.protocol {
            BotProtocol::Grpc => {
                grpc::GrpcBot::new(&config.endpoint, config.timeout).map(Client::Grpc)
            }
            BotProtocol::Http => {
                http::HttpBot::new(&config.endpoint, config.timeout, config.max_response_bytes)
                    .map(Client::Http)
            }
        }
        .map_err(|e| anyhow::anyhow!("bot {name:?}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            client,
            breaker: breaker::Breaker::new(
                format!("bot:{name}"),
                config.circuit_failures,
                config.circuit_open_for,
            ),
        })
    }

    /// Delivers one message, unless the bot's circuit is open.
    pub async fn handle(
        &self,
        request: BotRequest,
        trace: &TraceParent,
    ) -> Result<BotResponse, DestinationError> {
        // Dropped with this future (its partition revoked), a trial call
        // counts as failed, so the circuit cannot stay half-open.
        let Some(call) = self.breaker.permit() else {
            return Err(DestinationError {
                kind: "bot",
                name: self.name.clone(),
                message: "circuit open: the bot kept failing; not calling it for now".into(),
                retryable: true,
            });
        };
        let result = match &self.client {
            Client::Grpc(bot) => bot.call(request, trace).await,
            Client::Http(bot) => bot.call(&request, trace).await,
        };
        call.record(!matches!(&result, Err(e) if e.retryable));
        result.map_err(|e| DestinationError {
            kind: "bot",
            name: self.name.clone(),
            message: e.message,
            retryable: e.retryable,
        })
    }
}
