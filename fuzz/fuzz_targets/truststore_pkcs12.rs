//! A PKCS#12 truststore file, as a job carries it (base64), read with the
//! seeds' password.
#![no_main]

use base64::Engine;
use connectivity_protocol::truststore::certificates;
use connectivity_protocol::job::{Truststore, TruststoreFormat};
use connectivity_protocol::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ts = Truststore {
        format: TruststoreFormat::Pkcs12,
        data: Secret::new(base64::engine::general_purpose::STANDARD.encode(data)),
        password: Some(Secret::new("changeit")),
    };
    let _ = certificates(&ts);
});
