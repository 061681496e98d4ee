//! Per-tenant, per-channel secrets of the HTTP webhook listener, read from
//! the tenants file (a `[tenants.webhooks.<channel>]` table under a tenant)
//! or from files it names:
//!
//! ```toml
//! [tenants.webhooks.whatsapp]                 # also messenger, instagram
//! app_secret_file = "secrets/acme-meta-app-secret"   # or app_secret = "..."
//! verify_token_file = "secrets/acme-meta-verify"      # or verify_token = "..."
//!
//! [tenants.webhooks.sms]                      # Twilio
//! auth_token_file = "secrets/acme-twilio-token"       # or auth_token = "..."
//!
//! [tenants.webhooks.webchat]
//! keys_sha256 = ["<printf %s \"$KEY\" | sha256sum>"]
//! allowed_origins = ["https://shop.example.com"]
//! ```
//!
//! A relative file path is relative to the tenants file's folder. A secret
//! file holds the secret alone; surrounding whitespace (a final newline) is
//! ignored. Changing a secret file reloads the tenants like changing the
//! tenants file does. Secrets are held in [`SecretString`]s: their `Debug`
//! output is redacted and their memory zeroed on drop, and no error message
//! here quotes one.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use secrecy::SecretString;
use serde::Deserialize;
use switchboard_proto::v1::Channel;

/// The `webhooks` table of a tenant, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhooksEntry {
    whatsapp: Option<MetaEntry>,
    messenger: Option<MetaEntry>,
    instagram: Option<MetaEntry>,
    sms: Option<TwilioEntry>,
    webchat: Option<WebchatEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaEntry {
    app_secret: Option<SecretString>,
    app_secret_file: Option<PathBuf>,
    verify_token: Option<SecretString>,
    verify_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwilioEntry {
    auth_token: Option<SecretString>,
    auth_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebchatEntry {
    keys_sha256: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

/// One channel's webhook secrets of one tenant.
#[derive(Debug)]
pub enum ChannelSecrets {
    /// WhatsApp, Messenger and Instagram: every POST is signed with the
    /// app secret (`X-Hub-Signature-256`); the verification handshake
    /// presents the verify token.
    Meta {
        /// The Meta app's secret, the HMAC-SHA256 key.
        app_secret: SecretString,
        /// The token typed in the App Dashboard.
        verify_token: SecretString,
    },
    /// SMS from Twilio: every POST is signed with the account's auth token
    /// (`X-Twilio-Signature`).
    Twilio {
        /// The primary auth token, the HMAC-SHA1 key.
        auth_token: SecretString,
    },
    /// Web chat: the site's widget presents a key; browsers may post from
    /// the allowed origins only.
    Webchat {
        /// SHA-256 digests of the keys.
        keys: HashSet<[u8; 32]>,
        /// `scheme://host[:port]` origins allowed to post from a browser.
        allowed_origins: Vec<String>,
    },
}

impl ChannelSecrets {
    /// Whether a browser at `origin` may post (web chat only; other
    /// channels are posted by servers, never from a browser page).
    pub fn allows_origin(&self, origin: &str) -> bool {
        match self {
            Self::Webchat {
                allowed_origins, ..
            } => allowed_origins.iter().any(|o| same_origin(o, origin)),
            Self::Meta { .. } | Self::Twilio { .. } => false,
        }
    }
}

/// Origins compare as ASCII case-insensitive, ignoring a trailing slash.
fn same_origin(allowed: &str, origin: &str) -> bool {
    allowed
        .trim_end_matches('/')
        .eq_ignore_ascii_case(origin.trim_end_matches('/'))
}

/// One tenant's webhook secrets, by channel.
#[derive(Debug, Default)]
pub(super) struct TenantWebhooks(Vec<(Channel, Arc<ChannelSecrets>)>);

impl TenantWebhooks {
    /// The secrets of `channel`, if the tenant has any.
    pub(super) fn get(&self, channel: Channel) -> Option<&Arc<ChannelSecrets>> {
        self.0.iter().find(|(c, _)| *c == channel).map(|(_, s)| s)
    }
}

/// A secret file read while loading, with its modification time read
/// before its contents (so a later change is always noticed).
pub(super) type SecretFile = (PathBuf, Option<SystemTime>);

impl WebhooksEntry {
    /// Whether no channel has a table.
    pub(super) fn is_empty(&self) -> bool {
        self.whatsapp.is_none()
            && self.messenger.is_none()
            && self.instagram.is_none()
            && self.sms.is_none()
            && self.webchat.is_none()
    }

    /// Resolves the secrets, reading the files named (relative to `dir`)
    /// and recording them in `files`. Errors name fields and files, never
    /// secret values.
    pub(super) fn resolve(
        self,
        dir: &Path,
        files: &mut Vec<SecretFile>,
    ) -> anyhow::Result<TenantWebhooks> {
        let mut out = Vec::new();
        let mut read = |field: &str, inline, file| secret(field, inline, file, dir, files);
        for (channel, entry) in [
            (Channel::Whatsapp, self.whatsapp),
            (Channel::Messenger, self.messenger),
            (Channel::Instagram, self.instagram),
        ] {
            let Some(entry) = entry else { continue };
            let at = |field: &str| format!("webhooks.{}.{field}", channel.slug());
            let secrets = ChannelSecrets::Meta {
                app_secret: read(&at("app_secret"), entry.app_secret, entry.app_secret_file)?,
                verify_token: read(
                    &at("verify_token"),
                    entry.verify_token,
                    entry.verify_token_file,
                )?,
            };
            out.push((channel, Arc::new(secrets)));
        }
        if let Some(entry) = self.sms {
            let secrets = ChannelSecrets::Twilio {
                auth_token: read(
                    "webhooks.sms.auth_token",
                    entry.auth_token,
                    entry.auth_token_file,
                )?,
            };
            out.push((Channel::Sms, Arc::new(secrets)));
        }
        if let Some(entry) = self.webchat {
            out.push((Channel::Webchat, Arc::new(webchat(entry)?)));
        }
        Ok(TenantWebhooks(out))
    }
}

fn webchat(entry: WebchatEntry) -> anyhow::Result<ChannelSecrets> {
    anyhow::ensure!(
        !entry.keys_sha256.is_empty(),
        "`webhooks.webchat.keys_sha256` must list at least one key digest"
    );
    let keys = entry
        .keys_sha256
        .iter()
        .map(|digest| {
            super::digest_from_hex(digest).ok_or_else(|| {
                anyhow::anyhow!(
                    "`webhooks.webchat.keys_sha256`: {digest:?} is not a SHA-256 digest (64 hex digits)"
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for origin in &entry.allowed_origins {
        let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && !rest.trim_end_matches('/').is_empty()
                && !rest.trim_end_matches('/').contains('/')
        });
        anyhow::ensure!(
            valid,
            "`webhooks.webchat.allowed_origins`: {origin:?} is not an origin (scheme://host[:port])"
        );
    }
    Ok(ChannelSecrets::Webchat {
        keys,
        allowed_origins: entry.allowed_origins,
    })
}

/// A secret given inline or in a file (exactly one of the two), not empty.
fn secret(
    field: &str,
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    dir: &Path,
    files: &mut Vec<SecretFile>,
) -> anyhow::Result<SecretString> {
    use secrecy::ExposeSecret as _;
    let value = match (inline, file) {
        (Some(value), None) => value,
        (None, Some(file)) => {
            let path = dir.join(file);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!("`{field}_file`: cannot read {}: {e}", path.display())
            })?;
            files.push((path, modified));
            SecretString::from(text.trim())
        }
        (Some(_), Some(_)) => anyhow::bail!("give `{field}` or `{field}_file`, not both"),
        (None, None) => anyhow::bail!("`{field}` (or `{field}_file`) is required"),
    };
    anyhow::ensure!(
        !value.expose_secret().trim().is_empty(),
        "`{field}` is empty"
    );
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str, dir: &Path) -> anyhow::Result<(TenantWebhooks, Vec<SecretFile>)> {
        let entry: WebhooksEntry = toml::from_str(toml_text)?;
        let mut files = Vec::new();
        let webhooks = entry.resolve(dir, &mut files)?;
        Ok((webhooks, files))
    }

    #[test]
    fn secrets_come_inline_or_from_files_and_never_show_in_debug() {
        use secrecy::ExposeSecret as _;
        let dir = std::env::temp_dir().join(format!("sb-webhook-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("twilio"), "tw-token-from-file\n").unwrap();
        let (webhooks, files) = resolve(
            r#"
            [whatsapp]
            app_secret = "meta-app-secret"
            verify_token = "meta-verify"
            [sms]
            auth_token_file = "twilio"
            [webchat]
            keys_sha256 = ["0c28d6922e5b43cf27398eb37d4a94d6664956b895ad43bc1e0574966620e566"]
            allowed_origins = ["https://shop.example.com"]
            "#,
            &dir,
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, dir.join("twilio"));
        let Some(ChannelSecrets::Twilio { auth_token }) = webhooks.get(Channel::Sms).map(|s| &**s)
        else {
            panic!("no sms secrets: {webhooks:?}");
        };
        assert_eq!(auth_token.expose_secret(), "tw-token-from-file");
        assert!(webhooks.get(Channel::Messenger).is_none());
        let debug = format!("{webhooks:?}");
        for secret in ["meta-app-secret", "meta-verify", "tw-token-from-file"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        let webchat = webhooks.get(Channel::Webchat).unwrap();
        assert!(webchat.allows_origin("https://shop.example.com"));
        assert!(webchat.allows_origin("HTTPS://SHOP.EXAMPLE.COM/"));
        assert!(!webchat.allows_origin("https://evil.example.com"));
        assert!(
            !webhooks
                .get(Channel::Whatsapp)
                .unwrap()
                .allows_origin("https://shop.example.com")
        );
    }

    #[test]
    fn errors_name_the_field_but_not_the_secret() {
        let dir = std::env::temp_dir();
        for (text, expected) in [
            (
                "[sms]\nauth_token = \"s3cret-value\"\nauth_token_file = \"x\"\n",
                "not both",
            ),
            (
                "[messenger]\napp_secret = \"s3cret-value\"\n",
                "webhooks.messenger.verify_token",
            ),
            ("[sms]\nauth_token = \"  \"\n", "is empty"),
            (
                "[sms]\nauth_token_file = \"no-such-secret-file\"\n",
                "cannot read",
            ),
            ("[webchat]\nkeys_sha256 = []\n", "at least one"),
            (
                "[webchat]\nkeys_sha256 = [\"0c28d6922e5b43cf27398eb37d4a94d6664956b895ad43bc1e0574966620e566\"]\nallowed_origins = [\"shop.example.com\"]\n",
                "is not an origin",
            ),
        ] {
            let err = resolve(text, &dir).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("s3cret-value"), "{err}");
        }
    }
}
