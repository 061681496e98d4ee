//! `switchboard-embedded`: the whole pipeline in one process, on an
//! in-memory Kafka, for trying Switchboard out with nothing installed.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use switchboard_benches::embedded::{Embedded, EmbeddedConfig, log_traffic};
use switchboard_runtime::{shutdown, telemetry};

/// Runs an ingestion node, routing workers, a demo echo bot and a traffic
/// log on librdkafka's IN-MEMORY mock cluster. Nothing is persisted; this
/// is for trying things out, not for production.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Ingestion node gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Ingestion node HTTP webhook address, or "off".
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Tenants file: API keys, rate limits and webhook secrets
    /// (deploy/config/tenants.example.toml) [default: the built-in demo
    /// tenants, deploy/config/tenants.demo.toml: tenant "demo" with demo
    /// webhook secrets, printed at startup, and gRPC open without a key].
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Demo bot gRPC address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    bot_addr: SocketAddr,
    /// Prometheus /metrics address (one endpoint for every component here).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Routing rules file [default: the built-in demo rules, deploy/rules/demo.toml].
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Routing workers in the consumer group.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// mimalloc: the system allocator's malloc and free took about 12% of the
/// ingest path's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("switchboard-embedded");
    let args = Args::parse();
    let stop = shutdown::Shutdown::new();
    shutdown::on_signals(stop.clone());
    telemetry::install_metrics(args.metrics_addr).map_err(anyhow::Error::msg)?;
    switchboard_broker::metrics::describe();
    switchboard_workers::metrics::describe();
    let http_addr = match args.http_addr.trim() {
        off if off.eq_ignore_ascii_case("off") => None,
        addr => Some(
            addr.parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("--http-addr {addr:?}: {e}"))?,
        ),
    };
    let built_in_tenants = args.auth_file.is_none();
    let rules = args
        .rules
        .as_ref()
        .map_or("built-in (deploy/rules/demo.toml)".into(), |p| {
            p.display().to_string()
        });
    let starting = Embedded::start(EmbeddedConfig {
        grpc_addr: args.grpc_addr,
        http_addr,
        auth_file: args.auth_file,
        bot_addr: args.bot_addr,
        rules_file: args.rules,
        partitions: args.partitions,
        workers: args.workers,
    });
    let embedded = tokio::select! {
        embedded = starting => embedded?,
        _ = stop.cancelled() => return Ok(()),
    };
    let traffic = tokio::spawn(log_traffic(embedded.config.clone(), stop.clone()));

    let grpc = embedded.pipeline.grpc_addr;
    let webhooks = match embedded.pipeline.http_addr {
        None => "off (--http-addr)".to_owned(),
        Some(http) if built_in_tenants => demo_webhooks(http),
        Some(http) => format!(
            "HTTP http://{http}/webhooks/{{tenant}}/{{channel}}\n            (signatures and keys checked with the tenants file)"
        ),
    };
    println!(
        r#"
Switchboard embedded is running.

  Kafka:    IN-MEMORY mock cluster (librdkafka) at {kafka}
            Everything is lost on exit. For trying things out only, not for production.
  Ingest:   gRPC {grpc}  (switchboard.v1.Ingest; health and reflection enabled)
  Webhooks: {webhooks}
  Demo bot: gRPC {bot}  (echoes text back)
  Senders:  replies of tenant "demo" go to built-in stand-in providers (logged as "customer <- reply")
  Metrics:  http://{metrics}/metrics
  Topics:   {messages}, {analytics}, {agents}
  Rules:    {rules}

Send a message (in another terminal):
  cargo run --release --bin switchboard-bench -- --target http://{grpc} --messages 200
  grpcurl -plaintext -emit-defaults -d '{{"envelope":{{"tenantId":"demo","channel":"WEBCHAT","direction":"INBOUND","conversationId":"c-1","text":{{"body":"hello"}}}}}}' {grpc} switchboard.v1.Ingest/Publish

Routed traffic is logged below. Ctrl-C stops everything.
"#,
        kafka = embedded.config.kafka.bootstrap_servers,
        bot = embedded.pipeline.bot_addr,
        metrics = args.metrics_addr,
        messages = embedded.config.messages_topic,
        analytics = embedded.config.analytics_topic,
        agents = embedded.config.agent_queue_topic,
    );

    stop.cancelled().await;
    let Embedded { mock, pipeline, .. } = embedded;
    let result = pipeline.stop().await;
    let _ = traffic.await;
    // Tearing down the mock cluster under live clients can hang; the
    // process is exiting anyway.
    std::mem::forget(mock);
    println!("Switchboard embedded stopped.");
    result
}

/// The demo tenant's webhook URLs and secrets, with a WhatsApp webhook
/// signed with `openssl dgst` and POSTed with curl.
fn demo_webhooks(http: SocketAddr) -> String {
    use switchboard_benches::embedded::demo_secrets::*;
    let url = format!("http://{http}/webhooks/{TENANT}");
    format!(
        r#"HTTP {url}/{{whatsapp,messenger,instagram,sms,webchat}}
            Signatures are checked. Tenant "{TENANT}"'s DEMO secrets:
            Meta app secret "{APP_SECRET}", verify token "{VERIFY_TOKEN}",
            Twilio auth token "{TWILIO_AUTH_TOKEN}", web chat key "{WEBCHAT_KEY}".
            A signed WhatsApp message (the echo bot's reply leaves through the sender):
  body='{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000000","phone_number_id":"demo-phone-number-id"}},"contacts":[{{"wa_id":"16505551234","profile":{{"name":"Kim"}}}}],"messages":[{{"from":"16505551234","id":"wamid.demo-1","timestamp":"'"$(date +%s)"'","type":"text","text":{{"body":"hello"}}}}]}}}}]}}]}}'
  sig=$(printf %s "$body" | openssl dgst -sha256 -hmac {APP_SECRET} | sed 's/^.* //')
  curl -i {url}/whatsapp -H 'content-type: application/json' -H "x-hub-signature-256: sha256=$sig" --data-binary "$body""#
    )
}
