//! Test certificates made at test time: a CA, and a server certificate it
//! signs for `localhost` and `127.0.0.1`, written as PEM files into a temp
//! dir. Clients trust the CA and nothing else, so the tests exercise real
//! certificate verification.
#![allow(dead_code)] // each test binary uses a different subset

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;

/// A CA and a server certificate, as files and as PEM text.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// Generate a fresh CA and a server certificate for localhost/127.0.0.1.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");

        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "connectivity-agent test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&server_key, &issuer).expect("server cert");

        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server-key.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        // The chain a server sends: its certificate, then the CA's.
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), ca_cert.pem())).expect("write cert");
        std::fs::write(&key_file, server_key.serialize_pem()).expect("write key");
        TestPki {
            ca_pem: ca_cert.pem(),
            dir,
            ca_file,
            cert_file,
            key_file,
        }
    }

    /// A rustls client configuration (ring provider) trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("ca pem")).expect("add ca");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }
}

/// A CA made at test time that signs intermediates and server certificates,
/// for chains built to fail in one particular way.
pub struct Ca {
    pub issuer: rcgen::CertifiedIssuer<'static, KeyPair>,
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    pub fn root(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let issuer = rcgen::CertifiedIssuer::self_signed(ca_params(common_name), key).expect("ca");
        Ca { issuer }
    }

    pub fn intermediate(&self, common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let issuer = rcgen::CertifiedIssuer::signed_by(ca_params(common_name), key, &self.issuer)
            .expect("intermediate");
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate (CN=localhost) for `names`, changed by `edit`
    /// (dates, say): its PEM and its key's PEM.
    pub fn leaf(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// What `openssl req -x509 -subj /CN=localhost -addext subjectAltName=...`
/// makes with OpenSSL 3: a self-signed certificate marked CA:TRUE. Its PEM
/// and its key's PEM.
pub fn self_signed_ca_certificate() -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

/// A TLS server on 127.0.0.1 that presents `chain_pem` (server certificate
/// first) and only completes handshakes; stopped when the handle drops.
pub async fn serve_tls(
    chain_pem: &str,
    key_pem: &str,
) -> (u16, tokio_util::task::AbortOnDropHandle<()>) {
    use rustls::pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.expect("chain pem"))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncReadExt;
                    let _ = tls.read(&mut [0u8; 1]).await;
                }
            });
        }
    });
    (port, tokio_util::task::AbortOnDropHandle::new(task))
}
