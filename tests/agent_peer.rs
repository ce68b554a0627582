//! The agent against a misbehaving control plane: a real TLS WebSocket server
//! written here that welcomes the agent and then goes silent, or sends
//! garbage. The agent must declare a silent peer dead, answer garbage with a
//! protocol error, and never crash.

mod common;

use common::tls::TestPki;
use connectivity_agent::agent::{
    self,
    jobs::{JobHost, Outbound},
};
use connectivity_agent::config::{self, Profile, SecretValues};
use connectivity_protocol::{AgentMessage, ControlMessage, JobSpec, PROTOCOL_VERSION};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct NoJobs;
impl JobHost for NoJobs {
    fn assign(&self, _: JobSpec) {}
    fn revoke(&self, _: &str) {}
    fn ack(&self, _: &str, _: u64) {}
    fn session_restored(&self, _: mpsc::Sender<Outbound>) {}
    fn session_lost(&self) {}
    fn drain(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn job_ids(&self) -> Vec<String> {
        vec![]
    }
}

/// What the fake control plane does after its welcome.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Never sends anything again, keeps the socket open (a half-open peer).
    Silent,
    /// Sends malformed and unknown messages, then heartbeats.
    Garbage,
    /// Refuses the agent's protocol version.
    RefuseVersion,
}

type Events = mpsc::UnboundedSender<String>;

async fn fake_control_plane(pki: &TestPki, behaviour: Behaviour, events: Events) -> u16 {
    let tls = connectivity_common::tls::server_config(&pki.cert_file, &pki.key_file).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let _ = events.send("connected".into());
                let Some(Ok(Message::Text(hello))) = ws.next().await else {
                    return;
                };
                assert!(matches!(
                    connectivity_protocol::decode::<AgentMessage>(&hello),
                    Ok(AgentMessage::Hello(_))
                ));
                if let Behaviour::RefuseVersion = behaviour {
                    let no = ControlMessage::Rejected {
                        reason: connectivity_protocol::RejectReason::VersionRefused,
                        message: "protocol version 1 is not supported; this control plane speaks 2"
                            .into(),
                    };
                    let _ = ws
                        .send(Message::text(connectivity_protocol::encode(&no)))
                        .await;
                    let _ = ws.close(None).await;
                    let _ = events.send("refused".into());
                    return;
                }
                let welcome = ControlMessage::Welcome {
                    session_id: "fake".into(),
                    heartbeat_interval_ms: 100,
                    heartbeat_timeout_ms: 400,
                    protocol_version: PROTOCOL_VERSION,
                };
                ws.send(Message::text(connectivity_protocol::encode(&welcome)))
                    .await
                    .unwrap();
                match behaviour {
                    Behaviour::RefuseVersion => {}
                    Behaviour::Silent => {
                        // Read (so TCP stays healthy) but never answer.
                        while let Some(Ok(_)) = ws.next().await {}
                        let _ = events.send("closed".into());
                    }
                    Behaviour::Garbage => {
                        ws.send(Message::text("{not json")).await.unwrap();
                        ws.send(Message::text(r#"{"type":"self_destruct"}"#))
                            .await
                            .unwrap();
                        ws.send(Message::Binary(vec![1, 2, 3].into()))
                            .await
                            .unwrap();
                        loop {
                            tokio::select! {
                                m = ws.next() => match m {
                                    Some(Ok(Message::Text(t))) => {
                                        if let Ok(msg) = connectivity_protocol::decode::<AgentMessage>(&t) {
                                            let _ = events.send(match msg {
                                                AgentMessage::ProtocolError { message } => format!("protocol_error: {message}"),
                                                AgentMessage::Heartbeat { .. } => "heartbeat".into(),
                                                other => format!("{other:?}"),
                                            });
                                        }
                                    }
                                    Some(Ok(_)) => {}
                                    _ => return,
                                },
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                                    let hb = ControlMessage::Heartbeat { seq: 1 };
                                    if ws.send(Message::text(connectivity_protocol::encode(&hb))).await.is_err() { return; }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

fn config_for(pki: &TestPki, port: u16, state: &Path) -> config::AgentConfig {
    let text = format!(
        "oic_URL=https://localhost:{port}\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\noic_CA_FILE={}\nagent_STATE_DIR={}\n",
        pki.ca_file.display(),
        state.display()
    );
    let profile = Profile::parse(Path::new("p.cfg"), text).unwrap();
    config::validate(&profile, &SecretValues::from_profile(&profile), &|_| None).unwrap()
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) -> Vec<String> {
    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} event; saw {seen:?}"))
            .unwrap();
        let hit = ev.starts_with(want);
        seen.push(ev);
        if hit {
            return seen;
        }
    }
}

#[tokio::test]
async fn silent_peer_is_declared_dead_and_the_agent_reconnects() {
    let pki = TestPki::generate();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = fake_control_plane(&pki, Behaviour::Silent, tx).await;
    let state = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cfg = config_for(&pki, port, state.path());
    let s = stop.clone();
    let handle = tokio::spawn(async move { agent::run(cfg, &NoJobs, s).await });
    next_event(&mut rx, "connected").await;
    // The agent hears nothing for 400 ms, declares the peer dead, closes, and
    // comes back.
    next_event(&mut rx, "closed").await;
    next_event(&mut rx, "connected").await;
    stop.cancel();
    assert!(handle.await.unwrap().is_ok());
}

#[tokio::test]
async fn garbage_from_the_peer_is_answered_and_the_session_goes_on() {
    let pki = TestPki::generate();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = fake_control_plane(&pki, Behaviour::Garbage, tx).await;
    let state = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cfg = config_for(&pki, port, state.path());
    let s = stop.clone();
    let handle = tokio::spawn(async move { agent::run(cfg, &NoJobs, s).await });
    next_event(&mut rx, "connected").await;
    let seen = next_event(&mut rx, "protocol_error: malformed message").await;
    let seen2 = next_event(
        &mut rx,
        "protocol_error: malformed message: unknown variant `self_destruct`",
    )
    .await;
    let seen3 = next_event(
        &mut rx,
        "protocol_error: unexpected binary frame of 3 bytes",
    )
    .await;
    // Still alive: heartbeats keep coming after the garbage.
    next_event(&mut rx, "heartbeat").await;
    next_event(&mut rx, "heartbeat").await;
    assert!(
        !handle.is_finished(),
        "agent stopped: {seen:?} {seen2:?} {seen3:?}"
    );
    stop.cancel();
    assert!(handle.await.unwrap().is_ok());
}

#[tokio::test]
async fn refused_protocol_version_stops_the_agent_for_good() {
    let pki = TestPki::generate();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = fake_control_plane(&pki, Behaviour::RefuseVersion, tx).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config_for(&pki, port, state.path());
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        agent::run(cfg, &NoJobs, CancellationToken::new()),
    )
    .await
    .expect("agent kept retrying a refused version");
    let Err(agent::AgentError::Refused(msg)) = result else {
        panic!("expected a refusal, got {result:?}")
    };
    assert_eq!(
        msg,
        "control plane refused the agent (VersionRefused): protocol version 1 is not supported; this control plane speaks 2"
    );
    next_event(&mut rx, "refused").await;
    // Exactly one attempt: no hammering.
    assert!(rx.try_recv().is_err());
}
