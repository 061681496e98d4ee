//! Request building per provider and error classification, on the
//! providers' documented shapes (the fixtures the stand-in servers answer with).

use std::time::Duration;

use serde_json::json;
use switchboard_proto::v1::{
    Attachments, Channel, Direction, Envelope, Location, Media, MessageTag, Party, Reaction,
    Template, Text, envelope::Content, media::Kind,
};

use super::{
    config::{
        GraphApi, PageCredentials, Rate, SendersConfig, TenantCredentials, TwilioApi,
        TwilioCredentials, WebchatCredentials, WhatsappCredentials,
    },
    http::Answer,
    interactive::ATTRIBUTE,
    meta,
    outcome::{Auth, Body, SendError},
    providers::{Provider, Providers},
    secret::Secret,
    twilio, webchat, whatsapp,
};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/fixtures/providers")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        retry_after: None,
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn envelope(channel: Channel, content: Content) -> Envelope {
    Envelope {
        message_id: "0193b3a0-7f3e-7c1a-9a41-3f5e2a1b9c01".into(),
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: Direction::Outbound as i32,
        conversation_id: "c-1".into(),
        customer: Some(Party {
            id: "16505551234".into(),
            display_name: String::new(),
        }),
        content: Some(content),
        ..Default::default()
    }
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

fn media(kind: Kind, url: &str, caption: &str) -> Media {
    Media {
        kind: kind as i32,
        url: url.into(),
        caption: caption.into(),
        ..Default::default()
    }
}

fn whatsapp_credentials() -> WhatsappCredentials {
    WhatsappCredentials {
        phone_number_id: "106540352242922".into(),
        token: Secret::new("EAAG-wa-token"),
        rate: None,
    }
}

fn page_credentials(app_secret: Option<&str>) -> PageCredentials {
    PageCredentials {
        page_id: "PAGE-1".into(),
        page_token: Secret::new("EAAB-page-token"),
        app_secret: app_secret.map(Secret::new),
        rate: None,
    }
}

fn twilio_credentials() -> TwilioCredentials {
    TwilioCredentials {
        account_sid: "AC9a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
        auth_token: Secret::new("twilio-auth-token"),
        api_key_sid: None,
        from: Some("+15559870000".into()),
        messaging_service_sid: None,
        status_callback: None,
        rate: None,
    }
}

fn json_body(body: &Body) -> &serde_json::Value {
    match body {
        Body::Json(value) => value,
        Body::Form(_) => panic!("expected JSON"),
    }
}

fn form_body(body: &Body) -> &[(String, String)] {
    match body {
        Body::Form(pairs) => pairs,
        Body::Json(_) => panic!("expected a form"),
    }
}

// ---- WhatsApp ----

#[test]
fn whatsapp_text_goes_to_the_numbers_messages_endpoint_with_a_bearer_token() {
    let mut e = envelope(Channel::Whatsapp, text("Hi Ann"));
    e.reply_to = "wamid.IN-1".into();
    let request = whatsapp::request(&GraphApi::default(), &whatsapp_credentials(), &e).unwrap();
    assert_eq!(
        request.url.as_str(),
        "https://graph.facebook.com/v21.0/106540352242922/messages"
    );
    assert_eq!(request.auth, Auth::Bearer(Secret::new("EAAG-wa-token")));
    assert_eq!(
        json_body(&request.body),
        &json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "16505551234",
            "type": "text",
            "text": {"body": "Hi Ann", "preview_url": false},
            "context": {"message_id": "wamid.IN-1"},
        })
    );
    let shown = format!("{request:?}");
    assert!(!shown.contains("EAAG-wa-token"), "{shown}");
}

#[test]
fn whatsapp_media_takes_captions_and_filenames_where_whatsapp_does() {
    let image = whatsapp::body(&envelope(
        Channel::Whatsapp,
        Content::Media(media(Kind::Image, "https://cdn/x.jpg", "look")),
    ))
    .unwrap();
    assert_eq!(image["type"], "image");
    assert_eq!(
        image["image"],
        json!({"link": "https://cdn/x.jpg", "caption": "look"})
    );
    let audio = whatsapp::body(&envelope(
        Channel::Whatsapp,
        Content::Media(media(Kind::Audio, "https://cdn/a.ogg", "ignored")),
    ))
    .unwrap();
    assert_eq!(audio["audio"], json!({"link": "https://cdn/a.ogg"}));
    let document = whatsapp::body(&envelope(
        Channel::Whatsapp,
        Content::Attachments(Attachments {
            items: vec![Media {
                filename: "a.pdf".into(),
                media_id: "MEDIA-1".into(),
                ..media(Kind::File, "", "")
            }],
            caption: "the invoice".into(),
        }),
    ))
    .unwrap();
    assert_eq!(document["type"], "document");
    assert_eq!(
        document["document"],
        json!({"id": "MEDIA-1", "caption": "the invoice", "filename": "a.pdf"})
    );
}

#[test]
fn whatsapp_templates_reactions_and_locations() {
    let template = whatsapp::body(&envelope(
        Channel::Whatsapp,
        Content::Template(Template {
            name: "order_update".into(),
            language: "en_US".into(),
            parameters: vec!["Ann".into(), "A17".into()],
        }),
    ))
    .unwrap();
    assert_eq!(
        template["template"],
        json!({
            "name": "order_update",
            "language": {"code": "en_US", "policy": "deterministic"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Ann"}, {"type": "text", "text": "A17"}]}],
        })
    );
    let mut reaction = envelope(
        Channel::Whatsapp,
        Content::Reaction(Reaction {
            target_message_id: "wamid.X".into(),
            emoji: "👍".into(),
            removed: false,
        }),
    );
    reaction.reply_to = "wamid.X".into();
    let body = whatsapp::body(&reaction).unwrap();
    assert_eq!(
        body["reaction"],
        json!({"message_id": "wamid.X", "emoji": "👍"})
    );
    assert!(body.get("context").is_none(), "reactions cannot be replies");
    let location = whatsapp::body(&envelope(
        Channel::Whatsapp,
        Content::Location(Location {
            latitude: 52.5,
            longitude: 13.4,
            name: "Shop".into(),
            address: String::new(),
        }),
    ))
    .unwrap();
    assert_eq!(
        location["location"],
        json!({"latitude": 52.5, "longitude": 13.4, "name": "Shop"})
    );
}

#[test]
fn whatsapp_interactive_buttons_and_lists_come_from_the_attribute() {
    let mut e = envelope(Channel::Whatsapp, text("Confirm?"));
    e.attributes.insert(
        ATTRIBUTE.into(),
        r#"{"buttons":[{"id":"yes","title":"Yes"},{"id":"no","title":"No"}]}"#.into(),
    );
    let body = whatsapp::body(&e).unwrap();
    assert_eq!(body["type"], "interactive");
    assert_eq!(
        body["interactive"],
        json!({"type": "button", "body": {"text": "Confirm?"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
            {"type": "reply", "reply": {"id": "no", "title": "No"}}]}})
    );
    e.attributes.insert(
        ATTRIBUTE.into(),
        r#"{"list":{"button":"Options","sections":[{"title":"S","rows":[{"id":"r1","title":"One","description":"d"}]}]}}"#.into(),
    );
    let body = whatsapp::body(&e).unwrap();
    assert_eq!(
        body["interactive"]["action"],
        json!({"button": "Options", "sections": [{"title": "S", "rows": [
            {"id": "r1", "title": "One", "description": "d"}]}]})
    );
    e.attributes.insert(
        ATTRIBUTE.into(),
        r#"{"buttons":[{"id":"1","title":"1"},{"id":"2","title":"2"},{"id":"3","title":"3"},{"id":"4","title":"4"}]}"#.into(),
    );
    assert!(matches!(whatsapp::body(&e), Err(SendError::Unsendable(m)) if m.contains("at most 3")));
    e.attributes.insert(ATTRIBUTE.into(), "not json".into());
    assert!(matches!(whatsapp::body(&e), Err(SendError::Unsendable(_))));
}

#[test]
fn whatsapp_refuses_what_it_cannot_send() {
    let mut no_recipient = envelope(Channel::Whatsapp, text("hi"));
    no_recipient.customer = None;
    assert!(matches!(
        whatsapp::body(&no_recipient),
        Err(SendError::Unsendable(_))
    ));
    let story = envelope(
        Channel::Whatsapp,
        Content::Media(media(Kind::StoryMention, "https://x", "")),
    );
    assert!(matches!(
        whatsapp::body(&story),
        Err(SendError::Unsendable(_))
    ));
    let two = envelope(
        Channel::Whatsapp,
        Content::Attachments(Attachments {
            items: vec![
                media(Kind::Image, "https://a", ""),
                media(Kind::Image, "https://b", ""),
            ],
            caption: String::new(),
        }),
    );
    assert!(matches!(
        whatsapp::body(&two),
        Err(SendError::Unsendable(_))
    ));
}

#[test]
fn whatsapp_answers_are_classified_by_code() {
    let accepted = whatsapp::answer(&answer(200, &fixture("whatsapp_sent.json"))).unwrap();
    assert!(accepted.provider_message_id.starts_with("wamid."));
    assert_eq!(accepted.status, "accepted");

    match whatsapp::answer(&answer(400, &fixture("whatsapp_error_131047.json"))) {
        Err(SendError::Refused(e)) => {
            assert_eq!(e.code, "131047");
            assert!(e.message.contains("24 hours"), "{}", e.message);
            assert_eq!(e.trace, "AzF8pY5qZQbX3nH1sVd2kLm");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        whatsapp::answer(&answer(400, &fixture("whatsapp_error_131026.json"))),
        Err(SendError::Refused(e)) if e.code == "131026"
    ));
    assert!(matches!(
        whatsapp::answer(&answer(400, &fixture("graph_error_100.json"))),
        Err(SendError::Refused(e)) if e.code == "100"
    ));
    // Throughput: even with a 400, the code says retry, and the number waits.
    assert!(matches!(
        whatsapp::answer(&answer(400, &fixture("whatsapp_error_130429.json"))),
        Err(SendError::Transient {
            rate_limited: true,
            ..
        })
    ));
    let mut limited = answer(429, &fixture("whatsapp_error_130429.json"));
    limited.retry_after = Some(Duration::from_secs(2));
    assert!(matches!(
        whatsapp::answer(&limited),
        Err(SendError::Transient { retry_after: Some(d), rate_limited: true, .. }) if d == Duration::from_secs(2)
    ));
    assert!(matches!(
        whatsapp::answer(&answer(503, &fixture("graph_error_2.json"))),
        Err(SendError::Transient {
            rate_limited: false,
            ..
        })
    ));
    assert!(matches!(
        whatsapp::answer(&answer(502, "<html>bad gateway</html>")),
        Err(SendError::Transient { .. })
    ));
    assert!(matches!(
        whatsapp::answer(&answer(401, &fixture("graph_error_190.json"))),
        Err(SendError::Misconfigured(e)) if e.code == "190"
    ));
    assert!(
        matches!(
            whatsapp::answer(&answer(200, "{}")),
            Err(SendError::Transient { .. })
        ),
        "a 200 without a wamid proves nothing"
    );
}

// ---- Messenger and Instagram ----

#[test]
fn messenger_sends_to_me_messages_with_the_page_token_in_the_query() {
    let request = meta::request(
        &GraphApi::default(),
        &page_credentials(Some("app-secret")),
        &envelope(Channel::Messenger, text("hi")),
    )
    .unwrap();
    assert_eq!(
        request.url.as_str(),
        "https://graph.facebook.com/v21.0/me/messages"
    );
    assert_eq!(request.auth, Auth::None);
    assert_eq!(
        request.secret_query,
        vec![
            ("access_token", Secret::new("EAAB-page-token")),
            (
                "appsecret_proof",
                Secret::new("2041874cf677f28474003d490c1294b18ddd048bffddbb9ccb7a200a19faf6f4")
            ),
        ]
    );
    assert_eq!(
        json_body(&request.body),
        &json!({"recipient": {"id": "16505551234"}, "messaging_type": "RESPONSE",
                "message": {"text": "hi"}})
    );
    let shown = format!("{request:?}");
    assert!(!shown.contains("EAAB-page-token"), "{shown}");
}

#[test]
fn messenger_human_agent_tag_quick_replies_and_attachments() {
    let mut e = envelope(Channel::Instagram, text("Sorry for the wait"));
    e.tag = MessageTag::HumanAgent as i32;
    e.attributes.insert(
        ATTRIBUTE.into(),
        r#"{"buttons":[{"id":"ok","title":"OK"}]}"#.into(),
    );
    let body = meta::body(&e).unwrap();
    assert_eq!(body["messaging_type"], "MESSAGE_TAG");
    assert_eq!(body["tag"], "HUMAN_AGENT");
    assert_eq!(
        body["message"]["quick_replies"],
        json!([{"content_type": "text", "title": "OK", "payload": "ok"}])
    );
    let image = meta::body(&envelope(
        Channel::Messenger,
        Content::Media(media(Kind::Image, "https://cdn/x.jpg", "")),
    ))
    .unwrap();
    assert_eq!(
        image["message"],
        json!({"attachment": {"type": "image", "payload": {"url": "https://cdn/x.jpg", "is_reusable": true}}})
    );
    let template = envelope(Channel::Messenger, Content::Template(Template::default()));
    assert!(matches!(
        meta::body(&template),
        Err(SendError::Unsendable(_))
    ));
}

#[test]
fn messenger_answers_are_classified_by_code_and_subcode() {
    let accepted = meta::answer(&answer(200, &fixture("messenger_sent.json"))).unwrap();
    assert!(accepted.provider_message_id.starts_with("m_"));
    assert!(matches!(
        meta::answer(&answer(400, &fixture("messenger_error_551.json"))),
        Err(SendError::Refused(e)) if e.code == "551"
    ));
    assert!(matches!(
        meta::answer(&answer(400, &fixture("messenger_error_2018278.json"))),
        Err(SendError::Refused(e)) if e.code == "10" && e.subcode == "2018278"
    ));
    // Code 10 without a window subcode is a permission problem.
    assert!(matches!(
        meta::answer(&answer(
            403,
            r#"{"error":{"message":"(#10) Application does not have permission","code":10}}"#
        )),
        Err(SendError::Misconfigured(_))
    ));
    assert!(matches!(
        meta::answer(&answer(400, &fixture("messenger_error_613.json"))),
        Err(SendError::Transient {
            rate_limited: true,
            ..
        })
    ));
    assert!(matches!(
        meta::answer(&answer(401, &fixture("graph_error_190.json"))),
        Err(SendError::Misconfigured(_))
    ));
}

// ---- Twilio ----

#[test]
fn twilio_posts_a_form_with_basic_auth_and_repeated_media_urls() {
    let e = envelope(
        Channel::Sms,
        Content::Attachments(Attachments {
            items: vec![
                media(Kind::Image, "https://cdn/a.jpg", ""),
                media(Kind::Image, "https://cdn/b.jpg", ""),
            ],
            caption: "two".into(),
        }),
    );
    let credentials = TwilioCredentials {
        status_callback: Some("https://x/tw/status".into()),
        ..twilio_credentials()
    };
    let request = twilio::request(&TwilioApi::default(), &credentials, &e).unwrap();
    assert_eq!(
        request.url.as_str(),
        "https://api.twilio.com/2010-04-01/Accounts/AC9a1b2c3d4e5f60718293a4b5c6d7e8f9/Messages.json"
    );
    assert_eq!(
        request.auth,
        Auth::Basic {
            user: "AC9a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            password: Secret::new("twilio-auth-token"),
        }
    );
    let pairs: Vec<(&str, &str)> = form_body(&request.body)
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("To", "16505551234"),
            ("From", "+15559870000"),
            ("Body", "two"),
            ("MediaUrl", "https://cdn/a.jpg"),
            ("MediaUrl", "https://cdn/b.jpg"),
            ("StatusCallback", "https://x/tw/status"),
        ]
    );
}

#[test]
fn twilio_messaging_services_templates_and_choices() {
    let credentials = TwilioCredentials {
        from: None,
        messaging_service_sid: Some("MG12".into()),
        api_key_sid: Some("SK34".into()),
        ..twilio_credentials()
    };
    let template = envelope(
        Channel::Sms,
        Content::Template(Template {
            name: "HX0123".into(),
            language: "en".into(),
            parameters: vec!["Ann".into()],
        }),
    );
    let request = twilio::request(&TwilioApi::default(), &credentials, &template).unwrap();
    assert!(matches!(&request.auth, Auth::Basic { user, .. } if user == "SK34"));
    let form = form_body(&request.body);
    assert!(form.contains(&("MessagingServiceSid".into(), "MG12".into())));
    assert!(form.contains(&("ContentSid".into(), "HX0123".into())));
    assert!(form.contains(&("ContentVariables".into(), r#"{"1":"Ann"}"#.into())));
    assert!(!form.iter().any(|(k, _)| k == "From"));

    let mut choices = envelope(Channel::Sms, text("Pick one"));
    choices.attributes.insert(
        ATTRIBUTE.into(),
        r#"{"buttons":[{"id":"a","title":"Alpha"},{"id":"b","title":"Beta"}]}"#.into(),
    );
    assert_eq!(
        twilio::content(&choices).unwrap(),
        [("Body".to_owned(), "Pick one\n1. Alpha\n2. Beta".to_owned())]
    );
    let by_id = envelope(
        Channel::Sms,
        Content::Media(Media {
            media_id: "M1".into(),
            ..media(Kind::Image, "", "")
        }),
    );
    assert!(matches!(
        twilio::content(&by_id),
        Err(SendError::Unsendable(_))
    ));
}

#[test]
fn twilio_answers_are_classified_by_code() {
    let accepted = twilio::answer(&answer(201, &fixture("twilio_message.json"))).unwrap();
    assert!(accepted.provider_message_id.starts_with("SM"));
    assert_eq!(accepted.status, "queued");
    match twilio::answer(&answer(400, &fixture("twilio_error_21610.json"))) {
        Err(SendError::Refused(e)) => {
            assert_eq!(e.code, "21610");
            assert_eq!(e.message, "Attempt to send to unsubscribed recipient");
            assert_eq!(e.trace, "https://www.twilio.com/docs/errors/21610");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        twilio::answer(&answer(400, &fixture("twilio_error_21211.json"))),
        Err(SendError::Refused(e)) if e.code == "21211"
    ));
    let mut limited = answer(429, &fixture("twilio_error_20429.json"));
    limited.retry_after = Some(Duration::from_secs(1));
    assert!(matches!(
        twilio::answer(&limited),
        Err(SendError::Transient {
            rate_limited: true,
            retry_after: Some(_),
            ..
        })
    ));
    assert!(matches!(
        twilio::answer(&answer(500, &fixture("twilio_error_20500.json"))),
        Err(SendError::Transient {
            rate_limited: false,
            ..
        })
    ));
    assert!(matches!(
        twilio::answer(&answer(401, &fixture("twilio_error_20003.json"))),
        Err(SendError::Misconfigured(_))
    ));
}

// ---- Web chat ----

#[test]
fn webchat_posts_the_envelope_json_with_an_idempotency_key() {
    let e = envelope(Channel::Webchat, text("hello"));
    let request = webchat::request(
        &WebchatCredentials {
            url: "https://acme.example/chat/deliver".into(),
            token: Some(Secret::new("wc-token")),
            rate: None,
        },
        &e,
    )
    .unwrap();
    assert_eq!(request.url.as_str(), "https://acme.example/chat/deliver");
    assert_eq!(request.auth, Auth::Bearer(Secret::new("wc-token")));
    assert_eq!(request.headers, [("idempotency-key", e.message_id.clone())]);
    let body = json_body(&request.body);
    assert_eq!(body["conversationId"], "c-1");
    assert_eq!(body["text"]["body"], "hello");
    assert_eq!(body["channel"], "WEBCHAT");

    let id = |a: &Answer| webchat::answer(a, &e).map(|a| a.provider_message_id);
    assert_eq!(id(&answer(204, "")).unwrap(), e.message_id);
    assert_eq!(id(&answer(200, r#"{"id":"wc-9"}"#)).unwrap(), "wc-9");
    assert!(matches!(id(&answer(410, "gone")), Err(SendError::Refused(x)) if x.code == "410"));
    assert!(matches!(
        id(&answer(503, "")),
        Err(SendError::Transient { .. })
    ));
    assert!(matches!(
        id(&answer(403, "")),
        Err(SendError::Misconfigured(_))
    ));
}

// ---- Routing to providers ----

fn providers() -> Providers {
    let mut config = SendersConfig::default();
    config.tenants.insert(
        "acme".into(),
        TenantCredentials {
            whatsapp: Some(WhatsappCredentials {
                rate: Some(Rate {
                    messages_per_second: 1000.0,
                    burst: 1000,
                }),
                ..whatsapp_credentials()
            }),
            messenger: Some(page_credentials(None)),
            sms: Some(twilio_credentials()),
            ..Default::default()
        },
    );
    Providers::new(&config).unwrap()
}

#[test]
fn each_channel_goes_to_its_provider_from_the_tenants_sender() {
    let providers = providers();
    let target = providers
        .target(&envelope(Channel::Whatsapp, text("hi")))
        .unwrap();
    assert_eq!(target.provider, Provider::Whatsapp);
    assert_eq!(target.sender_id, "106540352242922");
    assert_eq!(
        target.rate.messages_per_second, 1000.0,
        "the number's own rate"
    );
    let target = providers
        .target(&envelope(Channel::Sms, text("hi")))
        .unwrap();
    assert_eq!(
        (target.provider, target.sender_id.as_str()),
        (Provider::Twilio, "+15559870000")
    );
    assert_eq!(target.rate, TwilioApi::default().rate);
    let target = providers
        .target(&envelope(Channel::Messenger, text("hi")))
        .unwrap();
    assert_eq!(target.sender_id, "PAGE-1");
}

#[test]
fn a_tenant_without_credentials_is_a_configuration_error() {
    let providers = providers();
    let mut other = envelope(Channel::Whatsapp, text("hi"));
    other.tenant_id = "globex".into();
    assert!(matches!(
        providers.target(&other),
        Err(SendError::Misconfigured(e)) if e.code == "no_credentials"
    ));
    assert!(matches!(
        providers.target(&envelope(Channel::Instagram, text("hi"))),
        Err(SendError::Misconfigured(_))
    ));
    // A redirect means the base URL is wrong.
    assert!(matches!(
        providers.read(Provider::Whatsapp, &answer(307, ""), &other),
        Err(SendError::Misconfigured(_))
    ));
}

// ---- Configuration ----

fn load(text: &str) -> anyhow::Result<crate::config::WorkersConfig> {
    let path = std::env::temp_dir().join(format!("senders-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&path, text).unwrap();
    let config = crate::config::WorkersConfig::load(Some(&path), serde_json::json!({}));
    let _ = std::fs::remove_file(path);
    config
}

#[test]
fn credentials_load_from_the_config_or_a_named_file_and_are_checked() {
    let file = std::env::temp_dir().join(format!("credentials-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(
        &file,
        "[tenants.globex.webchat]\nurl = \"https://globex.example/deliver\"\n",
    )
    .unwrap();
    let config = load(&format!(
        "[senders]\nenabled = true\ncredentials_file = {file:?}\n\
         [senders.tenants.acme.whatsapp]\nphone_number_id = \"1065\"\ntoken = \"EAAG-secret\"\n"
    ))
    .unwrap();
    let all = config.senders.credentials().unwrap();
    assert!(all["acme"].whatsapp.is_some() && all["globex"].webchat.is_some());
    assert!(!format!("{config:?}").contains("EAAG-secret"));

    let both = load(&format!(
        "[senders]\ncredentials_file = {file:?}\n[senders.tenants.globex.webchat]\nurl = \"https://x\"\n"
    ))
    .unwrap_err();
    assert!(both.to_string().contains("both"), "{both}");
    let _ = std::fs::remove_file(&file);

    let no_sender = load("[senders.tenants.acme.sms]\naccount_sid = \"AC1\"\nauth_token = \"t\"\n")
        .unwrap_err();
    assert!(no_sender.to_string().contains("from"), "{no_sender}");
    let bad_channel = load("[senders]\nchannels = [\"fax\"]\n").unwrap_err();
    assert!(bad_channel.to_string().contains("fax"), "{bad_channel}");
}

#[test]
fn a_broken_credentials_file_is_reported_without_its_secrets() {
    let file = std::env::temp_dir().join(format!("credentials-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(
        &file,
        "[tenants.acme.whatsapp]\nphone_number_id = \"1\"\ntoken = \"EAAG-do-not-print\"\nextra = 1\n",
    )
    .unwrap();
    let error = load(&format!("[senders]\ncredentials_file = {file:?}\n")).unwrap_err();
    let _ = std::fs::remove_file(&file);
    let shown = format!("{error:#}");
    assert!(shown.contains("line"), "{shown}");
    assert!(!shown.contains("EAAG-do-not-print"), "{shown}");
}
