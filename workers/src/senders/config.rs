//! The sender stage's configuration: the providers' APIs, the stage's
//! bounds and retries, and each tenant's credentials per channel.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use switchboard_proto::v1::Channel;

use super::secret::Secret;
use crate::config::AutoOffsetReset;

/// The sender stage: reads the outbound topics and calls the channels'
/// provider APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendersConfig {
    /// Run the sender stage in this worker (its own consumer group,
    /// `<group_id>.senders`, on the outbound topics of `channels`).
    pub enabled: bool,
    /// The channels whose outbound topics this stage reads (`whatsapp`,
    /// `messenger`, `instagram`, `sms`, `webchat`).
    pub channels: Vec<String>,
    /// Where the sender group starts reading a partition it has no
    /// committed offset for: `latest` (the default) sends only replies
    /// written from then on, so turning senders on does not send a backlog
    /// of old replies; `earliest` sends the topics' whole retention.
    pub auto_offset_reset: AutoOffsetReset,
    /// Most messages of one partition in flight at once (different
    /// conversations; one conversation's messages go one at a time).
    pub max_in_flight_per_partition: usize,
    /// Most messages in flight at once over all partitions.
    pub max_in_flight: usize,
    /// Most messages of one partition finished above its oldest unfinished
    /// one before the partition takes no more (see the routing workers'
    /// `max_finished_ahead_per_partition`).
    pub max_finished_ahead_per_partition: usize,
    /// Calls per message while the provider answers with a transient error
    /// (429, 5xx, a timeout, a throughput error code); then the message
    /// goes to the dead-letter topic and its conversation moves on. 0
    /// retries forever (the conversation waits).
    pub max_attempts: u32,
    /// First wait before retrying a transient error; doubles per attempt up
    /// to `retry_backoff_max`. A longer `Retry-After` wins.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest wait between two calls of a message, whatever `Retry-After`
    /// asks for.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Longest one provider call may take (connect, send, answer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest provider answer read, in bytes; a longer one is cut there
    /// (success answers are small JSON objects).
    pub max_response_bytes: usize,
    /// Envelope ids remembered per conversation once sent (or refused), so
    /// a copy of an outbound record is not sent twice. 0 turns this off.
    pub recent_sends_per_conversation: usize,
    /// Conversations remembered for `recent_sends_per_conversation`, the
    /// oldest forgotten first.
    pub recent_conversations: usize,
    /// Senders (phone numbers, pages, Twilio senders) with a rate-limit
    /// bucket in memory at once; idle, full buckets are forgotten first.
    pub max_senders: usize,
    /// WhatsApp Cloud API.
    pub whatsapp: GraphApi,
    /// Messenger Send API.
    pub messenger: GraphApi,
    /// Instagram messaging (through the Messenger Platform by default; for
    /// Instagram API with Instagram Login, point `base_url` at
    /// `https://graph.instagram.com`).
    pub instagram: GraphApi,
    /// Twilio Messages API (SMS, MMS).
    pub sms: TwilioApi,
    /// Web chat delivery (an HTTP POST of the envelope JSON).
    pub webchat: WebchatApi,
    /// A TOML file of credentials, `[tenants.<id>.<channel>]` tables as
    /// under `tenants` here (so secrets can live apart from the config,
    /// e.g. in a Kubernetes Secret). Read at start.
    pub credentials_file: Option<PathBuf>,
    /// Credentials per tenant, per channel. A tenant may be here or in
    /// `credentials_file`, not both.
    pub tenants: BTreeMap<String, TenantCredentials>,
}

impl Default for SendersConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            channels: Channel::KNOWN.map(|c| c.slug().to_owned()).to_vec(),
            auto_offset_reset: AutoOffsetReset::Latest,
            max_in_flight_per_partition: 256,
            max_in_flight: 2048,
            max_finished_ahead_per_partition: 10_000,
            max_attempts: 8,
            retry_backoff: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            recent_sends_per_conversation: 20,
            recent_conversations: 100_000,
            max_senders: 100_000,
            whatsapp: GraphApi::new(80.0),
            messenger: GraphApi::new(40.0),
            instagram: GraphApi::new(40.0),
            sms: TwilioApi::default(),
            webchat: WebchatApi::default(),
            credentials_file: None,
            tenants: BTreeMap::new(),
        }
    }
}

/// A sender's token bucket: `messages_per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Messages per second per sender, on average.
    pub messages_per_second: f64,
    /// Messages a sender may send at once after being idle.
    pub burst: u32,
}

/// A Meta Graph API (WhatsApp Cloud API, Messenger and Instagram Send API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphApi {
    /// Scheme and host (and a path prefix, if any), without a trailing `/`.
    pub base_url: String,
    /// The Graph API version in the path, e.g. `v21.0`.
    pub api_version: String,
    /// The default rate per sending phone number or page; a sender's
    /// credentials may set their own.
    pub rate: Rate,
}

impl GraphApi {
    fn new(messages_per_second: f64) -> Self {
        Self {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
            rate: Rate {
                messages_per_second,
                burst: messages_per_second.ceil() as u32,
            },
        }
    }
}

impl Default for GraphApi {
    fn default() -> Self {
        Self::new(80.0)
    }
}

/// The Twilio Messages API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioApi {
    /// Scheme and host, without a trailing `/`.
    pub base_url: String,
    /// The default rate per sender (`From` or Messaging Service): a US
    /// long code sends one segment per second; short codes and Messaging
    /// Services set their own in their credentials.
    pub rate: Rate,
}

impl Default for TwilioApi {
    fn default() -> Self {
        Self {
            base_url: "https://api.twilio.com".into(),
            rate: Rate {
                messages_per_second: 1.0,
                burst: 1,
            },
        }
    }
}

/// Web chat delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebchatApi {
    /// The default rate per tenant.
    pub rate: Rate,
}

impl Default for WebchatApi {
    fn default() -> Self {
        Self {
            rate: Rate {
                messages_per_second: 200.0,
                burst: 200,
            },
        }
    }
}

/// One tenant's credentials; a channel without any cannot be sent on (its
/// messages go to the dead-letter topic, to be replayed once configured).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantCredentials {
    /// WhatsApp Cloud API.
    pub whatsapp: Option<WhatsappCredentials>,
    /// Messenger.
    pub messenger: Option<PageCredentials>,
    /// Instagram.
    pub instagram: Option<PageCredentials>,
    /// SMS through Twilio.
    pub sms: Option<TwilioCredentials>,
    /// Web chat.
    pub webchat: Option<WebchatCredentials>,
}

/// A WhatsApp business phone number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappCredentials {
    /// The business phone number's id (not the number itself).
    pub phone_number_id: String,
    /// A system-user (or user) access token, sent as `Authorization: Bearer`.
    pub token: Secret,
    /// This number's rate, e.g. 1000/s once upgraded; else `whatsapp.rate`.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// A Facebook Page (Messenger, or Instagram through the Messenger Platform),
/// or an Instagram professional account (Instagram Login).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageCredentials {
    /// The page (or Instagram account) id; the rate-limit key. Requests go
    /// to `/me/messages`, which the token identifies.
    pub page_id: String,
    /// The Page access token, sent as the `access_token` query parameter.
    pub page_token: Secret,
    /// With "Require App Secret" on: the app secret, to add
    /// `appsecret_proof` (HMAC-SHA256 of the token).
    #[serde(default)]
    pub app_secret: Option<Secret>,
    /// This page's rate; else the channel's.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// A Twilio account and its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioCredentials {
    /// `AC...`; the user name of HTTP Basic auth (unless `api_key_sid`).
    pub account_sid: String,
    /// The account's auth token (or the API key's secret).
    pub auth_token: Secret,
    /// An API key (`SK...`) to authenticate with instead of the account SID.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    /// The sending number (E.164, or a channel address such as `whatsapp:+1...`).
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG...`) to send from instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Where Twilio posts the message's status changes.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// This sender's rate; else `sms.rate`.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// Where a tenant's web chat receives outbound messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebchatCredentials {
    /// The delivery URL (`http://` or `https://`).
    pub url: String,
    /// Sent as `Authorization: Bearer`, when set.
    #[serde(default)]
    pub token: Option<Secret>,
    /// This tenant's rate; else `webchat.rate`.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// The shape of `credentials_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    tenants: BTreeMap<String, TenantCredentials>,
}

impl SendersConfig {
    /// The channels of `channels`, checked.
    pub fn channel_list(&self) -> anyhow::Result<Vec<Channel>> {
        self.channels
            .iter()
            .map(|slug| {
                Channel::KNOWN
                    .into_iter()
                    .find(|c| c.slug() == slug)
                    .ok_or_else(|| anyhow::anyhow!("senders.channels: unknown channel {slug:?}"))
            })
            .collect()
    }

    /// Every tenant's credentials: `tenants` and those of `credentials_file`.
    pub fn credentials(&self) -> anyhow::Result<BTreeMap<String, TenantCredentials>> {
        let mut all = self.tenants.clone();
        if let Some(path) = &self.credentials_file {
            for (tenant, credentials) in read_credentials(path)? {
                anyhow::ensure!(
                    !all.contains_key(&tenant),
                    "senders: tenant {tenant:?} has credentials both in the config and in {}",
                    path.display()
                );
                all.insert(tenant, credentials);
            }
        }
        Ok(all)
    }

    /// Checks the settings and every credential; errors name the field and
    /// never show a secret.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.channel_list()?;
        for (name, value) in [
            (
                "max_in_flight_per_partition",
                self.max_in_flight_per_partition,
            ),
            ("max_in_flight", self.max_in_flight),
            (
                "max_finished_ahead_per_partition",
                self.max_finished_ahead_per_partition,
            ),
            ("max_response_bytes", self.max_response_bytes),
            ("recent_conversations", self.recent_conversations),
            ("max_senders", self.max_senders),
        ] {
            anyhow::ensure!(value > 0, "senders.{name} must be at least 1");
        }
        for (name, api) in [
            ("whatsapp", &self.whatsapp),
            ("messenger", &self.messenger),
            ("instagram", &self.instagram),
        ] {
            check_url(&format!("senders.{name}.base_url"), &api.base_url)?;
            anyhow::ensure!(
                !api.api_version.is_empty() && !api.api_version.contains('/'),
                "senders.{name}.api_version must be a version such as v21.0"
            );
            check_rate(&format!("senders.{name}.rate"), &api.rate)?;
        }
        check_url("senders.sms.base_url", &self.sms.base_url)?;
        check_rate("senders.sms.rate", &self.sms.rate)?;
        check_rate("senders.webchat.rate", &self.webchat.rate)?;
        for (tenant, credentials) in self.credentials()? {
            credentials
                .validate()
                .map_err(|e| anyhow::anyhow!("senders.tenants.{tenant}.{e}"))?;
        }
        Ok(())
    }
}

impl TenantCredentials {
    fn validate(&self) -> anyhow::Result<()> {
        let present = |what: &str, value: &str| {
            anyhow::ensure!(!value.trim().is_empty(), "{what} must not be empty");
            Ok(())
        };
        let rate = |what: &str, rate: &Option<Rate>| match rate {
            Some(rate) => check_rate(what, rate),
            None => Ok(()),
        };
        if let Some(w) = &self.whatsapp {
            present("whatsapp.phone_number_id", &w.phone_number_id)?;
            present("whatsapp.token", w.token.expose())?;
            rate("whatsapp.rate", &w.rate)?;
        }
        for (name, page) in [
            ("messenger", &self.messenger),
            ("instagram", &self.instagram),
        ] {
            if let Some(p) = page {
                present(&format!("{name}.page_id"), &p.page_id)?;
                present(&format!("{name}.page_token"), p.page_token.expose())?;
                rate(&format!("{name}.rate"), &p.rate)?;
            }
        }
        if let Some(t) = &self.sms {
            present("sms.account_sid", &t.account_sid)?;
            present("sms.auth_token", t.auth_token.expose())?;
            anyhow::ensure!(
                t.from.is_some() != t.messaging_service_sid.is_some(),
                "sms needs exactly one of from and messaging_service_sid"
            );
            rate("sms.rate", &t.rate)?;
        }
        if let Some(w) = &self.webchat {
            check_url("webchat.url", &w.url)?;
            rate("webchat.rate", &w.rate)?;
        }
        Ok(())
    }
}

fn read_credentials(path: &Path) -> anyhow::Result<BTreeMap<String, TenantCredentials>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "senders.credentials_file {}: cannot read it: {e}",
            path.display()
        )
    })?;
    // The parser's message quotes the offending line, which may hold a
    // secret: say only where.
    let file: CredentialsFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .unwrap_or(0);
        anyhow::anyhow!(
            "senders.credentials_file {}: invalid near line {at} (expected [tenants.<id>.<channel>] tables)",
            path.display()
        )
    })?;
    Ok(file.tenants)
}

fn check_url(what: &str, url: &str) -> anyhow::Result<()> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{what}: bad URL {url:?}: {e}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "{what}: {url} must be http:// or https://"
    );
    Ok(())
}

fn check_rate(what: &str, rate: &Rate) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate.messages_per_second.is_finite() && rate.messages_per_second > 0.0,
        "{what}.messages_per_second must be above 0"
    );
    anyhow::ensure!(rate.burst > 0, "{what}.burst must be at least 1");
    Ok(())
}
