//! Facts about one X.509 certificate that a person needs to fix a TLS
//! problem: whom it names, who issued it, whether it is a CA, and when it is
//! valid. Shared by the agent (the control plane's certificate, `oic_CA_FILE`)
//! and the control plane (its own `tls.cert_file`).

use crate::timefmt::rfc3339_secs;
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate closer than this to its `notAfter` is worth a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

const DAY_SECS: i64 = 86_400;

/// What [`CertFacts::parse`] read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject and issuer as RFC 4514-like text (`CN=localhost`).
    pub subject: String,
    pub issuer: String,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    /// subjectAltName entries a TLS client matches, as `DNS:name` / `IP:addr`.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The encoded names, compared to link a certificate to its issuer.
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
}

/// Where a certificate stands against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    /// Valid, with at least [`EXPIRY_WARNING_DAYS`] left.
    Valid,
    /// Valid, but expiring within [`EXPIRY_WARNING_DAYS`].
    ExpiresSoon,
    Expired,
}

impl Validity {
    /// The name used in the console API.
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::NotYetValid => "not_yet_valid",
            Validity::Valid => "valid",
            Validity::ExpiresSoon => "expires_soon",
            Validity::Expired => "expired",
        }
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl CertFacts {
    /// Read a DER certificate; `None` when it does not parse.
    pub fn parse(der: &[u8]) -> Option<CertFacts> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => ip_text(ip).map(|ip| format!("IP:{ip}")),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let validity = cert.validity();
        Some(CertFacts {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            is_ca: cert.is_ca(),
            names,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            subject_der: cert.subject().as_raw().to_vec(),
            issuer_der: cert.issuer().as_raw().to_vec(),
        })
    }

    /// Its issuer's name is its own (a root, or a self-made certificate).
    pub fn is_self_issued(&self) -> bool {
        self.subject_der == self.issuer_der
    }

    /// `self` names `other` as its issuer.
    pub fn issued_by(&self, other: &CertFacts) -> bool {
        self.issuer_der == other.subject_der
    }

    /// Whole days until `notAfter` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(DAY_SECS)
    }

    pub fn validity(&self, now: i64) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else if self.not_after - now < EXPIRY_WARNING_DAYS * DAY_SECS {
            Validity::ExpiresSoon
        } else {
            Validity::Valid
        }
    }

    pub fn not_before_text(&self) -> String {
        rfc3339_secs(self.not_before)
    }

    pub fn not_after_text(&self) -> String {
        rfc3339_secs(self.not_after)
    }

    /// `"valid from X to Y; now Z"`, the dates a clock or renewal problem needs.
    pub fn dates(&self, now: i64) -> String {
        format!(
            "valid from {} to {}; now {}",
            self.not_before_text(),
            self.not_after_text(),
            rfc3339_secs(now)
        )
    }

    /// Log a warning when the certificate is not valid now or expires within
    /// [`EXPIRY_WARNING_DAYS`]; `what` says which certificate it is.
    pub fn warn_about_expiry(&self, what: &str, now: i64) {
        let message = match self.validity(now) {
            Validity::Valid => return,
            Validity::ExpiresSoon => "certificate expires within 30 days; renew it",
            Validity::Expired => "certificate has expired; renew it",
            Validity::NotYetValid => "certificate is not valid yet; check the clocks",
        };
        tracing::warn!(
            certificate = what,
            subject = %self.subject,
            not_before = %self.not_before_text(),
            not_after = %self.not_after_text(),
            days_left = self.days_left(now),
            "{message}"
        );
    }
}

/// Follow issuer names from `chain[0]` (the leaf) through the rest of
/// `chain`, each certificate used once: the index of the last certificate
/// reached and how many were used. Empty chains are the caller's to refuse.
pub fn chain_walk(chain: &[CertFacts]) -> (usize, usize) {
    let mut used = vec![false; chain.len()];
    let (mut at, mut n) = (0, 1);
    used[0] = true;
    while !chain[at].is_self_issued() {
        match (0..chain.len()).find(|&i| !used[i] && chain[at].issued_by(&chain[i])) {
            Some(next) => {
                used[next] = true;
                at = next;
                n += 1;
            }
            None => break,
        }
    }
    (at, n)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// `"CN=x"` in quotes, so a name with commas reads as one thing in a sentence.
pub fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days_before: i64, days_after: i64, now: i64) -> CertFacts {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let at = |secs: i64| {
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs as u64)
        };
        params.not_before = at(now - days_before * DAY_SECS);
        params.not_after = at(now + days_after * DAY_SECS);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        CertFacts::parse(params.self_signed(&key).unwrap().der()).unwrap()
    }

    #[test]
    fn facts_of_a_self_made_certificate() {
        let now = 1_800_000_000;
        let c = cert(1, 400, now);
        assert_eq!(c.subject, "CN=localhost");
        assert_eq!(c.names, ["DNS:localhost", "IP:127.0.0.1"]);
        assert!(!c.is_ca);
        assert!(c.is_self_issued() && c.issued_by(&c));
        assert_eq!(c.days_left(now), 400);
        assert_eq!(c.validity(now), Validity::Valid);
        assert_eq!(chain_walk(std::slice::from_ref(&c)), (0, 1));
    }

    #[test]
    fn validity_against_the_clock() {
        let now = 1_800_000_000;
        assert_eq!(cert(1, 29, now).validity(now), Validity::ExpiresSoon);
        assert_eq!(cert(10, 30, now).validity(now), Validity::Valid);
        assert_eq!(cert(10, -1, now).validity(now), Validity::Expired);
        assert_eq!(cert(10, -1, now).days_left(now), -1);
        assert_eq!(cert(-2, 10, now).validity(now), Validity::NotYetValid);
    }
}
