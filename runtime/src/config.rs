//! Layered configuration, the same for every binary.
//!
//! Values are layered, later wins: defaults in code, then a TOML file
//! (`--config`), then environment variables with the binary's prefix (nested
//! keys joined with `__`), then command-line flags. Each component is then
//! built from its own section of the result.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::Serialize;

/// Loads a config: `T::default()`, then the optional TOML `file`, then
/// environment variables starting with `env_prefix` (nested keys joined with
/// `__`), then `overrides`. Unknown keys are errors when `T` denies them.
pub fn load_layered<T>(
    file: Option<&Path>,
    env_prefix: &str,
    overrides: impl Serialize,
) -> anyhow::Result<T>
where
    T: Default + Serialize + serde::de::DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        anyhow::ensure!(
            file.exists(),
            "config file {} does not exist",
            file.display()
        );
        figment = figment.merge(Toml::file(file));
    }
    Ok(figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .merge(Serialized::defaults(overrides))
        .extract()?)
}

/// Command-line flags that override the other layers; flags not given are skipped.
#[derive(Debug, Default, Serialize)]
pub struct Overrides(serde_json::Map<String, serde_json::Value>);

impl Overrides {
    /// Sets top-level `key` when the flag was given.
    pub fn set(mut self, key: &str, value: Option<impl Serialize>) -> Self {
        if let Some(value) = value.and_then(|v| serde_json::to_value(v).ok()) {
            self.0.insert(key.to_owned(), value);
        }
        self
    }

    /// Sets `kafka.bootstrap_servers` when the flag was given.
    pub fn kafka_bootstrap(self, bootstrap: Option<String>) -> Self {
        self.set(
            "kafka",
            bootstrap.map(|b| serde_json::json!({ "bootstrap_servers": b })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        name: String,
        nested: Nested,
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        bootstrap_servers: String,
        port: u16,
    }

    #[test]
    fn file_then_flags_win_over_defaults() {
        let dir = std::env::temp_dir().join(format!("sb-runtime-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("example.toml");
        std::fs::write(&file, "name = \"file\"\n[nested]\nport = 7\n").unwrap();
        let overrides = Overrides::default()
            .set("name", Some("flag"))
            .set("missing", None::<String>);
        let loaded: Example =
            load_layered(Some(&file), "SWITCHBOARD_RUNTIME_TEST_", overrides).unwrap();
        assert_eq!(loaded.name, "flag");
        assert_eq!(loaded.nested.port, 7);
        let err = load_layered::<Example>(Some(&dir.join("nope.toml")), "X_", Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
