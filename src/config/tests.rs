use super::*;

const BASE: &str = "oic_URL=https://cp.example.com:7443\nagent_GROUP_IDENTIFIER=PRIVATE_GROUP\n";

fn check(text: &str) -> Result<AgentConfig, ConfigError> {
    check_env(text, &[])
}

fn check_env(text: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    let profile = Profile::parse(Path::new("/etc/ca/InstallerProfile.cfg"), text.to_owned())?;
    let secrets = SecretValues::from_profile(&profile);
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    validate(&profile, &secrets, &move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

fn err(text: &str) -> String {
    check(text).unwrap_err().to_string()
}

#[test]
fn minimal_basic_profile_is_valid_with_defaults() {
    let c = check(&format!("{BASE}oic_USER=agent\noic_PASSWORD=s3cret\n")).unwrap();
    assert_eq!(c.control_plane.as_str(), "https://cp.example.com:7443/");
    assert_eq!(c.group, "PRIVATE_GROUP");
    assert!(
        matches!(&c.credentials, Credentials::Basic { user, password } if user == "agent" && password.expose() == "s3cret")
    );
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.log_level, "info");
    assert!(c.allowed_endpoints.is_empty());
    assert_eq!(c.drain_timeout, Duration::from_secs(20));
    assert_eq!(c.memory_trim, Some(Duration::from_secs(1)));
    assert!(c.proxy.is_none());
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn oauth_profile_is_valid() {
    let c = check(&format!(
        "{BASE}oic_IDCS_URL=https://idcs.example.com/oauth2/v1/token\noic_CLIENT_ID=cid\noic_CLIENT_SECRET=csec\noic_SCOPE=urn:agent\n"
    ))
    .unwrap();
    assert!(
        matches!(&c.credentials, Credentials::OAuth { client_id, scope: Some(s), .. } if client_id == "cid" && s == "urn:agent")
    );
}

#[test]
fn missing_url_is_named_with_fix() {
    assert_eq!(
        err("agent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\n"),
        "/etc/ca/InstallerProfile.cfg: oic_URL: is required but not set\n  fix: add oic_URL=https://<control plane host>:<port>"
    );
}

#[test]
fn http_url_is_refused() {
    assert_eq!(
        err("oic_URL=http://cp:80\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\n"),
        "/etc/ca/InstallerProfile.cfg:1: oic_URL = \"http://cp:80\": uses http://, but only https is allowed (credentials must not cross the network in clear text)\n  fix: write it as https://<host>:<port>"
    );
}

#[test]
fn port_out_of_range_is_refused() {
    assert_eq!(
        err("oic_URL=https://cp:70000\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\n"),
        "/etc/ca/InstallerProfile.cfg:1: oic_URL = \"https://cp:70000\": port 70000 is out of range\n  fix: use a port between 1 and 65535"
    );
}

#[test]
fn both_credential_styles_are_refused() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\noic_CLIENT_ID=c\n"
    ));
    assert!(
        e.starts_with(
            "/etc/ca/InstallerProfile.cfg:5: oic_USER / oic_IDCS_URL: both basic credentials"
        ),
        "{e}"
    );
    assert!(e.contains("fix: keep one style"), "{e}");
}

#[test]
fn no_credentials_is_refused() {
    assert_eq!(
        err(BASE),
        "/etc/ca/InstallerProfile.cfg: oic_USER / oic_CLIENT_ID: no credentials are set\n  fix: set oic_USER and oic_PASSWORD, or oic_IDCS_URL, oic_CLIENT_ID and oic_CLIENT_SECRET"
    );
}

#[test]
fn user_without_password_names_the_missing_key() {
    let e = err(&format!("{BASE}oic_USER=u\noic_PASSWORD=\n"));
    assert!(
        e.starts_with("/etc/ca/InstallerProfile.cfg: oic_PASSWORD: is required but not set"),
        "{e}"
    );
}

#[test]
fn bad_secret_value_is_masked_in_errors() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=topsecret\nproxy_USER=pu\nproxy_PASSWORD=proxysecret\n"
    ));
    assert!(
        e.contains("proxy_USER = \"pu\": is set but proxy_HOST is not"),
        "{e}"
    );
    assert!(!e.contains("topsecret") && !e.contains("proxysecret"));
}

#[test]
fn unknown_key_warns_with_closest_known_key() {
    let c = check(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\noic_PASWORD=x\n"
    ))
    .unwrap();
    assert_eq!(
        c.warnings,
        vec!["/etc/ca/InstallerProfile.cfg:5: unknown key \"oic_PASWORD\" is ignored; did you mean \"oic_PASSWORD\"?".to_string()]
    );
}

#[test]
fn proxy_from_profile_with_auth_and_non_proxy_hosts() {
    let c = check(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\nproxy_HOST=proxy.corp\nproxy_PORT=3128\nproxy_USER=pu\nproxy_PASSWORD=pp\nproxy_NON_PROXY_HOSTS=localhost|*.internal|10.0.0.1\n"
    ))
    .unwrap();
    let p = c.proxy.unwrap();
    assert_eq!(
        (p.host.as_str(), p.port, p.protocol),
        ("proxy.corp", 3128, ProxyProtocol::Http)
    );
    assert_eq!(p.auth.as_ref().unwrap().1.expose(), "pp");
    assert!(p.applies_to("cp.example.com"));
    assert!(!p.applies_to("localhost"));
    assert!(!p.applies_to("kafka.internal"));
    assert!(!p.applies_to("10.0.0.1"));
}

#[test]
fn proxy_port_out_of_range_is_refused() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\nproxy_HOST=h\nproxy_PORT=0\n"
    ));
    assert_eq!(
        e,
        "/etc/ca/InstallerProfile.cfg:6: proxy_PORT = \"0\": is not a port between 1 and 65535\n  fix: set proxy_PORT to the proxy's port, for example 3128"
    );
}

#[test]
fn proxy_from_environment_when_profile_has_none() {
    let c = check_env(
        &format!("{BASE}oic_USER=u\noic_PASSWORD=p\n"),
        &[
            ("HTTPS_PROXY", "http://bob:pa%40ss@proxy:8080"),
            ("NO_PROXY", "localhost,.corp"),
        ],
    )
    .unwrap();
    let p = c.proxy.unwrap();
    assert_eq!((p.host.as_str(), p.port), ("proxy", 8080));
    assert_eq!(
        p.auth.as_ref().map(|(u, s)| (u.as_str(), s.expose())),
        Some(("bob", "pa@ss"))
    );
    assert!(!p.applies_to("a.corp"));
    assert!(p.applies_to("cp.example.com"));
    assert_eq!(p.source, "environment variable HTTPS_PROXY");
}

#[test]
fn profile_proxy_wins_over_environment() {
    let c = check_env(
        &format!("{BASE}oic_USER=u\noic_PASSWORD=p\nproxy_HOST=file-proxy\nproxy_PORT=1\n"),
        &[("HTTPS_PROXY", "http://env-proxy:8080")],
    )
    .unwrap();
    assert_eq!(c.proxy.unwrap().host, "file-proxy");
}

#[test]
fn bad_allow_list_is_named() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\nagent_ALLOWED_ENDPOINTS=kafka\n"
    ));
    assert!(e.starts_with("/etc/ca/InstallerProfile.cfg:5: agent_ALLOWED_ENDPOINTS = \"kafka\": \"kafka\" has no port"), "{e}");
}

#[test]
fn bad_log_level_and_group_are_named() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\nagent_LOG_LEVEL=loud\n"
    ));
    assert!(
        e.contains("agent_LOG_LEVEL = \"loud\": is not a log level"),
        "{e}"
    );
    let e =
        err("oic_URL=https://h:1\nagent_GROUP_IDENTIFIER=my group\noic_USER=u\noic_PASSWORD=p\n");
    assert!(
        e.contains("agent_GROUP_IDENTIFIER = \"my group\": may only hold"),
        "{e}"
    );
}

#[test]
fn missing_ca_file_is_named() {
    let e = err(&format!(
        "{BASE}oic_USER=u\noic_PASSWORD=p\noic_CA_FILE=/nonexistent/ca.pem\n"
    ));
    assert!(e.starts_with("/etc/ca/InstallerProfile.cfg:5: oic_CA_FILE = \"/nonexistent/ca.pem\": cannot read the file"), "{e}");
}

#[test]
fn memory_trim_can_be_turned_off_and_a_bad_value_is_named() {
    let creds = "oic_USER=agent\noic_PASSWORD=s3cret\n";
    let off = check(&format!("{BASE}{creds}agent_MEMORY_TRIM_SECONDS=0\n")).unwrap();
    assert_eq!(off.memory_trim, None);
    let every = check(&format!("{BASE}{creds}agent_MEMORY_TRIM_SECONDS=60\n")).unwrap();
    assert_eq!(every.memory_trim, Some(Duration::from_secs(60)));
    assert_eq!(
        err(&format!("{BASE}{creds}agent_MEMORY_TRIM_SECONDS=often\n")),
        "/etc/ca/InstallerProfile.cfg:5: agent_MEMORY_TRIM_SECONDS = \"often\": is not a whole number of seconds between 0 and 3600\n  fix: write a number such as 1"
    );
}
