//! The control plane's JSON document check (what a sink embeds as is) says
//! the same as serde_json on any input: the same document, or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

// The module alone: it needs memchr and simdutf8, not the control plane.
#[path = "../../crates/control-plane/src/delivery/json_document.rs"]
mod json_document;

fuzz_target!(|data: &[u8]| {
    let ours = json_document::find(data).map(|d| (d.start, d.end));
    let theirs = serde_json::from_slice::<&RawValue>(data).ok().map(|raw| {
        let start = raw.get().as_ptr() as usize - data.as_ptr() as usize;
        (start, start + raw.get().len())
    });
    // Deeper nesting than the check takes is the one intended difference.
    if ours.is_none() && theirs.is_some() && depth(data) > json_document::MAX_DEPTH {
        return;
    }
    assert_eq!(ours, theirs);
});

/// The deepest nesting of brackets outside strings (a bound good enough
/// here: it only excuses inputs serde_json accepted).
fn depth(data: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in data {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
