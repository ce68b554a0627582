//! The web console in a real browser (headless Debian `chromium` through
//! `chromedriver`), against a real control plane, a real agent (the
//! binary) and the real Kafka broker: what an operator does, click by
//! click, and what must never reach the page.
//!
//! `CONSOLE_SCREENSHOTS=docs/console cargo test --test console_browser`
//! also saves the screenshots shown in the README (docs/CONSOLE.md).

mod common;

use common::e2e::{E2e, numbered, produce};
use common::kafka::{self, path_str};
use common::webdriver::{Browser, ChromeDriver};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from)
}

/// Log in through the form, first with a wrong token.
async fn log_in(b: &Browser, base: &str) {
    b.goto(&format!("{base}/console/")).await;
    b.find("#token").await;
    b.screenshot_to(screenshots().as_deref(), "login").await;
    b.fill("#token", "not-the-token").await;
    b.click("#login-form button[type=submit]").await;
    b.wait_text("#login-error", "the refusal", |t| {
        t == "invalid console token"
    })
    .await;
    b.fill("#token", common::control_plane::CONSOLE_TOKEN).await;
    b.click("#login-form button[type=submit]").await;
    b.wait_text("main h1", "the overview", |t| t == "Overview")
        .await;
    b.wait_text("#who", "the token's name", |t| t == "signed in as ops")
        .await;
    b.wait_text("#live", "the event stream", |t| t == "live")
        .await;
}

/// A webhook receiver on loopback that takes 100 ms per batch (so that a
/// backlog takes a while and the lag can be watched falling); counts the
/// records it got and keeps the `Authorization` headers it saw.
struct SlowHook {
    url: String,
    records: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

async fn slow_hook() -> SlowHook {
    use axum::routing::post;
    let records = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (r, a) = (records.clone(), auth.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (r, a) = (r.clone(), a.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let n = v["records"].as_array().map_or(0, Vec::len);
                    if let Some(h) = headers.get("authorization").and_then(|h| h.to_str().ok()) {
                        a.lock().unwrap().push(h.to_owned());
                    }
                    r.fetch_add(n, Ordering::SeqCst);
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    SlowHook { url, records, auth }
}

/// Values of `#job-lag` seen until it is 0 (at most `within`).
async fn watch_lag_fall(b: &Browser, within: Duration) -> Vec<Option<i64>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let t = b.text("#job-lag").await.replace(',', "");
        let v = t.parse::<i64>().ok();
        if seen.last() != Some(&v) {
            seen.push(v);
        }
        if v == Some(0) && seen.iter().any(|x| x.is_some_and(|n| n > 0)) {
            return seen;
        }
        assert!(Instant::now() < deadline, "lag did not fall to 0: {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Everything of the page a script can read: its markup (inputs' values
/// included), the browser's storage and the cookies visible to scripts.
async fn page_contents(b: &Browser) -> String {
    b.execute(
        "const values = [...document.querySelectorAll('input, textarea, select')].map(e => e.value);
         const storage = s => JSON.stringify(Object.fromEntries(Object.keys(s).map(k => [k, s.getItem(k)])));
         return [document.documentElement.outerHTML, values.join('\\n'), storage(localStorage),
                 storage(sessionStorage), document.cookie].join('\\n');",
        vec![],
    )
    .await
    .as_str()
    .unwrap_or("")
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_agents_and_jobs_from_the_console() {
    let t = E2e::start().await;
    let driver = ChromeDriver::start().await;
    let b = driver.browser(WIDTH, HEIGHT).await;
    let base = t.cp.base_url();
    let shots = screenshots();
    let shots = shots.as_deref();

    // A job with webhook secrets exists already (made through the API), so
    // that its masked view reaches the page too.
    let hook_secret = "hook-header-secret-31337";
    let mut hook = t.job("hook-job", "HOOKS");
    hook["sink"] = json!({"kind": "webhook", "url": "https://hooks.example.com/in",
                          "headers": {"Authorization": format!("Bearer {hook_secret}")}});
    hook["paused"] = json!(true);
    t.create_job(&hook).await;

    log_in(&b, &base).await;

    // An agent connects; the agents view shows it without a reload.
    b.click("#nav a[href='#/agents']").await;
    b.wait_text("#agents-table", "no agent yet", |t| {
        t.contains("No agent has connected yet")
    })
    .await;
    let mut agent = t.spawn_agent_binary("agent-1");
    t.wait_binary_connected(&mut agent, "agent-1", None).await;
    b.wait_text("#agents-table", "the agent, connected", |t| {
        t.contains("agent-1") && t.contains("connected")
    })
    .await;

    // Records waiting in a topic.
    let topic = kafka::unique_topic("console");
    kafka::create_topic(&t.broker, &topic, 3).await;
    let first = numbered(0, 900);
    produce(&t.broker, &topic, &first).await;
    let receiver = slow_hook().await;
    let form_hook_secret = "form-hook-secret-2718";

    // The form: SASL_SSL with a JKS truststore uploaded, a webhook with a
    // secret header that takes 100 ms per batch of 5 records (so that the
    // lag takes a while to fall), and a wrong bootstrap server first.
    let broker = &t.broker;
    let id = "users-from-console";
    b.click("#nav a[href='#/jobs']").await;
    b.click("#new-job").await;
    b.fill("#job-id", id).await;
    b.fill("#job-bootstrap", "localhost").await;
    b.fill("#job-topic", &topic).await;
    b.fill("#job-cgroup", &kafka::unique_topic("console-group"))
        .await;
    b.select("#job-sec-protocol", "SASL_SSL").await;
    b.select("#job-sec-mech", "SCRAM-SHA-256").await;
    b.fill("#job-sec-user", &broker.sasl_user).await;
    b.fill("#job-sec-pass", &broker.sasl_password).await;
    b.select("#job-sec-tsformat", "jks").await;
    let jks = std::fs::canonicalize(&broker.truststore_jks).unwrap();
    b.type_into(&b.find("#job-sec-tsfile").await, path_str(&jks))
        .await;
    b.fill("#job-sec-tspass", &broker.truststore_password).await;
    b.select("#job-sink-kind", "webhook").await;
    b.fill("#job-sink-url", &receiver.url).await;
    b.fill(
        "#job-sink-headers",
        &format!("Authorization: Bearer {form_hook_secret}"),
    )
    .await;
    b.click("details.card summary").await;
    b.fill("#job-max_records", "5").await;
    b.fill("#job-window", "1").await;
    b.click("#job-save").await;
    let err = b
        .wait_text("#err-job-bootstrap", "the field's error", |t| !t.is_empty())
        .await;
    assert!(err.contains("host:port"), "{err}");
    assert_eq!(
        b.focused_id().await,
        "job-bootstrap",
        "the first bad field has the focus"
    );
    b.screenshot_to(shots, "job-form-error").await;

    // Fixed, then tested through the group's agent before saving.
    b.fill("#job-bootstrap", &broker.sasl_ssl).await;
    b.click("#job-test").await;
    let report = b
        .wait_text("#test-report", "the test's steps", |t| {
            t.contains("passed") && t.contains("KAFKA")
        })
        .await;
    for step in ["DNS", "TCP", "TLS", "KAFKA"] {
        assert!(report.contains(step), "{step} in {report}");
    }
    assert!(!report.contains("failed"), "{report}");
    b.execute(
        "document.getElementById('job-test').scrollIntoView({block: 'start'})",
        vec![],
    )
    .await;
    b.screenshot_to(shots, "connection-test").await;
    b.click("#job-save").await;
    b.wait_text("main h1", "the job's page", |t| t.starts_with(id))
        .await;
    assert_eq!(b.text("#err-job-bootstrap").await, "");

    // Records flow and the lag falls to 0.
    let lags = watch_lag_fall(&b, Duration::from_secs(90)).await;
    b.wait_text("#job-delivered", "every record delivered", |t| t == "900")
        .await;
    b.wait_text("#job-state", "running", |t| t == "running")
        .await;
    assert_eq!(receiver.records.load(Ordering::SeqCst), 900);
    assert!(
        receiver
            .auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| *a == format!("Bearer {form_hook_secret}")),
        "the header typed into the form reached the webhook"
    );
    b.screenshot_to(shots, "job").await;
    eprintln!("lag seen on the page: {lags:?}");

    // Pause and resume.
    b.click("#job-pause").await;
    b.wait_text("#job-state", "paused", |t| t == "paused").await;
    b.wait_text("#job-outcome", "the outcome", |t| t.starts_with("Pause:"))
        .await;
    b.click("#job-resume").await;
    b.wait_text("#job-state", "running again", |t| t == "running")
        .await;
    produce(&t.broker, &topic, &numbered(900, 30)).await;
    b.wait_text("#job-delivered", "the new records", |t| t == "930")
        .await;

    // Edit: the stored secrets come back masked and are kept; the job
    // restarts with its new batch size and still logs in to the broker.
    b.click("#job-edit").await;
    b.find("#job-sec-pass").await;
    let masked = b
        .execute(
            "return ['job-sec-pass', 'job-sec-tspass'].map(id => document.getElementById(id).value)
               .concat([document.getElementById('job-sink-headers').value]);",
            vec![],
        )
        .await;
    assert_eq!(masked, json!(["******", "******", "Authorization: ******"]));
    b.click("details.card summary").await;
    b.fill("#job-max_records", "10").await;
    b.click("#job-save").await;
    b.wait_text("main h1", "the job's page", |t| t.starts_with(id))
        .await;
    let (_, view) =
        t.cp.console("GET", &format!("/api/v1/jobs/{id}"), None)
            .await;
    assert_eq!(view["definition"]["spec"]["max_records"], 10, "{view}");
    produce(&t.broker, &topic, &numbered(930, 20)).await;
    b.wait_text("#job-delivered", "records after the edit", |t| t == "950")
        .await;

    // The other views, as an operator sees them.
    b.click("#nav a[href='#/jobs']").await;
    b.wait_text("#jobs-table", "both jobs", |t| {
        t.contains(id) && t.contains("hook-job")
    })
    .await;
    b.screenshot_to(shots, "jobs").await;
    b.click("#nav a[href='#/overview']").await;
    b.wait_text("main", "the groups", |t| t.contains("PRIVATE_GROUP"))
        .await;
    b.screenshot_to(shots, "overview").await;
    b.click("#nav a[href='#/audit']").await;
    b.wait_text("#audit-table", "the job's creation", |t| {
        t.contains("POST /api/v1/jobs") && t.contains("ops")
    })
    .await;
    b.fill("#f-target", &format!("job:{id}")).await;
    b.wait_text("#audit-table", "filtered", |t| !t.contains("hook-job"))
        .await;
    b.screenshot_to(shots, "audit").await;
    b.click("#nav a[href='#/groups']").await;
    b.wait_text("main", "the config note", |t| {
        t.contains("control-plane.toml")
    })
    .await;

    // A connection test from the agent's page, step by step.
    b.click("#nav a[href='#/agents']").await;
    b.click("#agents-table a").await;
    b.wait_text("main h1", "the agent's page", |t| t.starts_with("agent-1"))
        .await;
    b.fill("#t-bootstrap", &broker.plaintext).await;
    b.fill("#t-topic", &topic).await;
    b.select("#t-sec-protocol", "PLAINTEXT").await;
    b.click("#agent-test").await;
    b.wait_text("#test-report", "the steps", |t| {
        t.contains("KAFKA") && t.contains("passed")
    })
    .await;
    b.wait_text("#command-outcome", "the outcome", |t| {
        t.starts_with("Connection test:")
    })
    .await;
    b.execute("window.scrollTo(0, 0)", vec![]).await;
    b.screenshot_to(shots, "agent").await;

    // Keyboard: every control of the job form is reached with Tab, and
    // every field has a label.
    b.goto(&format!("{base}/console/#/jobs/{id}/edit")).await;
    b.find("#job-form").await;
    let unlabelled = b
        .execute(
            "return [...document.querySelectorAll('#job-form input, #job-form select, #job-form textarea')]
               .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id || e.name);",
            vec![],
        )
        .await;
    assert_eq!(unlabelled, json!([]), "fields without a label");
    b.execute("for (const d of document.querySelectorAll('#job-form details')) d.open = true; document.getElementById('job-id').focus();", vec![])
        .await;
    let mut reached = Vec::new();
    for _ in 0..60 {
        b.tab().await;
        reached.push(b.focused_id().await);
    }
    for control in [
        "job-bootstrap",
        "job-sec-protocol",
        "job-sec-pass",
        "job-sec-tsfile",
        "job-sink-url",
        "job-sink-headers",
        "job-window",
        "job-save",
        "job-test",
    ] {
        assert!(
            reached.iter().any(|r| r == control),
            "{control} not reached by Tab: {reached:?}"
        );
    }

    // Nothing secret on any page the browser was shown, nor in its storage.
    let mut seen = String::new();
    for view in [
        format!("#/jobs/{id}/edit"),
        format!("#/jobs/{id}"),
        "#/jobs/hook-job/edit".to_owned(),
        "#/agents".to_owned(),
        "#/audit".to_owned(),
    ] {
        b.goto(&format!("{base}/console/{view}")).await;
        b.find("main h1").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        seen.push_str(&page_contents(&b).await);
    }
    assert!(seen.contains("******") && seen.contains(&broker.sasl_user));
    let jks_b64: String = {
        use base64::Engine;
        let data = std::fs::read(&broker.truststore_jks).unwrap();
        base64::engine::general_purpose::STANDARD.encode(data)[..40].to_owned()
    };
    for secret in [
        broker.sasl_password.as_str(),
        broker.truststore_password.as_str(),
        &jks_b64,
        common::control_plane::PASSWORD,
        common::control_plane::CONSOLE_TOKEN,
        hook_secret,
        form_hook_secret,
    ] {
        assert!(!seen.contains(secret), "{secret:?} reached the page");
    }

    // A narrow window still fits (no sideways scrolling of the page).
    b.set_window_size(420, 800).await;
    b.goto(&format!("{base}/console/#/jobs/{id}")).await;
    b.wait_text("main h1", "the job's page", |t| t.starts_with(id))
        .await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the page scrolls sideways by {overflow}"
    );
    b.screenshot_to(shots, "narrow").await;
    b.set_window_size(WIDTH, HEIGHT).await;

    // The agent is killed: it shows as gone.
    b.goto(&format!("{base}/console/#/agents")).await;
    agent.kill().expect("kill the agent");
    agent.wait().expect("wait for the agent");
    b.wait_text("#agents-table", "the agent gone", |t| t.contains("gone"))
        .await;

    // Requests the page did not make: the cookie without the CSRF token, a
    // forged token, and no cookie at all, are refused.
    let cookie = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "__Host-cp_session")
        .expect("the session cookie");
    assert_eq!(
        (
            cookie["httpOnly"].clone(),
            cookie["secure"].clone(),
            cookie["sameSite"].clone()
        ),
        (json!(true), json!(true), json!("Strict"))
    );
    let from_page = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             Promise.all([
               fetch(arguments[0], {method: 'POST'}).then(r => r.status),
               fetch(arguments[0], {method: 'POST', headers: {'X-CSRF-Token': 'forged'}}).then(r => r.status),
               fetch(arguments[0], {method: 'POST', credentials: 'omit'}).then(r => r.status),
             ]).then(done);",
            vec![json!(format!("/api/v1/jobs/{id}/pause"))],
        )
        .await;
    assert_eq!(from_page, json!([403, 403, 401]));
    let session = format!("__Host-cp_session={}", cookie["value"].as_str().unwrap());
    let pause = |cookie: Option<String>, csrf: Option<&'static str>| {
        let mut req = t.cp.http().post(format!("{base}/api/v1/jobs/{id}/pause"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    assert_eq!(
        pause(Some(session.clone()), Some("forged"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(pause(None, None).await.unwrap().status(), 401);
    let (_, view) =
        t.cp.console("GET", &format!("/api/v1/jobs/{id}"), None)
            .await;
    assert_eq!(
        view["definition"]["paused"], false,
        "none of them paused it"
    );

    // Log out: the session ends on the server too.
    b.click("#logout").await;
    b.wait_text("#login-error", "logged out", |t| t == "Logged out.")
        .await;
    assert_eq!(
        pause(Some(session), Some("forged")).await.unwrap().status(),
        401
    );
    let (status, _): (u16, Value) = {
        let r =
            t.cp.http()
                .get(format!("{base}/api/v1/agents"))
                .header(
                    "cookie",
                    format!("__Host-cp_session={}", cookie["value"].as_str().unwrap()),
                )
                .send()
                .await
                .unwrap();
        (r.status().as_u16(), Value::Null)
    };
    assert_eq!(status, 401);
    b.quit().await;
}

/// The stream browser (issue 19): an operator reads a private stream's
/// records by offsets and ranges through an agent; the connection's secrets
/// never reach the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_browses_a_streams_records() {
    use base64::Engine;
    let t = E2e::start().await;
    let broker = &t.broker;
    let topic = kafka::unique_topic("browse");
    kafka::create_topic(broker, &topic, 1).await;
    let jks = std::fs::read(&broker.truststore_jks).unwrap();
    let jks_b64 = base64::engine::general_purpose::STANDARD.encode(jks);
    let def = json!({"group": common::control_plane::GROUP, "bootstrap_servers": broker.sasl_ssl, "topic": topic,
        "security": {"protocol": "SASL_SSL",
            "sasl": {"mechanism": "PLAIN", "username": broker.sasl_user, "password": broker.sasl_password},
            "truststore": {"format": "jks", "data": jks_b64, "password": broker.truststore_password}}});
    let (status, body) =
        t.cp.console("PUT", "/api/v1/streams/orders", Some(&def))
            .await;
    assert_eq!(status, 204, "{body}");
    let _agent = t.spawn_agent("browse-agent");
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"key": format!("order-{i}"), "key_encoding": "string", "value": {"order": i}}))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp =
            t.cp.http()
                .post(format!("{}/api/v1/streams/orders/publish", t.cp.base_url()))
                .bearer_auth(common::control_plane::CONSOLE_TOKEN)
                .header("idempotency-key", "browse-1")
                .header("content-type", "application/json")
                .body(json!({ "records": records }).to_string())
                .send()
                .await
                .unwrap();
        // 503 until the agent has connected.
        if resp.status() == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        break;
    }

    let driver = ChromeDriver::start().await;
    let b = driver.browser(WIDTH, HEIGHT).await;
    let base = t.cp.base_url();
    log_in(&b, &base).await;
    b.goto(&format!("{base}/console/#/streams")).await;
    b.wait_text("#streams-table", "the stream list", |t| {
        t.contains("orders") && t.contains(&topic)
    })
    .await;
    b.goto(&format!("{base}/console/#/streams/orders")).await;
    b.wait_text("#stream-facts", "the connection", |t| {
        t.contains("password ******")
    })
    .await;
    b.select("#read-mode", "offsets").await;
    b.fill("#read-partition", "0").await;
    b.fill("#read-offsets", "6,10-11,16").await;
    b.click("#read-go").await;
    b.wait_text("#stream-outcome", "the read", |t| {
        t.starts_with("4 records")
    })
    .await;
    b.wait_text("#stream-records", "the records", |t| {
        t.contains("order-6") && t.contains("{\"order\":11}") && !t.contains("order-7")
    })
    .await;
    b.fill("#read-offsets", "6,25").await;
    b.click("#read-go").await;
    b.wait_text("#stream-outcome", "the out-of-range error", |t| {
        t.contains("offset 25 of partition 0") && t.contains("high watermark 20")
    })
    .await;
    b.screenshot_to(screenshots().as_deref(), "stream").await;

    // The job form offers the connection as a kafka sink's target, in a
    // labelled select filled from GET /api/v1/streams.
    b.goto(&format!("{base}/console/#/jobs")).await;
    b.click("#new-job").await;
    b.select("#job-sink-kind", "kafka").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let options = loop {
        let options = b
            .execute(
                "const s = document.getElementById('job-sink-connection');
                 return s.closest('[hidden]') || !document.querySelector('label[for=job-sink-connection]')
                   ? null : [...s.options].map(o => o.value);",
                vec![],
            )
            .await;
        if options == json!(["orders"]) || Instant::now() > deadline {
            break options;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(options, json!(["orders"]), "the kafka sink's connections");
    let seen = page_contents(&b).await;
    for secret in [
        broker.sasl_password.as_str(),
        broker.truststore_password.as_str(),
        &jks_b64[..40],
    ] {
        assert!(!seen.contains(secret), "a secret reached the page");
    }
    // Ends the session, which closes the browser (chromedriver's exit does not).
    b.quit().await;
    kafka::delete_topic(broker, &topic).await;
}
