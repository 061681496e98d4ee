//! The listener's accept loop: HTTP/1.1 by hyper, every bound in place.
//!
//! `axum::serve` takes no settings, so connections are served with hyper
//! directly: at most `max_connections` open at once (more wait in the
//! listen backlog), `header_read_timeout` to send headers, then the tower
//! stack below around the routes. On the shutdown signal the listener
//! closes, idle connections are closed, and requests in flight get the
//! grace period to finish.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    BoxError,
    error_handling::HandleErrorLayer,
    response::{IntoResponse as _, Response},
};
use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{Service, ServiceBuilder};

use switchboard_runtime::shutdown::Shutdown;

use super::{
    config::HttpConfig,
    response,
    routes::{self, AppState},
};

/// The routes inside their bounds: every answer counted, at most
/// `max_concurrent_requests` served at once (more get 503 at once), each
/// within `request_timeout` (else 503).
fn service(
    state: AppState,
    config: &HttpConfig,
) -> impl Service<
    http::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let metrics = state.metrics.clone();
    let timeout = config.request_timeout;
    let limit = config.max_concurrent_requests;
    ServiceBuilder::new()
        .map_request(|request: http::Request<Incoming>| request.map(axum::body::Body::new))
        .layer(axum::middleware::from_fn_with_state(metrics, routes::count))
        .layer(HandleErrorLayer::new(move |error: BoxError| async move {
            unavailable(&error, timeout, limit)
        }))
        .load_shed()
        .concurrency_limit(limit)
        .timeout(timeout)
        .service(routes::router(state))
}

/// The answer when the bounds refuse a request: 503 and `Retry-After`,
/// which providers meet by redelivering.
fn unavailable(error: &BoxError, timeout: Duration, limit: usize) -> Response {
    let message = if error.is::<tower::timeout::error::Elapsed>() {
        format!(
            "not answered within {timeout:?} (http.request_timeout); it may still be published: redeliver it"
        )
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        format!("the node is serving {limit} requests already (http.max_concurrent_requests)")
    } else {
        format!("the request failed: {error}")
    };
    let mut answer = response::refused(StatusCode::SERVICE_UNAVAILABLE, &message, Vec::new());
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer.into_response()
}

/// Serves `listener` until `stop` fires, then lets requests in flight
/// finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    config: HttpConfig,
    stop: Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    let service = service(state, &config);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            slot = connections.clone().acquire_owned() => slot?,
        };
        let stream = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: wait a moment rather than spin.
                    tracing::warn!(error = %e, "HTTP listener could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = http1.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "HTTP webhook requests did not finish in time");
    }
    Ok(())
}
