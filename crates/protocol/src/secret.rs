//! A string that must never be shown: passwords, tokens, client secrets.
//!
//! `Debug` and `Display` print a mask, so a secret can sit inside any struct
//! that is logged or formatted in an error without leaking. The only way to
//! read it is [`Secret::expose`], which makes every use easy to audit.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What a secret prints as.
pub const MASK: &str = "******";

/// A secret string. Serializes as its plain value (it has to cross the wire
/// to reach the agent); use [`Secret::redacted`] for anything shown to people.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The plain value. Call it only where the value is handed to a peer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mask, for views meant for people (console API, diagnostics).
    pub fn redacted(&self) -> &'static str {
        MASK
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Overwrite the bytes on drop so a freed secret does not linger in memory
/// longer than needed (best effort: copies made by libraries are out of reach).
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(format!("{s}"), MASK);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({MASK})"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn serde_round_trips_the_plain_value() {
        let s = Secret::new("tok");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"tok\"");
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose(), "tok");
    }
}
