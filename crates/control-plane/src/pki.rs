//! A private CA and the server certificate it signs, for `control-plane
//! init` and the demo.
//!
//! The server certificate is a leaf (`CA:FALSE`, `serverAuth`) and the CA a
//! separate certificate: rustls, like browsers, refuses a CA certificate as
//! a server's own (`CaUsedAsEndEntity`), which is what a one-line
//! `openssl req -x509` makes. Agents trust the CA through `oic_CA_FILE`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::time::Duration;
use time::OffsetDateTime;

/// How long the CA is valid: long enough to outlive many server certificates.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The server certificate's default lifetime.
pub const DEFAULT_SERVER_DAYS: u32 = 365;
/// Certificates start an hour in the past, so a host whose clock is a little
/// behind does not see them as not yet valid.
const BACKDATE: Duration = Duration::from_secs(3600);

/// PEM text of a CA and of a server certificate it signed, with their keys.
pub struct Pki {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
    /// When the server certificate expires.
    pub server_not_after: OffsetDateTime,
}

/// Make a CA named `ca_name` and a server certificate for `hosts` (DNS names
/// or IP addresses; the first is also the subject's CN), valid for
/// `server_days` days.
pub fn generate(ca_name: &str, hosts: &[String], server_days: u32) -> Result<Pki, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - BACKDATE;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(hosts.to_vec())?;
    server.is_ca = IsCa::ExplicitNoCa;
    if let Some(first) = hosts.first() {
        server.distinguished_name.push(DnType::CommonName, first);
    }
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = now + Duration::from_secs(u64::from(server_days) * 24 * 3600);
    let server_not_after = server.not_after;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    Ok(Pki {
        ca_pem: ca_cert.pem(),
        ca_key_pem,
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        server_not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn der(pem: &str) -> Vec<u8> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_server_certificate_is_a_leaf_for_every_host_signed_by_the_ca() {
        let hosts = vec!["cp.example.com".to_owned(), "10.0.0.5".to_owned()];
        let pki = generate("test CA", &hosts, 30).unwrap();
        let (ca_der, leaf_der) = (der(&pki.ca_pem), der(&pki.server_pem));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();

        assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(leaf.issuer(), ca.subject());
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["DNS:cp.example.com", "IP:[10, 0, 0, 5]"]);
        let left =
            leaf.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        let thirty_days = 30 * 86_400;
        assert!(
            (thirty_days - 60..=thirty_days).contains(&left),
            "{left} s left"
        );
    }
}
