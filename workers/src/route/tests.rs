use super::{decide::push_new, *};
use crate::rules::DestinationSpec;

#[test]
fn an_agent_queue_nobody_configured_is_the_default_queue() {
    let mut config = WorkersConfig::default();
    config.agents.queues.insert(
        "vip".into(),
        crate::agents::config::QueueConfig {
            overflow_queue: Some("tier2".into()),
            ..Default::default()
        },
    );
    let router = Router::new(&config).unwrap();
    for known in ["vip", "tier2", "support"] {
        assert_eq!(router.queue_for(known), known);
    }
    for made_up in ["made-up-1", "made-up-2", "VIP", ""] {
        assert_eq!(router.queue_for(made_up), "support", "{made_up:?}");
    }
}

#[test]
fn a_destination_named_twice_is_delivered_once() {
    let mut targets = Vec::new();
    let queue = || DestinationSpec::Agent("support".into());
    // A human-owned bot destination becomes the queue the rule names too.
    for spec in [queue(), DestinationSpec::Analytics, queue()] {
        push_new(&mut targets, spec);
    }
    assert_eq!(targets, [queue(), DestinationSpec::Analytics]);
}
