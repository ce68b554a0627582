//! A binary batch frame from an agent, plain or compressed (lz4, zstd), as
//! the control plane decodes it: never a panic, never more memory than the
//! frame limit allows.
#![no_main]

use connectivity_protocol::batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = batch::decode(bytes::Bytes::copy_from_slice(data)) {
        // Every record's fields must be readable as decoded.
        for r in &b.records {
            let _ = (r.partition, r.offset, r.key.as_ref().map(|k| k.len()));
        }
    }
});
