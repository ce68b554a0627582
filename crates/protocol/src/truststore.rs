//! Turns the truststore a user brings (PEM, JKS made with keytool, PKCS#12)
//! into the PEM text librdkafka takes as `ssl.ca.pem`.
//!
//! OCI Streaming users follow Oracle's recipe and arrive with a JKS file made
//! by `keytool -importcert`, with or without a store password. There is no
//! maintained JKS crate, so [`parse_jks`] reads the (small, stable) format
//! itself, checking every length against the bytes left: a truncated or
//! hostile file is an error that names the problem, never a panic or a huge
//! allocation. Like keytool, it verifies the store's integrity digest only
//! when a password is given.

use crate::job::{Truststore, TruststoreFormat};
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use sha1::{Digest, Sha1};

/// Why a truststore could not be turned into CA certificates. Every message
/// says what is wrong and how to fix it; none contains the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TruststoreError {
    #[error(
        "{format} truststore data is not valid base64 ({reason}); send the base64 of the whole file, \
         for example the output of `base64 -w0 truststore.{ext}`"
    )]
    NotBase64 {
        format: &'static str,
        ext: &'static str,
        reason: String,
    },
    #[error(
        "truststore is not a JKS keystore (it does not start with the JKS magic bytes FEEDFEED){hint}"
    )]
    NotJks { hint: &'static str },
    #[error(
        "JKS truststore has version {0}, but only versions 1 and 2 exist; recreate it with keytool"
    )]
    UnsupportedJksVersion(u32),
    #[error("JKS truststore is truncated: it ends inside {0}; copy the whole file again")]
    Truncated(&'static str),
    #[error(
        "JKS truststore has an entry of unknown type {tag} (entry {index}); only trusted certificates \
         and private keys are supported: export the CA certificate and import it into a new truststore \
         with keytool -importcert"
    )]
    UnknownEntry { tag: u32, index: u32 },
    #[error(
        "JKS truststore entry {alias:?} holds a {cert_type} certificate; only X.509 certificates can be trusted"
    )]
    NotX509 { alias: String, cert_type: String },
    #[error(
        "truststore password is wrong: the truststore's integrity check failed; enter the password \
         it was created with (keytool -storepass), or leave the password empty to load it without the check"
    )]
    WrongPassword,
    #[error(
        "truststore holds no trusted certificates{detail}; import the stream's CA certificate, for example \
         keytool -keystore truststore.jks -alias OSSStream -importcert -file stream-ca.pem"
    )]
    NoCertificates { detail: &'static str },
    #[error(
        "truststore certificate {which} is not a valid X.509 certificate ({reason}); export it again \
         from the stream endpoint"
    )]
    BadCertificate { which: String, reason: String },
    #[error(
        "truststore PEM is malformed ({0}); give the -----BEGIN CERTIFICATE----- blocks unchanged"
    )]
    BadPem(String),
    #[error("truststore is not a PKCS#12 file ({reason}){hint}")]
    NotPkcs12 { reason: String, hint: &'static str },
    #[error("PKCS#12 truststore cannot be read: {0}; re-export it with keytool -storetype PKCS12")]
    Pkcs12(String),
}

/// The CA certificates of a truststore, in file order.
pub fn certificates(ts: &Truststore) -> Result<Vec<CertificateDer<'static>>, TruststoreError> {
    // An empty password field means "none", as with keytool: there is no way
    // to tell "empty" from "not given" in a console form.
    let password = ts
        .password
        .as_ref()
        .map(|p| p.expose())
        .filter(|p| !p.is_empty());
    let ders = match ts.format {
        TruststoreFormat::Pem => parse_pem(ts.data.expose())?,
        TruststoreFormat::Jks => {
            let bytes = decode_base64(ts.data.expose(), "JKS", "jks")?;
            // keytool on Java 9+ writes PKCS#12 by default, even into a file
            // named app_streaming_truststore.jks; Java reads both as "jks"
            // (keystore.type.compat), so the agent does too.
            if bytes.first() == Some(&0x30) {
                parse_pkcs12(&bytes, password.unwrap_or(""))?
            } else {
                parse_jks(&bytes, password)?
            }
        }
        TruststoreFormat::Pkcs12 => parse_pkcs12(
            &decode_base64(ts.data.expose(), "PKCS#12", "p12")?,
            password.unwrap_or(""),
        )?,
    };
    if ders.is_empty() {
        return Err(TruststoreError::NoCertificates { detail: "" });
    }
    for (i, der) in ders.iter().enumerate() {
        check_x509(der, i)?;
    }
    Ok(ders.into_iter().map(CertificateDer::from).collect())
}

/// The truststore as PEM text, for librdkafka's `ssl.ca.pem`.
pub fn to_pem(ts: &Truststore) -> Result<String, TruststoreError> {
    Ok(pem_encode(&certificates(ts)?))
}

/// PEM text of DER certificates (64-character base64 lines).
pub fn pem_encode(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            // base64 output is ASCII, so every chunk is valid UTF-8.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn decode_base64(
    data: &str,
    format: &'static str,
    ext: &'static str,
) -> Result<Vec<u8>, TruststoreError> {
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.starts_with("-----BEGIN") {
        return Err(TruststoreError::NotBase64 {
            format,
            ext,
            reason: "it is PEM text; choose the format pem for it".into(),
        });
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| TruststoreError::NotBase64 {
            format,
            ext,
            reason: e.to_string(),
        })
}

fn parse_pem(text: &str) -> Result<Vec<Vec<u8>>, TruststoreError> {
    let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut text.as_bytes())
        .map(|r| r.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| TruststoreError::BadPem(e.to_string()))?;
    if ders.is_empty() {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .unwrap_or_default();
        let detail = if bytes.starts_with(&JKS_MAGIC.to_be_bytes()) {
            " (the data looks like a base64 JKS file: choose the format jks)"
        } else if bytes.first() == Some(&0x30) {
            " (the data looks like a base64 DER or PKCS#12 file: choose the format pkcs12, or convert it with openssl x509 -inform der)"
        } else {
            " (no -----BEGIN CERTIFICATE----- block in the PEM text)"
        };
        return Err(TruststoreError::NoCertificates { detail });
    }
    Ok(ders)
}

fn check_x509(der: &[u8], index: usize) -> Result<(), TruststoreError> {
    x509_parser::parse_x509_certificate(der)
        .map(|_| ())
        .map_err(|e| TruststoreError::BadCertificate {
            which: format!("#{}", index + 1),
            reason: e.to_string(),
        })
}

fn parse_pkcs12(data: &[u8], password: &str) -> Result<Vec<Vec<u8>>, TruststoreError> {
    if data.starts_with(&JKS_MAGIC.to_be_bytes()) {
        return Err(TruststoreError::NotPkcs12 {
            reason: "it is a JKS keystore".into(),
            hint: "; choose the format jks for it",
        });
    }
    let archive =
        p12_keystore::Pkcs12Archive::from_pkcs12(data, password).map_err(|e| match e {
            p12_keystore::error::Error::MacError(_) => TruststoreError::WrongPassword,
            p12_keystore::error::Error::DerError(e) => TruststoreError::NotPkcs12 {
                reason: e.to_string(),
                hint: "; if it is a JKS file choose the format jks, if it is PEM text choose pem",
            },
            // Bags are decrypted with the password too; a wrong one usually fails
            // the MAC first, but a MAC-less file fails here.
            p12_keystore::error::Error::UnpadError | p12_keystore::error::Error::Pkcs5Error(_) => {
                TruststoreError::WrongPassword
            }
            other => TruststoreError::Pkcs12(other.to_string()),
        })?;
    // A truststore's CA certificates are the bags not tied to a private key
    // (keytool marks them trusted, openssl does not; both are accepted).
    let cas: Vec<Vec<u8>> = archive
        .certs
        .iter()
        .filter(|c| c.local_key_id.is_none() || c.trusted)
        .map(|c| c.cert.as_der().to_vec())
        .collect();
    if cas.is_empty() {
        let detail = if archive.certs.is_empty() {
            ""
        } else {
            " (only the certificate of a private key entry: this is a keystore, not a truststore)"
        };
        return Err(TruststoreError::NoCertificates { detail });
    }
    Ok(cas)
}

const JKS_MAGIC: u32 = 0xFEED_FEED;
const JCEKS_MAGIC: u32 = 0xCECE_CECE;
/// Salt keytool appends to the password for the store's integrity digest.
const JKS_WHITENER: &[u8] = b"Mighty Aphrodite";
const JKS_DIGEST_LEN: usize = 20;

/// Reads the trusted certificates (DER) of a JKS keystore. Private key
/// entries are skipped (their certificate chains are not trust anchors).
/// With a password, the SHA-1 integrity digest is verified first.
pub fn parse_jks(data: &[u8], password: Option<&str>) -> Result<Vec<Vec<u8>>, TruststoreError> {
    let mut r = Reader { buf: data, pos: 0 };
    let magic = r.u32("the header").map_err(|_| not_jks(data))?;
    if magic != JKS_MAGIC {
        return Err(not_jks(data));
    }
    let version = r.u32("the header")?;
    if version != 1 && version != 2 {
        return Err(TruststoreError::UnsupportedJksVersion(version));
    }
    let count = r.u32("the header")?;
    let mut certs = Vec::new();
    let mut keys = 0u32;
    for index in 0..count {
        match r.u32("an entry")? {
            1 => {
                skip_jks_key_entry(&mut r, version)?;
                keys += 1;
            }
            2 => certs.push(read_jks_cert_entry(&mut r, version)?),
            tag => {
                return Err(TruststoreError::UnknownEntry {
                    tag,
                    index: index + 1,
                });
            }
        }
    }
    let body_len = r.pos;
    let digest = r.take(JKS_DIGEST_LEN, "the integrity digest at its end")?;
    if let Some(password) = password {
        check_jks_digest(&data[..body_len], digest, password)?;
    }
    if certs.is_empty() {
        let detail = if keys > 0 {
            " (only private key entries: this is a keystore, not a truststore)"
        } else {
            ""
        };
        return Err(TruststoreError::NoCertificates { detail });
    }
    Ok(certs)
}

/// A private key entry: read past its key and its certificate chain.
fn skip_jks_key_entry(r: &mut Reader<'_>, version: u32) -> Result<(), TruststoreError> {
    r.utf("a private key entry's alias")?;
    r.take(8, "a private key entry")?;
    let n = r.u32("a private key entry")? as usize;
    r.take(n, "a private key entry")?;
    let chain = r.u32("a private key entry's certificate chain")?;
    for _ in 0..chain {
        if version == 2 {
            r.utf("a certificate chain")?;
        }
        let n = r.u32("a certificate chain")? as usize;
        r.take(n, "a certificate chain")?;
    }
    Ok(())
}

/// A trusted certificate entry: its certificate (DER), checked to parse.
fn read_jks_cert_entry(r: &mut Reader<'_>, version: u32) -> Result<Vec<u8>, TruststoreError> {
    let alias = r.utf("a certificate entry's alias")?;
    r.take(8, "a certificate entry")?;
    if version == 2 {
        let cert_type = r.utf("a certificate entry")?;
        if cert_type != "X.509" {
            return Err(TruststoreError::NotX509 { alias, cert_type });
        }
    }
    let n = r.u32("a certificate entry")? as usize;
    let der = r.take(n, "a certificate")?;
    if let Err(e) = x509_parser::parse_x509_certificate(der) {
        return Err(TruststoreError::BadCertificate {
            which: format!("{alias:?}"),
            reason: e.to_string(),
        });
    }
    Ok(der.to_vec())
}

/// keytool's integrity digest: SHA-1 of the password (UTF-16BE), a fixed
/// salt and the store's body.
fn check_jks_digest(body: &[u8], digest: &[u8], password: &str) -> Result<(), TruststoreError> {
    let mut h = Sha1::new();
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    h.update(&utf16);
    h.update(JKS_WHITENER);
    h.update(body);
    if h.finalize().as_slice() != digest {
        return Err(TruststoreError::WrongPassword);
    }
    Ok(())
}

fn not_jks(data: &[u8]) -> TruststoreError {
    let hint = if data.starts_with(&JCEKS_MAGIC.to_be_bytes()) {
        "; it is a JCEKS keystore: convert it with keytool -importkeystore -srcstoretype JCEKS -deststoretype JKS"
    } else if data.first() == Some(&0x30) {
        "; it looks like PKCS#12 (keytool's default since Java 9): choose the format pkcs12"
    } else if data.starts_with(b"-----BEGIN") {
        "; it is PEM text: choose the format pem"
    } else {
        ""
    };
    TruststoreError::NotJks { hint }
}

/// Bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TruststoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(TruststoreError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TruststoreError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Java's `writeUTF`: u16 length + modified UTF-8 (shown lossily; aliases
    /// are only used in messages).
    fn utf(&mut self, what: &'static str) -> Result<String, TruststoreError> {
        let b = self.take(2, what)?;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// A self-signed certificate made with rcgen, as DER.
    fn cert_der(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// Writes a JKS the way keytool does.
    fn jks(entries: &[(&str, &[u8])], key_entries: usize, password: &str) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&JKS_MAGIC.to_be_bytes());
        v.extend_from_slice(&2u32.to_be_bytes());
        v.extend_from_slice(&((entries.len() + key_entries) as u32).to_be_bytes());
        let utf = |v: &mut Vec<u8>, s: &str| {
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        };
        for _ in 0..key_entries {
            v.extend_from_slice(&1u32.to_be_bytes());
            utf(&mut v, "mykey");
            v.extend_from_slice(&0u64.to_be_bytes());
            v.extend_from_slice(&3u32.to_be_bytes());
            v.extend_from_slice(b"key");
            v.extend_from_slice(&1u32.to_be_bytes());
            utf(&mut v, "X.509");
            v.extend_from_slice(&2u32.to_be_bytes());
            v.extend_from_slice(b"ab");
        }
        for (alias, der) in entries {
            v.extend_from_slice(&2u32.to_be_bytes());
            utf(&mut v, alias);
            v.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
            utf(&mut v, "X.509");
            v.extend_from_slice(&(der.len() as u32).to_be_bytes());
            v.extend_from_slice(der);
        }
        let mut h = Sha1::new();
        let pw: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
        h.update(&pw);
        h.update(JKS_WHITENER);
        h.update(&v);
        let d = h.finalize();
        v.extend_from_slice(d.as_slice());
        v
    }

    fn ts(format: TruststoreFormat, data: String, password: Option<&str>) -> Truststore {
        Truststore {
            format,
            data: Secret::new(data),
            password: password.map(Secret::from),
        }
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn jks_with_two_certs_reads_both_and_checks_the_password() {
        let (a, b) = (cert_der("a.example"), cert_der("b.example"));
        let file = jks(&[("ossstream", &a), ("second", &b)], 1, "changeit");
        assert_eq!(
            parse_jks(&file, Some("changeit")).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(parse_jks(&file, None).unwrap(), vec![a, b]);
        assert_eq!(
            parse_jks(&file, Some("wrong")),
            Err(TruststoreError::WrongPassword)
        );
    }

    #[test]
    fn wrong_password_message_is_exact() {
        let file = jks(&[("x", &cert_der("x"))], 0, "changeit");
        let err = to_pem(&ts(TruststoreFormat::Jks, b64(&file), Some("nope"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "truststore password is wrong: the truststore's integrity check failed; enter the password \
             it was created with (keytool -storepass), or leave the password empty to load it without the check"
        );
        // An empty password means "not given": no check, like keytool.
        assert!(to_pem(&ts(TruststoreFormat::Jks, b64(&file), Some(""))).is_ok());
    }

    #[test]
    fn every_truncation_of_a_jks_is_an_error_not_a_panic() {
        let file = jks(&[("x", &cert_der("x"))], 1, "changeit");
        for cut in 0..file.len() {
            let err = parse_jks(&file[..cut], None).unwrap_err();
            assert!(
                matches!(
                    err,
                    TruststoreError::Truncated(_) | TruststoreError::NotJks { .. }
                ),
                "cut at {cut}: {err:?}"
            );
        }
        assert_eq!(
            parse_jks(&file[..file.len() - 1], None)
                .unwrap_err()
                .to_string(),
            "JKS truststore is truncated: it ends inside the integrity digest at its end; copy the whole file again"
        );
    }

    #[test]
    fn lying_lengths_do_not_allocate_or_panic() {
        let mut file = jks(&[("x", &cert_der("x"))], 0, "pw");
        // Entry count u32::MAX: the digest is read as the next entry's tag,
        // then the data runs out; nothing is reserved for the count.
        file[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            matches!(
                parse_jks(&file, None),
                Err(TruststoreError::Truncated(_) | TruststoreError::UnknownEntry { index: 2, .. })
            ),
            "{:?}",
            parse_jks(&file, None)
        );
        // Certificate length u32::MAX.
        let mut file = jks(&[("x", &cert_der("x"))], 0, "pw");
        let at = 12 + 4 + 2 + 1 + 8 + 2 + 5;
        file[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_jks(&file, None),
            Err(TruststoreError::Truncated("a certificate"))
        );
    }

    #[test]
    fn garbage_and_other_formats_are_named() {
        assert_eq!(
            parse_jks(b"hello world, not a keystore", None)
                .unwrap_err()
                .to_string(),
            "truststore is not a JKS keystore (it does not start with the JKS magic bytes FEEDFEED)"
        );
        assert!(
            parse_jks(&[0xCE, 0xCE, 0xCE, 0xCE, 0, 0, 0, 2], None)
                .unwrap_err()
                .to_string()
                .contains("JCEKS")
        );
        assert!(
            parse_jks(&[0x30, 0x82, 1, 2], None)
                .unwrap_err()
                .to_string()
                .contains("choose the format pkcs12")
        );
        assert!(
            parse_jks(&[], None)
                .unwrap_err()
                .to_string()
                .contains("not a JKS keystore")
        );
        let mut v = JKS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            parse_jks(&v, None),
            Err(TruststoreError::UnsupportedJksVersion(7))
        );
        let mut v = JKS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&2u32.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            parse_jks(&v, None),
            Err(TruststoreError::UnknownEntry { tag: 3, index: 1 })
        );
    }

    #[test]
    fn keystore_without_trusted_certs_says_so() {
        let file = jks(&[], 1, "pw");
        assert_eq!(
            parse_jks(&file, Some("pw")).unwrap_err().to_string(),
            "truststore holds no trusted certificates (only private key entries: this is a keystore, not a truststore); \
             import the stream's CA certificate, for example keytool -keystore truststore.jks -alias OSSStream -importcert -file stream-ca.pem"
        );
        assert_eq!(
            parse_jks(&jks(&[], 0, "pw"), None),
            Err(TruststoreError::NoCertificates { detail: "" })
        );
    }

    #[test]
    fn a_jks_entry_that_is_not_a_certificate_is_named() {
        let file = jks(&[("ossstream", b"not der")], 0, "pw");
        let err = parse_jks(&file, None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "truststore certificate \"ossstream\" is not a valid X.509 certificate"
            ),
            "{err}"
        );
    }

    #[test]
    fn pem_with_several_certs_round_trips() {
        let certs = vec![
            CertificateDer::from(cert_der("a")),
            CertificateDer::from(cert_der("b")),
        ];
        let pem = pem_encode(&certs);
        let back = certificates(&ts(
            TruststoreFormat::Pem,
            format!("junk before\n{pem}"),
            None,
        ))
        .unwrap();
        assert_eq!(back, certs);
        assert_eq!(
            to_pem(&ts(TruststoreFormat::Pem, pem.clone(), None)).unwrap(),
            pem
        );
    }

    #[test]
    fn bad_inputs_for_each_format_name_the_fix() {
        let e = to_pem(&ts(TruststoreFormat::Pem, "hello".into(), None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "truststore holds no trusted certificates (no -----BEGIN CERTIFICATE----- block in the PEM text); \
             import the stream's CA certificate, for example keytool -keystore truststore.jks -alias OSSStream -importcert -file stream-ca.pem"
        );
        let file = jks(&[("x", &cert_der("x"))], 0, "pw");
        let e = to_pem(&ts(TruststoreFormat::Pem, b64(&file), None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("looks like a base64 JKS file: choose the format jks"),
            "{e}"
        );
        let e = to_pem(&ts(TruststoreFormat::Jks, "%%%".into(), None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("JKS truststore data is not valid base64"),
            "{e}"
        );
        let pem = pem_encode(&[CertificateDer::from(cert_der("a"))]);
        let e = to_pem(&ts(TruststoreFormat::Jks, pem.clone(), None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("it is PEM text; choose the format pem"),
            "{e}"
        );
        let e = to_pem(&ts(TruststoreFormat::Pkcs12, b64(&file), Some("pw"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "truststore is not a PKCS#12 file (it is a JKS keystore); choose the format jks for it"
        );
        let e = to_pem(&ts(TruststoreFormat::Pkcs12, b64(b"garbage!"), None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("truststore is not a PKCS#12 file ("),
            "{e}"
        );
        // base64 with line breaks (as `base64` prints by default) is fine.
        let wrapped: String = b64(&file)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert!(to_pem(&ts(TruststoreFormat::Jks, wrapped, Some("pw"))).is_ok());
    }

    #[test]
    fn pkcs12_made_here_reads_back() {
        let der = cert_der("ca.example");
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            "ca",
            p12_keystore::KeyStoreEntry::Certificate(
                p12_keystore::Certificate::from_der(&der).unwrap(),
            ),
        );
        let file = store.writer("secret").write().unwrap();
        let got = certificates(&ts(TruststoreFormat::Pkcs12, b64(&file), Some("secret"))).unwrap();
        assert_eq!(got, vec![CertificateDer::from(der)]);
        assert_eq!(
            certificates(&ts(TruststoreFormat::Pkcs12, b64(&file), Some("bad"))),
            Err(TruststoreError::WrongPassword)
        );
    }
}
