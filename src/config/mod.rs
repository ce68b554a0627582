//! The agent's configuration: `InstallerProfile.cfg` turned into a validated
//! [`AgentConfig`] with nothing left for later code to unwrap.
//!
//! Step one ([`profile`]) reads raw lines; step two ([`validate`]) checks every
//! key in one place. A bad file yields a [`ConfigError`] naming the file, the
//! line, the key, the value (secrets masked) and the fix; `main` exits with
//! code 64 (EX_USAGE) on it.

pub mod profile;

use crate::allowlist::AllowList;
use connectivity_protocol::secret::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

pub use profile::{Entry, Profile};

pub use connectivity_common::EX_USAGE;

/// Keys whose values are secrets.
pub const SECRET_KEYS: &[&str] = &["oic_PASSWORD", "oic_CLIENT_SECRET", "proxy_PASSWORD"];

/// Every key the profile accepts, with its meaning (used for "did you mean").
pub const KNOWN_KEYS: &[&str] = &[
    // Keys of Oracle's connectivity agent, accepted unchanged.
    "oic_URL",
    "agent_GROUP_IDENTIFIER",
    "oic_USER",
    "oic_PASSWORD",
    "oic_IDCS_URL",
    "oic_CLIENT_ID",
    "oic_CLIENT_SECRET",
    "oic_SCOPE",
    "proxy_HOST",
    "proxy_PORT",
    "proxy_USER",
    "proxy_PASSWORD",
    "proxy_NON_PROXY_HOSTS",
    "proxy_PROTOCOL",
    // Our own keys, in the same style.
    "oic_CA_FILE",
    "agent_NAME",
    "agent_STATE_DIR",
    "agent_LOG_LEVEL",
    "agent_ALLOWED_ENDPOINTS",
    "agent_DRAIN_TIMEOUT_SECONDS",
    "agent_SESSION_GRACE_SECONDS",
    "agent_METRICS_ADDRESS",
    "agent_MEMORY_TRIM_SECONDS",
];

/// Default state directory (systemd's `StateDirectory=connectivity-agent`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/connectivity-agent";

pub use connectivity_common::ConfigError;

/// How the agent authenticates to the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// `oic_USER` / `oic_PASSWORD`, sent as HTTP Basic.
    Basic { user: String, password: Secret },
    /// OAuth2 client credentials against `oic_IDCS_URL`.
    OAuth {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
}

/// `proxy_PROTOCOL`: how the agent talks to the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Http,
    Https,
}

/// An HTTP CONNECT proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub host: String,
    pub port: u16,
    pub protocol: ProxyProtocol,
    pub auth: Option<(String, Secret)>,
    /// Host patterns reached directly (`proxy_NON_PROXY_HOSTS` or `NO_PROXY`).
    pub non_proxy_hosts: Vec<String>,
    /// Where the setting came from, for messages: the profile or an env var.
    pub source: String,
}

impl ProxyConfig {
    /// Whether connections to `host` go through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        !self.non_proxy_hosts.iter().any(|p| {
            let p = p.trim().to_ascii_lowercase();
            if p == "*" {
                return true;
            }
            if let Some(suffix) = p.strip_prefix("*.") {
                return host.ends_with(&format!(".{suffix}")) || host == suffix;
            }
            // NO_PROXY style: ".example.com" and "example.com" cover subdomains.
            let bare = p.trim_start_matches('.');
            !bare.is_empty() && (host == bare || host.ends_with(&format!(".{bare}")))
        })
    }

    /// `host:port` of the proxy, for logs and the hello.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub profile_path: PathBuf,
    /// The control plane's base URL (`https://host:port`).
    pub control_plane: Url,
    pub group: String,
    pub credentials: Credentials,
    pub proxy: Option<ProxyConfig>,
    /// Extra CA certificates (PEM) to trust for the control plane.
    pub ca_file: Option<PathBuf>,
    pub agent_name: String,
    pub state_dir: PathBuf,
    pub log_level: String,
    pub allowed_endpoints: AllowList,
    pub drain_timeout: Duration,
    pub session_grace: Duration,
    pub metrics_address: Option<std::net::SocketAddr>,
    /// How often the agent gives the allocator's free memory back to the
    /// system (`crate::memory`); `None` never.
    pub memory_trim: Option<Duration>,
    /// Warnings to log once tracing is up (unknown keys and the like).
    pub warnings: Vec<String>,
}

/// Secret values and where each came from, resolved before validation.
/// Step one fills it from the profile; the credential store may add values.
#[derive(Debug, Clone, Default)]
pub struct SecretValues {
    values: BTreeMap<String, (Secret, String)>,
}

impl SecretValues {
    /// The non-empty secret values written in the profile itself.
    pub fn from_profile(profile: &Profile) -> Self {
        let mut s = SecretValues::default();
        for key in SECRET_KEYS {
            if let Some(v) = profile.get(key) {
                s.set(key, Secret::new(v), "profile");
            }
        }
        s
    }

    pub fn set(&mut self, key: &str, value: Secret, source: &str) {
        self.values
            .insert(key.to_owned(), (value, source.to_owned()));
    }

    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.values.get(key).map(|(v, _)| v)
    }

    /// Where the value of `key` came from ("profile", "credentials file", ...).
    pub fn source(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(_, s)| s.as_str())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// Read the profile at `path` and validate it, with secrets only from the
/// profile and proxy settings from the process environment.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let profile = Profile::read(path)?;
    let secrets = SecretValues::from_profile(&profile);
    validate(&profile, &secrets, &|k| std::env::var(k).ok())
}

/// Step two: check every key and build the [`AgentConfig`].
/// `env` reads environment variables (injected so tests control it).
/// The keys are checked in a fixed order, so the first bad one is reported.
pub fn validate(
    profile: &Profile,
    secrets: &SecretValues,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let v = Validator { profile };
    let warnings = unknown_key_warnings(profile);
    let control_plane = v
        .https_url("oic_URL", true)?
        .ok_or_else(|| v.missing("oic_URL", "add oic_URL=https://<control plane host>:<port>"))?;
    let group = v.group()?;
    let credentials = v.credentials(secrets)?;
    let proxy = v.proxy(secrets, env)?;
    let ca_file = v.ca_file()?;
    let agent_name = profile
        .get("agent_NAME")
        .map(str::to_owned)
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let state_dir = profile
        .get("agent_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| env("STATE_DIRECTORY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let log_level = v.log_level()?;
    let allowed_endpoints = v.allowed_endpoints()?;
    let drain_timeout = v.seconds("agent_DRAIN_TIMEOUT_SECONDS", 20, 1, 600)?;
    let session_grace = v.seconds("agent_SESSION_GRACE_SECONDS", 15, 0, 3600)?;
    let memory_trim =
        Some(v.seconds("agent_MEMORY_TRIM_SECONDS", 1, 0, 3600)?).filter(|every| !every.is_zero());
    let metrics_address = v.metrics_address()?;

    Ok(AgentConfig {
        profile_path: profile.path.clone(),
        control_plane,
        group,
        credentials,
        proxy,
        ca_file,
        agent_name,
        state_dir,
        log_level,
        allowed_endpoints,
        drain_timeout,
        session_grace,
        metrics_address,
        memory_trim,
        warnings,
    })
}

/// A warning for each key the agent does not know (a typo, most often).
fn unknown_key_warnings(profile: &Profile) -> Vec<String> {
    profile
        .entries
        .iter()
        .filter(|e| !KNOWN_KEYS.contains(&e.key.as_str()))
        .map(|e| unknown_key_warning(&profile.path, e))
        .collect()
}

fn unknown_key_warning(path: &Path, e: &Entry) -> String {
    let closest = KNOWN_KEYS
        .iter()
        .map(|k| {
            (
                strsim::jaro_winkler(&k.to_ascii_lowercase(), &e.key.to_ascii_lowercase()),
                k,
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((score, k)) if score > 0.8 => format!(
            "{}:{}: unknown key {:?} is ignored; did you mean {k:?}?",
            path.display(),
            e.line,
            e.key
        ),
        _ => format!(
            "{}:{}: unknown key {:?} is ignored (see InstallerProfile.cfg.example for the keys)",
            path.display(),
            e.line,
            e.key
        ),
    }
}

struct Validator<'a> {
    profile: &'a Profile,
}

impl Validator<'_> {
    /// `agent_GROUP_IDENTIFIER`: required, letters, digits, '-', '_' and '.'.
    fn group(&self) -> Result<String, ConfigError> {
        let group = self.required(
            "agent_GROUP_IDENTIFIER",
            "add agent_GROUP_IDENTIFIER=<the agent group created in the console>",
        )?;
        if !group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.bad(
                "agent_GROUP_IDENTIFIER",
                "may only hold letters, digits, '-', '_' and '.'",
                "use the group identifier exactly as the console shows it",
            ));
        }
        Ok(group)
    }

    /// `oic_CA_FILE`: optional, a file that can be read.
    fn ca_file(&self) -> Result<Option<PathBuf>, ConfigError> {
        let Some(p) = self.profile.get("oic_CA_FILE") else {
            return Ok(None);
        };
        let path = PathBuf::from(p);
        if let Err(e) = std::fs::metadata(&path) {
            return Err(self.bad(
                "oic_CA_FILE",
                &format!("cannot read the file: {e}"),
                "give the path of a PEM file holding the CA certificate(s) of the control plane",
            ));
        }
        Ok(Some(path))
    }

    /// `agent_LOG_LEVEL`: one of the five levels, `info` by default.
    fn log_level(&self) -> Result<String, ConfigError> {
        let log_level = self
            .profile
            .get("agent_LOG_LEVEL")
            .unwrap_or("info")
            .to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(self.bad(
                "agent_LOG_LEVEL",
                "is not a log level",
                "use one of error, warn, info, debug, trace",
            ));
        }
        Ok(log_level)
    }

    /// `agent_ALLOWED_ENDPOINTS`: the endpoints jobs may reach.
    fn allowed_endpoints(&self) -> Result<AllowList, ConfigError> {
        AllowList::parse(self.profile.get("agent_ALLOWED_ENDPOINTS").unwrap_or("")).map_err(|why| {
            self.bad(
                "agent_ALLOWED_ENDPOINTS",
                &why,
                "list the stream endpoints jobs may reach, comma-separated",
            )
        })
    }

    /// `agent_METRICS_ADDRESS`: ip:port, or off (the default).
    fn metrics_address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        match self.profile.get("agent_METRICS_ADDRESS") {
            None | Some("off") => Ok(None),
            Some(a) => Ok(Some(a.parse().map_err(|_| {
                self.bad(
                    "agent_METRICS_ADDRESS",
                    "is not an address",
                    "write ip:port, for example 127.0.0.1:9464, or off",
                )
            })?)),
        }
    }

    fn bad(&self, key: &str, problem: &str, fix: &str) -> ConfigError {
        let entry = self.profile.entry(key);
        ConfigError {
            file: self.profile.path.clone(),
            line: entry.map(|e| e.line),
            key: Some(key.to_owned()),
            value: entry.map(|e| {
                if SECRET_KEYS.contains(&key) {
                    connectivity_protocol::secret::MASK.to_owned()
                } else {
                    e.value.clone()
                }
            }),
            problem: problem.to_owned(),
            fix: fix.to_owned(),
        }
    }

    fn missing(&self, key: &str, fix: &str) -> ConfigError {
        ConfigError {
            file: self.profile.path.clone(),
            line: None,
            key: Some(key.to_owned()),
            value: None,
            problem: "is required but not set".into(),
            fix: fix.to_owned(),
        }
    }

    fn required(&self, key: &str, fix: &str) -> Result<String, ConfigError> {
        self.profile
            .get(key)
            .map(str::to_owned)
            .ok_or_else(|| self.missing(key, fix))
    }

    /// An `https://host[:port]` URL; `None` when the key is absent.
    fn https_url(&self, key: &str, with_port_hint: bool) -> Result<Option<Url>, ConfigError> {
        let Some(raw) = self.profile.get(key) else {
            return Ok(None);
        };
        let fix = if with_port_hint {
            "write it as https://<host>:<port>"
        } else {
            "write it as https://<host>[:<port>]/<path>"
        };
        // url's own error for a port above 65535 is vague; check it first.
        if let Some(port) = authority_port(raw) {
            match port.parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => {}
                _ => {
                    return Err(self.bad(
                        key,
                        &format!("port {port} is out of range"),
                        "use a port between 1 and 65535",
                    ));
                }
            }
        }
        let url =
            Url::parse(raw).map_err(|e| self.bad(key, &format!("is not a URL ({e})"), fix))?;
        if url.scheme() != "https" {
            return Err(self.bad(key, &format!("uses {}://, but only https is allowed (credentials must not cross the network in clear text)", url.scheme()), fix));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.bad(key, "has no host", fix));
        }
        Ok(Some(url))
    }

    fn credentials(&self, secrets: &SecretValues) -> Result<Credentials, ConfigError> {
        let p = self.profile;
        let basic_keys = p.get("oic_USER").is_some() || secrets.get("oic_PASSWORD").is_some();
        let oauth_keys = ["oic_IDCS_URL", "oic_CLIENT_ID", "oic_SCOPE"]
            .iter()
            .any(|k| p.get(k).is_some())
            || secrets.get("oic_CLIENT_SECRET").is_some();
        match (basic_keys, oauth_keys) {
            (true, true) => Err(ConfigError {
                file: p.path.clone(),
                line: p.entry("oic_IDCS_URL").or(p.entry("oic_CLIENT_ID")).map(|e| e.line),
                key: Some("oic_USER / oic_IDCS_URL".into()),
                value: None,
                problem: "both basic credentials (oic_USER, oic_PASSWORD) and OAuth client credentials (oic_IDCS_URL, oic_CLIENT_ID, oic_CLIENT_SECRET) are set".into(),
                fix: "keep one style: remove either the oic_USER/oic_PASSWORD lines or the oic_IDCS_URL/oic_CLIENT_ID/oic_CLIENT_SECRET/oic_SCOPE lines".into(),
            }),
            (false, false) => Err(ConfigError {
                file: p.path.clone(),
                line: None,
                key: Some("oic_USER / oic_CLIENT_ID".into()),
                value: None,
                problem: "no credentials are set".into(),
                fix: "set oic_USER and oic_PASSWORD, or oic_IDCS_URL, oic_CLIENT_ID and oic_CLIENT_SECRET".into(),
            }),
            (true, false) => {
                let user = self.required("oic_USER", "add oic_USER=<user allowed to join the agent group>")?;
                let password = secrets
                    .get("oic_PASSWORD")
                    .cloned()
                    .ok_or_else(|| self.missing("oic_PASSWORD", "add oic_PASSWORD=<password>, or provide it as the systemd credential or environment variable oic_PASSWORD"))?;
                Ok(Credentials::Basic { user, password })
            }
            (false, true) => {
                let token_url = self.https_url("oic_IDCS_URL", false)?.ok_or_else(|| self.missing("oic_IDCS_URL", "add oic_IDCS_URL=https://<identity host>/oauth2/v1/token"))?;
                let client_id = self.required("oic_CLIENT_ID", "add oic_CLIENT_ID=<OAuth client id>")?;
                let client_secret = secrets
                    .get("oic_CLIENT_SECRET")
                    .cloned()
                    .ok_or_else(|| self.missing("oic_CLIENT_SECRET", "add oic_CLIENT_SECRET=<client secret>, or provide it as the systemd credential or environment variable oic_CLIENT_SECRET"))?;
                let scope = p.get("oic_SCOPE").map(str::to_owned);
                Ok(Credentials::OAuth { token_url, client_id, client_secret, scope })
            }
        }
    }

    fn proxy(
        &self,
        secrets: &SecretValues,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ProxyConfig>, ConfigError> {
        let p = self.profile;
        let non_proxy = |s: &str, sep: char| -> Vec<String> {
            s.split(sep)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let Some(host) = p.get("proxy_HOST") else {
            for key in ["proxy_PORT", "proxy_USER", "proxy_PROTOCOL"] {
                if p.get(key).is_some() {
                    return Err(self.bad(
                        key,
                        "is set but proxy_HOST is not",
                        "add proxy_HOST=<proxy host>, or remove the proxy_* lines",
                    ));
                }
            }
            return self.proxy_from_env(env);
        };
        let port_raw = self.required("proxy_PORT", "add proxy_PORT=<proxy port>")?;
        let port = port_raw
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| {
                self.bad(
                    "proxy_PORT",
                    "is not a port between 1 and 65535",
                    "set proxy_PORT to the proxy's port, for example 3128",
                )
            })? as u16;
        let protocol = match p
            .get("proxy_PROTOCOL")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("http") => ProxyProtocol::Http,
            Some("https") => ProxyProtocol::Https,
            Some(_) => {
                return Err(self.bad(
                    "proxy_PROTOCOL",
                    "must be http or https",
                    "set proxy_PROTOCOL=http (plain connection to the proxy) or https",
                ));
            }
        };
        let auth = match (p.get("proxy_USER"), secrets.get("proxy_PASSWORD")) {
            (Some(u), Some(pw)) => Some((u.to_owned(), pw.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.missing(
                    "proxy_PASSWORD",
                    "add proxy_PASSWORD=<password> for proxy_USER, or remove proxy_USER",
                ));
            }
            (None, Some(_)) => {
                return Err(self.missing(
                    "proxy_USER",
                    "add proxy_USER=<user> for proxy_PASSWORD, or remove proxy_PASSWORD",
                ));
            }
        };
        Ok(Some(ProxyConfig {
            host: host.to_owned(),
            port,
            protocol,
            auth,
            non_proxy_hosts: non_proxy(p.get("proxy_NON_PROXY_HOSTS").unwrap_or(""), '|'),
            source: format!("{}", p.path.display()),
        }))
    }

    /// `HTTPS_PROXY` / `NO_PROXY` when the profile names no proxy.
    fn proxy_from_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ProxyConfig>, ConfigError> {
        let Some((var, raw)) = ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (*k, v)))
        else {
            return Ok(None);
        };
        let env_err = |problem: String| ConfigError {
            file: PathBuf::from(format!("environment variable {var}")),
            line: None,
            key: None,
            value: Some(mask_userinfo(&raw)),
            problem,
            fix: format!("set {var} to http://[user:password@]host:port, or unset it"),
        };
        let with_scheme = if raw.contains("://") {
            raw.clone()
        } else {
            format!("http://{raw}")
        };
        let url =
            Url::parse(&with_scheme).map_err(|e| env_err(format!("is not a proxy URL ({e})")))?;
        let protocol = match url.scheme() {
            "http" => ProxyProtocol::Http,
            "https" => ProxyProtocol::Https,
            s => {
                return Err(env_err(format!(
                    "uses {s}://; only http and https proxies are supported"
                )));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| env_err("has no host".into()))?;
        let auth = (!url.username().is_empty()).then(|| {
            let dec = |s: &str| percent_decode(s);
            (
                dec(url.username()),
                Secret::new(dec(url.password().unwrap_or(""))),
            )
        });
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|k| env(k))
            .unwrap_or_default();
        Ok(Some(ProxyConfig {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: url.port_or_known_default().unwrap_or(3128),
            protocol,
            auth,
            non_proxy_hosts: no_proxy
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            source: format!("environment variable {var}"),
        }))
    }

    fn seconds(
        &self,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        match self.profile.get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    self.bad(
                        key,
                        &format!("is not a whole number of seconds between {min} and {max}"),
                        &format!("write a number such as {default}"),
                    )
                }),
        }
    }
}

/// The explicit port in `scheme://host:port/...`, if any.
fn authority_port(raw: &str) -> Option<&str> {
    let rest = raw.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if hostport.starts_with('[') {
        hostport.rsplit_once("]:")?.1
    } else {
        hostport.rsplit_once(':')?.1
    };
    Some(port)
}

fn mask_userinfo(raw: &str) -> String {
    match raw.split_once("://").map(|(s, r)| (s, r.rsplit_once('@'))) {
        Some((scheme, Some((_, host)))) => {
            format!("{scheme}://{}@{host}", connectivity_protocol::secret::MASK)
        }
        _ => raw.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
