//! The ingestion node's servers (gRPC, and the HTTP webhook listener) and
//! their lifecycle, under one shutdown signal.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use switchboard_proto::v1::{broadcasts_server::BroadcastsServer, ingest_server::IngestServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use switchboard_runtime::shutdown::Shutdown;

use crate::{
    auth::Auth,
    broadcasts::{service::BroadcastsService, view::BroadcastView},
    calls::ConnectionCallsLayer,
    config::BrokerConfig,
    dedupe::Dedupe,
    error::limits,
    http::{metrics::HttpMetrics, routes::AppState},
    publisher::{KafkaState, Publisher},
    service::IngestService,
};

/// A bound, not yet serving, ingestion node.
pub struct Broker {
    config: BrokerConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    publisher: Arc<Publisher>,
    auth: Arc<Auth>,
}

impl Broker {
    /// Binds the gRPC address and the HTTP webhook address, if any (port
    /// 0 picks a free port), and creates the producer.
    pub async fn bind(config: BrokerConfig) -> anyhow::Result<Self> {
        let listen = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        };
        let listener = listen(config.grpc_addr).await?;
        let http_listener = match config.http_addr {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        let publisher = Arc::new(Publisher::new(config.publisher())?);
        let auth = Arc::new(Auth::new(config.auth_file.as_deref())?);
        if config.auth_file.is_none() {
            tracing::warn!(
                "no auth_file: gRPC authentication and rate limits are OFF, any caller may publish for any tenant; \
                 HTTP webhooks are all refused (no tenant has webhook secrets)"
            );
        } else if !auth.enabled() {
            tracing::warn!(
                "api_keys_required = false: gRPC calls without an API key are admitted for any tenant, without limits"
            );
        }
        Ok(Self {
            config,
            listener,
            http_listener,
            publisher,
            auth,
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The address the HTTP webhook listener listens on, if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// Serves until `shutdown` fires, then lets in-flight calls finish within
    /// the grace period and flushes the producer.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            http_listener,
            publisher,
            auth,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        // Both reflection versions: grpcurl and older clients still ask v1alpha.
        // google.rpc is registered so clients can decode error details; only
        // the services this port serves are listed.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("switchboard.v1.Ingest")
                .with_service_name("switchboard.v1.Broadcasts")
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        auth.spawn_reloader(config.auth_reload_interval, shutdown.clone());
        let service = IngestService::new(
            publisher.clone(),
            auth.clone(),
            Arc::new(Dedupe::new(config.dedupe.clone())),
            config.service(),
        );
        let view = BroadcastView::new(config.broadcasts.max_tracked);
        tokio::spawn(view.clone().follow(
            config.kafka.clone(),
            config.broadcasts.clone(),
            shutdown.clone(),
        ));
        let broadcasts = BroadcastsService::new(
            config.kafka.producer_config(&[]).create()?,
            auth.clone(),
            view,
            config.broadcasts.clone(),
            config.ack_timeout,
        );
        // The HTTP webhook listener publishes through the same service.
        let http = http_listener.map(|listener| {
            let state = AppState {
                service: service.clone(),
                auth,
                public_base_url: config.http.public_base_url.as_deref().map(Arc::from),
                metrics: Arc::new(HttpMetrics::new()),
                max_body_bytes: config.webhook_limits.max_body_bytes,
            };
            (listener, state)
        });
        let gauge_publisher = publisher.clone();
        let gauge_stop = shutdown.clone();
        tokio::spawn(async move {
            let gauge = metrics::gauge!("switchboard_ingest_in_flight");
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while tokio::select! { _ = tick.tick() => true, _ = gauge_stop.cancelled() => false } {
                gauge.set(gauge_publisher.in_flight() as f64);
            }
        });

        tokio::spawn(
            publisher
                .clone()
                .watch_recovery(Duration::from_millis(500), shutdown.clone()),
        );

        let addr = listener.local_addr()?;
        tracing::info!(%addr, topic = %config.messages_topic, "ingestion node serving gRPC");
        let stopping = shutdown.clone();
        // HTTP/2 bounds the calls of a connection: past the bound, clients
        // wait for a stream instead of sending calls to refuse (`calls`).
        let calls = config.max_calls_per_connection;
        let max_request_bytes = config.max_request_bytes();
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(u32::try_from(calls).unwrap_or(u32::MAX));
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(server_tls(tls)?)?;
        }
        // Health follows Kafka: NOT_SERVING while publishes cannot reach it.
        tokio::spawn(follow_kafka(
            publisher.health().subscribe(),
            health.clone(),
            shutdown.clone(),
        ));
        let server = builder
            .layer(ConnectionCallsLayer::new(calls))
            .layer(tower::util::MapResponseLayer::new(
                move |response: http::Response<tonic::body::Body>| {
                    limits::too_large_is_invalid(response, max_request_bytes)
                },
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(IngestServer::new(service).max_decoding_message_size(max_request_bytes))
            .add_service(
                BroadcastsServer::new(broadcasts).max_decoding_message_size(max_request_bytes),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stopping.cancelled().await;
                health
                    .set_not_serving::<IngestServer<IngestService>>()
                    .await;
            });
        let server = tokio::spawn(server);
        let http_server = http.map(|(listener, state)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "ingestion node serving HTTP webhooks at /webhooks/{{tenant}}/{{channel}}");
            }
            tokio::spawn(crate::http::server::serve(
                listener,
                state,
                config.http.clone(),
                shutdown.clone(),
                config.shutdown_grace,
            ))
        });
        shutdown.cancelled().await;
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls did not finish in time")
            }
        }
        // It drains alongside the gRPC server, within its own grace period.
        if let Some(http_server) = http_server {
            http_server.await??;
        }
        let grace = config.shutdown_grace;
        tokio::task::spawn_blocking(move || publisher.flush(grace)).await?;
        tracing::info!("ingestion node stopped");
        Ok(())
    }
}

/// Sets the Ingest service's health from Kafka's state until `stop` fires,
/// so load balancers move traffic away from a node that cannot publish.
async fn follow_kafka(
    mut kafka: tokio::sync::watch::Receiver<KafkaState>,
    health: tonic_health::server::HealthReporter,
    stop: Shutdown,
) {
    loop {
        let state = *kafka.borrow_and_update();
        if state == KafkaState::Up {
            health.set_serving::<IngestServer<IngestService>>().await;
        } else {
            health
                .set_not_serving::<IngestServer<IngestService>>()
                .await;
        }
        tokio::select! {
            changed = kafka.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// The listener's TLS settings, read from the configured PEM files.
fn server_tls(tls: &crate::config::TlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read TLS file {}: {e}", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    ));
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}
