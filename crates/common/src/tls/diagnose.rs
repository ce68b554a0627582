//! Why a server's certificate was refused, read from the certificates
//! themselves rather than from rustls' error name alone.
//!
//! [`Recording`] wraps the webpki verifier and keeps the chain the server
//! presented; [`diagnose`] then turns rustls' `InvalidCertificate` error and
//! that chain into a [`Cause`] carrying the facts a message needs (names,
//! dates, issuer). Callers word the message for their own setting.
//!
//! rustls says `UnknownIssuer` both when the server's CA is simply not
//! trusted and when the server left out an intermediate certificate; the
//! chain alone cannot always tell them apart. The rule, honest about that:
//! follow the issuer names through the certificates the server sent; if the
//! last one reached is self-issued (a root), or the client was given no CA
//! file of its own, or its CA file holds a certificate of that very name
//! (then made again, with a new key; webpki calls that a bad signature),
//! it is [`Cause::UnknownIssuer`]. Otherwise, a CA file holding only
//! *other* CAs next to a chain that stops below a root, it is
//! [`Cause::MissingIntermediate`], whose message names both fixes,
//! intermediate first.

use super::cert::{CertFacts, chain_walk, now_secs};
use rustls::CertificateError as C;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};

/// The real reason a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server's own certificate is a CA certificate (CA:TRUE), e.g. made
    /// with `openssl req -x509`, which OpenSSL 3 marks as a CA.
    CaAsServerCertificate { leaf: CertFacts },
    /// The certificate does not name the host that was asked for.
    NameMismatch { leaf: CertFacts, asked: String },
    /// `cert` (the leaf or a CA certificate the server sent) is past `notAfter`.
    Expired {
        cert: CertFacts,
        is_leaf: bool,
        now: i64,
    },
    /// `cert` is before its `notBefore`.
    NotYetValid {
        cert: CertFacts,
        is_leaf: bool,
        now: i64,
    },
    /// The chain ends at `top` (the leaf, or the last certificate sent that
    /// links to it), whose issuer is not trusted.
    UnknownIssuer {
        leaf: CertFacts,
        top: CertFacts,
        /// The client's CA file holds a certificate named like `top`'s
        /// issuer that did not verify it.
        same_name_in_ca_file: bool,
    },
    /// The chain stops below a root at `top` and the client's CA file holds
    /// other CAs: most likely the server did not send an intermediate.
    MissingIntermediate {
        leaf: CertFacts,
        top: CertFacts,
        /// Subjects of the CA file's certificates.
        ca_file_holds: Vec<String>,
    },
}

/// Name the cause of `err`, given the `chain` the server sent (leaf first)
/// and the certificates of the client's own CA file (empty when none was
/// given). `None` when `err` is not about the certificate or the chain
/// cannot be read: the caller then shows rustls' own text.
pub fn diagnose(
    err: &rustls::Error,
    chain: &[CertificateDer<'_>],
    asked: &str,
    ca_file: &[CertFacts],
) -> Option<Cause> {
    let rustls::Error::InvalidCertificate(e) = err else {
        return None;
    };
    let sent: Vec<CertFacts> = chain.iter().filter_map(|c| CertFacts::parse(c)).collect();
    let leaf = sent.first()?.clone();
    // webpki refuses a CA as end entity before anything else (as `Other`).
    if leaf.is_ca {
        return Some(Cause::CaAsServerCertificate { leaf });
    }
    let now = now_secs();
    let out_of_date = |wanted: fn(&CertFacts, i64) -> bool| {
        let i = sent.iter().position(|c| wanted(c, now)).unwrap_or(0);
        (sent[i].clone(), i == 0)
    };
    Some(match e {
        C::NotValidForName | C::NotValidForNameContext { .. } => Cause::NameMismatch {
            leaf,
            asked: asked.to_owned(),
        },
        C::Expired | C::ExpiredContext { .. } => {
            let (cert, is_leaf) = out_of_date(|c, now| now > c.not_after);
            Cause::Expired { cert, is_leaf, now }
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            let (cert, is_leaf) = out_of_date(|c, now| now < c.not_before);
            Cause::NotYetValid { cert, is_leaf, now }
        }
        C::UnknownIssuer => unknown_issuer(leaf, &sent, ca_file),
        // webpki reports a CA of the right name but another key (made
        // again) as a bad signature.
        C::BadSignature => match unknown_issuer(leaf, &sent, ca_file) {
            c @ Cause::UnknownIssuer {
                same_name_in_ca_file: true,
                ..
            } => c,
            _ => return None,
        },
        _ => return None,
    })
}

/// Apply the rule of the module header.
fn unknown_issuer(leaf: CertFacts, sent: &[CertFacts], ca_file: &[CertFacts]) -> Cause {
    let top = sent[chain_walk(sent).0].clone();
    let same_name_in_ca_file = ca_file.iter().any(|ca| top.issued_by(ca));
    if top.is_self_issued() || ca_file.is_empty() || same_name_in_ca_file {
        return Cause::UnknownIssuer {
            leaf,
            top,
            same_name_in_ca_file,
        };
    }
    Cause::MissingIntermediate {
        leaf,
        top,
        ca_file_holds: ca_file.iter().map(|c| c.subject.clone()).collect(),
    }
}

/// The chain a [`Recording`] saw, shared with whoever reads it afterwards.
pub type SeenChain = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// Verifies with `inner` and remembers the chain it was shown, so a refused
/// chain can be explained and an accepted one reported.
#[derive(Debug)]
pub struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: SeenChain,
}

impl Recording {
    /// `inner`, recording each chain it is shown into `seen`.
    pub fn new(inner: Arc<dyn ServerCertVerifier>, seen: SeenChain) -> Arc<Recording> {
        Arc::new(Recording { inner, seen })
    }
}

/// A copy of the chain recorded so far (empty before the server sent one).
pub fn seen(chain: &SeenChain) -> Vec<CertificateDer<'static>> {
    chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.clear();
        seen.push(end_entity.clone().into_owned());
        seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        drop(seen);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls error inside an I/O error from a TLS handshake.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    type Issuer = CertifiedIssuer<'static, KeyPair>;

    fn ca(name: &str, parent: Option<&Issuer>) -> Issuer {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        match parent {
            None => CertifiedIssuer::self_signed(p, key).unwrap(),
            Some(parent) => CertifiedIssuer::signed_by(p, key, parent).unwrap(),
        }
    }

    fn leaf(issuer: &Issuer) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn facts(c: &Issuer) -> CertFacts {
        CertFacts::parse(c.der()).unwrap()
    }

    fn unknown() -> rustls::Error {
        rustls::Error::InvalidCertificate(C::UnknownIssuer)
    }

    #[test]
    fn chain_walk_tells_unknown_issuer_from_missing_intermediate() {
        let root = ca("root", None);
        let mid = ca("mid", Some(&root));
        let other = ca("other", None);
        let leaf = leaf(&mid);
        let only_leaf = [leaf.clone()];
        // No CA file: an untrusted issuer.
        let c = diagnose(&unknown(), &only_leaf, "localhost", &[]).unwrap();
        assert!(
            matches!(&c, Cause::UnknownIssuer { top, .. } if top.issuer == "CN=mid"),
            "{c:?}"
        );
        // A CA file with other CAs and a chain stopping below a root.
        let c = diagnose(&unknown(), &only_leaf, "localhost", &[facts(&root)]).unwrap();
        assert!(
            matches!(&c, Cause::MissingIntermediate { ca_file_holds, .. } if ca_file_holds == &["CN=root"]),
            "{c:?}"
        );
        // The whole chain sent, up to a root the CA file lacks.
        let full = [leaf.clone(), mid.der().clone(), root.der().clone()];
        let c = diagnose(&unknown(), &full, "localhost", &[facts(&other)]).unwrap();
        assert!(
            matches!(&c, Cause::UnknownIssuer { top, same_name_in_ca_file: false, .. } if top.subject == "CN=root"),
            "{c:?}"
        );
        // A CA of the same name, made again.
        let again = ca("mid", None);
        let c = diagnose(&unknown(), &only_leaf, "localhost", &[facts(&again)]).unwrap();
        assert!(
            matches!(
                &c,
                Cause::UnknownIssuer {
                    same_name_in_ca_file: true,
                    ..
                }
            ),
            "{c:?}"
        );
    }

    #[test]
    fn a_ca_as_server_certificate_comes_first_and_other_errors_are_left_alone() {
        let root = ca("root", None);
        let c = diagnose(&unknown(), &[root.der().clone()], "localhost", &[]).unwrap();
        assert!(matches!(c, Cause::CaAsServerCertificate { .. }));
        let e = rustls::Error::InvalidCertificate(C::Revoked);
        assert_eq!(diagnose(&e, &[leaf(&root)], "localhost", &[]), None);
        let e = rustls::Error::InvalidCertificate(C::BadSignature);
        assert_eq!(diagnose(&e, &[leaf(&root)], "localhost", &[]), None);
        assert_eq!(
            diagnose(&rustls::Error::HandshakeNotComplete, &[], "x", &[]),
            None
        );
    }
}
