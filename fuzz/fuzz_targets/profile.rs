//! `InstallerProfile.cfg` text, parsed and validated as the agent does at
//! start: an error, never a panic.
#![no_main]

use connectivity_agent::config::{self, Profile, SecretValues};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    if let Ok(profile) = Profile::parse(Path::new("InstallerProfile.cfg"), text) {
        let secrets = SecretValues::from_profile(&profile);
        let _ = config::validate(&profile, &secrets, &|_| None);
    }
});
