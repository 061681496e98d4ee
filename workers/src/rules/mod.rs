//! Routing rules: which destinations a message goes to, and why.
//!
//! Rules live in a TOML file and are checked when loaded, with errors that
//! name the rule and the field. The first rule that matches wins; a message
//! no rule matches goes to `default`, never nowhere.
//!
//! ```toml
//! # Where messages go when no rule matches.
//! default = [{ agent = "general" }]
//!
//! [[rules]]
//! id = "greetings"                  # unique, shows up in every RouteDecision
//! channels = ["whatsapp", "webchat"]  # any of; empty or absent = all
//! tenants = ["acme"]                # any of
//! direction = "inbound"             # inbound (the default) | outbound
//! content = ["text"]                # text, media, location, interactive_reply,
//!                                   # reaction, order, postback, status, template
//! keywords = ["hello", "hi"]        # any of, case-insensitive substring of the text
//! regex = ["(?i)order #\\d+"]        # any of, on the text
//! languages = ["en"]                # the `language` attribute; `en` matches `en-US`
//! referral_sources = ["ADS"]        # the referral's source
//! customer = { tier = "vip" }       # attributes of the linked customer
//! owner = "bot"                     # bot | human: who owns the conversation
//! when_open = "support"             # or when_closed: a calendar below
//! destinations = [{ bot = "echo" }, { agent = "sales" }, "analytics"]
//!
//! [calendars.support]
//! timezone = "Europe/Paris"
//! mon = ["09:00-18:00"]             # days not listed are closed
//! ```

use std::{
    cell::OnceCell,
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use serde::Deserialize;
use switchboard_proto::v1::{Channel, Direction, Envelope, envelope::Content};

mod calendar;
mod index;
#[cfg(test)]
mod tests;

use index::Index;

pub use calendar::{Calendar, CalendarSpec};

/// Where a rule sends a message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DestinationSpec {
    /// A bot, by its name in the worker config's `bots`.
    Bot(String),
    /// A human-agent queue, by name.
    Agent(String),
    /// Analytics only.
    Analytics,
    /// The channel's outbound topic. Not for rules files: every allowed
    /// `OUTBOUND` message goes there.
    #[serde(skip)]
    Outbound,
}

/// Content kinds a rule may match on.
pub const CONTENT_KINDS: &[&str] = &[
    "text",
    "media",
    "location",
    "interactive_reply",
    "reaction",
    "order",
    "postback",
    "status",
    "template",
    "unsupported",
    "system",
    "consent",
    "deletion",
    "attachments",
    "handover",
    "control",
];

/// One rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id, recorded in every decision this rule makes.
    pub id: String,
    /// Channels (`whatsapp`, `messenger`, `instagram`, `sms`, `webchat`); empty matches all.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Tenant ids; empty matches all.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// `inbound` or `outbound`; absent means inbound. `OUTBOUND` messages
    /// (bot, agent and business sends) always go to the channel's outbound
    /// topic once consent allows; only rules that say `outbound` route them
    /// anywhere else, and the default never does.
    #[serde(default)]
    pub direction: Option<String>,
    /// Content kinds (see [`CONTENT_KINDS`]); empty matches all.
    #[serde(default)]
    pub content: Vec<String>,
    /// Case-insensitive substrings of the text body; any one matches. Empty matches all.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Regular expressions on the text body; any one matches. Empty matches all.
    #[serde(default)]
    pub regex: Vec<String>,
    /// Languages (the `language` attribute, e.g. `en` also matches `en-US`); empty matches all.
    #[serde(default)]
    pub languages: Vec<String>,
    /// Referral sources (`ADS`, `SHORTLINK`, ...; case-insensitive); empty matches all.
    #[serde(default)]
    pub referral_sources: Vec<String>,
    /// Customer attributes (of a conversation linked to a customer, e.g.
    /// `{ tier = "vip" }`); all must match. Empty matches all.
    #[serde(default)]
    pub customer: BTreeMap<String, String>,
    /// `bot` or `human`: who owns the conversation (a conversation no one
    /// handed off is bot-owned); absent matches both.
    #[serde(default)]
    pub owner: Option<String>,
    /// Matches only while this calendar is open (at the message's `received_at`).
    #[serde(default)]
    pub when_open: Option<String>,
    /// Matches only while this calendar is closed (at the message's `received_at`).
    #[serde(default)]
    pub when_closed: Option<String>,
    /// Where matching messages go.
    pub destinations: Vec<DestinationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default = "default_destinations")]
    default: Vec<DestinationSpec>,
    #[serde(default)]
    calendars: BTreeMap<String, CalendarSpec>,
    #[serde(default)]
    rules: Vec<Rule>,
}

fn default_destinations() -> Vec<DestinationSpec> {
    vec![DestinationSpec::Analytics]
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
struct Compiled {
    rule: Rule,
    channels: Vec<Channel>,
    direction: Option<Direction>,
    /// The content kinds, one bit per [`CONTENT_KINDS`] entry; 0 = all.
    content: u32,
    /// Whether the rule wants human-owned (true) or bot-owned conversations.
    human_owned: Option<bool>,
    keywords: Vec<String>,
    regex: Vec<regex::Regex>,
    languages: Vec<String>,
    /// The calendar, and whether the rule wants it open (true) or closed.
    hours: Option<(Arc<Calendar>, bool)>,
}

/// A problem in a rules file, naming the rule and field.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("rules file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// A rule has a bad field.
    #[error("rule {rule:?}: field `{field}`: {problem}")]
    Invalid {
        /// The rule id (or its position when it has none).
        rule: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// What routing decided for one message.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The id of the rule that matched, or `default` (`outbound` for an
    /// outbound message) when none did.
    pub rule_id: &'a str,
    /// Whether a rule matched.
    pub matched: bool,
    /// Where the message goes.
    pub destinations: &'a [DestinationSpec],
}

/// A validated set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    default: Vec<DestinationSpec>,
    rules: Vec<Compiled>,
    /// The rules by direction, channel and tenant, so a message tries only
    /// the ones that can match it.
    index: Index,
    /// When rules list keywords: a message whose text contains none of
    /// them tries only the rules without keywords.
    keywords: Option<KeywordGate>,
}

/// Every keyword of every rule, checked once per message.
#[derive(Debug, Clone)]
struct KeywordGate {
    /// Matches the lowercased text if it contains any rule's keyword.
    any: regex::Regex,
    /// The index of the rules that list no keywords.
    without_keywords: Index,
}

impl KeywordGate {
    /// `None` when no rule lists keywords, or when they are too many for
    /// one regex (then every message tries the rules with keywords).
    fn build(rules: &[Compiled]) -> Option<Self> {
        let mut keywords: Vec<&str> = rules
            .iter()
            .flat_map(|c| c.keywords.iter().map(String::as_str))
            .collect();
        if keywords.is_empty() {
            return None;
        }
        keywords.sort_unstable();
        keywords.dedup();
        let pattern = keywords
            .iter()
            .map(|k| regex::escape(k))
            .collect::<Vec<_>>()
            .join("|");
        // Literals only and no flags: a match is exactly a keyword that is
        // a substring of the text, like the per-rule check.
        let any = regex::Regex::new(&pattern).ok()?;
        Some(Self {
            any,
            without_keywords: Index::build(rules, |c| c.keywords.is_empty()),
        })
    }
}

impl Default for RuleSet {
    /// No rules: everything goes to analytics.
    fn default() -> Self {
        Self {
            default: default_destinations(),
            rules: Vec::new(),
            index: Index::default(),
            keywords: None,
        }
    }
}

impl RuleSet {
    /// Reads and validates a rules file. `known_bots` are the bot names the
    /// worker is configured with.
    pub fn load(path: &Path, known_bots: &HashSet<&str>) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, known_bots)
    }

    /// Parses and validates rules from TOML text.
    pub fn parse(text: &str, known_bots: &HashSet<&str>) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text)?;
        check_destinations("default", &file.default, known_bots)?;
        let calendars: HashMap<&str, Arc<Calendar>> = file
            .calendars
            .iter()
            .map(|(name, spec)| {
                Calendar::compile(spec)
                    .map(|c| (name.as_str(), Arc::new(c)))
                    .map_err(|problem| RulesError::Invalid {
                        rule: format!("calendars.{name}"),
                        field: "calendar",
                        problem,
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, rule) in file.rules.into_iter().enumerate() {
            let name = if rule.id.is_empty() {
                format!("#{}", i + 1)
            } else {
                rule.id.clone()
            };
            let invalid = |field, problem: String| RulesError::Invalid {
                rule: name.clone(),
                field,
                problem,
            };
            if rule.id.is_empty() {
                return Err(invalid("id", "is required".into()));
            }
            if rule.id == "default" || !ids.insert(rule.id.clone()) {
                return Err(invalid("id", "must be unique and not `default`".into()));
            }
            check_destinations(&name, &rule.destinations, known_bots)?;
            let channels = rule
                .channels
                .iter()
                .map(|c| {
                    Channel::from_str_name(&c.to_ascii_uppercase())
                        .filter(|c| *c != Channel::Unspecified)
                        .ok_or_else(|| invalid("channels", format!("unknown channel {c:?}")))
                })
                .collect::<Result<_, _>>()?;
            let direction = match rule.direction.as_deref() {
                None => None,
                Some("inbound") => Some(Direction::Inbound),
                Some("outbound") => Some(Direction::Outbound),
                Some(other) => {
                    return Err(invalid(
                        "direction",
                        format!("{other:?} is not `inbound` or `outbound`"),
                    ));
                }
            };
            let human_owned = match rule.owner.as_deref() {
                None => None,
                Some("bot") => Some(false),
                Some("human") => Some(true),
                Some(other) => {
                    return Err(invalid(
                        "owner",
                        format!("{other:?} is not `bot` or `human`"),
                    ));
                }
            };
            let content = rule.content.iter().try_fold(0, |mask, kind| {
                content_bit(kind)
                    .map(|bit| mask | bit)
                    .ok_or_else(|| invalid("content", format!("unknown content kind {kind:?}")))
            })?;
            if rule.keywords.iter().any(|k| k.trim().is_empty()) {
                return Err(invalid(
                    "keywords",
                    "must not contain empty keywords".into(),
                ));
            }
            let keywords = rule.keywords.iter().map(|k| k.to_lowercase()).collect();
            let regex = rule
                .regex
                .iter()
                .map(|r| regex::Regex::new(r).map_err(|e| invalid("regex", format!("{r:?}: {e}"))))
                .collect::<Result<_, _>>()?;
            let languages = rule.languages.iter().map(|l| l.to_lowercase()).collect();
            let hours = match (&rule.when_open, &rule.when_closed) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "when_open",
                        "use when_open or when_closed, not both".into(),
                    ));
                }
                (Some(name), None) | (None, Some(name)) => {
                    let field = if rule.when_open.is_some() {
                        "when_open"
                    } else {
                        "when_closed"
                    };
                    let calendar = calendars.get(name.as_str()).ok_or_else(|| {
                        invalid(field, format!("no calendar {name:?} under [calendars]"))
                    })?;
                    Some((calendar.clone(), rule.when_open.is_some()))
                }
                (None, None) => None,
            };
            rules.push(Compiled {
                rule,
                channels,
                direction,
                content,
                human_owned,
                keywords,
                regex,
                languages,
                hours,
            });
        }
        Ok(Self {
            default: file.default,
            index: Index::build(&rules, |_| true),
            keywords: KeywordGate::build(&rules),
            rules,
        })
    }

    /// Every bot name the rules refer to.
    pub fn bots(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|c| c.rule.destinations.iter())
            .chain(self.default.iter())
            .filter_map(|d| match d {
                DestinationSpec::Bot(name) => Some(name.as_str()),
                _ => None,
            })
    }

    /// The agent queues rules send messages to.
    pub fn agent_queues(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|c| c.rule.destinations.iter())
            .chain(self.default.iter())
            .filter_map(|d| match d {
                DestinationSpec::Agent(name) => Some(name.as_str()),
                _ => None,
            })
    }

    /// The first matching rule's decision, or the default, for a message
    /// of a conversation that a human owns (`human_owned`) or not.
    pub fn decide(&self, envelope: &Envelope, human_owned: bool) -> Decision<'_> {
        let message = Message::new(envelope, human_owned);
        // Rules with keywords cannot match a text that contains none.
        let index = match &self.keywords {
            Some(gate) if !message.lowercase().is_some_and(|t| gate.any.is_match(t)) => {
                &gate.without_keywords
            }
            _ => &self.index,
        };
        let first = index.first(
            envelope.direction(),
            envelope.channel(),
            &envelope.tenant_id,
            |position| self.rules[position as usize].matches_rest(&message),
        );
        self.decision(
            envelope,
            first.map(|position| &self.rules[position as usize]),
        )
    }

    /// [`decide`](Self::decide) without the index: every rule in file order.
    /// What the index must agree with.
    #[cfg(test)]
    fn decide_linear(&self, envelope: &Envelope, human_owned: bool) -> Decision<'_> {
        let message = Message::new(envelope, human_owned);
        let outbound = envelope.direction() == Direction::Outbound;
        let first = self.rules.iter().find(|c| {
            (c.direction == Some(Direction::Outbound)) == outbound && c.matches(&message)
        });
        self.decision(envelope, first)
    }

    /// The decision for `rule`, or the default when no rule matched.
    fn decision<'a>(&'a self, envelope: &Envelope, rule: Option<&'a Compiled>) -> Decision<'a> {
        match rule {
            Some(c) => Decision {
                rule_id: &c.rule.id,
                matched: true,
                destinations: &c.rule.destinations,
            },
            None if envelope.direction() == Direction::Outbound => Decision {
                rule_id: "outbound",
                matched: false,
                destinations: &[],
            },
            None => Decision {
                rule_id: "default",
                matched: false,
                destinations: &self.default,
            },
        }
    }
}

/// What the rules look at, computed at most once per message, and only
/// if a rule that could match needs it.
struct Message<'a> {
    envelope: &'a Envelope,
    human_owned: bool,
    /// The content kind's bit (see [`Compiled::content`]).
    content: u32,
    text: Option<&'a str>,
    lowercase: OnceCell<Option<String>>,
    language: OnceCell<Option<String>>,
    at: OnceCell<jiff::Timestamp>,
}

impl<'a> Message<'a> {
    fn new(envelope: &'a Envelope, human_owned: bool) -> Self {
        Message {
            envelope,
            human_owned,
            content: envelope
                .content
                .as_ref()
                .and_then(|c| content_bit(c.kind()))
                .unwrap_or(0),
            text: match &envelope.content {
                Some(Content::Text(t)) => Some(t.body.as_str()),
                _ => None,
            },
            lowercase: OnceCell::new(),
            language: OnceCell::new(),
            at: OnceCell::new(),
        }
    }

    /// The text body, lowercased.
    fn lowercase(&self) -> Option<&str> {
        self.lowercase
            .get_or_init(|| self.text.map(str::to_lowercase))
            .as_deref()
    }

    /// The `language` attribute, lowercased.
    fn language(&self) -> Option<&str> {
        self.language
            .get_or_init(|| {
                self.envelope
                    .attributes
                    .get("language")
                    .map(|l| l.to_lowercase())
            })
            .as_deref()
    }

    /// When the message was received (now if it does not say).
    fn at(&self) -> jiff::Timestamp {
        *self.at.get_or_init(|| {
            self.envelope
                .received_at
                .as_ref()
                .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                .unwrap_or_else(jiff::Timestamp::now)
        })
    }
}

// One bit each in a `u32`.
const _: () = assert!(CONTENT_KINDS.len() <= 32);

/// The bit of a content kind, if it is one of [`CONTENT_KINDS`].
fn content_bit(kind: &str) -> Option<u32> {
    CONTENT_KINDS
        .iter()
        .position(|k| *k == kind)
        .map(|i| 1 << i)
}

impl Compiled {
    /// Whether the rule matches the message.
    #[cfg(test)]
    fn matches(&self, m: &Message<'_>) -> bool {
        let envelope = m.envelope;
        (self.channels.is_empty() || self.channels.contains(&envelope.channel()))
            && (self.rule.tenants.is_empty() || self.rule.tenants.contains(&envelope.tenant_id))
            && self.direction.is_none_or(|d| d == envelope.direction())
            && self.matches_rest(m)
    }

    /// Whether the rule matches the message, given that its channels,
    /// tenants and direction do (the [`Index`] checked those).
    fn matches_rest(&self, m: &Message<'_>) -> bool {
        let envelope = m.envelope;
        self.human_owned.is_none_or(|h| h == m.human_owned)
            && (self.content == 0 || self.content & m.content != 0)
            && (self.keywords.is_empty()
                || m.lowercase()
                    .is_some_and(|t| self.keywords.iter().any(|k| t.contains(k.as_str()))))
            && (self.regex.is_empty()
                || m.text
                    .is_some_and(|t| self.regex.iter().any(|r| r.is_match(t))))
            && (self.languages.is_empty()
                || m.language().is_some_and(|l| {
                    self.languages.iter().any(|want| {
                        l == *want
                            || l.strip_prefix(want.as_str())
                                .is_some_and(|r| r.starts_with('-'))
                    })
                }))
            && (self.rule.referral_sources.is_empty()
                || envelope.referral.as_ref().is_some_and(|r| {
                    self.rule
                        .referral_sources
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(&r.source))
                }))
            && self
                .rule
                .customer
                .iter()
                .all(|(k, v)| envelope.attributes.get(&format!("customer.{k}")) == Some(v))
            && self
                .hours
                .as_ref()
                .is_none_or(|(calendar, open)| calendar.is_open(m.at()) == *open)
    }
}

fn check_destinations(
    rule: &str,
    destinations: &[DestinationSpec],
    known_bots: &HashSet<&str>,
) -> Result<(), RulesError> {
    let invalid = |problem: String| RulesError::Invalid {
        rule: rule.to_owned(),
        field: "destinations",
        problem,
    };
    if destinations.is_empty() {
        return Err(invalid("must name at least one destination".into()));
    }
    for d in destinations {
        match d {
            DestinationSpec::Bot(name) if !known_bots.contains(name.as_str()) => {
                return Err(invalid(format!(
                    "bot {name:?} is not configured under [bots]"
                )));
            }
            DestinationSpec::Agent(queue) if queue.trim().is_empty() => {
                return Err(invalid("agent queue name must not be empty".into()));
            }
            _ => {}
        }
    }
    Ok(())
}
