//! The Meta Graph API's error object, shared by the WhatsApp Cloud API and
//! the Messenger and Instagram Send API:
//! `{"error":{"message","type","code","error_subcode","error_data":{"details"},"fbtrace_id"}}`.
//!
//! Meta says to branch on `code` (and `error_data.details`), not on the
//! message or the HTTP status; `error_subcode` is deprecated on WhatsApp
//! but still meaningful on Messenger (`10`/`2018278`: outside the window).

use super::{http::Answer, outcome::ProviderError};

/// The error in a Graph API answer; without a parsable error object, the
/// HTTP status stands in for the code.
pub fn error_of(answer: &Answer) -> ProviderError {
    let json = answer.json();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let Some(error) = error else {
        return ProviderError {
            code: answer.status.to_string(),
            message: answer.snippet(),
            http_status: answer.status,
            ..Default::default()
        };
    };
    let mut message = text(error.get("message"));
    let details = text(error.pointer("/error_data/details"));
    if !details.is_empty() {
        message = format!("{message} ({details})");
    }
    let code = text(error.get("code"));
    ProviderError {
        code: if code.is_empty() {
            answer.status.to_string()
        } else {
            code
        },
        subcode: text(error.get("error_subcode")),
        message,
        http_status: answer.status,
        trace: text(error.get("fbtrace_id")),
    }
}

/// Codes every Graph API uses for a throttled or briefly unavailable API
/// (1 unknown/temporary, 2 service unavailable, 4 app rate limit, 17 user
/// rate limit, 32 page rate limit, 341 application limit, 613 rate limit).
pub const TRANSIENT_CODES: &[&str] = &["1", "2", "4", "17", "32", "341", "613"];

/// Codes of those that mean "too fast" (the sender waits).
pub const RATE_LIMIT_CODES: &[&str] = &["4", "17", "32", "341", "613"];

/// Codes that say the token, the app's permissions or the business's
/// account are wrong: 190 invalid or expired token, 102 session, 10 and
/// 200-299 permissions (Messenger's 10/2018278 is handled before this),
/// 368 blocked for policy violations.
pub fn is_misconfiguration(code: &str) -> bool {
    matches!(code, "190" | "102" | "10" | "368")
        || code.parse::<u32>().is_ok_and(|c| (200..300).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn the_error_object_is_read_with_its_details() {
        let error = error_of(&answer(
            400,
            r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,
                "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed"},
                "error_subcode":2494010,"fbtrace_id":"AbCdEf"}}"#,
        ));
        assert_eq!(error.code, "131047");
        assert_eq!(error.subcode, "2494010");
        assert_eq!(error.trace, "AbCdEf");
        assert_eq!(error.http_status, 400);
        assert!(
            error.message.contains("Re-engagement") && error.message.contains("24 hours"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_answer_without_an_error_object_is_named_by_its_status() {
        let error = error_of(&answer(502, "<html>Bad Gateway</html>"));
        assert_eq!(error.code, "502");
        assert_eq!(error.message, "<html>Bad Gateway</html>");
    }
}
