//! Bot destinations: a gRPC `switchboard.v1.Bot` service or an HTTP JSON
//! webhook, each behind its own timeout and circuit breaker.
//!
//! - `config`: a bot's protocol, endpoint, timeout and circuit settings.
//! - `grpc`, `http`: the two clients; the set is closed, so an enum picks.
//! - `breaker`: stops calling a bot that keeps failing, for a while.
//!
//! A call runs to its end (answer, error or timeout) on a task of its own,
//! even when the routing that asked for it is dropped (its partition
//! revoked, the worker shutting down): cancelling it would reset its
//! HTTP/2 stream, and a revoke that resets many at once looks like the
//! rapid-reset attack to the bot's server. Servers built on hyper close the
//! whole connection then (after 20 resets of streams not yet accepted),
//! failing the other partitions' calls on it too and opening the bot's
//! circuit. The answer of a call no one waits for any more is dropped; its
//! outcome still counts for the circuit.
//! - [`echo`]: the built-in demo bot, which echoes text back.

mod breaker;
mod config;
pub mod echo;
mod grpc;
mod http;

use std::{sync::Arc, time::Duration};

use switchboard_proto::v1::{BotRequest, BotResponse};
use switchboard_runtime::trace::TraceParent;
use tracing::Instrument as _;

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

/// How late past its timeout a failed call may end and still count
/// against the bot. A running process's timers fire within milliseconds;
/// a call that ends seconds past its timeout waited on this process, not
/// on the bot: the process was paused (a VM stall, `SIGSTOP`) and every
/// call in flight timed out at once when it resumed.
const PAUSE: Duration = Duration::from_secs(2);

/// Whether a failed call that took `elapsed` says anything about a bot
/// with timeout `timeout`.
fn says_something(elapsed: Duration, timeout: Duration) -> bool {
    elapsed <= timeout + PAUSE
}

/// One configured bot.
pub struct BotDestination {
    name: String,
    /// Shared with the task of each call: one reference count per call.
    client: Arc<Client>,
    timeout: Duration,
    breaker: Arc<breaker::Breaker>,
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
            client: Arc::new(client),
            timeout: config.timeout,
            breaker: Arc::new(breaker::Breaker::new(
                format!("bot:{name}"),
                config.circuit_failures,
                config.circuit_open_for,
            )),
        })
    }

    /// Delivers one message, unless the bot's circuit is open. The call
    /// itself runs on a task of its own (see the module's documentation).
    pub async fn handle(
        &self,
        request: BotRequest,
        trace: &TraceParent,
    ) -> Result<BotResponse, DestinationError> {
        let Some(permit) = self.breaker.permit() else {
            return Err(DestinationError {
                kind: "bot",
                name: self.name.clone(),
                message: "circuit open: the bot kept failing; not calling it for now".into(),
                retryable: true,
            });
        };
        // Asked for now: a pause of this process before the task runs
        // counts as time past the timeout, as it does during the call.
        let started = tokio::time::Instant::now();
        let (client, timeout, trace) = (self.client.clone(), self.timeout, *trace);
        let call = tokio::spawn(
            async move {
                let result = match &*client {
                    Client::Grpc(bot) => bot.call(request, &trace).await,
                    Client::Http(bot) => bot.call(&request, &trace).await,
                };
                match &result {
                    Err(e) if e.retryable && !says_something(started.elapsed(), timeout) => {
                        permit.ended_by_a_pause(started.elapsed());
                    }
                    _ => permit.record(!matches!(&result, Err(e) if e.retryable)),
                }
                result
            }
            .in_current_span(),
        );
        let result = call.await.unwrap_or_else(|e| {
            Err(CallError {
                message: format!("bot call task ended: {e}"),
                retryable: true,
            })
        });
        result.map_err(|e| DestinationError {
            kind: "bot",
            name: self.name.clone(),
            message: e.message,
            retryable: e.retryable,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::poll;

    use super::*;

    /// An HTTP bot that accepts connections and never answers, with a
    /// circuit that opens after one failure.
    async fn silent_bot() -> (BotDestination, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = BotConfig {
            timeout: Duration::from_millis(100),
            circuit_failures: 1,
            ..BotConfig::new(
                BotProtocol::Http,
                format!("http://{}/bot", listener.local_addr().unwrap()),
            )
        };
        (BotDestination::new("silent", &config).unwrap(), listener)
    }

    fn circuit_open(result: &Result<BotResponse, DestinationError>) -> bool {
        matches!(result, Err(e) if e.message.contains("circuit open"))
    }

    /// A paused process, simulated by blocking the runtime's only thread
    /// while a call waits: its timeout fires seconds late, and the bot's
    /// circuit stays closed. The same timeout on time opens it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_timed_out_by_a_pause_leaves_the_circuit_closed() {
        let (bot, _listener) = silent_bot().await;
        let trace = TraceParent::root();
        let mut call = pin!(bot.handle(BotRequest::default(), &trace));
        assert!(poll!(call.as_mut()).is_pending());
        std::thread::sleep(PAUSE + Duration::from_millis(500));
        let paused = call.await;
        assert!(paused.is_err() && !circuit_open(&paused), "{paused:?}");
        let next = bot.handle(BotRequest::default(), &trace).await;
        assert!(!circuit_open(&next), "called again: {next:?}");
        // That one timed out on time: it counts.
        let after = bot.handle(BotRequest::default(), &trace).await;
        assert!(circuit_open(&after), "{after:?}");
    }

    /// A gRPC bot that answers after `delay`, counting the calls it began
    /// and those it finished (a call reset by the client is dropped
    /// unfinished by its server).
    #[derive(Clone, Default)]
    struct CountingBot {
        began: Arc<std::sync::atomic::AtomicUsize>,
        finished: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[tonic::async_trait]
    impl switchboard_proto::v1::bot_server::Bot for CountingBot {
        async fn handle(
            &self,
            _: tonic::Request<BotRequest>,
        ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
            use std::sync::atomic::Ordering::SeqCst;
            self.began.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.finished.fetch_add(1, SeqCst);
            Ok(tonic::Response::new(BotResponse::default()))
        }
    }

    /// Routing dropped mid-call (a revoke) leaves its calls to finish:
    /// none is reset, so the bot's server never sees a burst of resets
    /// (hyper closes the connection after 20), and the circuit hears how
    /// they went.
    #[tokio::test]
    async fn calls_whose_routing_is_dropped_run_to_their_end() {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = CountingBot::default();
        tokio::spawn(echo::serve(
            server.clone(),
            listener,
            std::future::pending::<()>(),
        ));
        let config = BotConfig {
            circuit_failures: 1,
            ..BotConfig::new(BotProtocol::Grpc, endpoint)
        };
        let bot = BotDestination::new("counting", &config).unwrap();
        let trace = TraceParent::root();
        const CALLS: usize = 40;
        let mut calls: Vec<_> = (0..CALLS)
            .map(|_| Box::pin(bot.handle(BotRequest::default(), &trace)))
            .collect();
        for call in &mut calls {
            assert!(poll!(call.as_mut()).is_pending());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while server.began.load(SeqCst) < CALLS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "calls never reached the bot"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(calls);
        while server.finished.load(SeqCst) < CALLS && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            server.finished.load(SeqCst),
            CALLS,
            "every call answered, none reset"
        );
        let next = bot.handle(BotRequest::default(), &trace).await;
        assert!(
            next.is_ok(),
            "the connection and the circuit are fine: {next:?}"
        );
    }

    #[test]
    fn a_call_that_ends_long_past_its_timeout_says_nothing_about_the_bot() {
        let timeout = Duration::from_secs(5);
        assert!(says_something(Duration::from_millis(10), timeout));
        assert!(
            says_something(Duration::from_millis(5_050), timeout),
            "a timeout on time"
        );
        assert!(
            !says_something(Duration::from_secs(25), timeout),
            "frozen for 20 s"
        );
    }
}
