//! A credential that never shows in logs, errors or serialized configs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`Secret`] prints and serializes as.
const REDACTED: &str = "***";

/// A token, password or app secret. `Debug`, `Display` and `Serialize`
/// show `***`; only [`Secret::expose`] gives the value, at the point where
/// it goes on the wire. (Serializing a config therefore does not round-trip
/// its secrets: configs are only ever read.)
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_shows_nowhere_but_expose() {
        let secret = Secret::new("EAAB-very-secret");
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            serde_json::to_string(&secret).unwrap(),
            format!("{:?}", Some(&secret)),
        ] {
            assert!(!shown.contains("very-secret"), "{shown}");
        }
        assert_eq!(secret.expose(), "EAAB-very-secret");
        let read: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(read.expose(), "abc");
    }
}
