//! The per-connection call limit, with load shedding that is counted.
//!
//! At most `max_calls_per_connection` calls are served at once on one
//! client connection; past that a call is refused at once with
//! `RESOURCE_EXHAUSTED`, before its request is read, and counted in
//! `switchboard_ingest_calls_shed_total`.
//!
//! tonic has this built in (`Server::concurrency_limit_per_connection` with
//! `load_shed`), but it builds that stack per connection *around* the
//! layers given to `Server::builder().layer(...)`, so no layer of ours sees
//! the calls it refuses, and they showed in no metric. This layer does the
//! same job itself, where it can count: a call holds a slot of its
//! connection (identified by the local and peer addresses tonic attaches
//! to every request) until its response starts, as with tower's
//! `ConcurrencyLimit`; a call that finds none is answered here and counted.
//! Memory is bounded by the calls in flight: a connection with none left
//! has no entry.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::{FutureExt as _, future::BoxFuture};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// `switchboard_ingest_calls_shed_total`: calls refused past `max_calls_per_connection`.
pub const CALLS_SHED: &str = "switchboard_ingest_calls_shed_total";

/// What identifies a client connection: its local and peer addresses.
type Connection = (Option<SocketAddr>, Option<SocketAddr>);

/// Calls in flight per connection, shared by every clone of the layer's service.
struct Calls {
    limit: usize,
    in_flight: Mutex<HashMap<Connection, usize>>,
    shed: metrics::Counter,
}

impl Calls {
    /// Takes a slot of `connection`, or `None` at the limit.
    fn enter(self: &Arc<Self>, connection: Connection) -> Option<Slot> {
        let mut in_flight = self.in_flight.lock().expect("calls lock");
        let calls = in_flight.entry(connection).or_default();
        if *calls >= self.limit {
            return None;
        }
        *calls += 1;
        Some(Slot {
            calls: self.clone(),
            connection,
        })
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

/// Limits the calls served at once per client connection to `limit`,
/// refusing (and counting) the others.
#[derive(Clone)]
pub struct CallLimitLayer {
    calls: Arc<Calls>,
}

impl CallLimitLayer {
    /// A limit of `limit` calls per connection (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            calls: Arc::new(Calls {
                limit: limit.max(1),
                in_flight: Mutex::default(),
                shed: metrics::counter!(CALLS_SHED),
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

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> CallLimit<S> {
        CallLimit {
            inner,
            calls: self.calls.clone(),
        }
    }
}

/// The service of [`CallLimitLayer`].
#[derive(Clone)]
pub struct CallLimit<S> {
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

impl<S, B> tower::Service<http::Request<B>> for CallLimit<S>
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
        match self.calls.enter(connection_of(&request)) {
            Some(slot) => self
                .inner
                .call(request)
                .map(move |response| {
                    drop(slot);
                    response
                })
                .boxed(),
            None => {
                self.calls.shed.increment(1);
                let refused = tonic::Status::resource_exhausted(format!(
                    "too many calls at once on this connection (max_calls_per_connection = {})",
                    self.calls.limit
                ));
                futures::future::ready(Ok(refused.into_http())).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

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

    #[tokio::test]
    async fn calls_past_the_limit_of_their_connection_are_refused() {
        let layer = CallLimitLayer::new(2);
        let (release, released) = tokio::sync::watch::channel(false);
        let service = layer.layer(tower::service_fn(move |_: http::Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
            }
        }));
        let one = request();
        let connection = connection_of(&one);
        let same = || {
            let mut r = http::Request::new(());
            r.extensions_mut()
                .insert(one.extensions().get::<TcpConnectInfo>().unwrap().clone());
            r
        };
        let first = tokio::spawn(service.clone().oneshot(same()));
        let second = tokio::spawn(service.clone().oneshot(same()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(layer.in_flight(), 2);

        // The third on the same connection is refused at once.
        let refused = service.clone().oneshot(same()).await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("max_calls_per_connection"));

        // Another connection has its own slots.
        let other = request();
        assert_ne!(connection_of(&other), connection);
        let third = tokio::spawn(service.clone().oneshot(other));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(layer.in_flight(), 3);

        // Answered calls give their slots back; nothing is left behind.
        release.send(true).unwrap();
        for call in [first, second, third] {
            let response = call.await.unwrap().unwrap();
            assert!(tonic::Status::from_header_map(response.headers()).is_none());
        }
        assert_eq!(layer.in_flight(), 0);
        assert!(layer.calls.in_flight.lock().unwrap().is_empty());
    }
}
