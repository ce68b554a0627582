//! RFC 3339 timestamps (UTC, milliseconds) for the console API and the
//! rest of the crate, formatted by `humantime`.

use serde::Serializer;
use std::time::{SystemTime, UNIX_EPOCH};

/// `2024-05-01T12:34:56.789Z`; instants before 1970 print as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

/// `2024-05-01T12:34:56Z` for Unix seconds (certificate dates).
pub fn rfc3339_secs(secs: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2024-05-01` in UTC.
pub fn utc_date(t: SystemTime) -> String {
    rfc3339(t)[..10].to_owned()
}

/// `serialize_with` helper for `SystemTime`.
pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// `serialize_with` helper for `Option<SystemTime>`.
pub fn serialize_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants_format_exactly() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
