//! Bot destinations: gRPC `switchboard.v1.Bot` services.
//!
//! - `config`: a bot's endpoint and timeout.
//! - `service`: the client that delivers a message to a bot.
//! - [`echo`]: the built-in demo bot, which echoes text back.

mod config;
pub mod echo;
mod service;

pub use config::BotConfig;
pub use service::BotDestination;
