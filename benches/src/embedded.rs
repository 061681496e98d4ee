//! The embedded default: the whole pipeline on librdkafka's in-memory mock
//! cluster, for trying Switchboard out with nothing installed.
//!
//! The mock cluster keeps everything in memory and loses it on exit; it is
//! not Kafka and is not for production. Its AdminClient cannot create
//! topics (the call times out), so topics are made with
//! `MockCluster::create_topic`.

use std::{net::SocketAddr, path::PathBuf};

use rdkafka::{mocking::MockCluster, producer::DefaultProducerContext};
use switchboard_runtime::kafka::KafkaConfig;
use switchboard_workers::{destinations::bot::echo::EchoBot, state::subscriptions::KeywordConfig};

use crate::pipeline::{Pipeline, PipelineConfig};

/// The demo's routing rules, used when no rules file is given.
pub const DEMO_RULES: &str = include_str!("../../deploy/rules/demo.toml");

/// The demo's tenants, used when no tenants file is given: tenant `demo`
/// with demo webhook secrets for every channel, and gRPC open to callers
/// without a key.
pub const DEMO_TENANTS: &str = include_str!("../../deploy/config/tenants.demo.toml");

/// The demo tenant's secrets, as [`DEMO_TENANTS`] holds them.
pub mod demo_secrets {
    /// The tenant.
    pub const TENANT: &str = "demo";
    /// Meta's app secret (WhatsApp, Messenger, Instagram signatures).
    pub const APP_SECRET: &str = "demo-app-secret";
    /// Meta's verify token (the GET handshake).
    pub const VERIFY_TOKEN: &str = "demo-verify-token";
    /// Twilio's auth token (SMS signatures).
    pub const TWILIO_AUTH_TOKEN: &str = "demo-twilio-token";
    /// The web chat key.
    pub const WEBCHAT_KEY: &str = "demo-webchat-key";
}

/// Where the embedded pipeline listens.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Ingestion node gRPC address.
    pub grpc_addr: SocketAddr,
    /// Ingestion node HTTP webhook address; none: no HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// Tenants file (API keys, rate limits, webhook secrets); none: the
    /// built-in demo tenants ([`DEMO_TENANTS`]).
    pub auth_file: Option<PathBuf>,
    /// Demo bot gRPC address.
    pub bot_addr: SocketAddr,
    /// Rules file; the built-in demo rules when `None`.
    pub rules_file: Option<PathBuf>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Routing workers in the group.
    pub workers: usize,
}

/// A running embedded pipeline. Keep it alive as long as the pipeline runs.
pub struct Embedded {
    /// The in-memory Kafka.
    pub mock: MockCluster<'static, DefaultProducerContext>,
    /// The pipeline on top of it.
    pub pipeline: Pipeline,
    /// Its configuration (topics, group, Kafka address).
    pub config: PipelineConfig,
    _files: Vec<TempFile>,
    /// The stand-in providers the demo's replies are sent to: WhatsApp,
    /// Messenger, Instagram, Twilio, web chat.
    pub providers: Vec<switchboard_testkit::providers::StandIn>,
}

/// A file the demo wrote, removed when it stops.
struct TempFile(PathBuf);

impl TempFile {
    fn write(name: &str, content: &str) -> std::io::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("switchboard-demo-{name}-{}.toml", uuid_like()));
        std::fs::write(&path, content)?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Embedded {
    /// Starts the mock cluster, creates the topics and starts the pipeline
    /// with the echo bot.
    pub async fn start(config: EmbeddedConfig) -> anyhow::Result<Self> {
        let mock = MockCluster::new(3)?;
        let kafka = KafkaConfig {
            bootstrap_servers: mock.bootstrap_servers(),
            // It never answers a request for its topics' configs.
            reads_topic_limits: false,
            ..KafkaConfig::default()
        };
        let mut pipeline_config = PipelineConfig::new(kafka);
        for topic in pipeline_config.workers_config(config.bot_addr).topics() {
            mock.create_topic(&topic, config.partitions, 1)?;
        }
        let mut files = Vec::new();
        let mut built_in = |given: Option<PathBuf>, name, content| match given {
            Some(path) => Ok::<_, std::io::Error>(path),
            None => {
                let file = TempFile::write(name, content)?;
                let path = file.0.clone();
                files.push(file);
                Ok(path)
            }
        };
        pipeline_config.rules_file = Some(built_in(config.rules_file, "rules", DEMO_RULES)?);
        pipeline_config.auth_file = Some(built_in(config.auth_file, "tenants", DEMO_TENANTS)?);
        pipeline_config.grpc_addr = config.grpc_addr;
        pipeline_config.http_addr = config.http_addr;
        pipeline_config.bot_addr = config.bot_addr;
        pipeline_config.workers = config.workers;
        // Broadcasts, and the demo's subscription keywords on every channel.
        pipeline_config.broadcasts.enabled = true;
        pipeline_config.broadcasts.keywords = [("JOIN NEWS", true), ("STOP NEWS", false)]
            .map(|(keyword, subscribe)| KeywordConfig {
                tenant: "demo".into(),
                channel: "*".into(),
                keyword: keyword.into(),
                topic: "news".into(),
                subscribe,
            })
            .into();
        let providers = demo_providers::start(&mut pipeline_config.senders).await;
        let pipeline = Pipeline::start(&pipeline_config, EchoBot).await?;
        Ok(Self {
            mock,
            pipeline,
            config: pipeline_config,
            _files: files,
            providers,
        })
    }
}

/// The demo's senders: every channel of tenant `demo` goes to a built-in
/// stand-in of its provider, which logs what the customer would receive.
pub mod demo_providers {
    use switchboard_testkit::providers::StandIn;
    use switchboard_workers::{
        config::AutoOffsetReset,
        senders::{
            config::{
                PageCredentials, SendersConfig, TenantCredentials, TwilioCredentials,
                WebchatCredentials, WhatsappCredentials,
            },
            secret::Secret,
        },
    };

    /// Starts the stand-ins and points `senders` at them, with tenant
    /// `demo`'s credentials: WhatsApp, Messenger, Instagram, Twilio and web
    /// chat, in that order.
    pub async fn start(senders: &mut SendersConfig) -> Vec<StandIn> {
        let token = || Secret::new("demo-token");
        let whatsapp = StandIn::whatsapp("demo-token", "demo-phone-number-id").await;
        let messenger = StandIn::meta("demo-page", "demo-token", None).await;
        let instagram = StandIn::meta("demo-ig-account", "demo-token", None).await;
        let twilio = StandIn::twilio("ACdemo", "demo-token").await;
        let webchat = StandIn::webchat(None).await;
        senders.enabled = true;
        // The in-memory cluster starts empty: nothing old to skip.
        senders.auto_offset_reset = AutoOffsetReset::Earliest;
        senders.whatsapp.base_url.clone_from(&whatsapp.url);
        senders.messenger.base_url.clone_from(&messenger.url);
        senders.instagram.base_url.clone_from(&instagram.url);
        senders.sms.base_url.clone_from(&twilio.url);
        let page = |page_id: &str| PageCredentials {
            page_id: page_id.into(),
            page_token: token(),
            app_secret: None,
            rate: None,
        };
        senders.tenants.insert(
            "demo".into(),
            TenantCredentials {
                whatsapp: Some(WhatsappCredentials {
                    phone_number_id: "demo-phone-number-id".into(),
                    token: token(),
                    rate: None,
                }),
                messenger: Some(page("demo-page")),
                instagram: Some(page("demo-ig-account")),
                sms: Some(TwilioCredentials {
                    account_sid: "ACdemo".into(),
                    auth_token: token(),
                    api_key_sid: None,
                    from: Some("+15550000000".into()),
                    messaging_service_sid: None,
                    status_callback: None,
                    rate: None,
                }),
                webchat: Some(WebchatCredentials {
                    url: format!("{}/deliver/demo", webchat.url),
                    token: None,
                    rate: None,
                }),
            },
        );
        let all = vec![whatsapp, messenger, instagram, twilio, webchat];
        for provider in &all {
            provider.log_accepted();
        }
        all
    }
}

fn uuid_like() -> String {
    format!("{}-{}", std::process::id(), rand::random::<u64>())
}

/// Logs a line for every agent-queue, assignment and analytics record, until `stop` fires.
pub async fn log_traffic(
    config: PipelineConfig,
    stop: switchboard_runtime::shutdown::Shutdown,
) -> anyhow::Result<()> {
    use prost::Message as _;
    use rdkafka::{
        Message as _,
        consumer::{Consumer, StreamConsumer},
    };
    use switchboard_proto::v1::{
        AnalyticsRecord, AssignmentEvent, QueueEvent, assignment_event, destination::Kind,
        queue_event,
    };
    use switchboard_runtime::telemetry::redact;

    let consumer: StreamConsumer = config
        .kafka
        .consumer_config(&[
            ("group.id", "switchboard-embedded-traffic-log"),
            ("auto.offset.reset", "latest"),
        ])
        .create()?;
    consumer.subscribe(&[
        &config.agent_queue_topic,
        &config.analytics_topic,
        &config.agents.assignments_topic,
    ])?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m?,
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        if message.topic() == config.agent_queue_topic {
            let event = QueueEvent::decode(payload)?;
            match event.event {
                Some(queue_event::Event::Task(task)) => {
                    let envelope = task.envelope.unwrap_or_default();
                    tracing::info!(
                        target: "traffic",
                        queue = %event.queue,
                        conversation = %redact(&envelope.conversation_key()),
                        content = envelope.content.as_ref().map_or("none", |c| c.kind()),
                        "agent queue <- message"
                    );
                }
                Some(queue_event::Event::Agent(agent)) => tracing::info!(
                    target: "traffic",
                    queue = %event.queue,
                    agent = %agent.agent_id,
                    "agent queue <- desk event"
                ),
                Some(queue_event::Event::MovedIn(_)) | None => {}
            }
        } else if message.topic() == config.agents.assignments_topic {
            let event = AssignmentEvent::decode(payload)?;
            let what = match event.event {
                Some(assignment_event::Event::Assigned(_)) => "assigned",
                Some(assignment_event::Event::Message(_)) => "message",
                Some(assignment_event::Event::Unassigned(_)) => "unassigned",
                None => continue,
            };
            tracing::info!(
                target: "traffic",
                queue = %event.queue,
                agent = %event.agent_id,
                conversation = %redact(&event.conversation_key),
                "desk <- {what}"
            );
        } else {
            let record = AnalyticsRecord::decode(payload)?;
            let envelope = record.envelope.unwrap_or_default();
            let decision = record.decision.unwrap_or_default();
            let destinations: Vec<String> = decision
                .destinations
                .iter()
                .filter_map(|d| d.kind.as_ref())
                .map(|k| match k {
                    Kind::Bot(name) => format!("bot:{name}"),
                    Kind::AgentQueue(queue) => format!("agent:{queue}"),
                    Kind::Analytics(_) => "analytics".to_owned(),
                    Kind::Outbound(_) => "outbound".to_owned(),
                })
                .collect();
            tracing::info!(
                target: "traffic",
                conversation = %redact(&envelope.conversation_key()),
                rule = %decision.rule_id,
                destinations = %destinations.join(","),
                "analytics <- routed"
            );
        }
    }
    // Closing a consumer on the mock cluster can hang; leave it to process exit.
    std::mem::forget(consumer);
    Ok(())
}
