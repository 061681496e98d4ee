//! The fault scenarios' bot: answers every message with one reply that
//! names the message it answers (so the reconciler finds replies on the
//! outbound topics), counts what it answered per second, keeps when each
//! message came (each worker has bots of its own, so this says which
//! worker routed what, and when), and can be told to fail every call for a
//! while.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use switchboard_proto::v1::{
    BotRequest, BotResponse, Envelope, Text,
    bot_server::{Bot, BotServer},
    envelope::Content,
};
use tokio_util::sync::CancellationToken;

use crate::reconcile::records::IN_REPLY_TO;

/// A running bot.
#[derive(Clone)]
pub struct FaultBot {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    failing: AtomicBool,
    /// Calls answered with a reply, per second since `started`.
    answered: Mutex<Vec<u64>>,
    /// Every call: seconds since `started`, and the message's channel
    /// message id. A scenario's run is bounded, and so is this.
    calls: Mutex<Vec<(f64, String)>>,
}

impl FaultBot {
    /// Serves a bot on a free 127.0.0.1 port until `stop`, its clock
    /// starting at `started`; returns it and its endpoint (`http://…`).
    pub async fn serve(
        started: Instant,
        stop: CancellationToken,
    ) -> anyhow::Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let bot = Self {
            inner: Arc::new(Inner {
                started,
                failing: AtomicBool::new(false),
                answered: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
            }),
        };
        let server = tonic::transport::Server::builder()
            .add_service(BotServer::new(bot.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "fault bot stopped");
            }
        });
        Ok((bot, endpoint))
    }

    /// Fails every call (UNAVAILABLE) while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::Relaxed);
    }

    /// Calls answered per second, seconds `from..to` since the bot started.
    pub fn rate(&self, from: f64, to: f64) -> f64 {
        let answered = self.inner.answered.lock().expect("bot lock");
        let (a, b) = (from.max(0.0) as usize, to.max(0.0) as usize);
        let sum: u64 = answered.iter().skip(a).take(b.saturating_sub(a)).sum();
        sum as f64 / (b.saturating_sub(a)).max(1) as f64
    }

    /// Every call so far: seconds since the clock started, and the
    /// message's channel message id.
    pub fn calls(&self) -> Vec<(f64, String)> {
        self.inner.calls.lock().expect("bot lock").clone()
    }
}

#[tonic::async_trait]
impl Bot for FaultBot {
    async fn handle(
        &self,
        request: tonic::Request<BotRequest>,
    ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| tonic::Status::invalid_argument("no envelope"))?;
        self.inner.calls.lock().expect("bot lock").push((
            self.inner.started.elapsed().as_secs_f64(),
            envelope.channel_message_id.clone(),
        ));
        if self.inner.failing.load(Ordering::Relaxed) {
            return Err(tonic::Status::unavailable("bot outage (fault scenario)"));
        }
        let second = self.inner.started.elapsed().as_secs() as usize;
        {
            let mut answered = self.inner.answered.lock().expect("bot lock");
            if answered.len() <= second {
                answered.resize(second + 1, 0);
            }
            answered[second] += 1;
        }
        let reply = Envelope {
            attributes: [(IN_REPLY_TO.to_owned(), envelope.channel_message_id)].into(),
            content: Some(Content::Text(Text {
                body: "Thanks, we are on it.".into(),
            })),
            ..Default::default()
        };
        Ok(tonic::Response::new(BotResponse {
            replies: vec![reply],
            ..Default::default()
        }))
    }
}
