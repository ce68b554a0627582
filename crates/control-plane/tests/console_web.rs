//! The web console over real HTTPS: its files and security headers, login
//! with a console token into a session cookie, CSRF protection of changes,
//! logout, the live event stream, and that no secret of a job or an agent
//! reaches the page. (The page itself, in a real browser:
//! `tests/console_browser.rs` at the workspace root.)

mod common;

use common::control_plane::{self as cp, Options, TestControlPlane};
use serde_json::{Value, json};
use std::time::Duration;

const COOKIE_NAME: &str = "__Host-cp_session";

/// A logged-in browser, as far as the server can tell: the cookie and the
/// CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login(cp: &TestControlPlane, token: &str) -> reqwest::Response {
    cp.http()
        .post(format!("{}/console/login", cp.base_url()))
        .header("content-type", "application/json")
        .body(json!({ "token": token }).to_string())
        .send()
        .await
        .expect("login request")
}

async fn logged_in(cp: &TestControlPlane) -> Session {
    let resp = login(cp, cp::CONSOLE_TOKEN).await;
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf"].as_str().unwrap().to_owned(),
    }
}

/// A request with the session's cookie, and its CSRF token if `csrf`.
async fn with_cookie(
    cp: &TestControlPlane,
    s: &Session,
    method: &str,
    path: &str,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = cp
        .http()
        .request(method.parse().unwrap(), format!("{}{path}", cp.base_url()))
        .header("cookie", &s.cookie);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_no_login_needed_to_load_it() {
    let cp = TestControlPlane::start(Options::default()).await;
    let http = cp.http();
    let resp = http
        .get(format!("{}/console/", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let html = resp.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));

    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let resp = http
            .get(format!("{}/console/{file}", cp.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert_eq!(resp.headers()["content-type"], kind);
        let etag = resp.headers()["etag"].clone();
        let again = http
            .get(format!("{}/console/{file}", cp.base_url()))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file} unchanged");
    }
    let missing = http
        .get(format!("{}/console/nope.js", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let no_follow = reqwest::Client::builder()
        .tls_backend_preconfigured((*cp.pki.client_config()).clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = no_follow
        .get(format!("{}/console", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/console/");
}

#[tokio::test]
async fn login_gives_a_strict_session_cookie_that_the_api_accepts_until_logout() {
    let cp = TestControlPlane::start(Options::default()).await;

    let resp = login(&cp, "wrong-token").await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "invalid console token"})
    );
    let form = cp
        .http()
        .post(format!("{}/console/login", cp.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", cp::CONSOLE_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415, "a cross-site form cannot log in");

    let resp = login(&cp, cp::CONSOLE_TOKEN).await;
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with(&format!("{COOKIE_NAME}=")), "{set}");
    for attr in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
    ] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "ops");
    assert_eq!(body["csrf"].as_str().unwrap().len(), 43);
    let s = Session {
        cookie: set.split(';').next().unwrap().to_owned(),
        csrf: body["csrf"].as_str().unwrap().to_owned(),
    };
    assert!(!s.cookie.contains(&s.csrf), "the CSRF token is not the id");

    let (status, agents) = with_cookie(&cp, &s, "GET", "/api/v1/agents", None, None).await;
    assert_eq!(status, 200, "{agents}");
    let (status, me) = with_cookie(&cp, &s, "GET", "/console/session", None, None).await;
    assert_eq!(
        (status, &me["csrf"], &me["name"]),
        (200, &body["csrf"], &body["name"])
    );

    let (status, _) = with_cookie(&cp, &s, "POST", "/console/logout", Some(&s.csrf), None).await;
    assert_eq!(status, 204);
    let (status, err) = with_cookie(&cp, &s, "GET", "/api/v1/agents", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        err["error"],
        "the console session has expired or was logged out; log in again at /console/"
    );
    let (status, _) = with_cookie(&cp, &s, "GET", "/console/session", None, None).await;
    assert_eq!(status, 401);
    // The bearer token works as before, with or without a stale cookie.
    let (status, _) = cp.console_get("/api/v1/agents").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn changes_with_the_cookie_need_the_csrf_token_and_are_audited_under_the_token_name() {
    let cp = TestControlPlane::start(Options::default()).await;
    let s = logged_in(&cp).await;
    let forbidden = "missing or wrong X-CSRF-Token header: a request that changes something must carry the session's CSRF token (GET /console/session)";
    for csrf in [None, Some("forged"), Some("")] {
        let (status, err) =
            with_cookie(&cp, &s, "POST", "/api/v1/jobs/none/pause", csrf, None).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (403, Some(forbidden)),
            "{csrf:?}"
        );
    }
    let (status, err) = with_cookie(&cp, &s, "POST", "/console/logout", Some("forged"), None).await;
    assert_eq!((status, err["error"].as_str()), (403, Some(forbidden)));
    // Without any credentials: as before.
    let resp = cp
        .http()
        .post(format!("{}/api/v1/jobs/none/pause", cp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // With the token the request gets through to the route.
    let (status, err) = with_cookie(
        &cp,
        &s,
        "POST",
        "/api/v1/jobs/none/pause",
        Some(&s.csrf),
        None,
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("no job \"none\""))
    );
    let (_, audit) = cp.console_get("/api/v1/audit?limit=1").await;
    assert_eq!(audit["entries"][0]["who"], "ops");
    assert_eq!(
        audit["entries"][0]["action"],
        "POST /api/v1/jobs/{id}/pause"
    );
}

#[tokio::test]
async fn failed_logins_go_through_the_login_limiter() {
    let cp = TestControlPlane::start(Options::default()).await;
    for _ in 0..connectivity_control_plane::login_limit::PER_SOURCE {
        assert_eq!(login(&cp, "guess").await.status(), 401);
    }
    let resp = login(&cp, "guess").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("too many failed logins from this address or for this name; try again in"),
        "{body}"
    );
}

/// Reads the event stream until `n` events have come or it ends; returns
/// the events' data and whether the stream ended.
async fn read_events(resp: reqwest::Response, n: usize, within: Duration) -> (Vec<Value>, bool) {
    let mut resp = resp;
    let (mut buf, mut out) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return (out, false),
            Ok(c) => c.expect("stream"),
        };
        let Some(chunk) = chunk else {
            return (out, true);
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: snapshot") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                out.push(serde_json::from_str(&data).expect("snapshot json"));
            }
        }
    }
    (out, false)
}

async fn events(cp: &TestControlPlane, s: &Session) -> reqwest::Response {
    let resp = reqwest::Client::builder()
        .tls_backend_preconfigured((*cp.pki.client_config()).clone())
        .build()
        .unwrap()
        .get(format!("{}/api/v1/events", cp.base_url()))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp
}

#[tokio::test]
async fn the_event_stream_sends_snapshots_and_ends_at_logout() {
    let cp = TestControlPlane::start(Options::default()).await;
    let s = logged_in(&cp).await;
    let (_ws, _) = cp.connect_agent("agent-1").await;
    let resp = events(&cp, &s).await;
    let (snaps, ended) = read_events(resp, 2, Duration::from_secs(10)).await;
    assert!(!ended);
    assert_eq!(snaps.len(), 2, "a snapshot at once and one every 2 s");
    // (This test's agent sends no heartbeats, so only the first is sure
    // to show it connected.)
    let snap = &snaps[0];
    assert_eq!(snap["agents"][0]["id"], "agent-1");
    assert_eq!(snap["agents"][0]["status"]["state"], "connected");
    assert_eq!(snap["groups"][0]["id"], cp::GROUP);
    assert_eq!(snap["groups"][0]["agents"]["states"]["connected"], 1);
    assert_eq!(snap["jobs"], json!([]));

    let resp = events(&cp, &s).await;
    let (status, _) = with_cookie(&cp, &s, "POST", "/console/logout", Some(&s.csrf), None).await;
    assert_eq!(status, 204);
    let (_, ended) = read_events(resp, 10, Duration::from_secs(10)).await;
    assert!(ended, "the stream of a logged-out session ends");
    let (status, _) = with_cookie(&cp, &s, "GET", "/api/v1/events", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn no_secret_reaches_the_page_its_api_answers_or_its_event_stream() {
    let cp = TestControlPlane::start(Options::default()).await;
    let ca_pem = std::fs::read_to_string(&cp.pki.ca_file).unwrap();
    // The server's own certificate (the file holds the chain, CA included)
    // and its key, as a client certificate: public, and a secret.
    let chain = std::fs::read_to_string(&cp.pki.cert_file).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let cert_pem = format!("{}{end}", chain.split(end).next().unwrap());
    let key_pem = std::fs::read_to_string(&cp.pki.key_file).unwrap();
    let body_of = |pem: &str| -> String {
        let b: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        b[..40].to_owned()
    };
    let (truststore, client_key) = (body_of(&ca_pem), body_of(&key_pem));
    let secrets = [
        "sasl-secret-4711",
        "hook-secret-0815",
        "query-secret-42",
        &truststore,
        &client_key,
        cp::PASSWORD,
        cp::CONSOLE_TOKEN,
    ];
    let jobs = [
        json!({
            "spec": {"id": "with-secrets", "bootstrap_servers": "localhost:9093", "topic": "USERS",
                     "consumer_group": "g",
                     "security": {"protocol": "SASL_SSL",
                                  "sasl": {"mechanism": "PLAIN", "username": "tenancy/user/pool", "password": secrets[0]},
                                  "truststore": {"format": "pem", "data": ca_pem}}},
            "group": cp::GROUP,
            "sink": {"kind": "webhook", "url": format!("https://hooks.example.com/x?sig={}", secrets[2]),
                     "headers": {"Authorization": format!("Bearer {}", secrets[1])}},
            "paused": true
        }),
        json!({
            "spec": {"id": "mtls", "bootstrap_servers": "localhost:9093", "topic": "USERS",
                     "consumer_group": "g2",
                     "security": {"protocol": "SSL", "client_cert_pem": cert_pem, "client_key_pem": key_pem}},
            "group": cp::GROUP, "sink": {"kind": "discard"}, "paused": true
        }),
    ];
    for def in &jobs {
        let (status, body) = cp.console("POST", "/api/v1/jobs", Some(def)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_ws, _) = cp.connect_agent("agent-secret-test").await;
    let s = logged_in(&cp).await;

    let mut seen = String::new();
    for file in [
        "",
        "app.js",
        "api.js",
        "dom.js",
        "views.js",
        "jobs.js",
        "streams.js",
        "form.js",
        "chart.js",
    ] {
        let text = cp
            .http()
            .get(format!("{}/console/{file}", cp.base_url()))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push_str(&text);
    }
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/with-secrets",
        "/api/v1/agents",
        "/api/v1/groups",
        "/api/v1/audit?limit=1000",
        "/console/session",
    ] {
        let (status, body) = with_cookie(&cp, &s, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.push_str(&body.to_string());
    }
    let (snaps, _) = read_events(events(&cp, &s).await, 1, Duration::from_secs(10)).await;
    assert_eq!(snaps[0]["jobs"][0]["id"], "mtls");
    assert_eq!(snaps[0]["jobs"][1]["id"], "with-secrets");
    seen.push_str(&snaps[0].to_string());

    assert!(seen.contains("******"), "the masks are there");
    assert!(
        seen.contains("tenancy/user/pool"),
        "what is not secret is shown"
    );
    for secret in secrets {
        if let Some(at) = seen.find(secret) {
            panic!(
                "{secret:?} reached the page: ...{}...",
                &seen[at.saturating_sub(300)..(at + 100).min(seen.len())]
            );
        }
    }
    let session_id = s.cookie.split_once('=').unwrap().1;
    assert!(
        !seen.contains(session_id),
        "the session id is only in the cookie"
    );
}
