//! Hashes of secrets: the argon2 password hashes the config holds (checked
//! when it is read, verified at each login), and the SHA-256 under which a
//! token is remembered.
//!
//! They live apart from [`super::auth`] so that the config can hold a
//! [`PasswordHash`] without depending on the authenticator, which reads the
//! config.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use connectivity_protocol::secret::Secret;
use std::fmt;

/// Largest argon2 memory cost accepted from the config (KiB): a typo must not
/// make every login allocate gigabytes.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// A validated argon2 PHC string (`$argon2id$v=19$m=...`). Debug prints a mask.
#[derive(Clone)]
pub struct PasswordHash(Secret);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(")?;
        f.write_str(connectivity_protocol::secret::MASK)?;
        f.write_str(")")
    }
}

impl PasswordHash {
    /// Parse a PHC string; the error says what is wrong with it.
    pub fn parse(phc: &str) -> Result<Self, String> {
        let parsed = argon2::PasswordHash::new(phc.trim())
            .map_err(|e| format!("not an argon2 PHC hash string ({e})"))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(format!(
                "uses algorithm {:?}; only argon2id, argon2i and argon2d are supported",
                parsed.algorithm.as_str()
            ));
        }
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
        if params.m_cost() > MAX_M_COST_KIB
            || params.t_cost() > MAX_T_COST
            || params.p_cost() > MAX_P_COST
        {
            return Err(format!(
                "asks for m={} t={} p={}, more than the allowed m={MAX_M_COST_KIB} t={MAX_T_COST} p={MAX_P_COST}",
                params.m_cost(),
                params.t_cost(),
                params.p_cost()
            ));
        }
        if parsed.hash.is_none() || parsed.salt.is_none() {
            return Err("has no salt or no hash part".into());
        }
        Ok(PasswordHash(Secret::new(phc.trim())))
    }

    /// Whether `password` matches. CPU-heavy: call from the blocking pool.
    pub fn verify(&self, password: &[u8]) -> bool {
        match argon2::PasswordHash::new(self.0.expose()) {
            Ok(h) => argon2::Argon2::default()
                .verify_password(password, &h)
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// Hash `password` with argon2id and the recommended parameters, as a PHC
/// string for the config file.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    argon2::Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// SHA-256 of a secret, the key under which a token is remembered.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
pub(crate) fn weak_hash_for_tests(password: &str) -> String {
    let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).expect("valid params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parses_and_verifies_and_debug_is_masked() {
        let phc = weak_hash_for_tests("s3cret");
        let h = PasswordHash::parse(&phc).unwrap();
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"wrong"));
        assert!(!format!("{h:?}").contains("argon2"));
    }

    #[test]
    fn plain_password_or_other_algorithm_is_refused_with_the_reason() {
        let err = PasswordHash::parse("hunter2").unwrap_err();
        assert!(err.starts_with("not an argon2 PHC hash string"), "{err}");
        let err =
            PasswordHash::parse("$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").unwrap_err();
        assert!(err.contains("only argon2id"), "{err}");
    }
}
