//! Reading Kafka record headers.

use rdkafka::message::{Headers as _, Message};

/// The raw value of the first header `name` of `record`, if any.
pub fn raw<'m, M: Message>(record: &'m M, name: &str) -> Option<&'m [u8]> {
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// The value of the first header `name` of `record`, when it is UTF-8.
pub fn text<'m, M: Message>(record: &'m M, name: &str) -> Option<&'m str> {
    raw(record, name).and_then(|v| std::str::from_utf8(v).ok())
}
