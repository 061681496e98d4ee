//! Broadcasts on real Kafka: 10,000 recipients over three channels, with
//! the broadcast stage killed midway; consent refusals counted by reason;
//! live conversations routed meanwhile within a latency bound; a topic's
//! subscribers resolved from the state topic.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{
    AnalyticsRecord, BroadcastCommand, BroadcastProgress, BroadcastRecipient, BroadcastSpec,
    BroadcastStatus, Channel, ConsentEvent, Envelope, Party, Rejection, SubscriptionChange,
    Template, broadcast_command::Command, consent_event::Action as Consent, envelope::Content,
};
use switchboard_testkit as testkit;
use switchboard_workers::{
    broadcast::{broadcast_of, report::ReportStage, service::BroadcastStage},
    config::WorkersConfig,
    state::subscriptions::KeywordConfig,
};

const CHANNELS: [Channel; 3] = [Channel::Whatsapp, Channel::Sms, Channel::Webchat];

/// One test at a time: the 10,000-recipient one measures live latency, and
/// on a busy 2-core machine the other would skew it (and time out).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const RECIPIENTS: usize = 10_000;

fn config() -> WorkersConfig {
    let mut config = common::isolated("bcast", 6);
    // The setup is published before the routing worker may have joined.
    config.auto_offset_reset = switchboard_workers::config::AutoOffsetReset::Earliest;
    // A killed stage's partitions move after the broker's least session timeout.
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    // 10,000 recipients in about 4 s: the kill lands midway.
    config.broadcasts.per_channel_rate = 1_200;
    config.broadcasts.per_tenant_rate = 2_500;
    config.broadcasts.progress_every = 250;
    config.broadcasts.keywords = vec![KeywordConfig {
        tenant: "*".into(),
        channel: "*".into(),
        keyword: "join news".into(),
        topic: "news".into(),
        subscribe: true,
    }];
    config
}

fn customer(envelope: Envelope, id: &str) -> Envelope {
    Envelope {
        customer: Some(Party {
            id: id.into(),
            display_name: String::new(),
        }),
        ..envelope
    }
}

/// Recipient `i`: its channel and conversation.
fn recipient(i: usize) -> (Channel, String) {
    (CHANNELS[i % 3], format!("c{i:05}"))
}

async fn command(config: &WorkersConfig, command: &BroadcastCommand) {
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    let payload = command.encode_to_vec();
    producer
        .send(
            FutureRecord::to(&config.broadcasts.commands_topic)
                .key(&command.broadcast_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// The latest progress of `id`.
fn progress(config: &WorkersConfig, id: &str) -> Option<BroadcastProgress> {
    let mut last = None;
    for partition in 0..config.kafka.topic_partitions {
        switchboard_workers::compacted::read_partition(
            &config.kafka,
            &config.broadcasts.progress_topic,
            partition,
            |key, value| {
                if key == id {
                    last = value.and_then(|v| BroadcastProgress::decode(v).ok());
                }
            },
        )
        .unwrap();
    }
    last
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(found) = tokio::task::block_in_place(&mut check) {
            eprintln!("{what}: {:?}", start.elapsed());
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the analytics topic and notes when each message id first shows.
fn follow_analytics(
    config: &WorkersConfig,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let kafka = config.kafka.clone();
    let topic = config.analytics_topic.clone();
    std::thread::spawn(move || {
        let consumer: BaseConsumer = kafka
            .client_config(&[
                ("group.id", &testkit::random_topic("latency")),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..kafka.topic_partitions {
            tpl.add_partition_offset(&topic, p, Offset::End).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(50))
                && let Some(Ok(analytics)) = record.payload().map(AnalyticsRecord::decode)
                && let Some(envelope) = analytics.envelope
            {
                seen.lock()
                    .unwrap()
                    .entry(envelope.message_id)
                    .or_insert_with(Instant::now);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs real Kafka (SWITCHBOARD_TEST_KAFKA)"]
async fn ten_thousand_recipients_once_each_with_the_stage_killed_midway() {
    let _serial = SERIAL.lock().await;
    let config = config();
    config.ensure_topics().await.unwrap();
    let (routing, routed) = common::start(&config);
    let report_stop = switchboard_runtime::shutdown::Shutdown::new();
    let report = tokio::spawn(ReportStage::new(&config).unwrap().run(report_stop.clone()));

    // 9,500 subscribe by keyword; 500 of them (SMS) then send STOP; 500
    // never subscribe; 300 subscribe to `offers` through a web form.
    let mut setup = Vec::new();
    for i in 0..RECIPIENTS {
        let (channel, conversation) = recipient(i);
        let text = if i < 9_500 { "Join  News" } else { "hello" };
        setup.push(customer(
            testkit::inbound_text(channel, &conversation, text),
            &format!("cust-{i}"),
        ));
        if i < 300 {
            let mut form = testkit::inbound_text(channel, &conversation, "");
            form.content = Some(Content::Subscription(SubscriptionChange {
                topic: "offers".into(),
                subscribe: true,
                ..Default::default()
            }));
            setup.push(form);
        }
    }
    let stopped: Vec<usize> = (0..9_500)
        .filter(|i| CHANNELS[i % 3] == Channel::Sms)
        .take(500)
        .collect();
    for &i in &stopped {
        let (channel, conversation) = recipient(i);
        let mut stop = testkit::inbound_text(channel, &conversation, "");
        stop.content = Some(Content::Consent(ConsentEvent {
            action: Consent::OptOut as i32,
            keyword: "STOP".into(),
        }));
        setup.push(stop);
    }
    let setup_len = setup.len() as i64;
    testkit::publish_envelopes(&config.kafka, &config.messages_topic, &setup).await;
    let bootstrap = config.kafka.bootstrap_servers.clone();
    wait_for(
        "the setup routed and its states written",
        Duration::from_secs(60),
        || {
            (testkit::topic_size(&bootstrap, &config.analytics_topic) >= setup_len
                && testkit::topic_size(&bootstrap, &config.state_topic) >= RECIPIENTS as i64)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(config.state_flush_interval * 3).await;

    // Live conversations keep talking through the broadcast.
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let stop_follow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = follow_analytics(&config, seen.clone(), stop_follow.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live_config = config.clone();
    let live = tokio::spawn(async move {
        let producer: FutureProducer = live_config
            .kafka
            .producer_config(&[("linger.ms", "0")])
            .create()
            .unwrap();
        let mut sent = HashMap::new();
        for n in 0..120 {
            let mut envelope = testkit::inbound_text(
                Channel::Whatsapp,
                format!("live-{}", n % 40),
                "where is my order",
            );
            envelope.message_id = uuid::Uuid::now_v7().to_string();
            let (key, payload) = (envelope.conversation_key(), envelope.encode_to_vec());
            sent.insert(envelope.message_id.clone(), Instant::now());
            producer
                .send(
                    FutureRecord::to(&live_config.messages_topic)
                        .key(&key)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });

    // Broadcast to the 10,000, to topic `news`: 9,000 consent, 500 opted
    // out, 500 never subscribed.
    let id = "spring-sale";
    let spec = BroadcastSpec {
        broadcast_id: id.into(),
        tenant_id: "acme".into(),
        template: Some(Template {
            name: "spring_sale".into(),
            language: "en".into(),
            parameters: vec!["20%".into()],
        }),
        topic: "news".into(),
        recipients: (0..RECIPIENTS)
            .map(|i| {
                let (channel, conversation) = recipient(i);
                BroadcastRecipient {
                    channel: channel as i32,
                    conversation_id: conversation,
                    parameters: vec![format!("code-{i}")],
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let first = tokio::spawn(
        BroadcastStage::new(&config)
            .unwrap()
            .run(switchboard_runtime::shutdown::Shutdown::new()),
    );
    command(
        &config,
        &BroadcastCommand {
            broadcast_id: id.into(),
            tenant_id: "acme".into(),
            command: Some(Command::Start(spec)),
        },
    )
    .await;
    // Killed once a part is published: no graceful stop, nothing flushed.
    let midway = wait_for("the broadcast midway", Duration::from_secs(30), || {
        progress(&config, id).filter(|p| p.published >= 2_000)
    })
    .await;
    first.abort();
    assert!(
        midway.published < RECIPIENTS as u64,
        "killed midway: {}",
        midway.published
    );
    let restarted_stop = switchboard_runtime::shutdown::Shutdown::new();
    let second = tokio::spawn(
        BroadcastStage::new(&config)
            .unwrap()
            .run(restarted_stop.clone()),
    );
    let done = wait_for("the broadcast completed", Duration::from_secs(60), || {
        progress(&config, id).filter(|p| p.status() == BroadcastStatus::Completed)
    })
    .await;
    let took = started.elapsed();
    assert_eq!(done.targeted, RECIPIENTS as u64);
    assert_eq!(done.published, RECIPIENTS as u64);

    // Each consenting recipient's message is in its outbound topic once.
    let stopped_ids: HashSet<String> = stopped.iter().map(|&i| recipient(i).1).collect();
    let consenting: Vec<(Channel, String)> = (0..9_500)
        .map(recipient)
        .filter(|(_, conversation)| !stopped_ids.contains(conversation))
        .collect();
    assert_eq!(consenting.len(), 9_000);
    let mut outbound: HashMap<String, usize> = HashMap::new();
    for channel in CHANNELS {
        let expected = consenting.iter().filter(|(c, _)| *c == channel).count();
        let topic = config.outbound_topic(channel);
        let records = common::read(&config, &topic, Duration::from_secs(30), move |r| {
            r.len() >= expected
        })
        .await;
        for record in records {
            let envelope = Envelope::decode(record.payload().unwrap()).unwrap();
            assert_eq!(broadcast_of(&envelope), Some(id));
            assert!(
                envelope
                    .customer
                    .as_ref()
                    .is_some_and(|c| c.id.starts_with("cust-")),
                "addressed to the customer"
            );
            *outbound.entry(envelope.conversation_id).or_default() += 1;
        }
        // A copy would have come by now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            testkit::topic_size(&bootstrap, &topic),
            expected as i64,
            "{channel:?}: one record per consenting recipient, no copy"
        );
    }
    let copies: Vec<_> = outbound.iter().filter(|(_, n)| **n > 1).collect();
    assert!(copies.is_empty(), "sent twice: {copies:?}");
    assert_eq!(
        outbound.len(),
        consenting.len(),
        "one message per consenting recipient"
    );
    assert!(
        outbound.keys().all(|c| !stopped_ids.contains(c)),
        "no message to an opted-out customer"
    );

    // Refusals, by reason, on the rejections topic and in the report.
    let rejections = common::read(
        &config,
        &config.rejections_topic,
        Duration::from_secs(20),
        |r| r.len() >= 1_000,
    )
    .await;
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for record in &rejections {
        let rejection = Rejection::decode(record.payload().unwrap()).unwrap();
        *reasons
            .entry(rejection.reason().as_str_name().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        reasons,
        HashMap::from([
            ("OPTED_OUT".to_owned(), 500),
            ("NOT_SUBSCRIBED".to_owned(), 500)
        ])
    );
    let counts = wait_for("the report's counts", Duration::from_secs(60), || {
        let tallies = switchboard_workers::broadcast::report::read_tallies(
            &config.kafka,
            &config.broadcasts.tallies_topic,
        )
        .ok()?;
        let mut sum = switchboard_proto::v1::BroadcastCounts::default();
        for tally in tallies.values() {
            if let Some(part) = tally.broadcasts.get(id) {
                sum.add(part);
            }
        }
        (sum.refused.values().sum::<u64>() >= 1_000).then_some(sum)
    })
    .await;
    assert_eq!(
        counts.refused,
        HashMap::from([
            ("opted_out".to_owned(), 500),
            ("not_subscribed".to_owned(), 500)
        ])
    );

    // Live conversations' latency during the broadcast.
    let sent = live.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_follow.store(true, std::sync::atomic::Ordering::Relaxed);
    follower.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|(id, at)| {
            seen.get(id)
                .map_or(Duration::MAX, |s| s.saturating_duration_since(*at))
        })
        .collect();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let max = *latencies.last().unwrap();
    eprintln!(
        "broadcast of {RECIPIENTS} took {took:?}; live latency p50 {:?} p99 {p99:?} max {max:?}",
        latencies[latencies.len() / 2]
    );
    assert!(
        p99 < Duration::from_secs(1),
        "live conversations slowed down: p99 {p99:?}"
    );

    // A topic's subscribers, from the state topic: the 300 of `offers`.
    let offers = BroadcastSpec {
        broadcast_id: "offers-1".into(),
        tenant_id: "acme".into(),
        template: Some(Template {
            name: "offer".into(),
            language: "en".into(),
            parameters: vec![],
        }),
        topic: "offers".into(),
        channels: vec![Channel::Whatsapp as i32, Channel::Sms as i32],
        ..Default::default()
    };
    command(
        &config,
        &BroadcastCommand {
            broadcast_id: "offers-1".into(),
            tenant_id: "acme".into(),
            command: Some(Command::Start(offers)),
        },
    )
    .await;
    let done = wait_for("the offers broadcast", Duration::from_secs(30), || {
        progress(&config, "offers-1").filter(|p| p.status() == BroadcastStatus::Completed)
    })
    .await;
    // Webchat is filtered out; 100 of the SMS ones said STOP (every third of
    // the first 300 is SMS, and the first 500 SMS subscribers stopped).
    assert_eq!(done.targeted, 100, "the WhatsApp subscribers of offers");

    // The kill cost at most one step of copies (`progress_every`), which
    // the routing stage dropped above.
    let broadcast_records = testkit::topic_size(&bootstrap, &config.messages_topic)
        - setup_len
        - 120
        - i64::try_from(done.targeted).unwrap();
    assert!(
        (RECIPIENTS as i64..=RECIPIENTS as i64 + 250).contains(&broadcast_records),
        "published {broadcast_records} records for {RECIPIENTS} recipients"
    );
    eprintln!("published {broadcast_records} records for {RECIPIENTS} recipients");

    restarted_stop.cancel();
    report_stop.cancel();
    routing.cancel();
    second.await.unwrap().unwrap();
    report.await.unwrap().unwrap();
    routed.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real Kafka (SWITCHBOARD_TEST_KAFKA)"]
async fn a_cancelled_broadcast_stops_where_it_is() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.broadcasts.per_tenant_rate = 200;
    config.broadcasts.per_channel_rate = 200;
    config.broadcasts.progress_every = 50;
    config.ensure_topics().await.unwrap();
    let stop = switchboard_runtime::shutdown::Shutdown::new();
    let stage = tokio::spawn(BroadcastStage::new(&config).unwrap().run(stop.clone()));
    let id = "cancel-me";
    let spec = BroadcastSpec {
        broadcast_id: id.into(),
        tenant_id: "acme".into(),
        template: Some(Template {
            name: "reminder".into(),
            ..Default::default()
        }),
        recipients: (0..2_000)
            .map(|i| BroadcastRecipient {
                channel: Channel::Webchat as i32,
                conversation_id: format!("v{i:04}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    command(
        &config,
        &BroadcastCommand {
            broadcast_id: id.into(),
            tenant_id: "acme".into(),
            command: Some(Command::Start(spec)),
        },
    )
    .await;
    wait_for("the broadcast started", Duration::from_secs(60), || {
        progress(&config, id).filter(|p| p.published >= 100)
    })
    .await;
    command(
        &config,
        &BroadcastCommand {
            broadcast_id: id.into(),
            tenant_id: "acme".into(),
            command: Some(Command::Cancel("wrong template".into())),
        },
    )
    .await;
    let cancelled = wait_for("the broadcast cancelled", Duration::from_secs(30), || {
        progress(&config, id).filter(|p| p.status() == BroadcastStatus::Cancelled)
    })
    .await;
    assert_eq!(cancelled.targeted, 2_000);
    assert!(
        cancelled.published < 2_000,
        "stopped: {}",
        cancelled.published
    );
    let published = testkit::topic_size(&config.kafka.bootstrap_servers, &config.messages_topic);
    assert_eq!(
        published,
        i64::try_from(cancelled.published).unwrap(),
        "nothing after the cancel"
    );
    stop.cancel();
    stage.await.unwrap().unwrap();
}
