//! `control-plane init DIR`: everything a first run needs, in one step.
//!
//! It makes a CA and a server certificate it signs for the given host names
//! ([`super::pki`]), an agent group, an agent credential and a console token,
//! and writes a `control-plane.toml` that loads as it is, plus the first
//! agent's `InstallerProfile.cfg`. Secrets are made here and stored only as
//! argon2 hashes in the config; the clear agent password goes to the
//! profile (the agent needs it) and the console token is printed once.
//! Nothing that exists is overwritten: every file is created with
//! `O_EXCL`.

use super::auth::hash_password;
use super::pki;
use connectivity_protocol::secret::Secret;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `init` is asked to make.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    /// Names agents use to reach the control plane (DNS names or IP
    /// addresses); the first goes into the profile's `oic_URL`.
    pub hosts: Vec<String>,
    pub listen: SocketAddr,
    pub group: String,
    pub agent_user: String,
    pub server_days: u32,
}

/// Host names used when none is given: enough for an agent on this machine.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// Why `init` made nothing (or stopped part way; the message says which).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The caller's mistake (exit 64): a bad host name or group, files in the way.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

/// The files written, relative to [`InitOptions::dir`].
pub const CONFIG_FILE: &str = "control-plane.toml";
pub const CA_FILE: &str = "tls/ca.pem";
pub const CA_KEY_FILE: &str = "tls/ca-key.pem";
pub const CERT_FILE: &str = "tls/server.pem";
pub const KEY_FILE: &str = "tls/server-key.pem";
pub const PROFILE_FILE: &str = "agent/InstallerProfile.cfg";
const ALL_FILES: [&str; 6] = [
    CONFIG_FILE,
    CA_FILE,
    CA_KEY_FILE,
    CERT_FILE,
    KEY_FILE,
    PROFILE_FILE,
];

/// What `init` made, for the summary it prints.
#[derive(Debug)]
pub struct Initialized {
    pub dir: PathBuf,
    pub hosts: Vec<String>,
    /// `https://<first host>:<port>`: the agents' `oic_URL`.
    pub url: String,
    pub profile_text: Secret,
    pub console_token: Secret,
    pub server_not_after: time::OffsetDateTime,
}

/// Check the options, refuse to touch existing files, then write everything.
pub fn init(opts: &InitOptions) -> Result<Initialized, InitError> {
    check_options(opts)?;
    let dir = absolute(&opts.dir)?;
    refuse_existing(&dir)?;
    let agent_password = random_secret();
    let console_token = random_secret();
    let pki = pki::generate(
        "connectivity control plane CA",
        &opts.hosts,
        opts.server_days,
    )
    .map_err(|e| InitError::Io(format!("cannot make the certificates: {e}")))?;
    let url = format!(
        "https://{}:{}",
        url_host(&opts.hosts[0]),
        opts.listen.port()
    );
    let config = config_text(opts, &agent_password, &console_token)?;
    let profile = profile_text(opts, &url, &agent_password, &dir.join(CA_FILE));

    for sub in ["tls", "agent"] {
        connectivity_common::fs::create_private_dir(&dir.join(sub))
            .map_err(|e| io_error(&dir.join(sub), &e))?;
    }
    write_new(&dir.join(CA_FILE), &pki.ca_pem, 0o644)?;
    write_new(&dir.join(CA_KEY_FILE), &pki.ca_key_pem, 0o600)?;
    write_new(&dir.join(CERT_FILE), &pki.server_pem, 0o644)?;
    write_new(&dir.join(KEY_FILE), &pki.server_key_pem, 0o600)?;
    write_new(&dir.join(PROFILE_FILE), &profile, 0o600)?;
    // Last: a config file means the rest is there.
    write_new(&dir.join(CONFIG_FILE), &config, 0o600)?;
    Ok(Initialized {
        dir,
        hosts: opts.hosts.clone(),
        url,
        profile_text: Secret::new(profile),
        console_token,
        server_not_after: pki.server_not_after,
    })
}

fn check_options(opts: &InitOptions) -> Result<(), InitError> {
    if opts.hosts.is_empty() {
        return Err(InitError::Usage(
            "give at least one --host: the name agents use to reach the control plane".into(),
        ));
    }
    for host in &opts.hosts {
        if host.parse::<IpAddr>().is_err()
            && rustls::pki_types::DnsName::try_from(host.as_str()).is_err()
        {
            return Err(InitError::Usage(format!(
                "--host {host:?} is neither a DNS name nor an IP address; give the name agents will put in oic_URL, e.g. --host cp.example.com"
            )));
        }
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if !name_ok(&opts.group) {
        return Err(InitError::Usage(format!(
            "--group {:?}: use 1-128 of A-Z a-z 0-9 . _ -",
            opts.group
        )));
    }
    if !name_ok(&opts.agent_user) {
        return Err(InitError::Usage(format!(
            "--agent-user {:?}: use 1-128 of A-Z a-z 0-9 . _ -",
            opts.agent_user
        )));
    }
    if opts.server_days == 0 || opts.server_days > 3650 {
        return Err(InitError::Usage(format!(
            "--days {}: give 1 to 3650 days of validity for the server certificate",
            opts.server_days
        )));
    }
    Ok(())
}

/// Every file init would write that is already there, named in one error.
fn refuse_existing(dir: &Path) -> Result<(), InitError> {
    let existing: Vec<String> = ALL_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    Err(InitError::Usage(format!(
        "{} already exist{}; init never overwrites: give a new directory, or remove {} if you mean to start over",
        existing.join(", "),
        if existing.len() == 1 { "s" } else { "" },
        if existing.len() == 1 { "it" } else { "them" },
    )))
}

fn absolute(dir: &Path) -> Result<PathBuf, InitError> {
    connectivity_common::fs::create_private_dir(dir).map_err(|e| io_error(dir, &e))?;
    dir.canonicalize().map_err(|e| io_error(dir, &e))
}

fn io_error(path: &Path, e: &std::io::Error) -> InitError {
    InitError::Io(format!("cannot write {}: {e}", path.display()))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), InitError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| io_error(path, &e))
}

/// 32 random bytes, URL-safe base64: fits a profile line and an HTTP header.
fn random_secret() -> Secret {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// A TOML string literal, escaped by the toml crate.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn config_text(
    opts: &InitOptions,
    agent_password: &Secret,
    console_token: &Secret,
) -> Result<String, InitError> {
    let hash = |s: &Secret| hash_password(s.expose().as_bytes()).map_err(InitError::Io);
    Ok(format!(
        "# Written by `control-plane init` for {hosts}. Every key: docs/CONTROL_PLANE.md.
# Relative paths are relative to this file's directory.
listen = {listen}
state_dir = \"state\"

[tls]
cert_file = {cert}     # server certificate, signed by tls/ca.pem
key_file = {key}

[[groups]]
id = {group}

# The first agent's credentials (agent/InstallerProfile.cfg holds the password).
[[users]]
name = {user}
password_hash = {password_hash}
groups = [{group}]

# The console API's bearer token, printed once by init.
[[console_tokens]]
name = \"admin\"
token_hash = {token_hash}
",
        hosts = opts.hosts.join(", "),
        listen = quoted(&opts.listen.to_string()),
        cert = quoted(CERT_FILE),
        key = quoted(KEY_FILE),
        group = quoted(&opts.group),
        user = quoted(&opts.agent_user),
        password_hash = quoted(&hash(agent_password)?),
        token_hash = quoted(&hash(console_token)?),
    ))
}

fn profile_text(opts: &InitOptions, url: &str, password: &Secret, ca_file: &Path) -> String {
    format!(
        "oic_URL={url}\nagent_GROUP_IDENTIFIER={}\noic_USER={}\noic_PASSWORD={}\noic_CA_FILE={}\n",
        opts.group,
        opts.agent_user,
        password.expose(),
        ca_file.display()
    )
}

/// What init prints: the files, how to start, the profile, the console.
pub fn summary(done: &Initialized) -> String {
    let dir = done.dir.display();
    let until = done
        .server_not_after
        .replace_nanosecond(0)
        .unwrap_or(done.server_not_after)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let token = done.console_token.expose();
    let ca = done.dir.join(CA_FILE);
    let ca = ca.display();
    format!(
        "created in {dir}:
  {CONFIG_FILE:<28}the control plane's configuration (mode 0600)
  {CA_FILE:<28}the CA that agents trust (oic_CA_FILE)
  {CA_KEY_FILE:<28}the CA's private key (mode 0600); keep it safe, it can issue certificates agents trust
  {CERT_FILE:<28}the server certificate for {hosts}, valid until {until}
  {KEY_FILE:<28}its private key (mode 0600)
  {PROFILE_FILE:<28}the first agent's profile (mode 0600)

start the control plane:
  control-plane --config {dir}/{CONFIG_FILE}

the first agent's InstallerProfile.cfg, written to {dir}/{PROFILE_FILE}
(on another host: copy {CA_FILE} there and point oic_CA_FILE at the copy):
{profile}
start an agent with it here:
  connectivity-agent run --config {dir}/{PROFILE_FILE}

the console API is at {url}/api/v1/; its bearer token is shown only now
(the control plane keeps its hash):
  {token}
  curl --cacert {ca} -H 'Authorization: Bearer {token}' {url}/api/v1/agents
",
        hosts = done.hosts.join(", "),
        url = done.url,
        profile = indent(done.profile_text.expose()),
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_owned(),
            hosts: vec!["cp.example.com".into(), "10.0.0.5".into()],
            listen: "0.0.0.0:7443".parse().unwrap(),
            group: "PRIVATE_GROUP".into(),
            agent_user: "agent".into(),
            server_days: 365,
        }
    }

    #[test]
    fn writes_a_config_that_loads_and_a_matching_profile() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cp");
        let done = init(&options(&dir)).unwrap();
        assert_eq!(done.url, "https://cp.example.com:7443");

        let config = super::super::ControlPlaneConfig::load(&dir.join(CONFIG_FILE)).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(config.state_dir, dir.canonicalize().unwrap().join("state"));
        assert_eq!(config.groups[0].id, "PRIVATE_GROUP");

        let profile = done.profile_text.expose();
        let password = profile
            .lines()
            .find_map(|l| l.strip_prefix("oic_PASSWORD="))
            .unwrap();
        assert!(config.users[0].password_hash.verify(password.as_bytes()));
        assert!(
            config.console_tokens[0]
                .token_hash
                .verify(done.console_token.expose().as_bytes())
        );
        for (file, mode) in [
            (CONFIG_FILE, 0o600),
            (CA_KEY_FILE, 0o600),
            (KEY_FILE, 0o600),
            (PROFILE_FILE, 0o600),
            (CA_FILE, 0o644),
        ] {
            let meta = std::fs::metadata(dir.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        assert!(!summary(&done).is_empty());
    }

    #[test]
    fn refuses_to_overwrite_and_names_what_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cp");
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/ca.pem"), "mine").unwrap();
        let err = init(&options(&dir)).unwrap_err().to_string();
        let shown = dir.canonicalize().unwrap().join("tls/ca.pem");
        assert_eq!(
            err,
            format!(
                "{} already exists; init never overwrites: give a new directory, or remove it if you mean to start over",
                shown.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&shown).unwrap(), "mine");
        assert!(!dir.join(CONFIG_FILE).exists());
    }

    #[test]
    fn bad_hosts_and_names_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = options(tmp.path());
        opts.hosts = vec!["cp example".into()];
        assert_eq!(
            init(&opts).unwrap_err().to_string(),
            "--host \"cp example\" is neither a DNS name nor an IP address; give the name agents will put in oic_URL, e.g. --host cp.example.com"
        );
        let mut opts = options(tmp.path());
        opts.group = "my group".into();
        assert_eq!(
            init(&opts).unwrap_err().to_string(),
            "--group \"my group\": use 1-128 of A-Z a-z 0-9 . _ -"
        );
    }
}
