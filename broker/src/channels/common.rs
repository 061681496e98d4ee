//! What the channel normalizers share: JSON paths for error reports, typed
//! parsing that reports paths, the normalization context (limits, ids,
//! timestamps, collected violations) and envelope assembly.

use std::{
    fmt::{self, Write as _},
    marker::PhantomData,
    str::FromStr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Deserializer, de};
use serde_json::{error::Category, value::RawValue};
use serde_path_to_error::Segment;
use switchboard_proto::{
    Timestamp,
    v1::{Channel, Direction, Envelope, Party, envelope::Content},
};

use super::Limits;
use crate::{
    error::{FieldViolation, IngestError},
    validate::MAX_ID_BYTES,
};

/// Most violations collected from one webhook; past it normalization stops.
const MAX_VIOLATIONS: usize = 100;

/// Earliest accepted channel time: 2000-01-01T00:00:00Z, in seconds. An
/// earlier one is almost surely in the wrong unit (or zero).
const MIN_TIME_SECS: i64 = 946_684_800;

/// How far past `now` a channel time may be (clock skew), in seconds.
const MAX_FUTURE_SECS: u64 = 24 * 60 * 60;

/// Longest piece of input echoed back in an error description, in bytes.
const MAX_ECHO_BYTES: usize = 64;

/// A path into the webhook body, rooted at `payload`, naming a field in an
/// error report: `payload.entry[0].changes[0].value.messages[1].from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JsonPath(String);

impl JsonPath {
    /// The whole body.
    pub(super) fn root() -> Self {
        Self("payload".to_owned())
    }

    /// The field `key` of the object at this path.
    pub(super) fn key(&self, key: &str) -> Self {
        Self(format!("{}.{key}", self.0))
    }

    /// Element `index` of the array at this path.
    pub(super) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// This path followed by `relative`, a path inside the value found here.
    fn join(&self, relative: &serde_path_to_error::Path) -> Self {
        let mut path = self.0.clone();
        for segment in relative {
            // Writing to a String cannot fail.
            let _ = match segment {
                Segment::Seq { index } => write!(path, "[{index}]"),
                Segment::Map { key } | Segment::Enum { variant: key } => write!(path, ".{key}"),
                Segment::Unknown => write!(path, ".?"),
            };
        }
        Self(path)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&JsonPath> for String {
    fn from(path: &JsonPath) -> Self {
        path.0.clone()
    }
}

/// Deserializes the JSON object `json`, found at `at` in the body, into `T`.
/// A type error is reported at the path of the offending field; a syntax
/// error at `at`.
pub(super) fn parse<'de, T: Deserialize<'de>>(
    json: &'de str,
    at: &JsonPath,
) -> Result<T, FieldViolation> {
    let mut de = serde_json::Deserializer::from_str(json);
    let Object(value) = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = at.join(e.path());
        describe(at, path, e.inner())
    })?;
    de.end().map_err(|e| describe(at, at.clone(), &e))?;
    Ok(value)
}

/// A `T` read from a JSON object only. Derived `Deserialize` impls also read
/// structs from arrays, by position, which would make `[1, 2]` a webhook
/// with a bad first field rather than not a webhook.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Visitor(PhantomData))
            .map(Object)
    }
}

fn describe(at: &JsonPath, path: JsonPath, error: &serde_json::Error) -> FieldViolation {
    match error.classify() {
        // Positions are only meaningful for the whole body, which is the only
        // text that can be syntactically broken (sub-documents are slices of
        // it that already parsed).
        Category::Syntax | Category::Eof | Category::Io => {
            FieldViolation::new(at, format!("is not valid JSON: {error}"))
        }
        Category::Data => {
            let message = error.to_string();
            let suffix = format!(" at line {} column {}", error.line(), error.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            FieldViolation::new(&path, message)
        }
    }
}

/// The byte offset where `json` first nests deeper than `max_depth` arrays
/// and objects, if it does. Brackets inside strings do not count; the scan
/// is linear and allocates nothing, so it runs before any parsing.
pub(super) fn exceeds_depth(json: &[u8], max_depth: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in json.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(offset);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// `text` quoted for an error description, cut to a few dozen bytes.
pub(super) fn quoted(text: &str) -> String {
    if text.len() <= MAX_ECHO_BYTES {
        return format!("{text:?}");
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &text[..end])
}

/// A JSON string or number, kept as text: channels send some numeric fields
/// (timestamps, app ids, prices) either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scalar(String);

impl Scalar {
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The unit of a channel's timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeUnit {
    /// WhatsApp: unix seconds, as a string.
    Seconds,
    /// Messenger and Instagram: unix milliseconds.
    Millis,
}

impl TimeUnit {
    fn per_second(self) -> i64 {
        match self {
            Self::Seconds => 1,
            Self::Millis => 1000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Seconds => "seconds",
            Self::Millis => "milliseconds",
        }
    }
}

/// A checked channel time: the channel's own number and the timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ChannelTime {
    /// The number the channel sent, in its unit.
    pub(super) raw: i64,
    pub(super) timestamp: Timestamp,
}

/// Parses a channel time and checks it is plausible: an integer, not before
/// 2000, and at most a day after `now`.
fn channel_time(value: &str, unit: TimeUnit, now: SystemTime) -> Result<ChannelTime, String> {
    let raw: i64 = value.parse().map_err(|_| {
        format!(
            "{} is not an integer unix time in {}",
            quoted(value),
            unit.name()
        )
    })?;
    if raw < 0 {
        return Err(format!("{raw} is negative"));
    }
    let per_second = unit.per_second();
    let seconds = raw / per_second;
    if seconds < MIN_TIME_SECS {
        return Err(format!(
            "{raw} is before 2000-01-01: it must be unix time in {}",
            unit.name()
        ));
    }
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let latest = i64::try_from(now_secs.saturating_add(MAX_FUTURE_SECS)).unwrap_or(i64::MAX);
    if seconds > latest {
        return Err(format!("{raw} is more than a day in the future"));
    }
    let nanos = (raw % per_second) * (1_000_000_000 / per_second);
    Ok(ChannelTime {
        raw,
        timestamp: Timestamp {
            seconds,
            nanos: i32::try_from(nanos).unwrap_or_default(),
        },
    })
}

/// The two parties of a conversation.
#[derive(Debug, Clone, Default)]
pub(super) struct Thread {
    pub(super) business: Party,
    pub(super) customer: Party,
}

impl Thread {
    /// A thread between parties known by id only.
    pub(super) fn new(business_id: &str, customer_id: &str) -> Self {
        Self {
            business: party(business_id, ""),
            customer: party(customer_id, ""),
        }
    }

    /// `<business id>:<customer id>`.
    pub(super) fn conversation_id(&self) -> String {
        format!("{}:{}", self.business.id, self.customer.id)
    }

    /// A new envelope in this thread (tenant and channel are set by
    /// [`Ctx::emit`]).
    pub(super) fn envelope(
        &self,
        direction: Direction,
        channel_message_id: String,
        sent_at: Option<Timestamp>,
        content: Content,
    ) -> Envelope {
        Envelope {
            direction: direction as i32,
            conversation_id: self.conversation_id(),
            channel_message_id,
            customer: Some(self.customer.clone()),
            business: Some(self.business.clone()),
            sent_at,
            content: Some(content),
            ..Envelope::default()
        }
    }
}

/// A conversation party.
pub(super) fn party(id: &str, display_name: &str) -> Party {
    Party {
        id: id.to_owned(),
        display_name: display_name.to_owned(),
    }
}

/// One normalization: its inputs, and what it has found so far.
pub(super) struct Ctx<'a> {
    tenant_id: &'a str,
    pub(super) channel: Channel,
    pub(super) limits: &'a Limits,
    now: SystemTime,
    events: usize,
    envelopes: Vec<Envelope>,
    violations: Vec<FieldViolation>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        tenant_id: &'a str,
        channel: Channel,
        limits: &'a Limits,
        now: SystemTime,
    ) -> Self {
        Self {
            tenant_id,
            channel,
            limits,
            now,
            events: 0,
            envelopes: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Records that the field at `path` is invalid.
    pub(super) fn violate(&mut self, path: &JsonPath, description: impl Into<String>) {
        self.push(FieldViolation::new(path, description));
    }

    fn push(&mut self, violation: FieldViolation) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(violation);
        }
    }

    /// The tenant the request is for.
    pub(super) fn tenant_id(&self) -> &str {
        self.tenant_id
    }

    /// The value, or `None` after recording the violation.
    pub(super) fn record<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.push(v)).ok()
    }

    /// Stops normalization on `violation`: the error lists it after every
    /// violation recorded so far.
    pub(super) fn fail(&mut self, violation: FieldViolation) -> IngestError {
        self.push(violation);
        IngestError::InvalidArgument(std::mem::take(&mut self.violations))
    }

    /// Counts `n` more events against [`Limits::max_events`], and stops early
    /// once over it, or once enough violations are collected.
    pub(super) fn count_events(&mut self, n: usize) -> Result<(), IngestError> {
        self.events = self.events.saturating_add(n);
        if self.events > self.limits.max_events {
            let max = self.limits.max_events;
            return Err(self.fail(FieldViolation::new(
                "payload",
                format!("carries more than {max} events, the limit per webhook"),
            )));
        }
        if self.violations.len() >= MAX_VIOLATIONS {
            return Err(self.fail(FieldViolation::new(
                "payload",
                format!("has more than {MAX_VIOLATIONS} invalid fields; stopped there"),
            )));
        }
        Ok(())
    }

    /// The value, or `None` after recording that it is required.
    pub(super) fn require<T>(&mut self, path: &JsonPath, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.violate(path, "is required");
        }
        value
    }

    /// A required id: present, not empty, at most [`MAX_ID_BYTES`] long.
    /// Empty (after recording a violation) when it is not.
    pub(super) fn id<'v>(&mut self, path: &JsonPath, value: Option<&'v str>) -> &'v str {
        match value {
            None | Some("") => self.violate(path, "is required"),
            Some(id) if id.len() > MAX_ID_BYTES => {
                self.violate(path, format!("is longer than {MAX_ID_BYTES} bytes"));
            }
            Some(id) => return id,
        }
        ""
    }

    /// Optional free text, at most [`Limits::max_text_bytes`] long (empty,
    /// after recording a violation, when longer).
    pub(super) fn text(&mut self, path: &JsonPath, value: Option<&str>) -> String {
        let text = value.unwrap_or_default();
        if self.check_text(path, text) {
            text.to_owned()
        } else {
            String::new()
        }
    }

    /// Whether `text` fits [`Limits::max_text_bytes`]; records a violation
    /// when it does not.
    pub(super) fn check_text(&mut self, path: &JsonPath, text: &str) -> bool {
        let max = self.limits.max_text_bytes;
        if text.len() > max {
            self.violate(
                path,
                format!("is {} bytes, over the limit of {max} bytes", text.len()),
            );
        }
        text.len() <= max
    }

    /// A required channel time in `unit`.
    pub(super) fn time(
        &mut self,
        path: &JsonPath,
        value: Option<&Scalar>,
        unit: TimeUnit,
    ) -> Option<ChannelTime> {
        let Some(value) = value else {
            self.violate(path, "is required");
            return None;
        };
        let time = channel_time(value.as_str(), unit, self.now);
        self.record(time.map_err(|description| FieldViolation::new(path, description)))
    }

    /// An optional number (sent as a number or a string); the default, after
    /// recording a violation, when it does not parse as `T`.
    pub(super) fn number<T: FromStr + Default>(
        &mut self,
        path: &JsonPath,
        value: Option<&str>,
        expected: &str,
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        value.parse().unwrap_or_else(|_| {
            self.violate(path, format!("{} is not {expected}", quoted(value)));
            T::default()
        })
    }

    /// Adds `envelope`, made from the event at `path`, to the output, with
    /// this webhook's tenant and channel (whatever the body said). Ids built
    /// from several channel ids must still fit [`MAX_ID_BYTES`].
    pub(super) fn emit(&mut self, path: &JsonPath, mut envelope: Envelope) {
        for (name, id) in [
            ("conversation_id", &envelope.conversation_id),
            ("channel_message_id", &envelope.channel_message_id),
        ] {
            if id.len() > MAX_ID_BYTES {
                self.violate(
                    path,
                    format!("makes a {name} longer than {MAX_ID_BYTES} bytes"),
                );
            }
        }
        envelope.tenant_id = self.tenant_id.to_owned();
        envelope.channel = self.channel as i32;
        self.envelopes.push(envelope);
    }

    /// The envelopes, or every violation found: nothing partial.
    pub(super) fn finish(self) -> Result<Vec<Envelope>, IngestError> {
        if self.violations.is_empty() {
            Ok(self.envelopes)
        } else {
            Err(IngestError::InvalidArgument(self.violations))
        }
    }
}

/// The outer shape of every Meta webhook (WhatsApp, Messenger, Instagram).
#[derive(Deserialize)]
struct MetaWebhook<'a> {
    object: Option<String>,
    #[serde(borrow)]
    entry: Option<&'a RawValue>,
}

/// The `object` a Meta webhook for `channel` must have.
fn meta_object(channel: Channel) -> &'static str {
    match channel {
        Channel::Whatsapp => "whatsapp_business_account",
        Channel::Messenger => "page",
        Channel::Instagram => "instagram",
        _ => "",
    }
}

/// The entries of a Meta webhook, each with its path, after checking the
/// `object` matches the channel. Any error here is fatal: the rest cannot be
/// read. Each entry is parsed on its own, so one bad entry does not hide the
/// errors of the next.
pub(super) fn meta_entries<'de, T: Deserialize<'de>>(
    ctx: &mut Ctx<'_>,
    body: &'de str,
) -> Result<Vec<(JsonPath, T)>, IngestError> {
    let root = JsonPath::root();
    let webhook: MetaWebhook<'de> = parse(body, &root).map_err(|v| ctx.fail(v))?;
    let expected = meta_object(ctx.channel);
    let object = root.key("object");
    match webhook.object.as_deref() {
        Some(found) if found == expected => {}
        Some(found) => {
            return Err(ctx.fail(FieldViolation::new(
                &object,
                format!(
                    "is {}, expected {expected:?} for {}",
                    quoted(found),
                    ctx.channel.as_str_name()
                ),
            )));
        }
        None => return Err(ctx.fail(FieldViolation::new(&object, "is required"))),
    }
    let path = root.key("entry");
    let Some(entry) = webhook.entry else {
        return Err(ctx.fail(FieldViolation::new(&path, "is required")));
    };
    let entries: Vec<&RawValue> = serde_json::from_str(entry.get())
        .map_err(|e| ctx.fail(describe(&path, path.clone(), &e)))?;
    Ok(entries
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let path = path.index(i);
            let entry = ctx.record(parse(raw.get(), &path))?;
            Some((path, entry))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn paths_join_like_json_paths() {
        let root = JsonPath::root();
        let path = root.key("entry").index(0).key("changes");
        assert_eq!(path.to_string(), "payload.entry[0].changes");
        #[derive(Debug, Deserialize)]
        struct Change {
            #[allow(dead_code)]
            items: Vec<Vec<u32>>,
        }
        let err = parse::<Change>(r#"{"items": [[1], [2, "x"]]}"#, &path).unwrap_err();
        assert_eq!(err.field, "payload.entry[0].changes.items[1][1]");
        assert_eq!(err.description, "invalid type: string \"x\", expected u32");
        let err = parse::<Change>(r#"{"items": [[1], "#, &path).unwrap_err();
        assert_eq!(err.field, "payload.entry[0].changes");
        assert!(err.description.starts_with("is not valid JSON"), "{err:?}");
        let err = parse::<Change>("[[1]]", &path).unwrap_err();
        assert_eq!(err.field, "payload.entry[0].changes");
        assert_eq!(
            err.description,
            "invalid type: sequence, expected a JSON object"
        );
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(exceeds_depth(b"[[[]]]", 3), None);
        assert_eq!(exceeds_depth(b"[[[[]]]]", 3), Some(3));
        assert_eq!(exceeds_depth(br#"["[[[[", {"a\"[[[": 1}]"#, 2), None);
        assert_eq!(exceeds_depth(br#"{"a":{"b":[{}]}}"#, 3), Some(11));
    }

    #[test]
    fn channel_times_are_checked() {
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let t = channel_time("1749416383", TimeUnit::Seconds, now).unwrap();
        assert_eq!(
            (t.raw, t.timestamp.seconds, t.timestamp.nanos),
            (1_749_416_383, 1_749_416_383, 0)
        );
        let t = channel_time("1749416383123", TimeUnit::Millis, now).unwrap();
        assert_eq!(
            (t.timestamp.seconds, t.timestamp.nanos),
            (1_749_416_383, 123_000_000)
        );
        for bad in [
            "",
            "12a",
            "1.5",
            "-5",
            "0",
            "1749416383123",
            "99999999999999999999",
        ] {
            assert!(
                channel_time(bad, TimeUnit::Seconds, now).is_err(),
                "{bad:?} accepted"
            );
        }
        // A day of clock skew is fine, more is not.
        assert!(channel_time("1750086000", TimeUnit::Seconds, now).is_ok());
        assert!(channel_time("1750086401", TimeUnit::Seconds, now).is_err());
    }

    #[test]
    fn echoed_input_is_cut_on_a_char_boundary() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = "é".repeat(100);
        let cut = quoted(&long);
        assert!(cut.ends_with('…') && cut.len() < 80, "{cut}");
    }
}
