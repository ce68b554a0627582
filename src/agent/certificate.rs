//! The control plane's certificate as the agent sees it: what to tell the
//! operator when it is refused (one message per [`Cause`], each naming the
//! fix), and its expiry and `oic_CA_FILE`'s, as warnings and metrics.

use connectivity_common::tls::cert::{CertFacts, EXPIRY_WARNING_DAYS, now_secs, quoted};
use connectivity_common::tls::diagnose::Cause;
use std::path::{Path, PathBuf};

/// `oic_CA_FILE`: where it is and the certificates it holds.
#[derive(Debug, Clone, Default)]
pub struct CaFile {
    pub path: Option<PathBuf>,
    pub certs: Vec<CertFacts>,
}

impl CaFile {
    /// Read the facts of `path`'s certificates (the root store has already
    /// refused a file that does not load, so errors here leave it empty),
    /// set their expiry metric and warn about those expiring within 30 days.
    pub fn load(path: Option<&Path>) -> CaFile {
        let certs = path
            .and_then(|p| connectivity_common::tls::read_cert_facts(p).ok())
            .unwrap_or_default();
        let now = now_secs();
        for c in &certs {
            crate::metrics::set_ca_file_expiry(&c.subject, c.not_after);
            c.warn_about_expiry("oic_CA_FILE", now);
        }
        CaFile {
            path: path.map(Path::to_owned),
            certs,
        }
    }

    /// `oic_CA_FILE (/etc/ca.pem)`.
    fn named(&self) -> String {
        match &self.path {
            Some(p) => format!("oic_CA_FILE ({})", p.display()),
            None => "oic_CA_FILE".to_owned(),
        }
    }
}

/// The control plane's certificate after a verified handshake: record its
/// expiry and warn when it is within 30 days (once per connection).
pub fn observe(leaf: &CertFacts) {
    crate::metrics::set_control_plane_cert_expiry(leaf.not_after);
    leaf.warn_about_expiry("control plane", now_secs());
}

/// The `check` line for a verified certificate.
pub fn verified(host: &str, leaf: &CertFacts) -> String {
    let days = leaf.days_left(now_secs());
    let soon = if days < EXPIRY_WARNING_DAYS {
        "; renew it soon"
    } else {
        ""
    };
    format!(
        "certificate of {host} verified: {}, issued by {}, valid until {} ({days} days left{soon})",
        quoted(&leaf.subject),
        quoted(&leaf.issuer),
        leaf.not_after_text()
    )
}

/// What went wrong and how to fix it, for a certificate the agent refused.
pub fn refused(cause: &Cause, ca: &CaFile) -> String {
    match cause {
        Cause::CaAsServerCertificate { leaf } => format!(
            "{} is a CA certificate (basicConstraints CA:TRUE); a server needs a leaf certificate signed by a CA: \
             make one with `control-plane init` (docs/CONTROL_PLANE.md) and put the CA's certificate in oic_CA_FILE",
            theirs(leaf)
        ),
        Cause::NameMismatch { leaf, asked } => {
            let names = if leaf.names.is_empty() {
                "no DNS or IP names (subjectAltName; the common name is not used)".to_owned()
            } else {
                leaf.names.join(", ")
            };
            format!(
                "{} is for {names}, not for {asked} (the host in oic_URL): put one of its names in oic_URL, \
                 or give the control plane a certificate for {asked}",
                theirs(leaf)
            )
        }
        Cause::Expired { cert, is_leaf, now } => format!(
            "{} expired at {} ({}): renew it in the control plane's tls.cert_file",
            whose(cert, *is_leaf),
            cert.not_after_text(),
            cert.dates(*now)
        ),
        Cause::NotYetValid { cert, is_leaf, now } => format!(
            "{} is not valid before {} ({}): check the clock of this machine and of the one that made the certificate",
            whose(cert, *is_leaf),
            cert.not_before_text(),
            cert.dates(*now)
        ),
        Cause::UnknownIssuer {
            leaf,
            top,
            same_name_in_ca_file,
        } => untrusted(leaf, top, *same_name_in_ca_file, ca),
        Cause::MissingIntermediate {
            leaf,
            top,
            ca_file_holds,
        } => missing_intermediate(leaf, top, ca_file_holds, ca),
    }
}

fn theirs(c: &CertFacts) -> String {
    format!("the control plane's certificate ({})", quoted(&c.subject))
}

fn whose(cert: &CertFacts, is_leaf: bool) -> String {
    if is_leaf {
        theirs(cert)
    } else {
        format!(
            "the CA certificate {} the control plane sent",
            quoted(&cert.subject)
        )
    }
}

fn untrusted(leaf: &CertFacts, top: &CertFacts, same_name_in_ca_file: bool, ca: &CaFile) -> String {
    let issuer = quoted(&top.issuer);
    let how = if leaf == top {
        "is issued by"
    } else {
        "chains up to"
    };
    let fix = match (&ca.path, same_name_in_ca_file) {
        (None, _) => format!(
            "oic_CA_FILE is unset, so only the system's CAs are trusted: set oic_CA_FILE to a PEM file holding the certificate of {issuer}"
        ),
        (Some(_), false) => format!("{} must hold the certificate of {issuer}", ca.named()),
        (Some(_), true) => format!(
            "{} holds a certificate named {issuer}, but not the one that signed this chain \
             (a CA made again has a new key): put the current certificate of {issuer} in oic_CA_FILE",
            ca.named()
        ),
    };
    format!(
        "{} {how} {issuer}, a CA this agent does not trust; {fix}",
        theirs(leaf)
    )
}

fn missing_intermediate(
    leaf: &CertFacts,
    top: &CertFacts,
    ca_file_holds: &[String],
    ca: &CaFile,
) -> String {
    let issuer = quoted(&top.issuer);
    let start = if leaf == top {
        format!("{} is issued by {issuer}", theirs(leaf))
    } else {
        format!(
            "the chain the control plane sent ends at {}, issued by {issuer}",
            quoted(&top.subject)
        )
    };
    let holds: Vec<String> = ca_file_holds.iter().map(|s| quoted(s)).collect();
    format!(
        "{start}, whose certificate the control plane did not send and {} does not hold (it holds {}): \
         if {issuer} is an intermediate CA, the control plane's tls.cert_file must hold the server certificate \
         followed by the certificate of {issuer}; otherwise put the certificate of {issuer} in oic_CA_FILE",
        ca.named(),
        holds.join(", ")
    )
}
