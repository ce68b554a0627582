//! Step one of reading `InstallerProfile.cfg`: raw `key=value` lines.
//!
//! The format is the one Oracle's connectivity agent reads: `#` comments,
//! blank lines, `key=value` with optional spaces around `=`. A UTF-8 BOM and
//! CRLF line ends (files edited on Windows) are tolerated. Each entry keeps
//! the byte range of its value so the file can be rewritten with a value
//! blanked and every other byte untouched.

use super::ConfigError;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One `key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    pub key: String,
    pub value: String,
    /// Byte range of the (trimmed) value in the file's text.
    pub value_span: Range<usize>,
}

/// A parsed profile: its text and its entries, in file order.
#[derive(Debug, Clone)]
pub struct Profile {
    pub path: PathBuf,
    pub text: String,
    pub entries: Vec<Entry>,
}

impl Profile {
    /// Read and parse the file at `path`.
    pub fn read(path: &Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::file(path, format!("cannot read the file: {e}"), match e.kind() {
                std::io::ErrorKind::NotFound => "create it from InstallerProfile.cfg.example, or pass the right path with --config",
                std::io::ErrorKind::PermissionDenied => "run as a user that may read it (the service user), or fix its owner",
                _ => "check that the path names a readable UTF-8 text file",
            })
        })?;
        Profile::parse(path, text)
    }

    /// Parse `text` as the content of `path`.
    pub fn parse(path: &Path, text: String) -> Result<Profile, ConfigError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut pos = 0usize;
        for (i, raw_line) in text.split_inclusive('\n').enumerate() {
            let line_no = i + 1;
            let start = pos;
            pos += raw_line.len();
            let mut line = raw_line.strip_suffix('\n').unwrap_or(raw_line);
            line = line.strip_suffix('\r').unwrap_or(line);
            let mut offset = start;
            if line_no == 1
                && let Some(rest) = line.strip_prefix('\u{feff}')
            {
                offset += '\u{feff}'.len_utf8();
                line = rest;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
                continue;
            }
            let Some(eq) = line.find('=') else {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: Some(line_no),
                    key: None,
                    value: Some(trimmed.chars().take(60).collect()),
                    problem: "this line is not of the form key=value".into(),
                    fix: "write it as key=value, or start it with # to make it a comment".into(),
                });
            };
            let key = line[..eq].trim();
            if key.is_empty() {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: Some(line_no),
                    key: None,
                    value: None,
                    problem: "the line has a value but no key before '='".into(),
                    fix: "put the key name before '=' (see InstallerProfile.cfg.example)".into(),
                });
            }
            let after = &line[eq + 1..];
            let value = after.trim();
            let lead = after.len() - after.trim_start().len();
            let vstart = offset + eq + 1 + lead;
            if let Some(prev) = entries.iter().find(|e| e.key == key) {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: Some(line_no),
                    key: Some(key.to_owned()),
                    value: None,
                    problem: format!("the key is set twice, here and on line {}", prev.line),
                    fix: "keep one of the two lines".into(),
                });
            }
            entries.push(Entry {
                line: line_no,
                key: key.to_owned(),
                value: value.to_owned(),
                value_span: vstart..vstart + value.len(),
            });
        }
        Ok(Profile {
            path: path.to_owned(),
            text,
            entries,
        })
    }

    /// The entry for `key`, if the file sets it.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key)
            .map(|e| e.value.as_str())
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ConfigError> {
        Profile::parse(Path::new("InstallerProfile.cfg"), text.to_owned())
    }

    #[test]
    fn tolerates_bom_crlf_spaces_and_comments() {
        let p =
            parse("\u{feff}# c\r\noic_URL = https://h:443 \r\n\r\n  agent_GROUP_IDENTIFIER=G1\r\n")
                .unwrap();
        assert_eq!(p.get("oic_URL"), Some("https://h:443"));
        assert_eq!(p.get("agent_GROUP_IDENTIFIER"), Some("G1"));
        let e = p.entry("oic_URL").unwrap();
        assert_eq!(e.line, 2);
        assert_eq!(&p.text[e.value_span.clone()], "https://h:443");
    }

    #[test]
    fn bom_on_a_key_line_keeps_spans_right() {
        let p = parse("\u{feff}oic_USER=bob\n").unwrap();
        let e = p.entry("oic_USER").unwrap();
        assert_eq!(&p.text[e.value_span.clone()], "bob");
    }

    #[test]
    fn line_without_equals_names_the_line() {
        let err = parse("oic_URL=https://h:1\njust words\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "InstallerProfile.cfg:2: \"just words\": this line is not of the form key=value\n  fix: write it as key=value, or start it with # to make it a comment"
        );
    }

    #[test]
    fn duplicate_key_names_both_lines() {
        let err = parse("oic_USER=a\noic_USER=b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "InstallerProfile.cfg:2: oic_USER: the key is set twice, here and on line 1\n  fix: keep one of the two lines"
        );
    }
}
