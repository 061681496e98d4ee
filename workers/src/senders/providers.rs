//! Which provider API an envelope goes to, from which sender, and how its
//! answer reads: the one place that knows every provider module.

use std::collections::BTreeMap;

use switchboard_proto::v1::{Channel, Direction, Envelope};

use super::{
    config::{Rate, SendersConfig, TenantCredentials},
    http::Answer,
    meta,
    outcome::{Accepted, ProviderError, Request, SendError},
    twilio, webchat, whatsapp,
};

/// A provider API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// WhatsApp Cloud API.
    Whatsapp,
    /// Messenger Send API.
    Messenger,
    /// Instagram messaging (Send API).
    Instagram,
    /// Twilio Messages API.
    Twilio,
    /// A tenant's web chat delivery URL.
    Webchat,
}

impl Provider {
    /// The provider of `channel`.
    pub fn of(channel: Channel) -> Option<Self> {
        Some(match channel {
            Channel::Whatsapp => Self::Whatsapp,
            Channel::Messenger => Self::Messenger,
            Channel::Instagram => Self::Instagram,
            Channel::Sms => Self::Twilio,
            Channel::Webchat => Self::Webchat,
            Channel::Unspecified => return None,
        })
    }

    /// Its name in analytics records and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Whatsapp => "whatsapp",
            Self::Messenger => "messenger",
            Self::Instagram => "instagram",
            Self::Twilio => "twilio",
            Self::Webchat => "webchat",
        }
    }
}

/// One envelope's call: the provider, the sender it leaves from (the
/// rate-limit key), the sender's rate, and the request.
#[derive(Debug)]
pub struct Target {
    /// The provider API.
    pub provider: Provider,
    /// The phone_number_id, page id, Twilio sender, or the tenant (web chat).
    pub sender_id: String,
    /// The sender's rate.
    pub rate: Rate,
    /// The call.
    pub request: Request,
}

/// The providers' settings and every tenant's credentials.
pub struct Providers {
    config: SendersConfig,
    credentials: BTreeMap<String, TenantCredentials>,
}

impl Providers {
    /// Checks the settings and reads the credentials.
    pub fn new(config: &SendersConfig) -> anyhow::Result<Self> {
        config.validate()?;
        Ok(Self {
            credentials: config.credentials()?,
            config: config.clone(),
        })
    }

    /// Where `envelope` goes. A tenant without credentials for the channel
    /// is a configuration error (the message can go once they are added).
    pub fn target(&self, envelope: &Envelope) -> Result<Target, SendError> {
        if envelope.direction() != Direction::Outbound {
            return Err(SendError::Unsendable(
                "only OUTBOUND messages are sent to customers".into(),
            ));
        }
        let channel = envelope.channel();
        let provider = Provider::of(channel)
            .ok_or_else(|| SendError::Unsendable("the envelope has no channel".into()))?;
        let tenant = self.credentials.get(&envelope.tenant_id);
        let missing = || {
            SendError::Misconfigured(Box::new(ProviderError {
                code: "no_credentials".into(),
                message: format!(
                    "tenant {:?} has no {} credentials (senders.tenants)",
                    envelope.tenant_id,
                    channel.slug()
                ),
                ..Default::default()
            }))
        };
        let c = &self.config;
        Ok(match provider {
            Provider::Whatsapp => {
                let creds = tenant
                    .and_then(|t| t.whatsapp.as_ref())
                    .ok_or_else(missing)?;
                Target {
                    provider,
                    sender_id: creds.phone_number_id.clone(),
                    rate: creds.rate.unwrap_or(c.whatsapp.rate),
                    request: whatsapp::request(&c.whatsapp, creds, envelope)?,
                }
            }
            Provider::Messenger | Provider::Instagram => {
                let (creds, api) = if provider == Provider::Messenger {
                    (tenant.and_then(|t| t.messenger.as_ref()), &c.messenger)
                } else {
                    (tenant.and_then(|t| t.instagram.as_ref()), &c.instagram)
                };
                let creds = creds.ok_or_else(missing)?;
                Target {
                    provider,
                    sender_id: creds.page_id.clone(),
                    rate: creds.rate.unwrap_or(api.rate),
                    request: meta::request(api, creds, envelope)?,
                }
            }
            Provider::Twilio => {
                let creds = tenant.and_then(|t| t.sms.as_ref()).ok_or_else(missing)?;
                Target {
                    provider,
                    sender_id: creds
                        .messaging_service_sid
                        .clone()
                        .or_else(|| creds.from.clone())
                        .unwrap_or_default(),
                    rate: creds.rate.unwrap_or(c.sms.rate),
                    request: twilio::request(&c.sms, creds, envelope)?,
                }
            }
            Provider::Webchat => {
                let creds = tenant
                    .and_then(|t| t.webchat.as_ref())
                    .ok_or_else(missing)?;
                Target {
                    provider,
                    sender_id: envelope.tenant_id.clone(),
                    rate: creds.rate.unwrap_or(c.webchat.rate),
                    request: webchat::request(creds, envelope)?,
                }
            }
        })
    }

    /// Reads `provider`'s answer to `envelope`. A redirect is never
    /// followed: it means the base URL is wrong.
    pub fn read(
        &self,
        provider: Provider,
        answer: &Answer,
        envelope: &Envelope,
    ) -> Result<Accepted, SendError> {
        if (300..400).contains(&answer.status) {
            return Err(SendError::Misconfigured(Box::new(ProviderError {
                code: answer.status.to_string(),
                message: "redirects are not followed; check the provider's base_url".into(),
                http_status: answer.status,
                ..Default::default()
            })));
        }
        match provider {
            Provider::Whatsapp => whatsapp::answer(answer),
            Provider::Messenger | Provider::Instagram => meta::answer(answer),
            Provider::Twilio => twilio::answer(answer),
            Provider::Webchat => webchat::answer(answer, envelope),
        }
    }
}
