//! Calls per client connection: bounded by HTTP/2, and counted when a
//! connection fills.
//!
//! The node advertises `SETTINGS_MAX_CONCURRENT_STREAMS` =
//! `max_calls_per_connection` ([`crate::server`]). A client waits for a free
//! stream of its connection before it sends a call (every gRPC library
//! honours the setting), so the node never reads, holds or answers a call
//! past the bound, and the wait ends by the caller's own deadline; h2
//! refuses a stream opened over the bound (`REFUSED_STREAM`, which clients
//! retry: nothing was processed). Until 2026-12-01 the node let clients
//! open twice that many streams and refused the calls past the bound with
//! `RESOURCE_EXHAUSTED`; each refusal cost about 0.6 of a served call (h2
//! had decoded it and encoded its answer), so at twice the sustainable rate
//! the node spent a third of its CPU refusing and acknowledged 0.45× the
//! sustainable rate (1.06× with the streams bounded; benches/README.md).
//!
//! That wait is in the client, out of the node's sight. This layer counts
//! what the node can see: a call that takes its connection's last stream
//! (`switchboard_ingest_connection_full_total`); from then until one of
//! them ends, that client's next calls wait. A call holds its slot until
//! its response body ends, as its HTTP/2 stream does. Memory is bounded by
//! the calls in flight: a connection with none has no entry.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::{FutureExt as _, future::BoxFuture};
use http_body_util::BodyExt as _;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// `switchboard_ingest_connection_full_total`: calls that took their
/// connection's last stream (`max_calls_per_connection`).
pub const CONNECTION_FULL: &str = "switchboard_ingest_connection_full_total";

/// What identifies a client connection: its local and peer addresses.
type Connection = (Option<SocketAddr>, Option<SocketAddr>);

/// Calls in flight per connection, shared by every clone of the layer's service.
struct Calls {
    limit: usize,
    in_flight: Mutex<HashMap<Connection, usize>>,
    full: metrics::Counter,
}

impl Calls {
    /// Takes a slot of `connection`, counting the call that fills it.
    fn enter(self: &Arc<Self>, connection: Connection) -> Slot {
        let mut in_flight = self.in_flight.lock().expect("calls lock");
        let calls = in_flight.entry(connection).or_default();
        *calls += 1;
        if *calls >= self.limit {
            self.full.increment(1);
        }
        Slot {
            calls: self.clone(),
            connection,
        }
    }
}

/// A call's slot on its connection, given back when dropped.
struct Slot {
    calls: Arc<Calls>,
    connection: Connection,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.calls.in_flight.lock().expect("calls lock");
        if let Some(calls) = in_flight.get_mut(&self.connection) {
            *calls -= 1;
            if *calls == 0 {
                in_flight.remove(&self.connection);
            }
        }
    }
}

/// Counts the calls in flight per client connection, and those that fill
/// their connection's `limit` streams.
#[derive(Clone)]
pub struct ConnectionCallsLayer {
    calls: Arc<Calls>,
}

impl ConnectionCallsLayer {
    /// Connections of `limit` streams (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            calls: Arc::new(Calls {
                limit: limit.max(1),
                in_flight: Mutex::default(),
                full: metrics::counter!(CONNECTION_FULL),
            }),
        }
    }

    /// Calls in flight right now, over every connection.
    pub fn in_flight(&self) -> usize {
        self.calls
            .in_flight
            .lock()
            .expect("calls lock")
            .values()
            .sum()
    }
}

impl<S> tower::Layer<S> for ConnectionCallsLayer {
    type Service = ConnectionCalls<S>;

    fn layer(&self, inner: S) -> ConnectionCalls<S> {
        ConnectionCalls {
            inner,
            calls: self.calls.clone(),
        }
    }
}

/// The service of [`ConnectionCallsLayer`].
#[derive(Clone)]
pub struct ConnectionCalls<S> {
    inner: S,
    calls: Arc<Calls>,
}

/// The connection a request came on, from what tonic attaches to it.
fn connection_of<B>(request: &http::Request<B>) -> Connection {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .map_or((None, None), |tcp| (tcp.local_addr(), tcp.remote_addr()))
}

impl<S, B> tower::Service<http::Request<B>> for ConnectionCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let slot = self.calls.enter(connection_of(&request));
        self.inner
            .call(request)
            .map(move |response| {
                // The slot goes with the body, given back when the
                // response's stream ends (or the call fails first).
                response.map(|response| {
                    response.map(|body| {
                        tonic::body::Body::new(body.map_frame(move |frame| {
                            let _held = &slot;
                            frame
                        }))
                    })
                })
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    /// A request on a new TCP connection, with what tonic attaches to it.
    fn request() -> http::Request<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        let mut request = http::Request::new(());
        request
            .extensions_mut()
            .insert(tonic::transport::server::Connected::connect_info(&stream));
        request
    }

    /// A response whose body streams until `end` is sent.
    fn streaming(end: &tokio::sync::watch::Receiver<bool>) -> http::Response<tonic::body::Body> {
        let mut end = end.clone();
        let frames = futures::stream::once(async move {
            let _ = end.wait_for(|e| *e).await;
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"done")))
        });
        http::Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
    }

    #[tokio::test]
    async fn calls_hold_their_connection_until_their_body_ends_and_filling_it_is_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let layer = metrics::with_local_recorder(&recorder, || ConnectionCallsLayer::new(2));
        let (end, ended) = tokio::sync::watch::channel(false);
        let service = layer.layer(tower::service_fn(move |_: http::Request<()>| {
            let response = streaming(&ended);
            async move { Ok::<_, Infallible>(response) }
        }));
        let full = || {
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{CONNECTION_FULL} ")))
                .map_or(0, |v| v.parse::<u64>().unwrap())
        };
        let one = request();
        let same = || {
            let mut r = http::Request::new(());
            r.extensions_mut()
                .insert(one.extensions().get::<TcpConnectInfo>().unwrap().clone());
            r
        };

        // Answered, but their bodies still stream: both slots stay taken,
        // and the second call filled the connection.
        let first = service.clone().oneshot(same()).await.unwrap();
        assert_eq!((layer.in_flight(), full()), (1, 0));
        let second = service.clone().oneshot(same()).await.unwrap();
        assert_eq!((layer.in_flight(), full()), (2, 1));

        // Another connection has slots of its own.
        let other = request();
        assert_ne!(connection_of(&other), connection_of(&one));
        let third = service.clone().oneshot(other).await.unwrap();
        assert_eq!((layer.in_flight(), full()), (3, 1));

        // A body read to its end, or dropped, gives its slot back; nothing
        // is left behind.
        end.send(true).unwrap();
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
        assert_eq!(layer.in_flight(), 2);
        drop((second, third));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(layer.in_flight(), 0);
        assert!(layer.calls.in_flight.lock().unwrap().is_empty());
    }
}
