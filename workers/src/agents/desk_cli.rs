//! The reference agent desk on the command line (`switchboard-desk`): its
//! flags and subcommands, and what each does. The binary only parses the
//! flags and calls [`run`].

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use super::desk::{self, Desk};
use crate::config::WorkersConfig;
use prost::Message as _;
use rdkafka::{
    Message as _,
    consumer::{Consumer, StreamConsumer},
};
use switchboard_proto::v1::{
    AgentCapacity, AgentSkills, AssignmentEvent, Envelope, Presence, PublishRequest,
    agent_event::Change, assignment_event::Event, conversation_action::Action, envelope::Content,
    ingest_client::IngestClient,
};
use switchboard_runtime::config::Overrides;

/// Switchboard agent desk: set the agent's presence, skills and capacity,
/// see and follow their assignments, accept, decline, close or release
/// conversations, and reply to customers.
///
/// Topics and Kafka come from the workers' configuration (--config,
/// SWITCHBOARD_WORKERS_* variables).
#[derive(Parser, Debug)]
#[command(name = "switchboard-desk", version)]
pub struct Args {
    /// The agent.
    #[arg(long, env = "SWITCHBOARD_AGENT_ID")]
    pub agent: String,
    /// The tenant whose queues the agent serves: queues are per tenant.
    #[arg(long, env = "SWITCHBOARD_TENANT")]
    pub tenant: String,
    /// The queues the agent serves (repeat for several) [default: support].
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// Workers' TOML config file.
    #[arg(long, env = "SWITCHBOARD_WORKERS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "SWITCHBOARD_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take new conversations.
    Online,
    /// Keep the conversations held; take no new ones.
    Away,
    /// Leave: the conversations held go back to the queue.
    Offline,
    /// Replace the agent's skills (e.g. `language=es billing`).
    Skills { skills: Vec<String> },
    /// Set how many conversations the agent holds at once.
    Capacity {
        /// On every channel not listed with --channel.
        #[arg(long)]
        default: Option<u32>,
        /// Per channel, e.g. `--channel whatsapp=2`.
        #[arg(long = "channel", value_parser = parse_channel_capacity)]
        channels: Vec<(String, u32)>,
    },
    /// Print the conversations the agent holds now.
    List,
    /// Follow the agent's assignments as they come.
    Watch {
        /// Accept every conversation offered.
        #[arg(long)]
        accept: bool,
        /// Stop after this long (e.g. `60s`) [default: until Ctrl-C].
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Accept a conversation offered to the agent.
    Accept { conversation: String },
    /// Turn an offered conversation down: it goes to another agent.
    Decline { conversation: String },
    /// Resolve a conversation: the slot frees up.
    Close { conversation: String },
    /// Hand a conversation back to the bot.
    Release { conversation: String },
    /// Reply to the customer, through an ingestion node. Messenger and
    /// Instagram replies carry the HUMAN_AGENT tag (7-day window).
    Reply {
        conversation: String,
        text: String,
        /// The ingestion node's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        broker: String,
        /// The tenant's API key, if the node requires one.
        #[arg(long, env = "SWITCHBOARD_API_KEY")]
        api_key: Option<String>,
    },
}

fn parse_channel_capacity(s: &str) -> Result<(String, u32), String> {
    let (channel, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not CHANNEL=N"))?;
    let n = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
    Ok((channel.to_owned(), n))
}

/// Runs one desk command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = WorkersConfig::load(
        args.config.as_deref(),
        Overrides::default().kafka_bootstrap(args.kafka_bootstrap),
    )?;
    anyhow::ensure!(
        !args.tenant.is_empty() && !args.tenant.contains('/'),
        "--tenant must be a tenant id (not empty, no '/')"
    );
    let names = if args.queues.is_empty() {
        vec![config.handoff_queue.clone()]
    } else {
        args.queues
    };
    // The tenant's own queues, as keyed on the queue topic.
    let queues: Vec<String> = names
        .iter()
        .map(|q| super::queue_key(&args.tenant, q))
        .collect();
    let desk = Desk::new(&config, &args.agent)?;
    match args.command {
        Command::Online => presence(&desk, &queues, Presence::Online).await,
        Command::Away => presence(&desk, &queues, Presence::Away).await,
        Command::Offline => presence(&desk, &queues, Presence::Offline).await,
        Command::Skills { skills } => {
            desk.send_all(&queues, Change::Skills(AgentSkills { skills }))
                .await
        }
        Command::Capacity { default, channels } => {
            let capacity = AgentCapacity {
                default: default.unwrap_or(0),
                per_channel: channels.into_iter().collect(),
            };
            desk.send_all(&queues, Change::Capacity(capacity)).await
        }
        Command::List => {
            let (held, _) = held(desk).await?;
            if held.conversations.is_empty() {
                println!("no conversations");
            }
            for (key, c) in &held.conversations {
                println!("{key}  queue={}  messages={}", c.queue, c.messages.len());
                for m in &c.messages {
                    println!("    {}", describe(m));
                }
            }
            Ok(())
        }
        Command::Watch { accept, duration } => watch(&config, &desk, accept, duration).await,
        Command::Accept { conversation } => act(desk, &conversation, Action::Accept).await,
        Command::Decline { conversation } => act(desk, &conversation, Action::Decline).await,
        Command::Close { conversation } => act(desk, &conversation, Action::Close).await,
        Command::Release { conversation } => act(desk, &conversation, Action::Release).await,
        Command::Reply {
            conversation,
            text,
            broker,
            api_key,
        } => reply(desk, &conversation, text, &broker, api_key).await,
    }
}

async fn presence(desk: &Desk, queues: &[String], presence: Presence) -> anyhow::Result<()> {
    desk.send_all(queues, Change::Presence(presence as i32))
        .await?;
    let names: Vec<&str> = queues.iter().map(|q| super::split_queue_key(q).1).collect();
    let tenant = queues.first().map_or("", |q| super::split_queue_key(q).0);
    println!(
        "{} is {} in {} (tenant {tenant})",
        desk.agent_id(),
        presence.as_str_name().to_lowercase(),
        names.join(", ")
    );
    Ok(())
}

async fn held(desk: Desk) -> anyhow::Result<(desk::DeskView, Desk)> {
    tokio::task::spawn_blocking(move || desk.held().map(|view| (view, desk))).await?
}

async fn act(desk: Desk, conversation: &str, action: Action) -> anyhow::Result<()> {
    let (view, desk) = held(desk).await?;
    let held = view.conversations.get(conversation).ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no conversation {conversation:?} (see `list`)",
            desk.agent_id()
        )
    })?;
    desk.act(&held.queue, conversation, action).await?;
    println!("{}: {conversation}", action.as_str_name().to_lowercase());
    Ok(())
}

async fn reply(
    desk: Desk,
    conversation: &str,
    text: String,
    broker: &str,
    api_key: Option<String>,
) -> anyhow::Result<()> {
    let (view, desk) = held(desk).await?;
    let last = view
        .conversations
        .get(conversation)
        .and_then(|c| c.messages.last())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds no conversation {conversation:?} (see `list`)",
                desk.agent_id()
            )
        })?;
    let envelope = desk::reply_to(last, text);
    let mut client = IngestClient::connect(broker.to_owned()).await?;
    let mut request = tonic::Request::new(PublishRequest {
        envelope: Some(envelope),
        sequence: 0,
    });
    if let Some(key) = api_key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    let response = client.publish(request).await?.into_inner();
    println!(
        "sent {} (partition {}, offset {})",
        response.message_id, response.partition, response.offset
    );
    Ok(())
}

fn describe(envelope: &Envelope) -> String {
    match &envelope.content {
        Some(Content::Text(t)) => format!("{:?}", t.body),
        Some(content) => format!("<{}>", content.kind()),
        None => "<empty>".to_owned(),
    }
}

async fn watch(
    config: &WorkersConfig,
    desk: &Desk,
    accept: bool,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let group = format!(
        "switchboard-desk-{}-{}",
        desk.agent_id(),
        uuid::Uuid::now_v7().simple()
    );
    let consumer: StreamConsumer = config
        .kafka
        .consumer_config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "latest"),
        ])
        .create()?;
    consumer.subscribe(&[&config.agents.assignments_topic])?;
    let until = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(until);
    println!(
        "watching assignments of {} (Ctrl-C to stop)",
        desk.agent_id()
    );
    loop {
        let message = tokio::select! {
            _ = &mut until => break,
            _ = tokio::signal::ctrl_c() => break,
            m = consumer.recv() => m?,
        };
        let Some(Ok(event)) = message.payload().map(AssignmentEvent::decode) else {
            continue;
        };
        if event.agent_id != desk.agent_id() {
            continue;
        }
        let key = &event.conversation_key;
        match &event.event {
            Some(Event::Assigned(a)) => {
                println!(
                    "assigned {key} from {} ({}, waited {} ms)",
                    event.queue,
                    a.outcome().as_str_name().to_lowercase(),
                    a.waited_ms
                );
                for m in &a.messages {
                    println!("    {}", describe(m));
                }
                if accept {
                    desk.act(&event.queue, key, Action::Accept).await?;
                    println!("accepted {key}");
                }
            }
            Some(Event::Message(m)) => println!("{key}: {}", describe(m)),
            Some(Event::Unassigned(u)) => println!(
                "unassigned {key} ({})",
                u.reason().as_str_name().to_lowercase()
            ),
            None => {}
        }
    }
    Ok(())
}
