//! Truststores that hold the broker's own certificate instead of a CA.
//!
//! The seed article builds its truststore with `openssl s_client ... | sed`
//! and `keytool -import`: that captures the broker's *leaf* certificate only.
//! Java trusts any certificate in a truststore as an anchor; OpenSSL (inside
//! librdkafka) only trusts self-signed anchors unless `X509_V_FLAG_PARTIAL_CHAIN`
//! is set, which librdkafka does not expose. So users' existing truststores
//! would fail with "certificate verify failed".
//!
//! To accept them as they are, the agent completes the chain once per job
//! start: it asks the broker for its certificate chain, requires the leaf it
//! presents to be byte-for-byte the one in the truststore, then walks up the
//! issuers (from the chain the broker sent, then from the system roots),
//! checking every signature, to a self-signed root. Those issuers are added
//! as anchors for librdkafka, which then verifies every connection as usual
//! (chain and host name). Trust therefore widens from "this certificate" to
//! "certificates of the CA that issued it": documented in docs/JOBS.md.
//! A forged chain cannot get in: each issuer must verify the signature on
//! the pinned certificate the user supplied.

use connectivity_protocol::job::{Truststore, TruststoreFormat};
use connectivity_protocol::secret::Secret;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Whether a certificate may serve as an OpenSSL trust anchor as it is.
fn is_anchor(cert: &X509Certificate<'_>) -> bool {
    let ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    ca || cert.subject() == cert.issuer()
}

/// If `ts` holds certificates that are neither CAs nor self-signed, return a
/// PEM truststore that adds their issuers up to a root; `Ok(None)` when the
/// truststore is usable as it is.
pub async fn complete(
    ts: &Truststore,
    bootstrap_servers: &str,
    timeout: Duration,
) -> Result<Option<Truststore>, String> {
    let certs = connectivity_protocol::truststore::certificates(ts).map_err(|e| e.to_string())?;
    let mut leaves = Vec::new();
    for der in &certs {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("truststore holds an unreadable certificate: {e}"))?;
        if !is_anchor(&cert) {
            leaves.push(der.clone());
        }
    }
    if leaves.is_empty() {
        return Ok(None);
    }
    let mut last_err = String::from("no bootstrap server given");
    for server in bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match tokio::time::timeout(timeout, presented_chain(server)).await {
            Err(_) => last_err = format!("{server}: TLS handshake timed out"),
            Ok(Err(e)) => last_err = format!("{server}: {e}"),
            Ok(Ok(chain)) => {
                let added = issuers_for(&leaves, &chain)?;
                let mut all = certs.clone();
                all.extend(added);
                let pem = connectivity_protocol::truststore::pem_encode(&all);
                return Ok(Some(Truststore {
                    format: TruststoreFormat::Pem,
                    data: Secret::new(pem),
                    password: None,
                }));
            }
        }
    }
    Err(format!(
        "the truststore holds the broker's own certificate, not a CA; completing its chain needs the broker's chain, but {last_err}"
    ))
}

/// The issuers (up to a self-signed root) of the presented leaf, which must
/// be one of `leaves`.
fn issuers_for(
    leaves: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let presented = chain.first().ok_or("the broker sent no certificate")?;
    if !leaves.iter().any(|l| l.as_ref() == presented.as_ref()) {
        return Err(
            "the broker presented a certificate that is not the one in the truststore: \
                    it was renewed, or this is not the broker the truststore was made for; \
                    rebuild the truststore, or import the CA certificate instead"
                .into(),
        );
    }
    let roots = rustls_native_certs::load_native_certs().certs;
    let mut added = Vec::new();
    let mut current = presented.clone();
    for _ in 0..8 {
        let (_, cur) = X509Certificate::from_der(&current)
            .map_err(|e| format!("unreadable certificate from the broker: {e}"))?;
        if cur.subject() == cur.issuer() && cur.verify_signature(None).is_ok() {
            return Ok(added);
        }
        let Some(issuer) = issuer_of(&cur, chain[1..].iter().chain(roots.iter())) else {
            return Err(format!(
                "the truststore holds the broker's own certificate (issued by {}), not a CA, and the CA that issued it \
                 is neither sent by the broker nor trusted by this system; import that CA certificate into the truststore \
                 (keytool -importcert -alias ca -file ca.pem) or give it as a PEM truststore",
                cur.issuer()
            ));
        };
        added.push(issuer.clone());
        current = issuer;
    }
    Err("the broker's certificate chain is longer than 8 certificates".into())
}

/// The candidate that issued `cert`: its subject is `cert`'s issuer and
/// its key verifies `cert`'s signature.
fn issuer_of<'c>(
    cert: &X509Certificate<'_>,
    mut candidates: impl Iterator<Item = &'c CertificateDer<'static>>,
) -> Option<CertificateDer<'static>> {
    let issued = |cand: &CertificateDer<'_>| match X509Certificate::from_der(cand) {
        Ok((_, c)) => {
            c.subject() == cert.issuer() && cert.verify_signature(Some(c.public_key())).is_ok()
        }
        Err(_) => false,
    };
    candidates.find(|cand| issued(cand)).cloned()
}

/// Open a TLS handshake to `server` only to read the certificates it presents.
async fn presented_chain(server: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let (host, port) = crate::allowlist::split_host_port(server)
        .ok_or_else(|| format!("{server:?} is not host:port"))?;
    let host = host.trim_matches(['[', ']']).to_owned();
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{server:?} has an invalid port"))?;
    let captured: Arc<Mutex<Vec<CertificateDer<'static>>>> = Arc::default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Capture {
        seen: captured.clone(),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
    // The handshake is aborted by `Capture` on purpose: this connection
    // never carries data, it only shows us the chain.
    let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let chain = captured.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err("the TLS handshake failed before the broker sent its certificate".into());
    }
    Ok(chain)
}

/// Records the presented chain and fails the handshake.
#[derive(Debug)]
struct Capture {
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(end_entity.clone().into_owned());
            seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Err(rustls::Error::General(
            "chain captured; handshake not needed".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not used".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
