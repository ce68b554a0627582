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
