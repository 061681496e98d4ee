use std::collections::HashSet;

use switchboard_proto::v1::{Channel, Direction, Envelope, Media, Text, envelope::Content};

use super::*;

const RULES: &str = r#"
default = [{ agent = "general" }]

[[rules]]
id = "acme-greetings"
channels = ["whatsapp", "webchat"]
tenants = ["acme"]
direction = "inbound"
content = ["text"]
keywords = ["Hello", "hi there"]
destinations = [{ bot = "echo" }]

[[rules]]
id = "media-to-humans"
content = ["media"]
destinations = [{ agent = "media" }, "analytics"]
"#;

fn bots() -> HashSet<&'static str> {
    HashSet::from(["echo"])
}

fn text(tenant: &str, channel: Channel, body: &str) -> Envelope {
    Envelope {
        tenant_id: tenant.into(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        conversation_id: "c".into(),
        content: Some(Content::Text(Text { body: body.into() })),
        ..Default::default()
    }
}

#[test]
fn first_matching_rule_wins_and_default_catches_the_rest() {
    let rules = RuleSet::parse(RULES, &bots()).unwrap();
    let d = rules.decide(&text("acme", Channel::Whatsapp, "well HELLO you"), false);
    assert_eq!((d.rule_id, d.matched), ("acme-greetings", true));
    assert_eq!(d.destinations, [DestinationSpec::Bot("echo".into())]);

    // Outbound messages match only outbound rules, and never the default.
    let outbound = rules.decide(
        &Envelope {
            direction: Direction::Outbound as i32,
            ..text("acme", Channel::Webchat, "hello")
        },
        false,
    );
    assert_eq!(
        (outbound.rule_id, outbound.matched, outbound.destinations),
        ("outbound", false, &[][..]),
        "no rule matched: counted as such, not as a rule"
    );

    // Wrong tenant, wrong channel, no keyword: all fall through to the default.
    for env in [
        text("other", Channel::Whatsapp, "hello"),
        text("acme", Channel::Sms, "hello"),
        text("acme", Channel::Webchat, "good morning"),
    ] {
        let d = rules.decide(&env, false);
        assert_eq!(d.rule_id, "default", "{env:?}");
        assert_eq!(d.destinations, [DestinationSpec::Agent("general".into())]);
    }

    let media = Envelope {
        content: Some(Content::Media(Media::default())),
        ..text("x", Channel::Sms, "")
    };
    let d = rules.decide(&media, false);
    assert_eq!(d.rule_id, "media-to-humans");
    assert_eq!(
        d.destinations,
        [
            DestinationSpec::Agent("media".into()),
            DestinationSpec::Analytics
        ]
    );
}

#[test]
fn empty_rules_send_everything_to_analytics() {
    let rules = RuleSet::parse("", &bots()).unwrap();
    let d = rules.decide(&text("acme", Channel::Sms, "x"), false);
    assert_eq!(
        (d.rule_id, d.destinations),
        ("default", &[DestinationSpec::Analytics][..])
    );
}

#[test]
fn errors_name_the_rule_and_field() {
    let cases = [
        (
            r#"[[rules]]
id = "a"
destinations = [{ bot = "nope" }]"#,
            "rule \"a\": field `destinations`",
        ),
        (
            r#"[[rules]]
id = "b"
channels = ["telegram"]
destinations = ["analytics"]"#,
            "rule \"b\": field `channels`",
        ),
        (
            r#"[[rules]]
id = "c"
direction = "sideways"
destinations = ["analytics"]"#,
            "rule \"c\": field `direction`",
        ),
        (
            r#"[[rules]]
id = "d"
content = ["hologram"]
destinations = ["analytics"]"#,
            "rule \"d\": field `content`",
        ),
        (
            r#"[[rules]]
id = "e"
destinations = []"#,
            "rule \"e\": field `destinations`",
        ),
        (
            r#"[[rules]]
id = "f"
destinations = ["analytics"]
[[rules]]
id = "f"
destinations = ["analytics"]"#,
            "rule \"f\": field `id`",
        ),
        (
            r#"[[rules]]
id = "g"
keywords = [" "]
destinations = ["analytics"]"#,
            "rule \"g\": field `keywords`",
        ),
        (
            r#"[[rules]]
id = "h"
colour = "red"
destinations = ["analytics"]"#,
            "unknown field `colour`",
        ),
    ];
    for (text, expected) in cases {
        let err = RuleSet::parse(text, &bots()).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
    }
}

#[test]
fn lists_the_bots_it_needs() {
    let rules = RuleSet::parse(RULES, &bots()).unwrap();
    assert_eq!(rules.bots().collect::<Vec<_>>(), ["echo"]);
}

#[test]
fn regex_language_referral_and_business_hours() {
    let rules = RuleSet::parse(
        r#"
default = ["analytics"]

[calendars.support]
timezone = "America/New_York"
mon = ["09:00-17:00"]

[[rules]]
id = "order-numbers"
regex = ['(?i)order\s+#\d+']
destinations = [{ agent = "orders" }]

[[rules]]
id = "spanish"
languages = ["es"]
destinations = [{ agent = "es" }]

[[rules]]
id = "from-ads"
referral_sources = ["ads"]
destinations = [{ bot = "echo" }]

[[rules]]
id = "after-hours"
when_closed = "support"
destinations = [{ bot = "echo" }]
"#,
        &bots(),
    )
    .unwrap();
    // Monday 2026-11-23 15:00 UTC is 10:00 in New York: open.
    let open = Some(switchboard_proto::Timestamp {
        seconds: 1_795_446_000,
        nanos: 0,
    });
    let at = |e: Envelope, ts: Option<switchboard_proto::Timestamp>| Envelope {
        received_at: ts,
        ..e
    };
    let id = |e: Envelope| rules.decide(&e, false).rule_id.to_owned();

    assert_eq!(
        id(at(text("a", Channel::Sms, "where is Order  #123?"), open)),
        "order-numbers"
    );
    assert_eq!(id(at(text("a", Channel::Sms, "order #x"), open)), "default");
    let mut es = at(text("a", Channel::Sms, "hola"), open);
    es.attributes.insert("language".into(), "es-MX".into());
    assert_eq!(id(es.clone()), "spanish");
    es.attributes.insert("language".into(), "est".into());
    assert_eq!(id(es), "default", "es does not match est");
    let mut ad = at(text("a", Channel::Messenger, "hi"), open);
    ad.referral = Some(switchboard_proto::v1::Referral {
        source: "ADS".into(),
        ..Default::default()
    });
    assert_eq!(id(ad), "from-ads");
    // Eight hours later it is 18:00 in New York: closed.
    let closed = Some(switchboard_proto::Timestamp {
        seconds: 1_795_446_000 + 8 * 3600,
        nanos: 0,
    });
    assert_eq!(
        id(at(text("a", Channel::Sms, "hello"), closed)),
        "after-hours"
    );
    assert_eq!(id(at(text("a", Channel::Sms, "hello"), open)), "default");
}

#[test]
fn new_fields_are_validated_with_rule_and_field() {
    for (text, expected) in [
        (
            "[[rules]]\nid = \"r\"\nregex = [\"(\"]\ndestinations = [\"analytics\"]",
            "rule \"r\": field `regex`",
        ),
        (
            "[[rules]]\nid = \"h\"\nwhen_open = \"nope\"\ndestinations = [\"analytics\"]",
            "rule \"h\": field `when_open`",
        ),
        (
            "[calendars.c]\ntimezone = \"UTC\"\n[[rules]]\nid = \"b\"\nwhen_open = \"c\"\nwhen_closed = \"c\"\ndestinations = [\"analytics\"]",
            "rule \"b\": field `when_open`",
        ),
        (
            "[calendars.c]\ntimezone = \"Nowhere/Land\"\n",
            "calendars.c",
        ),
    ] {
        let err = RuleSet::parse(text, &bots()).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
    }
}

#[test]
fn outbound_rules_and_owner_rules_match_only_their_own() {
    let rules = RuleSet::parse(
        r#"
default = [{ bot = "echo" }]

[[rules]]
id = "owned-by-humans"
owner = "human"
destinations = [{ agent = "owned" }]

[[rules]]
id = "copy-agent-replies"
direction = "outbound"
content = ["text"]
destinations = [{ agent = "qa" }]
"#,
        &bots(),
    )
    .unwrap();
    let inbound = text("acme", Channel::Webchat, "hi");
    assert_eq!(rules.decide(&inbound, false).rule_id, "default");
    assert_eq!(rules.decide(&inbound, true).rule_id, "owned-by-humans");
    let outbound = Envelope {
        direction: Direction::Outbound as i32,
        ..inbound
    };
    let d = rules.decide(&outbound, true);
    assert_eq!(
        d.rule_id, "copy-agent-replies",
        "inbound rules never match outbound"
    );
    assert_eq!(d.destinations, [DestinationSpec::Agent("qa".into())]);
    let err = RuleSet::parse(
        "[[rules]]\nid = \"x\"\nowner = \"robot\"\ndestinations = [\"analytics\"]\n",
        &bots(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rule \"x\": field `owner`"), "{err}");
}

#[test]
fn tenant_and_channel_rules_keep_file_order() {
    let rules = RuleSet::parse(
        r#"
[[rules]]
id = "acme-sms"
tenants = ["acme", "acme"]
channels = ["sms", "sms"]
keywords = ["refund"]
destinations = [{ agent = "refunds" }]

[[rules]]
id = "anyone"
keywords = ["refund", "hello"]
destinations = [{ agent = "all" }]

[[rules]]
id = "acme-anywhere"
tenants = ["acme"]
destinations = [{ agent = "acme" }]
"#,
        &bots(),
    )
    .unwrap();
    let id = |tenant, channel, body| rules.decide(&text(tenant, channel, body), false).rule_id;
    assert_eq!(id("acme", Channel::Sms, "refund please"), "acme-sms");
    assert_eq!(id("acme", Channel::Webchat, "refund please"), "anyone");
    assert_eq!(id("acme", Channel::Sms, "hello"), "anyone");
    assert_eq!(id("acme", Channel::Sms, "bye"), "acme-anywhere");
    assert_eq!(id("globex", Channel::Sms, "refund"), "anyone");
    assert_eq!(id("globex", Channel::Sms, "bye"), "default");
    let unknown_channel = Envelope {
        channel: 42,
        ..text("acme", Channel::Sms, "refund")
    };
    assert_eq!(rules.decide(&unknown_channel, false).rule_id, "anyone");
}

/// The index only narrows which rules a message tries: for any rules and
/// any message, `decide` says what trying every rule in file order says.
mod index_agrees_with_linear {
    use proptest::{collection::vec, option, prelude::*, sample::select};
    use switchboard_proto::v1::{Location, Referral, StatusReceipt};

    use super::*;

    const TENANTS: &[&str] = &["acme", "globex", "", "ACME"];
    const CHANNELS: &[&str] = &["whatsapp", "messenger", "instagram", "sms", "webchat"];
    const KINDS: &[&str] = &["text", "media", "location", "status"];
    const KEYWORDS: &[&str] = &["hi", "Hello", "order", "ÉTÉ", "refund 7", "İ"];
    const REGEXES: &[&str] = &["^h", r"\d+", "(?i)ORDER"];
    const LANGUAGES: &[&str] = &["en", "es", "en-us"];
    const SOURCES: &[&str] = &["ADS", "shortlink"];
    const WORDS: &[&str] = &[
        "hi", "HELLO", "order", "été", "refund 7", "x", "42", "Ordering", "h", "i̇", "İ",
    ];
    /// Monday 2026-11-23 00:00 UTC.
    const MONDAY: i64 = 1_795_392_000;

    /// Usually nothing, sometimes one or two of `pool`.
    fn sometimes(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
        prop_oneof![3 => Just(Vec::new()), 1 => vec(select(pool), 1..3)]
    }

    /// One `[[rules]]` table (without id and destinations).
    fn rule() -> impl Strategy<Value = String> {
        (
            // Duplicates included: a tenant or channel listed twice.
            vec(select(TENANTS), 0..3),
            vec(select(CHANNELS), 0..3),
            select(&[None, Some("inbound"), Some("outbound")][..]),
            sometimes(KINDS),
            sometimes(KEYWORDS),
            sometimes(REGEXES),
            sometimes(LANGUAGES),
            sometimes(SOURCES),
            select(&[None, Some("bot"), Some("human")][..]),
            select(&[None, Some("when_open"), Some("when_closed")][..]),
        )
            .prop_map(
                |(
                    tenants,
                    channels,
                    direction,
                    content,
                    keywords,
                    regex,
                    languages,
                    sources,
                    owner,
                    hours,
                )| {
                    let mut table = format!(
                        "tenants = {tenants:?}\nchannels = {channels:?}\ncontent = {content:?}\n\
                         keywords = {keywords:?}\nregex = {regex:?}\nlanguages = {languages:?}\n\
                         referral_sources = {sources:?}\n"
                    );
                    if let Some(direction) = direction {
                        table += &format!("direction = {direction:?}\n");
                    }
                    if let Some(owner) = owner {
                        table += &format!("owner = {owner:?}\n");
                    }
                    if let Some(hours) = hours {
                        table += &format!("{hours} = \"office\"\n");
                    }
                    table
                },
            )
    }

    fn rules_file() -> impl Strategy<Value = String> {
        vec(rule(), 0..40).prop_map(|rules| {
            let mut text = String::from(
                "default = [{ agent = \"general\" }]\n\
                 [calendars.office]\ntimezone = \"UTC\"\nmon = [\"09:00-17:00\"]\n",
            );
            for (i, table) in rules.iter().enumerate() {
                text += &format!(
                    "[[rules]]\nid = \"r{i}\"\n{table}destinations = [{{ agent = \"q{i}\" }}]\n"
                );
            }
            text
        })
    }

    fn content() -> impl Strategy<Value = Option<Content>> {
        prop_oneof![
            vec(select(WORDS), 0..4).prop_map(|words| Some(Content::Text(Text {
                body: words.join(" ")
            }))),
            Just(Some(Content::Media(Media::default()))),
            Just(Some(Content::Location(Location::default()))),
            Just(Some(Content::Status(StatusReceipt::default()))),
            Just(None),
        ]
    }

    prop_compose! {
        fn envelope()(
            tenant in select(&["acme", "globex", "", "ACME", "other"][..]),
            // Past the last channel and direction: unknown values.
            channel in 0..7i32,
            direction in 0..4i32,
            content in content(),
            language in option::of(select(&["en", "EN-us", "es", "est", "fr"][..])),
            source in option::of(select(&["ads", "SHORTLINK", "other"][..])),
            // Monday, open and closed hours.
            minutes in 0..24 * 60i64,
        ) -> Envelope {
            Envelope {
                tenant_id: tenant.into(),
                channel,
                direction,
                content,
                attributes: language
                    .map(|l| ("language".to_owned(), l.to_owned()))
                    .into_iter()
                    .collect(),
                referral: source.map(|s| Referral { source: s.into(), ..Default::default() }),
                received_at: Some(switchboard_proto::Timestamp {
                    seconds: MONDAY + minutes * 60,
                    nanos: 0,
                }),
                ..Default::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn same_decision(
            text in rules_file(),
            envelopes in vec((envelope(), any::<bool>()), 1..16),
        ) {
            let rules = RuleSet::parse(&text, &bots()).unwrap();
            for (envelope, human_owned) in &envelopes {
                let indexed = rules.decide(envelope, *human_owned);
                let linear = rules.decide_linear(envelope, *human_owned);
                prop_assert_eq!(
                    (indexed.rule_id, indexed.matched, indexed.destinations),
                    (linear.rule_id, linear.matched, linear.destinations),
                    "{:?}", envelope
                );
            }
        }
    }
}

#[test]
fn customer_attributes_of_linked_conversations_match() {
    let rules = RuleSet::parse(
        r#"
default = ["analytics"]

[[rules]]
id = "vip"
customer = { tier = "vip", region = "eu" }
destinations = [{ agent = "vip" }]
"#,
        &bots(),
    )
    .unwrap();
    let mut message = text("acme", Channel::Whatsapp, "hello");
    message
        .attributes
        .insert("customer.tier".into(), "vip".into());
    assert_eq!(
        rules.decide(&message, false).rule_id,
        "default",
        "every one must match"
    );
    message
        .attributes
        .insert("customer.region".into(), "eu".into());
    assert_eq!(rules.decide(&message, false).rule_id, "vip");
    message
        .attributes
        .insert("customer.tier".into(), "basic".into());
    assert_eq!(rules.decide(&message, false).rule_id, "default");
}
