//! The control plane's own certificate (`tls.cert_file`): checked when the
//! config loads, shown by the console API (`GET /api/v1/status`) and
//! `/metrics`, and used to explain why a client refused it.
//!
//! At load, a first certificate that is a CA (CA:TRUE) is a config error:
//! every agent refuses it. A chain that visibly lacks its intermediate (the
//! file holds CA certificates, but not the server certificate's issuer) and
//! a certificate that expires within 30 days, has expired or is not yet
//! valid are warnings: the control plane still starts, so the console and
//! `/metrics` can show the problem, and a clock that is off can come right.

use connectivity_common::tls::cert::{CertFacts, Validity, chain_walk, quoted};
use rustls::AlertDescription;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Check the certificates of `file` (leaf first). `Err((problem, fix))`
/// when agents would refuse the leaf whatever they trust; else the leaf and
/// the warnings worth logging at start.
pub fn check(
    file: &Path,
    certs: &[CertFacts],
    now: i64,
) -> Result<(CertFacts, Vec<String>), (String, String)> {
    let Some(leaf) = certs.first() else {
        return Err((
            "holds no certificate that can be read".to_owned(),
            "give a PEM certificate chain, server certificate first".to_owned(),
        ));
    };
    if leaf.is_ca {
        return Err((
            format!(
                "the first certificate ({}) is a CA certificate (basicConstraints CA:TRUE), which agents refuse \
                 as a server's certificate (OpenSSL 3's `openssl req -x509` makes one)",
                quoted(&leaf.subject)
            ),
            "make a server certificate signed by a CA with `control-plane init` (docs/CONTROL_PLANE.md), put it \
             (followed by any intermediate CA certificate) in tls.cert_file, and give agents the CA's certificate in oic_CA_FILE"
                .to_owned(),
        ));
    }
    let shown = file.display();
    let mut warnings = Vec::new();
    if let Some(issuer) = missing_issuer(certs) {
        warnings.push(format!(
            "tls.cert_file ({shown}): the chain stops at a certificate issued by {issuer}, and the file holds CA \
             certificates but not that one; agents refuse the chain unless their oic_CA_FILE holds it: put the \
             certificate of {issuer} after the server certificate",
            issuer = quoted(&issuer)
        ));
    }
    let what = format!(
        "tls.cert_file ({shown}): the certificate ({})",
        quoted(&leaf.subject)
    );
    match leaf.validity(now) {
        Validity::Valid => {}
        Validity::ExpiresSoon => warnings.push(format!(
            "{what} expires at {}, in {} days: renew it before then (agents refuse it once it has expired)",
            leaf.not_after_text(),
            leaf.days_left(now)
        )),
        Validity::Expired => warnings.push(format!(
            "{what} expired at {} ({}): agents refuse it until it is renewed",
            leaf.not_after_text(),
            leaf.dates(now)
        )),
        Validity::NotYetValid => warnings.push(format!(
            "{what} is not valid before {} ({}): agents refuse it until then; check this machine's clock",
            leaf.not_before_text(),
            leaf.dates(now)
        )),
    }
    Ok((leaf.clone(), warnings))
}

/// The issuer whose certificate is missing from a chain that holds other
/// certificates unused by it (a root or a wrong intermediate), the only
/// case a file alone shows: a leaf on its own is normal when agents hold
/// its issuer in `oic_CA_FILE`.
fn missing_issuer(certs: &[CertFacts]) -> Option<String> {
    let (top, used) = chain_walk(certs);
    let top = &certs[top];
    (!top.is_self_issued() && used < certs.len()).then(|| top.issuer.clone())
}

/// The certificate in the console API.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    pub cert_file: String,
    pub subject: String,
    pub issuer: String,
    /// subjectAltName entries (`DNS:...`, `IP:...`).
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Whole days until `not_after`, negative once expired.
    pub days_left: i64,
    /// `valid`, `expires_soon` (within 30 days), `expired` or `not_yet_valid`.
    pub state: &'static str,
}

impl CertificateView {
    pub fn new(file: &Path, leaf: &CertFacts, now: i64) -> Self {
        CertificateView {
            cert_file: file.display().to_string(),
            subject: leaf.subject.clone(),
            issuer: leaf.issuer.clone(),
            names: leaf.names.clone(),
            not_before: leaf.not_before_text(),
            not_after: leaf.not_after_text(),
            days_left: leaf.days_left(now),
            state: leaf.validity(now).as_str(),
        }
    }
}

/// Why a client that sent `alert` during the handshake refused `leaf`, and
/// the fix; `None` for alerts that are not about the certificate.
pub fn refusal_cause(alert: AlertDescription, leaf: &CertFacts) -> Option<String> {
    let names = if leaf.names.is_empty() {
        "no DNS or IP names".to_owned()
    } else {
        leaf.names.join(", ")
    };
    Some(match alert {
        AlertDescription::UnknownCA => format!(
            "the client does not trust the CA that issued this certificate ({}): the agent's oic_CA_FILE must hold \
             that CA's certificate (or its root's, with any intermediate after the server certificate in tls.cert_file)",
            quoted(&leaf.issuer)
        ),
        AlertDescription::CertificateExpired => format!(
            "the client finds this certificate expired or not yet valid (valid from {} to {}): renew it, \
             or check the client's clock",
            leaf.not_before_text(),
            leaf.not_after_text()
        ),
        AlertDescription::BadCertificate => format!(
            "the client asked for a host name this certificate is not for (it is for {names}): use one of \
             those names in the agent's oic_URL, or give the control plane a certificate for the name agents use"
        ),
        AlertDescription::UnsupportedCertificate => {
            "the client found the certificate not meant for a TLS \
             server (its extendedKeyUsage lacks serverAuth): make one with `control-plane init`"
                .to_owned()
        }
        AlertDescription::CertificateUnknown => "the client refused this certificate: run \
             `connectivity-agent check` on the agent, which names the cause"
            .to_owned(),
        _ => return None,
    })
}

/// How often one source's refusals are logged.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(600);
/// Sources remembered; beyond it the table is cleared (a flood of sources
/// costs some repeated lines, never memory).
const MAX_SOURCES: usize = 1024;

/// Logs a source's refused handshakes once per [`REFUSAL_LOG_INTERVAL`]:
/// an agent retrying every few seconds must not flood the log.
#[derive(Default)]
pub struct RefusalLog {
    last: Mutex<HashMap<IpAddr, Instant>>,
}

impl RefusalLog {
    /// Whether a refusal from `source` at `now` should be logged.
    pub fn due(&self, source: IpAddr, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last.get(&source)
            && now.saturating_duration_since(*t) < REFUSAL_LOG_INTERVAL
        {
            return false;
        }
        if last.len() >= MAX_SOURCES {
            last.clear();
        }
        last.insert(source, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_per_interval() {
        let log = RefusalLog::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert!(log.due(a, t));
        assert!(!log.due(a, t + Duration::from_secs(5)));
        assert!(log.due(b, t + Duration::from_secs(5)));
        assert!(log.due(a, t + REFUSAL_LOG_INTERVAL));
    }
}
