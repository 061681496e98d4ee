//! Tenants, API keys and per-tenant rate limits.
//!
//! Callers present a tenant API key as `authorization: Bearer <key>`. The
//! tenants file stores only SHA-256 digests of keys
//! (`printf %s "$KEY" | sha256sum`), with each tenant's rate limit:
//!
//! ```toml
//! [[tenants]]
//! id = "acme"
//! api_keys_sha256 = ["<64 hex digits>"]   # several keys allow rotation
//! rate_limit_per_second = 1000            # sustained messages per second
//! rate_limit_burst = 2000                 # messages allowed at once
//! ```
//!
//! The file is re-read when it changes, without a restart. A file that
//! fails to load is refused with an error in the log, and the previous
//! tenants stay in force. A tenant whose limits are unchanged keeps its
//! bucket across reloads.
//!
//! A tenant may also hold the secrets of its channel webhooks, which the
//! HTTP webhook listener checks (see [`webhooks`] for the format); they
//! reload with the file, and with the secret files it names.
//!
//! Without a tenants file, gRPC authentication is off: every caller may
//! publish for any tenant, without limits. That suits local development
//! only. HTTP webhooks fail closed: a tenant and channel without secrets in
//! a tenants file are refused (401), so a node without one takes no HTTP
//! webhook at all. A tenants file may keep gRPC open while its webhooks are
//! checked (`api_keys_required = false`, for demos): a call without an
//! `authorization` header is then admitted as anyone, and a call with one
//! is still checked.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchboard_proto::v1::Channel;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::error::IngestError;

pub mod webhooks;

pub use self::webhooks::ChannelSecrets;
use self::webhooks::{SecretFile, TenantWebhooks, WebhooksEntry};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    /// Whether gRPC callers must present an API key (the default).
    #[serde(default = "required")]
    api_keys_required: bool,
    #[serde(default)]
    tenants: Vec<TenantEntry>,
}

fn required() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    id: String,
    #[serde(default)]
    api_keys_sha256: Vec<String>,
    rate_limit_per_second: u32,
    #[serde(default)]
    rate_limit_burst: Option<u32>,
    #[serde(default)]
    webhooks: WebhooksEntry,
}

struct Tenant {
    /// `rate_limit_per_second` and `rate_limit_burst` as written.
    limits: (u32, Option<u32>),
    limiter: Arc<DefaultDirectRateLimiter>,
    burst: NonZeroU32,
    webhooks: TenantWebhooks,
}

/// One loaded tenants file: key digests to tenant ids, and the tenants.
#[derive(Default)]
struct Snapshot {
    /// `api_keys_required`.
    keys_required: bool,
    keys: HashMap<[u8; 32], String>,
    tenants: HashMap<String, Tenant>,
    /// The secret files the tenants file names, with their modification times.
    secret_files: Vec<SecretFile>,
}

impl Snapshot {
    /// Whether a secret file changed since it was read.
    fn secrets_changed(&self) -> bool {
        self.secret_files
            .iter()
            .any(|(path, read)| modified(path) != *read)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Authenticates callers and applies tenant rate limits.
pub struct Auth {
    file: Option<PathBuf>,
    state: RwLock<(Arc<Snapshot>, Option<SystemTime>)>,
    /// Bumped at every reload, so long calls can check their caller again.
    reloads: watch::Sender<u64>,
}

/// Who is calling.
#[derive(Clone)]
pub enum Caller {
    /// Authentication is off.
    Anyone,
    /// An authenticated tenant.
    Tenant {
        /// The tenant id.
        id: String,
        /// Its rate limiter.
        limiter: Arc<DefaultDirectRateLimiter>,
        /// The limiter's burst: the most one request can ever take.
        burst: NonZeroU32,
        /// The SHA-256 digest of the API key it presented; none for a
        /// webhook that its channel's signature vouched for.
        key: Option<[u8; 32]>,
    },
}

/// How the HTTP webhook listener checks one tenant's webhooks on one channel.
pub enum WebhookAuth {
    /// The tenant is unknown, or has no webhook secrets for the channel (or
    /// there is no tenants file): refused.
    NotConfigured,
    /// The channel's secrets, and the tenant as a caller (its rate limit).
    Checked {
        /// The tenant, to admit the webhook's events with.
        caller: Caller,
        /// What the webhook must prove it knows.
        secrets: Arc<ChannelSecrets>,
    },
}

impl Caller {
    /// Checks that the caller may publish for `tenant_id` (found at `field`),
    /// and takes `messages` from its rate limit.
    /// A request with more messages than the tenant's burst (a channel
    /// webhook cannot be split) takes the whole burst: it waits for a full
    /// bucket instead of being refused forever.
    pub fn admit(
        &self,
        field: impl std::fmt::Display,
        tenant_id: &str,
        messages: u32,
    ) -> Result<(), IngestError> {
        let Self::Tenant {
            id, limiter, burst, ..
        } = self
        else {
            return Ok(());
        };
        if tenant_id != id && !tenant_id.is_empty() {
            return Err(IngestError::PermissionDenied(format!(
                "this API key belongs to tenant {id:?}, not {tenant_id:?} ({field})"
            )));
        }
        let Some(n) = NonZeroU32::new(messages) else {
            return Ok(());
        };
        let n = n.min(*burst);
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(IngestError::RateLimited {
                tenant: id.clone(),
                retry_after: not_until
                    .wait_time_from(governor::clock::DefaultClock::default().now()),
            }),
            Err(_insufficient) => Err(IngestError::RateLimited {
                tenant: id.clone(),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The tenant the caller is bound to, when authentication is on.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Anyone => None,
            Self::Tenant { id, .. } => Some(id),
        }
    }
}

impl Auth {
    /// Loads the tenants file, if any. Fails if it is given but invalid.
    pub fn new(file: Option<&Path>) -> anyhow::Result<Self> {
        let auth = Self {
            file: file.map(Path::to_path_buf),
            state: RwLock::new((Arc::default(), None)),
            reloads: watch::Sender::new(0),
        };
        if let Some(file) = file {
            let modified = std::fs::metadata(file)?.modified().ok();
            let snapshot = load(file, &Snapshot::default())?;
            *auth.state.write().expect("auth lock") = (Arc::new(snapshot), modified);
        }
        Ok(auth)
    }

    /// Whether gRPC callers must present an API key.
    pub fn enabled(&self) -> bool {
        self.file.is_some() && self.state.read().expect("auth lock").0.keys_required
    }

    /// Identifies the caller from its `authorization` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, IngestError> {
        let header = metadata.get("authorization");
        if self.file.is_none() || (header.is_none() && !self.enabled()) {
            return Ok(Caller::Anyone);
        }
        let header = header.ok_or_else(|| {
            IngestError::Unauthenticated("missing `authorization: Bearer <API key>` metadata")
        })?;
        let key = header.to_str().ok().and_then(bearer).ok_or_else(|| {
            IngestError::Unauthenticated("`authorization` must be `Bearer <API key>`")
        })?;
        self.caller(digest(key), "unknown API key")
    }

    /// The caller presenting the key with `digest`, in the tenants now in force.
    fn caller(&self, digest: [u8; 32], unknown: &'static str) -> Result<Caller, IngestError> {
        let snapshot = self.state.read().expect("auth lock").0.clone();
        let tenant = snapshot
            .keys
            .get(&digest)
            .ok_or(IngestError::Unauthenticated(unknown))?;
        let entry = &snapshot.tenants[tenant];
        Ok(Caller::Tenant {
            id: tenant.clone(),
            limiter: entry.limiter.clone(),
            burst: entry.burst,
            key: Some(digest),
        })
    }

    /// How a webhook of `tenant` on `channel` is checked, with the tenants
    /// now in force.
    pub fn webhook(&self, tenant: &str, channel: Channel) -> WebhookAuth {
        let snapshot = self.state.read().expect("auth lock").0.clone();
        let Some(entry) = snapshot.tenants.get(tenant) else {
            return WebhookAuth::NotConfigured;
        };
        match entry.webhooks.get(channel) {
            None => WebhookAuth::NotConfigured,
            Some(secrets) => WebhookAuth::Checked {
                caller: Caller::Tenant {
                    id: tenant.to_owned(),
                    limiter: entry.limiter.clone(),
                    burst: entry.burst,
                    key: None,
                },
                secrets: secrets.clone(),
            },
        }
    }

    /// Checks a long call's caller against the tenants now in force: its
    /// key may have been removed, or its limits changed, since the call
    /// began. A key that now belongs to another tenant is refused too.
    pub fn recheck(&self, caller: &Caller) -> Result<Caller, IngestError> {
        let Caller::Tenant { id, key, .. } = caller else {
            return Ok(Caller::Anyone);
        };
        let key = key.ok_or(IngestError::Unauthenticated("no API key to check again"))?;
        let current = self.caller(key, "the API key was revoked")?;
        if current.tenant() != Some(id.as_str()) {
            return Err(IngestError::Unauthenticated("the API key was revoked"));
        }
        Ok(current)
    }

    /// Changes at every reload of the tenants file.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Re-reads the tenants file if it, or a secret file it names, changed.
    /// On error the old tenants stay.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let modified = std::fs::metadata(file)?.modified().ok();
        let current = {
            let state = self.state.read().expect("auth lock");
            if state.1 == modified && !state.0.secrets_changed() {
                return Ok(false);
            }
            state.0.clone()
        };
        let snapshot = load(file, &current)?;
        *self.state.write().expect("auth lock") = (Arc::new(snapshot), modified);
        self.reloads.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Reloads the tenants file every `interval` until `stop` fires.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        stop: switchboard_runtime::shutdown::Shutdown,
    ) {
        if self.file.is_none() {
            return;
        }
        let auth = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
                match auth.reload_if_changed() {
                    Ok(true) => tracing::info!(file = ?auth.file, "tenants reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "tenants file refused; keeping the previous tenants")
                    }
                }
            }
        });
    }
}

fn load(path: &Path, previous: &Snapshot) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read tenants file {}: {e}", path.display()))?;
    // toml's own message quotes the offending line, which may hold a
    // secret: only its description and the line number are reported.
    let file: TenantsFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        anyhow::anyhow!(
            "tenants file {} is not valid: line {line}: {}",
            path.display(),
            e.message()
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut snapshot = Snapshot {
        keys_required: file.api_keys_required,
        ..Snapshot::default()
    };
    for entry in file.tenants {
        let problem = |what: String| anyhow::anyhow!("tenant {:?}: {what}", entry.id);
        if entry.id.is_empty() || entry.id.contains('/') {
            return Err(problem(
                "`id` must be non-empty and must not contain '/'".into(),
            ));
        }
        if entry.api_keys_sha256.is_empty() && entry.webhooks.is_empty() {
            return Err(problem(
                "lists neither API keys (`api_keys_sha256`) nor webhook secrets".into(),
            ));
        }
        for hex_digest in &entry.api_keys_sha256 {
            let digest = digest_from_hex(hex_digest).ok_or_else(|| {
                problem(format!(
                    "{hex_digest:?} is not a SHA-256 digest (64 hex digits)"
                ))
            })?;
            if let Some(other) = snapshot.keys.insert(digest, entry.id.clone()) {
                return Err(problem(format!(
                    "a key digest is also listed for tenant {other:?}"
                )));
            }
        }
        let per_second = NonZeroU32::new(entry.rate_limit_per_second)
            .ok_or_else(|| problem("`rate_limit_per_second` must be at least 1".into()))?;
        let burst = NonZeroU32::new(
            entry
                .rate_limit_burst
                .unwrap_or(entry.rate_limit_per_second),
        )
        .ok_or_else(|| problem("`rate_limit_burst` must be at least 1".into()))?;
        // A tenant whose limits did not change keeps its bucket.
        let limits = (entry.rate_limit_per_second, entry.rate_limit_burst);
        let limiter = match previous.tenants.get(&entry.id) {
            Some(old) if old.limits == limits => old.limiter.clone(),
            _ => Arc::new(RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        };
        let webhooks = entry
            .webhooks
            .resolve(dir, &mut snapshot.secret_files)
            .map_err(|e| problem(e.to_string()))?;
        if snapshot
            .tenants
            .insert(
                entry.id,
                Tenant {
                    limits,
                    limiter,
                    burst,
                    webhooks,
                },
            )
            .is_some()
        {
            return Err(anyhow::anyhow!("a tenant is listed twice"));
        }
    }
    Ok(snapshot)
}

/// The SHA-256 digest of an API key, as the tenants file stores it.
pub fn key_digest(key: &str) -> String {
    hex::encode(digest(key))
}

/// The key of an `authorization: Bearer <key>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The SHA-256 digest of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A digest as the tenants file writes it: 64 hex digits.
fn digest_from_hex(hex_digest: &str) -> Option<[u8; 32]> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests;
