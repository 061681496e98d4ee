//! The ingestion node's gRPC server and its lifecycle.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use switchboard_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    config::BrokerConfig, publisher::Publisher, service::IngestService, shutdown::Shutdown,
};

/// A bound, not yet serving, ingestion node.
pub struct Broker {
    config: BrokerConfig,
    listener: TcpListener,
    publisher: Arc<Publisher>,
}

impl Broker {
    /// Binds the gRPC address (port 0 picks a free port) and creates the producer.
    pub async fn bind(config: BrokerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.grpc_addr))?;
        let publisher = Arc::new(Publisher::new(&config)?);
        Ok(Self {
            config,
            listener,
            publisher,
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` fires, then lets in-flight calls finish within
    /// the grace period and flushes the producer.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            publisher,
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
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let service = IngestService::new(publisher.clone(), config.max_in_flight_per_stream);
        let gauge_publisher = publisher.clone();
        let gauge_stop = shutdown.clone();
        tokio::spawn(async move {
            let gauge = metrics::gauge!("switchboard_ingest_in_flight");
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while tokio::select! { _ = tick.tick() => true, _ = gauge_stop.cancelled() => false } {
                gauge.set(gauge_publisher.in_flight() as f64);
            }
        });

        let addr = listener.local_addr()?;
        tracing::info!(%addr, topic = %config.messages_topic, "ingestion node serving gRPC");
        let stopping = shutdown.clone();
        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(IngestServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stopping.cancelled().await;
                health
                    .set_not_serving::<IngestServer<IngestService>>()
                    .await;
            });
        let server = tokio::spawn(server);
        shutdown.cancelled().await;
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls did not finish in time")
            }
        }
        let grace = config.shutdown_grace;
        tokio::task::spawn_blocking(move || publisher.flush(grace)).await?;
        tracing::info!("ingestion node stopped");
        Ok(())
    }
}
