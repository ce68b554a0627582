//! The error both programs give for a bad configuration file: the file, the
//! line, the key, the value (secrets already masked) and the fix. The agent's
//! profile and the control plane's TOML share it so that both read alike.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit code for a bad configuration (sysexits.h EX_USAGE).
pub const EX_USAGE: i32 = 64;

/// A configuration problem, with everything the user needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    /// The offending value, already masked when the key is a secret.
    pub value: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn file(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            value: None,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        match (&self.key, &self.value) {
            (Some(k), Some(v)) => write!(f, "{k} = {v:?}: ")?,
            (Some(k), None) => write!(f, "{k}: ")?,
            (None, Some(v)) => write!(f, "{v:?}: ")?,
            (None, None) => {}
        }
        write!(f, "{}\n  fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}
