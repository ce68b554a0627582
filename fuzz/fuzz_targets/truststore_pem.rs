//! A PEM truststore (or `oic_CA_FILE`-style file), as text.
#![no_main]

use connectivity_protocol::truststore::certificates;
use connectivity_protocol::job::{Truststore, TruststoreFormat};
use connectivity_protocol::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ts = Truststore {
        format: TruststoreFormat::Pem,
        data: Secret::new(String::from_utf8_lossy(data).into_owned()),
        password: None,
    };
    let _ = certificates(&ts);
});
