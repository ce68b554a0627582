//! Unit tests for the control plane config: defaults, and the exact message
//! of each bad-input case.

use super::*;
use crate::hashes::weak_hash_for_tests;

/// A temp dir with a self-signed cert/key pair and a config referring to it.
struct Fixture {
    dir: tempfile::TempDir,
    hash: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Fixture {
            dir,
            hash: weak_hash_for_tests("pw"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("control-plane.toml")
    }

    /// A minimal valid config, with `extra` appended at the top level.
    fn text(&self, extra: &str) -> String {
        format!(
            "{extra}\n[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n\n[[groups]]\nid = \"G\"\n\n\
             [[users]]\nname = \"agent\"\npassword_hash = \"{h}\"\ngroups = [\"G\"]\n\n\
             [[console_tokens]]\nname = \"ops\"\ntoken_hash = \"{h}\"\n",
            h = self.hash
        )
    }

    fn parse(&self, text: &str) -> Result<ControlPlaneConfig, ConfigError> {
        ControlPlaneConfig::parse(text, &self.path())
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let f = Fixture::new();
    let c = f.parse(&f.text("")).unwrap();
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.heartbeat_interval, Duration::from_millis(5000));
    assert_eq!(c.heartbeat_timeout, Duration::from_millis(15000));
    assert_eq!(c.token_ttl, Duration::from_secs(3600));
    assert_eq!(c.shutdown_timeout, Duration::from_millis(5000));
    assert_eq!(c.max_agents, 10_000);
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(
        c.tls.cert_file,
        f.dir.path().join("cert.pem"),
        "relative to the config file"
    );
    assert_eq!(c.users[0].groups, vec!["G"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(
        !format!("{c:?}").contains("argon2"),
        "hashes are masked in Debug"
    );
}

#[test]
fn heartbeat_timeout_defaults_to_three_intervals() {
    let f = Fixture::new();
    let c = f.parse(&f.text("heartbeat_interval_ms = 200")).unwrap();
    assert_eq!(c.heartbeat_timeout, Duration::from_millis(600));
}

#[test]
fn unknown_key_is_named_with_line_and_suggestion() {
    let f = Fixture::new();
    let err = f.parse(&f.text("lisen = \"127.0.0.1:1\"")).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("lisen"));
    assert_eq!(err.line, Some(1));
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:1: lisen: unknown key\n  fix: remove it or correct the spelling; did you mean \"listen\"?", f.path().display())),
        "{shown}"
    );
}

#[test]
fn unknown_key_in_a_table_is_named() {
    let f = Fixture::new();
    let text = f
        .text("")
        .replace("[[groups]]\nid = \"G\"", "[[groups]]\nid = \"G\"\nmax = 2");
    let err = f.parse(&text).unwrap_err();
    assert_eq!(
        (err.key.as_deref(), err.problem.as_str()),
        (Some("max"), "unknown key")
    );
    assert!(err.fix.contains("keys allowed here: id"), "{}", err.fix);
}

#[test]
fn missing_cert_file_names_key_path_and_fix() {
    let f = Fixture::new();
    let text = f.text("").replace("cert.pem", "missing.pem");
    let err = f.parse(&text).unwrap_err();
    let missing = f.dir.path().join("missing.pem");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: tls.cert_file = {:?}: cannot read the file: No such file or directory (os error 2)\n  fix: point tls.cert_file at a PEM certificate chain readable by the control plane",
            f.path().display(),
            missing.display().to_string()
        )
    );
}

#[test]
fn undefined_group_reference_is_refused() {
    let f = Fixture::new();
    let text = f
        .text("")
        .replace("groups = [\"G\"]", "groups = [\"G\", \"NOPE\"]");
    let err = f.parse(&text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("users[0].groups"));
    assert_eq!(err.value.as_deref(), Some("NOPE"));
    assert_eq!(err.problem, "names an agent group that is not defined");
    assert_eq!(
        err.fix,
        "add a [[groups]] table with id = \"NOPE\", or use one of: G"
    );
}

#[test]
fn plain_password_instead_of_hash_is_refused_without_echoing_it() {
    let f = Fixture::new();
    let text = f.text("").replacen(&f.hash, "hunter2", 1);
    let err = f.parse(&text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("users[0].password_hash"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert_eq!(
        err.fix,
        "generate the hash with `control-plane hash-password` and paste its output"
    );
}

#[test]
fn bad_values_name_the_key() {
    let f = Fixture::new();
    let cases = [
        (
            "listen = \"localhost\"",
            "listen",
            "not an IP address and port",
        ),
        (
            "heartbeat_interval_ms = 0",
            "heartbeat_interval_ms",
            "must be greater than zero",
        ),
        (
            "heartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1000",
            "heartbeat_timeout_ms",
            "must be longer than heartbeat_interval_ms (1000 ms), or every agent is declared dead between two heartbeats",
        ),
        (
            "token_ttl_secs = 0",
            "token_ttl_secs",
            "must be greater than zero",
        ),
        ("max_agents = 0", "max_agents", "must be greater than zero"),
    ];
    for (extra, key, problem) in cases {
        let err = f.parse(&f.text(extra)).unwrap_err();
        assert_eq!(
            (err.key.as_deref(), err.problem.as_str()),
            (Some(key), problem),
            "{extra}"
        );
    }
}

#[test]
fn webhook_ca_file_is_read_relative_to_the_config() {
    let f = Fixture::new();
    let c = f.parse(&f.text("webhook_ca_file = \"cert.pem\"")).unwrap();
    assert_eq!(c.webhook_ca_file, Some(f.dir.path().join("cert.pem")));
    let err = f
        .parse(&f.text("webhook_ca_file = \"missing.pem\""))
        .unwrap_err();
    assert_eq!(
        (err.key.as_deref(), err.value.clone()),
        (
            Some("webhook_ca_file"),
            Some(f.dir.path().join("missing.pem").display().to_string())
        )
    );
    assert!(
        err.fix.starts_with("point it at a readable PEM file"),
        "{err}"
    );
}

#[test]
fn duplicate_names_and_missing_sections_are_refused() {
    let f = Fixture::new();
    let dup = f.text("")
        + &format!(
            "\n[[users]]\nname = \"agent\"\npassword_hash = \"{}\"\ngroups = [\"G\"]\n",
            f.hash
        );
    let err = f.parse(&dup).unwrap_err();
    assert_eq!(
        (err.key.as_deref(), err.problem.as_str()),
        (Some("users[1].name"), "is defined twice")
    );

    let no_tls = f.text("").replace(
        "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
        "",
    );
    let err = f.parse(&no_tls).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("tls"));

    let no_groups = f
        .text("")
        .replace("[[groups]]\nid = \"G\"\n", "")
        .replace("groups = [\"G\"]", "groups = []");
    let err = f.parse(&no_groups).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("groups"));
}

#[test]
fn missing_required_field_reports_the_line() {
    let f = Fixture::new();
    let text = f.text("").replace("password_hash", "# password_hash");
    let err = f.parse(&text).unwrap_err();
    assert!(
        err.problem.contains("missing field `password_hash`"),
        "{}",
        err.problem
    );
    assert!(err.line.is_some());
}

#[test]
fn oauth_client_scopes_and_warnings() {
    let f = Fixture::new();
    let text = format!(
        "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n[[groups]]\nid = \"G\"\n\
         [[oauth_clients]]\nclient_id = \"c1\"\nsecret_hash = \"{}\"\ngroups = [\"G\"]\nscopes = [\"agent\"]\n",
        f.hash
    );
    let c = f.parse(&text).unwrap();
    assert_eq!(c.oauth_client("c1").unwrap().scopes, vec!["agent"]);
    assert_eq!(
        c.warnings,
        vec!["no [[console_tokens]]: the console API refuses every request"]
    );
    let err = f
        .parse(&text.replace("[\"agent\"]", "[\"a b\"]"))
        .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("oauth_clients[0].scopes"));
}

#[test]
fn documented_example_is_valid_once_hashes_and_certificates_are_filled_in() {
    let f = Fixture::new();
    let example = include_str!("../../../docs/control-plane.toml.example");
    let placeholder = "$argon2id$v=19$m=19456,t=2,p=1$REPLACE_WITH_THE_OUTPUT_OF$hash-password";
    assert_eq!(
        example.matches(placeholder).count(),
        3,
        "example placeholders changed"
    );
    let text = example
        .replace(placeholder, &f.hash)
        .replace("tls/server.pem", "cert.pem")
        .replace("tls/server-key.pem", "key.pem");
    // Its job reads a JKS truststore next to the config.
    let ts = f.dir.path().join("app_streaming_truststore.jks");
    let err = f.parse(&text).unwrap_err();
    assert_eq!(
        (err.key.as_deref(), err.value.as_deref()),
        (Some("jobs[0].security.truststore.file"), ts.to_str())
    );
    std::fs::write(&ts, jks_with_one_cert("changeit")).unwrap();
    let c = f.parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            c.groups.len(),
            c.users.len(),
            c.oauth_clients.len(),
            c.console_tokens.len(),
            c.jobs.len()
        ),
        (1, 1, 1, 1, 1)
    );
    let job = &c.jobs[0];
    assert_eq!(
        (job.id(), job.group.as_str(), job.value_format),
        (
            "users-sync",
            "PRIVATE_GROUP",
            crate::delivery::ValueFormat::ConnectPayload
        )
    );
    let truststore = job.spec.security.truststore.as_ref().unwrap();
    assert_eq!(
        truststore.format,
        connectivity_protocol::job::TruststoreFormat::Jks
    );
    assert_eq!(
        truststore.data.expose(),
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            std::fs::read(&ts).unwrap()
        )
    );
    // As shipped, the placeholders are refused with the fix.
    let err = f
        .parse(
            &example
                .replace("tls/server.pem", "cert.pem")
                .replace("tls/server-key.pem", "key.pem"),
        )
        .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("users[0].password_hash"));
}

/// A JKS truststore as keytool -storetype JKS writes it: one trusted
/// certificate entry, SHA-1 digest keyed by `password`.
fn jks_with_one_cert(password: &str) -> Vec<u8> {
    use sha1::Digest;
    let key = rcgen::KeyPair::generate().unwrap();
    let der = rcgen::CertificateParams::new(vec!["stream.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .der()
        .to_vec();
    let mut v = Vec::new();
    v.extend_from_slice(&0xFEED_FEEDu32.to_be_bytes());
    v.extend_from_slice(&2u32.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&2u32.to_be_bytes()); // trusted certificate entry
    v.extend_from_slice(&9u16.to_be_bytes());
    v.extend_from_slice(b"ossstream");
    v.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    v.extend_from_slice(&5u16.to_be_bytes());
    v.extend_from_slice(b"X.509");
    v.extend_from_slice(&(der.len() as u32).to_be_bytes());
    v.extend_from_slice(&der);
    let mut h = sha1::Sha1::new();
    let pw: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    h.update(&pw);
    h.update(b"Mighty Aphrodite");
    h.update(&v);
    v.extend_from_slice(h.finalize().as_slice());
    v
}

/// Write `cert` followed by `chain` as the fixture's cert.pem, `key` as its key.pem.
fn with_certificate(f: &Fixture, cert: &rcgen::Certificate, chain: &[&str], key: &rcgen::KeyPair) {
    let mut pem = cert.pem();
    for c in chain {
        pem.push_str(c);
    }
    std::fs::write(f.dir.path().join("cert.pem"), pem).unwrap();
    std::fs::write(f.dir.path().join("key.pem"), key.serialize_pem()).unwrap();
}

#[test]
fn a_ca_certificate_as_server_certificate_is_refused_with_the_fix() {
    let f = Fixture::new();
    // What `openssl req -x509` makes with OpenSSL 3.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cp.example.com");
    with_certificate(&f, &params.self_signed(&key).unwrap(), &[], &key);
    let err = f.parse(&f.text("")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: tls.cert_file = {:?}: the first certificate (\"CN=cp.example.com\") is a CA certificate \
             (basicConstraints CA:TRUE), which agents refuse as a server's certificate (OpenSSL 3's `openssl req -x509` \
             makes one)\n  fix: make a server certificate signed by a CA with `control-plane init` (docs/CONTROL_PLANE.md), \
             put it (followed by any intermediate CA certificate) in tls.cert_file, and give agents the CA's certificate in oic_CA_FILE",
            f.path().display(),
            f.dir.path().join("cert.pem").display().to_string()
        )
    );
}

type TestIssuer = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn test_ca(name: &str, parent: Option<&TestIssuer>) -> TestIssuer {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    match parent {
        None => rcgen::CertifiedIssuer::self_signed(p, key).unwrap(),
        Some(parent) => rcgen::CertifiedIssuer::signed_by(p, key, parent).unwrap(),
    }
}

#[test]
fn a_chain_without_its_intermediate_and_a_certificate_near_expiry_are_warned_about() {
    let f = Fixture::new();
    let root = test_ca("root", None);
    let mid = test_ca("mid", Some(&root));
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    // Twelve and a half days left.
    let not_after = connectivity_common::tls::cert::now_secs() + 12 * 86_400 + 43_200;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
    let leaf = params.signed_by(&key, &mid).unwrap();
    // The root is there, the intermediate is not.
    with_certificate(&f, &leaf, &[&root.pem()], &key);
    let config = f.parse(&f.text("")).unwrap();
    let file = f.dir.path().join("cert.pem");
    assert_eq!(
        config.warnings[..2],
        [
            format!(
                "tls.cert_file ({}): the chain stops at a certificate issued by \"CN=mid\", and the file holds CA \
                 certificates but not that one; agents refuse the chain unless their oic_CA_FILE holds it: put the \
                 certificate of \"CN=mid\" after the server certificate",
                file.display()
            ),
            format!(
                "tls.cert_file ({}): the certificate (\"CN=localhost\") expires at {}, in 12 days: renew it before \
                 then (agents refuse it once it has expired)",
                file.display(),
                connectivity_common::timefmt::rfc3339_secs(not_after)
            ),
        ]
    );
    assert_eq!(config.tls.certificate.not_after, not_after);
    // With the intermediate, no chain warning.
    with_certificate(&f, &leaf, &[&mid.pem(), &root.pem()], &key);
    let config = f.parse(&f.text("")).unwrap();
    assert!(
        !config.warnings.iter().any(|w| w.contains("chain")),
        "{:?}",
        config.warnings
    );
}
