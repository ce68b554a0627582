//! A real control plane for integration tests: TLS with a test CA, a config
//! file written to a temp dir and loaded like the binary loads it, bound to
//! 127.0.0.1:0. Plus a WebSocket client and an HTTPS client that trust the
//! test CA, and helpers to speak the protocol.
//!
//! Credentials (all hashed with cheap argon2 parameters so tests stay fast):
//! user `agent`/`agent-password` in group `PRIVATE_GROUP`; user `other`/
//! `other-password` in `OTHER_GROUP` only; OAuth client `oauth-agent`/
//! `client-secret` in `PRIVATE_GROUP` with scope `agent`; console token
//! `console-token` named `ops`. Jobs and watermarks live in `state/` beside
//! the config; [`TestControlPlane::restart`] keeps them.
#![allow(dead_code)] // each test binary uses a different subset

use super::tls::TestPki;
use argon2::password_hash::PasswordHasher;
use base64::Engine;
use connectivity_control_plane::delivery::DeliveryOptions;
use connectivity_control_plane::{
    BatchSink, ControlPlane, ControlPlaneConfig, JobService, Registry, StartOptions,
};
use connectivity_protocol::{
    AGENT_PATH, AgentMessage, ControlMessage, Hello, HostFacts, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "PRIVATE_GROUP";
pub const OTHER_GROUP: &str = "OTHER_GROUP";
pub const USER: &str = "agent";
pub const PASSWORD: &str = "agent-password";
pub const OTHER_USER: &str = "other";
pub const OTHER_PASSWORD: &str = "other-password";
pub const CLIENT_ID: &str = "oauth-agent";
pub const CLIENT_SECRET: &str = "client-secret";
pub const CONSOLE_TOKEN: &str = "console-token";
/// Longest a test waits for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Argon2id with the smallest parameters: fast, and still a real PHC hash.
pub fn weak_hash(secret: &str) -> String {
    let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(secret.as_bytes())
        .expect("hash")
        .to_string()
}

/// Heartbeat settings, extra TOML and sink for one test.
#[derive(Clone)]
pub struct Options {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Batches go here instead of to the jobs' sinks.
    pub sink: Option<Arc<dyn BatchSink>>,
    /// Delivery tunables (default: the library's, system CA roots).
    pub delivery: Option<DeliveryOptions>,
    /// Appended to the config file (e.g. `[[jobs]]` tables).
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 3000,
            sink: None,
            delivery: None,
            extra_toml: String::new(),
        }
    }
}

/// The config file text for `pki` (paths relative to the config's dir).
pub fn config_text(opts: &Options) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
heartbeat_interval_ms = {hi}
heartbeat_timeout_ms = {ht}
shutdown_timeout_ms = 3000
state_dir = "state"

[tls]
cert_file = "server.pem"
key_file = "server-key.pem"

[[groups]]
id = "{GROUP}"

[[groups]]
id = "{OTHER_GROUP}"

[[users]]
name = "{USER}"
password_hash = "{user_hash}"
groups = ["{GROUP}"]

[[users]]
name = "{OTHER_USER}"
password_hash = "{other_hash}"
groups = ["{OTHER_GROUP}"]

[[oauth_clients]]
client_id = "{CLIENT_ID}"
secret_hash = "{client_hash}"
groups = ["{GROUP}"]
scopes = ["agent"]

[[console_tokens]]
name = "ops"
token_hash = "{console_hash}"
{extra}
"#,
        extra = opts.extra_toml,
        hi = opts.heartbeat_interval_ms,
        ht = opts.heartbeat_timeout_ms,
        user_hash = weak_hash(PASSWORD),
        other_hash = weak_hash(OTHER_PASSWORD),
        client_hash = weak_hash(CLIENT_SECRET),
        console_hash = weak_hash(CONSOLE_TOKEN),
    )
}

/// A running control plane and clients for it.
pub struct TestControlPlane {
    pub pki: TestPki,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub registry: Arc<Registry>,
    pub jobs: Arc<JobService>,
    opts: Options,
    handle: Option<ControlPlane>,
}

impl TestControlPlane {
    pub async fn start(opts: Options) -> TestControlPlane {
        let pki = TestPki::generate();
        let config_path = pki.dir.path().join("control-plane.toml");
        std::fs::write(&config_path, config_text(&opts)).expect("write config");
        Self::serve(pki, config_path, opts, "127.0.0.1:0").await
    }

    async fn serve(
        pki: TestPki,
        config_path: PathBuf,
        opts: Options,
        bind: &str,
    ) -> TestControlPlane {
        let config = ControlPlaneConfig::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let shutdown = CancellationToken::new();
        let start = StartOptions {
            sink: opts.sink.clone(),
            delivery: opts.delivery.clone(),
        };
        let handle = ControlPlane::start_with(config, listener, shutdown.clone(), start)
            .await
            .unwrap_or_else(|e| panic!("start: {e:#}"));
        TestControlPlane {
            addr: handle.local_addr(),
            registry: handle.registry(),
            jobs: handle.jobs(),
            pki,
            config_path,
            shutdown,
            opts,
            handle: Some(handle),
        }
    }

    /// Stop gracefully and start again on the same port with the same
    /// certificates, config file and state directory.
    pub async fn restart(mut self) -> TestControlPlane {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h.stopped())
                .await
                .expect("stop timed out")
                .expect("stopped cleanly");
        }
        let bind = self.addr.to_string();
        // `self` has a Drop impl, so its fields are swapped out, not moved.
        let pki = std::mem::replace(&mut self.pki, TestPki::generate());
        let (config_path, opts) = (self.config_path.clone(), self.opts.clone());
        drop(self);
        Self::serve(pki, config_path, opts, &bind).await
    }

    /// Stop gracefully and hand back the certificates' directory (config
    /// file, state directory) instead of deleting it.
    pub async fn stop_keeping_files(mut self) -> TestPki {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h.stopped())
                .await
                .expect("stop timed out")
                .expect("stopped cleanly");
        }
        std::mem::replace(&mut self.pki, TestPki::generate())
    }

    /// The state directory (job store).
    pub fn state_dir(&self) -> PathBuf {
        self.pki.dir.path().join("state")
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ws_url(&self) -> String {
        format!("wss://127.0.0.1:{}{AGENT_PATH}", self.addr.port())
    }

    /// An HTTPS client trusting the test CA only.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured((*self.pki.client_config()).clone())
            .timeout(WAIT)
            .build()
            .expect("reqwest client")
    }

    /// GET a console route with the console token; returns status and JSON.
    pub async fn console_get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http()
            .get(format!("{}{path}", self.base_url()))
            .bearer_auth(CONSOLE_TOKEN)
            .send()
            .await
            .expect("console request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("console json"))
    }

    /// `GET /metrics` with the console token: the text exposition.
    pub async fn metrics(&self) -> String {
        self.http()
            .get(format!("{}/metrics", self.base_url()))
            .bearer_auth(CONSOLE_TOKEN)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Any console request with the console token; returns status and the
    /// JSON body (`Null` when there is none, e.g. 204).
    pub async fn console(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http()
            .request(method, format!("{}{path}", self.base_url()))
            .bearer_auth(CONSOLE_TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("console request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("console body");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("console json")
        };
        (status, json)
    }

    /// Open the agent WebSocket with this `Authorization` header value.
    pub async fn connect(&self, authorization: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let mut req = self.ws_url().into_client_request()?;
        if let Some(a) = authorization {
            req.headers_mut()
                .insert("authorization", HeaderValue::from_str(a).expect("header"));
        }
        let connector = Connector::Rustls(self.pki.client_config());
        let (ws, _resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)),
        )
        .await
        .expect("connect timed out")?;
        Ok(ws)
    }

    /// Connect as the `agent` user, send a hello for `agent_id` in `GROUP`,
    /// and return the socket once welcomed.
    pub async fn connect_agent(&self, agent_id: &str) -> (Ws, ControlMessage) {
        let mut ws = self
            .connect(Some(&basic(USER, PASSWORD)))
            .await
            .expect("connect");
        send(&mut ws, &AgentMessage::Hello(hello(agent_id, GROUP))).await;
        let welcome = recv(&mut ws).await;
        assert!(
            matches!(welcome, ControlMessage::Welcome { .. }),
            "expected welcome, got {welcome:?}"
        );
        (ws, welcome)
    }

    /// Cancel and wait for the graceful stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h.stopped())
                .await
                .expect("stop timed out")
                .expect("stopped cleanly");
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `Basic <base64(user:password)>`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A hello as a real agent would send it.
pub fn hello(agent_id: &str, group: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0-test".into(),
        agent_id: agent_id.into(),
        agent_name: format!("{agent_id}-name"),
        group: group.into(),
        host: HostFacts {
            hostname: "test-host".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        },
        proxy: Some("proxy.example:3128".into()),
        capabilities: vec![],
    }
}

pub async fn send(ws: &mut Ws, msg: &AgentMessage) {
    ws.send(Message::text(connectivity_protocol::encode(msg)))
        .await
        .expect("send");
}

/// Next control message that is not a heartbeat.
pub async fn recv(ws: &mut Ws) -> ControlMessage {
    loop {
        match recv_any(ws).await {
            ControlMessage::Heartbeat { .. } => continue,
            m => return m,
        }
    }
}

/// Next control message, heartbeats included.
pub async fn recv_any(ws: &mut Ws) -> ControlMessage {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time");
        match frame {
            Some(Ok(Message::Text(t))) => {
                return connectivity_protocol::decode(t.as_str()).expect("valid control message");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Read until the server closes; returns the close frame's code and reason.
/// Reads on until the stream ends, which completes the close handshake.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let closed = loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time");
        match frame {
            Some(Ok(Message::Close(Some(f)))) => break (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
        }
    };
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    closed
}

/// Poll `cond` until it holds or [`WAIT`] passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
