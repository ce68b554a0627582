//! `connectivity-agent check`: walk the path to the control plane step by
//! step (DNS, TCP or proxy, TLS, auth, hello) and say which step fails and why.

use super::connect::{Channel, Connector, Io, STEP_TIMEOUT};
use super::{auth, certificate, session};
use crate::config::AgentConfig;
use connectivity_protocol::{AgentMessage, Hello};
use futures_util::SinkExt;
use std::fmt::Write as _;

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Run every step until one fails. All passed when every result is ok.
pub async fn check(config: &AgentConfig) -> Vec<StepResult> {
    let mut steps = Steps::default();
    let connector = match Connector::new(config) {
        Ok(c) => c,
        Err(e) => {
            steps.push("config", Err(e.to_string()));
            return steps.0;
        }
    };
    if !steps.push("DNS", resolve_first_hop(&connector).await) {
        return steps.0;
    }
    let label = if connector.proxy.is_some() {
        "proxy"
    } else {
        "TCP"
    };
    let Some(stream) = steps.record(label, open_stream(&connector).await) else {
        return steps.0;
    };
    let Some(tls) = steps.record("TLS", open_tls(&connector, stream).await) else {
        return steps.0;
    };
    let authorization = match authorize(config).await {
        Ok(a) => a,
        Err(message) => {
            steps.push("auth", Err(message));
            return steps.0;
        }
    };
    let ws = connector.upgrade(tls, &authorization).await;
    let Some(mut ws) = steps.record(
        "auth",
        ws.map(|w| (w, "credentials accepted".to_owned()))
            .map_err(|e| e.message),
    ) else {
        return steps.0;
    };
    let est = session::handshake(&mut ws, check_hello(config, &connector)).await;
    let ok = steps.push(
        "hello",
        est.map(|e| {
            format!(
                "joined agent group {} (session {})",
                config.group, e.session_id
            )
        })
        .map_err(|e| e.to_string()),
    );
    if ok {
        say_goodbye(&mut ws).await;
    }
    steps.0
}

/// The results so far.
#[derive(Default)]
struct Steps(Vec<StepResult>);

impl Steps {
    /// Record a step; true when it passed.
    fn push(&mut self, step: &'static str, r: Result<String, String>) -> bool {
        let ok = r.is_ok();
        self.0.push(StepResult {
            step,
            ok,
            detail: r.unwrap_or_else(|e| e),
        });
        ok
    }

    /// Record a step that yields a value for the next; the value when it passed.
    fn record<T>(&mut self, step: &'static str, r: Result<(T, String), String>) -> Option<T> {
        match r {
            Ok((v, detail)) => {
                self.push(step, Ok(detail));
                Some(v)
            }
            Err(e) => {
                self.push(step, Err(e));
                None
            }
        }
    }
}

/// DNS of the first hop (the proxy when one is used), reported on its own.
async fn resolve_first_hop(connector: &Connector) -> Result<String, String> {
    let (first_host, first_port) = match &connector.proxy {
        Some(p) => (p.host.clone(), p.port),
        None => (connector.host.clone(), connector.port),
    };
    let dns = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::net::lookup_host((first_host.as_str(), first_port)),
    )
    .await;
    match dns {
        Err(_) => Err(format!("resolving {first_host} timed out")),
        Ok(Err(e)) => Err(format!("cannot resolve {first_host}: {e}")),
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            Ok(format!("{first_host} is {}", addrs.join(", ")))
        }
    }
}

/// The TCP connection (or the tunnel through the proxy), and how it went.
async fn open_stream(connector: &Connector) -> Result<(Box<dyn Io>, String), String> {
    let stream = connector.open_stream().await;
    let hop = match &connector.proxy {
        Some(p) => format!(
            "tunnel to {}:{} through proxy {}",
            connector.host,
            connector.port,
            p.address()
        ),
        None => format!("connected to {}:{}", connector.host, connector.port),
    };
    stream.map(|s| (s, hop)).map_err(|e| e.message)
}

/// The TLS session over `stream`, and what was verified.
async fn open_tls(
    connector: &Connector,
    stream: Box<dyn Io>,
) -> Result<(Box<dyn Io>, String), String> {
    let tls = connector.open_tls(stream).await.map(|v| {
        let detail = match &v.certificate {
            Some(leaf) => certificate::verified(&connector.host, leaf),
            None => format!("certificate of {} verified", connector.host),
        };
        (v.stream, detail)
    });
    tls.map_err(|e| e.message)
}

/// The Authorization header value, or why there is none.
async fn authorize(config: &AgentConfig) -> Result<String, String> {
    let mut authenticator = auth::Authenticator::new(config).map_err(|e| e.message)?;
    authenticator.authorization().await.map_err(|e| e.message)
}

/// The hello of the check. It uses the agent's real id when it has one,
/// so the console shows the same agent; it never creates one.
fn check_hello(config: &AgentConfig, connector: &Connector) -> Hello {
    let agent_id = std::fs::read_to_string(config.state_dir.join("agent-id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("check-{}", uuid::Uuid::new_v4()));
    super::hello(config, connector, agent_id)
}

/// End the check's session politely; best effort.
async fn say_goodbye(ws: &mut Channel) {
    let bye = AgentMessage::Goodbye {
        reason: "check finished".into(),
    };
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::text(
            connectivity_protocol::encode(&bye),
        ))
        .await;
    let _ = ws.close(None).await;
}

/// Human-readable report, one line per step.
pub fn render(results: &[StepResult]) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(
            s,
            "{} {:<6} {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.step,
            r.detail
        );
    }
    if results.iter().all(|r| r.ok) && results.iter().any(|r| r.step == "hello") {
        s.push_str("all checks passed\n");
    }
    s
}
