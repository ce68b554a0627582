//! `connectivity-agent check`: walk the path to the control plane step by
//! step (DNS, TCP or proxy, TLS, auth, hello) and say which step fails and why.

use super::connect::{Connector, STEP_TIMEOUT};
use super::{auth, certificate, session};
use crate::config::AgentConfig;
use connectivity_protocol::{AgentMessage, Hello, HostFacts, PROTOCOL_VERSION};
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
    let mut results = Vec::new();
    let mut push = |step: &'static str, r: Result<String, String>| {
        let ok = r.is_ok();
        results.push(StepResult {
            step,
            ok,
            detail: r.unwrap_or_else(|e| e),
        });
        ok
    };

    let connector = match Connector::new(config) {
        Ok(c) => c,
        Err(e) => {
            push("config", Err(e.to_string()));
            return results;
        }
    };
    // DNS of the first hop (the proxy when one is used), reported on its own.
    let (first_host, first_port) = match &connector.proxy {
        Some(p) => (p.host.clone(), p.port),
        None => (connector.host.clone(), connector.port),
    };
    let dns = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::net::lookup_host((first_host.as_str(), first_port)),
    )
    .await;
    let dns = match dns {
        Err(_) => Err(format!("resolving {first_host} timed out")),
        Ok(Err(e)) => Err(format!("cannot resolve {first_host}: {e}")),
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            Ok(format!("{first_host} is {}", addrs.join(", ")))
        }
    };
    if !push("DNS", dns) {
        return results;
    }
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
    let label = if connector.proxy.is_some() {
        "proxy"
    } else {
        "TCP"
    };
    let Some(stream) = record(
        &mut push,
        label,
        stream.map(|s| (s, hop)).map_err(|e| e.message),
    ) else {
        return results;
    };
    let tls = connector.open_tls(stream).await.map(|v| {
        let detail = match &v.certificate {
            Some(leaf) => certificate::verified(&connector.host, leaf),
            None => format!("certificate of {} verified", connector.host),
        };
        (v.stream, detail)
    });
    let Some(tls) = record(&mut push, "TLS", tls.map_err(|e| e.message)) else {
        return results;
    };
    let mut authenticator = match auth::Authenticator::new(config) {
        Ok(a) => a,
        Err(e) => {
            push("auth", Err(e.message));
            return results;
        }
    };
    let authorization = match authenticator.authorization().await {
        Ok(a) => a,
        Err(e) => {
            push("auth", Err(e.message));
            return results;
        }
    };
    let ws = connector.upgrade(tls, &authorization).await;
    let Some(mut ws) = record(
        &mut push,
        "auth",
        ws.map(|w| (w, "credentials accepted".to_owned()))
            .map_err(|e| e.message),
    ) else {
        return results;
    };
    // The check uses the agent's real id when it has one, so the console
    // shows the same agent; it never creates one.
    let agent_id = std::fs::read_to_string(config.state_dir.join("agent-id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("check-{}", uuid::Uuid::new_v4()));
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agent_id,
        agent_name: config.agent_name.clone(),
        group: config.group.clone(),
        host: HostFacts::current(),
        proxy: connector.proxy_address(),
    };
    let est = session::handshake(&mut ws, hello).await;
    let ok = push(
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
    results
}

fn record<T>(
    push: &mut impl FnMut(&'static str, Result<String, String>) -> bool,
    step: &'static str,
    r: Result<(T, String), String>,
) -> Option<T> {
    match r {
        Ok((v, detail)) => {
            push(step, Ok(detail));
            Some(v)
        }
        Err(e) => {
            push(step, Err(e));
            None
        }
    }
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
