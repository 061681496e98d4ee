//! Human-agent assignment on the real local Kafka: each policy on its own,
//! then two worker processes racing for one queue, and a worker killed
//! while it owns the queue.
//!
//! The tests publish tasks to the agent-queue topic as the conversation
//! stage does, and play the agents with [`Desk`]; they read outcomes from
//! the assignments topic, the queue-state topic and the messages topic.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{
    AgentCapacity, AgentSkills, AgentTask, AssignmentEvent, AssignmentOutcome, Channel, Envelope,
    Presence, QueueEvent, QueueSnapshot, UnassignReason, agent_event::Change,
    assignment_event::Event, conversation_action::Action, envelope::Content, queue_event,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use switchboard_workers::{
    agents::{
        config::{AgentsConfig, QueueConfig},
        desk::Desk,
        service::QueueStage,
    },
    config::{AutoOffsetReset, WorkersConfig},
    rules::CalendarSpec,
};

/// Queue `name` of the tenant the tests' messages come from: queues are
/// per tenant, keyed `tenant/queue`.
fn tenant_queue(name: &str) -> String {
    switchboard_workers::agents::queue_key("acme", name)
}

/// A worker configuration of its own on the shared Kafka.
fn isolated(queues: BTreeMap<String, QueueConfig>) -> WorkersConfig {
    let bootstrap = testkit::real_kafka();
    let t = |what: &str| testkit::random_topic(&format!("agents.{what}"));
    WorkersConfig {
        kafka: testkit::kafka_config(&bootstrap, 3),
        group_id: t("group"),
        // Tests may publish before a worker process's group first joins.
        auto_offset_reset: AutoOffsetReset::Earliest,
        messages_topic: t("messages"),
        analytics_topic: t("analytics"),
        agent_queue_topic: t("queue"),
        dlq_topic: t("dlq"),
        state_topic: t("state"),
        rejections_topic: t("rejections"),
        outbound_topic_prefix: t("outbound"),
        metrics_addr: None,
        agents: AgentsConfig {
            queue_state_topic: t("queue-state"),
            assignments_topic: t("assignments"),
            tick: Duration::from_millis(100),
            queues,
            ..AgentsConfig::default()
        },
        ..WorkersConfig::default()
    }
}

/// A queue stage (in process, or processes a test starts) and what it publishes.
struct Queues {
    config: WorkersConfig,
    producer: FutureProducer,
    events: Arc<Mutex<Vec<AssignmentEvent>>>,
    reading: Arc<AtomicBool>,
    stage: Option<(Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Queues {
    /// Creates the topics and starts following the assignments topic.
    async fn new(queues: &[(&str, QueueConfig)]) -> Self {
        let config = isolated(
            queues
                .iter()
                .map(|(n, q)| ((*n).to_owned(), q.clone()))
                .collect(),
        );
        config.ensure_topics().await.unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let reading = Arc::new(AtomicBool::new(true));
        follow(
            &config,
            &config.agents.assignments_topic,
            reading.clone(),
            events.clone(),
        );
        Self {
            producer: config.kafka.producer_config(&[]).create().unwrap(),
            config,
            events,
            reading,
            stage: None,
        }
    }

    /// Starts a queue stage in this process.
    fn start(&mut self) {
        let stop = Shutdown::new();
        let stage = QueueStage::new(&self.config).unwrap();
        let handle = tokio::spawn(stage.run(stop.clone()));
        self.stage = Some((stop, handle));
    }

    async fn desk(&self, agent: &str) -> Desk {
        Desk::new(&self.config, agent).unwrap()
    }

    /// An agent online in `queue`, with `skills` and `capacity` (0: the queue's).
    async fn agent(&self, queue: &str, agent: &str, skills: &[&str], capacity: u32) -> Desk {
        let queue = &tenant_queue(queue);
        let desk = self.desk(agent).await;
        let skills = skills.iter().map(|s| (*s).to_owned()).collect();
        desk.send(queue, Change::Skills(AgentSkills { skills }))
            .await
            .unwrap();
        let capacity = AgentCapacity {
            default: capacity,
            ..Default::default()
        };
        desk.send(queue, Change::Capacity(capacity)).await.unwrap();
        desk.send(queue, Change::Presence(Presence::Online as i32))
            .await
            .unwrap();
        desk
    }

    /// A message of conversation `conversation` needing an agent of `queue`.
    async fn task(&self, queue: &str, conversation: &str, skills: &str) {
        let queue = &tenant_queue(queue);
        let mut envelope = Envelope {
            message_id: uuid::Uuid::now_v7().to_string(),
            ..testkit::inbound_text(Channel::Whatsapp, conversation, "")
        };
        if !skills.is_empty() {
            envelope.attributes.insert("skills".into(), skills.into());
        }
        let event = QueueEvent {
            queue: queue.into(),
            event: Some(queue_event::Event::Task(AgentTask {
                queue: queue.into(),
                envelope: Some(envelope),
                decision: None,
            })),
        };
        let payload = event.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.config.agent_queue_topic)
                    .key(queue)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    fn events(&self) -> Vec<AssignmentEvent> {
        self.events.lock().unwrap().clone()
    }

    /// (agent, outcome, overflowed from) of every assignment of `conversation`, in order.
    fn assignments(&self, conversation: &str) -> Vec<(String, AssignmentOutcome, String)> {
        let key = key(conversation);
        let mut seen = HashSet::new();
        self.events()
            .into_iter()
            .filter(|e| e.conversation_key == key && seen.insert(e.assignment_id.clone()))
            .filter_map(|e| match e.event {
                Some(Event::Assigned(a)) => Some((e.agent_id, a.outcome(), a.overflowed_from)),
                _ => None,
            })
            .collect()
    }

    /// Waits until `conversation` has had `n` assignments; returns them.
    async fn assigned(
        &self,
        conversation: &str,
        n: usize,
    ) -> Vec<(String, AssignmentOutcome, String)> {
        wait_for(&format!("{n} assignment(s) of {conversation}"), || {
            self.assignments(conversation).len() >= n
        })
        .await;
        self.assignments(conversation)
    }

    fn unassigned(&self, conversation: &str) -> Vec<(String, UnassignReason)> {
        let key = key(conversation);
        self.events()
            .into_iter()
            .filter(|e| e.conversation_key == key)
            .filter_map(|e| match e.event {
                Some(Event::Unassigned(u)) => Some((e.agent_id, u.reason())),
                _ => None,
            })
            .collect()
    }

    /// Every snapshot of `queue` written so far, in order.
    async fn snapshots(&self, queue: &str) -> Vec<QueueSnapshot> {
        let (bootstrap, topic, queue) = (
            self.config.kafka.bootstrap_servers.clone(),
            self.config.agents.queue_state_topic.clone(),
            tenant_queue(queue),
        );
        tokio::task::spawn_blocking(move || {
            let size = testkit::topic_size(&bootstrap, &topic) as usize;
            testkit::read_topic(&bootstrap, &topic, Duration::from_secs(30), |r| {
                r.len() >= size
            })
            .iter()
            .filter(|m| m.key() == Some(queue.as_bytes()))
            .map(|m| QueueSnapshot::decode(m.payload().unwrap()).unwrap())
            .collect()
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) {
        if let Some((stop, handle)) = self.stage.take() {
            stop.cancel();
            handle.await.unwrap().unwrap();
        }
        self.reading.store(false, Ordering::Relaxed);
    }
}

/// Reads `topic` from the start into `events` while `reading` holds.
fn follow(
    config: &WorkersConfig,
    topic: &str,
    reading: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<AssignmentEvent>>>,
) {
    let consumer: BaseConsumer = config
        .kafka
        .client_config(&[
            ("group.id", &testkit::random_topic("reader")),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.topic_partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        while reading.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let event = AssignmentEvent::decode(m.payload().unwrap()).unwrap();
                events.lock().unwrap().push(event);
            }
        }
    });
}

fn key(conversation: &str) -> String {
    format!("acme/whatsapp/{conversation}")
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the last snapshot of `support` passes `check`.
async fn wait_for_snapshot(q: &Queues, what: &str, check: impl Fn(&QueueSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !q.snapshots("support").await.last().is_some_and(&check) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn support(config: QueueConfig) -> [(&'static str, QueueConfig); 1] {
    [("support", config)]
}

/// Held conversations per agent in every snapshot: none above `capacity`.
fn assert_never_over(snapshots: &[QueueSnapshot], capacity: usize) {
    for (i, s) in snapshots.iter().enumerate() {
        let mut per_agent: HashMap<&str, usize> = HashMap::new();
        for h in &s.held {
            *per_agent.entry(&h.agent_id).or_default() += 1;
        }
        for (agent, n) in per_agent {
            assert!(
                n <= capacity,
                "snapshot {i}: {agent} holds {n} > {capacity}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn skills_route_to_an_agent_who_has_them() {
    let mut q = Queues::new(&support(QueueConfig::default())).await;
    q.agent("support", "english", &["language=en"], 0).await;
    q.agent("support", "spanish", &["language=es", "billing"], 0)
        .await;
    q.start();
    q.task("support", "c1", "language=es,billing").await;
    q.task("support", "c2", "language=en").await;
    q.task("support", "c3", "language=de").await;
    assert_eq!(q.assigned("c1", 1).await[0].0, "spanish");
    assert_eq!(q.assigned("c2", 1).await[0].0, "english");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(q.assignments("c3").is_empty(), "nobody speaks German");
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn capacity_limits_what_an_agent_holds() {
    let mut q = Queues::new(&support(QueueConfig::default())).await;
    let alice = q.agent("support", "alice", &[], 2).await;
    q.start();
    for c in ["c1", "c2", "c3"] {
        q.task("support", c, "").await;
    }
    q.assigned("c1", 1).await;
    q.assigned("c2", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(q.assignments("c3").is_empty(), "alice is full");
    alice
        .act(&tenant_queue("support"), &key("c1"), Action::Close)
        .await
        .unwrap();
    assert_eq!(q.assigned("c3", 1).await[0].0, "alice");
    // c1's events are keyed apart from c3's: they may be read later.
    wait_for("c1's close", || !q.unassigned("c1").is_empty()).await;
    assert_eq!(
        q.unassigned("c1"),
        [("alice".into(), UnassignReason::Closed)]
    );
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn least_busy_agent_gets_the_next_conversation() {
    let mut q = Queues::new(&support(QueueConfig {
        capacity: 5,
        ..QueueConfig::default()
    }))
    .await;
    let a = q.agent("support", "a", &[], 0).await;
    q.agent("support", "b", &[], 0).await;
    q.start();
    for c in ["c1", "c2", "c3"] {
        q.task("support", c, "").await;
        q.assigned(c, 1).await;
    }
    let holds = |agent: &str| {
        ["c1", "c2", "c3"]
            .iter()
            .filter(|c| q.assignments(c)[0].0 == agent)
            .map(|c| (*c).to_owned())
            .collect::<Vec<_>>()
    };
    let (on_a, on_b) = (holds("a"), holds("b"));
    assert_eq!((on_a.len(), on_b.len()), (2, 1), "a was idle longest");
    for c in &on_a {
        a.act(&tenant_queue("support"), &key(c), Action::Close)
            .await
            .unwrap();
    }
    wait_for("a's closes", || {
        on_a.iter().all(|c| !q.unassigned(c).is_empty())
    })
    .await;
    q.task("support", "c4", "").await;
    assert_eq!(q.assigned("c4", 1).await[0].0, "a", "a holds 0, b holds 1");
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn sticky_agent_gets_a_returning_customer() {
    let mut q = Queues::new(&support(QueueConfig::default())).await;
    let a = q.agent("support", "a", &[], 0).await;
    q.agent("support", "b", &[], 0).await;
    q.start();
    q.task("support", "c1", "").await;
    let first = q.assigned("c1", 1).await[0].0.clone();
    assert_eq!(first, "a", "a was idle longest");
    a.act(&tenant_queue("support"), &key("c1"), Action::Close)
        .await
        .unwrap();
    wait_for("the close", || !q.unassigned("c1").is_empty()).await;
    // b is now the longest idle, but c1 goes back to a.
    q.task("support", "c1", "").await;
    let second = &q.assigned("c1", 2).await[1];
    assert_eq!(
        (second.0.as_str(), second.1),
        ("a", AssignmentOutcome::StickyHit)
    );
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn sticky_agent_busy_past_the_timeout_lets_another_take_it() {
    let mut q = Queues::new(&support(QueueConfig {
        capacity: 1,
        sticky_timeout: Duration::from_secs(2),
        ..QueueConfig::default()
    }))
    .await;
    let a = q.agent("support", "a", &[], 0).await;
    q.start();
    q.task("support", "c1", "").await;
    q.assigned("c1", 1).await;
    a.act(&tenant_queue("support"), &key("c1"), Action::Close)
        .await
        .unwrap();
    q.task("support", "filler", "").await;
    assert_eq!(q.assigned("filler", 1).await[0].0, "a");
    // a is full when c1 returns; b comes online, c1 still waits for a.
    q.agent("support", "b", &[], 0).await;
    let returned = Instant::now();
    q.task("support", "c1", "").await;
    let second = q.assigned("c1", 2).await[1].clone();
    assert_eq!(
        (second.0.as_str(), second.1),
        ("b", AssignmentOutcome::StickyTimeout)
    );
    assert!(
        returned.elapsed() >= Duration::from_millis(1900),
        "it waited for a first ({:?})",
        returned.elapsed()
    );
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn oldest_waiting_conversation_goes_first() {
    let mut q = Queues::new(&support(QueueConfig {
        capacity: 1,
        ..QueueConfig::default()
    }))
    .await;
    q.start();
    for c in ["oldest", "middle", "newest"] {
        q.task("support", c, "").await;
    }
    // Let them all wait before anyone can take one.
    wait_for_snapshot(&q, "three waiting", |s| s.waiting.len() == 3).await;
    let a = q.agent("support", "a", &[], 0).await;
    assert_eq!(q.assigned("oldest", 1).await[0].0, "a");
    a.act(&tenant_queue("support"), &key("oldest"), Action::Close)
        .await
        .unwrap();
    q.assigned("middle", 1).await;
    assert!(q.assignments("newest").is_empty());
    q.stop().await;
}

/// A calendar open one minute a week, two days from now: closed now.
fn closed_now() -> CalendarSpec {
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_zero_offset() as usize;
    CalendarSpec {
        timezone: "UTC".into(),
        days: [(
            day[(today + 2) % 7].to_owned(),
            vec!["03:00-03:01".to_owned()],
        )]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn closed_queue_sends_conversations_to_the_after_hours_queue() {
    let mut q = Queues::new(&[
        (
            "support",
            QueueConfig {
                hours: Some(closed_now()),
                after_hours_queue: Some("night".into()),
                ..QueueConfig::default()
            },
        ),
        ("night", QueueConfig::default()),
    ])
    .await;
    q.agent("support", "day-agent", &[], 0).await;
    q.agent("night", "night-agent", &[], 0).await;
    q.start();
    q.task("support", "c1", "").await;
    let assigned = q.assigned("c1", 1).await;
    assert_eq!(assigned[0].0, "night-agent");
    assert_eq!(assigned[0].2, "support", "it came from support");
    // The conversation stage is told the new queue.
    let handoff = control_events(&q, "c1", 1).await;
    assert_eq!(handoff[0], ("handoff".to_owned(), "night".to_owned()));
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn long_wait_overflows_to_the_fallback_queue() {
    let mut q = Queues::new(&[
        (
            "support",
            QueueConfig {
                overflow_after: Some(Duration::from_secs(2)),
                overflow_queue: Some("fallback".into()),
                ..QueueConfig::default()
            },
        ),
        ("fallback", QueueConfig::default()),
    ])
    .await;
    q.agent("fallback", "backup", &[], 0).await;
    q.start();
    let asked = Instant::now();
    q.task("support", "c1", "").await;
    let assigned = q.assigned("c1", 1).await;
    assert_eq!(
        (assigned[0].0.as_str(), assigned[0].2.as_str()),
        ("backup", "support")
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        asked.elapsed()
    );
    // A later message follows it to the fallback queue's agent.
    q.task("support", "c1", "").await;
    wait_for("the straggler to reach backup", || {
        q.events()
            .iter()
            .any(|e| e.agent_id == "backup" && matches!(e.event, Some(Event::Message(_))))
    })
    .await;
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn agent_going_offline_gives_conversations_back() {
    let mut q = Queues::new(&support(QueueConfig::default())).await;
    let a = q.agent("support", "a", &[], 0).await;
    q.start();
    q.task("support", "c1", "").await;
    q.assigned("c1", 1).await;
    a.act(&tenant_queue("support"), &key("c1"), Action::Accept)
        .await
        .unwrap();
    q.agent("support", "b", &[], 0).await;
    a.send(
        &tenant_queue("support"),
        Change::Presence(Presence::Offline as i32),
    )
    .await
    .unwrap();
    let second = q.assigned("c1", 2).await[1].clone();
    assert_eq!(
        (second.0.as_str(), second.1),
        ("b", AssignmentOutcome::Reassigned)
    );
    assert_eq!(
        q.unassigned("c1"),
        [("a".into(), UnassignReason::AgentOffline)]
    );
    // a comes back: the reopened conversation of an offline agent is not
    // routed to them meanwhile, and a gets new ones again.
    q.task("support", "c2", "").await;
    assert_eq!(q.assigned("c2", 1).await[0].0, "b");
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn unaccepted_offer_goes_to_another_agent() {
    let mut q = Queues::new(&support(QueueConfig {
        accept_timeout: Duration::from_secs(2),
        ..QueueConfig::default()
    }))
    .await;
    q.agent("support", "a", &[], 0).await;
    q.start();
    q.task("support", "c1", "").await;
    q.assigned("c1", 1).await;
    let offered = Instant::now();
    q.agent("support", "b", &[], 0).await;
    let second = q.assigned("c1", 2).await[1].clone();
    assert_eq!(
        (second.0.as_str(), second.1),
        ("b", AssignmentOutcome::Reassigned)
    );
    assert!(
        offered.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        offered.elapsed()
    );
    assert_eq!(q.unassigned("c1"), [("a".into(), UnassignReason::NoAccept)]);
    q.stop().await;
}

/// The control events the queue stage sent the conversation stage about
/// `conversation`: (action, queue or agent).
async fn control_events(q: &Queues, conversation: &str, n: usize) -> Vec<(String, String)> {
    use switchboard_proto::v1::conversation_control::Action as Control;
    let (bootstrap, topic) = (
        q.config.kafka.bootstrap_servers.clone(),
        q.config.messages_topic.clone(),
    );
    let key = key(conversation);
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(30), |r| {
            r.len() >= n
        })
    })
    .await
    .unwrap();
    records
        .iter()
        .filter(|m| m.key() == Some(key.as_bytes()))
        .filter_map(
            |m| match Envelope::decode(m.payload().unwrap()).unwrap().content {
                Some(Content::Control(c)) => Some(match c.action() {
                    Control::Assign => ("assign".to_owned(), c.agent_id),
                    Control::Handoff => ("handoff".to_owned(), c.queue),
                    Control::Release => ("release".to_owned(), String::new()),
                    Control::Unspecified => ("unspecified".to_owned(), String::new()),
                }),
                _ => None,
            },
        )
        .collect()
}

// --- Worker processes -------------------------------------------------------

/// A `switchboard-workers` process on `config`.
fn spawn_worker(config: &WorkersConfig, name: &str) -> Child {
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic(name)));
    let mut config = config.clone();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-workers"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,switchboard_workers::agents=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start switchboard-workers")
}

/// Closes every conversation assigned, looking every `pace`, while `closing` holds.
fn close_everything(
    q: &Queues,
    closing: Arc<AtomicBool>,
    pace: Duration,
) -> tokio::task::JoinHandle<()> {
    let events = q.events.clone();
    let config = q.config.clone();
    tokio::spawn(async move {
        let mut desks: HashMap<String, Desk> = HashMap::new();
        let mut done = HashSet::new();
        while closing.load(Ordering::Relaxed) {
            let new: Vec<AssignmentEvent> = events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e.event, Some(Event::Assigned(_))))
                .filter(|e| !done.contains(&e.assignment_id))
                .cloned()
                .collect();
            for e in new {
                let desk = desks
                    .entry(e.agent_id.clone())
                    .or_insert_with(|| Desk::new(&config, &e.agent_id).unwrap());
                desk.act(&e.queue, &e.conversation_key, Action::Close)
                    .await
                    .unwrap();
                done.insert(e.assignment_id);
            }
            tokio::time::sleep(pace).await;
        }
    })
}

/// Distinct assignment ids per conversation.
fn assignment_ids(events: &[AssignmentEvent]) -> HashMap<String, HashSet<String>> {
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for e in events {
        if matches!(e.event, Some(Event::Assigned(_))) {
            ids.entry(e.conversation_key.clone())
                .or_default()
                .insert(e.assignment_id.clone());
        }
    }
    ids
}

const AGENTS: [&str; 5] = ["a1", "a2", "a3", "a4", "a5"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn two_worker_processes_never_over_assign() {
    let q = Queues::new(&support(QueueConfig {
        capacity: 3,
        accept_timeout: Duration::ZERO,
        ..QueueConfig::default()
    }))
    .await;
    for agent in AGENTS {
        q.agent("support", agent, &[], 0).await;
    }
    let conversations: Vec<String> = (0..200).map(|i| format!("c{i:03}")).collect();
    // All 200 arrive at once, and both processes join while they do.
    let (tasks, mut first, mut second) = tokio::join!(
        async {
            for c in &conversations {
                q.task("support", c, "").await;
            }
        },
        async { spawn_worker(&q.config, "worker-1") },
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            spawn_worker(&q.config, "worker-2")
        },
    );
    let () = tasks;
    wait_for("15 assignments", || assignment_ids(&q.events()).len() >= 15).await;
    // Give a wrong second owner time to show itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids = assignment_ids(&q.events());
    assert_eq!(ids.len(), 15, "5 agents × capacity 3, and no more");
    assert!(ids.values().all(|ids| ids.len() == 1), "each assigned once");
    let snapshots = q.snapshots("support").await;
    assert_never_over(&snapshots, 3);
    let last = snapshots.last().unwrap();
    assert_eq!((last.held.len(), last.waiting.len()), (15, 185));

    // Agents close as they go: everyone is served, each exactly once.
    let closing = Arc::new(AtomicBool::new(true));
    let closer = close_everything(&q, closing.clone(), Duration::from_millis(50));
    wait_for("all 200 assigned", || {
        assignment_ids(&q.events()).len() == 200
    })
    .await;
    closing.store(false, Ordering::Relaxed);
    closer.await.unwrap();
    let ids = assignment_ids(&q.events());
    assert!(ids.values().all(|ids| ids.len() == 1), "each assigned once");
    assert_never_over(&q.snapshots("support").await, 3);
    for child in [&mut first, &mut second] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn killed_queue_owner_loses_and_repeats_nothing() {
    let q = Queues::new(&support(QueueConfig {
        capacity: 3,
        accept_timeout: Duration::ZERO,
        ..QueueConfig::default()
    }))
    .await;
    for agent in AGENTS {
        q.agent("support", agent, &[], 0).await;
    }
    let mut first = spawn_worker(&q.config, "worker-1");
    let closing = Arc::new(AtomicBool::new(true));
    // About 15 conversations closed every 300 ms: the stream lasts seconds.
    let closer = close_everything(&q, closing.clone(), Duration::from_millis(300));
    for i in 0..80 {
        q.task("support", &format!("c{i:03}"), "").await;
    }
    wait_for("20 assignments", || assignment_ids(&q.events()).len() >= 20).await;
    // Kill the owner mid-stream; another takes over from Kafka.
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = assignment_ids(&q.events()).len();
    let mut second = spawn_worker(&q.config, "worker-2");
    wait_for("all 80 assigned", || {
        assignment_ids(&q.events()).len() == 80
    })
    .await;
    wait_for_snapshot(&q, "all closed", |s| {
        s.held.is_empty() && s.waiting.is_empty()
    })
    .await;
    closing.store(false, Ordering::Relaxed);
    closer.await.unwrap();
    assert!(
        killed_at < 80,
        "the kill came mid-stream ({killed_at} assigned)"
    );
    let ids = assignment_ids(&q.events());
    assert!(
        ids.values().all(|ids| ids.len() == 1),
        "no conversation assigned twice: {:?}",
        ids.iter().filter(|(_, v)| v.len() > 1).collect::<Vec<_>>()
    );
    assert_never_over(&q.snapshots("support").await, 3);
    second.kill().unwrap();
    second.wait().unwrap();
    q.stop().await;
}

// --- The reference desk -----------------------------------------------------

/// Runs `switchboard-desk` as agent `agent` on `config`; returns (success, stdout + stderr).
fn desk_cli(config: &std::path::Path, agent: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-desk"))
        .arg("--config")
        .arg(config)
        .args(["--agent", agent, "--tenant", "acme", "--queue", "support"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-desk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn reference_desk_cli_lists_accepts_and_closes() {
    let mut q = Queues::new(&support(QueueConfig::default())).await;
    q.start();
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("desk")));
    std::fs::write(&path, toml::to_string(&q.config).unwrap()).unwrap();
    let cli = |args: &[&str]| {
        let (path, args): (_, Vec<String>) =
            (path.clone(), args.iter().map(|a| a.to_string()).collect());
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                desk_cli(&path, "carol", &args)
            })
            .await
            .unwrap()
        }
    };

    let (ok, out) = cli(&["online"]).await;
    assert!(ok && out.contains("carol is online in support"), "{out}");
    q.task("support", "c1", "").await;
    q.assigned("c1", 1).await;
    let (ok, out) = cli(&["list"]).await;
    assert!(ok && out.contains(&key("c1")), "{out}");
    let c1 = &key("c1");
    let (ok, out) = cli(&["accept", c1]).await;
    assert!(ok && out.contains("accept"), "{out}");
    // `reply` goes through an ingestion node: benches/tests/agent_desk.rs.
    let (ok, out) = cli(&["close", c1]).await;
    assert!(ok, "{out}");
    wait_for("the close", || {
        q.unassigned("c1") == [("carol".to_owned(), UnassignReason::Closed)]
    })
    .await;
    // A conversation carol does not hold: a clear error, nothing sent.
    let (ok, out) = cli(&["close", "acme/whatsapp/nobody"]).await;
    assert!(!ok && out.contains("holds no conversation"), "{out}");

    q.stop().await;
}
