//! A wrong-password flood against the agent endpoint, from loopback source
//! addresses of its own (127.0.0.2, 127.0.0.3) so that the real agent's
//! address is not the one throttled. The control plane must answer 401,
//! then 429 with `Retry-After` before any password hashing, stay up, and
//! never log the passwords.

use super::world::World;
use crate::common::control_plane as cp;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Attempts per source: past the limiter's per-source allowance (20 a
/// minute, crates/control-plane/src/login_limit.rs) with room to spare.
const TRIES: usize = 60;
/// A wrong password easy to find in a log.
pub const WRONG_PASSWORD: &str = "chaos-wrong-password-7f3a";

/// What one source saw.
#[derive(Debug, Default)]
struct Seen {
    unauthorized: usize,
    throttled: usize,
    throttled_without_retry_after: usize,
    other: Vec<String>,
}

/// Flood from two sources (one with a configured user name, one with a name
/// nobody configured); push a violation into `extra` for anything but
/// 401-then-429. Returns a one-line summary.
pub async fn flood(w: &World, extra: &mut Vec<String>) -> String {
    let sources = [
        (Ipv4Addr::new(127, 0, 0, 2), cp::OTHER_USER),
        (Ipv4Addr::new(127, 0, 0, 3), "mallory"),
    ];
    let mut parts = Vec::new();
    for (source, user) in sources {
        let seen = from_source(w, IpAddr::V4(source), user).await;
        if seen.unauthorized == 0 || seen.throttled == 0 {
            extra.push(format!(
                "wrong-password flood from {source} as {user}: {} x 401, {} x 429 (wanted both)",
                seen.unauthorized, seen.throttled
            ));
        }
        if seen.throttled_without_retry_after > 0 {
            extra.push(format!(
                "wrong-password flood from {source}: {} answers 429 without Retry-After",
                seen.throttled_without_retry_after
            ));
        }
        if !seen.other.is_empty() {
            extra.push(format!(
                "wrong-password flood from {source}: unexpected answers {:?}",
                seen.other
            ));
        }
        parts.push(format!(
            "{source} as {user}: {} x 401 then {} x 429",
            seen.unauthorized, seen.throttled
        ));
    }
    format!("{TRIES} wrong passwords each from {}", parts.join(", "))
}

async fn from_source(w: &World, source: IpAddr, user: &str) -> Seen {
    let mut seen = Seen::default();
    for _ in 0..TRIES {
        match attempt(w, source, user).await {
            Ok(401) => seen.unauthorized += 1,
            Ok(429) => seen.throttled += 1,
            Ok(4290) => {
                seen.throttled += 1;
                seen.throttled_without_retry_after += 1;
            }
            Ok(other) => seen.other.push(format!("HTTP {other}")),
            Err(e) => seen.other.push(e),
        }
    }
    seen
}

/// One login from `source`: the HTTP status it was refused with (429
/// without `Retry-After` is reported as 4290), or what else happened.
async fn attempt(w: &World, source: IpAddr, user: &str) -> Result<u16, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], w.cp.port)))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let url = format!(
        "wss://127.0.0.1:{}{}",
        w.cp.port,
        connectivity_protocol::AGENT_PATH
    );
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&cp::basic(user, WRONG_PASSWORD)).map_err(|e| e.to_string())?,
    );
    let connector = tokio_tungstenite::Connector::Rustls(w.cp.pki.client_config());
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector)),
    )
    .await
    .map_err(|_| "no answer in 20 s".to_string())?;
    match answer {
        Ok(_) => Err("a wrong password was let in".into()),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            Ok(if status == 429 && !retry_after {
                4290
            } else {
                status
            })
        }
        Err(e) => Err(e.to_string()),
    }
}
