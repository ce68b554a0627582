//! Where the agent's secrets come from, and keeping them out of the profile.
//!
//! Secrets (`oic_PASSWORD`, `oic_CLIENT_SECRET`, `proxy_PASSWORD`) are looked
//! up in four places; the first non-empty value wins (docs/SECURITY.md says
//! why):
//!
//! 1. a systemd credential, `$CREDENTIALS_DIRECTORY/<key>` (`LoadCredential=`,
//!    `SetCredentialEncrypted=`): set on purpose for this unit, often
//!    encrypted, and never rewritten by the agent;
//! 2. an environment variable named like the key;
//! 3. the profile: a value there was just written by an operator, so it is
//!    newer than the stored copy (this is how a file-based secret is rotated);
//! 4. the stored credentials file, `<state dir>/credentials` (mode 0600),
//!    where the agent moved earlier profile values.
//!
//! On start the agent moves every non-empty secret out of the profile into
//! the stored file and blanks it in the profile with a comment saying where
//! it went; every other byte of the profile is kept. Because 3 and 4 are
//! adjacent, moving a value never changes which value wins.

use crate::config::{
    self, AgentConfig, ConfigError, DEFAULT_STATE_DIR, Entry, Profile, SECRET_KEYS, SecretValues,
};
use connectivity_protocol::secret::Secret;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Name of the stored credentials file inside the state directory.
pub const CREDENTIALS_FILE: &str = "credentials";

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Keys moved out of the profile, in file order (empty: nothing to do).
    pub moved: Vec<String>,
    /// The stored credentials file.
    pub credentials_file: PathBuf,
    /// UTC date written in the profile comments (`YYYY-MM-DD`).
    pub date: String,
}

/// Why [`migrate`] could not move the secrets.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The profile or the stored credentials file is unreadable or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing failed (read-only file system, missing permission, full disk).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Every secret with the source it came from, by the precedence above.
pub fn resolve(
    profile: &Profile,
    state_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretValues, ConfigError> {
    resolve_noting(profile, state_dir, env).map(|(secrets, _)| secrets)
}

/// [`resolve`], plus a note for each source whose value lost to another one
/// (a stale copy the operator may want to delete).
fn resolve_noting(
    profile: &Profile,
    state_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(SecretValues, Vec<String>), ConfigError> {
    let stored_path = state_dir.join(CREDENTIALS_FILE);
    let stored = read_stored(&stored_path)?;
    let cred_dir = env("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let mut secrets = SecretValues::default();
    let mut notes = Vec::new();

    for &key in SECRET_KEYS {
        let mut found: Vec<(Secret, &str, String)> = Vec::new();
        if let Some(dir) = &cred_dir {
            let path = dir.join(key);
            if let Some(v) = read_systemd_credential(&path)? {
                found.push((v, "systemd credential", path.display().to_string()));
            }
        }
        if let Some(v) = env(key).filter(|v| !v.is_empty()) {
            found.push((
                Secret::new(v),
                "environment",
                format!("environment variable {key}"),
            ));
        }
        if let Some(v) = profile.get(key) {
            found.push((
                Secret::new(v),
                "profile",
                profile.path.display().to_string(),
            ));
        }
        if let Some(v) = stored.as_ref().and_then(|s| s.get(key)) {
            found.push((
                Secret::new(v),
                "credentials file",
                stored_path.display().to_string(),
            ));
        }
        let mut found = found.into_iter();
        if let Some((value, source, place)) = found.next() {
            for (other, _, other_place) in found {
                if other != value {
                    notes.push(format!("{key}: using the value from {place}; {other_place} holds a different value, which is ignored"));
                }
            }
            secrets.set(key, value, source);
        }
    }
    if let Some(stored) = &stored {
        for e in stored
            .entries
            .iter()
            .filter(|e| !SECRET_KEYS.contains(&e.key.as_str()))
        {
            notes.push(format!(
                "{}:{}: {:?} is not a secret key and is ignored",
                stored_path.display(),
                e.line,
                e.key
            ));
        }
    }
    Ok((secrets, notes))
}

/// The stored credentials file, `None` when there is none yet.
fn read_stored(path: &Path) -> Result<Option<Profile>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Profile::parse(path, text).map(Some),
        // No state directory (yet): nothing stored.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ConfigError::file(
            path,
            format!("cannot read the stored credentials: {e}"),
            "run the agent as the service user (connectivity-agent) or as root",
        )),
    }
}

/// One credential file; a single trailing line end (`echo pw > file`) is dropped.
fn read_systemd_credential(path: &Path) -> Result<Option<Secret>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(mut text) => {
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok((!text.is_empty()).then(|| Secret::new(text)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::file(
            path,
            format!("cannot read the systemd credential: {e}"),
            "check the LoadCredential=/SetCredential= lines of the unit (systemctl cat connectivity-agent)",
        )),
    }
}

/// Refuse a secrets file that anyone but its owner may read or write.
pub fn check_permissions(path: &Path) -> Result<(), ConfigError> {
    let meta = fs::metadata(path).map_err(|e| {
        ConfigError::file(
            path,
            format!("cannot read the file's permissions: {e}"),
            "check that the path exists and names a file",
        )
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let access = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    };
    Err(ConfigError::file(
        path,
        format!("is {access} by other users (mode {mode:04o}); it holds secrets"),
        format!("chmod 600 {}", path.display()),
    ))
}

/// Move every non-empty secret of the profile at `profile_path` into
/// `<state_dir>/credentials` and blank it in the profile. Rerunning with
/// blank values does nothing; a new value replaces the stored one.
pub fn migrate(profile_path: &Path, state_dir: &Path) -> Result<MigrationReport, MigrateError> {
    let profile = Profile::read(profile_path)?;
    migrate_profile(&profile, state_dir).map(|(report, _)| report)
}

/// [`migrate`] on a profile already read; also returns the rewritten profile.
fn migrate_profile(
    profile: &Profile,
    state_dir: &Path,
) -> Result<(MigrationReport, Option<Profile>), MigrateError> {
    let credentials_file = state_dir.join(CREDENTIALS_FILE);
    let date = utc_date(SystemTime::now());
    let to_move: Vec<&Entry> = profile
        .entries
        .iter()
        .filter(|e| SECRET_KEYS.contains(&e.key.as_str()) && !e.value.is_empty())
        .collect();
    let mut report = MigrationReport {
        moved: Vec::new(),
        credentials_file,
        date,
    };
    if to_move.is_empty() {
        return Ok((report, None));
    }
    // The stored file first: if we stop between the two writes the profile
    // still holds the values and the next start moves them again.
    store_secrets(state_dir, &report.credentials_file, &to_move)?;
    let new_text = blank_in_profile(profile, &to_move, &report)?;
    report.moved = to_move.iter().map(|e| e.key.clone()).collect();
    let rewritten = Profile::parse(&profile.path, new_text)?;
    Ok((report, Some(rewritten)))
}

/// A `map_err` for an I/O failure of `action` on `path`.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError {
    let path = path.to_owned();
    move |source| MigrateError::Io {
        action,
        path,
        source,
    }
}

/// Write the credentials file: the secrets to move, and those stored
/// before for the keys not moved now.
fn store_secrets(
    state_dir: &Path,
    credentials_file: &Path,
    to_move: &[&Entry],
) -> Result<(), MigrateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err("create directory", state_dir))?;
    let stored = read_stored(credentials_file)?;
    let mut text = String::from(
        "# Secrets of connectivity-agent, moved here from its InstallerProfile.cfg.\n\
         # Written by the agent; to rotate a secret, write the new value in the profile.\n",
    );
    for &key in SECRET_KEYS {
        let value = match to_move.iter().find(|e| e.key == key) {
            Some(e) => Some(e.value.as_str()),
            None => stored.as_ref().and_then(|s| s.get(key)),
        };
        if let Some(v) = value {
            text.push_str(&format!("{key}={v}\n"));
        }
    }
    let dir_meta = fs::metadata(state_dir).map_err(io_err("inspect", state_dir))?;
    write_file_atomically(
        credentials_file,
        text.as_bytes(),
        0o600,
        owner_to_keep(&dir_meta),
    )
    .map_err(io_err("write", credentials_file))?;
    zeroize::Zeroize::zeroize(&mut text);
    Ok(())
}

/// Rewrite the profile with the moved secrets blanked and a note where
/// they went; returns its new text.
fn blank_in_profile(
    profile: &Profile,
    to_move: &[&Entry],
    report: &MigrationReport,
) -> Result<String, MigrateError> {
    let note = |key: &str| {
        format!(
            "# {key} moved to {} on {}; write a new value here to rotate it",
            report.credentials_file.display(),
            report.date
        )
    };
    let new_text = blank_secrets(profile, to_move, note);
    let old_meta = fs::metadata(&profile.path).map_err(io_err("inspect", &profile.path))?;
    let mode = old_meta.permissions().mode() & 0o700;
    write_file_atomically(
        &profile.path,
        new_text.as_bytes(),
        mode,
        owner_to_keep(&old_meta),
    )
    .map_err(io_err("rewrite", &profile.path))?;
    Ok(new_text)
}

/// The profile text with each entry's value blanked and a comment line just
/// above it (replacing the comment of an earlier move of the same key).
fn blank_secrets(profile: &Profile, entries: &[&Entry], note: impl Fn(&str) -> String) -> String {
    let text = profile.text.as_str();
    let bom = if text.starts_with('\u{feff}') {
        '\u{feff}'.len_utf8()
    } else {
        0
    };
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for e in entries {
        let line_start = text[..e.value_span.start]
            .rfind('\n')
            .map_or(bom, |i| i + 1);
        let eol = match text[e.value_span.end..].find('\n') {
            Some(i) if text[..e.value_span.end + i].ends_with('\r') => "\r\n",
            Some(_) => "\n",
            None if text.contains("\r\n") => "\r\n",
            None => "\n",
        };
        let comment = note(&e.key);
        let previous = (line_start > bom).then(|| {
            let end = line_start - 1;
            let end = if text[..end].ends_with('\r') {
                end - 1
            } else {
                end
            };
            let start = text[..end].rfind('\n').map_or(bom, |i| i + 1);
            start..end
        });
        match previous {
            Some(prev) if text[prev.clone()].starts_with(&format!("# {} moved to ", e.key)) => {
                edits.push((prev, comment))
            }
            _ => edits.push((line_start..line_start, format!("{comment}{eol}"))),
        }
        edits.push((e.value_span.clone(), String::new()));
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len() + 100 * entries.len());
    let mut at = 0;
    for (range, with) in edits {
        out.push_str(&text[at..range.start]);
        out.push_str(&with);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The owner a rewritten file must keep: when root rewrites a file the
/// service user owns, the new file must not end up owned by root.
fn owner_to_keep(meta: &fs::Metadata) -> Option<(u32, u32)> {
    let running_as_root = rustix::process::geteuid().is_root();
    (running_as_root && (meta.uid(), meta.gid()) != (0, 0)).then(|| (meta.uid(), meta.gid()))
}

/// Replace `path` with `bytes` so that readers see the old or the new file,
/// never a mix: write a temporary file beside it (created with `mode`, so it
/// is never more open than that), fsync, rename over `path`, fsync the
/// directory. A running binary replaced this way keeps its old inode.
pub(crate) fn write_file_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp); // left over by a crash of this same pid
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have dropped bits of `mode` (0755 under umask 077).
        f.set_permissions(Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The state directory the agent will use: `agent_STATE_DIR` in the profile,
/// else systemd's `$STATE_DIRECTORY`, else [`DEFAULT_STATE_DIR`].
pub fn state_dir(profile: &Profile, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    profile
        .get("agent_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            env("STATE_DIRECTORY").and_then(|s| {
                s.split(':')
                    .next()
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// Everything the agent does with its profile on start: read it, refuse
/// loose permissions, move secrets into the state directory (when it can),
/// resolve secrets from all sources and validate. Notes about the move and
/// about ignored duplicate secrets end up in [`AgentConfig::warnings`].
pub fn load_agent_config(
    profile_path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let profile = Profile::read(profile_path)?;
    let state_dir = state_dir(&profile, env);
    check_permissions(profile_path)?;
    let stored = state_dir.join(CREDENTIALS_FILE);
    if stored.exists() {
        check_permissions(&stored)?;
    }

    let mut notes = Vec::new();
    let profile = match migrate_profile(&profile, &state_dir) {
        Ok((report, Some(rewritten))) => {
            notes.push(format!(
                "moved {} out of {} into {} (mode 0600); the profile now holds blank values",
                report.moved.join(", "),
                profile_path.display(),
                report.credentials_file.display()
            ));
            rewritten
        }
        Ok((_, None)) => profile,
        Err(MigrateError::Config(e)) => return Err(e),
        Err(e @ MigrateError::Io { .. }) => {
            notes.push(format!(
                "secrets stay in {} for now: {e}",
                profile_path.display()
            ));
            profile
        }
    };

    let (secrets, resolve_notes) = resolve_noting(&profile, &state_dir, env)?;
    let mut config = config::validate(&profile, &secrets, env)?;
    config.warnings.extend(notes);
    config.warnings.extend(resolve_notes);
    Ok(config)
}

/// `YYYY-MM-DD` in UTC.
pub fn utc_date(t: SystemTime) -> String {
    connectivity_common::timefmt::utc_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn profile(text: &str) -> Profile {
        Profile::parse(
            Path::new("/etc/connectivity-agent/InstallerProfile.cfg"),
            text.to_owned(),
        )
        .unwrap()
    }

    fn blank(text: &str) -> String {
        let p = profile(text);
        let entries: Vec<&Entry> = p
            .entries
            .iter()
            .filter(|e| SECRET_KEYS.contains(&e.key.as_str()))
            .collect();
        blank_secrets(&p, &entries, |k| format!("# {k} moved to X"))
    }

    #[test]
    fn utc_date_known_days() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(1_795_651_200)),
            "2026-11-26"
        );
    }

    #[test]
    fn blanking_keeps_line_ends_and_bom() {
        assert_eq!(
            blank("\u{feff}oic_PASSWORD=pw\r\nx=1\r\n"),
            "\u{feff}# oic_PASSWORD moved to X\r\noic_PASSWORD=\r\nx=1\r\n"
        );
        assert_eq!(
            blank("a=1\noic_PASSWORD = pw  \n"),
            "a=1\n# oic_PASSWORD moved to X\noic_PASSWORD =   \n"
        );
        assert_eq!(
            blank("a=1\r\noic_PASSWORD=pw"),
            "a=1\r\n# oic_PASSWORD moved to X\r\noic_PASSWORD="
        );
    }

    #[test]
    fn blanking_again_replaces_the_earlier_comment() {
        assert_eq!(
            blank("# oic_PASSWORD moved to OLD\r\noic_PASSWORD=new\r\n"),
            "# oic_PASSWORD moved to X\r\noic_PASSWORD=\r\n"
        );
    }

    #[test]
    fn state_dir_precedence() {
        let env = |k: &str| (k == "STATE_DIRECTORY").then(|| "/var/lib/a:/var/lib/b".to_owned());
        assert_eq!(
            state_dir(&profile("agent_STATE_DIR=/srv/x\n"), &env),
            PathBuf::from("/srv/x")
        );
        assert_eq!(state_dir(&profile(""), &env), PathBuf::from("/var/lib/a"));
        assert_eq!(
            state_dir(&profile(""), &|_| None),
            PathBuf::from(DEFAULT_STATE_DIR)
        );
    }
}
