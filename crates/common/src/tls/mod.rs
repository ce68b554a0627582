//! TLS settings shared by both binaries, always with certificate verification.
//!
//! The agent trusts the system roots plus an optional CA file (`oic_CA_FILE`);
//! there is deliberately no switch that turns verification off. The crypto
//! provider is `ring`, chosen explicitly so no build needs aws-lc's toolchain.
//! [`cert`] reads the facts of a certificate (names, dates, CA or not) and
//! [`diagnose`] names why a chain was refused.

pub mod cert;
pub mod diagnose;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate; give a file with -----BEGIN CERTIFICATE----- blocks")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key; give a PKCS#8, PKCS#1 or SEC1 key file")]
    NoKey { path: String },
    #[error("{path}: certificate rejected: {source}")]
    BadCertificate { path: String, source: rustls::Error },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// `ring`, with AES-128-GCM preferred over AES-256-GCM: every relayed byte
/// is encrypted by the agent and decrypted by the control plane, and with
/// 10 rounds instead of 14 that costs less CPU on both (docs/PERFORMANCE.md).
/// Both are TLS 1.3's standard suites; the server follows the client's order.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    // Stable: the order among the others stays ring's.
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// Read every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsConfigError::Read {
            path: shown.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// Read the first private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsConfigError::Read {
            path: shown.clone(),
            source,
        })?
        .ok_or(TlsConfigError::NoKey { path: shown })
}

/// Root store: the system's trusted CAs plus those in `extra_ca`.
pub fn root_store(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: a broken system bundle must
    // not stop an agent that was given its own CA file.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|source| TlsConfigError::BadCertificate {
                    path: path.display().to_string(),
                    source,
                })?;
        }
    }
    Ok(roots)
}

/// Client configuration that verifies servers against [`root_store`].
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = root_store(extra_ca)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The webpki verifier [`client_config`] uses, on its own, to be wrapped
/// (by [`diagnose::Recording`]) and given to [`client_config_verified_by`].
pub fn verifier(extra_ca: Option<&Path>) -> Result<Arc<dyn ServerCertVerifier>, TlsConfigError> {
    let roots = Arc::new(root_store(extra_ca)?);
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))
}

/// [`client_config`] with `verifier` in place of the plain webpki one.
pub fn client_config_verified_by(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The facts of every certificate in a PEM file (those that parse).
pub fn read_cert_facts(path: &Path) -> Result<Vec<cert::CertFacts>, TlsConfigError> {
    Ok(read_certs(path)?
        .iter()
        .filter_map(|c| cert::CertFacts::parse(c))
        .collect())
}

/// Server configuration from PEM certificate chain and key files.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Make `ring` the process-wide default provider, for libraries (reqwest)
/// that look it up. Safe to call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_nothing_is_dropped() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let ring: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(ours.len(), ring.len());
        assert!(ring.iter().all(|s| ours.contains(s)));
    }

    #[test]
    fn empty_pem_file_is_named() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let err = client_config(Some(&f)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{} holds no PEM certificate; give a file with -----BEGIN CERTIFICATE----- blocks",
                f.display()
            )
        );
        let err = read_key(&f).unwrap_err().to_string();
        assert!(err.contains("holds no PEM private key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
