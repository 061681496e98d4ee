//! The full loop on the real local Kafka: the customer talks to a bot, the
//! bot hands off, an agent is assigned and accepts, the customer's next
//! message reaches the agent, the agent replies (OUTBOUND, `HUMAN_AGENT`)
//! and releases the conversation, and the bot answers again.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::{Duration, Instant};

use clap::Parser as _;
use prost::Message as _;
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{
    Channel, ConversationState, Direction, Envelope, MessageTag, Owner, Presence, PublishRequest,
    agent_event::Change, conversation_action::Action,
};
use switchboard_testkit::{self as testkit, RecordingBot, text_of};
use switchboard_workers::agents::{
    desk::{self, Desk, DeskView},
    desk_cli,
};

fn say(body: &str) -> Envelope {
    testkit::inbound_text(Channel::Messenger, "psid-1", body)
}

/// The owner in a conversation-state record of conversation `key`.
fn owner(record: &rdkafka::message::OwnedMessage, key: &str) -> Option<Owner> {
    use rdkafka::Message as _;
    (record.key() == Some(key.as_bytes())).then(|| {
        ConversationState::decode(record.payload().unwrap())
            .unwrap()
            .owner()
    })
}

/// Polls the agent's view until `check` passes.
async fn wait_for_view(
    desk: Desk,
    what: &str,
    check: impl Fn(&DeskView) -> bool,
) -> (Desk, DeskView) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut desk = desk;
    loop {
        let (view, back) = tokio::task::spawn_blocking(move || (desk.held().unwrap(), desk))
            .await
            .unwrap();
        desk = back;
        if check(&view) {
            return (desk, view);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn bot_hands_off_agent_replies_and_releases_back_to_the_bot() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 3), "test.desk");
    config.bot_name = "helper".into();
    let rules = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("desk-rules")));
    std::fs::write(&rules, "default = [{ bot = \"helper\" }]\n").unwrap();
    config.rules_file = Some(rules);
    config.agents.tick = Duration::from_millis(100);
    config.create_topics().await.unwrap();
    let bot = RecordingBot::handing_off("human please", "support");
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let workers = config.workers_config(pipeline.bot_addr);
    let alice = Desk::new(&workers, "alice").unwrap();
    alice
        .send("acme/support", Change::Presence(Presence::Online as i32))
        .await
        .unwrap();

    let mut client = pipeline.client().await.unwrap();
    let publish = |e: Envelope| PublishRequest {
        envelope: Some(e),
        sequence: 0,
    };
    client.publish(publish(say("hi"))).await.unwrap();
    client.publish(publish(say("human please"))).await.unwrap();
    let key = say("").conversation_key();

    // Alice is offered the conversation with the message that asked for her.
    let (alice, view) = wait_for_view(alice, "the assignment", |v| {
        v.conversations.contains_key(&key)
    })
    .await;
    let held = &view.conversations[&key];
    assert_eq!(held.queue, "acme/support", "the tenant's own queue");
    assert_eq!(text_of(&held.messages[0]), "human please");
    alice
        .act("acme/support", &key, Action::Accept)
        .await
        .unwrap();

    // The customer's next message goes to alice, not the bot.
    client
        .publish(publish(say("my order is late")))
        .await
        .unwrap();
    let (alice, view) = wait_for_view(alice, "the next message", |v| {
        v.conversations
            .get(&key)
            .is_some_and(|h| h.messages.iter().any(|m| text_of(m) == "my order is late"))
    })
    .await;
    assert_eq!(
        bot.count(),
        2,
        "the bot saw only the messages before the handoff"
    );

    // Alice replies with the desk's command line, through the ingestion
    // node, as an OUTBOUND HUMAN_AGENT message.
    let last = view.conversations[&key].messages.last().unwrap();
    assert_eq!(
        desk::reply_to(last, String::new()).tag(),
        MessageTag::HumanAgent
    );
    let workers_file =
        std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("desk-config")));
    std::fs::write(&workers_file, toml::to_string(&workers).unwrap()).unwrap();
    let broker_url = format!("http://{}", pipeline.grpc_addr);
    let args = desk_cli::Args::try_parse_from([
        "switchboard-desk",
        "--tenant",
        "acme",
        "--agent",
        "alice",
        "--config",
        workers_file.to_str().unwrap(),
        "reply",
        &key,
        "Sorry! It ships today.",
        "--broker",
        &broker_url,
    ])
    .unwrap();
    desk_cli::run(args).await.unwrap();
    let outbound = workers.outbound_topic(Channel::Messenger);
    let sent = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || {
            testkit::read_topic(&bootstrap, &outbound, Duration::from_secs(60), |r| {
                !r.is_empty()
            })
        }
    })
    .await
    .unwrap();
    let sent = Envelope::decode(rdkafka::Message::payload(&sent[0]).unwrap()).unwrap();
    assert_eq!(
        (text_of(&sent), sent.direction(), sent.tag()),
        (
            "Sorry! It ships today.",
            Direction::Outbound,
            MessageTag::HumanAgent
        ),
        "consent allowed the reply onto Messenger's outbound topic"
    );

    // Alice releases: the conversation goes back to the bot.
    alice
        .act("acme/support", &key, Action::Release)
        .await
        .unwrap();
    let (_alice, _) = wait_for_view(alice, "the release", |v| v.conversations.is_empty()).await;
    // The release reaches the conversation stage through the messages
    // topic: the conversation's state says the bot owns it again.
    let (state_topic, state_key) = (config.state_topic.clone(), key.clone());
    let states = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &state_topic, Duration::from_secs(60), |r| {
            r.iter().any(|m| owner(m, &state_key) == Some(Owner::Bot))
        })
    })
    .await
    .unwrap();
    let owners: Vec<Owner> = states.iter().filter_map(|m| owner(m, &key)).collect();
    assert_eq!(
        owners.last(),
        Some(&Owner::Bot),
        "released back to the bot: {owners:?}"
    );
    assert!(owners.contains(&Owner::Human));
    client.publish(publish(say("thanks!"))).await.unwrap();
    wait_for("the bot to get the conversation back", || bot.count() == 3).await;
    let seen: Vec<String> = bot.seen().iter().map(|e| text_of(e).to_owned()).collect();
    assert_eq!(&seen[..2], ["hi", "human please"]);
    assert_eq!(seen[2], "thanks!");
    pipeline.stop().await.unwrap();
}
