//! Overload and hostile peers: hundreds of light agent sessions (WebSocket +
//! hello + heartbeats, from this process) that reconnect at once to a
//! restarted control plane while the console API is timed; and
//! authenticated peers that send what no agent would.

use super::login_flood;
use super::world::{JOB, World};
use crate::common::control_plane as cp;
use bytes::Bytes;
use connectivity_protocol::batch::{BatchWriter, Compressor};
use connectivity_protocol::job::Compression;
use connectivity_protocol::{AgentMessage, ControlMessage};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

pub const STORM_SESSIONS: usize = 500;
/// The console's p99 during the storm must stay under this.
pub const CONSOLE_P99: Duration = Duration::from_millis(200);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(w: &World, user: &str, password: &str) -> Option<Ws> {
    let url = format!(
        "wss://127.0.0.1:{}{}",
        w.cp.port,
        connectivity_protocol::AGENT_PATH
    );
    let mut req = url.into_client_request().ok()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&cp::basic(user, password)).ok()?,
    );
    let connector = tokio_tungstenite::Connector::Rustls(w.cp.pki.client_config());
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)),
    )
    .await
    .ok()?
    .ok()?;
    Some(ws)
}

/// One light session: connect, hello, answer heartbeats; reconnect at once
/// (after 0-200 ms) when the connection ends, until `stop`.
fn light_session(
    w: &World,
    i: usize,
    connected: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let port = w.cp.port;
    let pki_config = w.cp.pki.client_config();
    let jitter = Duration::from_millis((i as u64 * 7919) % 200);
    tokio::spawn(async move {
        let url = format!(
            "wss://127.0.0.1:{port}{}",
            connectivity_protocol::AGENT_PATH
        );
        while !stop.is_cancelled() {
            let mut req = url.clone().into_client_request().expect("request");
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&cp::basic(cp::OTHER_USER, cp::OTHER_PASSWORD))
                    .expect("header"),
            );
            let connector = tokio_tungstenite::Connector::Rustls(pki_config.clone());
            let conn = tokio::select! {
                c = tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)) => c,
                _ = stop.cancelled() => return,
            };
            if let Ok((mut ws, _)) = conn {
                let hello = AgentMessage::Hello(cp::hello(&format!("storm-{i}"), cp::OTHER_GROUP));
                let mut welcomed = false;
                if ws
                    .send(Message::text(connectivity_protocol::encode(&hello)))
                    .await
                    .is_ok()
                {
                    loop {
                        let msg = tokio::select! {
                            m = ws.next() => m,
                            _ = stop.cancelled() => {
                                let _ = ws.close(None).await;
                                break;
                            }
                        };
                        let Some(Ok(Message::Text(t))) = msg else {
                            if matches!(msg, Some(Ok(_))) {
                                continue;
                            }
                            break;
                        };
                        match connectivity_protocol::decode::<ControlMessage>(t.as_str()) {
                            Ok(ControlMessage::Welcome { .. }) => {
                                welcomed = true;
                                connected.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(ControlMessage::Heartbeat { seq }) => {
                                let hb = AgentMessage::Heartbeat { seq };
                                if ws
                                    .send(Message::text(connectivity_protocol::encode(&hb)))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if welcomed {
                    connected.fetch_sub(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(jitter).await;
        }
    })
}

type Timed = (Vec<(Duration, Duration)>, u32);

/// Time console requests (alternately `/api/v1/status` and the job's view)
/// for `run`, from a thread and runtime of its own: the light sessions' TLS
/// handshakes run on the test's runtime and must not count as the control
/// plane's latency. Yields (latency, when after `since`) and the failures.
fn probe_console(w: &World, since: Instant, run: Duration) -> std::thread::JoinHandle<Timed> {
    let http = w.cp.http();
    let base = w.cp.base_url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        rt.block_on(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u32;
            let until = Instant::now() + run;
            let mut n = 0u64;
            while Instant::now() < until {
                let path = if n.is_multiple_of(2) {
                    "/api/v1/status".to_string()
                } else {
                    format!("/api/v1/jobs/{JOB}")
                };
                n += 1;
                let t = Instant::now();
                let ok = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(cp::CONSOLE_TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push((t.elapsed(), t.duration_since(since)));
                } else {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, failures)
        })
    })
}

/// p99 of `samples` (sorted in place).
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples
        .get((samples.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

pub async fn reconnect_storm(w: &mut World, window: Duration, extra: &mut Vec<String>) -> String {
    let stop = CancellationToken::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let sessions: Vec<_> = (0..STORM_SESSIONS)
        .map(|i| light_session(w, i, connected.clone(), stop.clone()))
        .collect();
    let end = Instant::now() + window;
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < STORM_SESSIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = connected.load(Ordering::SeqCst);
    if before < STORM_SESSIONS {
        extra.push(format!(
            "only {before} of {STORM_SESSIONS} light sessions connected before the storm"
        ));
    }
    // The same probe with every session connected and quiet: what the
    // console costs on this machine without a storm.
    let quiet = probe_console(w, Instant::now(), Duration::from_secs(3));
    while !quiet.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (quiet, _) = quiet.join().expect("console probe");
    let mut quiet: Vec<Duration> = quiet.iter().map(|(l, _)| *l).collect();
    let quiet_p99 = p99(&mut quiet);
    let pause = w
        .rng
        .between(Duration::from_secs(1), Duration::from_secs(3));
    tokio::time::sleep(pause).await;
    w.restart_cp().await;
    let restarted = Instant::now();
    // Time the console while everyone reconnects, from a thread and runtime
    // of its own: the light sessions' TLS handshakes run on this runtime and
    // must not count as the control plane's latency.
    let probe = probe_console(w, restarted, Duration::from_secs(15));
    let mut settled = None;
    while !probe.is_finished() {
        if settled.is_none() && connected.load(Ordering::SeqCst) >= STORM_SESSIONS {
            settled = Some(restarted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (timed, failures) = probe.join().expect("console probe");
    let mut slowest = timed.clone();
    slowest.sort_by_key(|(latency, _)| std::cmp::Reverse(*latency));
    let slowest: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(l, at)| {
            format!(
                "{:.0} ms at +{:.1} s",
                l.as_secs_f64() * 1e3,
                at.as_secs_f64()
            )
        })
        .collect();
    let mut latencies: Vec<Duration> = timed.iter().map(|(l, _)| *l).collect();
    while settled.is_none() && Instant::now() < restarted + Duration::from_secs(60) {
        if connected.load(Ordering::SeqCst) >= STORM_SESSIONS {
            settled = Some(restarted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let max = latencies.iter().max().copied().unwrap_or_default();
    let p = p99(&mut latencies);
    if p > CONSOLE_P99 {
        extra.push(format!(
            "console p99 {p:?} during the storm, over {CONSOLE_P99:?}"
        ));
    }
    if failures > 0 {
        extra.push(format!(
            "{failures} console requests failed during the storm"
        ));
    }
    if settled.is_none() {
        extra.push(format!(
            "only {} of {STORM_SESSIONS} light sessions reconnected within 60 s",
            connected.load(Ordering::SeqCst)
        ));
    }
    tokio::time::sleep_until(end).await;
    stop.cancel();
    for s in sessions {
        let _ = s.await;
    }
    format!(
        "{STORM_SESSIONS} sessions reconnected {} after the restart; console: {} requests, p99 {:.1} ms, max {:.1} ms (slowest: {}); without the storm p99 {:.1} ms",
        settled
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
        latencies.len(),
        p.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        slowest.join(", "),
        quiet_p99.as_secs_f64() * 1e3
    )
}

/// What each hostile peer sends after its hello; the control plane must
/// answer with a protocol error or close the session, stay up, and keep
/// everything of it out of the sink.
pub async fn hostile_agents(w: &mut World, window: Duration, extra: &mut Vec<String>) -> String {
    let end = Instant::now() + window;
    let flood = login_flood::flood(w, extra).await;
    let mut rounds = 0u32;
    let mut outcomes: std::collections::BTreeMap<&'static str, String> = Default::default();
    while Instant::now() < end {
        rounds += 1;
        for (name, same_group) in [
            ("garbage binary", true),
            ("truncated batch", true),
            ("oversized frame", true),
            ("batch for an unknown job", true),
            ("garbage text", true),
            ("zstd bomb", true),
            ("lz4 bomb", true),
            ("second hello", true),
            ("batch for another group's job", false),
            ("out-of-order batch sequence", false),
        ] {
            let (user, password, group) = if same_group {
                (cp::USER, cp::PASSWORD, cp::GROUP)
            } else {
                (cp::OTHER_USER, cp::OTHER_PASSWORD, cp::OTHER_GROUP)
            };
            let Some(mut ws) = open(w, user, password).await else {
                extra.push(format!("{name}: could not connect"));
                continue;
            };
            let hello = AgentMessage::Hello(cp::hello(
                &format!("hostile-{}", name.replace(' ', "-")),
                group,
            ));
            let _ = ws
                .send(Message::text(connectivity_protocol::encode(&hello)))
                .await;
            let frames: Vec<Message> = match name {
                "garbage binary" => vec![Message::binary(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3])],
                "truncated batch" => {
                    let frame = fake_batch(JOB, 1, &w.topic, 0, 10);
                    vec![Message::binary(frame.slice(..frame.len() / 2))]
                }
                "oversized frame" => vec![Message::binary(vec![
                    0u8;
                    connectivity_protocol::MAX_FRAME_BYTES
                        + 1024
                ])],
                "batch for an unknown job" => vec![Message::binary(fake_batch(
                    "no-such-job",
                    1,
                    &w.topic,
                    0,
                    10,
                ))],
                "garbage text" => vec![
                    Message::text("{\"type\":\"launch_missiles\"}"),
                    Message::text("not json"),
                ],
                "zstd bomb" => vec![Message::binary(bomb(Compression::Zstd))],
                "lz4 bomb" => vec![Message::binary(bomb(Compression::Lz4))],
                "second hello" => vec![Message::text(connectivity_protocol::encode(&hello))],
                "batch for another group's job" => {
                    vec![Message::binary(fake_batch(JOB, 1, &w.topic, 1_000_000, 10))]
                }
                _ => vec![
                    Message::binary(fake_batch(JOB, 7, &w.topic, 2_000_000, 5)),
                    Message::binary(fake_batch(JOB, 3, &w.topic, 1_000, 5)),
                ],
            };
            for f in frames {
                if ws.send(f).await.is_err() {
                    break;
                }
            }
            // Read what comes back until the peer closes or goes quiet.
            let mut seen = Vec::new();
            let quiet = Instant::now() + Duration::from_secs(3);
            loop {
                let m = tokio::time::timeout_at(quiet, ws.next()).await;
                match m {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Ok(msg) = connectivity_protocol::decode::<ControlMessage>(t.as_str())
                        {
                            match msg {
                                ControlMessage::ProtocolError { .. } => {
                                    seen.push("protocol error".to_string())
                                }
                                ControlMessage::Ack { .. } => seen.push("ACK".to_string()),
                                _ => {}
                            }
                        }
                    }
                    Ok(Some(Ok(Message::Close(f)))) => {
                        seen.push(format!(
                            "close {}",
                            f.map(|f| u16::from(f.code)).unwrap_or(1005)
                        ));
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) => {
                        seen.push("connection dropped".into());
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = ws.close(None).await;
            if seen.iter().any(|s| s == "ACK") {
                extra.push(format!("{name}: the control plane acked a hostile batch"));
            }
            if seen.is_empty() {
                extra.push(format!("{name}: no protocol error and no close"));
            }
            seen.dedup();
            outcomes.insert(name, seen.join(" + "));
        }
        if !w.cp.alive() {
            extra.push("the control plane died under hostile peers".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let summary: Vec<String> = outcomes
        .iter()
        .map(|(k, v)| format!("{k} -> {v}"))
        .collect();
    for secret in [
        login_flood::WRONG_PASSWORD,
        cp::PASSWORD,
        cp::OTHER_PASSWORD,
    ] {
        if w.cp_log_has(secret) > 0 {
            extra.push("a password appeared in the control plane's log".into());
        }
    }
    format!(
        "{flood}; {rounds} rounds of 10 hostile peers: {}",
        summary.join("; ")
    )
}

/// A compressed frame that claims 1 MiB inside but expands to 64 MiB of
/// zeros (a few KiB on the wire): the decoder must stop at what it claims.
fn bomb(codec: Compression) -> Bytes {
    let mut compressor = Compressor::new(codec).expect("compressor");
    let mut frame = compressor
        .compress(&vec![0u8; 64 << 20])
        .expect("zeros compress")
        .to_vec();
    frame[5..9].copy_from_slice(&(1u32 << 20).to_be_bytes());
    Bytes::from(frame)
}

/// A well-formed batch frame of `n` records `{"id": ...}` at `offset`.. on
/// partition 0.
fn fake_batch(job: &str, seq: u64, topic: &str, offset: i64, n: i64) -> Bytes {
    let mut b = BatchWriter::new(job, seq, topic, 1024);
    for i in 0..n {
        let v = format!(
            "{{\"id\":{},\"hostile\":true}}",
            9_000_000_000u64 + i as u64
        );
        b.push(0, offset + i, None, None, Some(v.as_bytes()), []);
    }
    b.finish()
}
