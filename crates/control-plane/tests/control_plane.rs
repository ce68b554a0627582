//! The reference control plane end to end: real TLS with a test CA, a real
//! WebSocket client speaking the protocol, real HTTPS to the console API and
//! the token endpoint, and the binary itself for config errors.

mod common;

use common::control_plane::{
    self as cp, CLIENT_ID, CLIENT_SECRET, CONSOLE_TOKEN, GROUP, OTHER_GROUP, OTHER_PASSWORD,
    OTHER_USER, Options, PASSWORD, TestControlPlane, USER, WAIT, basic, expect_close, hello, recv,
    recv_any, send,
};
use connectivity_control_plane::{
    BatchOrigin, BatchSink, ControlPlaneConfig, SinkError, Submitted,
};
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::{
    AgentMessage, Batch, ControlMessage, MAX_CONTROL_MESSAGE_BYTES, RejectReason,
};
use futures_util::SinkExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn hello_is_welcomed_and_the_agent_is_listed_with_its_host_facts() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, welcome) = cp.connect_agent("agent-1").await;
    let ControlMessage::Welcome {
        session_id,
        heartbeat_interval_ms,
        heartbeat_timeout_ms,
        protocol_version,
    } = welcome
    else {
        unreachable!()
    };
    assert_eq!(
        (
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            protocol_version
        ),
        (1000, 3000, 1)
    );
    assert_eq!(session_id.len(), 36, "a uuid: {session_id}");

    let (status, agent) = cp.console_get("/api/v1/agents/agent-1").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["id"], "agent-1");
    assert_eq!(agent["name"], "agent-1-name");
    assert_eq!(agent["group"], GROUP);
    assert_eq!(agent["version"], "0.1.0-test");
    assert_eq!(agent["state"], "connected");
    assert_eq!(agent["session_id"], session_id.as_str());
    assert_eq!(
        agent["host"],
        serde_json::json!({"hostname": "test-host", "os": "linux", "arch": "x86_64"})
    );
    assert_eq!(agent["proxy"], "proxy.example:3128");
    assert_eq!(agent["principal"], "user \"agent\"");
    assert!(
        agent["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{agent}"
    );
    assert!(
        agent["connected_since"].as_str().unwrap().ends_with('Z'),
        "{agent}"
    );
    assert!(agent["last_seen"].is_string());

    let (_, list) = cp
        .console_get(&format!("/api/v1/agents?group={GROUP}"))
        .await;
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
    let (_, list) = cp
        .console_get(&format!("/api/v1/agents?group={OTHER_GROUP}"))
        .await;
    assert_eq!(list["agents"], serde_json::json!([]));
    let (_, groups) = cp.console_get("/api/v1/groups").await;
    let states = |connected: usize| serde_json::json!({"connected": connected, "draining": 0, "reconnecting": 0, "auth_failing": 0, "version_refused": 0, "refused": 0, "gone": 0});
    assert_eq!(
        groups,
        serde_json::json!({"groups": [
            {"id": GROUP, "agents": {"total": 1, "connected": 1, "disconnected": 0, "states": states(1)}},
            {"id": OTHER_GROUP, "agents": {"total": 0, "connected": 0, "disconnected": 0, "states": states(0)}},
        ]})
    );
    assert_eq!(
        (
            agent["status"]["state"].as_str(),
            agent["uptime_secs"].as_u64()
        ),
        (Some("connected"), Some(0)),
        "{agent}"
    );

    // Heartbeats arrive on the configured interval.
    assert!(matches!(
        recv_any(&mut ws).await,
        ControlMessage::Heartbeat { seq: 1 }
    ));

    // Goodbye closes cleanly and the agent stays listed, disconnected.
    send(
        &mut ws,
        &AgentMessage::Goodbye {
            reason: "restart".into(),
        },
    )
    .await;
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    let registry = cp.registry.clone();
    cp::eventually("agent disconnected", || {
        registry
            .get("agent-1")
            .is_some_and(|a| a.disconnect_reason.is_some())
    })
    .await;
    let (_, agent) = cp.console_get("/api/v1/agents/agent-1").await;
    assert_eq!(agent["state"], "disconnected");
    assert_eq!(agent["disconnect_reason"], "agent said goodbye: restart");
    assert_eq!(
        agent["status"]["state"], "reconnecting",
        "a goodbye is a restart for the first 60 s: {agent}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn bad_or_missing_credentials_get_401_json_before_the_upgrade() {
    let cp = TestControlPlane::start(Options::default()).await;
    for (auth, message) in [
        (Some(basic(USER, "wrong")), "invalid user name or password"),
        (
            Some(basic("nobody", PASSWORD)),
            "invalid user name or password",
        ),
        (
            Some("Bearer not-a-token".to_string()),
            "invalid or expired bearer token; request a new one from the token endpoint",
        ),
        (
            None,
            "missing Authorization header; send HTTP Basic credentials or a bearer token from /oauth2/v1/token",
        ),
    ] {
        let err = cp
            .connect(auth.as_deref())
            .await
            .expect_err("must be refused");
        let tungstenite::Error::Http(resp) = err else {
            panic!("expected an HTTP error, got {err}")
        };
        assert_eq!(resp.status(), 401);
        let body: Value =
            serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json body");
        assert_eq!(body, serde_json::json!({ "error": message }));
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    cp.stop().await;
}

/// Sends `hello` and expects a `rejected` with `reason` and `message`, then a close.
async fn expect_rejected(
    cp: &TestControlPlane,
    auth: &str,
    hello: connectivity_protocol::Hello,
    reason: RejectReason,
    message: &str,
) {
    let mut ws = cp.connect(Some(auth)).await.expect("connect");
    send(&mut ws, &AgentMessage::Hello(hello)).await;
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::Rejected {
            reason,
            message: message.into()
        }
    );
    assert_eq!(expect_close(&mut ws).await.0, 1008);
}

#[tokio::test]
async fn hellos_that_cannot_be_served_are_rejected_with_the_reason() {
    let cp = TestControlPlane::start(Options::default()).await;
    let agent = basic(USER, PASSWORD);
    expect_rejected(
        &cp,
        &agent,
        hello("a", "NO_SUCH_GROUP"),
        RejectReason::UnknownGroup,
        "agent group \"NO_SUCH_GROUP\" does not exist; create it in the control plane config",
    )
    .await;
    let mut old = hello("a", GROUP);
    old.protocol_version = 99;
    expect_rejected(
        &cp,
        &agent,
        old,
        RejectReason::VersionRefused,
        "protocol version 99 is not supported; this control plane speaks 1",
    )
    .await;
    // Rejected agents are remembered with the reason, so the console can
    // say why they are not connected.
    let (_, a) = cp.console_get("/api/v1/agents/a").await;
    assert_eq!(
        (
            a["state"].as_str(),
            a["status"]["state"].as_str(),
            a["sessions"].as_u64()
        ),
        (Some("disconnected"), Some("version_refused"), Some(0)),
        "{a}"
    );
    assert!(
        a["status"]["reason"]
            .as_str()
            .unwrap()
            .ends_with("protocol version 99 is not supported; this control plane speaks 1"),
        "{a}"
    );
    expect_rejected(
        &cp,
        &basic(OTHER_USER, OTHER_PASSWORD),
        hello("a", GROUP),
        RejectReason::Forbidden,
        "user \"other\" may not join agent group \"PRIVATE_GROUP\"; add the group to its groups in the control plane config",
    )
    .await;
    let (_, a) = cp.console_get("/api/v1/agents/a").await;
    assert_eq!(a["status"]["state"], "refused", "{a}");
    assert!(
        a["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("may not join agent group"),
        "{a}"
    );
    assert_eq!(cp.registry.len(), 1);
    cp.stop().await;
}

#[tokio::test]
async fn first_message_must_be_a_hello() {
    let cp = TestControlPlane::start(Options::default()).await;
    let mut ws = cp.connect(Some(&basic(USER, PASSWORD))).await.unwrap();
    send(&mut ws, &AgentMessage::Heartbeat { seq: 1 }).await;
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: "the first message must be hello, not heartbeat".into()
        }
    );
    assert_eq!(expect_close(&mut ws).await, (1002, "expected hello".into()));
    cp.stop().await;
}

#[tokio::test]
async fn bad_frames_get_a_protocol_error_and_the_session_goes_on() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, _) = cp.connect_agent("agent-pe").await;

    ws.send(Message::text("{not json")).await.unwrap();
    let ControlMessage::ProtocolError { message } = recv(&mut ws).await else {
        panic!()
    };
    assert!(
        message.starts_with("malformed message: key must be a string"),
        "{message}"
    );

    ws.send(Message::text(r#"{"type":"launch_missiles"}"#))
        .await
        .unwrap();
    let ControlMessage::ProtocolError { message } = recv(&mut ws).await else {
        panic!()
    };
    assert!(
        message.starts_with(
            "malformed message: unknown variant `launch_missiles`, expected one of `hello`"
        ),
        "{message}"
    );

    let big = format!(
        "{{\"type\":\"heartbeat\",\"seq\":1,\"pad\":\"{}\"}}",
        "x".repeat(MAX_CONTROL_MESSAGE_BYTES)
    );
    let size = big.len();
    ws.send(Message::text(big)).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: format!(
                "message of {size} bytes exceeds the limit of {MAX_CONTROL_MESSAGE_BYTES} bytes"
            )
        }
    );

    ws.send(Message::binary(b"XXXX".to_vec())).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: "batch frame does not start with the magic bytes \"CAB1\"".into()
        }
    );

    send(&mut ws, &AgentMessage::Hello(hello("agent-pe", GROUP))).await;
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: "hello was already received; this session is established".into()
        }
    );

    // Still alive: a valid heartbeat is taken and the agent stays connected.
    send(&mut ws, &AgentMessage::Heartbeat { seq: 7 }).await;
    assert!(matches!(
        recv_any(&mut ws).await,
        ControlMessage::Heartbeat { .. }
    ));
    assert_eq!(
        cp.console_get("/api/v1/agents/agent-pe").await.1["state"],
        "connected"
    );
    drop(ws); // a closed socket ends the session at once
    cp.stop().await;
}

#[tokio::test]
async fn ten_protocol_errors_in_a_row_close_the_session() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, _) = cp.connect_agent("agent-spam").await;
    for _ in 0..10 {
        ws.send(Message::text("nope")).await.unwrap();
    }
    for _ in 0..10 {
        assert!(matches!(
            recv(&mut ws).await,
            ControlMessage::ProtocolError { .. }
        ));
    }
    assert_eq!(
        expect_close(&mut ws).await,
        (1008, "10 protocol errors in a row".into())
    );
    cp.stop().await;
}

#[tokio::test]
async fn a_silent_agent_is_declared_dead_after_the_heartbeat_timeout() {
    let cp = TestControlPlane::start(Options {
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 600,
        ..Options::default()
    })
    .await;
    let (_ws, _) = cp.connect_agent("agent-silent").await;
    // The client never reads or writes again; the control plane must notice.
    let deadline = tokio::time::Instant::now() + WAIT;
    let agent = loop {
        let (_, agent) = cp.console_get("/api/v1/agents/agent-silent").await;
        if agent["state"] == "disconnected" {
            break agent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected: {agent}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        agent["disconnect_reason"],
        "heartbeat timeout: nothing received for 600 ms"
    );
    cp.stop().await;
}

#[tokio::test]
async fn heartbeats_from_the_agent_keep_it_alive() {
    let cp = TestControlPlane::start(Options {
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 600,
        ..Options::default()
    })
    .await;
    let (mut ws, _) = cp.connect_agent("agent-alive").await;
    // Answer five of the control plane's heartbeats: well past the timeout.
    for seq in 1..=5 {
        assert!(matches!(
            recv_any(&mut ws).await,
            ControlMessage::Heartbeat { .. }
        ));
        send(&mut ws, &AgentMessage::Heartbeat { seq }).await;
    }
    assert_eq!(
        cp.console_get("/api/v1/agents/agent-alive").await.1["state"],
        "connected"
    );
    drop(ws); // a closed socket ends the session at once
    cp.stop().await;
}

#[tokio::test]
async fn reconnecting_agent_replaces_its_older_session() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut first, _) = cp.connect_agent("agent-re").await;
    let (second, welcome) = cp.connect_agent("agent-re").await;
    let ControlMessage::Welcome { session_id, .. } = welcome else {
        unreachable!()
    };
    assert_eq!(
        recv(&mut first).await,
        ControlMessage::Goodbye {
            reason: "replaced by a newer session of the same agent".into()
        }
    );
    assert_eq!(expect_close(&mut first).await.0, 1001);
    let (_, agents) = cp.console_get("/api/v1/agents").await;
    let agents = agents["agents"].as_array().unwrap().clone();
    assert_eq!(agents.len(), 1, "one agent, not two: {agents:?}");
    assert_eq!(agents[0]["state"], "connected");
    assert_eq!(agents[0]["session_id"], session_id.as_str());
    assert_eq!(agents[0]["sessions"], 2);
    drop(second); // a closed socket ends the session at once
    cp.stop().await;
}

#[tokio::test]
async fn console_api_needs_the_console_token() {
    let cp = TestControlPlane::start(Options::default()).await;
    let http = cp.http();
    let url = format!("{}/api/v1/agents", cp.base_url());
    for (req, message) in [
        (
            http.get(&url),
            "missing Authorization header; send \"Authorization: Bearer <console token>\"",
        ),
        (http.get(&url).bearer_auth("wrong"), "invalid console token"),
        (
            http.get(&url).basic_auth(USER, Some(PASSWORD)),
            "unsupported authorization scheme \"Basic\"; send \"Authorization: Bearer <console token>\"",
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"console\""
        );
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            serde_json::json!({ "error": message })
        );
    }
    let health = http
        .get(format!("{}/healthz", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (health.status().as_u16(), health.text().await.unwrap()),
        (200, "ok".to_string())
    );

    assert_eq!(
        cp.console_get("/api/v1/agents/nope").await,
        (
            404,
            serde_json::json!({"error": "agent \"nope\" is not known to this control plane"})
        )
    );
    assert_eq!(
        cp.console_get("/api/v1/agents?group=NOPE").await,
        (
            404,
            serde_json::json!({"error": "agent group \"NOPE\" does not exist"})
        )
    );
    assert_eq!(
        cp.console_get("/api/v1/jobs").await,
        (200, serde_json::json!({"jobs": []}))
    );
    let _ = CONSOLE_TOKEN;
    cp.stop().await;
}

async fn token_request(
    cp: &TestControlPlane,
    form: &[(&str, &str)],
    basic_auth: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = cp
        .http()
        .post(format!("{}/oauth2/v1/token", cp.base_url()))
        .form(form);
    if let Some((id, secret)) = basic_auth {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn oauth_token_opens_the_websocket_and_bad_requests_get_rfc6749_errors() {
    let cp = TestControlPlane::start(Options::default()).await;
    let grant = [("grant_type", "client_credentials")];
    let (status, body) = token_request(&cp, &grant, Some((CLIENT_ID, CLIENT_SECRET))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["token_type"].as_str(),
            body["expires_in"].as_u64(),
            body["scope"].as_str()
        ),
        (Some("Bearer"), Some(3600), Some("agent"))
    );
    let token = body["access_token"].as_str().unwrap().to_owned();

    let mut ws = cp
        .connect(Some(&format!("Bearer {token}")))
        .await
        .expect("bearer accepted");
    send(&mut ws, &AgentMessage::Hello(hello("agent-oauth", GROUP))).await;
    assert!(matches!(
        recv(&mut ws).await,
        ControlMessage::Welcome { .. }
    ));
    assert_eq!(
        cp.console_get("/api/v1/agents/agent-oauth").await.1["principal"],
        "oauth client \"oauth-agent\""
    );

    // Form-field credentials and an allowed scope work too.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("scope", "agent"),
    ];
    assert_eq!(token_request(&cp, &form, None).await.0, 200);

    let (status, body) = token_request(&cp, &grant, Some((CLIENT_ID, "wrong"))).await;
    assert_eq!(
        (status, body),
        (
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "invalid client id or secret"})
        )
    );
    let (status, body) = token_request(
        &cp,
        &[("grant_type", "password")],
        Some((CLIENT_ID, CLIENT_SECRET)),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unsupported_grant_type");
    let (status, body) = token_request(
        &cp,
        &[("grant_type", "client_credentials"), ("scope", "admin")],
        Some((CLIENT_ID, CLIENT_SECRET)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    assert_eq!(
        body["error_description"],
        "scope \"admin\" is not allowed for client \"oauth-agent\""
    );
    let (status, body) = token_request(&cp, &[("grant_type", "client_credentials")], None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    drop(ws); // a closed socket ends the session at once
    cp.stop().await;
}

/// Collects batches and acks them.
#[derive(Default)]
struct CollectingSink(Mutex<Vec<(BatchOrigin, Batch)>>);

impl BatchSink for CollectingSink {
    fn deliver<'a>(
        &'a self,
        origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.0.lock().unwrap().push((origin.clone(), batch));
            Ok(())
        })
    }
}

fn batch_frame(job: &str, seq: u64) -> Message {
    let mut w = BatchWriter::new(job, seq, "users", 256);
    w.push(
        0,
        41,
        Some(1_700_000_000_000),
        Some(b"k"),
        Some(br#"{"ID":1}"#),
        [],
    );
    Message::binary(w.finish())
}

#[tokio::test]
async fn batches_go_to_the_sink_and_are_acked_only_when_it_takes_them() {
    let sink = Arc::new(CollectingSink::default());
    let cp = TestControlPlane::start(Options {
        sink: Some(sink.clone()),
        ..Options::default()
    })
    .await;
    let (mut ws, _) = cp.connect_agent("agent-batch").await;
    ws.send(batch_frame("job-1", 7)).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::Ack {
            job_id: "job-1".into(),
            batch_seq: 7
        }
    );
    {
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.agent_id.as_str(), got[0].0.group.as_str()),
            ("agent-batch", GROUP)
        );
        assert_eq!(
            got[0].1.records[0].value.as_deref(),
            Some(&br#"{"ID":1}"#[..])
        );
    }
    drop(ws);
    cp.stop().await;

    // The jobs' delivery takes nothing for a job it does not know.
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, _) = cp.connect_agent("agent-nosink").await;
    ws.send(batch_frame("job-2", 1)).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: "batch 1 of job \"job-2\" was not acknowledged: batch 1 is for unknown job \"job-2\" (deleted or never created)".into()
        }
    );
    drop(ws);
    cp.stop().await;
}

/// Takes batches only when the test lets it, one `permit` each.
struct GatedSink {
    permits: tokio::sync::Semaphore,
    taken: Mutex<Vec<u64>>,
}

impl BatchSink for GatedSink {
    fn deliver<'a>(
        &'a self,
        _origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.permits.acquire().await.expect("open").forget();
            self.taken.lock().unwrap().push(batch.batch_seq);
            Ok(())
        })
    }
}

/// A kafka sink may wait for a publish answer from the very agent whose
/// batch it delivers: the session must go on sending commands and reading
/// answers meanwhile, and deliver the batches read meanwhile in order.
#[tokio::test]
async fn while_a_sink_works_commands_go_out_answers_come_in_and_batches_wait_their_turn() {
    let sink = Arc::new(GatedSink {
        permits: tokio::sync::Semaphore::new(0),
        taken: Mutex::default(),
    });
    let cp = TestControlPlane::start(Options {
        sink: Some(sink.clone()),
        ..Options::default()
    })
    .await;
    let (mut ws, _) = cp.connect_agent("agent-stuck").await;
    ws.send(batch_frame("job-1", 1)).await.unwrap();
    ws.send(batch_frame("job-1", 2)).await.unwrap();
    let asking = tokio::spawn({
        let (url, http) = (cp.base_url(), cp.http());
        async move {
            http.get(format!("{url}/api/v1/agents/agent-stuck/diagnostics"))
                .bearer_auth(cp::CONSOLE_TOKEN)
                .send()
                .await
                .expect("diagnostics request")
                .status()
                .as_u16()
        }
    });
    // Heartbeats keep coming either way: bound the wait for the command.
    let command = tokio::time::timeout(WAIT, recv(&mut ws)).await;
    let Ok(ControlMessage::Command { command_id, .. }) = command else {
        panic!("expected the diagnostics command while batch 1 is in the sink");
    };
    let answer = AgentMessage::CommandResult(connectivity_protocol::CommandResult {
        command_id,
        ok: true,
        message: "here".into(),
        data: None,
    });
    send(&mut ws, &answer).await;
    assert_eq!(asking.await.unwrap(), 200, "answered while the sink works");
    assert!(sink.taken.lock().unwrap().is_empty());
    sink.permits.add_permits(2);
    for seq in [1, 2] {
        assert_eq!(
            recv(&mut ws).await,
            ControlMessage::Ack {
                job_id: "job-1".into(),
                batch_seq: seq
            }
        );
    }
    assert_eq!(*sink.taken.lock().unwrap(), [1, 2]);
    drop(ws);
    cp.stop().await;
}

/// Takes every batch at once and delivers each when the test says so: it
/// passes each batch's sequence number on with what releases it.
struct HeldSink(tokio::sync::mpsc::UnboundedSender<(u64, tokio::sync::oneshot::Sender<()>)>);

impl BatchSink for HeldSink {
    fn deliver<'a>(
        &'a self,
        origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.submit(origin, batch).await.await })
    }

    fn submit<'a>(&'a self, _origin: &'a BatchOrigin, batch: Batch) -> BoxFuture<'a, Submitted> {
        let (release, released) = tokio::sync::oneshot::channel();
        let _ = self.0.send((batch.batch_seq, release));
        Box::pin(std::future::ready(Box::pin(async move {
            released
                .await
                .map_err(|_| SinkError::Failed("dropped".into()))
        }) as Submitted))
    }
}

#[tokio::test]
async fn the_session_reads_on_while_batches_are_delivered_and_acks_each_when_done() {
    let (handed, mut handed_over) = tokio::sync::mpsc::unbounded_channel();
    let cp = TestControlPlane::start(Options {
        sink: Some(Arc::new(HeldSink(handed))),
        ..Options::default()
    })
    .await;
    let (mut ws, _) = cp.connect_agent("agent-pipelined").await;
    for seq in 1..=3 {
        ws.send(batch_frame("job-1", seq)).await.unwrap();
    }
    // All three are handed over, in order, before any is delivered.
    let mut held = Vec::new();
    for _ in 0..3 {
        let next = tokio::time::timeout(WAIT, handed_over.recv()).await;
        held.push(next.expect("handed over in time").unwrap());
    }
    assert_eq!(held.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
    // Each is acked when it is delivered, not before.
    for seq in [2, 3, 1] {
        let at = held.iter().position(|(s, _)| *s == seq).unwrap();
        held.remove(at).1.send(()).unwrap();
        assert_eq!(
            recv(&mut ws).await,
            ControlMessage::Ack {
                job_id: "job-1".into(),
                batch_seq: seq
            }
        );
    }
    drop(ws);
    cp.stop().await;
}

#[tokio::test]
async fn graceful_stop_says_goodbye_to_every_session() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut a, _) = cp.connect_agent("agent-a").await;
    let (mut b, _) = cp.connect_agent("agent-b").await;
    let addr = cp.addr;
    let stopping = tokio::spawn(cp.stop());
    for ws in [&mut a, &mut b] {
        assert_eq!(
            recv(ws).await,
            ControlMessage::Goodbye {
                reason: "control plane shutting down".into()
            }
        );
        assert_eq!(
            expect_close(ws).await,
            (1001, "control plane shutting down".into())
        );
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stopped in time")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[test]
fn config_errors_name_file_key_and_fix() {
    let pki = common::tls::TestPki::generate();
    let path = pki.dir.path().join("control-plane.toml");
    let good = cp::config_text(&Options::default());

    std::fs::write(
        &path,
        format!(
            "lisen = \"0.0.0.0:1\"\n{}",
            good.replace("listen = \"127.0.0.1:0\"\n", "")
        ),
    )
    .unwrap();
    let err = ControlPlaneConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:1: lisen: unknown key\n  fix: remove it or correct the spelling; did you mean \"listen\"? (keys allowed here: ", path.display())),
        "{err}"
    );

    std::fs::write(&path, good.replace("server.pem", "missing.pem")).unwrap();
    let err = ControlPlaneConfig::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: tls.cert_file = \"{}\": cannot read the file: No such file or directory (os error 2)\n  fix: point tls.cert_file at a PEM certificate chain readable by the control plane",
            path.display(),
            pki.dir.path().join("missing.pem").display()
        )
    );

    // The binary prints the same message and exits 64 (EX_USAGE).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: invalid configuration: {err}")),
        "{stderr}"
    );
}

#[test]
fn hash_password_prints_a_hash_the_config_accepts() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    let hash = connectivity_control_plane::auth::PasswordHash::parse(phc.trim()).unwrap();
    assert!(hash.verify(b"s3cret") && !hash.verify(b"s3cret\n"));
}

// ---------------------------------------------------------------- poll jobs

const SECRETS: [&str; 5] = [
    "auth-t0ken-s3cret",
    "store-pa55",
    "BEGIN CERTIFICATE",
    "header-s3cret",
    "query-s3cret",
];

/// A job of `GROUP` with every kind of secret: SASL password, truststore
/// (data and password), webhook header and URL query.
fn secret_job(cp: &TestControlPlane, id: &str) -> Value {
    serde_json::json!({
        "spec": {
            "id": id, "bootstrap_servers": "localhost:9093", "topic": "USERS", "consumer_group": "oic",
            "security": {"protocol": "SASL_SSL",
                         "sasl": {"username": "tenancy/user/ocid1.streampool", "password": "auth-t0ken-s3cret"},
                         "truststore": {"format": "pem", "data": cp.pki.ca_pem, "password": "store-pa55"}}
        },
        "group": GROUP,
        "sink": {"kind": "webhook", "url": "https://hooks.example/users?key=query-s3cret", "headers": {"Authorization": "Bearer header-s3cret"}},
        "value_format": "connect_payload"
    })
}

fn plain_job(id: &str, group: &str) -> Value {
    serde_json::json!({
        "spec": {"id": id, "bootstrap_servers": "localhost:9093", "topic": "T", "consumer_group": "g", "security": {"protocol": "PLAINTEXT"}},
        "group": group,
        "sink": {"kind": "discard"}
    })
}

fn assert_no_secrets(what: &str, body: &Value) {
    let text = body.to_string();
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks {s:?}: {text}");
    }
}

/// The next non-heartbeat message must assign `id`; returns its spec.
async fn expect_assign(ws: &mut cp::Ws, id: &str) -> connectivity_protocol::JobSpec {
    match recv(ws).await {
        ControlMessage::AssignJob(spec) if spec.id == id => spec,
        other => panic!("expected assign_job {id}, got {other:?}"),
    }
}

async fn expect_revoke(ws: &mut cp::Ws, id: &str) {
    assert_eq!(
        recv(ws).await,
        ControlMessage::RevokeJob { job_id: id.into() }
    );
}

/// An agent of `OTHER_GROUP`.
async fn connect_other(cp: &TestControlPlane, agent_id: &str) -> cp::Ws {
    let mut ws = cp
        .connect(Some(&basic(OTHER_USER, OTHER_PASSWORD)))
        .await
        .unwrap();
    send(&mut ws, &AgentMessage::Hello(hello(agent_id, OTHER_GROUP))).await;
    assert!(matches!(
        recv(&mut ws).await,
        ControlMessage::Welcome { .. }
    ));
    ws
}

#[tokio::test]
async fn console_jobs_are_assigned_to_every_agent_of_their_group_and_never_show_secrets() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut a1, _) = cp.connect_agent("agent-1").await;
    let (mut a2, _) = cp.connect_agent("agent-2").await;
    let mut other = connect_other(&cp, "agent-o").await;

    let (status, created) = cp
        .console("POST", "/api/v1/jobs", Some(&secret_job(&cp, "users")))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_no_secrets("POST answer", &created);
    assert_eq!(created["id"], "users");
    assert_eq!(created["defined_in"], "console");
    assert_eq!(
        created["definition"]["spec"]["security"]["sasl"]["password"],
        "******"
    );
    assert_eq!(
        created["definition"]["sink"]["url"],
        "https://hooks.example/users?******"
    );
    assert_eq!(created["delivery"]["sink_state"], "ok");
    assert_eq!(created["agents"], serde_json::json!([]));
    // Both agents of the group run it, with the real secrets on the wire.
    for ws in [&mut a1, &mut a2] {
        let spec = expect_assign(ws, "users").await;
        assert_eq!(
            spec.security.sasl.as_ref().unwrap().password.expose(),
            "auth-t0ken-s3cret"
        );
    }

    let (status, body) = cp
        .console("POST", "/api/v1/jobs", Some(&secret_job(&cp, "users")))
        .await;
    assert_eq!(
        (status, body),
        (
            409,
            serde_json::json!({"error": "job \"users\" already exists; change it with PUT /api/v1/jobs/users"})
        )
    );
    let (status, list) = cp.console("GET", "/api/v1/jobs", None).await;
    assert_eq!((status, list["jobs"].as_array().unwrap().len()), (200, 1));
    assert_no_secrets("GET /api/v1/jobs", &list);

    // An edit of the redacted view keeps every stored secret.
    let mut edited = list["jobs"][0]["definition"].clone();
    edited["spec"]["max_records"] = 10.into();
    let (status, body) = cp.console("PUT", "/api/v1/jobs/users", Some(&edited)).await;
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("PUT answer", &body);
    for ws in [&mut a1, &mut a2] {
        let spec = expect_assign(ws, "users").await;
        assert_eq!(spec.max_records, 10);
        assert_eq!(
            spec.security.sasl.as_ref().unwrap().password.expose(),
            "auth-t0ken-s3cret"
        );
        assert_eq!(
            spec.security
                .truststore
                .as_ref()
                .unwrap()
                .password
                .as_ref()
                .unwrap()
                .expose(),
            "store-pa55"
        );
    }
    let (_, stored) = cp.console("GET", "/api/v1/jobs/users", None).await;
    assert_eq!(stored["definition"]["spec"]["max_records"], 10);
    let stored_def = cp.jobs.delivery().job("users").unwrap().definition;
    match &stored_def.sink {
        connectivity_control_plane::delivery::SinkConfig::Webhook(w) => {
            assert_eq!(w.url, "https://hooks.example/users?key=query-s3cret");
            assert_eq!(w.headers["Authorization"].expose(), "Bearer header-s3cret");
        }
        other => panic!("{other:?}"),
    }

    // Pause revokes it everywhere, resume assigns it again.
    let (status, body) = cp.console("POST", "/api/v1/jobs/users/pause", None).await;
    assert_eq!(
        (status, &body["definition"]["paused"]),
        (200, &Value::Bool(true))
    );
    for ws in [&mut a1, &mut a2] {
        expect_revoke(ws, "users").await;
    }
    let (status, _) = cp.console("POST", "/api/v1/jobs/users/resume", None).await;
    assert_eq!(status, 200);
    for ws in [&mut a1, &mut a2] {
        expect_assign(ws, "users").await;
    }

    // The other group's agent saw none of it: its first message is its own job.
    let (status, _) = cp
        .console(
            "POST",
            "/api/v1/jobs",
            Some(&plain_job("other-job", OTHER_GROUP)),
        )
        .await;
    assert_eq!(status, 201);
    expect_assign(&mut other, "other-job").await;

    let (status, body) = cp.console("DELETE", "/api/v1/jobs/users", None).await;
    assert_eq!((status, body), (204, Value::Null));
    for ws in [&mut a1, &mut a2] {
        expect_revoke(ws, "users").await;
    }
    let (status, body) = cp.console("GET", "/api/v1/jobs/users", None).await;
    assert_eq!(
        (status, body),
        (404, serde_json::json!({"error": "no job \"users\""}))
    );
    for (method, path) in [
        ("DELETE", "/api/v1/jobs/users"),
        ("POST", "/api/v1/jobs/users/pause"),
        ("PUT", "/api/v1/jobs/users"),
    ] {
        let (status, _) = cp
            .console(method, path, Some(&plain_job("users", GROUP)))
            .await;
        assert_eq!(status, 404, "{method} {path}");
    }
    drop((a1, a2, other));
    cp.stop().await;
}

#[tokio::test]
async fn bad_job_definitions_get_400_naming_every_field() {
    let cp = TestControlPlane::start(Options::default()).await;
    let fields = |body: &Value| -> Vec<String> {
        body["fields"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|f| {
                format!(
                    "{}: {}",
                    f["field"].as_str().unwrap(),
                    f["problem"].as_str().unwrap()
                )
            })
            .collect()
    };

    let mut bad = plain_job("bad job", "NO_GROUP");
    bad["spec"]["window"] = 0.into();
    bad["spec"]["topic"] = "".into();
    let (status, body) = cp.console("POST", "/api/v1/jobs", Some(&bad)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        fields(&body),
        vec![
            "spec.id: is not a valid job id",
            "spec.topic: is empty",
            "spec.window: is out of range",
            "group: is not an agent group of this control plane",
        ]
    );
    assert!(body["error"].as_str().unwrap().starts_with("invalid job definition: spec.id = \"bad job\": is not a valid job id; fix: use 1 to 128 letters"), "{body}");
    assert_eq!(
        body["fields"][3]["fix"],
        "use one of: PRIVATE_GROUP, OTHER_GROUP (groups are defined in control-plane.toml)"
    );

    let mut typo = plain_job("j", GROUP);
    typo["spec"]["max_record"] = 5.into();
    let (status, body) = cp.console("POST", "/api/v1/jobs", Some(&typo)).await;
    assert_eq!(
        (status, fields(&body)),
        (400, vec!["spec.max_record: is not a known key".to_string()])
    );
    assert!(
        body["fields"][0]["fix"]
            .as_str()
            .unwrap()
            .starts_with("remove it or correct the spelling; did you mean \"max_records\"?"),
        "{body}"
    );

    // A new job cannot hold the mask; a secret is never echoed.
    let mut masked = secret_job(&cp, "masked");
    masked["spec"]["security"]["sasl"]["password"] = "******".into();
    let (status, body) = cp.console("POST", "/api/v1/jobs", Some(&masked)).await;
    assert_eq!(
        (status, fields(&body)),
        (
            400,
            vec!["spec.security.sasl.password: holds the mask instead of a value".to_string()]
        )
    );

    // The truststore is read as the agent will read it.
    let mut garbage = secret_job(&cp, "ts");
    garbage["spec"]["security"]["truststore"] = serde_json::json!({"format": "jks", "data": "bm90IGEga2V5c3RvcmU=", "password": "store-pa55"});
    let (status, body) = cp.console("POST", "/api/v1/jobs", Some(&garbage)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), vec!["spec.security.truststore: truststore is not a JKS keystore (it does not start with the JKS magic bytes FEEDFEED)".to_string()]);
    assert_no_secrets("400 answer", &body);

    let (status, body) = cp
        .console("PUT", "/api/v1/jobs/other", Some(&plain_job("j", GROUP)))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        fields(&body),
        vec!["spec.id: differs from the job in the URL (\"other\")".to_string()]
    );

    let resp = cp
        .http()
        .post(format!("{}/api/v1/jobs", cp.base_url()))
        .bearer_auth(CONSOLE_TOKEN)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid job definition: body: is not JSON (key must be a string"),
        "{body}"
    );

    // Two JSONL jobs cannot share a file.
    let out = cp.pki.dir.path().join("out.jsonl");
    let jsonl = |id: &str| {
        let mut j = plain_job(id, GROUP);
        j["sink"] = serde_json::json!({"kind": "jsonl", "path": out});
        j
    };
    assert_eq!(
        cp.console("POST", "/api/v1/jobs", Some(&jsonl("first")))
            .await
            .0,
        201
    );
    let (status, body) = cp
        .console("POST", "/api/v1/jobs", Some(&jsonl("second")))
        .await;
    assert_eq!(
        (status, fields(&body)),
        (
            409,
            vec!["sink.path: is already the file of job \"first\"".to_string()]
        )
    );

    // Without the console token: 401.
    let resp = cp
        .http()
        .get(format!("{}/api/v1/jobs", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    cp.stop().await;
}

#[tokio::test]
async fn job_states_are_shown_per_agent_and_stray_jobs_are_revoked() {
    use connectivity_protocol::job::{ErrorClass, JobError, JobPhase, JobState, PartitionState};
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, _) = cp.connect_agent("agent-s").await;
    assert_eq!(
        cp.console("POST", "/api/v1/jobs", Some(&plain_job("j1", GROUP)))
            .await
            .0,
        201
    );
    expect_assign(&mut ws, "j1").await;
    let state = JobState {
        job_id: "j1".into(),
        phase: JobPhase::Failed,
        error: Some(JobError {
            class: ErrorClass::Sasl,
            message: "the stream endpoint localhost:9093 rejected user \"u\"".into(),
        }),
        partitions: vec![PartitionState {
            partition: 0,
            fetched: 12,
            relayed: 11,
            acked: 10,
            committed: 9,
            high_watermark: Some(20),
        }],
        records_relayed: 11,
        bytes_relayed: 1100,
        bytes_uncompressed: 1100,
        batches_acked: 3,
    };
    send(&mut ws, &AgentMessage::JobState(state)).await;
    let jobs = cp.jobs.clone();
    cp::eventually("job state recorded", || {
        jobs.view("j1").is_some_and(|v| !v.agents.is_empty())
    })
    .await;
    let (_, view) = cp.console("GET", "/api/v1/jobs/j1", None).await;
    let a = &view["agents"][0];
    assert_eq!(
        (
            a["agent_id"].as_str(),
            a["agent_name"].as_str(),
            a["agent_state"].as_str()
        ),
        (Some("agent-s"), Some("agent-s-name"), Some("connected"))
    );
    assert_eq!(a["phase"], "failed");
    assert_eq!(
        a["error"],
        serde_json::json!({"class": "sasl", "message": "the stream endpoint localhost:9093 rejected user \"u\""})
    );
    assert_eq!(
        a["partitions"],
        serde_json::json!([{"partition": 0, "fetched": 12, "relayed": 11, "acked": 10, "committed": 9, "high_watermark": 20}])
    );
    assert_eq!(
        (a["records_relayed"].as_u64(), a["batches_acked"].as_u64()),
        (Some(11), Some(3))
    );
    assert!(a["reported_at"].as_str().unwrap().ends_with('Z'));
    let (_, agent) = cp.console("GET", "/api/v1/agents/agent-s", None).await;
    assert_eq!(
        agent["jobs"],
        serde_json::json!([{"job_id": "j1", "phase": "failed", "error": {"class": "sasl", "message": "the stream endpoint localhost:9093 rejected user \"u\""}}])
    );

    // A job the agent still runs but should not (deleted while it was away):
    // revoked once; its state is not kept.
    let ghost = JobState {
        job_id: "ghost".into(),
        phase: JobPhase::Running,
        error: None,
        partitions: vec![],
        records_relayed: 0,
        bytes_relayed: 0,
        bytes_uncompressed: 0,
        batches_acked: 0,
    };
    send(&mut ws, &AgentMessage::JobState(ghost.clone())).await;
    expect_revoke(&mut ws, "ghost").await;
    send(&mut ws, &AgentMessage::JobState(ghost)).await;
    // A batch for a job of another group is refused, not acked.
    assert_eq!(
        cp.console(
            "POST",
            "/api/v1/jobs",
            Some(&plain_job("theirs", OTHER_GROUP))
        )
        .await
        .0,
        201
    );
    ws.send(batch_frame("theirs", 5)).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        ControlMessage::ProtocolError {
            message: "batch 5 of job \"theirs\" was not acknowledged: the job belongs to agent group \"OTHER_GROUP\", not to this agent's group \"PRIVATE_GROUP\"".into()
        }
    );
    assert_eq!(cp.console("GET", "/api/v1/jobs/ghost", None).await.0, 404);

    // Deleting the job forgets its states.
    assert_eq!(cp.console("DELETE", "/api/v1/jobs/j1", None).await.0, 204);
    expect_revoke(&mut ws, "j1").await;
    let (_, agent) = cp.console("GET", "/api/v1/agents/agent-s", None).await;
    assert_eq!(agent["jobs"], serde_json::json!([]));
    drop(ws);
    cp.stop().await;
}

fn config_jobs_toml() -> String {
    format!(
        r#"
[[jobs]]
id = "cfg-job"
group = "{GROUP}"
bootstrap_servers = "localhost:9093"
topic = "T"
consumer_group = "g"
start = {{ offsets = {{ 0 = 7 }} }}
security = {{ protocol = "SSL", truststore = {{ format = "pem", file = "ca.pem" }} }}
sink = {{ kind = "discard" }}

[[jobs]]
id = "cfg-paused"
group = "{GROUP}"
paused = true
bootstrap_servers = "localhost:9093"
topic = "T"
consumer_group = "g"
security = {{ protocol = "PLAINTEXT" }}
sink = {{ kind = "discard" }}

[[jobs]]
id = "cfg-other"
group = "{OTHER_GROUP}"
bootstrap_servers = "localhost:9093"
topic = "T"
consumer_group = "g"
security = {{ protocol = "PLAINTEXT" }}
sink = {{ kind = "discard" }}
"#
    )
}

#[tokio::test]
async fn config_jobs_are_loaded_and_console_jobs_survive_a_restart() {
    let cp = TestControlPlane::start(Options {
        extra_toml: config_jobs_toml(),
        ..Options::default()
    })
    .await;
    let (mut ws, _) = cp.connect_agent("agent-c").await;
    let spec = expect_assign(&mut ws, "cfg-job").await;
    assert_eq!(
        spec.security.truststore.as_ref().unwrap().data.expose(),
        cp.pki.ca_pem,
        "the file was read at load time"
    );
    assert_eq!(
        spec.start,
        connectivity_protocol::job::StartPosition::Offsets([(0, 7)].into())
    );
    // Neither the paused job nor the other group's came before the next one.
    assert_eq!(
        cp.console(
            "POST",
            "/api/v1/jobs",
            Some(&plain_job("made-in-console", GROUP))
        )
        .await
        .0,
        201
    );
    expect_assign(&mut ws, "made-in-console").await;
    drop(ws);

    let cp = cp.restart().await;
    let (status, list) = cp.console("GET", "/api/v1/jobs", None).await;
    assert_eq!(status, 200);
    let jobs: Vec<(String, String, bool)> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_owned(),
                j["defined_in"].as_str().unwrap().to_owned(),
                j["definition"]["paused"].as_bool().unwrap(),
            )
        })
        .collect();
    let expect = |id: &str, src: &str, paused: bool| (id.to_owned(), src.to_owned(), paused);
    assert_eq!(
        jobs,
        vec![
            expect("cfg-job", "config", false),
            expect("cfg-other", "config", false),
            expect("cfg-paused", "config", true),
            expect("made-in-console", "console", false)
        ]
    );
    let (mut ws, _) = cp.connect_agent("agent-c").await;
    let mut assigned = vec![
        expect_assign_any(&mut ws).await,
        expect_assign_any(&mut ws).await,
    ];
    assigned.sort();
    assert_eq!(assigned, vec!["cfg-job", "made-in-console"]);
    assert!(cp.state_dir().join("delivery.sqlite3").is_file());
    drop(ws);
    cp.stop().await;
}

async fn expect_assign_any(ws: &mut cp::Ws) -> String {
    match recv(ws).await {
        ControlMessage::AssignJob(spec) => spec.id,
        other => panic!("expected assign_job, got {other:?}"),
    }
}

#[test]
fn bad_config_jobs_exit_64_naming_each_field() {
    let pki = common::tls::TestPki::generate();
    let path = pki.dir.path().join("control-plane.toml");
    let jobs = format!(
        "[[jobs]]\nid = \"users\"\ngroup = \"{GROUP}\"\nbootstrap_servers = \"localhost\"\ntopic = \"T\"\nconsumer_group = \"g\"\nwindow = 0\nsecurity = {{ protocol = \"PLAINTEXT\" }}\nsink = {{ kind = \"discard\" }}\n"
    );
    std::fs::write(
        &path,
        cp::config_text(&Options {
            extra_toml: jobs.clone(),
            ..Options::default()
        }),
    )
    .unwrap();
    let err = ControlPlaneConfig::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: jobs[0]: job \"users\" has 2 problems:\n    jobs[0].bootstrap_servers = \"localhost\": is not a list of host:port; fix: give host:port[,host:port...], e.g. cell-1.streaming.eu-frankfurt-1.oci.oraclecloud.com:9092\n    jobs[0].window = \"0\": is out of range; fix: give 1 to 1024 batches in flight (default 128)\n  fix: correct each field named above; docs/CONTROL_PLANE.md lists every job field",
            path.display()
        )
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&err),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let typo = jobs
        .replace("window = 0", "windw = 4")
        .replace("\"localhost\"", "\"localhost:9092\"");
    std::fs::write(
        &path,
        cp::config_text(&Options {
            extra_toml: typo,
            ..Options::default()
        }),
    )
    .unwrap();
    let err = ControlPlaneConfig::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: jobs[0].windw: is not a known key\n  fix: remove it or correct the spelling; did you mean \"window\"?", path.display())), "{err}");

    let good = jobs
        .replace("window = 0", "window = 2")
        .replace("\"localhost\"", "\"localhost:9092\"");
    let dup = format!("{good}\n{good}");
    std::fs::write(
        &path,
        cp::config_text(&Options {
            extra_toml: dup,
            ..Options::default()
        }),
    )
    .unwrap();
    let err = ControlPlaneConfig::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: jobs[1].id = \"users\": is also the id of jobs[0]\n  fix: give each job its own id",
            path.display()
        )
    );
}

#[tokio::test]
async fn a_config_job_that_clashes_with_a_stored_job_is_a_config_error() {
    let cp = TestControlPlane::start(Options::default()).await;
    let out = cp.pki.dir.path().join("shared.jsonl");
    let mut console_job = plain_job("console-job", GROUP);
    console_job["sink"] = serde_json::json!({"kind": "jsonl", "path": out});
    assert_eq!(
        cp.console("POST", "/api/v1/jobs", Some(&console_job))
            .await
            .0,
        201
    );
    let pki = cp.stop_keeping_files().await;

    let jobs = format!(
        "[[jobs]]\nid = \"cfg\"\ngroup = \"{GROUP}\"\nbootstrap_servers = \"localhost:9092\"\ntopic = \"T\"\nconsumer_group = \"g\"\n\
         security = {{ protocol = \"PLAINTEXT\" }}\nsink = {{ kind = \"jsonl\", path = \"{}\" }}\n",
        out.display()
    );
    let path = pki.dir.path().join("control-plane.toml");
    std::fs::write(
        &path,
        cp::config_text(&Options {
            extra_toml: jobs,
            ..Options::default()
        }),
    )
    .unwrap();
    let config = ControlPlaneConfig::load(&path).expect("valid on its own");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = connectivity_control_plane::ControlPlane::start(
        config,
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .err()
    .expect("refused");
    let config_error = err
        .downcast_ref::<connectivity_control_plane::ConfigError>()
        .expect("a config error");
    assert_eq!(
        config_error.to_string(),
        format!(
            "{}: jobs[0].sink.path = \"{}\": is already the file of job \"console-job\"\n  fix: give each job its own file",
            path.display(),
            out.display()
        )
    );
    // The binary exits 64 with that message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("error: invalid configuration: {config_error}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_agent_whose_credentials_are_refused_shows_auth_failing_with_the_reason() {
    let cp = TestControlPlane::start(Options::default()).await;
    let (mut ws, _) = cp.connect_agent("agent-af").await;
    ws.close(None).await.expect("close");
    let registry = cp.registry.clone();
    cp::eventually("disconnected", || {
        registry
            .get("agent-af")
            .is_some_and(|a| a.disconnected_at.is_some())
    })
    .await;
    let refused = cp
        .connect(Some(&basic(USER, "rotated-away")))
        .await
        .expect_err("401");
    assert!(refused.to_string().contains("401"), "{refused}");
    let (_, list) = cp.console_get("/api/v1/agents").await;
    let a = &list["agents"][0];
    assert_eq!(a["status"]["state"], "auth_failing", "{list:#}");
    let reason = a["status"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("user \"agent\" refused 1 time(s) since ")
            && reason.ends_with("invalid user name or password"),
        "{reason}"
    );
    assert_eq!(list["auth_failures"][0]["principal"], "user \"agent\"");
    assert!(
        list["auth_failures"][0]["last_remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        !list.to_string().contains("rotated-away"),
        "the refused password is never shown"
    );
    // A successful login ends it.
    let (_ws, _) = cp.connect_agent("agent-af").await;
    let (_, list) = cp.console_get("/api/v1/agents").await;
    assert_eq!(
        (
            list["agents"][0]["status"]["state"].as_str(),
            list["auth_failures"].as_array().map(Vec::len)
        ),
        (Some("connected"), Some(0))
    );
    cp.stop().await;
}
