//! Truststores as users bring them (made by keytool and openssl in
//! scripts/kafka-broker.sh), and the connection test against the real broker.

mod common;

use base64::Engine as _;
use common::kafka::{self, TestBroker};
use connectivity_agent::allowlist::AllowList;
use connectivity_agent::kafka::probe::{self, ConnectionParams, StepName, StepStatus};
use connectivity_protocol::job::{
    ErrorClass, Sasl, SaslMechanism, Security, SecurityProtocol, Truststore, TruststoreFormat,
};
use connectivity_protocol::secret::Secret;
use connectivity_protocol::truststore::{self, TruststoreError};
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn b64(p: &Path) -> Secret {
    Secret::new(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
}

fn ts(format: TruststoreFormat, data: Secret, password: Option<&str>) -> Truststore {
    Truststore {
        format,
        data,
        password: password.map(Secret::from),
    }
}

/// The DER certificates of a PEM file.
fn pem_certs(p: &Path) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read(p).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!certs.is_empty(), "{} holds certificates", p.display());
    certs
}

fn ca(b: &TestBroker) -> Vec<CertificateDer<'static>> {
    pem_certs(&b.ca_pem)
}

const WRONG_PASSWORD: &str = "truststore password is wrong: the truststore's integrity check failed; enter the password \
     it was created with (keytool -storepass), or leave the password empty to load it without the check";

#[test]
fn keytool_jks_with_and_without_the_password() {
    let b = kafka::broker();
    let data = b64(&b.truststore_jks);
    let with = truststore::certificates(&ts(
        TruststoreFormat::Jks,
        data.clone(),
        Some(&b.truststore_password),
    ))
    .unwrap();
    assert_eq!(with, ca(&b));
    let without = truststore::certificates(&ts(TruststoreFormat::Jks, data.clone(), None)).unwrap();
    assert_eq!(without, ca(&b));
    let err =
        truststore::certificates(&ts(TruststoreFormat::Jks, data, Some("not-it"))).unwrap_err();
    assert_eq!(err, TruststoreError::WrongPassword);
    assert_eq!(err.to_string(), WRONG_PASSWORD);
}

#[test]
fn jks_made_without_a_password() {
    let b = kafka::broker();
    let Some(path) = &b.truststore_jks_nopass else {
        eprintln!("harness made no password-less JKS (needs a full JDK); skipped");
        return;
    };
    let data = b64(path);
    for password in [None, Some("")] {
        assert_eq!(
            truststore::certificates(&ts(TruststoreFormat::Jks, data.clone(), password)).unwrap(),
            ca(&b)
        );
    }
    assert_eq!(
        truststore::certificates(&ts(TruststoreFormat::Jks, data, Some("changeit"))),
        Err(TruststoreError::WrongPassword)
    );
}

#[test]
fn keytool_pkcs12() {
    let b = kafka::broker();
    let data = b64(&b.truststore_p12);
    let got = truststore::certificates(&ts(
        TruststoreFormat::Pkcs12,
        data.clone(),
        Some(&b.truststore_password),
    ))
    .unwrap();
    assert_eq!(got, ca(&b));
    let err =
        truststore::certificates(&ts(TruststoreFormat::Pkcs12, data, Some("not-it"))).unwrap_err();
    assert_eq!(err.to_string(), WRONG_PASSWORD);
}

#[test]
fn pem_files_one_and_several_certificates() {
    let b = kafka::broker();
    let one = std::fs::read_to_string(&b.ca_pem).unwrap();
    assert_eq!(
        truststore::certificates(&ts(TruststoreFormat::Pem, Secret::new(one.clone()), None))
            .unwrap(),
        ca(&b)
    );
    let two = format!("{one}{}", std::fs::read_to_string(&b.other_ca_pem).unwrap());
    let got = truststore::certificates(&ts(TruststoreFormat::Pem, Secret::new(two), None)).unwrap();
    let mut want = ca(&b);
    want.extend(pem_certs(&b.other_ca_pem));
    assert_eq!(got, want);
    // What librdkafka gets: the same certificates, as PEM.
    let pem = truststore::to_pem(&ts(
        TruststoreFormat::Jks,
        b64(&b.truststore_jks),
        Some("changeit"),
    ))
    .unwrap();
    let back: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, ca(&b));
}

#[test]
fn formats_mixed_up_are_named() {
    let b = kafka::broker();
    // keytool (Java 9+) writes PKCS#12 even into a file named .jks; like
    // Java (keystore.type.compat), "jks" accepts it.
    let got = truststore::certificates(&ts(
        TruststoreFormat::Jks,
        b64(&b.truststore_p12),
        Some("changeit"),
    ))
    .unwrap();
    assert_eq!(got, ca(&b));
    let e = truststore::certificates(&ts(TruststoreFormat::Pkcs12, b64(&b.truststore_jks), None))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "truststore is not a PKCS#12 file (it is a JKS keystore); choose the format jks for it"
    );
    let e = truststore::certificates(&ts(TruststoreFormat::Pem, b64(&b.truststore_jks), None))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("looks like a base64 JKS file: choose the format jks"),
        "{e}"
    );
    let e = truststore::certificates(&ts(
        TruststoreFormat::Jks,
        Secret::new(std::fs::read_to_string(&b.ca_pem).unwrap()),
        None,
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("it is PEM text; choose the format pem for it"),
        "{e}"
    );
    // Truncated copies of the real file.
    let jks = std::fs::read(&b.truststore_jks).unwrap();
    for cut in [3, 11, 40, jks.len() / 2, jks.len() - 1] {
        let e = truststore::parse_jks(&jks[..cut], None).unwrap_err();
        assert!(
            matches!(
                e,
                TruststoreError::Truncated(_) | TruststoreError::NotJks { .. }
            ),
            "cut {cut}: {e}"
        );
        assert!(
            e.to_string().ends_with("copy the whole file again") || cut < 4,
            "{e}"
        );
    }
}

/// A JKS keystore holding a private key entry besides the trusted CA (as
/// keytool -genkeypair makes it): the key entry is skipped.
#[test]
fn jks_with_a_private_key_entry() {
    let b = kafka::broker();
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks.jks");
    let keytool = |args: &[&str]| {
        let out = Command::new("keytool")
            .args(args)
            .output()
            .expect("keytool (the harness needs it too)");
        assert!(
            out.status.success(),
            "keytool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ks_s = ks.to_str().unwrap();
    keytool(&[
        "-genkeypair",
        "-alias",
        "me",
        "-keyalg",
        "EC",
        "-dname",
        "CN=me",
        "-validity",
        "2",
        "-storetype",
        "JKS",
        "-keystore",
        ks_s,
        "-storepass",
        "changeit",
        "-keypass",
        "changeit",
    ]);
    let file = std::fs::read(&ks).unwrap();
    assert_eq!(
        truststore::parse_jks(&file, Some("changeit"))
            .unwrap_err()
            .to_string(),
        "truststore holds no trusted certificates (only private key entries: this is a keystore, not a truststore); \
         import the stream's CA certificate, for example keytool -keystore truststore.jks -alias OSSStream -importcert -file stream-ca.pem"
    );
    keytool(&[
        "-importcert",
        "-noprompt",
        "-alias",
        "ossstream",
        "-file",
        b.ca_pem.to_str().unwrap(),
        "-storetype",
        "JKS",
        "-keystore",
        ks_s,
        "-storepass",
        "changeit",
    ]);
    let file = std::fs::read(&ks).unwrap();
    let got = truststore::parse_jks(&file, Some("changeit")).unwrap();
    assert_eq!(
        got,
        ca(&b)
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        truststore::parse_jks(&file, Some("wrong!")),
        Err(TruststoreError::WrongPassword)
    );
}

// ---- the connection test against the broker ----

fn allow() -> AllowList {
    AllowList::parse("127.0.0.1:*,localhost:*").unwrap()
}

fn sasl_ssl(b: &TestBroker, password: &str, truststore: Truststore) -> Security {
    Security {
        protocol: SecurityProtocol::SaslSsl,
        sasl: Some(Sasl {
            mechanism: SaslMechanism::Plain,
            username: b.sasl_user.clone(),
            password: Secret::new(password),
        }),
        truststore: Some(truststore),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_passes_with_the_jks_truststore() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("probe-ok");
    kafka::create_topic(&b, &topic, 3).await;
    let params = ConnectionParams {
        bootstrap_servers: b.sasl_ssl.clone(),
        topic: Some(topic.clone()),
        security: sasl_ssl(
            &b,
            &b.sasl_password,
            ts(
                TruststoreFormat::Jks,
                b64(&b.truststore_jks),
                Some("changeit"),
            ),
        ),
    };
    let report = probe::test_connection(&params, &allow(), Duration::from_secs(30)).await;
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.partitions, Some(3));
    let tls = report.step(StepName::Tls).unwrap();
    assert_eq!(tls.status, StepStatus::Passed);
    assert!(
        tls.detail
            .contains("handshake verified against the truststore (1 CA certificates)"),
        "{}",
        tls.detail
    );
    assert_eq!(tls.certificates[0].issuer, "CN=connectivity-agent test CA");
    assert!(!tls.certificates[0].expired);
    let kafka_step = report.step(StepName::Kafka).unwrap();
    assert_eq!(
        kafka_step.detail,
        format!(
            "authenticated as \"alice\" with SASL PLAIN; topic {topic:?} has 3 partitions; 1 brokers, advertised as {}",
            b.sasl_ssl
        )
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["steps"][3]["certificates"][0]["issuer"],
        "CN=connectivity-agent test CA"
    );
    assert!(
        !serde_json::to_string(&report)
            .unwrap()
            .contains(&b.sasl_password)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_shows_the_chain_when_the_ca_is_not_trusted() {
    let b = kafka::broker();
    let other = Secret::new(std::fs::read_to_string(&b.other_ca_pem).unwrap());
    let params = ConnectionParams {
        bootstrap_servers: b.sasl_ssl.clone(),
        topic: None,
        security: sasl_ssl(&b, &b.sasl_password, ts(TruststoreFormat::Pem, other, None)),
    };
    let report = probe::test_connection(&params, &allow(), Duration::from_secs(30)).await;
    assert!(!report.ok);
    let tls = report.step(StepName::Tls).unwrap();
    let e = tls.error.as_ref().unwrap();
    assert_eq!(e.class, ErrorClass::Tls);
    assert!(
        e.message.starts_with(&format!(
            "{} sent a certificate chain that is not signed by a CA in the truststore",
            b.sasl_ssl
        )),
        "{}",
        e.message
    );
    assert_eq!(
        tls.certificates[0].issuer, "CN=connectivity-agent test CA",
        "the chain is shown"
    );
    // librdkafka agrees.
    let k = report.step(StepName::Kafka).unwrap();
    assert_eq!(k.error.as_ref().unwrap().class, ErrorClass::Tls, "{k:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_names_a_wrong_password() {
    let b = kafka::broker();
    let params = ConnectionParams {
        bootstrap_servers: b.sasl_ssl.clone(),
        topic: None,
        security: sasl_ssl(
            &b,
            "wrong-secret",
            ts(
                TruststoreFormat::Pkcs12,
                b64(&b.truststore_p12),
                Some("changeit"),
            ),
        ),
    };
    let started = std::time::Instant::now();
    let report = probe::test_connection(&params, &allow(), Duration::from_secs(30)).await;
    eprintln!("wrong password found in {:?}", started.elapsed());
    assert_eq!(
        report.step(StepName::Tls).unwrap().status,
        StepStatus::Passed
    );
    let k = report.step(StepName::Kafka).unwrap();
    let e = k.error.as_ref().unwrap();
    assert_eq!(e.class, ErrorClass::Sasl);
    assert!(
        e.message
            .contains("rejected user \"alice\" with SASL PLAIN"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("wrong-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_plaintext_missing_topic() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("probe-missing");
    let params = ConnectionParams {
        bootstrap_servers: b.plaintext.clone(),
        topic: Some(topic.clone()),
        security: Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        },
    };
    let report = probe::test_connection(&params, &allow(), Duration::from_secs(30)).await;
    assert_eq!(
        report.step(StepName::Tls).unwrap().status,
        StepStatus::Skipped
    );
    let k = report.step(StepName::Kafka).unwrap();
    assert_eq!(
        k.error.as_ref().unwrap().class,
        ErrorClass::TopicMissing,
        "{k:#?}"
    );
}
