//! Remote management through the console API, end to end: the real broker,
//! the real control plane, real agents (in-process, and the binary where a
//! process must exit or die). Connection tests name the failing step;
//! pause/resume/drain; restart; log level; diagnostics without secrets;
//! the audit log; agent states (a killed agent is gone within two
//! heartbeat intervals); `/metrics`.
//!
//! The test control plane heartbeats every 1 s (timeout 3 s).

mod common;

use common::control_plane::{CONSOLE_TOKEN, GROUP, PASSWORD, WAIT};
use common::e2e::{E2E_WAIT, E2e, agents, numbered, produce};
use common::kafka;
use connectivity_agent::agent::Stopped;
use connectivity_agent::config::{self, Profile, SecretValues};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// An in-process agent whose allow-list also admits `*.invalid` (for the
/// DNS step), returning its task so the test sees how it stopped.
fn spawn_agent(
    t: &E2e,
    name: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<Stopped, connectivity_agent::agent::AgentError>>,
) {
    let state = t.dir.path().join(name);
    std::fs::create_dir_all(&state).unwrap();
    let text = t.profile_text(&state).replace(
        "agent_ALLOWED_ENDPOINTS=127.0.0.1:*,localhost:*",
        "agent_ALLOWED_ENDPOINTS=127.0.0.1:*,localhost:*,*.invalid:*",
    );
    let profile = Profile::parse(Path::new("InstallerProfile.cfg"), text).expect("profile");
    let secrets = SecretValues::from_profile(&profile);
    let config = config::validate(&profile, &secrets, &|_| None).expect("valid profile");
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { connectivity_agent::agent::runner::run_agent(config, s).await }),
    )
}

/// The agent id of the agent with state in `<dir>/<name>`, once connected.
async fn connected_id(t: &E2e, name: &str) -> String {
    let file = t.dir.path().join(name).join("agent-id");
    let deadline = Instant::now() + E2E_WAIT;
    loop {
        let id = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !id.is_empty()
            && t.cp.registry.get(&id).is_some_and(|a| {
                a.status.state == connectivity_control_plane::status::Health::Connected
            })
        {
            return id;
        }
        assert!(Instant::now() < deadline, "agent {name} did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn failing_step(report: &Value) -> (String, String) {
    let steps = report["report"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failed = steps
        .iter()
        .find(|s| s["status"] == "failed")
        .unwrap_or_else(|| panic!("no failed step: {report:#}"));
    (
        failed["step"].as_str().unwrap_or_default().to_owned(),
        failed["error"]["class"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The newest audit entry.
async fn last_audit(t: &E2e) -> Value {
    let (status, body) = t.cp.console("GET", "/api/v1/audit?limit=1", None).await;
    assert_eq!(status, 200, "{body}");
    body["entries"][0].clone()
}

#[tokio::test]
async fn connection_tests_name_the_failing_step_and_secrets_stay_out_of_answers_and_audit() {
    let started = Instant::now();
    let t = E2e::start().await;
    let (stop, task) = spawn_agent(&t, "tester");
    let id = connected_id(&t, "tester").await;
    let topic = kafka::unique_topic("mgmt-test");
    kafka::create_topic(&t.broker, &topic, 2).await;
    let ca = std::fs::read_to_string(&t.broker.ca_pem).unwrap();
    let other_ca = std::fs::read_to_string(&t.broker.other_ca_pem).unwrap();
    let body = |servers: &str, password: &str, ca: &str| {
        json!({
            "bootstrap_servers": servers, "topic": topic, "timeout_ms": 20000,
            "security": {"protocol": "SASL_SSL",
                         "sasl": {"mechanism": "PLAIN", "username": t.broker.sasl_user, "password": password},
                         "truststore": {"format": "pem", "data": ca}}
        })
    };

    // A good SASL_SSL endpoint, through one agent and through its group.
    let good = body(&t.broker.sasl_ssl, &t.broker.sasl_password, &ca);
    let (status, r) =
        t.cp.console(
            "POST",
            &format!("/api/v1/agents/{id}/test-connection"),
            Some(&good),
        )
        .await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    let steps: Vec<(&str, &str)> = r["report"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("allow_list", "passed"),
            ("dns", "passed"),
            ("tcp", "passed"),
            ("tls", "passed"),
            ("kafka", "passed")
        ],
        "{r:#}"
    );
    let tls = r["report"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "tls")
        .unwrap()
        .clone();
    assert!(
        !tls["certificates"].as_array().unwrap().is_empty(),
        "the chain the endpoint sent is shown: {tls:#}"
    );
    assert!(
        r["report"]["steps"][4]["detail"]
            .as_str()
            .unwrap()
            .contains('2'),
        "partition count: {r:#}"
    );
    assert!(
        !r.to_string().contains(&t.broker.sasl_password),
        "the SASL password is never echoed"
    );
    let audit = last_audit(&t).await;
    assert_eq!(
        (audit["who"].as_str(), audit["action"].as_str()),
        (
            Some("ops"),
            Some("POST /api/v1/agents/{id}/test-connection")
        )
    );
    assert_eq!(audit["target"], format!("agent:{id}"));
    assert_eq!(audit["ok"], true);
    assert_eq!(audit["params"]["security"]["sasl"]["password"], "******");
    assert_eq!(audit["params"]["security"]["truststore"]["data"], "******");
    assert!(audit["at"].as_str().unwrap().ends_with('Z'));
    let (status, r) =
        t.cp.console(
            "POST",
            &format!("/api/v1/groups/{GROUP}/test-connection"),
            Some(&good),
        )
        .await;
    assert_eq!(
        (status, r["ok"].as_bool(), r["agent_id"].as_str()),
        (200, Some(true), Some(id.as_str())),
        "{r:#}"
    );

    // Each fault names its step and class.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let cases = [
        (
            "wrong password",
            body(&t.broker.sasl_ssl, "not-the-password-4711", &ca),
            "kafka",
            "sasl",
        ),
        (
            "untrusted certificate",
            body(&t.broker.sasl_ssl, &t.broker.sasl_password, &other_ca),
            "tls",
            "tls",
        ),
        (
            "closed port",
            body(&closed, &t.broker.sasl_password, &ca),
            "tcp",
            "tcp",
        ),
        (
            "unknown host",
            body("no-such-host.invalid:9092", &t.broker.sasl_password, &ca),
            "dns",
            "dns",
        ),
    ];
    for (what, req, step, class) in cases {
        let (status, r) =
            t.cp.console(
                "POST",
                &format!("/api/v1/agents/{id}/test-connection"),
                Some(&req),
            )
            .await;
        assert_eq!(
            (status, r["ok"].as_bool()),
            (200, Some(false)),
            "{what}: {r:#}"
        );
        assert_eq!(
            failing_step(&r),
            (step.to_owned(), class.to_owned()),
            "{what}: {r:#}"
        );
        // The one-line message names the step and carries the error's text.
        let message = r["message"].as_str().unwrap();
        let prefix = format!("{step} step failed: ");
        assert!(
            message.starts_with(&prefix) && message.len() > prefix.len() + 10,
            "{what}: {r:#}"
        );
        assert!(
            !r.to_string().contains("not-the-password-4711"),
            "{what}: password echoed"
        );
        let audit = last_audit(&t).await;
        assert_eq!(
            (
                audit["ok"].as_bool(),
                audit["params"]["security"]["sasl"]["password"].as_str()
            ),
            (Some(false), Some("******")),
            "{what}"
        );
    }

    // Mistakes are told, and audited.
    let (status, r) =
        t.cp.console(
            "POST",
            "/api/v1/agents/no-such-agent/test-connection",
            Some(&good),
        )
        .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (
            404,
            Some("agent \"no-such-agent\" is not known to this control plane")
        )
    );
    let (status, r) =
        t.cp.console(
            "POST",
            "/api/v1/groups/OTHER_GROUP/test-connection",
            Some(&good),
        )
        .await;
    assert_eq!(status, 409, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("no agent of group \"OTHER_GROUP\" is connected"),
        "{r}"
    );
    let (status, r) =
        t.cp.console(
            "POST",
            &format!("/api/v1/agents/{id}/test-connection"),
            Some(&json!({"bootstrap_servers": "h:1", "timeout_ms": 0})),
        )
        .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("timeout_ms = 0: give 1 to 60000 ms"))
    );
    let masked = body(&t.broker.sasl_ssl, "******", &ca);
    let (status, r) =
        t.cp.console(
            "POST",
            &format!("/api/v1/agents/{id}/test-connection"),
            Some(&masked),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("holds the mask"),
        "{r}"
    );
    let audit_text = std::fs::read_to_string(t.cp.state_dir().join("audit.jsonl")).unwrap();
    assert!(audit_text.lines().count() >= 9, "{audit_text}");
    for secret in [
        t.broker.sasl_password.as_str(),
        "not-the-password-4711",
        "BEGIN CERTIFICATE",
    ] {
        assert!(
            !audit_text.contains(secret),
            "the audit file holds a secret ({secret})"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(t.cp.state_dir().join("audit.jsonl"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    stop.cancel();
    assert!(matches!(task.await.unwrap(), Ok(Stopped::Shutdown)));
    eprintln!("connection tests: {:?}", started.elapsed());
}

#[tokio::test]
async fn drain_restart_and_diagnostics_of_an_in_process_agent() {
    let started = Instant::now();
    let t = E2e::start().await;
    let (_stop, task) = spawn_agent(&t, "worker");
    let id = connected_id(&t, "worker").await;
    let topic = kafka::unique_topic("mgmt-drain");
    kafka::create_topic(&t.broker, &topic, 2).await;
    produce(&t.broker, &topic, &numbered(0, 100)).await;
    let mut job = t.job("drained", &topic);
    // A SASL_SSL job, so the diagnostics bundle has secrets to leave out.
    job["spec"]["bootstrap_servers"] = t.broker.sasl_ssl.clone().into();
    job["spec"]["security"] = json!({
        "protocol": "SASL_SSL",
        "sasl": {"mechanism": "PLAIN", "username": t.broker.sasl_user, "password": t.broker.sasl_password},
        "truststore": {"format": "jks", "data": b64(&std::fs::read(&t.broker.truststore_jks).unwrap()), "password": t.broker.truststore_password}
    });
    t.create_job(&job).await;
    t.wait_records("drained", 100).await;
    let view = t
        .wait_job("drained", "lag 0 on both partitions", |v| {
            v["partitions"].as_array().is_some_and(|p| {
                p.len() == 2
                    && p.iter()
                        .all(|p| p["lag"] == 0 && p["agent_id"] == id.as_str())
            })
        })
        .await;
    assert!(
        view["records_per_sec"].is_number() && agents(&view)[0]["records_per_sec"].is_number(),
        "{view:#}"
    );

    // Pause and resume (audited), then drain: answered once the agent
    // reports the job stopped; the job is left paused.
    let (status, v) =
        t.cp.console("POST", "/api/v1/jobs/drained/pause", None)
            .await;
    assert_eq!(
        (status, v["definition"]["paused"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(
        last_audit(&t).await["action"],
        "POST /api/v1/jobs/{id}/pause"
    );
    let (status, _) =
        t.cp.console("POST", "/api/v1/jobs/drained/resume", None)
            .await;
    assert_eq!(status, 200);
    t.wait_job("drained", "running again", |v| {
        agents(v).iter().any(|a| a["phase"] == "running")
    })
    .await;
    produce(&t.broker, &topic, &numbered(100, 20)).await;
    t.wait_records("drained", 120).await;
    let (status, r) =
        t.cp.console(
            "POST",
            "/api/v1/jobs/drained/drain",
            Some(&json!({"timeout_ms": 30000})),
        )
        .await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["agents"][0]["agent_id"], id.as_str(), "{r:#}");
    assert_eq!(r["states"][0]["phase"], "stopped", "{r:#}");
    assert_eq!(r["job"]["definition"]["paused"], true);
    let audit = last_audit(&t).await;
    assert_eq!(
        (
            audit["action"].as_str(),
            audit["target"].as_str(),
            audit["ok"].as_bool()
        ),
        (
            Some("POST /api/v1/jobs/{id}/drain"),
            Some("job:drained"),
            Some(true)
        )
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = t.job_view("drained").await;
    assert_eq!(
        agents(&v)[0]["phase"],
        "stopped",
        "a drained job is not reassigned: {v:#}"
    );
    let (status, r) = t.cp.console("POST", "/api/v1/jobs/nope/drain", None).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (404, Some("no job \"nope\""))
    );

    // Diagnostics: the bundle, with no secret anywhere.
    let (status, d) =
        t.cp.console("GET", &format!("/api/v1/agents/{id}/diagnostics"), None)
            .await;
    assert_eq!(status, 200, "{d:#}");
    assert_eq!(d["bundle"]["agent"]["id"], id.as_str(), "{d:#}");
    assert!(d["bundle"]["jobs"].is_array(), "{d:#}");
    let text = d.to_string();
    for secret in [
        PASSWORD,
        t.broker.sasl_password.as_str(),
        t.broker.truststore_password.as_str(),
        CONSOLE_TOKEN,
    ] {
        assert!(
            !text.contains(secret),
            "diagnostics hold a secret ({secret}): {d:#}"
        );
    }
    assert_eq!(
        last_audit(&t).await["action"],
        "GET /api/v1/agents/{id}/diagnostics"
    );

    // Restart: the agent answers, drains, and stops asking to be restarted.
    let (status, r) =
        t.cp.console("POST", &format!("/api/v1/agents/{id}/restart"), None)
            .await;
    assert_eq!((status, r["ok"].as_bool()), (200, Some(true)), "{r:#}");
    assert!(r["message"].as_str().unwrap().contains("75"), "{r}");
    let stopped = tokio::time::timeout(E2E_WAIT, task)
        .await
        .expect("agent stopped in time")
        .unwrap();
    assert!(
        matches!(stopped, Ok(Stopped::RestartRequested)),
        "{stopped:?}"
    );
    let registry = t.cp.registry.clone();
    common::control_plane::eventually("the session ended", || {
        registry
            .get(&id)
            .is_some_and(|a| a.status.state.as_str() != "draining")
    })
    .await;
    let a = t.cp.registry.get(&id).unwrap();
    assert_eq!(
        a.status.state.as_str(),
        "reconnecting",
        "after a goodbye the agent is expected back: {:?}",
        a.status
    );
    let (status, r) =
        t.cp.console("GET", &format!("/api/v1/agents/{id}/diagnostics"), None)
            .await;
    assert_eq!(status, 409, "{r}");
    assert!(
        r["error"].as_str().unwrap().starts_with(&format!(
            "agent {id:?} is not connected (state reconnecting: agent said goodbye"
        )),
        "{r}"
    );

    let (_, audit) = t.cp.console("GET", "/api/v1/audit?limit=50", None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "POST /api/v1/jobs",
        "POST /api/v1/jobs/{id}/resume",
        "POST /api/v1/agents/{id}/restart",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert_eq!(
        actions[0], "GET /api/v1/agents/{id}/diagnostics",
        "newest first"
    );
    let (status, _) = t.cp.console("GET", "/api/v1/audit?limit=0", None).await;
    assert_eq!(status, 400);

    // Metrics, behind the console token.
    let resp =
        t.cp.http()
            .get(format!("{}/metrics", t.cp.base_url()))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let text = t.cp.metrics().await;
    for needle in [
        "control_plane_agents{state=\"reconnecting\"} 1",
        "control_plane_sessions_opened_total 1",
        "control_plane_records_delivered_total{job=\"drained\"} 120",
        "control_plane_delivery_latency_seconds_count{job=\"drained\"}",
        "control_plane_commands_total{command=\"restart\",result=\"ok\"} 1",
        "control_plane_sink_errors_total{job=\"drained\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    eprintln!("drain/restart/diagnostics: {:?}", started.elapsed());
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn log_level_of_the_binary_and_a_killed_agent_is_gone_within_two_heartbeats() {
    let started = Instant::now();
    let t = E2e::start().await;
    let mut child = t.spawn_agent_binary("bin-agent");
    t.wait_binary_connected(&mut child, "bin-agent", None).await;
    let id = std::fs::read_to_string(t.dir.path().join("bin-agent").join("agent-id"))
        .unwrap()
        .trim()
        .to_owned();

    let (status, r) =
        t.cp.console(
            "PUT",
            &format!("/api/v1/agents/{id}/log-level"),
            Some(&json!({"level": "debug"})),
        )
        .await;
    assert_eq!((status, r["ok"].as_bool()), (200, Some(true)), "{r:#}");
    assert_eq!(r["message"], "log level is now debug");
    let audit = last_audit(&t).await;
    assert_eq!(
        (audit["params"]["level"].as_str(), audit["ok"].as_bool()),
        (Some("debug"), Some(true))
    );
    let (status, r) =
        t.cp.console(
            "PUT",
            &format!("/api/v1/agents/{id}/log-level"),
            Some(&json!({"level": "loud"})),
        )
        .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (
            400,
            Some("level \"loud\" is not a log level; use one of error, warn, info, debug, trace")
        )
    );
    assert_eq!(last_audit(&t).await["ok"], false);

    // SIGKILL: no goodbye. Gone within two heartbeat intervals (2 s) of
    // the last message.
    let agent = t.cp.registry.get(&id).unwrap();
    assert_eq!(agent.status.state.as_str(), "connected");
    child.kill().unwrap();
    let _ = child.wait();
    let killed = std::time::SystemTime::now();
    let deadline = Instant::now() + WAIT;
    let gone = loop {
        let (_, a) =
            t.cp.console("GET", &format!("/api/v1/agents/{id}"), None)
                .await;
        if a["status"]["state"] == "gone" {
            break a;
        }
        assert!(Instant::now() < deadline, "not gone: {a:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = t.cp.registry.get(&id).unwrap();
    let after_last = std::time::SystemTime::now()
        .duration_since(a.last_seen)
        .unwrap();
    assert!(
        after_last < Duration::from_millis(2000 + 500),
        "gone {after_last:?} after its last message: {gone:#}"
    );
    eprintln!(
        "gone {:?} after the kill, {after_last:?} after its last message: {}",
        killed.elapsed().unwrap(),
        gone["status"]["reason"]
    );
    eprintln!("log level / gone: {:?}", started.elapsed());
}
