//! Certificate problems named by their real cause, on both sides: real TLS
//! handshakes of `connectivity-agent check` against a server presenting
//! certificates made for each case at test time, and the control plane
//! reporting its own certificate's expiry and the clients that refuse it.

mod common;

use common::control_plane::{Options, TestControlPlane, WAIT};
use common::tls::{Ca, self_signed_ca_certificate, serve_tls};
use connectivity_agent::agent::check::{StepResult, check};
use connectivity_agent::config::{self, AgentConfig, Profile, SecretValues};
use connectivity_common::timefmt::rfc3339_secs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PREFIX: &str = "TLS handshake with localhost failed: ";

fn agent_config(url: &str, ca_file: Option<&Path>, state: &Path) -> AgentConfig {
    let ca = ca_file
        .map(|p| format!("oic_CA_FILE={}\n", p.display()))
        .unwrap_or_default();
    let text = format!(
        "oic_URL={url}\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\n{ca}agent_STATE_DIR={}\n",
        state.display()
    );
    let profile = Profile::parse(Path::new("InstallerProfile.cfg"), text).unwrap();
    config::validate(&profile, &SecretValues::from_profile(&profile), &|_| None).unwrap()
}

/// `check` against `https://localhost:{port}`: its TLS step.
async fn tls_step(port: u16, ca_file: Option<&Path>) -> StepResult {
    let state = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{port}");
    let results = check(&agent_config(&url, ca_file, state.path())).await;
    let tls = results.iter().find(|r| r.step == "TLS");
    tls.unwrap_or_else(|| panic!("no TLS step in {results:?}"))
        .clone()
}

fn write(dir: &tempfile::TempDir, name: &str, pem: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `detail` is `expected(t)` for some second `t` in `from..=to` (the
/// message shows the time of the check).
fn assert_at_some_second(detail: &str, from: i64, to: i64, expected: impl Fn(String) -> String) {
    let candidates: Vec<String> = (from..=to).map(|t| expected(rfc3339_secs(t))).collect();
    assert!(
        candidates.iter().any(|c| c == detail),
        "{detail}\nwanted: {}",
        candidates[0]
    );
}

#[tokio::test]
async fn a_ca_certificate_as_the_server_certificate_is_named_with_the_fix() {
    // The setup: `openssl req -x509` (CA:TRUE), the same file as
    // the server's certificate and as oic_CA_FILE.
    let (cert, key) = self_signed_ca_certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(&dir, "server.pem", &cert);
    let (port, _server) = serve_tls(&cert, &key).await;
    let step = tls_step(port, Some(&ca_file)).await;
    assert!(!step.ok);
    assert_eq!(
        step.detail,
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") is a CA certificate (basicConstraints CA:TRUE); \
             a server needs a leaf certificate signed by a CA: make one with `control-plane init` (docs/CONTROL_PLANE.md) \
             and put the CA's certificate in oic_CA_FILE"
        )
    );
}

#[tokio::test]
async fn a_name_mismatch_lists_the_certificates_names_and_the_name_asked_for() {
    let ca = Ca::root("test CA");
    let (leaf, key) = ca.leaf(&["cp.example.com", "10.0.0.1"], |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cp.example.com");
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let (port, _server) = serve_tls(&leaf, &key).await;
    let step = tls_step(port, Some(&ca_file)).await;
    assert_eq!(
        step.detail,
        format!(
            "{PREFIX}the control plane's certificate (\"CN=cp.example.com\") is for DNS:cp.example.com, IP:10.0.0.1, \
             not for localhost (the host in oic_URL): put one of its names in oic_URL, or give the control plane \
             a certificate for localhost"
        )
    );
}

/// The TLS step against a certificate valid from `from` to `to` (years,
/// January 1st), and the seconds before and after it ran.
async fn dated(ca: &Ca, ca_file: &Path, from: i32, to: i32) -> (String, i64, i64) {
    let (leaf, key) = ca.leaf(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(to, 1, 1);
    });
    let (port, _server) = serve_tls(&leaf, &key).await;
    let before = now();
    let step = tls_step(port, Some(ca_file)).await;
    (step.detail, before, now())
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_show_their_dates_and_now() {
    let ca = Ca::root("test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(&dir, "ca.pem", &ca.pem());

    let (detail, from, to) = dated(&ca, &ca_file, 2020, 2021).await;
    assert_at_some_second(&detail, from, to, |now| {
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") expired at 2021-01-01T00:00:00Z \
             (valid from 2020-01-01T00:00:00Z to 2021-01-01T00:00:00Z; now {now}): renew it in the control plane's tls.cert_file"
        )
    });

    let (detail, from, to) = dated(&ca, &ca_file, 2090, 2091).await;
    assert_at_some_second(&detail, from, to, |now| {
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") is not valid before 2090-01-01T00:00:00Z \
             (valid from 2090-01-01T00:00:00Z to 2091-01-01T00:00:00Z; now {now}): check the clock of this machine \
             and of the one that made the certificate"
        )
    });
}

#[tokio::test]
async fn an_unknown_issuer_is_named_with_the_ca_file_that_must_hold_it() {
    let ca = Ca::root("test CA");
    let (leaf, key) = ca.leaf(&["localhost"], |_| {});
    let (port, _server) = serve_tls(&format!("{leaf}{}", ca.pem()), &key).await;
    let dir = tempfile::tempdir().unwrap();

    let other = write(&dir, "other.pem", &Ca::root("other CA").pem());
    let step = tls_step(port, Some(&other)).await;
    assert_eq!(
        step.detail,
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") chains up to \"CN=test CA\", a CA this agent \
             does not trust; oic_CA_FILE ({}) must hold the certificate of \"CN=test CA\"",
            other.display()
        )
    );

    // The CA made again under the same name: a new key.
    let again = write(&dir, "again.pem", &Ca::root("test CA").pem());
    let step = tls_step(port, Some(&again)).await;
    assert_eq!(
        step.detail,
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") chains up to \"CN=test CA\", a CA this agent \
             does not trust; oic_CA_FILE ({}) holds a certificate named \"CN=test CA\", but not the one that signed \
             this chain (a CA made again has a new key): put the current certificate of \"CN=test CA\" in oic_CA_FILE",
            again.display()
        )
    );
}

#[tokio::test]
async fn a_chain_missing_its_intermediate_names_both_fixes() {
    let root = Ca::root("test root");
    let mid = root.intermediate("test intermediate");
    let (leaf, key) = mid.leaf(&["localhost"], |_| {});
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(&dir, "root.pem", &root.pem());
    let (port, _server) = serve_tls(&leaf, &key).await;
    let step = tls_step(port, Some(&ca_file)).await;
    assert_eq!(
        step.detail,
        format!(
            "{PREFIX}the control plane's certificate (\"CN=localhost\") is issued by \"CN=test intermediate\", whose \
             certificate the control plane did not send and oic_CA_FILE ({}) does not hold (it holds \"CN=test root\"): \
             if \"CN=test intermediate\" is an intermediate CA, the control plane's tls.cert_file must hold the server \
             certificate followed by the certificate of \"CN=test intermediate\"; otherwise put the certificate of \
             \"CN=test intermediate\" in oic_CA_FILE",
            ca_file.display()
        )
    );
}

#[tokio::test]
async fn a_verified_certificate_shows_its_expiry_in_check_and_in_the_metrics() {
    let root = Ca::root("test root");
    let mid = root.intermediate("test intermediate");
    // Ten and a half days left: "10 days", and the 30-day warning.
    let not_after = now() + 10 * 86_400 + 43_200;
    let (leaf, key) = mid.leaf(&["localhost"], |p| {
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(&dir, "root.pem", &root.pem());
    let (port, _server) = serve_tls(&format!("{leaf}{}", mid.pem()), &key).await;
    let step = tls_step(port, Some(&ca_file)).await;
    assert!(step.ok, "{step:?}");
    assert_eq!(
        step.detail,
        format!(
            "certificate of localhost verified: \"CN=localhost\", issued by \"CN=test intermediate\", valid until {} \
             (10 days left; renew it soon)",
            rfc3339_secs(not_after)
        )
    );
    let metrics = connectivity_agent::metrics::render();
    assert!(
        metrics.contains(&format!(
            "connectivity_agent_control_plane_certificate_expiry_timestamp_seconds {not_after}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "connectivity_agent_ca_file_certificate_expiry_timestamp_seconds{subject=\"CN=test root\"} "
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_control_plane_shows_its_certificate_expiry_and_counts_clients_refusing_it() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (status, body) = cp.console_get("/api/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let tls = &body["tls"];
    assert_eq!(tls["cert_file"], cp.pki.cert_file.display().to_string());
    assert_eq!(tls["subject"], "CN=localhost");
    assert_eq!(tls["issuer"], "CN=connectivity-agent test CA");
    assert_eq!(
        tls["names"],
        serde_json::json!(["DNS:localhost", "IP:127.0.0.1"])
    );
    // rcgen's default validity.
    assert_eq!(tls["not_after"], "4096-01-01T00:00:00Z");
    assert_eq!(tls["state"], "valid");
    assert!(tls["days_left"].as_i64().unwrap() > 700_000, "{tls}");

    // An agent without the test CA refuses the certificate (unknown CA).
    let state = tempfile::tempdir().unwrap();
    let results = check(&agent_config(&cp.base_url(), None, state.path())).await;
    assert!(!results.last().unwrap().ok);
    let refused = "control_plane_tls_certificate_refusals_total{alert=\"UnknownCA\"} 1\n";
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut metrics = cp.metrics().await;
    while !metrics.contains(refused) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = cp.metrics().await;
    }
    assert!(metrics.contains(refused), "{metrics}");
    // 4096-01-01T00:00:00Z.
    assert!(
        metrics.contains("control_plane_tls_certificate_expiry_timestamp_seconds 67090118400\n"),
        "{metrics}"
    );
    cp.stop().await;
}
