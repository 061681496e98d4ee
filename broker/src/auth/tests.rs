use std::time::{Duration, SystemTime};

use tonic::{Code, metadata::MetadataMap};

use super::*;

fn metadata(authorization: Option<&str>) -> MetadataMap {
    let mut m = MetadataMap::new();
    if let Some(a) = authorization {
        m.insert("authorization", a.parse().unwrap());
    }
    m
}

fn write(path: &Path, text: &str, bump: u64) {
    std::fs::write(path, text).unwrap();
    // Make every write visible to the change check, however coarse the clock.
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + bump))
        .unwrap();
}

fn tenants(per_second: u32, burst: u32, acme_key: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = {per_second}\nrate_limit_burst = {burst}\n\
         [[tenants]]\nid = \"globex\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 100\n",
        key_digest(acme_key),
        key_digest("globex-key"),
    )
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-auth-{}-{}", name, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tenants.toml")
}

#[test]
fn keys_identify_tenants_and_bind_them() {
    let file = temp_file("bind");
    write(&file, &tenants(100, 100, "acme-key"), 1);
    let auth = Auth::new(Some(&file)).unwrap();

    let code = |r: Result<Caller, IngestError>| r.err().map(|e| e.code());
    assert_eq!(
        code(auth.authenticate(&metadata(None))),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(auth.authenticate(&metadata(Some("Basic abc")))),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(auth.authenticate(&metadata(Some("Bearer nope")))),
        Some(Code::Unauthenticated)
    );

    let acme = auth
        .authenticate(&metadata(Some("Bearer acme-key")))
        .unwrap();
    assert_eq!(acme.tenant(), Some("acme"));
    acme.admit("envelope.tenant_id", "acme", 1).unwrap();
    let denied = acme.admit("envelope.tenant_id", "globex", 1).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.to_string().contains("globex"));
}

#[test]
fn rate_limit_refuses_with_retry_info_then_refills() {
    let file = temp_file("limit");
    write(&file, &tenants(50, 5, "acme-key"), 1);
    let auth = Auth::new(Some(&file)).unwrap();
    let acme = auth
        .authenticate(&metadata(Some("Bearer acme-key")))
        .unwrap();
    for _ in 0..5 {
        acme.admit("f", "acme", 1).unwrap();
    }
    let limited = acme.admit("f", "acme", 1).unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let status: tonic::Status = limited.into();
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(40),
        "{delay:?}"
    );
    std::thread::sleep(delay + Duration::from_millis(5));
    acme.admit("f", "acme", 1).unwrap();
    // A batch larger than the burst can never pass.
    assert_eq!(
        acme.admit("f", "acme", 6).unwrap_err().code(),
        Code::ResourceExhausted
    );
}

#[test]
fn reloads_keys_without_restart_and_keeps_old_tenants_on_bad_files() {
    let file = temp_file("reload");
    write(&file, &tenants(100, 100, "old-key"), 1);
    let auth = Auth::new(Some(&file)).unwrap();
    assert!(auth.authenticate(&metadata(Some("Bearer old-key"))).is_ok());
    assert!(
        !auth.reload_if_changed().unwrap(),
        "unchanged file is not reloaded"
    );

    write(&file, &tenants(100, 100, "new-key"), 2);
    assert!(auth.reload_if_changed().unwrap());
    assert!(auth.authenticate(&metadata(Some("Bearer new-key"))).is_ok());
    assert_eq!(
        auth.authenticate(&metadata(Some("Bearer old-key")))
            .err()
            .unwrap()
            .code(),
        Code::Unauthenticated
    );

    write(
        &file,
        "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [\"zz\"]\nrate_limit_per_second = 1\n",
        3,
    );
    let err = auth.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("not a SHA-256 digest"), "{err}");
    assert!(
        auth.authenticate(&metadata(Some("Bearer new-key"))).is_ok(),
        "old tenants stay in force"
    );
}

#[test]
fn invalid_files_are_refused_at_start() {
    let file = temp_file("invalid");
    for (text, expected) in [
        (
            "[[tenants]]\nid = \"a\"\napi_keys_sha256 = []\nrate_limit_per_second = 1\n",
            "neither API keys",
        ),
        (
            "[[tenants]]\nid = \"a/b\"\napi_keys_sha256 = []\nrate_limit_per_second = 1\n",
            "must not contain",
        ),
        ("[[tenants]]\nid = \"a\"\napi_keys = []\n", "unknown field"),
    ] {
        write(&file, text, 1);
        let err = Auth::new(Some(&file)).err().unwrap().to_string();
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
    }
    assert!(!Auth::new(None).unwrap().enabled());
}

#[test]
fn example_tenants_file_loads_and_its_example_key_works() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/tenants.example.toml");
    let auth = Auth::new(Some(&file)).unwrap();
    let caller = auth
        .authenticate(&metadata(Some("Bearer acme-example-key")))
        .unwrap();
    assert_eq!(caller.tenant(), Some("acme"));
    use switchboard_proto::v1::Channel;
    for channel in [Channel::Whatsapp, Channel::Sms, Channel::Webchat] {
        assert!(
            matches!(auth.webhook("acme", channel), WebhookAuth::Checked { .. }),
            "acme's example {channel:?} webhook secrets"
        );
    }
}

/// A tenant's channel secrets reach the HTTP listener with the tenant's
/// limiter; changing a secret file the tenants file names reloads them.
#[test]
fn webhook_secrets_reload_with_their_files() {
    use secrecy::ExposeSecret as _;
    use switchboard_proto::v1::Channel;
    let file = temp_file("webhooks");
    let dir = file.parent().unwrap();
    write(&dir.join("meta-secret"), "first-secret\n", 1);
    // The webhooks table belongs to the tenant above it.
    let text = format!(
        "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 100\n\
         [tenants.webhooks.whatsapp]\napp_secret_file = \"meta-secret\"\nverify_token = \"vt\"\n\
         [[tenants]]\nid = \"globex\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 100\n",
        key_digest("acme-key"),
        key_digest("globex-key"),
    );
    write(&file, &text, 1);
    let auth = Auth::new(Some(&file)).unwrap();
    let app_secret = |auth: &Auth| match auth.webhook("acme", Channel::Whatsapp) {
        WebhookAuth::Checked { caller, secrets } => {
            assert_eq!(caller.tenant(), Some("acme"));
            match &*secrets {
                ChannelSecrets::Meta { app_secret, .. } => app_secret.expose_secret().to_owned(),
                other => panic!("not Meta secrets: {other:?}"),
            }
        }
        _ => panic!("acme's WhatsApp webhook is configured"),
    };
    assert_eq!(app_secret(&auth), "first-secret");
    // globex has no webhooks; nobody has SMS ones.
    assert!(matches!(
        auth.webhook("globex", Channel::Whatsapp),
        WebhookAuth::NotConfigured
    ));
    assert!(matches!(
        auth.webhook("acme", Channel::Sms),
        WebhookAuth::NotConfigured
    ));
    assert!(!auth.reload_if_changed().unwrap());

    write(&dir.join("meta-secret"), "second-secret\n", 2);
    assert!(auth.reload_if_changed().unwrap(), "the secret file changed");
    assert_eq!(app_secret(&auth), "second-secret");

    // Fail closed: without a tenants file no webhook is configured.
    assert!(matches!(
        Auth::new(None).unwrap().webhook("acme", Channel::Whatsapp),
        WebhookAuth::NotConfigured
    ));
}

/// `api_keys_required = false`: gRPC calls without a key are admitted,
/// a key that is presented is still checked, and webhooks stay checked.
#[test]
fn api_keys_not_required_keeps_grpc_open_and_webhooks_checked() {
    let file = temp_file("open");
    write(
        &file,
        "api_keys_required = false\n[[tenants]]\nid = \"demo\"\nrate_limit_per_second = 10\n\
         [tenants.webhooks.sms]\nauth_token = \"t\"\n",
        1,
    );
    let auth = Auth::new(Some(&file)).unwrap();
    assert!(!auth.enabled());
    assert!(matches!(
        auth.authenticate(&metadata(None)).unwrap(),
        Caller::Anyone
    ));
    assert_eq!(
        auth.authenticate(&metadata(Some("Bearer wrong")))
            .err()
            .unwrap()
            .code(),
        Code::Unauthenticated
    );
    assert!(matches!(
        auth.webhook("demo", Channel::Sms),
        WebhookAuth::Checked { .. }
    ));
    assert!(matches!(
        auth.webhook("demo", Channel::Whatsapp),
        WebhookAuth::NotConfigured
    ));
}

/// toml quotes the offending line in its errors; a line may hold a secret.
#[test]
fn a_refused_file_is_reported_without_its_lines() {
    let file = temp_file("redacted");
    let text = format!(
        "{}[tenants.webhooks.sms]\nauth_token = \"tw-s3cret\"\nauth_tokn = \"tw-s3cret\"\n",
        tenants(100, 100, "acme-key")
    );
    write(&file, &text, 1);
    let err = Auth::new(Some(&file)).err().unwrap().to_string();
    assert!(
        err.contains("line 12") && err.contains("auth_tokn"),
        "{err}"
    );
    assert!(!err.contains("tw-s3cret"), "{err}");
}
