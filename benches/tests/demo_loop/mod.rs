//! The embedded demo's pipeline on the real local Kafka, for the loop tests:
//! the demo's tenants and rules, the HTTP edge on, the senders pointed at the
//! providers' stand-ins, and webhooks signed as the providers sign them.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use switchboard_benches::{
    embedded::{DEMO_RULES, DEMO_TENANTS, demo_providers, demo_secrets},
    pipeline::{Pipeline, PipelineConfig},
};
use switchboard_broker::http::signature::{meta_signature, twilio_signature};
use switchboard_testkit::{self as testkit, providers::StandIn};
use switchboard_workers::destinations::bot::echo::EchoBot;

pub struct DemoLoop {
    pub pipeline: Pipeline,
    #[allow(dead_code)] // read by some of the tests including this module
    pub config: PipelineConfig,
    /// WhatsApp, Messenger, Instagram, Twilio, web chat.
    pub providers: Vec<StandIn>,
    http: SocketAddr,
    client: reqwest::Client,
    files: Vec<std::path::PathBuf>,
}

impl DemoLoop {
    /// Starts the pipeline on topics named after `prefix`, with `customize`
    /// applied to its config first.
    pub async fn start(prefix: &str, customize: impl FnOnce(&mut PipelineConfig)) -> Self {
        let bootstrap = testkit::real_kafka();
        let mut config =
            PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 2), prefix).from_start();
        let dir = std::env::temp_dir();
        let rules = dir.join(format!("{}.rules.toml", testkit::random_topic(prefix)));
        let tenants = dir.join(format!("{}.tenants.toml", testkit::random_topic(prefix)));
        std::fs::write(&rules, DEMO_RULES).unwrap();
        std::fs::write(&tenants, DEMO_TENANTS).unwrap();
        config.rules_file = Some(rules.clone());
        config.auth_file = Some(tenants.clone());
        config.http_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        customize(&mut config);
        let providers = demo_providers::start(&mut config.senders).await;
        config.create_topics().await.unwrap();
        let pipeline = Pipeline::start(&config, EchoBot).await.unwrap();
        let http = pipeline.http_addr.expect("the HTTP listener is on");
        Self {
            pipeline,
            config,
            providers,
            http,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            files: vec![rules, tenants],
        }
    }

    fn url(&self, channel: &str) -> String {
        format!(
            "http://{}/webhooks/{}/{channel}",
            self.http,
            demo_secrets::TENANT
        )
    }

    /// POSTs a WhatsApp webhook with this change `value`, signed with the
    /// demo app secret; 200 once Kafka has it.
    pub async fn whatsapp(&self, value: serde_json::Value) {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }]
        })
        .to_string();
        let signature = meta_signature(demo_secrets::APP_SECRET.as_bytes(), body.as_bytes());
        let response = self
            .client
            .post(self.url("whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }

    /// POSTs a Twilio inbound SMS from `from`, signed with the demo auth
    /// token; 200 once Kafka has it.
    pub async fn sms(&self, from: &str, sid: &str, body: &str) {
        let form: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("MessageSid", sid),
                ("AccountSid", "ACdemo"),
                ("From", from),
                ("To", "+15550000000"),
                ("Body", body),
                ("NumMedia", "0"),
            ])
            .finish();
        let url = self.url("sms");
        let signature = twilio_signature(
            demo_secrets::TWILIO_AUTH_TOKEN.as_bytes(),
            &url,
            form.as_bytes(),
        );
        let response = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }

    pub async fn stop(self) {
        self.pipeline.stop().await.unwrap();
        for file in self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Now, as a provider's webhook timestamp (Unix seconds).
pub fn unix_now() -> String {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}
