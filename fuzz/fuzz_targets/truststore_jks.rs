//! A JKS truststore file, read with the seeds' password and without one.
#![no_main]

use connectivity_protocol::truststore::parse_jks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_jks(data, Some("changeit"));
    let _ = parse_jks(data, None);
});
