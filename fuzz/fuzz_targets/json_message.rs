//! A JSON text frame, read as what the agent sends and as what the control
//! plane sends (job specs included), and each job spec checked.
#![no_main]

use connectivity_protocol::{AgentMessage, ControlMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = connectivity_protocol::decode::<AgentMessage>(text);
    if let Ok(msg) = connectivity_protocol::decode::<ControlMessage>(text) {
        // What decodes must encode again.
        let _ = connectivity_protocol::encode(&msg);
    }
});
