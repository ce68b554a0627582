//! Secrets on disk: moving them out of the profile on first start, rotation,
//! refusing loose permissions, and where each secret comes from.
//! Real files in a temporary directory; the environment is injected through
//! the `env` closure, never set on the process.

use connectivity_agent::config::{Credentials, Profile};
use connectivity_agent::credentials::{self, CREDENTIALS_FILE, MigrationReport};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const STORED_HEADER: &str = "# Secrets of connectivity-agent, moved here from its InstallerProfile.cfg.\n\
                             # Written by the agent; to rotate a secret, write the new value in the profile.\n";

struct Setup {
    _dir: tempfile::TempDir,
    profile: PathBuf,
    state: PathBuf,
}

/// A profile (mode 0600) in `<tmp>/etc` and a state directory path
/// `<tmp>/state` that does not exist yet.
fn setup(text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    let profile = dir.path().join("etc/InstallerProfile.cfg");
    fs::write(&profile, text).unwrap();
    fs::set_permissions(&profile, fs::Permissions::from_mode(0o600)).unwrap();
    let state = dir.path().join("state");
    Setup {
        _dir: dir,
        profile,
        state,
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn moved_note(key: &str, report: &MigrationReport) -> String {
    format!(
        "# {key} moved to {} on {}; write a new value here to rotate it",
        report.credentials_file.display(),
        report.date
    )
}

/// `migrate`, checking the date it wrote is today's (UTC).
fn migrate(s: &Setup) -> MigrationReport {
    let before = credentials::utc_date(SystemTime::now());
    let report = credentials::migrate(&s.profile, &s.state).unwrap();
    let after = credentials::utc_date(SystemTime::now());
    assert!(report.date == before || report.date == after, "{report:?}");
    assert_eq!(report.credentials_file, s.state.join(CREDENTIALS_FILE));
    report
}

const CRLF_PROFILE: &str = "\u{feff}# Connectivity agent profile\r\n\
    oic_URL=https://cp.example.com:7443\r\n\
    agent_GROUP_IDENTIFIER=PRIVATE_GROUP\r\n\
    \r\n\
    # basic auth\r\n\
    oic_USER=agent\r\n\
    oic_PASSWORD = s3cret \r\n\
    proxy_HOST=proxy.corp\r\n\
    proxy_PORT=3128\r\n\
    proxy_USER=pu\r\n\
    proxy_PASSWORD=pp#not-a-comment\r\n\
    ! a bang comment\r\n\
    agent_NAME=edge-1\r\n";

#[test]
fn first_start_moves_secrets_and_keeps_every_other_byte_crlf_bom() {
    let s = setup(CRLF_PROFILE);
    let report = migrate(&s);
    assert_eq!(report.moved, ["oic_PASSWORD", "proxy_PASSWORD"]);

    let expected = format!(
        "\u{feff}# Connectivity agent profile\r\n\
         oic_URL=https://cp.example.com:7443\r\n\
         agent_GROUP_IDENTIFIER=PRIVATE_GROUP\r\n\
         \r\n\
         # basic auth\r\n\
         oic_USER=agent\r\n\
         {}\r\n\
         oic_PASSWORD =  \r\n\
         proxy_HOST=proxy.corp\r\n\
         proxy_PORT=3128\r\n\
         proxy_USER=pu\r\n\
         {}\r\n\
         proxy_PASSWORD=\r\n\
         ! a bang comment\r\n\
         agent_NAME=edge-1\r\n",
        moved_note("oic_PASSWORD", &report),
        moved_note("proxy_PASSWORD", &report),
    );
    assert_eq!(fs::read_to_string(&s.profile).unwrap(), expected);
    assert_eq!(mode(&s.profile), 0o600);

    let stored = s.state.join(CREDENTIALS_FILE);
    assert_eq!(
        fs::read_to_string(&stored).unwrap(),
        format!("{STORED_HEADER}oic_PASSWORD=s3cret\nproxy_PASSWORD=pp#not-a-comment\n")
    );
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(&s.state), 0o700);
    // No temporary file is left beside either file.
    assert_eq!(fs::read_dir(&s.state).unwrap().count(), 1);
    assert_eq!(
        fs::read_dir(s.profile.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn first_start_lf_secret_on_last_line_without_newline() {
    let text = "# OAuth\noic_URL=https://cp.example.com:7443\nagent_GROUP_IDENTIFIER=G\n\
                oic_IDCS_URL=https://idcs.example.com/oauth2/v1/token\noic_CLIENT_ID=cid\noic_CLIENT_SECRET=csec";
    let s = setup(text);
    let report = migrate(&s);
    assert_eq!(report.moved, ["oic_CLIENT_SECRET"]);
    assert_eq!(
        fs::read_to_string(&s.profile).unwrap(),
        format!(
            "# OAuth\noic_URL=https://cp.example.com:7443\nagent_GROUP_IDENTIFIER=G\n\
             oic_IDCS_URL=https://idcs.example.com/oauth2/v1/token\noic_CLIENT_ID=cid\n{}\noic_CLIENT_SECRET=",
            moved_note("oic_CLIENT_SECRET", &report)
        )
    );
    assert_eq!(
        fs::read_to_string(s.state.join(CREDENTIALS_FILE)).unwrap(),
        format!("{STORED_HEADER}oic_CLIENT_SECRET=csec\n")
    );
}

#[test]
fn second_start_with_blank_values_changes_nothing() {
    let s = setup(CRLF_PROFILE);
    migrate(&s);
    let profile_after_first = fs::read(&s.profile).unwrap();
    let stored_after_first = fs::read(s.state.join(CREDENTIALS_FILE)).unwrap();
    let inode = fs::metadata(&s.profile).unwrap().ino();

    let report = migrate(&s);
    assert!(report.moved.is_empty());
    assert_eq!(fs::read(&s.profile).unwrap(), profile_after_first);
    assert_eq!(
        fs::read(s.state.join(CREDENTIALS_FILE)).unwrap(),
        stored_after_first
    );
    assert_eq!(
        fs::metadata(&s.profile).unwrap().ino(),
        inode,
        "the profile was rewritten"
    );
}

#[test]
fn new_value_in_profile_rotates_the_stored_one() {
    let s = setup(CRLF_PROFILE);
    let first = migrate(&s);
    // The operator writes a new password on the blanked line.
    let blanked = fs::read_to_string(&s.profile).unwrap();
    fs::write(
        &s.profile,
        blanked.replace("oic_PASSWORD =  \r\n", "oic_PASSWORD=n3w\r\n"),
    )
    .unwrap();

    let second = migrate(&s);
    assert_eq!(second.moved, ["oic_PASSWORD"]);
    assert_eq!(
        fs::read_to_string(s.state.join(CREDENTIALS_FILE)).unwrap(),
        format!("{STORED_HEADER}oic_PASSWORD=n3w\nproxy_PASSWORD=pp#not-a-comment\n"),
        "the new password replaces the old, the untouched proxy password stays"
    );
    // One comment per secret, however often it is rotated.
    let expected = blanked
        .replace("oic_PASSWORD =  \r\n", "oic_PASSWORD=\r\n")
        .replace(
            &moved_note("oic_PASSWORD", &first),
            &moved_note("oic_PASSWORD", &second),
        );
    assert_eq!(fs::read_to_string(&s.profile).unwrap(), expected);
    assert_eq!(expected.matches("# oic_PASSWORD moved to").count(), 1);

    let state = s.state.display().to_string();
    let env = move |k: &str| (k == "STATE_DIRECTORY").then(|| state.clone());
    let config = credentials::load_agent_config(&s.profile, &env).unwrap();
    assert!(
        matches!(config.credentials, Credentials::Basic { ref password, .. } if password.expose() == "n3w")
    );
}

#[test]
fn load_agent_config_moves_secrets_then_reads_them_back() {
    let s = setup(CRLF_PROFILE);
    let env = |k: &str| (k == "STATE_DIRECTORY").then(|| s.state.display().to_string());

    let config = credentials::load_agent_config(&s.profile, &env).unwrap();
    assert!(
        matches!(&config.credentials, Credentials::Basic { user, password } if user == "agent" && password.expose() == "s3cret")
    );
    assert_eq!(
        config
            .proxy
            .as_ref()
            .unwrap()
            .auth
            .as_ref()
            .unwrap()
            .1
            .expose(),
        "pp#not-a-comment"
    );
    assert_eq!(config.state_dir, s.state);
    assert_eq!(
        config.warnings,
        [format!(
            "moved oic_PASSWORD, proxy_PASSWORD out of {} into {} (mode 0600); the profile now holds blank values",
            s.profile.display(),
            s.state.join(CREDENTIALS_FILE).display()
        )]
    );
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("pp#not"),
        "{shown}"
    );

    // Second start: the profile has blanks, the stored file supplies them.
    let config = credentials::load_agent_config(&s.profile, &env).unwrap();
    assert!(
        matches!(&config.credentials, Credentials::Basic { password, .. } if password.expose() == "s3cret")
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let profile = Profile::read(&s.profile).unwrap();
    let secrets = credentials::resolve(&profile, &s.state, &no_env).unwrap();
    assert_eq!(secrets.source("oic_PASSWORD"), Some("credentials file"));
    assert!(!format!("{secrets:?}").contains("s3cret"));
}

#[test]
fn profile_readable_by_others_is_refused_with_the_fix() {
    let s = setup(CRLF_PROFILE);
    fs::set_permissions(&s.profile, fs::Permissions::from_mode(0o644)).unwrap();
    let err = credentials::load_agent_config(&s.profile, &no_env).unwrap_err();
    let p = s.profile.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{p}: is readable by other users (mode 0644); it holds secrets\n  fix: chmod 600 {p}"
        )
    );
    assert_eq!(
        fs::read_to_string(&s.profile).unwrap(),
        CRLF_PROFILE,
        "nothing is moved before the check passes"
    );
    assert!(!s.state.exists());

    fs::set_permissions(&s.profile, fs::Permissions::from_mode(0o620)).unwrap();
    assert_eq!(
        credentials::check_permissions(&s.profile)
            .unwrap_err()
            .to_string(),
        format!(
            "{p}: is writable by other users (mode 0620); it holds secrets\n  fix: chmod 600 {p}"
        )
    );
    fs::set_permissions(&s.profile, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        credentials::check_permissions(&s.profile)
            .unwrap_err()
            .to_string(),
        format!(
            "{p}: is readable and writable by other users (mode 0666); it holds secrets\n  fix: chmod 600 {p}"
        )
    );
    fs::set_permissions(&s.profile, fs::Permissions::from_mode(0o400)).unwrap();
    credentials::check_permissions(&s.profile).unwrap();
}

#[test]
fn credentials_file_readable_by_group_is_refused() {
    let s = setup(CRLF_PROFILE);
    let env = |k: &str| (k == "STATE_DIRECTORY").then(|| s.state.display().to_string());
    credentials::load_agent_config(&s.profile, &env).unwrap();
    let stored = s.state.join(CREDENTIALS_FILE);
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o640)).unwrap();
    let err = credentials::load_agent_config(&s.profile, &env).unwrap_err();
    let p = stored.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{p}: is readable by other users (mode 0640); it holds secrets\n  fix: chmod 600 {p}"
        )
    );
}

#[test]
fn precedence_systemd_credential_then_env_then_profile_then_stored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::write(
        state.join(CREDENTIALS_FILE),
        "oic_PASSWORD=stored\noic_CLIENT_SECRET=stored\nproxy_PASSWORD=stored\n",
    )
    .unwrap();
    let creds = dir.path().join("creds");
    fs::create_dir(&creds).unwrap();
    // As `echo secret > file` writes it: the line end is not part of the secret.
    fs::write(creds.join("oic_PASSWORD"), "from-credential\r\n").unwrap();
    let creds_str = creds.display().to_string();
    let env = move |k: &str| match k {
        "CREDENTIALS_DIRECTORY" => Some(creds_str.clone()),
        "oic_PASSWORD" | "oic_CLIENT_SECRET" => Some("from-env".to_owned()),
        _ => None,
    };
    let profile = |text: &str| {
        Profile::parse(&dir.path().join("InstallerProfile.cfg"), text.to_owned()).unwrap()
    };
    let sources = |p: &Profile, env: &dyn Fn(&str) -> Option<String>| {
        let s = credentials::resolve(p, &state, env).unwrap();
        ["oic_PASSWORD", "oic_CLIENT_SECRET", "proxy_PASSWORD"].map(|k| {
            (
                s.get(k).map(|v| v.expose().to_owned()),
                s.source(k).map(str::to_owned),
            )
        })
    };
    let v = |value: &str, source: &str| (Some(value.to_owned()), Some(source.to_owned()));
    let all_in_profile = profile("oic_PASSWORD=p1\noic_CLIENT_SECRET=p2\nproxy_PASSWORD=p3\n");

    assert_eq!(
        sources(&all_in_profile, &env),
        [
            v("from-credential", "systemd credential"),
            v("from-env", "environment"),
            v("p3", "profile")
        ]
    );
    assert_eq!(
        sources(&profile("oic_PASSWORD=\n"), &env),
        [
            v("from-credential", "systemd credential"),
            v("from-env", "environment"),
            v("stored", "credentials file")
        ]
    );
    assert_eq!(
        sources(&all_in_profile, &no_env),
        [v("p1", "profile"), v("p2", "profile"), v("p3", "profile")]
    );
    assert_eq!(
        sources(&profile(""), &no_env),
        [
            v("stored", "credentials file"),
            v("stored", "credentials file"),
            v("stored", "credentials file")
        ]
    );
    // Empty credential files and environment variables count as unset.
    fs::write(creds.join("oic_PASSWORD"), "\n").unwrap();
    let creds_str = creds.display().to_string();
    let empty_env = move |k: &str| match k {
        "CREDENTIALS_DIRECTORY" => Some(creds_str.clone()),
        "oic_PASSWORD" => Some(String::new()),
        _ => None,
    };
    assert_eq!(
        sources(&profile(""), &empty_env)[0],
        v("stored", "credentials file")
    );
}

#[test]
fn a_shadowed_secret_is_reported_without_its_value_and_never_flips() {
    let s = setup(
        "oic_URL=https://cp.example.com:7443\nagent_GROUP_IDENTIFIER=G\noic_USER=agent\noic_PASSWORD=0ld-pw-zq\n",
    );
    let creds = s.state.with_file_name("creds");
    fs::create_dir(&creds).unwrap();
    fs::write(creds.join("oic_PASSWORD"), "m4naged-zq").unwrap();
    let state = s.state.display().to_string();
    let creds_str = creds.display().to_string();
    let env = move |k: &str| match k {
        "STATE_DIRECTORY" => Some(state.clone()),
        "CREDENTIALS_DIRECTORY" => Some(creds_str.clone()),
        _ => None,
    };
    let shadowed = format!(
        "oic_PASSWORD: using the value from {}; {} holds a different value, which is ignored",
        creds.join("oic_PASSWORD").display(),
        s.state.join(CREDENTIALS_FILE).display()
    );
    // First start (the profile value is moved) and later starts agree.
    for start in 0..2 {
        let config = credentials::load_agent_config(&s.profile, &env).unwrap();
        assert!(
            matches!(&config.credentials, Credentials::Basic { password, .. } if password.expose() == "m4naged-zq")
        );
        assert_eq!(config.warnings.last(), Some(&shadowed), "start {start}");
        assert!(
            !config
                .warnings
                .iter()
                .any(|w| w.contains("0ld-pw-zq") || w.contains("m4naged-zq")),
            "{:?}",
            config.warnings
        );
    }
}

#[test]
fn unwritable_state_dir_keeps_secrets_in_profile_and_says_so() {
    let s = setup(CRLF_PROFILE);
    // A state "directory" below a regular file cannot be created, root or not.
    fs::write(&s.state, "not a directory").unwrap();
    let bad_state = s.state.join("sub");
    let bad = bad_state.display().to_string();
    let env = move |k: &str| (k == "STATE_DIRECTORY").then(|| bad.clone());
    let config = credentials::load_agent_config(&s.profile, &env).unwrap();
    assert!(
        matches!(&config.credentials, Credentials::Basic { password, .. } if password.expose() == "s3cret")
    );
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let w = &config.warnings[0];
    assert!(
        w.starts_with(&format!(
            "secrets stay in {} for now: cannot create directory {}: ",
            s.profile.display(),
            bad_state.display()
        )),
        "{w}"
    );
    assert_eq!(fs::read_to_string(&s.profile).unwrap(), CRLF_PROFILE);
}

#[test]
fn rewritten_files_keep_the_owner_when_root_runs_the_agent() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root can hand files to another owner");
        return;
    }
    let s = setup(CRLF_PROFILE);
    fs::create_dir(&s.state).unwrap();
    std::os::unix::fs::chown(&s.profile, Some(4242), Some(4343)).unwrap();
    std::os::unix::fs::chown(&s.state, Some(4242), Some(4343)).unwrap();
    migrate(&s);
    for p in [s.profile.clone(), s.state.join(CREDENTIALS_FILE)] {
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "{}", p.display());
    }
}
