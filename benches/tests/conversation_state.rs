//! Conversation state on the real local Kafka: bot → human handoff and
//! release, checked through the destinations and the state topic, across a
//! worker restart; and consent rules for outbound messages.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;
use rdkafka::{Message as _, message::OwnedMessage};
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{
    AnalyticsRecord, Channel, ConsentEvent, ConversationControl, ConversationState, Direction,
    Envelope, MessageTag, Owner, PublishRequest, Rejection, RejectionReason, Template, Text,
    consent_event::Action as Consent, conversation_control::Action as Control, envelope::Content,
    ingest_client::IngestClient,
};
use switchboard_testkit::{self as testkit, RecordingBot, text_of};
use tonic::transport::Channel as GrpcChannel;

fn envelope(
    channel: Channel,
    direction: Direction,
    conversation: &str,
    content: Content,
) -> Envelope {
    Envelope {
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: direction as i32,
        conversation_id: conversation.into(),
        content: Some(content),
        ..Default::default()
    }
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

async fn publish(client: &mut IngestClient<GrpcChannel>, envelope: Envelope) {
    client
        .publish(PublishRequest {
            envelope: Some(envelope),
            sequence: 0,
        })
        .await
        .expect("publish");
}

async fn read(
    bootstrap: &str,
    topic: &str,
    until: impl Fn(&[OwnedMessage]) -> bool + Send + 'static,
) -> Vec<OwnedMessage> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), until)
    })
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rules_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic(name)));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn bot_hands_off_to_a_human_and_gets_the_conversation_back() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 4), "test.handoff");
    config.bot_name = "helper".into();
    // Queues are per tenant, and a name no config knows goes to the default.
    config
        .agents
        .queues
        .insert("vip".into(), Default::default());
    let rules = rules_file("handoff-rules", "default = [{ bot = \"helper\" }]\n");
    config.rules_file = Some(rules.clone());
    config.create_topics().await.unwrap();
    let say = |body: &str| {
        envelope(
            Channel::Webchat,
            Direction::Inbound,
            "visitor-1",
            text(body),
        )
    };

    let bot = RecordingBot::handing_off("human please", "vip");
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let mut client = pipeline.client().await.unwrap();
    publish(&mut client, say("hi")).await;
    publish(&mut client, say("human please")).await;
    wait_for("the bot to see two messages", || bot.count() == 2).await;
    // Restart the workers: the next owner must learn the handoff from Kafka.
    pipeline.stop().await.unwrap();

    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let mut client = pipeline.client().await.unwrap();
    publish(&mut client, say("is anyone there?")).await;
    let agents = config.agent_queue_topic.clone();
    let tasks = read(&bootstrap, &agents, |r| r.len() >= 2).await;
    let handoff = testkit::agent_task(tasks[0].payload().unwrap());
    assert_eq!(
        handoff.queue, "acme/vip",
        "the bot's handoff queue, the tenant's own"
    );
    assert_eq!(
        text_of(handoff.envelope.as_ref().unwrap()),
        "human please",
        "the message that asked for a human is the first task"
    );
    let task = testkit::agent_task(tasks[1].payload().unwrap());
    assert_eq!(text_of(task.envelope.as_ref().unwrap()), "is anyone there?");
    assert!(
        task.decision.unwrap().reason.contains("human-owned"),
        "the decision says why"
    );

    // An agent desk releases the conversation; it goes back to the bot.
    let release = envelope(
        Channel::Webchat,
        Direction::Outbound,
        "visitor-1",
        Content::Control(ConversationControl {
            action: Control::Release as i32,
            reason: "resolved".into(),
            ..Default::default()
        }),
    );
    publish(&mut client, release).await;
    publish(&mut client, say("thanks, one more question")).await;
    wait_for("the bot to get the conversation back", || bot.count() == 3).await;
    let seen: Vec<String> = bot.seen().iter().map(|e| text_of(e).to_owned()).collect();
    assert_eq!(seen, ["hi", "human please", "thanks, one more question"]);
    assert_eq!(
        testkit::topic_size(&bootstrap, &config.agent_queue_topic),
        2,
        "only the handoff and the message sent while human-owned went to the agents"
    );

    // The state topic tells the same story, in order. States are written
    // behind, once per conversation per flush: changes made within one
    // flush interval share a record, so only the distinct steps count.
    let state_topic = config.state_topic.clone();
    let bot_owned = (Owner::Bot, String::new(), String::new());
    let last_is_bot_owned = |records: &[rdkafka::message::OwnedMessage]| {
        records
            .last()
            .map(|m| ConversationState::decode(m.payload().unwrap()).unwrap())
            .is_some_and(|s| s.owner() == Owner::Bot)
    };
    let states = read(&bootstrap, &state_topic, last_is_bot_owned).await;
    let key = say("").conversation_key();
    let mut owners: Vec<(Owner, String, String)> = states
        .iter()
        .filter(|m| m.key() == Some(key.as_bytes()))
        .map(|m| ConversationState::decode(m.payload().unwrap()).unwrap())
        .map(|s| (s.owner(), s.queue.clone(), s.handoff_from.clone()))
        .collect();
    owners.dedup();
    // "hi" alone may have had a flush of its own, before the handoff.
    if owners.first().is_some_and(|o| o.0 == Owner::Unspecified) {
        owners.remove(0);
    }
    let human = (Owner::Human, "vip".to_owned(), "helper".to_owned());
    assert_eq!(owners, [human, bot_owned]);
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_file(rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn consent_rules_decide_which_outbound_messages_are_sent() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 4), "test.consent");
    let rules = rules_file("consent-rules", "default = [\"analytics\"]\n");
    config.rules_file = Some(rules.clone());
    config.create_topics().await.unwrap();
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let mut client = pipeline.client().await.unwrap();

    let hours_ago = |h: u64| {
        Some(switchboard_proto::timestamp(
            SystemTime::now() - Duration::from_secs(h * 3600),
        ))
    };
    let inbound = |channel, conversation: &str, ago: u64| Envelope {
        sent_at: hours_ago(ago),
        ..envelope(channel, Direction::Inbound, conversation, text("hello"))
    };
    let reply = |channel, conversation: &str, body: &str| {
        envelope(channel, Direction::Outbound, conversation, text(body))
    };
    let template = |channel, conversation: &str| {
        envelope(
            channel,
            Direction::Outbound,
            conversation,
            Content::Template(Template {
                name: "order_update".into(),
                ..Default::default()
            }),
        )
    };
    let consent = |action: Consent| {
        envelope(
            Channel::Sms,
            Direction::Inbound,
            "+15550001111",
            Content::Consent(ConsentEvent {
                action: action as i32,
                keyword: "STOP".into(),
            }),
        )
    };
    use Channel::{Messenger, Sms, Whatsapp};
    let script = vec![
        // Inside the 24 h window.
        inbound(Whatsapp, "inside", 1),
        reply(Whatsapp, "inside", "inside: sent"),
        // Outside it: free-form refused, a template sent.
        inbound(Whatsapp, "outside", 25),
        reply(Whatsapp, "outside", "outside: refused"),
        template(Whatsapp, "outside"),
        // Never wrote in.
        reply(Whatsapp, "stranger", "stranger: refused"),
        // Messenger, 3 days: HUMAN_AGENT is allowed 7 days, untagged is not.
        inbound(Messenger, "agent", 72),
        Envelope {
            tag: MessageTag::HumanAgent as i32,
            ..reply(Messenger, "agent", "agent: sent")
        },
        reply(Messenger, "agent", "agent: refused"),
        // SMS: opt out, then back in.
        inbound(Sms, "+15550001111", 1),
        consent(Consent::OptOut),
        reply(Sms, "+15550001111", "sms: refused"),
        template(Sms, "+15550001111"),
        consent(Consent::OptIn),
        reply(Sms, "+15550001111", "sms: sent"),
    ];
    for message in script {
        publish(&mut client, message).await;
    }

    let rejections_topic = config.rejections_topic.clone();
    let rejections = read(&bootstrap, &rejections_topic, |r| r.len() >= 5).await;
    let mut refused: HashMap<String, RejectionReason> = rejections
        .iter()
        .map(|m| Rejection::decode(m.payload().unwrap()).unwrap())
        .map(|r| {
            let e = r.envelope.as_ref().unwrap();
            let what = match &e.content {
                Some(Content::Template(_)) => format!("{}: template", e.conversation_id),
                _ => text_of(e).to_owned(),
            };
            (what, r.reason())
        })
        .collect();
    let expected = [
        ("outside: refused", RejectionReason::OutsideWindow),
        ("stranger: refused", RejectionReason::NoInbound),
        ("agent: refused", RejectionReason::OutsideWindow),
        ("sms: refused", RejectionReason::OptedOut),
        ("+15550001111: template", RejectionReason::OptedOut),
    ];
    for (what, reason) in expected {
        assert_eq!(refused.remove(what), Some(reason), "{what}");
    }
    assert!(refused.is_empty(), "nothing else refused: {refused:?}");

    // What was allowed reached the channels' outbound topics.
    let mut sent = Vec::new();
    for channel in [Whatsapp, Messenger, Sms] {
        let topic = config
            .workers_config(pipeline.bot_addr)
            .outbound_topic(channel);
        let want = if channel == Whatsapp { 2 } else { 1 };
        for m in read(&bootstrap, &topic, move |r| r.len() >= want).await {
            let e = Envelope::decode(m.payload().unwrap()).unwrap();
            sent.push(match &e.content {
                Some(Content::Template(_)) => format!("{}: template", e.conversation_id),
                _ => text_of(&e).to_owned(),
            });
        }
    }
    sent.sort();
    assert_eq!(
        sent,
        [
            "agent: sent",
            "inside: sent",
            "outside: template",
            "sms: sent"
        ]
    );

    // Analytics has every message, refused ones with the reason.
    let analytics_topic = config.analytics_topic.clone();
    let analytics = read(&bootstrap, &analytics_topic, |r| r.len() >= 15).await;
    assert_eq!(analytics.len(), 15);
    let refusal = analytics
        .iter()
        .map(|m| AnalyticsRecord::decode(m.payload().unwrap()).unwrap())
        .find(|r| text_of(r.envelope.as_ref().unwrap()) == "stranger: refused")
        .unwrap()
        .decision
        .unwrap();
    assert_eq!(refusal.rule_id, "consent");
    assert!(refusal.reason.contains("no_inbound"), "{}", refusal.reason);
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_file(rules);
}
