//! One customer across channels on the real local Kafka: a routing worker
//! and a queue stage in this process, agents played with [`Desk`]. A
//! customer handed to alice on Instagram goes back to alice on WhatsApp
//! once the two conversations are linked; an unlinked conversation (or the
//! same one once unlinked) gets no such stickiness. Links are in the
//! customers topic (in the customer's partition) and on analytics, and a
//! rule matches the customer's attributes.

mod common;

use std::{
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
};
use switchboard_proto::v1::{
    AgentCapacity, AnalyticsRecord, AssignmentEvent, AssignmentOutcome, Channel, CustomerIdentity,
    CustomerLink, Envelope, Presence, agent_event::Change, assignment_event::Event,
    conversation_action::Action, customer_link::Action as Link, envelope::Content,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use switchboard_workers::{
    agents::{desk::Desk, queue_key, service::QueueStage},
    config::{AutoOffsetReset, WorkersConfig},
    customers::{CONVERSATIONS_ATTRIBUTE, link::record_key},
};

const RULES: &str = r#"
default = [{ agent = "support" }]

[[rules]]
id = "vip"
customer = { tier = "vip" }
destinations = [{ agent = "support" }]
"#;

fn follow(config: &WorkersConfig, topic: &str, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let records = Arc::new(Mutex::new(Vec::new()));
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
    let out = records.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.lock()
                    .unwrap()
                    .push(m.payload().unwrap_or_default().to_vec());
            }
        }
    });
    records
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text(channel: Channel, conversation: &str, body: &str) -> Envelope {
    Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        ..testkit::inbound_text(channel, conversation, body)
    }
}

fn link_event(channel: Channel, conversation: &str, link: CustomerLink) -> Envelope {
    let mut envelope = text(channel, conversation, "");
    envelope.content = Some(Content::Link(link));
    envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn the_sticky_agent_follows_a_linked_customer_across_channels_only() {
    let mut config = common::isolated("customers", 3);
    config.auto_offset_reset = AutoOffsetReset::Earliest;
    config.agents.enabled = true;
    config.agents.tick = Duration::from_millis(100);
    let rules =
        std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("customers-rules")));
    std::fs::write(&rules, RULES).unwrap();
    config.rules_file = Some(rules.clone());
    config.ensure_topics().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let assignments = follow(&config, &config.agents.assignments_topic, stop.clone());
    let analytics = follow(&config, &config.analytics_topic, stop.clone());
    let (routing, routed) = common::start(&config);
    let queue_stop = Shutdown::new();
    let queues = tokio::spawn(QueueStage::new(&config).unwrap().run(queue_stop.clone()));
    let queue = queue_key("acme", "support");
    let mut desks = Vec::new();
    for agent in ["alice", "bob"] {
        let desk = Desk::new(&config, agent).unwrap();
        let capacity = AgentCapacity {
            default: 5,
            ..Default::default()
        };
        desk.send(&queue, Change::Capacity(capacity)).await.unwrap();
        desk.send(&queue, Change::Presence(Presence::Online as i32))
            .await
            .unwrap();
        desks.push(desk);
        // alice is online (idle) longest.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let alice = &desks[0];
    let assigned = |key: &str, n: usize| {
        let records = assignments.lock().unwrap().clone();
        let mut seen = std::collections::HashSet::new();
        let found: Vec<(String, AssignmentOutcome, Vec<Envelope>)> = records
            .iter()
            .map(|r| AssignmentEvent::decode(r.as_slice()).unwrap())
            .filter(|e| e.conversation_key == key && seen.insert(e.assignment_id.clone()))
            .filter_map(|e| match e.event {
                Some(Event::Assigned(a)) => Some((e.agent_id, a.outcome(), a.messages)),
                _ => None,
            })
            .collect();
        (found.len() >= n).then_some(found)
    };
    let unassigned = |key: &str| {
        assignments
            .lock()
            .unwrap()
            .iter()
            .map(|r| AssignmentEvent::decode(r.as_slice()).unwrap())
            .any(|e| e.conversation_key == key && matches!(e.event, Some(Event::Unassigned(_))))
            .then_some(())
    };
    let publish = |envelopes: Vec<Envelope>| {
        let config = config.clone();
        async move {
            testkit::publish_envelopes(&config.kafka, &config.messages_topic, &envelopes).await
        }
    };
    let (ig, wa, other) = (
        "acme/instagram/ig-1",
        "acme/whatsapp/wa-1",
        "acme/whatsapp/wa-2",
    );

    // An agent merges Kim's Instagram and WhatsApp conversations.
    publish(vec![link_event(
        Channel::Instagram,
        "ig-1",
        CustomerLink {
            action: Link::Link as i32,
            other_channel: Channel::Whatsapp as i32,
            other_conversation_id: "wa-1".into(),
            customer_id: "cus-kim".into(),
            attributes: [("tier".to_owned(), "vip".to_owned())].into(),
            source: "agent".into(),
            ..Default::default()
        },
    )])
    .await;
    // Kim writes on Instagram: alice, idle longest, takes it, and her desk
    // shows Kim's WhatsApp conversation.
    publish(vec![text(Channel::Instagram, "ig-1", "where is my order?")]).await;
    let first = wait_for("ig-1 assigned", || assigned(ig, 1)).await;
    assert_eq!(first[0].0, "alice");
    assert_eq!(
        first[0].2.last().unwrap().attributes[CONVERSATIONS_ATTRIBUTE],
        wa
    );
    alice.act(&queue, ig, Action::Close).await.unwrap();
    wait_for("ig-1 closed", || unassigned(ig)).await;

    // Kim writes on WhatsApp: back to alice, although bob is idle longer.
    publish(vec![text(Channel::Whatsapp, "wa-1", "hello again")]).await;
    let second = wait_for("wa-1 assigned", || assigned(wa, 1)).await;
    assert_eq!(
        (second[0].0.as_str(), second[0].1),
        ("alice", AssignmentOutcome::StickyHit)
    );
    let shown = &second[0].2.last().unwrap().attributes;
    assert_eq!(
        (
            shown["customer"].as_str(),
            shown[CONVERSATIONS_ATTRIBUTE].as_str()
        ),
        ("cus-kim", ig)
    );

    // Another customer's conversation is no sticky hit for anyone.
    publish(vec![text(Channel::Whatsapp, "wa-2", "hi")]).await;
    let third = wait_for("wa-2 assigned", || assigned(other, 1)).await;
    assert_eq!(
        (third[0].0.as_str(), third[0].1),
        ("bob", AssignmentOutcome::Assigned),
        "least busy"
    );

    // Unlinked, wa-1 is a conversation of its own again.
    alice.act(&queue, wa, Action::Close).await.unwrap();
    wait_for("wa-1 closed", || unassigned(wa)).await;
    publish(vec![
        link_event(
            Channel::Whatsapp,
            "wa-1",
            CustomerLink {
                action: Link::Unlink as i32,
                source: "agent".into(),
                ..Default::default()
            },
        ),
        text(Channel::Whatsapp, "wa-1", "new question"),
    ])
    .await;
    let fourth = wait_for("wa-1 assigned again", || assigned(wa, 2)).await;
    assert_ne!(
        fourth[1].1,
        AssignmentOutcome::StickyHit,
        "no customer, no customer stickiness"
    );
    assert!(
        !fourth[1]
            .2
            .last()
            .unwrap()
            .attributes
            .contains_key("customer")
    );

    // The links are in the customers topic, in the customer's partition:
    // both recorded, then wa-1's deleted.
    let partition =
        switchboard_proto::partition::partition_for(b"cus-kim", config.kafka.topic_partitions);
    let mut links = Vec::new();
    switchboard_workers::compacted::read_partition(
        &config.kafka,
        &config.customers.topic,
        partition,
        |key, value| {
            links.push((
                key.to_owned(),
                value.map(|v| CustomerIdentity::decode(v).unwrap()),
            ));
        },
    )
    .unwrap();
    let keys: Vec<(&str, bool)> = links
        .iter()
        .map(|(k, v)| (k.as_str(), v.is_some()))
        .collect();
    assert_eq!(
        keys,
        [
            (record_key("cus-kim", ig).as_str(), true),
            (record_key("cus-kim", wa).as_str(), true),
            (record_key("cus-kim", wa).as_str(), false),
        ]
    );
    assert_eq!(links[0].1.as_ref().unwrap().source, "agent");

    // Every link and unlink is on analytics; the vip rule matched Kim.
    let decisions = wait_for("analytics", || {
        let decisions: Vec<(String, String, String, Option<String>)> = analytics
            .lock()
            .unwrap()
            .iter()
            .map(|r| AnalyticsRecord::decode(r.as_slice()).unwrap())
            .map(|r| {
                let (d, mut e) = (r.decision.unwrap(), r.envelope.unwrap());
                let customer = e.attributes.remove("customer");
                (e.conversation_key(), d.rule_id, d.reason, customer)
            })
            .collect();
        (decisions.iter().filter(|d| d.1 == "customer").count() >= 4).then_some(decisions)
    })
    .await;
    let customer: Vec<(&str, &str)> = decisions
        .iter()
        .filter(|d| d.1 == "customer")
        .map(|d| (d.0.as_str(), d.2.as_str()))
        .collect();
    assert!(
        customer.contains(&(
            ig,
            "linked to customer cus-kim with acme/whatsapp/wa-1 (by agent)"
        )),
        "{customer:?}"
    );
    assert!(
        customer.contains(&(wa, "joined customer cus-kim")),
        "{customer:?}"
    );
    assert!(
        customer.contains(&(wa, "unlinked from customer cus-kim (by agent)")),
        "{customer:?}"
    );
    assert!(
        customer.contains(&(ig, "acme/whatsapp/wa-1 left customer cus-kim")),
        "{customer:?}"
    );
    let rule_of = |key: &str| {
        decisions
            .iter()
            .filter(|d| d.0 == key && d.1 != "customer" && d.1 != "control")
            .map(|d| d.1.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(rule_of(ig), ["vip"]);
    // Analytics holds the message as routed: with its customer while linked.
    let routed_as: Vec<(&str, Option<&str>)> = decisions
        .iter()
        .filter(|d| d.1 == "vip" || d.1 == "default")
        .map(|d| (d.1.as_str(), d.3.as_deref()))
        .collect();
    assert!(
        routed_as.contains(&("vip", Some("cus-kim"))),
        "{routed_as:?}"
    );
    assert!(routed_as.contains(&("default", None)), "{routed_as:?}");
    assert_eq!(rule_of(other), ["default"]);
    assert_eq!(rule_of(wa), ["vip", "default"], "vip while linked only");

    stop.store(true, Ordering::Relaxed);
    queue_stop.cancel();
    routing.cancel();
    queues.await.unwrap().unwrap();
    routed.await.unwrap().unwrap();
    let _ = std::fs::remove_file(rules);
}
