//! Checks a webhook request against its tenant's channel secrets, before
//! anything is parsed or published.

use http::{HeaderMap, StatusCode, Uri, header};
use secrecy::ExposeSecret as _;

use super::{
    metrics::SignatureFailure,
    response,
    signature::{meta_valid, twilio_valid},
};
use crate::auth::{ChannelSecrets, bearer, digest};

/// Meta's signature header.
pub const META_SIGNATURE: &str = "x-hub-signature-256";
/// Twilio's signature header.
pub const TWILIO_SIGNATURE: &str = "x-twilio-signature";

/// Why a webhook request was refused before publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A missing or wrong signature or key: 401.
    Signature(SignatureFailure, &'static str),
    /// A browser page from an origin the tenant does not allow: 403.
    Origin,
}

impl Refusal {
    /// The answer, naming what was wrong (never a secret).
    pub fn response(&self) -> axum::response::Response {
        match self {
            Self::Signature(SignatureFailure::Missing, header) => response::refused_field(
                StatusCode::UNAUTHORIZED,
                header,
                "is required: the webhook must be signed (or carry the tenant's key)",
            ),
            Self::Signature(SignatureFailure::Invalid, header) => response::refused_field(
                StatusCode::UNAUTHORIZED,
                header,
                "does not match: wrong secret, or the body or URL changed on the way",
            ),
            Self::Origin => response::refused_field(
                StatusCode::FORBIDDEN,
                "origin",
                "is not one of the tenant's allowed web chat origins",
            ),
        }
    }
}

/// What a check looks at: the request as received.
pub struct Received<'a> {
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its path and query, as received (still percent-encoded).
    pub uri: &'a Uri,
    /// Its body, exactly as received.
    pub body: &'a [u8],
    /// `http.public_base_url`, if set.
    pub public_base_url: Option<&'a str>,
}

impl Received<'_> {
    fn header(&self, name: &'static str) -> Result<&str, Refusal> {
        let value = self
            .headers
            .get(name)
            .ok_or(Refusal::Signature(SignatureFailure::Missing, name))?;
        value
            .to_str()
            .map_err(|_| Refusal::Signature(SignatureFailure::Invalid, name))
    }

    /// The URL the provider called: the public base URL (or `http://` and
    /// the `Host` header) followed by the path and query as received.
    fn public_url(&self) -> String {
        let base = match self.public_base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => {
                let host = self
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| self.uri.authority().map(|a| a.as_str()))
                    .unwrap_or_default();
                format!("http://{host}")
            }
        };
        let path_and_query = self
            .uri
            .path_and_query()
            .map_or(self.uri.path(), |pq| pq.as_str());
        format!("{base}{path_and_query}")
    }
}

/// Checks `request` against `secrets`.
pub fn check(secrets: &ChannelSecrets, request: &Received<'_>) -> Result<(), Refusal> {
    let invalid = |header| Err(Refusal::Signature(SignatureFailure::Invalid, header));
    match secrets {
        ChannelSecrets::Meta { app_secret, .. } => {
            let signature = request.header(META_SIGNATURE)?;
            if !meta_valid(
                app_secret.expose_secret().as_bytes(),
                request.body,
                signature,
            ) {
                return invalid(META_SIGNATURE);
            }
        }
        ChannelSecrets::Twilio { auth_token } => {
            let signature = request.header(TWILIO_SIGNATURE)?;
            let url = request.public_url();
            let token = auth_token.expose_secret().as_bytes();
            if !twilio_valid(token, &url, request.body, signature) {
                return invalid(TWILIO_SIGNATURE);
            }
        }
        ChannelSecrets::Webchat { keys, .. } => {
            // The origin first: a page the tenant does not allow learns
            // nothing about the key it tried.
            if let Some(origin) = request.headers.get(header::ORIGIN)
                && !origin.to_str().is_ok_and(|o| secrets.allows_origin(o))
            {
                return Err(Refusal::Origin);
            }
            let key = bearer(request.header("authorization")?);
            let known = key.is_some_and(|k| keys.contains(&digest(k)));
            if !known {
                return invalid("authorization");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http::HeaderValue;
    use secrecy::SecretString;

    use super::*;
    use crate::http::signature::{meta_signature, twilio_signature};

    fn received<'a>(
        headers: &'a HeaderMap,
        uri: &'a Uri,
        body: &'a [u8],
        base: Option<&'a str>,
    ) -> Received<'a> {
        Received {
            headers,
            uri,
            body,
            public_base_url: base,
        }
    }

    #[test]
    fn meta_posts_need_the_app_secrets_signature() {
        let secrets = ChannelSecrets::Meta {
            app_secret: SecretString::from("app-secret"),
            verify_token: SecretString::from("verify"),
        };
        let uri: Uri = "/webhooks/acme/whatsapp".parse().unwrap();
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let mut headers = HeaderMap::new();
        assert_eq!(
            check(&secrets, &received(&headers, &uri, body, None)),
            Err(Refusal::Signature(
                SignatureFailure::Missing,
                META_SIGNATURE
            ))
        );
        headers.insert(
            META_SIGNATURE,
            HeaderValue::from_str(&meta_signature(b"app-secret", body)).unwrap(),
        );
        assert_eq!(
            check(&secrets, &received(&headers, &uri, body, None)),
            Ok(())
        );
        assert_eq!(
            check(&secrets, &received(&headers, &uri, b"{}", None)),
            Err(Refusal::Signature(
                SignatureFailure::Invalid,
                META_SIGNATURE
            ))
        );
    }

    /// Behind a proxy the node sees another host and scheme; the public
    /// base URL (with a path prefix the proxy strips) is what was signed.
    #[test]
    fn twilio_posts_are_checked_against_the_public_url() {
        let secrets = ChannelSecrets::Twilio {
            auth_token: SecretString::from("tw-token"),
        };
        let uri: Uri = "/webhooks/acme/sms?x=1".parse().unwrap();
        let body = b"MessageSid=SM1&From=%2B1555&Body=hi";
        let public = "https://hooks.example.com/sb/webhooks/acme/sms?x=1";
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.7:8080"));
        headers.insert(
            TWILIO_SIGNATURE,
            HeaderValue::from_str(&twilio_signature(b"tw-token", public, body)).unwrap(),
        );
        let base = Some("https://hooks.example.com/sb/");
        assert_eq!(
            check(&secrets, &received(&headers, &uri, body, base)),
            Ok(())
        );
        assert_eq!(
            check(&secrets, &received(&headers, &uri, body, None)),
            Err(Refusal::Signature(
                SignatureFailure::Invalid,
                TWILIO_SIGNATURE
            ))
        );
        // Without a public base URL, the Host header is the URL's host.
        let direct = "http://10.0.0.7:8080/webhooks/acme/sms?x=1";
        headers.insert(
            TWILIO_SIGNATURE,
            HeaderValue::from_str(&twilio_signature(b"tw-token", direct, body)).unwrap(),
        );
        assert_eq!(
            check(&secrets, &received(&headers, &uri, body, None)),
            Ok(())
        );
    }

    #[test]
    fn webchat_needs_a_key_and_an_allowed_origin() {
        let secrets = ChannelSecrets::Webchat {
            keys: HashSet::from([digest("site-key")]),
            allowed_origins: vec!["https://shop.example.com".into()],
        };
        let uri: Uri = "/webhooks/acme/webchat".parse().unwrap();
        let mut headers = HeaderMap::new();
        let at = |headers: &HeaderMap| check(&secrets, &received(headers, &uri, b"{}", None));
        assert_eq!(
            at(&headers),
            Err(Refusal::Signature(
                SignatureFailure::Missing,
                "authorization"
            ))
        );
        headers.insert("authorization", HeaderValue::from_static("Bearer nope"));
        assert_eq!(
            at(&headers),
            Err(Refusal::Signature(
                SignatureFailure::Invalid,
                "authorization"
            ))
        );
        headers.insert("authorization", HeaderValue::from_static("Bearer site-key"));
        assert_eq!(at(&headers), Ok(()));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://shop.example.com"),
        );
        assert_eq!(at(&headers), Ok(()));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example.com"),
        );
        assert_eq!(at(&headers), Err(Refusal::Origin));
    }
}
