//! The agent's control channel against the real reference control plane:
//! real TLS with a CA generated for the test, real WebSocket, a real proxy
//! (tinyproxy), real OAuth token endpoint.

mod common;

use common::control_plane::{self as cp, Options, TestControlPlane, WAIT};
use common::proxy::{PROXY_PASSWORD, PROXY_USER, TinyProxy};
use connectivity_agent::agent::jobs::{JobHost, Outbound};
use connectivity_agent::agent::{self, AgentError};
use connectivity_agent::config::{self, AgentConfig, Profile, SecretValues};
use connectivity_protocol::JobSpec;
use futures_util::future::BoxFuture;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Jobs stand-in: the control channel tests assign no jobs.
#[derive(Default)]
struct NoJobs {
    restored: Mutex<u32>,
    lost: Mutex<u32>,
}

impl JobHost for NoJobs {
    fn assign(&self, _spec: JobSpec) {}
    fn revoke(&self, _job_id: &str) {}
    fn ack(&self, _job_id: &str, _batch_seq: u64) {}
    fn session_restored(&self, _out: mpsc::Sender<Outbound>) {
        *self.restored.lock().unwrap() += 1;
    }
    fn session_lost(&self) {
        *self.lost.lock().unwrap() += 1;
    }
    fn drain(&self, _deadline: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn job_ids(&self) -> Vec<String> {
        vec![]
    }
}

fn profile_text(cp: &TestControlPlane, state: &Path, extra: &str) -> String {
    format!(
        "oic_URL={}\nagent_GROUP_IDENTIFIER={}\noic_CA_FILE={}\nagent_STATE_DIR={}\nagent_NAME=test-agent\n{extra}",
        cp.base_url(),
        cp::GROUP,
        cp.pki.ca_file.display(),
        state.display()
    )
}

fn agent_config(text: &str) -> AgentConfig {
    let profile = Profile::parse(Path::new("InstallerProfile.cfg"), text.to_owned()).unwrap();
    let secrets = SecretValues::from_profile(&profile);
    config::validate(&profile, &secrets, &|_| None).unwrap()
}

fn basic() -> String {
    format!("oic_USER={}\noic_PASSWORD={}\n", cp::USER, cp::PASSWORD)
}

async fn agents_connected(cp: &TestControlPlane) -> Vec<serde_json::Value> {
    let (status, body) = cp.console_get("/api/v1/agents").await;
    assert_eq!(status, 200, "{body}");
    body["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["state"] == "connected")
        .collect()
}

async fn wait_connected(cp: &TestControlPlane, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let agents = agents_connected(cp).await;
        if agents.len() == n {
            return agents;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} connected agents, have {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_agent(
    config: AgentConfig,
    jobs: Arc<NoJobs>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<agent::Stopped, AgentError>>,
) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { agent::run(config, jobs.as_ref(), s).await });
    (stop, h)
}

#[tokio::test]
async fn agent_joins_its_group_and_is_listed_with_host_facts() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = agent_config(&profile_text(&cp, state.path(), &basic()));
    let jobs = Arc::new(NoJobs::default());
    let (stop, handle) = spawn_agent(cfg, jobs.clone());
    let agents = wait_connected(&cp, 1).await;
    let a = &agents[0];
    assert_eq!(a["name"], "test-agent");
    assert_eq!(a["group"], cp::GROUP);
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a["host"]["os"], std::env::consts::OS);
    let id = std::fs::read_to_string(state.path().join("agent-id")).unwrap();
    assert_eq!(a["id"], id.trim());

    // Graceful stop: returns Ok, and the control plane sees the agent leave.
    stop.cancel();
    let r = tokio::time::timeout(WAIT, handle)
        .await
        .expect("agent did not stop")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    wait_connected(&cp, 0).await;
    cp.stop().await;
}

#[tokio::test]
async fn restarted_agent_is_recognised_as_the_same_agent() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let text = profile_text(&cp, state.path(), &basic());
    for _ in 0..2 {
        let (stop, handle) = spawn_agent(agent_config(&text), Arc::new(NoJobs::default()));
        wait_connected(&cp, 1).await;
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
    let (_, body) = cp.console_get("/api/v1/agents").await;
    assert_eq!(
        body["agents"].as_array().unwrap().len(),
        1,
        "one agent, not two: {body}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn wrong_password_is_permanent_and_named() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = agent_config(&profile_text(
        &cp,
        state.path(),
        &format!("oic_USER={}\noic_PASSWORD=wrong\n", cp::USER),
    ));
    let (_stop, handle) = spawn_agent(cfg, Arc::new(NoJobs::default()));
    let r = tokio::time::timeout(WAIT, handle)
        .await
        .expect("agent kept retrying bad credentials")
        .unwrap();
    let Err(AgentError::Refused(msg)) = r else {
        panic!("expected a refusal, got {r:?}")
    };
    assert!(
        msg.starts_with("auth: the control plane refused the credentials (HTTP 401)"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "secret leaked: {msg}");
    cp.stop().await;
}

#[tokio::test]
async fn group_the_user_may_not_join_is_permanent() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let text = profile_text(&cp, state.path(), &basic()).replace(cp::GROUP, "NO_SUCH_GROUP");
    let (_stop, handle) = spawn_agent(agent_config(&text), Arc::new(NoJobs::default()));
    let r = tokio::time::timeout(WAIT, handle)
        .await
        .expect("agent kept retrying")
        .unwrap();
    let Err(AgentError::Refused(msg)) = r else {
        panic!("expected a refusal, got {r:?}")
    };
    assert!(
        msg.contains("UnknownGroup") && msg.contains("NO_SUCH_GROUP"),
        "{msg}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn oauth_client_credentials_get_a_token_and_connect() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let creds = format!(
        "oic_IDCS_URL={}/oauth2/v1/token\noic_CLIENT_ID={}\noic_CLIENT_SECRET={}\noic_SCOPE=agent\n",
        cp.base_url(),
        cp::CLIENT_ID,
        cp::CLIENT_SECRET
    );
    let (stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &creds)),
        Arc::new(NoJobs::default()),
    );
    wait_connected(&cp, 1).await;
    stop.cancel();
    handle.await.unwrap().unwrap();

    let bad = creds.replace(cp::CLIENT_SECRET, "nope");
    let (_stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &bad)),
        Arc::new(NoJobs::default()),
    );
    let r = tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    let Err(AgentError::Refused(msg)) = r else {
        panic!("expected a refusal, got {r:?}")
    };
    assert!(msg.contains("refused the client: invalid_client"), "{msg}");
    cp.stop().await;
}

#[tokio::test]
async fn agent_connects_through_an_authenticating_proxy() {
    let cp = TestControlPlane::start(Options::default()).await;
    let proxy = TinyProxy::start(true);
    let state = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}proxy_HOST=127.0.0.1\nproxy_PORT={}\nproxy_USER={PROXY_USER}\nproxy_PASSWORD={PROXY_PASSWORD}\n",
        basic(),
        proxy.port
    );
    let (stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &extra)),
        Arc::new(NoJobs::default()),
    );
    let agents = wait_connected(&cp, 1).await;
    assert_eq!(agents[0]["proxy"], format!("127.0.0.1:{}", proxy.port));
    assert!(
        proxy.log_text().contains("CONNECT"),
        "the proxy saw no CONNECT:\n{}",
        proxy.log_text()
    );
    stop.cancel();
    handle.await.unwrap().unwrap();

    // The same without proxy authentication.
    let open_proxy = TinyProxy::start(false);
    let plain = format!(
        "{}proxy_HOST=127.0.0.1\nproxy_PORT={}\n",
        basic(),
        open_proxy.port
    );
    let (stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &plain)),
        Arc::new(NoJobs::default()),
    );
    let agents = wait_connected(&cp, 1).await;
    assert_eq!(agents[0]["proxy"], format!("127.0.0.1:{}", open_proxy.port));
    stop.cancel();
    handle.await.unwrap().unwrap();

    // Wrong proxy password (tinyproxy answers 401, others 407) is permanent and names the keys to fix.
    let bad = extra.replace(PROXY_PASSWORD, "bad-proxy-pass");
    let (_stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &bad)),
        Arc::new(NoJobs::default()),
    );
    let r = tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    let Err(AgentError::Refused(msg)) = r else {
        panic!("expected a refusal, got {r:?}")
    };
    assert_eq!(
        msg,
        format!(
            "proxy: proxy 127.0.0.1:{} refused the proxy credentials (HTTP 401); check proxy_USER/proxy_PASSWORD",
            proxy.port
        )
    );
    cp.stop().await;
}

#[tokio::test]
async fn non_proxy_hosts_bypass_the_proxy() {
    let cp = TestControlPlane::start(Options::default()).await;
    // A proxy port where nothing listens: the agent must not use it.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}proxy_HOST=127.0.0.1\nproxy_PORT={dead_port}\nproxy_NON_PROXY_HOSTS=localhost|127.0.0.1\n",
        basic()
    );
    let (stop, handle) = spawn_agent(
        agent_config(&profile_text(&cp, state.path(), &extra)),
        Arc::new(NoJobs::default()),
    );
    let agents = wait_connected(&cp, 1).await;
    assert!(agents[0]["proxy"].is_null(), "{agents:?}");
    stop.cancel();
    handle.await.unwrap().unwrap();
    cp.stop().await;
}

#[tokio::test]
async fn untrusted_control_plane_certificate_is_not_accepted() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    // No oic_CA_FILE: the test CA is not among the system roots.
    let text = profile_text(&cp, state.path(), &basic());
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("oic_CA_FILE"))
        .map(|l| format!("{l}\n"))
        .collect();
    let results = agent::check::check(&agent_config(&text)).await;
    let last = results.last().unwrap();
    assert_eq!(last.step, "TLS");
    assert!(!last.ok);
    assert_eq!(
        last.detail,
        "TLS handshake with 127.0.0.1 failed: the control plane's certificate (\"CN=localhost\") chains up to \
         \"CN=connectivity-agent test CA\", a CA this agent does not trust; oic_CA_FILE is unset, so only the \
         system's CAs are trusted: set oic_CA_FILE to a PEM file holding the certificate of \"CN=connectivity-agent test CA\""
    );
    cp.stop().await;
}
#[tokio::test]
async fn agent_reconnects_after_the_control_plane_restarts() {
    let opts = || Options {
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 600,
        ..Options::default()
    };
    let cp = TestControlPlane::start(opts()).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = agent_config(&profile_text(&cp, state.path(), &basic()));
    let jobs = Arc::new(NoJobs::default());
    let (stop, handle) = spawn_agent(cfg, jobs.clone());
    wait_connected(&cp, 1).await;
    let cp2 = cp.restart().await;
    wait_connected(&cp2, 1).await;
    assert!(*jobs.lost.lock().unwrap() >= 1);
    assert!(*jobs.restored.lock().unwrap() >= 2);
    stop.cancel();
    handle.await.unwrap().unwrap();
    cp2.stop().await;
}

#[tokio::test]
async fn agent_started_while_the_control_plane_is_down_connects_when_it_comes_up() {
    let cp = TestControlPlane::start(Options::default()).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = agent_config(&profile_text(&cp, state.path(), &basic()));
    // Take the control plane down; wait until its port refuses connections.
    cp.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(cp.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "control plane did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let jobs = Arc::new(NoJobs::default());
    let (stop, handle) = spawn_agent(cfg, jobs.clone());
    // The agent fails, backs off and keeps trying (it must not give up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !handle.is_finished(),
        "agent gave up while the control plane was down"
    );
    let cp = cp.restart().await;
    wait_connected(&cp, 1).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
    cp.stop().await;
}
