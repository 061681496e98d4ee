//! Webhook signatures, computed and checked in constant time (the `hmac`
//! crate's `verify_slice`):
//!
//! - **Meta** (WhatsApp, Messenger, Instagram): `X-Hub-Signature-256:
//!   sha256=<hex>`, the HMAC-SHA256 of the raw body keyed with the app
//!   secret.
//! - **Twilio**: `X-Twilio-Signature: <base64>`, the HMAC-SHA1, keyed with
//!   the auth token, of the full URL Twilio called followed by every POST
//!   parameter sorted by name (then value), each as name then value, with
//!   no separators. As Twilio's SDKs do, the URL is tried both without its
//!   port and with one (the scheme's default when it has none), since
//!   Twilio's port handling when signing is inconsistent. A URL with a
//!   `bodySHA256` query parameter (JSON bodies) is signed alone, and the
//!   body's SHA-256 must match the parameter.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Meta's header value for `body`: `sha256=<hex HMAC-SHA256>`.
pub fn meta_signature(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is Meta's signature of `body` with `app_secret`.
pub fn meta_valid(app_secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(expected) = header
        .trim()
        .strip_prefix("sha256=")
        .and_then(|hex| hex::decode(hex).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC takes any key");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Twilio's header value for a form POST of `body` to `url`, exactly as
/// given (no port variants).
pub fn twilio_signature(auth_token: &[u8], url: &str, body: &[u8]) -> String {
    BASE64.encode(
        twilio_mac(auth_token, url, &signed_params(url, body))
            .finalize()
            .into_bytes(),
    )
}

/// Whether `header` is Twilio's signature of a POST of `body` to `url`.
pub fn twilio_valid(auth_token: &[u8], url: &str, body: &[u8], header: &str) -> bool {
    let Ok(expected) = BASE64.decode(header.trim()) else {
        return false;
    };
    let body_ok = match query_param(url, "bodySHA256") {
        Some(hash) => hex::encode(Sha256::digest(body))
            .as_bytes()
            .ct_eq(hash.to_ascii_lowercase().as_bytes())
            .into(),
        None => true,
    };
    let params = signed_params(url, body);
    let signed = port_variants(url).into_iter().any(|url| {
        twilio_mac(auth_token, &url, &params)
            .verify_slice(&expected)
            .is_ok()
    });
    body_ok & signed
}

/// What follows the URL in the signed string: the sorted form parameters,
/// or nothing when the body is covered by `bodySHA256`.
fn signed_params(url: &str, body: &[u8]) -> Vec<(String, String)> {
    if query_param(url, "bodySHA256").is_some() {
        return Vec::new();
    }
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body.trim_ascii())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    // Names in byte order, a repeated name's values too; as the SDKs do,
    // an exact repeat counts once.
    params.sort();
    params.dedup();
    params
}

fn twilio_mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes any key");
    mac.update(url.as_bytes());
    for (name, value) in params {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The first value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` without its port, and with one: its own, or the scheme's default
/// (443 for https, 80 otherwise) when it has none.
fn port_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // An IPv6 host is bracketed; a port follows the last ':' after it.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match authority[host_end..].rfind(':') {
        Some(i) => authority.split_at(host_end + i),
        None => (authority, ""),
    };
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let with_port = if port.is_empty() { default } else { port };
    vec![
        format!("{scheme}://{host}{tail}"),
        format!("{scheme}://{host}{with_port}{tail}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of twilio-python's `RequestValidator` tests: auth token
    /// `12345`, a call's parameters, a URL with a query.
    const TOKEN: &[u8] = b"12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const PARAMS: &str = "CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309";

    #[test]
    fn twilio_signatures_match_the_sdk_vectors() {
        assert_eq!(
            twilio_signature(TOKEN, URL, PARAMS.as_bytes()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert!(twilio_valid(
            TOKEN,
            URL,
            PARAMS.as_bytes(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // Parameter order in the body does not matter; values do.
        let shuffled = "To=%2B18005551212&Caller=%2B14158675309&From=%2B14158675309&Digits=1234&CallSid=CA1234567890ABCDE";
        assert!(twilio_valid(
            TOKEN,
            URL,
            shuffled.as_bytes(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let changed = PARAMS.replace("Digits=1234", "Digits=1235");
        assert!(!twilio_valid(
            TOKEN,
            URL,
            changed.as_bytes(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_valid(
            b"54321",
            URL,
            PARAMS.as_bytes(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // A repeated name: its values sorted too.
        let repeated = "Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(
            twilio_signature(TOKEN, URL, repeated.as_bytes()),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
    }

    #[test]
    fn twilio_ports_are_tried_with_and_without() {
        let body = PARAMS.as_bytes();
        // Signed with :443 but configured without, and the other way round.
        assert!(twilio_valid(
            TOKEN,
            URL,
            body,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        let with_port = URL.replace(".com", ".com:1234");
        assert!(twilio_valid(
            TOKEN,
            &with_port,
            body,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let http = URL.replace("https", "http");
        assert!(twilio_valid(
            TOKEN,
            &http,
            body,
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        ));
        let http_1234 = http.replace(".com", ".com:1234");
        assert!(twilio_valid(
            TOKEN,
            &http_1234,
            body,
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
        assert_eq!(
            port_variants("http://[::1]:8080/a?b=1"),
            ["http://[::1]/a?b=1", "http://[::1]:8080/a?b=1"]
        );
    }

    #[test]
    fn twilio_json_bodies_are_covered_by_their_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let url = format!(
            "{URL}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        assert!(twilio_valid(
            TOKEN,
            &url,
            body,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
        assert!(!twilio_valid(
            TOKEN,
            &url,
            b"{}",
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
    }

    #[test]
    fn twilio_refuses_headers_that_are_not_base64() {
        assert!(!twilio_valid(TOKEN, URL, PARAMS.as_bytes(), "not base64!"));
        assert!(!twilio_valid(TOKEN, URL, PARAMS.as_bytes(), ""));
    }

    /// Computed independently:
    /// `printf %s "$body" | openssl dgst -sha256 -hmac meta-app-secret`.
    #[test]
    fn meta_signatures_match_openssl() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let signature = meta_signature(b"meta-app-secret", body);
        assert_eq!(
            signature,
            "sha256=ee9f05f989bc0aa2693d85691a477f8b8403933cde7959a1c5c6be7ea85e8d3d"
        );
        assert!(meta_valid(b"meta-app-secret", body, &signature));
        assert!(meta_valid(
            b"meta-app-secret",
            body,
            &format!(" {signature} ")
        ));
        assert!(!meta_valid(b"other-secret", body, &signature));
        assert!(!meta_valid(b"meta-app-secret", b"{}", &signature));
        assert!(!meta_valid(
            b"meta-app-secret",
            body,
            signature.trim_start_matches("sha256=")
        ));
        assert!(!meta_valid(b"meta-app-secret", body, "sha256=zz"));
        assert!(!meta_valid(b"meta-app-secret", body, ""));
    }
}
