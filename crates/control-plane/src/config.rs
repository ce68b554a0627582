//! The control plane's configuration: `control-plane.toml` turned into a
//! validated [`ControlPlaneConfig`] with nothing left for later code to unwrap.
//!
//! Step one deserializes the TOML into raw structs that reject unknown keys by
//! name; step two checks every value in one place (groups referenced exist,
//! hashes parse, TLS files load). A bad file yields a [`ConfigError`] naming
//! the file, the key, the value and the fix; the binary exits with code 64.
//! Relative paths in the file are taken relative to the file's directory.

use super::hashes::PasswordHash;
use super::job_input;
use crate::delivery::{FieldError, JobDefinition, SinkConfig};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use connectivity_common::EX_USAGE;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/connectivity-control-plane";
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Three missed heartbeats.
pub const HEARTBEAT_TIMEOUT_FACTOR: u64 = 3;
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3_600;
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

const DOCS: &str = "see docs/CONTROL_PLANE.md for every key";

/// The same error type as the agent's profile: file, line, key, value, problem, fix.
pub use connectivity_common::ConfigError;

/// TLS settings: the files they came from and the server configuration built
/// from them (so a bad certificate is a config error, not a runtime one).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
    /// The server certificate (the file's first), for expiry and messages.
    pub certificate: connectivity_common::tls::cert::CertFacts,
}

/// An agent group agents can join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
}

/// HTTP Basic credentials for agents (`oic_USER` / `oic_PASSWORD`).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: PasswordHash,
    /// Groups these credentials may join.
    pub groups: Vec<String>,
}

/// An OAuth2 client (client credentials grant) for agents.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub secret_hash: PasswordHash,
    pub groups: Vec<String>,
    /// Scopes the client may ask for; empty means it may ask for none.
    pub scopes: Vec<String>,
}

/// A bearer token for the console API.
#[derive(Debug, Clone)]
pub struct ConsoleToken {
    pub name: String,
    pub token_hash: PasswordHash,
}

/// The validated control plane configuration.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub tls: TlsSettings,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub token_ttl: Duration,
    pub shutdown_timeout: Duration,
    pub max_agents: usize,
    pub groups: Vec<Group>,
    pub users: Vec<User>,
    pub oauth_clients: Vec<OAuthClient>,
    pub console_tokens: Vec<ConsoleToken>,
    /// Poll jobs defined in the file (`[[jobs]]`), checked, truststore files
    /// read. Loaded into the job store at every start.
    pub jobs: Vec<JobDefinition>,
    /// CA file trusted for webhook sinks besides the system's CAs.
    pub webhook_ca_file: Option<PathBuf>,
    /// TLS for webhook sinks: the system's CAs plus `webhook_ca_file`.
    pub webhook_tls: Arc<rustls::ClientConfig>,
    /// Problems worth a warning once tracing is up.
    pub warnings: Vec<String>,
}

impl ControlPlaneConfig {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            value: None,
            problem: format!("cannot read the config file: {e}"),
            fix: "pass the path of a readable control-plane.toml with --config".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Validate `text` as if read from `path` (relative paths resolve against
    /// its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Validator { path }.validate(raw)
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The ids of the agent groups, in the file's order.
    pub fn group_ids(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.id.as_str()).collect()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn oauth_client(&self, client_id: &str) -> Option<&OAuthClient> {
        self.oauth_clients.iter().find(|c| c.client_id == client_id)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    token_ttl_secs: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    max_agents: Option<usize>,
    webhook_ca_file: Option<PathBuf>,
    tls: Option<RawTls>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    oauth_clients: Vec<RawClient>,
    #[serde(default)]
    console_tokens: Vec<RawConsoleToken>,
    /// Checked field by field by `job_input`, which names unknown keys.
    #[serde(default)]
    jobs: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    client_id: String,
    secret_hash: String,
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsoleToken {
    name: String,
    token_hash: String,
}

/// Turn a TOML/serde error into a [`ConfigError`] with a line number, and a
/// "did you mean" for misspelt keys.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = err.message().trim().to_owned();
    // serde's wording: "unknown field `lisen`, expected one of `a`, `b`".
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") && !ticked.is_empty() {
        let unknown = ticked[0];
        let guess = ticked[1..]
            .iter()
            .map(|k| (strsim::jaro_winkler(unknown, k), *k))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| format!("; did you mean {k:?}?"))
            .unwrap_or_default();
        let known = ticked[1..].join(", ");
        return ConfigError {
            file: path.to_owned(),
            line,
            key: Some(unknown.to_owned()),
            value: None,
            problem: "unknown key".into(),
            fix: format!("remove it or correct the spelling{guess} (keys allowed here: {known})"),
        };
    }
    ConfigError {
        file: path.to_owned(),
        line,
        key: None,
        value: None,
        problem: message,
        fix: DOCS.into(),
    }
}

/// The keys [`Timing`] is made of, as written.
struct RawTiming {
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    token_ttl_secs: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
}

/// The durations of [`ControlPlaneConfig`], checked together because the
/// heartbeat timeout depends on the interval.
struct Timing {
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    token_ttl: Duration,
    shutdown_timeout: Duration,
}

/// Warnings for a config with which nobody can log in.
fn credential_warnings(
    users: &[User],
    oauth_clients: &[OAuthClient],
    console_tokens: &[ConsoleToken],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if users.is_empty() && oauth_clients.is_empty() {
        warnings
            .push("no [[users]] and no [[oauth_clients]]: no agent can authenticate".to_owned());
    }
    if console_tokens.is_empty() {
        warnings.push("no [[console_tokens]]: the console API refuses every request".to_owned());
    }
    warnings
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: None,
            key: Some(key.into()),
            value,
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// A path as written, made absolute against the config file's directory.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_owned();
        }
        self.path
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_owned())
    }

    fn positive_ms(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        self.positive(key, value, default)
            .map(Duration::from_millis)
    }

    /// A number that must not be zero (`T::default()`); `default` when the
    /// key is absent.
    fn positive<T>(&self, key: &str, value: Option<T>, default: T) -> Result<T, ConfigError>
    where
        T: Copy + PartialEq + Default + std::fmt::Display,
    {
        match value.unwrap_or(default) {
            v if v == T::default() => Err(self.err(
                key,
                Some("0".into()),
                "must be greater than zero",
                format!("remove the key to use the default ({default})"),
            )),
            v => Ok(v),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<ControlPlaneConfig, ConfigError> {
        // The order of the steps decides which error a file with several
        // problems reports; it is kept as it was when this was one function.
        let listen = self.listen(raw.listen)?;
        let (tls, mut warnings) = self.tls(raw.tls)?;
        let timing = self.timing(RawTiming {
            heartbeat_interval_ms: raw.heartbeat_interval_ms,
            heartbeat_timeout_ms: raw.heartbeat_timeout_ms,
            token_ttl_secs: raw.token_ttl_secs,
            shutdown_timeout_ms: raw.shutdown_timeout_ms,
        })?;
        let max_agents = self.positive("max_agents", raw.max_agents, DEFAULT_MAX_AGENTS)?;
        let groups = self.groups(raw.groups)?;
        let known: BTreeSet<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        let users = self.users(raw.users, &known)?;
        let oauth_clients = self.oauth_clients(raw.oauth_clients, &known)?;
        let console_tokens = self.console_tokens(raw.console_tokens)?;
        warnings.extend(credential_warnings(&users, &oauth_clients, &console_tokens));
        let webhook_ca_file = raw.webhook_ca_file.map(|p| self.resolve(&p));
        let webhook_tls = self.webhook_tls(webhook_ca_file.as_deref())?;
        let jobs = self.jobs(raw.jobs, &groups)?;
        warnings.extend(self.job_secrets_warning(&jobs));

        Ok(ControlPlaneConfig {
            path: self.path.to_owned(),
            listen,
            tls,
            state_dir: self.resolve(
                raw.state_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_STATE_DIR)),
            ),
            heartbeat_interval: timing.heartbeat_interval,
            heartbeat_timeout: timing.heartbeat_timeout,
            token_ttl: timing.token_ttl,
            shutdown_timeout: timing.shutdown_timeout,
            max_agents,
            groups,
            users,
            oauth_clients,
            console_tokens,
            jobs,
            webhook_ca_file,
            webhook_tls,
            warnings,
        })
    }

    fn listen(&self, raw: Option<String>) -> Result<SocketAddr, ConfigError> {
        let listen_text = raw.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        listen_text.parse().map_err(|_| {
            self.err(
                "listen",
                Some(listen_text.clone()),
                "not an IP address and port",
                format!("write it as \"IP:PORT\", e.g. {DEFAULT_LISTEN:?} or \"[::]:7443\""),
            )
        })
    }

    /// Heartbeats, token lifetime and the shutdown deadline.
    fn timing(&self, raw: RawTiming) -> Result<Timing, ConfigError> {
        let heartbeat_interval = self.positive_ms(
            "heartbeat_interval_ms",
            raw.heartbeat_interval_ms,
            DEFAULT_HEARTBEAT_INTERVAL_MS,
        )?;
        let default_timeout = heartbeat_interval.as_millis() as u64 * HEARTBEAT_TIMEOUT_FACTOR;
        let heartbeat_timeout = self.positive_ms(
            "heartbeat_timeout_ms",
            raw.heartbeat_timeout_ms,
            default_timeout,
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(self.err(
                "heartbeat_timeout_ms",
                Some(heartbeat_timeout.as_millis().to_string()),
                format!("must be longer than heartbeat_interval_ms ({} ms), or every agent is declared dead between two heartbeats", heartbeat_interval.as_millis()),
                format!("use at least {HEARTBEAT_TIMEOUT_FACTOR} intervals ({default_timeout}), or remove the key"),
            ));
        }
        let token_ttl = Duration::from_secs(self.positive(
            "token_ttl_secs",
            raw.token_ttl_secs,
            DEFAULT_TOKEN_TTL_SECS,
        )?);
        let shutdown_timeout = self.positive_ms(
            "shutdown_timeout_ms",
            raw.shutdown_timeout_ms,
            DEFAULT_SHUTDOWN_TIMEOUT_MS,
        )?;
        Ok(Timing {
            heartbeat_interval,
            heartbeat_timeout,
            token_ttl,
            shutdown_timeout,
        })
    }

    /// `[[users]]`: names HTTP Basic can carry, each once, hashes that
    /// parse, groups that exist.
    fn users(&self, raw: Vec<RawUser>, known: &BTreeSet<&str>) -> Result<Vec<User>, ConfigError> {
        let mut users = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let at = |k: &str| format!("users[{i}].{k}");
            self.name(&at("name"), &u.name)?;
            if u.name.contains(':') {
                return Err(self.err(
                    at("name"),
                    Some(u.name),
                    "contains ':', which HTTP Basic authentication cannot carry in a user name",
                    "choose a name without ':'",
                ));
            }
            if users.iter().any(|x: &User| x.name == u.name) {
                return Err(self.err(
                    at("name"),
                    Some(u.name),
                    "is defined twice",
                    "give each [[users]] entry its own name",
                ));
            }
            let password_hash = self.hash(&at("password_hash"), &u.password_hash)?;
            self.group_refs(&at("groups"), &u.groups, known)?;
            users.push(User {
                name: u.name,
                password_hash,
                groups: u.groups,
            });
        }
        Ok(users)
    }

    /// `[[oauth_clients]]`: each client id once, hashes that parse, groups
    /// that exist, scopes without spaces.
    fn oauth_clients(
        &self,
        raw: Vec<RawClient>,
        known: &BTreeSet<&str>,
    ) -> Result<Vec<OAuthClient>, ConfigError> {
        let mut oauth_clients = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let at = |k: &str| format!("oauth_clients[{i}].{k}");
            self.name(&at("client_id"), &c.client_id)?;
            if oauth_clients
                .iter()
                .any(|x: &OAuthClient| x.client_id == c.client_id)
            {
                return Err(self.err(
                    at("client_id"),
                    Some(c.client_id),
                    "is defined twice",
                    "give each [[oauth_clients]] entry its own client_id",
                ));
            }
            let secret_hash = self.hash(&at("secret_hash"), &c.secret_hash)?;
            self.group_refs(&at("groups"), &c.groups, known)?;
            self.scopes(&at("scopes"), &c.scopes)?;
            oauth_clients.push(OAuthClient {
                client_id: c.client_id,
                secret_hash,
                groups: c.groups,
                scopes: c.scopes,
            });
        }
        Ok(oauth_clients)
    }

    fn scopes(&self, key: &str, scopes: &[String]) -> Result<(), ConfigError> {
        let bad =
            |s: &String| s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control());
        match scopes.iter().find(|s| bad(s)) {
            Some(s) => Err(self.err(
                key,
                Some(s.clone()),
                "a scope must be non-empty and contain no spaces",
                "list each scope as its own string",
            )),
            None => Ok(()),
        }
    }

    /// `[[console_tokens]]`: each name once, hashes that parse.
    fn console_tokens(&self, raw: Vec<RawConsoleToken>) -> Result<Vec<ConsoleToken>, ConfigError> {
        let mut console_tokens = Vec::new();
        for (i, t) in raw.into_iter().enumerate() {
            let at = |k: &str| format!("console_tokens[{i}].{k}");
            self.name(&at("name"), &t.name)?;
            if console_tokens
                .iter()
                .any(|x: &ConsoleToken| x.name == t.name)
            {
                return Err(self.err(
                    at("name"),
                    Some(t.name),
                    "is defined twice",
                    "give each console token its own name",
                ));
            }
            let token_hash = self.hash(&at("token_hash"), &t.token_hash)?;
            console_tokens.push(ConsoleToken {
                name: t.name,
                token_hash,
            });
        }
        Ok(console_tokens)
    }

    /// TLS for webhook sinks: the system's CAs plus `webhook_ca_file`.
    fn webhook_tls(
        &self,
        webhook_ca_file: Option<&Path>,
    ) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        connectivity_common::tls::client_config(webhook_ca_file).map_err(|e| {
            self.err(
                "webhook_ca_file",
                webhook_ca_file.map(|p| p.display().to_string()),
                e.to_string(),
                "point it at a readable PEM file of the CA certificates that signed your webhook endpoints, or remove the key",
            )
        })
    }

    /// A warning when the file holds job secrets and others may read it.
    fn job_secrets_warning(&self, jobs: &[JobDefinition]) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        if jobs.is_empty() {
            return None;
        }
        let mode = std::fs::metadata(self.path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds job secrets (SASL passwords, truststores) and is readable by other users (mode {:o}); chmod 600 it",
                self.path.display(),
                mode & 0o777
            )
        })
    }

    /// `[[jobs]]`: each parsed and checked like a console definition; ids
    /// and JSONL files unique.
    fn jobs(
        &self,
        raw: Vec<toml::Table>,
        groups: &[Group],
    ) -> Result<Vec<JobDefinition>, ConfigError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let group_ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        let mut jobs: Vec<JobDefinition> = Vec::new();
        for (i, table) in raw.iter().enumerate() {
            let def = job_input::from_toml(table, dir).map_err(|e| self.job_error(i, table, e))?;
            let errors: Vec<FieldError> = job_input::check(&def, &group_ids)
                .into_iter()
                .map(job_input::toml_field)
                .collect();
            if !errors.is_empty() {
                return Err(self.job_error(i, table, errors));
            }
            if let Some(first) = jobs.iter().position(|j| j.id() == def.id()) {
                return Err(self.err(
                    format!("jobs[{i}].id"),
                    Some(def.spec.id),
                    format!("is also the id of jobs[{first}]"),
                    "give each job its own id",
                ));
            }
            if let SinkConfig::Jsonl(mine) = &def.sink
                && let Some(other) = jobs
                    .iter()
                    .find(|j| matches!(&j.sink, SinkConfig::Jsonl(t) if t.path == mine.path))
            {
                return Err(self.err(
                    format!("jobs[{i}].sink.path"),
                    Some(mine.path.display().to_string()),
                    format!("is also the file of job {:?}", other.id()),
                    "give each job its own file",
                ));
            }
            jobs.push(def);
        }
        Ok(jobs)
    }

    /// One config error for a job's problems (all of them when several).
    fn job_error(&self, i: usize, table: &toml::Table, errors: Vec<FieldError>) -> ConfigError {
        let at = |field: &str| {
            if field.is_empty() {
                format!("jobs[{i}]")
            } else {
                format!("jobs[{i}].{field}")
            }
        };
        if let [e] = errors.as_slice() {
            return self.err(
                at(&e.field),
                e.value.clone(),
                e.problem.clone(),
                e.fix.clone(),
            );
        }
        let id = table
            .get("id")
            .and_then(|v| v.as_str())
            .map(|id| format!(" {id:?}"))
            .unwrap_or_default();
        let mut problem = format!("job{id} has {} problems:", errors.len());
        for e in &errors {
            let e = FieldError {
                field: at(&e.field),
                ..e.clone()
            };
            problem.push_str(&format!("\n    {e}"));
        }
        self.err(
            at(""),
            None,
            problem,
            "correct each field named above; docs/CONTROL_PLANE.md lists every job field",
        )
    }

    /// The TLS files, checked; with warnings about the certificate's chain
    /// and dates ([`super::certificate::check`]).
    fn tls(&self, raw: Option<RawTls>) -> Result<(TlsSettings, Vec<String>), ConfigError> {
        let raw = raw.ok_or_else(|| {
            self.err(
                "tls",
                None,
                "missing: the control plane only serves HTTPS",
                "add a [tls] table with cert_file and key_file (PEM)",
            )
        })?;
        let cert_file = self.resolve(&raw.cert_file);
        let key_file = self.resolve(&raw.key_file);
        for (key, file, what) in [
            ("tls.cert_file", &cert_file, "a PEM certificate chain"),
            ("tls.key_file", &key_file, "a PEM private key"),
        ] {
            if let Err(e) = std::fs::metadata(file).and_then(|_| std::fs::File::open(file)) {
                return Err(self.err(
                    key,
                    Some(file.display().to_string()),
                    format!("cannot read the file: {e}"),
                    format!("point {key} at {what} readable by the control plane"),
                ));
            }
        }
        let server_config = connectivity_common::tls::server_config(&cert_file, &key_file).map_err(|e| {
            self.err("tls", None, e.to_string(), "give a PEM certificate chain in tls.cert_file and its matching private key in tls.key_file")
        })?;
        let certs = connectivity_common::tls::read_cert_facts(&cert_file).unwrap_or_default();
        let now = connectivity_common::tls::cert::now_secs();
        let (certificate, warnings) =
            super::certificate::check(&cert_file, &certs, now).map_err(|(problem, fix)| {
                self.err(
                    "tls.cert_file",
                    Some(cert_file.display().to_string()),
                    problem,
                    fix,
                )
            })?;
        let tls = TlsSettings {
            cert_file,
            key_file,
            server_config,
            certificate,
        };
        Ok((tls, warnings))
    }

    fn groups(&self, raw: Vec<RawGroup>) -> Result<Vec<Group>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                "groups",
                None,
                "no agent group is defined, so no agent can join",
                "add at least one [[groups]] table with an id, e.g. id = \"PRIVATE_GROUP\"",
            ));
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, g) in raw.into_iter().enumerate() {
            self.name(&format!("groups[{i}].id"), &g.id)?;
            if groups.iter().any(|x| x.id == g.id) {
                return Err(self.err(
                    format!("groups[{i}].id"),
                    Some(g.id),
                    "is defined twice",
                    "remove the duplicate [[groups]] table",
                ));
            }
            groups.push(Group { id: g.id });
        }
        Ok(groups)
    }

    fn group_refs(
        &self,
        key: &str,
        refs: &[String],
        known: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        if refs.is_empty() {
            return Err(self.err(
                key,
                None,
                "is empty, so these credentials cannot join any group",
                "list the agent groups they may join",
            ));
        }
        for g in refs {
            if !known.contains(g.as_str()) {
                let ids: Vec<&str> = known.iter().copied().collect();
                return Err(self.err(
                    key,
                    Some(g.clone()),
                    "names an agent group that is not defined",
                    format!(
                        "add a [[groups]] table with id = {g:?}, or use one of: {}",
                        ids.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn name(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        if value.trim().is_empty() || value.chars().any(char::is_control) || value.len() > 128 {
            return Err(self.err(
                key,
                Some(value.to_owned()),
                "must be 1 to 128 printable characters",
                "give it a short printable name",
            ));
        }
        Ok(())
    }

    fn hash(&self, key: &str, value: &str) -> Result<PasswordHash, ConfigError> {
        // The value is a hash, not a secret, but it is still not echoed: a
        // pasted plain password would otherwise land in logs.
        PasswordHash::parse(value).map_err(|problem| {
            self.err(
                key,
                None,
                problem,
                "generate the hash with `control-plane hash-password` and paste its output",
            )
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
