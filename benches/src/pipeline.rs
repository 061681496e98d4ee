//! The whole pipeline in one process: bot, ingestion node and workers.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use switchboard_broker::{config::BrokerConfig, publisher::Publisher, server::Broker};
use switchboard_proto::v1::{Envelope, bot_server::Bot, ingest_client::IngestClient};
use switchboard_runtime::{kafka::KafkaConfig, shutdown::Shutdown, trace::TraceParent};
use switchboard_workers::{
    agents::{config::AgentsConfig, service::QueueStage},
    broadcast::{config::BroadcastsConfig, report::ReportStage, service::BroadcastStage},
    config::WorkersConfig,
    consume::Worker,
    customers::config::CustomersConfig,
    destinations::bot::echo,
    destinations::bot::{BotConfig, BotProtocol},
    route::Router,
    senders::{config::SendersConfig, service::SenderStage},
};
use tokio::{net::TcpListener, task::JoinHandle};

/// What to start.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Kafka to use.
    pub kafka: KafkaConfig,
    /// Messages topic.
    pub messages_topic: String,
    /// Analytics topic.
    pub analytics_topic: String,
    /// Agent-queue topic.
    pub agent_queue_topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Conversation state topic (compacted).
    pub state_topic: String,
    /// Consent rejections topic.
    pub rejections_topic: String,
    /// Prefix of the per-channel outbound topics.
    pub outbound_topic_prefix: String,
    /// Consumer group of the workers.
    pub group_id: String,
    /// Routing rules file; the bot is known to the rules as `bot_name`.
    pub rules_file: Option<PathBuf>,
    /// Name of the bot in the rules.
    pub bot_name: String,
    /// More bots the rules may name (e.g. HTTP webhook bots a test serves).
    pub extra_bots: BTreeMap<String, BotConfig>,
    /// gRPC address of the ingestion node (port 0 for any).
    pub grpc_addr: SocketAddr,
    /// HTTP webhook address of the ingestion node (port 0 for any); none: off.
    pub http_addr: Option<SocketAddr>,
    /// The ingestion node's tenants file (API keys, rate limits, webhook
    /// secrets); none: authentication off.
    pub auth_file: Option<PathBuf>,
    /// gRPC address of the bot (port 0 for any).
    pub bot_addr: SocketAddr,
    /// Number of routing workers (consumer group members).
    pub workers: usize,
    /// Messages of one partition routed at once (1 = partition-serial).
    pub max_in_flight_per_partition: usize,
    /// Delivery attempts per destination before the dead-letter topic.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_backoff: Duration,
    /// Human-agent routing: queues and the queue stage's topics.
    pub agents: AgentsConfig,
    /// The sender stage (off unless `senders.enabled`).
    pub senders: SendersConfig,
    /// One customer across channels (links topic, matching rules).
    pub customers: CustomersConfig,
    /// The broadcast and report stages (off unless `broadcasts.enabled`;
    /// their topics are created either way) and subscription keywords.
    pub broadcasts: BroadcastsConfig,
}

impl PipelineConfig {
    /// Defaults for `kafka`, with the standard topic names and any free ports.
    pub fn new(kafka: KafkaConfig) -> Self {
        let defaults = WorkersConfig::default();
        Self {
            kafka,
            messages_topic: defaults.messages_topic,
            analytics_topic: defaults.analytics_topic,
            agent_queue_topic: defaults.agent_queue_topic,
            dlq_topic: defaults.dlq_topic,
            state_topic: defaults.state_topic,
            rejections_topic: defaults.rejections_topic,
            outbound_topic_prefix: defaults.outbound_topic_prefix,
            group_id: defaults.group_id,
            rules_file: None,
            bot_name: "echo".into(),
            extra_bots: BTreeMap::new(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: None,
            auth_file: None,
            bot_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            max_in_flight_per_partition: defaults.max_in_flight_per_partition,
            max_attempts: defaults.max_attempts,
            retry_backoff: defaults.retry_backoff,
            agents: defaults.agents,
            senders: defaults.senders,
            broadcasts: BroadcastsConfig {
                enabled: false,
                ..defaults.broadcasts
            },
            customers: defaults.customers,
        }
    }

    /// A pipeline of its own on a shared Kafka: every topic and the consumer
    /// group get unique names starting with `prefix`, so runs (tests,
    /// benchmarks) never see each other's data.
    pub fn isolated(kafka: KafkaConfig, prefix: &str) -> Self {
        let unique = |what: &str| format!("{prefix}.{what}.{}", uuid::Uuid::now_v7().simple());
        Self {
            messages_topic: unique("messages"),
            analytics_topic: unique("analytics"),
            agent_queue_topic: unique("agents"),
            dlq_topic: unique("dlq"),
            state_topic: unique("state"),
            rejections_topic: unique("rejections"),
            outbound_topic_prefix: unique("outbound"),
            group_id: unique("group"),
            agents: AgentsConfig {
                queue_state_topic: unique("queue-state"),
                assignments_topic: unique("assignments"),
                ..AgentsConfig::default()
            },
            broadcasts: BroadcastsConfig {
                enabled: false,
                commands_topic: unique("broadcast-commands"),
                progress_topic: unique("broadcast-progress"),
                tallies_topic: unique("broadcast-tallies"),
                ..BroadcastsConfig::default()
            },
            customers: CustomersConfig {
                topic: unique("customers"),
                ..CustomersConfig::default()
            },
            ..Self::new(kafka)
        }
    }

    /// Reads the messages topic from its start when the routing group first
    /// joins (the workers' default, `latest`, skips what was written before):
    /// for tests and benchmarks that publish before the pipeline is up.
    pub fn from_start(mut self) -> Self {
        self.kafka
            .properties
            .insert("auto.offset.reset".into(), "earliest".into());
        self
    }

    /// Creates the topics the pipeline reads and writes.
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        self.workers_config(self.bot_addr).ensure_topics().await
    }

    /// Publishes `envelopes` to the messages topic through the ingestion
    /// node's publisher, without gRPC, and waits until Kafka has them all:
    /// a backlog for the workers to work through.
    pub async fn preload(&self, envelopes: &[Envelope]) -> anyhow::Result<()> {
        use futures::{StreamExt, stream::FuturesUnordered};
        let publisher = Publisher::new(
            BrokerConfig {
                kafka: self.kafka.clone(),
                messages_topic: self.messages_topic.clone(),
                ack_timeout: Duration::from_secs(60),
                max_in_flight: 50_000,
                ..BrokerConfig::default()
            }
            .publisher(),
        )?;
        let mut pending = FuturesUnordered::new();
        for envelope in envelopes {
            let permit = publisher.permit().await?;
            pending.push(
                publisher
                    .enqueue(envelope, TraceParent::root(), permit)?
                    .wait(),
            );
            while pending.len() >= 10_000 {
                pending.next().await.expect("pending")?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }

    /// The ingestion node's configuration for this pipeline; tests bind more
    /// nodes with it.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            grpc_addr: self.grpc_addr,
            metrics_addr: None,
            http_addr: self.http_addr,
            auth_file: self.auth_file.clone(),
            kafka: self.kafka.clone(),
            messages_topic: self.messages_topic.clone(),
            shutdown_grace: Duration::from_secs(5),
            // Tests and demos run on busy 2-core machines: give Kafka time.
            ack_timeout: Duration::from_secs(10),
            broadcasts: switchboard_broker::broadcasts::config::BroadcastsConfig {
                commands_topic: self.broadcasts.commands_topic.clone(),
                progress_topic: self.broadcasts.progress_topic.clone(),
                tallies_topic: self.broadcasts.tallies_topic.clone(),
                ..Default::default()
            },
            ..BrokerConfig::default()
        }
    }

    /// The workers' configuration for this pipeline.
    pub fn workers_config(&self, bot_addr: SocketAddr) -> WorkersConfig {
        WorkersConfig {
            kafka: self.kafka.clone(),
            group_id: self.group_id.clone(),
            messages_topic: self.messages_topic.clone(),
            analytics_topic: self.analytics_topic.clone(),
            agent_queue_topic: self.agent_queue_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            state_topic: self.state_topic.clone(),
            rejections_topic: self.rejections_topic.clone(),
            outbound_topic_prefix: self.outbound_topic_prefix.clone(),
            rules_file: self.rules_file.clone(),
            bots: self
                .extra_bots
                .clone()
                .into_iter()
                .chain([(
                    self.bot_name.clone(),
                    BotConfig {
                        // Busy 2-core machines: a slow call is not a dead bot.
                        timeout: Duration::from_secs(10),
                        ..BotConfig::new(BotProtocol::Grpc, format!("http://{bot_addr}"))
                    },
                )])
                .collect(),
            metrics_addr: None,
            shutdown_grace: Duration::from_secs(5),
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff,
            max_in_flight_per_partition: self.max_in_flight_per_partition,
            agents: self.agents.clone(),
            senders: self.senders.clone(),
            broadcasts: self.broadcasts.clone(),
            customers: self.customers.clone(),
            // Tests and scenarios publish before the group first joins.
            auto_offset_reset: switchboard_workers::config::AutoOffsetReset::Earliest,
            ..WorkersConfig::default()
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    /// Where the ingestion node listens.
    pub grpc_addr: SocketAddr,
    /// Where the ingestion node takes HTTP webhooks, if it does.
    pub http_addr: Option<SocketAddr>,
    /// Where the bot listens.
    pub bot_addr: SocketAddr,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    bot_shutdown: Shutdown,
    bot_task: JoinHandle<anyhow::Result<()>>,
}

impl Pipeline {
    /// Starts `bot`, the ingestion node and the workers. Topics must exist.
    pub async fn start(config: &PipelineConfig, bot: impl Bot) -> anyhow::Result<Self> {
        let shutdown = Shutdown::new();
        let mut tasks = Vec::new();

        // The bot stops last, so that workers can finish their in-flight calls.
        let bot_listener = TcpListener::bind(config.bot_addr).await?;
        let bot_addr = bot_listener.local_addr()?;
        let bot_shutdown = Shutdown::new();
        let bot_stop = bot_shutdown.clone();
        let bot_task = tokio::spawn(async move {
            echo::serve(bot, bot_listener, bot_stop.cancelled_owned())
                .await
                .map_err(anyhow::Error::from)
        });

        let broker = Broker::bind(config.broker_config()).await?;
        let grpc_addr = broker.local_addr();
        let http_addr = broker.http_addr();
        tasks.push(tokio::spawn(broker.serve(shutdown.clone())));

        let workers_config = config.workers_config(bot_addr);
        let router = Arc::new(Router::new(&workers_config)?);
        router.spawn_rules_reloader(workers_config.rules_reload_interval, shutdown.clone());
        for _ in 0..config.workers {
            let worker = Worker::new(&workers_config, router.clone())?;
            tasks.push(tokio::spawn(worker.run(shutdown.clone())));
            if workers_config.agents.enabled {
                let stage = QueueStage::new(&workers_config)?;
                tasks.push(tokio::spawn(stage.run(shutdown.clone())));
            }
            if workers_config.senders.enabled {
                let stage = SenderStage::new(&workers_config)?;
                tasks.push(tokio::spawn(stage.run(shutdown.clone())));
            }
            if workers_config.broadcasts.enabled {
                let stage = BroadcastStage::new(&workers_config)?;
                tasks.push(tokio::spawn(stage.run(shutdown.clone())));
                let stage = ReportStage::new(&workers_config)?;
                tasks.push(tokio::spawn(stage.run(shutdown.clone())));
            }
        }
        Ok(Self {
            grpc_addr,
            http_addr,
            bot_addr,
            shutdown,
            tasks,
            bot_shutdown,
            bot_task,
        })
    }

    /// A gRPC client of the pipeline's ingestion node.
    pub async fn client(&self) -> anyhow::Result<IngestClient<tonic::transport::Channel>> {
        Ok(IngestClient::connect(format!("http://{}", self.grpc_addr)).await?)
    }

    /// A signal that stops the pipeline when fired.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Stops everything gracefully and reports the first failure.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        for task in self.tasks {
            if let Err(e) = task.await? {
                first_error.get_or_insert(e);
            }
        }
        self.bot_shutdown.cancel();
        if let Err(e) = self.bot_task.await? {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}
