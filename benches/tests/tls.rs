//! TLS and mutual TLS on the ingestion node's gRPC listener, with
//! certificates made for the test, against the real local Kafka.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{path::Path, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use switchboard_broker::{
    config::{BrokerConfig, TlsConfig},
    server::Broker,
};
use switchboard_proto::v1::{Channel, PublishRequest, ingest_client::IngestClient};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("switchboard-test-client"),
    }
}

fn request() -> PublishRequest {
    testkit::publish_request(testkit::inbound_text(Channel::Webchat, "tls", "over TLS"))
}

async fn publish(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    IngestClient::new(channel)
        .publish(request())
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    let bootstrap = testkit::real_kafka();
    let pki = pki();
    let dir = std::env::temp_dir().join(testkit::random_topic("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let tls = TlsConfig {
        cert_file: write("server.pem", &pki.server.0),
        key_file: write("server.key", &pki.server.1),
        client_ca_file: Some(write("ca.pem", &pki.ca)),
    };
    let topic = testkit::random_topic("tls.messages");
    let kafka = testkit::kafka_config(&bootstrap, 3);
    kafka.ensure_topics(&[&topic]).await.unwrap();
    let broker = Broker::bind(BrokerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        http_addr: None,
        kafka,
        messages_topic: topic,
        tls: Some(tls),
        ack_timeout: Duration::from_secs(10),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));

    let https = || Endpoint::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let trust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    publish(
        https()
            .tls_config(
                trust
                    .clone()
                    .identity(Identity::from_pem(&pki.client.0, &pki.client.1)),
            )
            .unwrap(),
    )
    .await
    .expect("a client with a certificate from the CA is admitted");
    assert!(
        publish(https().tls_config(trust).unwrap()).await.is_err(),
        "no client certificate: refused"
    );
    assert!(
        publish(Endpoint::from_shared(format!("http://{addr}")).unwrap())
            .await
            .is_err(),
        "plaintext: refused"
    );

    stop.cancel();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
