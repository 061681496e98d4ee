//! The broadcast stage: the single owner of each commands partition starts,
//! resumes and cancels its broadcasts.
//!
//! On assignment of partition `p`, the owner reads partition `p` of the
//! progress topic to its end and resumes every broadcast still RUNNING from
//! its cursor. A start command for a broadcast that has progress already is
//! a repeat and changes nothing; a new one gets its first progress record
//! (RUNNING) before its command's offset is committed, so a worker killed
//! in between starts it again, and one killed later resumes it. On
//! revocation, the partition's broadcasts stop without writing anything
//! more: the next owner resumes them. Assignment is eager (`range`), so a
//! broadcast never has two publishers at once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use prost::Message as _;
use rdkafka::{
    Message, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use switchboard_proto::v1::{
    BroadcastCommand, BroadcastProgress, BroadcastStatus, broadcast_command::Command,
};
use switchboard_runtime::{
    kafka::{ConsumerErrors, KafkaConfig, PartitionChange, PartitionChanges},
    retry::{self, Backoff},
    shutdown::Shutdown,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fanout::{Fanout, FanoutError};
use crate::{compacted, config::WorkersConfig};

/// A broadcast this worker publishes.
struct Running {
    partition: i32,
    /// Fired by a cancel command: the broadcast ends CANCELLED.
    cancel: CancellationToken,
    /// Fired when the partition is lost or the worker stops.
    stop: CancellationToken,
}

/// The broadcast stage of one worker: a member of `<group_id>.broadcasts`
/// on the commands topic.
pub struct BroadcastStage {
    consumer: StreamConsumer<PartitionChanges>,
    fanout: Arc<Fanout>,
    kafka: KafkaConfig,
    progress_topic: String,
}

impl BroadcastStage {
    /// Creates the consumer and the producer; topics must exist.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let group = format!("{}.broadcasts", config.group_id);
        let consumer: StreamConsumer<PartitionChanges> = config
            .kafka
            .stage_consumer_config(&group)
            .create_with_context(PartitionChanges::default())?;
        consumer.subscribe(&[&config.broadcasts.commands_topic])?;
        Ok(Self {
            consumer,
            fanout: Arc::new(Fanout::new(
                &config.kafka,
                &config.messages_topic,
                &config.state_topic,
                &config.broadcasts,
            )?),
            kafka: config.kafka.clone(),
            progress_topic: config.broadcasts.progress_topic.clone(),
        })
    }

    /// The progress of every broadcast of `partition`.
    async fn read_progress(
        &self,
        partition: i32,
    ) -> anyhow::Result<HashMap<String, BroadcastProgress>> {
        let (kafka, topic) = (self.kafka.clone(), self.progress_topic.clone());
        tokio::task::spawn_blocking(move || read_progress(&kafka, &topic, partition)).await?
    }
    /// Consumes commands until `shutdown` fires. Dropping the future (a
    /// killed worker) aborts every broadcast at once.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut known: HashMap<String, BroadcastProgress> = HashMap::new();
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut errors = ConsumerErrors::new("broadcasts");
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => None,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((id, Ok(progress))) = done {
                        running.remove(&id);
                        known.insert(id, progress);
                    } else if let Ok((id, Err(error))) = done {
                        running.remove(&id);
                        if !matches!(error, FanoutError::Stopped) {
                            tracing::error!(broadcast = %id, %error, "broadcast stopped; it resumes when its partition is assigned again");
                        }
                    }
                    None
                }
                record = self.consumer.recv() => match record {
                    Ok(record) => Some(record.detach()),
                    Err(e) => {
                        errors.handle(&e).await;
                        None
                    }
                },
            };
            self.rebalance(&mut known, &mut running, &mut tasks, &shutdown)
                .await;
            super::metrics::running(running.len());
            let Some(record) = record else { continue };
            let partition = record.partition();
            match record.payload().map(BroadcastCommand::decode) {
                Some(Ok(command)) => {
                    self.command(
                        command,
                        partition,
                        &mut known,
                        &mut running,
                        &mut tasks,
                        &shutdown,
                    )
                    .await?;
                }
                _ => tracing::warn!(
                    partition,
                    offset = record.offset(),
                    "undecodable broadcast command skipped"
                ),
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                record.topic(),
                partition,
                rdkafka::Offset::Offset(record.offset() + 1),
            )?;
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "committing broadcast command offset");
            }
        }
        for r in running.values() {
            r.stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Stops the broadcasts of revoked partitions and resumes those of
    /// assigned ones. Reading an assigned partition's progress is retried
    /// (a broker may be away, its metadata not there yet) until it succeeds
    /// or `shutdown` fires: a stage that exited would take the worker down.
    async fn rebalance(
        &self,
        known: &mut HashMap<String, BroadcastProgress>,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<(String, Result<BroadcastProgress, FanoutError>)>,
        shutdown: &Shutdown,
    ) {
        let changes = self.consumer.context().take();
        for change in changes {
            match change {
                PartitionChange::Revoked(partitions) => {
                    running.retain(|_, r| {
                        let lost = partitions.contains(&r.partition);
                        if lost {
                            r.stop.cancel();
                        }
                        !lost
                    });
                }
                PartitionChange::Assigned(partitions) => {
                    for partition in partitions {
                        let read = retry::retry(
                            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
                            shutdown,
                            |_: &anyhow::Error| true,
                            |error, _, wait| {
                                tracing::warn!(%error, partition, retry_in = ?wait, "cannot read the broadcasts' progress; retrying");
                            },
                            || self.read_progress(partition),
                        )
                        .await;
                        let found = match read {
                            Ok(Ok(found)) => found,
                            Ok(Err(_)) | Err(retry::Cancelled) => return, // stopping
                        };
                        for (id, progress) in found {
                            if progress.status() == BroadcastStatus::Running
                                && !running.contains_key(&id)
                            {
                                tracing::info!(broadcast = %id, published = progress.published, "resuming broadcast");
                                self.spawn(id.clone(), progress.clone(), partition, running, tasks);
                            }
                            known.insert(id, progress);
                        }
                    }
                }
            }
        }
    }

    fn spawn(
        &self,
        id: String,
        progress: BroadcastProgress,
        partition: i32,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<(String, Result<BroadcastProgress, FanoutError>)>,
    ) {
        let run = Running {
            partition,
            cancel: CancellationToken::new(),
            stop: CancellationToken::new(),
        };
        let (cancel, stop) = (run.cancel.clone(), run.stop.clone());
        let fanout = self.fanout.clone();
        running.insert(id.clone(), run);
        tasks.spawn(async move { (id, fanout.run(progress, &cancel, &stop).await) });
    }

    async fn command(
        &self,
        command: BroadcastCommand,
        partition: i32,
        known: &mut HashMap<String, BroadcastProgress>,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<(String, Result<BroadcastProgress, FanoutError>)>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let id = command.broadcast_id;
        match command.command {
            Some(Command::Start(spec)) => {
                if known.contains_key(&id) {
                    tracing::debug!(broadcast = %id, "broadcast started already");
                    return Ok(());
                }
                let now = switchboard_proto::timestamp(std::time::SystemTime::now());
                let progress = BroadcastProgress {
                    spec: Some(spec),
                    status: BroadcastStatus::Running as i32,
                    started_at: Some(now),
                    updated_at: Some(now),
                    ..Default::default()
                };
                match self.fanout.write_progress(&progress, shutdown).await {
                    Ok(()) => {}
                    Err(FanoutError::Stopped) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                known.insert(id.clone(), progress.clone());
                self.spawn(id, progress, partition, running, tasks);
            }
            Some(Command::Cancel(reason)) => {
                if let Some(run) = running.get(&id) {
                    tracing::info!(broadcast = %id, %reason, "cancelling broadcast");
                    run.cancel.cancel();
                }
            }
            None => {}
        }
        Ok(())
    }
}

/// The progress of every broadcast of `partition` of `topic`. Blocking.
fn read_progress(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> anyhow::Result<HashMap<String, BroadcastProgress>> {
    let mut found = HashMap::new();
    compacted::read_partition(kafka, topic, partition, |id, value| {
        match value.and_then(|v| BroadcastProgress::decode(v).ok()) {
            Some(progress) => {
                found.insert(id.to_owned(), progress);
            }
            None => {
                found.remove(id);
            }
        }
    })?;
    Ok(found)
}
