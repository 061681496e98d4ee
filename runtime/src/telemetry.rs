//! Logs, the metrics exporter and OTLP span export, shared by every
//! Switchboard binary.
//!
//! Metric names follow `docs/metrics.md`: `switchboard_<stage>_<noun>_<unit>[_total]`,
//! base units, and labels from small fixed sets only. The names themselves
//! live with the components that emit them.

use std::{net::SocketAddr, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

static OTLP: OnceLock<bool> = OnceLock::new();

/// Whether spans are exported over OTLP (see [`init`]).
pub fn otlp_enabled() -> bool {
    OTLP.get().copied().unwrap_or(false)
}

/// Keeps the OTLP exporter running; dropping it flushes the spans not sent yet.
#[must_use = "dropping it stops the OTLP export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing OTLP spans failed: {e}");
        }
    }
}

/// Initializes `tracing` for the service `service`. `RUST_LOG` sets levels
/// (default `info`); `SWITCHBOARD_LOG_FORMAT=json` switches logs to
/// structured JSON lines on stderr.
///
/// Setting `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`)
/// also exports each message's spans over OTLP/HTTP (protobuf) to an
/// OpenTelemetry collector; the standard `OTEL_*` variables
/// (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, ...) apply.
pub fn init(service: &'static str) -> Telemetry {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let json =
        std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
            match otlp_provider(service) {
                Ok(provider) => Some(provider),
                Err(e) => {
                    eprintln!("OTLP export is off: {e}");
                    None
                }
            }
        });
    let installed = match &provider {
        // One filter for the whole stack. With the filter on the log layer
        // alone, a RUST_LOG naming a module (`switchboard_workers::consume=debug,info`)
        // lost some info lines every time (`routing worker started`,
        // `rebuilding conversation state`, rebalances); with one filter,
        // none is lost.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(json, ansi))
            .try_init()
            .is_ok(),
        Some(provider) => {
            use opentelemetry::trace::TracerProvider as _;
            // Spans are exported whatever RUST_LOG says about logs, which
            // needs a filter per layer.
            let spans = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            tracing_subscriber::registry()
                .with(log_layer(json, ansi).with_filter(filter))
                .with(spans)
                .try_init()
                .is_ok()
        }
    };
    let _ = OTLP.set(installed && provider.is_some());
    Telemetry { provider }
}

/// Logs on stderr, as text or JSON lines.
fn log_layer<S>(json: bool, ansi: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    }
}

fn otlp_provider(
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let resource = resource.build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// A stable, short stand-in for an identifier that may hold personal data
/// (a conversation key holds phone numbers), for logs at info level and above.
pub fn redact(value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_bytes());
    format!("#{}", hex::encode(&digest[..6]))
}

/// Latency buckets, in seconds, for every `_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Buckets, in seconds, for waits on people (agent assignment): 1 s to 1 h.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0,
];

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. Only the
/// first call in a process installs anything; later calls return its result.
/// Each component describes its own metrics (`describe()` next to the code
/// that emits them) once this is done.
pub fn install_metrics(addr: SocketAddr) -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                // A full-name matcher takes precedence over the suffix.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("switchboard_agent_wait_duration_seconds".into()),
                        WAIT_BUCKETS,
                    )
                })
                .and_then(|b| b.install())
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            Ok(())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redaction_is_stable_and_hides_the_value() {
        let key = "acme/whatsapp/106540352242922:16505551234";
        let redacted = super::redact(key);
        assert_eq!(redacted, super::redact(key));
        assert_ne!(
            redacted,
            super::redact("acme/whatsapp/106540352242922:16505551235")
        );
        assert!(
            !redacted.contains("16505551234") && redacted.len() == 13,
            "{redacted}"
        );
    }
}
